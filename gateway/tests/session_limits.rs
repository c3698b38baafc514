//! Token refresh and expiry on a live connection, and repeated protocol violations.

mod common;

use serde_json::json;
use teamchat_testkit::{Client, TestEnv, now, sign};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refresh_extends_the_session_or_closes_it() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--token-leeway-s=0"]).await;
    let short = sign(&json!({"sub": "u1", "teams": ["t"], "exp": now() + 2}));
    let mut c = Client::connect(g.addr(), &short).await;
    let longer = now() + 3600;
    c.send(json!({"type":"token:refresh","rid":"r","token": sign(&json!({"sub": "u1", "teams": ["t"], "exp": longer}))}))
        .await;
    let refreshed = c.expect("token:refreshed").await;
    assert_eq!(
        (refreshed["exp"].as_u64(), refreshed["rid"].as_str()),
        (Some(longer), Some("r"))
    );
    // Past the first token's exp, the connection lives on.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    c.send(json!({"type":"ping"})).await;
    c.expect("pong").await;

    // Another user's token, an invalid one, an expired one.
    for (token, code) in [
        (
            sign(&json!({"sub": "u2", "teams": ["t"], "exp": longer})),
            4001,
        ),
        ("garbage".to_owned(), 4001),
        (
            sign(&json!({"sub": "u1", "teams": ["t"], "exp": now() - 60})),
            4003,
        ),
    ] {
        let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
        c.send(json!({"type":"token:refresh","token": token})).await;
        assert_eq!(c.close_code().await.0, code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_connection_closes_4003_when_its_token_expires() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--token-leeway-s=0"]).await;
    let mut c = Client::connect(
        g.addr(),
        &sign(&json!({"sub": "u1", "teams": ["t"], "exp": now() + 2})),
    )
    .await;
    assert_eq!(c.close_code().await.0, 4003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_protocol_violations_close_1008() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-violations=3"]).await;
    let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    // Refusals that are not violations do not count.
    for _ in 0..5 {
        c.send(json!({"type":"message:send","team":"t","client_id":"c","body":"b"}))
            .await;
        assert_eq!(c.expect("error").await["code"], "not_joined");
    }
    c.send(json!({"type":"nope"})).await;
    assert_eq!(c.expect("error").await["code"], "unknown_type");
    c.send(json!({"type":"room:join"})).await;
    assert_eq!(c.expect("room:error").await["code"], "bad_request");
    c.send(json!({"type":"nope"})).await;
    let (code, frames) = c.close_code().await;
    assert_eq!(code, 1008);
    assert_eq!(
        frames.len(),
        1,
        "the third error is sent, then the close: {frames:?}"
    );
}
