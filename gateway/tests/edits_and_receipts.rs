//! Edits and deletes (author only; staff may delete) and read receipts, across gateways,
//! in history before and after the worker synced them.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use teamchat_testkit::{Client, TestEnv, eventually, http_get, now, sign};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authors_edit_and_delete_and_others_see_it() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    let sent = ann.send_message("t", "c1", "frist").await;
    ben.expect("message:new").await;

    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"first","rid":"e"}))
        .await;
    let ack = ann.expect("message:ack").await;
    assert_eq!(
        (
            ack["rid"].as_str(),
            ack["seq"].as_u64(),
            ack["offset"].as_str()
        ),
        (Some("e"), Some(1), Some("2"))
    );
    assert_eq!(ack["id"], sent["id"]);
    assert!(ack.get("client_id").is_none());
    let edited = ben.expect("message:edited").await;
    assert_eq!(
        (
            edited["seq"].as_u64(),
            edited["body"].as_str(),
            edited["user"].as_str(),
            edited["offset"].as_str()
        ),
        (Some(1), Some("first"), Some("ann"), Some("2"))
    );
    assert_eq!(edited["ts"], ack["ts"]);

    // Only the author edits; only the author (or staff) deletes; unknown seqs are not found.
    ben.send(json!({"type":"message:edit","team":"t","seq":1,"body":"mine now"}))
        .await;
    assert_eq!(ben.expect("error").await["code"], "forbidden");
    ben.send(json!({"type":"message:delete","team":"t","seq":1}))
        .await;
    assert_eq!(ben.expect("error").await["code"], "forbidden");
    ann.send(json!({"type":"message:edit","team":"t","seq":99,"body":"x"}))
        .await;
    assert_eq!(ann.expect("error").await["code"], "not_found");
    ann.send(json!({"type":"message:edit","team":"t","seq":"1","body":"x"}))
        .await;
    assert_eq!(ann.expect("error").await["code"], "bad_request");

    let staff = sign(&json!({"sub": "mod", "teams": [], "role": "staff", "exp": now() + 600}));
    let mut moderator = Client::connect(g2.addr(), &staff).await;
    moderator.join("t").await;
    moderator
        .send(json!({"type":"message:delete","team":"t","seq":1}))
        .await;
    assert_eq!(moderator.expect("message:ack").await["offset"], "3");
    for client in [&mut ann, &mut ben] {
        let deleted = client.expect("message:deleted").await;
        assert_eq!(
            (
                deleted["seq"].as_u64(),
                deleted["user"].as_str(),
                deleted["offset"].as_str()
            ),
            (Some(1), Some("mod"), Some("3"))
        );
    }
    // A deleted message can be neither edited nor deleted again.
    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"back"}))
        .await;
    assert_eq!(ann.expect("error").await["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_edits_and_deletions_before_and_after_sync() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("ann", &["t"]);
    let mut ann = Client::connect(g.addr(), &token).await;
    ann.join("t").await;
    ann.send_message("t", "c1", "one").await;
    ann.send_message("t", "c2", "two").await;
    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"one, edited"}))
        .await;
    let edit_ack = ann.expect("message:ack").await;
    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"one, edited twice"}))
        .await;
    let last_edit = ann.expect("message:ack").await;
    ann.send(json!({"type":"message:delete","team":"t","seq":2}))
        .await;
    ann.expect("message:ack").await;
    assert_ne!(edit_ack["ts"], Value::Null);

    let auth = format!("Bearer {token}");
    let page = || async {
        http_get(
            g.addr(),
            "/v1/teams/t/messages",
            &[("authorization", auth.as_str())],
        )
        .await
        .1
    };
    let check = |body: &Value| {
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        let (two, one) = (&messages[0], &messages[1]);
        assert_eq!(
            (
                two["seq"].as_u64(),
                two["deleted"].as_bool(),
                two["body"].as_str()
            ),
            (Some(2), Some(true), Some(""))
        );
        assert_eq!(
            (one["body"].as_str(), one["deleted"].as_bool()),
            (Some("one, edited twice"), Some(false))
        );
        assert_eq!(one["edited_at"], last_edit["ts"]);
        assert_eq!(
            one["offset"], "1",
            "a message's offset is that of its message:new"
        );
    };
    let before_sync = page().await;
    check(&before_sync);

    let stop = common::worker(&env, "w1");
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", 5).await;
    let after_sync = page().await;
    check(&after_sync);
    assert_eq!(after_sync, before_sync);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_monotonic_coalesced_listed_and_synced_as_max() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    for n in 1..=5 {
        ann.send_message("t", &format!("c{n}"), "m").await;
    }
    for _ in 1..=5 {
        ben.expect("message:new").await;
    }

    // The first goes out at once; a burst within the next second as one update with the
    // highest seq. (The first is awaited before the burst: sent together, the three may
    // reach the coalescer before its task first looks, and go out as one.)
    ben.send(json!({"type":"receipt:update","team":"t","seq":1}))
        .await;
    let mut first = ann.expect("receipt:update").await;
    for seq in [2, 3] {
        ben.send(json!({"type":"receipt:update","team":"t","seq":seq}))
            .await;
    }
    let offset: u64 = first["offset"]
        .as_str()
        .expect("a durable event's offset")
        .parse()
        .unwrap();
    assert!(offset > 5, "after the five messages: {first}");
    first.as_object_mut().unwrap().remove("offset");
    assert_eq!(
        first,
        json!({"type":"receipt:update","team":"t","user":"ben","seq":1})
    );
    let burst = ann.expect("receipt:update").await;
    assert_eq!(burst["seq"], 3, "seq 2 was coalesced away");
    // Lower or equal seqs are ignored.
    ben.send(json!({"type":"receipt:update","team":"t","seq":2}))
        .await;
    ben.send(json!({"type":"receipt:update","team":"t","seq":4}))
        .await;
    assert_eq!(ann.expect("receipt:update").await["seq"], 4);
    ben.send(json!({"type":"receipt:update","team":"t","seq":"x"}))
        .await;
    assert_eq!(ben.expect("error").await["code"], "bad_request");

    // Ben's own connection got none of its receipts: its next frame is ann's message.
    let marker = ann.send_message("t", "marker", "m").await;
    assert_eq!(ben.expect("message:new").await["offset"], marker["offset"]);

    let mut carol = Client::connect(g1.addr(), &env.token("carol", &["t"])).await;
    carol.send(json!({"type":"room:join","team":"t"})).await;
    carol.expect("room:joined").await;
    carol.expect("presence:list").await;
    let list = carol.expect("receipt:list").await;
    assert_eq!(list["receipts"], json!([{"user":"ben","seq":4}]));

    let stop = common::worker(&env, "w1");
    let pg = env.pg().await;
    eventually(
        Duration::from_secs(20),
        "ben's receipt synced at its max",
        || async {
            let row: Option<(String, i64)> =
                sqlx::query_as("SELECT user_id, seq FROM receipts WHERE team = 't'")
                    .fetch_optional(&pg)
                    .await
                    .ok()?;
            (row == Some(("ben".to_owned(), 4))).then_some(())
        },
    )
    .await;
    stop.cancel();
}

/// Redis keeps the author of the newest `STREAM_MAXLEN` messages only (the hash would grow
/// with the team's history otherwise); older messages are edited and deleted on the
/// authority of what PostgreSQL stored, with the same rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_messages_are_edited_and_deleted_on_what_postgres_stored() {
    use redis::AsyncCommands;
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--stream-maxlen=5"]).await;
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    for n in 1..=12 {
        ann.send_message("t", &format!("c{n}"), "m").await;
        ben.expect("message:new").await;
    }
    let keys = env.keys();
    let mut redis = env.redis().await;
    let mut held: Vec<u64> = redis.hkeys(keys.team_messages("t")).await.unwrap();
    held.sort_unstable();
    assert_eq!(
        held,
        vec![8, 9, 10, 11, 12],
        "the newest five messages only"
    );

    let stop = common::worker(&env, "w1");
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", 12).await;

    // The author rules hold for messages PostgreSQL authorizes.
    ben.send(json!({"type":"message:edit","team":"t","seq":1,"body":"mine now"}))
        .await;
    assert_eq!(ben.expect("error").await["code"], "forbidden");
    ben.send(json!({"type":"message:delete","team":"t","seq":2}))
        .await;
    assert_eq!(ben.expect("error").await["code"], "forbidden");
    ann.send(json!({"type":"message:edit","team":"t","seq":1,"body":"one, edited"}))
        .await;
    let ack = ann.expect("message:ack").await;
    assert_eq!(ack["seq"], 1);
    let edited = ben.expect("message:edited").await;
    assert_eq!(
        (edited["seq"].as_u64(), edited["body"].as_str()),
        (Some(1), Some("one, edited"))
    );
    ann.send(json!({"type":"message:delete","team":"t","seq":2}))
        .await;
    ann.expect("message:ack").await;
    assert_eq!(ben.expect("message:deleted").await["seq"], 2);

    // Deleted stays deleted: first by the tombstone (PostgreSQL does not know yet), then by
    // PostgreSQL once the worker stored the delete.
    ann.send(json!({"type":"message:edit","team":"t","seq":2,"body":"back"}))
        .await;
    assert_eq!(ann.expect("error").await["code"], "not_found");
    teamchat_testkit::wait_for_watermark(&pg, "t", 14).await;
    let tombstone = keys.tombstone("t", 2);
    let ttl: i64 = redis.ttl(&tombstone).await.unwrap();
    assert!(ttl > 0, "the tombstone expires: {ttl}");
    let _: () = redis.del(&tombstone).await.unwrap();
    ann.send(json!({"type":"message:delete","team":"t","seq":2}))
        .await;
    assert_eq!(ann.expect("error").await["code"], "not_found");
    // Seqs never given out are not found, without asking PostgreSQL to authorize them.
    ann.send(json!({"type":"message:edit","team":"t","seq":13,"body":"x"}))
        .await;
    assert_eq!(ann.expect("error").await["code"], "not_found");

    let held: u64 = redis.hlen(keys.team_messages("t")).await.unwrap();
    assert_eq!(held, 5, "old edits and deletes do not grow the hash again");
    stop.cancel();
}
