//! A gateway cut off from Redis's pub/sub when a revocation was published misses the
//! control message; when it subscribes again it reads the revocation records of its users
//! and closes the connections they name. (Alone in its file: it cuts every pub/sub
//! connection of the Redis the tests share.)

mod common;

use redis::AsyncCommands;
use teamchat_testkit::{Client, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_missed_while_cut_off_is_carried_out_on_reconnect() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let token = teamchat_testkit::sign(&serde_json::json!({
        "sub": "ann", "teams": ["t"], "iat": issued, "exp": teamchat_testkit::now() + 3600}));
    let mut ann = Client::connect(g.addr(), &token).await;
    ann.join("t").await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t"])).await;

    // A revocation recorded while the gateway heard nothing of it (as if its publish was
    // missed), then the gateway's pub/sub connection is cut.
    let mut redis = env.redis().await;
    let before_ms = (issued * 1000.0) as u64 + 1;
    let _: () = redis
        .set(env.keys().user_revoked("ann"), before_ms)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (code, reason, _) = teamchat_testkit::client::close_frame(&mut ann.ws).await;
    assert_eq!((code, reason.as_str()), (4001, "revoked"));
    // Nobody else was touched.
    ben.send(serde_json::json!({"type": "ping", "rid": "p"}))
        .await;
    assert_eq!(ben.expect("pong").await["rid"], "p");
}
