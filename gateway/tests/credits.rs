//! Credits: counted at append on every shard, enforced at once against the token's (or the
//! configured) limit, synced to a ledger exactly once, and reported over HTTP.

mod common;

use std::time::Duration;

use serde_json::json;
use teamchat_testkit::{Client, TestEnv, eventually, http_get, now, sign};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_their_limit_gets_quota_exceeded_at_once_on_any_shard() {
    let env = TestEnv::new().await;
    let keys = env.keys();
    // Two teams on different shards: the limit counts the user's credits on all of them.
    let first = "alpha".to_owned();
    let second = (0..100)
        .map(|i| format!("beta{i}"))
        .find(|t| keys.shard_of(t) != keys.shard_of(&first))
        .unwrap();
    let g = common::gateway(&env, &[]).await;
    let token = sign(
        &json!({"sub": "ann", "teams": [first, second], "credit_limit": 3, "exp": now() + 600}),
    );
    let mut ann = Client::connect(g.addr(), &token).await;
    ann.join(&first).await;
    ann.join(&second).await;
    ann.send_message(&first, "m1", "one").await;
    ann.send_message(&second, "m2", "two").await;
    ann.send_message(&first, "m3", "three").await;
    // A retry of an acked send is not charged again.
    assert_eq!(ann.send_message(&first, "m3", "three").await["seq"], 2);
    ann.send(json!({"type":"message:send","team":second,"client_id":"m4","body":"four","rid":"q"}))
        .await;
    let error = ann.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["rid"].as_str()),
        (Some("quota_exceeded"), Some("q"))
    );
    ann.send(json!({"type":"message:edit","team":first,"seq":1,"body":"edited"}))
        .await;
    assert_eq!(ann.expect("error").await["code"], "quota_exceeded");
    // Deletes cost nothing by default.
    ann.send(json!({"type":"message:delete","team":first,"seq":1}))
        .await;
    ann.expect("message:ack").await;

    // The configured default applies to tokens without a limit of their own.
    let g = common::gateway(&env, &["--credit-limit=1"]).await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t"])).await;
    ben.join("t").await;
    ben.send_message("t", "b1", "one").await;
    ben.send(json!({"type":"message:send","team":"t","client_id":"b2","body":"two"}))
        .await;
    assert_eq!(ben.expect("error").await["code"], "quota_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_are_reported_used_synced_and_unsynced() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--credit-cost-message=2"]).await;
    let token = env.token("ann", &["t"]);
    let mut ann = Client::connect(g.addr(), &token).await;
    ann.join("t").await;
    for n in 0..5 {
        ann.send_message("t", &format!("m{n}"), "b").await;
    }
    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"e"}))
        .await;
    ann.expect("message:ack").await;

    let credits = |token: String| {
        let addr = g.addr();
        async move {
            let auth = format!("Bearer {token}");
            http_get(
                addr,
                "/v1/users/ann/credits",
                &[("authorization", auth.as_str())],
            )
            .await
        }
    };
    let (status, body) = credits(token.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"user":"ann","used":11,"synced":0,"unsynced":11})
    );

    let stop = common::worker(&env, "w1");
    eventually(Duration::from_secs(20), "credits synced", || {
        let request = credits(token.clone());
        async move {
            let (_, body) = request.await;
            (body["synced"] == 11).then_some(())
        }
    })
    .await;
    assert_eq!(credits(token.clone()).await.1["unsynced"], 0);
    let pg = env.pg().await;
    let ledger: (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(cost)::int8 FROM credit_ledger WHERE user_id = 'ann'")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(ledger, (6, 11));
    stop.cancel();

    // Only the user or staff may look; a token is needed.
    assert_eq!(credits(env.token("ben", &["t"])).await.0, 403);
    let staff = sign(&json!({"sub": "boss", "teams": [], "role": "staff", "exp": now() + 600}));
    assert_eq!(credits(staff).await.0, 200);
    assert_eq!(
        http_get(g.addr(), "/v1/users/ann/credits", &[]).await.0,
        401
    );
}
