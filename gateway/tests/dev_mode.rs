//! Development mode: the demo page, the library and the token endpoint exist only with
//! `--dev-mode`, serve nothing outside their folders, and the tokens they mint work.

mod common;

use serde_json::json;
use teamchat_testkit::{Client, TestEnv, http_post, try_http};

/// A clients folder with a page and a library file, and a file beside it that must not leak.
fn clients_dir() -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("teamchat-dev-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(root.join("clients/demo/www")).unwrap();
    std::fs::create_dir_all(root.join("clients/js/dist")).unwrap();
    std::fs::write(root.join("clients/demo/www/index.html"), "<h1>demo</h1>").unwrap();
    std::fs::write(root.join("clients/demo/www/app.js"), "export {}").unwrap();
    std::fs::write(root.join("clients/js/dist/index.js"), "export const v = 1;").unwrap();
    std::fs::write(root.join("secret.txt"), "secret").unwrap();
    root.join("clients")
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let (status, headers, body) = try_http(addr, "GET", path, &[], Vec::new())
        .await
        .expect("the gateway answers");
    let content_type = headers
        .get("content-type")
        .map_or("", |v| v.to_str().unwrap());
    (
        status,
        content_type.into(),
        String::from_utf8_lossy(&body).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    assert_eq!(get(g.addr(), "/").await.0, 404);
    assert_eq!(get(g.addr(), "/lib/index.js").await.0, 404);
    let (status, _) = http_post(g.addr(), "/dev/token", &json!({"user": "mallory"})).await;
    assert_eq!(status, 404, "no tokens for anyone without --dev-mode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_demo_and_mints_working_tokens() {
    let env = TestEnv::new().await;
    let dir = clients_dir();
    let flag = format!("--dev-clients-dir={}", dir.display());
    let g = common::gateway(&env, &["--dev-mode", &flag]).await;

    let (status, content_type, body) = get(g.addr(), "/").await;
    assert_eq!((status, body.as_str()), (200, "<h1>demo</h1>"));
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let (status, content_type, _) = get(g.addr(), "/demo/app.js").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/javascript"),
        "{content_type}"
    );
    assert_eq!(
        get(g.addr(), "/lib/index.js").await.2,
        "export const v = 1;"
    );
    for outside in [
        "/demo/../../secret.txt",
        "/lib/%2e%2e/%2e%2e/secret.txt",
        "/secret.txt",
    ] {
        let (status, _, body) = get(g.addr(), outside).await;
        assert_eq!(status, 404, "{outside}");
        assert!(!body.contains("secret\""), "{outside} leaked: {body}");
    }

    let (status, body) = http_post(g.addr(), "/dev/token", &json!({"user": "a b"})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, body) = http_post(
        g.addr(),
        "/dev/token",
        &json!({"user": "alice", "name": "Alice", "teams": ["general"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let exp = body["exp"].as_u64().expect("exp");
    assert!(exp > teamchat_testkit::now(), "exp {exp} is in the future");
    let mut alice = Client::connect(g.addr(), body["token"].as_str().unwrap()).await;
    alice
        .send(json!({"type": "room:join", "team": "general"}))
        .await;
    alice.expect("room:joined").await;
    let list = alice.expect("presence:list").await;
    assert_eq!(list["users"][0]["name"], "Alice", "{list}");
    std::fs::remove_dir_all(dir.parent().unwrap()).ok();
}
