//! Redis and PostgreSQL that take TLS only, with certificates of a throwaway CA: two
//! gateways and a worker append, fan out, sync, serve history and resume over them
//! (`rediss://` with `REDIS_CA_FILE`, `sslmode=verify-full` with `sslrootcert`); a wrong
//! CA, or a plain server behind a `rediss://` URL, is a clear error at start, not a hang.

use std::time::Duration;

use clap::Parser;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use teamchat_gateway::Gateway;
use teamchat_shared::config::WorkerConfig;
use teamchat_testkit::pg_server::PgServer;
use teamchat_testkit::redis_server::RedisServer;
use teamchat_testkit::tls::TestCa;
use teamchat_testkit::{Client, TestEnv, eventually, http_get, wait_for_watermark};
use tokio_util::sync::CancellationToken;

/// The flags that point a binary at these servers, trusting `ca`.
fn flags(redis: &str, pg: &str, ca: &TestCa) -> Vec<String> {
    vec![
        format!("--redis-url={redis}"),
        format!("--database-url={pg}"),
        format!("--redis-ca-file={}", ca.ca().display()),
    ]
}

fn worker_config(env: &TestEnv, flags: &[String]) -> WorkerConfig {
    let mut args = vec!["teamchat-worker".to_owned()];
    args.extend(
        env.worker_args("w1")
            .into_iter()
            .filter(|a| !a.starts_with("--redis-url=") && !a.starts_with("--database-url=")),
    );
    args.extend(flags.iter().cloned());
    WorkerConfig::try_parse_from(args).expect("worker flags parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_a_worker_work_over_tls_only_storage() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(&ca).await;
    let pg = PgServer::start_tls(&ca).await;
    let env = TestEnv::new().await;
    let flags = flags(&redis.url(), &pg.url(), &ca);

    let stop = CancellationToken::new();
    let worker = tokio::spawn(teamchat_worker::run(
        worker_config(&env, &flags),
        stop.clone(),
    ));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url())
        .await
        .expect("the test reaches PostgreSQL over TLS");
    // The worker applies the migrations the gateways read.
    eventually(Duration::from_secs(30), "the migrations", || async {
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('team_sync')::text")
            .fetch_one(&pool)
            .await
            .ok()?;
        table.map(|_| ())
    })
    .await;
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let g1 = Gateway::start(env.gateway_config(&extra)).await.unwrap();
    let g2 = Gateway::start(env.gateway_config(&extra)).await.unwrap();

    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    let epoch = ben.join("t").await["epoch"].clone();
    for n in 1..=5 {
        ann.send_message("t", &format!("c{n}"), &format!("over tls {n}"))
            .await;
        assert_eq!(ben.expect("message:new").await["seq"], n);
    }
    wait_for_watermark(&pool, "t", 5).await;
    let bearer = format!("Bearer {}", env.token("ben", &["t"]));
    let (status, page) = http_get(
        g2.addr(),
        "/v1/teams/t/messages",
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"].as_array().unwrap().len(), 5);

    // A reconnect resumes by offset.
    drop(ben);
    let mut ben = Client::connect(g1.addr(), &env.token("ben", &["t"])).await;
    ben.send(json!({"type": "room:join", "team": "t", "since": {"epoch": epoch, "offset": "3"}}))
        .await;
    assert_eq!(ben.expect("room:joined").await["recovered"], true);
    for seq in [4, 5] {
        assert_eq!(ben.expect("message:new").await["seq"], seq);
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_a_plain_server_is_a_clear_error_at_start() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let redis = RedisServer::start_tls(&ca).await;
    let pg = PgServer::start_tls(&ca).await;
    let plain = RedisServer::start().await;
    let env = TestEnv::new().await;
    // Errors within seconds: the bound is a guard against a hang, not a measurement.
    let bound = Duration::from_secs(30);

    // Redis's certificate is not of the CA the gateway trusts.
    let wrong = flags(&redis.url(), &pg.url(), &other);
    let extra: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let error = tokio::time::timeout(bound, Gateway::start(env.gateway_config(&extra)))
        .await
        .expect("a bad CA ends the start, no hang")
        .err()
        .expect("a bad CA is refused");
    let message = format!("{error:#}");
    assert!(message.contains("Redis"), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    // A plain Redis behind a rediss:// URL.
    let disguised = plain.url().replace("redis://", "rediss://");
    let wrong = flags(&disguised, &pg.url(), &ca);
    let extra: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let error = tokio::time::timeout(bound, Gateway::start(env.gateway_config(&extra)))
        .await
        .expect("a plain server ends the start, no hang")
        .err()
        .expect("a plain server behind rediss:// is refused");
    assert!(format!("{error:#}").contains("Redis"), "{error:#}");

    // PostgreSQL's certificate is not of the CA the worker trusts.
    let pg_wrong = pg.url().replace(
        &ca.ca().display().to_string(),
        &other.ca().display().to_string(),
    );
    let wrong = flags(&redis.url(), &pg_wrong, &ca);
    let result = tokio::time::timeout(
        bound,
        teamchat_worker::run(worker_config(&env, &wrong), CancellationToken::new()),
    )
    .await
    .expect("a bad CA ends the worker's start, no hang");
    let message = format!("{:#}", result.expect_err("a bad CA is refused"));
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}
