//! No read is unbounded: the HTTP API is rate-limited per user (429 with `Retry-After`),
//! history refuses to read more than a bounded unsynced tail, and a stalled PostgreSQL
//! statement is cancelled after `PG_STATEMENT_TIMEOUT_MS` (the request gets 503).

mod common;

use redis::AsyncCommands;
use teamchat_testkit::{Client, TestEnv, http_get, try_http};

async fn migrated(env: &TestEnv) -> sqlx::PgPool {
    let pg = env.pg().await;
    sqlx::migrate!("../migrations")
        .run(&pg)
        .await
        .expect("applying migrations");
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_rate_limited_per_user() {
    let env = TestEnv::new().await;
    migrated(&env).await;
    let g = common::gateway(&env, &["--rate-http-per-min=4"]).await;
    let auth = format!("Bearer {}", env.token("alice", &["t"]));
    let headers = [("authorization", auth.as_str())];
    let (status, body) = http_get(g.addr(), "/v1/teams/t/messages", &headers).await;
    assert_eq!(status, 200, "{body}");
    // A burst of a quarter of the rate: the second request at once is over it.
    let (status, response_headers, body) = try_http(
        g.addr(),
        "GET",
        "/v1/users/alice/credits",
        &headers,
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 429);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    let retry_after: u64 = response_headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=15).contains(&retry_after), "{retry_after}");
    // Another user has a budget of their own.
    let other = format!("Bearer {}", env.token("bob", &["t"]));
    let (status, _) = http_get(
        g.addr(),
        "/v1/teams/t/messages",
        &[("authorization", &other)],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_does_not_read_an_unbounded_unsynced_tail() {
    let env = TestEnv::new().await;
    migrated(&env).await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("alice", &["t"]);
    let mut c = Client::connect(g.addr(), &token).await;
    c.join("t").await;
    c.send_message("t", "c1", "hello").await;
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let (status, body) = http_get(g.addr(), "/v1/teams/t/messages", &headers).await;
    assert_eq!(
        (status, body["messages"][0]["body"].as_str()),
        (200, Some("hello"))
    );

    // The workers are 10,000 events behind on the team (none runs here): history says
    // so instead of reading them all on every request.
    let mut redis = env.redis().await;
    let _: String = redis
        .xadd(env.keys().team_events("t"), "10001-0", &[("k", "message")])
        .await
        .unwrap();
    let (status, response_headers, body) = try_http(
        g.addr(),
        "GET",
        "/v1/teams/t/messages",
        &headers,
        Vec::new(),
    )
    .await
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));
    assert_eq!(response_headers["retry-after"], "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_postgresql_statement_is_cancelled() {
    let env = TestEnv::new().await;
    let pg = migrated(&env).await;
    let g = common::gateway(&env, &["--pg-statement-timeout-ms=300"]).await;
    let auth = format!("Bearer {}", env.token("alice", &["t"]));
    let headers = [("authorization", auth.as_str())];

    // A transaction holds the watermark table: history's read of it waits, and is
    // cancelled at the statement timeout instead of holding the request.
    let mut lock = pg.begin().await.unwrap();
    sqlx::query("LOCK TABLE team_sync IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let held = std::time::Duration::from_secs(10);
    let answer = tokio::time::timeout(held, http_get(g.addr(), "/v1/teams/t/messages", &headers));
    let (status, body) = answer.await.expect("the request is not held by the lock");
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));
    lock.rollback().await.unwrap();

    let (status, _) = http_get(g.addr(), "/v1/teams/t/messages", &headers).await;
    assert_eq!(status, 200, "served again once PostgreSQL answers");
}
