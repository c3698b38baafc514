//! A Redis outage: requests get `unavailable` and change nothing, readiness fails, and
//! after Redis comes back (AOF on) the same requests go through and delivery resumes
//! across gateways without loss.

mod common;

use std::time::Duration;

use serde_json::json;
use teamchat_testkit::redis_server::RedisServer;
use teamchat_testkit::{Client, TestEnv, eventually, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_unavailable_and_delivery_resumes_after_it() {
    let mut redis = RedisServer::start().await;
    let mut env = TestEnv::new().await;
    env.redis_url = redis.url();
    let (g1, g2) = common::two_gateways(&env).await;
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    ann.send_message("t", "m1", "before").await;
    assert_eq!(ben.expect("message:new").await["body"], "before");

    redis.kill().await;
    ann.send(json!({"type":"message:send","team":"t","client_id":"m2","body":"during","rid":"r"}))
        .await;
    let error = ann.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["rid"].as_str()),
        (Some("unavailable"), Some("r"))
    );
    let (status, body) = http_get(g1.addr(), "/readyz", &[]).await;
    assert_eq!((status, body["redis"].as_bool()), (503, Some(false)));
    let token = env.token("ann", &["t"]);
    let auth = format!("Bearer {token}");
    let (status, body) = http_get(
        g1.addr(),
        "/v1/teams/t/messages",
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));

    redis.restart().await;
    eventually(
        Duration::from_secs(20),
        "the gateways ready again",
        || async {
            let one = http_get(g1.addr(), "/readyz", &[]).await.0 == 200;
            let two = http_get(g2.addr(), "/readyz", &[]).await.0 == 200;
            (one && two).then_some(())
        },
    )
    .await;
    // The retry goes through as the first attempt would have: nothing was half-applied.
    let ack = ann.send_message("t", "m2", "after").await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["offset"].as_str()),
        (Some(2), Some("2"))
    );
    let got = ben.expect("message:new").await;
    assert_eq!(
        (got["body"].as_str(), got["offset"].as_str()),
        (Some("after"), Some("2"))
    );
    // And live delivery (pub/sub, resubscribed) carries on.
    let ack = ben.send_message("t", "b1", "back to normal").await;
    assert_eq!(ann.expect("message:new").await["offset"], ack["offset"]);
}

/// A Redis that stalls (`CLIENT PAUSE`: connections open, nothing answered) rather than
/// goes away: a send gets `unavailable` once the append's response timeout passes instead
/// of hanging, no member is closed, and afterwards the retry is answered with the first
/// attempt's ack, delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_is_unavailable_and_nothing_is_doubled_after_it() {
    let redis = RedisServer::start().await;
    let mut env = TestEnv::new().await;
    env.redis_url = redis.url();
    let g = common::gateway(&env, &[]).await;
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    ann.send_message("t", "m1", "before").await;
    assert_eq!(ben.expect("message:new").await["body"], "before");

    let mut admin = env.redis().await;
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "7000", "ALL"])
        .query_async(&mut admin)
        .await
        .unwrap();
    ann.send(json!({"type":"message:send","team":"t","client_id":"m2","body":"during","rid":"r"}))
        .await;
    let error = ann.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["rid"].as_str()),
        (Some("unavailable"), Some("r"))
    );

    eventually(Duration::from_secs(20), "Redis answering again", || async {
        (http_get(g.addr(), "/readyz", &[]).await.0 == 200).then_some(())
    })
    .await;
    // The stalled append ran once Redis went on: the retry gets its ack, not a second one.
    let ack = ann.send_message("t", "m2", "during").await;
    assert_eq!(ack["seq"], 2);
    let got = ben.expect("message:new").await;
    assert_eq!((&got["seq"], &got["body"]), (&json!(2), &json!("during")));
    let ack = ann.send_message("t", "m3", "after").await;
    assert_eq!(ack["seq"], 3);
    assert_eq!(ben.expect("message:new").await["seq"], 3, "m2 came once");
}
