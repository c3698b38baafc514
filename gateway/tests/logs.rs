//! Logs never carry a token, even at the most verbose level.

use std::process::Stdio;

use teamchat_testkit::client::{self, Auth};
use teamchat_testkit::{TestEnv, free_port, http_get};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_token_in_its_query_logs_no_token() {
    let env = TestEnv::new().await;
    let config = env.gateway_config(&[]);
    let port = free_port();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_teamchat-gateway"))
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .env("REDIS_URL", &config.redis.redis_url)
        .env("REDIS_PREFIX", &config.redis.redis_prefix)
        .env("DATABASE_URL", &config.database_url)
        .env("JWT_SECRET", teamchat_testkit::SECRET)
        .env("RUST_LOG", "trace")
        .env("LOG_JSON", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let token = env.token("u1", &["t"]);
    let (mut ws, _) = client::open(addr, Auth::Query(&token), None).await.unwrap();
    use futures_util::StreamExt;
    ws.next().await.unwrap().unwrap(); // welcome
    drop(ws);
    assert_eq!(
        http_get(addr, &format!("/v1/teams/t/messages?token={token}"), &[])
            .await
            .0,
        200
    );
    assert_eq!(
        http_get(addr, "/v1/teams/t/messages?token=not-a-valid-token", &[])
            .await
            .0,
        401
    );

    gateway.start_kill().unwrap();
    let mut logs = String::new();
    gateway
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    gateway
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(
        logs.contains("gateway listening") && logs.contains("\"DEBUG\""),
        "verbose logs expected: {logs}"
    );
    assert!(!logs.contains(&token), "a log line carries the token");
    assert!(
        !logs.contains("not-a-valid-token"),
        "a log line carries the refused token"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !logs.contains(signature),
        "a log line carries the token's signature"
    );
}
