//! Reactions (../shared/PROTOCOL.md, "Chat model"): durable events in the team's order,
//! idempotent per user, message and emoji, replayed by recovery, refused for hostile
//! emojis, unknown or deleted messages and past 50 emojis; history shows each message's
//! aggregates with `me` for the reader once synced, also for messages older than Redis
//! keeps.

mod common;

use serde_json::{Value, json};
use teamchat_testkit::{Client, TestEnv, http_get, wait_for_watermark};

fn reaction(add: bool, seq: u64, emoji: &str) -> Value {
    let kind = if add {
        "reaction:add"
    } else {
        "reaction:remove"
    };
    json!({"type": kind, "team": "t", "seq": seq, "emoji": emoji})
}

/// Sends a reaction; returns its ack, or the error frame.
async fn react(client: &mut Client, add: bool, seq: u64, emoji: &str) -> Value {
    client.send(reaction(add, seq, emoji)).await;
    loop {
        let frame = client.recv().await;
        if frame["type"] == "message:ack" || frame["type"] == "error" {
            return frame;
        }
    }
}

/// Each message's `reactions` on the newest history page, as `user` reads it.
async fn reactions_in_history(env: &TestEnv, g: std::net::SocketAddr, user: &str) -> Vec<Value> {
    let token = env.token(user, &["t"]);
    let (status, page) = http_get(g, &format!("/v1/teams/t/messages?token={token}"), &[]).await;
    assert_eq!(status, 200, "{page}");
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({"seq": m["seq"], "reactions": m["reactions"]}))
        .collect()
}

async fn synced_through(env: &TestEnv, ack: &Value) {
    let offset: i64 = ack["offset"].as_str().unwrap().parse().unwrap();
    wait_for_watermark(&env.pg().await, "t", offset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_are_durable_idempotent_events_and_history_counts_them() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    let joined = ann.join("t").await;
    ben.join("t").await;
    ann.send_message("t", "m1", "first").await;
    ann.send_message("t", "m2", "second").await;
    ben.until("message:new").await;
    ben.until("message:new").await;

    let first = react(&mut ann, true, 1, "👍").await;
    assert_eq!(
        (&first["type"], &first["seq"]),
        (&json!("message:ack"), &json!(1))
    );
    assert!(first["offset"].is_string(), "{first}");
    let added = ben.until("reaction:added").await;
    assert_eq!(
        added,
        json!({"type": "reaction:added", "team": "t", "seq": 1, "user": "ann", "emoji": "👍",
               "ts": added["ts"], "offset": first["offset"]})
    );
    // Again: acked without an offset, and nobody is told.
    let again = react(&mut ann, true, 1, "👍").await;
    assert_eq!(again["type"], "message:ack");
    assert!(again.get("offset").is_none(), "{again}");
    ben.settled().await;
    // Removing one the user does not have: the same.
    let none = react(&mut ben, false, 1, "👍").await;
    assert!(none.get("offset").is_none(), "{none}");
    ann.settled().await;

    react(&mut ben, true, 1, "🎉").await;
    react(&mut ben, true, 1, "👍").await;
    react(&mut ann, true, 2, "team:parrot").await;
    react(&mut ann, false, 2, "team:parrot").await;
    let removed = ben.until("reaction:removed").await;
    assert_eq!(
        (&removed["seq"], &removed["emoji"]),
        (&json!(2), &json!("team:parrot"))
    );
    let last = react(&mut ann, true, 1, "🎉").await;

    // Recovery replays them in the team's order.
    let mut carl = Client::connect(g2.addr(), &env.token("carl", &["t"])).await;
    let since = json!({"offset": joined["offset"], "epoch": joined["epoch"]});
    carl.send(json!({"type": "room:join", "team": "t", "since": since}))
        .await;
    let mut replayed = Vec::new();
    loop {
        let frame = carl.recv().await;
        match frame["type"].as_str() {
            Some("presence:list") => break,
            Some("room:joined") => assert_eq!(frame["recovered"], true),
            Some(kind) => replayed.push(format!(
                "{kind} {} {}",
                frame["seq"],
                frame["emoji"].as_str().unwrap_or("")
            )),
            None => unreachable!(),
        }
    }
    assert_eq!(
        replayed,
        [
            "message:new 1 ",
            "message:new 2 ",
            "reaction:added 1 👍",
            "reaction:added 1 🎉",
            "reaction:added 1 👍",
            "reaction:added 2 team:parrot",
            "reaction:removed 2 team:parrot",
            "reaction:added 1 🎉",
        ]
    );

    // Synced: per-message aggregates, ordered by first reaction, `me` per reader; none
    // left at zero.
    synced_through(&env, &last).await;
    assert_eq!(
        reactions_in_history(&env, g1.addr(), "ann").await,
        [
            json!({"seq": 2, "reactions": []}),
            json!({"seq": 1, "reactions": [
                {"emoji": "👍", "count": 2, "me": true},
                {"emoji": "🎉", "count": 2, "me": true}]}),
        ]
    );
    react(&mut ann, false, 1, "👍").await;
    let last = react(&mut ben, false, 1, "🎉").await;
    synced_through(&env, &last).await;
    assert_eq!(
        reactions_in_history(&env, g2.addr(), "ben").await[1],
        json!({"seq": 1, "reactions": [
            {"emoji": "👍", "count": 1, "me": true},
            {"emoji": "🎉", "count": 1, "me": false}]})
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reactions_are_refused_and_change_nothing() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-violations=1000"]).await;
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t", "u"])).await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t"])).await;
    // Only watches.
    let mut dan = Client::connect(g.addr(), &env.token("dan", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    dan.join("t").await;
    ann.send_message("t", "m1", "first").await;
    ann.send_message("t", "m2", "second").await;
    dan.until("message:new").await;
    dan.until("message:new").await;

    let long = "a".repeat(65);
    let hostile = [
        json!(""),
        json!(long),
        json!("👍 "),
        json!("a\u{200b}\u{0}"),
        json!("line\nbreak"),
        json!("\u{202e}"),
        json!("👍\u{200b}"),
        json!(5),
        json!(null),
    ];
    for emoji in hostile {
        ann.send(json!({"type": "reaction:add", "team": "t", "seq": 1, "emoji": emoji}))
            .await;
        let error = ann.expect("error").await;
        assert_eq!(error["code"], "bad_request", "{emoji}: {error}");
    }
    // 64 bytes is the most.
    let longest = "b".repeat(64);
    assert!(react(&mut ann, true, 1, &longest).await["offset"].is_string());
    assert_eq!(react(&mut ann, true, 99, "👍").await["code"], "not_found");
    assert_eq!(react(&mut ann, true, 0, "👍").await["code"], "not_found");
    ann.send(json!({"type": "message:delete", "team": "t", "seq": 2}))
        .await;
    ann.until("message:ack").await;
    assert_eq!(react(&mut ann, true, 2, "👍").await["code"], "not_found");
    let mut outsider = Client::connect(g.addr(), &env.token("eve", &["t"])).await;
    assert_eq!(
        react(&mut outsider, true, 1, "👍").await["code"],
        "not_joined"
    );
    // Not a member of the team reacted to, even when joined elsewhere.
    ann.join("u").await;
    ann.send(json!({"type": "reaction:add", "team": "u", "seq": 1, "emoji": "x"}))
        .await;
    assert_eq!(ann.until("error").await["code"], "not_found");

    // 50 distinct emojis on a message at most; more of one already there is fine, and a
    // removal makes room.
    for n in 1..50 {
        let ack = react(&mut ann, true, 1, &format!("e{n}")).await;
        assert!(ack["offset"].is_string(), "{ack}");
    }
    let refused = react(&mut ben, true, 1, "one-too-many").await;
    assert_eq!(
        (&refused["code"], &refused["team"]),
        (&json!("too_large"), &json!("t"))
    );
    assert!(react(&mut ben, true, 1, "e7").await["offset"].is_string());
    react(&mut ann, false, 1, "e7").await;
    // Ben's e7 still stands.
    assert_eq!(
        react(&mut ben, true, 1, "one-too-many").await["code"],
        "too_large"
    );
    react(&mut ben, false, 1, "e7").await;
    assert!(react(&mut ben, true, 1, "one-too-many").await["offset"].is_string());
    assert_eq!(
        react(&mut ann, true, 1, "e8-again").await["code"],
        "too_large"
    );

    // Nothing refused reached anyone: Dan saw exactly the accepted ones.
    dan.send(json!({"type": "ping"})).await;
    let mut seen = Vec::new();
    loop {
        let frame = dan.recv().await;
        match frame["type"].as_str() {
            Some("pong") => break,
            Some("message:deleted") => {}
            Some(kind) => seen.push(format!(
                "{kind} {} {}",
                frame["user"].as_str().unwrap(),
                frame["emoji"].as_str().unwrap()
            )),
            None => unreachable!(),
        }
    }
    let mut expected = vec![format!("reaction:added ann {longest}")];
    expected.extend((1..50).map(|n| format!("reaction:added ann e{n}")));
    expected.extend([
        "reaction:added ben e7".to_owned(),
        "reaction:removed ann e7".to_owned(),
        "reaction:removed ben e7".to_owned(),
        "reaction:added ben one-too-many".to_owned(),
    ]);
    assert_eq!(seen, expected);
}

/// A message older than the messages hash keeps: its reactions are checked against what
/// PostgreSQL holds once Redis no longer has them (they expired, or Redis lost them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_to_old_messages_are_checked_against_postgres() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--stream-maxlen=5"]).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    ann.send_message("t", "m1", "old").await;
    react(&mut ann, true, 1, "👍").await;
    react(&mut ben, true, 1, "👀").await;
    let mut last = Value::Null;
    for n in 0..8 {
        ann.send(
            json!({"type": "message:send", "team": "t", "client_id": format!("later{n}"),
                        "body": "later"}),
        )
        .await;
        last = ann.until("message:ack").await;
    }
    synced_through(&env, &last).await;
    // Message 1 left the hash: its reactions now expire instead of living on.
    let keys = env.keys();
    let mut redis = env.redis().await;
    let key = keys.message_reactions("t", 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0, "ttl {ttl}");
    // While Redis still holds them, a reaction to the old message is checked there (the
    // message itself is looked up in PostgreSQL).
    assert!(react(&mut ben, true, 1, "🎉").await["offset"].is_string());
    assert!(react(&mut ben, true, 1, "🎉").await.get("offset").is_none());
    assert!(react(&mut ben, false, 1, "🎉").await["offset"].is_string());
    // As if they had expired: loaded from PostgreSQL at the next reaction.
    let _: () = redis::AsyncCommands::del(&mut redis, &key).await.unwrap();
    assert!(react(&mut ann, true, 1, "👍").await.get("offset").is_none());
    assert!(
        react(&mut ben, false, 1, "👍")
            .await
            .get("offset")
            .is_none()
    );
    let removed = react(&mut ben, false, 1, "👀").await;
    assert!(removed["offset"].is_string(), "{removed}");
    let added = react(&mut ben, true, 1, "👍").await;
    synced_through(&env, &added).await;
    let token = env.token("ben", &["t"]);
    let (_, page) = http_get(
        g.addr(),
        &format!("/v1/teams/t/messages?token={token}&after=0&limit=1"),
        &[],
    )
    .await;
    assert_eq!(
        page["messages"][0]["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}])
    );
    stop.cancel();
}
