//! The chat model's fields of a message (../shared/PROTOCOL.md, "Chat model"): `mentions`
//! and `attachments` checked, carried by `message:new` and history, blanked with a
//! deleted message; a mention told to the user's connections on any gateway, joined or
//! not, once, and only where the token holds the team.

mod common;

use serde_json::{Value, json};
use teamchat_testkit::{Client, TestEnv, http_get};

fn attachment() -> Value {
    json!({"url": "https://files.example.com/t/plan.pdf", "name": "plan.pdf",
           "mime": "application/pdf", "size": 48_213, "preview": "dropped"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_and_attachments_travel_with_the_message_and_go_with_a_delete() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;

    ann.send(
        json!({"type": "message:send", "team": "t", "client_id": "c1", "body": "see the plan",
                    "mentions": ["ben", "carl", "ben"], "attachments": [attachment()]}),
    )
    .await;
    let ack = ann.expect("message:ack").await;
    // Ben is mentioned and joined: the mention comes too, before or after the message
    // (they travel apart: the team's channel, the control channel).
    let (mut new, mut mention) = (ben.recv().await, ben.recv().await);
    if new["type"] == "mention" {
        std::mem::swap(&mut new, &mut mention);
    }
    assert_eq!(
        (&new["type"], &mention["type"]),
        (&json!("message:new"), &json!("mention"))
    );
    assert_eq!(mention["seq"], ack["seq"]);
    let expected_attachment = json!({"url": "https://files.example.com/t/plan.pdf",
        "name": "plan.pdf", "mime": "application/pdf", "size": 48_213});
    assert_eq!(new["mentions"], json!(["ben", "carl"]));
    assert_eq!(new["attachments"], json!([expected_attachment]));
    // A message without them has neither key.
    let plain = ann.send_message("t", "c2", "no files").await;
    let new = ben.expect("message:new").await;
    assert!(
        new.get("mentions").is_none() && new.get("attachments").is_none(),
        "{new}"
    );

    let offset: i64 = plain["offset"].as_str().unwrap().parse().unwrap();
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", offset).await;
    let token = env.token("ben", &["t"]);
    let (status, page) = http_get(
        g2.addr(),
        &format!("/v1/teams/t/messages?token={token}"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let stored = &page["messages"][1];
    assert_eq!(stored["mentions"], json!(["ben", "carl"]));
    assert_eq!(stored["attachments"], json!([expected_attachment]));

    // Deleted: the files and mentions go with the body, in history and in PostgreSQL.
    ann.send(json!({"type": "message:delete", "team": "t", "seq": ack["seq"]}))
        .await;
    let deleted = ann.expect("message:ack").await;
    let offset: i64 = deleted["offset"].as_str().unwrap().parse().unwrap();
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", offset).await;
    let (_, page) = http_get(
        g2.addr(),
        &format!("/v1/teams/t/messages?token={token}"),
        &[],
    )
    .await;
    let stored = &page["messages"][1];
    assert_eq!(stored["deleted"], true);
    assert!(
        stored.get("mentions").is_none() && stored.get("attachments").is_none(),
        "{stored}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_reaches_the_user_on_any_gateway_once_where_the_token_holds_the_team() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    // On the other gateway, none joined to the team: carl twice, dave with a token for
    // another team only, and ann's own second connection.
    let mut carl = Client::connect(g2.addr(), &env.token("carl", &["t"])).await;
    let mut carl_phone = Client::connect(g2.addr(), &env.token("carl", &["t", "u"])).await;
    let mut dave = Client::connect(g2.addr(), &env.token("dave", &["u"])).await;
    let mut ann_phone = Client::connect(g2.addr(), &env.token("ann", &["t"])).await;

    let send = json!({"type": "message:send", "team": "t", "client_id": "m1", "body": "@carl @dave @ann",
                      "mentions": ["carl", "dave", "ann"]});
    ann.send(send.clone()).await;
    let ack = ann.expect("message:ack").await;
    for carl in [&mut carl, &mut carl_phone] {
        let mention = carl.expect("mention").await;
        assert_eq!(
            mention,
            json!({"type": "mention", "team": "t", "seq": ack["seq"], "user": "ann", "ts": ack["ts"]})
        );
    }
    // The same send again is a duplicate: acked as the first, and no second mention.
    ann.send(send).await;
    assert_eq!(ann.expect("message:ack").await["seq"], ack["seq"]);
    // A marker: a message mentioning carl only, after which nothing else may have come.
    ann.send(
        json!({"type": "message:send", "team": "t", "client_id": "m2", "body": "marker",
                    "mentions": ["carl"]}),
    )
    .await;
    let marker = ann.expect("message:ack").await;
    for carl in [&mut carl, &mut carl_phone] {
        assert_eq!(carl.expect("mention").await["seq"], marker["seq"]);
        carl.settled().await;
    }
    // Dave's token does not hold the team; the author is not told of her own mention.
    dave.settled().await;
    ann_phone.settled().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mentions_and_attachments_are_refused_and_change_nothing() {
    let env = TestEnv::new().await;
    // Each refusal counts as a violation: more than the default ten are sent here.
    let g = common::gateway(&env, &["--max-violations=100"]).await;
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    let many: Vec<String> = (0..10_000).map(|n| format!("user{n}")).collect();
    let with = |key: &str, value: Value| {
        let mut attachment = attachment();
        attachment[key] = value;
        json!([attachment])
    };
    let refused = [
        ("mentions", json!(many)),
        ("mentions", json!(["not an id"])),
        ("mentions", json!("ann")),
        (
            "attachments",
            with("url", json!("javascript:alert(document.cookie)")),
        ),
        (
            "attachments",
            with(
                "thumb_url",
                json!("data:image/svg+xml,<svg onload=alert(1)>"),
            ),
        ),
        (
            "attachments",
            with("url", json!("http://files.example.com/a.pdf")),
        ),
        ("attachments", with("name", json!("x".repeat(10_000)))),
        (
            "attachments",
            with("mime", json!("text/html; charset=<script>")),
        ),
        ("attachments", with("size", json!(-5))),
        ("attachments", json!(vec![attachment(); 11])),
        ("attachments", json!([1])),
    ];
    for (n, (key, value)) in refused.into_iter().enumerate() {
        let mut send = json!({"type": "message:send", "team": "t", "client_id": format!("h{n}"),
                              "body": "x", "rid": format!("r{n}")});
        send[key] = value;
        ann.send(send).await;
        let error = ann.recv().await;
        assert_eq!(error["code"], "bad_request", "{key}: {error}");
        assert_eq!(error["rid"], format!("r{n}"));
        assert!(error["message"].as_str().unwrap().len() <= 200);
    }
    // Nothing was appended: the next message is the team's first.
    assert_eq!(ann.send_message("t", "ok", "fine").await["seq"], 1);
}

/// A thread reply through `message:send` with `parent`: one order with the team's other
/// messages, the parent's counters kept by the worker (deleted replies count), history
/// with `top_level=true` and a thread's replies oldest first; a reply to a reply, to an
/// unknown or deleted message, refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_replies_keep_the_team_order_and_the_parent_s_counters() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    let reply = |client_id: &str, parent: u64| {
        json!({"type": "message:send", "team": "t", "client_id": client_id, "body": client_id,
               "parent": parent})
    };

    ann.send(json!({"type": "message:send", "team": "t", "client_id": "top1", "body": "x"}))
        .await;
    assert_eq!(ann.until("message:ack").await["seq"], 1);
    ben.send(reply("r1", 1)).await;
    assert_eq!(ben.until("message:ack").await["seq"], 2);
    let new = ann.until("message:new").await;
    assert_eq!((&new["seq"], &new["parent"]), (&json!(2), &json!(1)));
    ann.send(json!({"type": "message:send", "team": "t", "client_id": "top2", "body": "x"}))
        .await;
    assert_eq!(ann.until("message:ack").await["seq"], 3);
    ben.send(reply("r2", 1)).await;
    let r2 = ben.until("message:ack").await;
    ben.send(reply("r3", 3)).await;
    let r3 = ben.until("message:ack").await;
    assert_eq!(r3["seq"], 5);

    for (parent, code) in [(2, "bad_request"), (99, "not_found"), (0, "bad_request")] {
        ben.send(reply("refused", parent)).await;
        let error = ben.until("error").await;
        assert_eq!(error["code"], code, "parent {parent}: {error}");
    }
    // A deleted reply still counts; a deleted message takes no reply.
    ben.send(json!({"type": "message:delete", "team": "t", "seq": 4}))
        .await;
    ben.until("message:ack").await;
    ann.send(json!({"type": "message:delete", "team": "t", "seq": 3}))
        .await;
    let deleted = ann.until("message:ack").await;
    ben.send(reply("to-deleted", 3)).await;
    assert_eq!(ben.until("error").await["code"], "not_found");

    let offset: i64 = deleted["offset"].as_str().unwrap().parse().unwrap();
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", offset).await;
    let token = env.token("ann", &["t"]);
    let get = |path: String| {
        let addr = g1.addr();
        async move { http_get(addr, &path, &[]).await }
    };
    let (status, top) = get(format!("/v1/teams/t/messages?top_level=true&token={token}")).await;
    assert_eq!(status, 200, "{top}");
    let counters: Vec<Value> = top["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!([m["seq"], m["reply_count"], m["last_reply_ts"]]))
        .collect();
    assert_eq!(counters, [json!([3, 1, r3["ts"]]), json!([1, 2, r2["ts"]])]);
    let (_, all) = get(format!("/v1/teams/t/messages?token={token}")).await;
    let replies_in_all: Vec<&Value> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("parent").is_some())
        .map(|m| &m["seq"])
        .collect();
    assert_eq!(replies_in_all, [&json!(5), &json!(4), &json!(2)]);
    assert!(
        all["messages"][0].get("reply_count").is_none(),
        "a reply has no counters"
    );

    let (status, thread) = get(format!("/v1/teams/t/messages/1/replies?token={token}")).await;
    assert_eq!(status, 200, "{thread}");
    let seqs: Vec<&Value> = thread["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["seq"])
        .collect();
    assert_eq!(seqs, [&json!(2), &json!(4)]);
    assert_eq!(thread["has_more"], false);
    let (_, after) = get(format!(
        "/v1/teams/t/messages/1/replies?after=2&limit=1&token={token}"
    ))
    .await;
    assert_eq!(after["messages"][0]["seq"], 4);
    let (status, _) = get(format!(
        "/v1/teams/t/messages/1/replies?before=9&token={token}"
    ))
    .await;
    assert_eq!(status, 400);
    stop.cancel();
}

/// A parent older than Redis keeps is checked against what PostgreSQL stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_an_old_parent_is_checked_against_postgres() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--stream-maxlen=5"]).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    ann.send_message("t", "parent", "parent").await;
    ann.send(json!({"type": "message:send", "team": "t", "client_id": "old-reply", "body": "r", "parent": 1}))
        .await;
    ann.until("message:ack").await;
    let mut last = Value::Null;
    for n in 0..8 {
        last = ann.send_message("t", &format!("later{n}"), "later").await;
    }
    let offset: i64 = last["offset"].as_str().unwrap().parse().unwrap();
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", offset).await;
    ann.send(
        json!({"type": "message:send", "team": "t", "client_id": "late", "body": "r", "parent": 1}),
    )
    .await;
    let ack = ann.until("message:ack").await;
    assert_eq!(ack["seq"], 11);
    ann.send(json!({"type": "message:send", "team": "t", "client_id": "nested", "body": "r", "parent": 2}))
        .await;
    assert_eq!(ann.until("error").await["code"], "bad_request");
    // Deleted while PostgreSQL may still show it: no pin, no reply, from then on.
    ann.send(json!({"type": "message:delete", "team": "t", "seq": 1}))
        .await;
    ann.until("message:ack").await;
    ann.send(json!({"type": "message:pin", "team": "t", "seq": 1}))
        .await;
    assert_eq!(ann.until("error").await["code"], "not_found");
    ann.send(json!({"type": "message:send", "team": "t", "client_id": "orphan", "body": "r", "parent": 1}))
        .await;
    assert_eq!(ann.until("error").await["code"], "not_found");
    stop.cancel();
}

/// Pins are durable events: ordered, replayed on recovery, idempotent (a pin of a pinned
/// message is acked without an offset and tells nobody), refused for unknown or deleted
/// messages and teams not joined; the pins list and history show them once synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_are_durable_events_listed_most_recent_first() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    let joined = ann.join("t").await;
    ben.join("t").await;
    for n in 1..=3 {
        ann.send_message("t", &format!("m{n}"), &format!("message {n}"))
            .await;
    }
    let pin = |seq: u64, pin: bool| {
        let kind = if pin { "message:pin" } else { "message:unpin" };
        json!({"type": kind, "team": "t", "seq": seq})
    };

    ben.send(pin(1, true)).await;
    let first = ben.until("message:ack").await;
    assert!(first["offset"].is_string(), "{first}");
    let pinned = ann.until("message:pinned").await;
    assert_eq!(
        pinned,
        json!({"type": "message:pinned", "team": "t", "seq": 1, "user": "ben",
               "ts": pinned["ts"], "offset": first["offset"]})
    );
    // Again: acked without an offset, and nobody is told.
    ben.send(pin(1, true)).await;
    let again = ben.until("message:ack").await;
    assert!(again.get("offset").is_none(), "{again}");
    assert_eq!((&again["seq"], &again["team"]), (&json!(1), &json!("t")));
    ann.settled().await;

    ann.send(pin(3, true)).await;
    ann.until("message:ack").await;
    ann.send(pin(2, false)).await;
    assert!(ann.until("message:ack").await.get("offset").is_none());
    ann.send(pin(99, true)).await;
    assert_eq!(ann.until("error").await["code"], "not_found");
    ann.send(json!({"type": "message:delete", "team": "t", "seq": 2}))
        .await;
    ann.until("message:ack").await;
    ann.send(pin(2, true)).await;
    assert_eq!(ann.until("error").await["code"], "not_found");
    let mut carl = Client::connect(g2.addr(), &env.token("carl", &["t"])).await;
    carl.send(pin(1, false)).await;
    assert_eq!(carl.until("error").await["code"], "not_joined");

    // Recovery replays them among the messages.
    let mut dave = Client::connect(g2.addr(), &env.token("dave", &["t"])).await;
    let since = json!({"offset": joined["offset"], "epoch": joined["epoch"]});
    dave.send(json!({"type": "room:join", "team": "t", "since": since}))
        .await;
    let mut replayed = Vec::new();
    loop {
        let frame = dave.recv().await;
        match frame["type"].as_str() {
            Some("presence:list") => break,
            Some("room:joined") => assert_eq!(frame["recovered"], true),
            Some(kind) => replayed.push(format!("{kind} {}", frame["seq"])),
            None => unreachable!(),
        }
    }
    assert_eq!(
        replayed,
        [
            "message:new 1",
            "message:new 2",
            "message:new 3",
            "message:pinned 1",
            "message:pinned 3",
            "message:deleted 2"
        ]
    );

    // Once synced: the pins list (most recently pinned first) and history's `pinned`.
    ann.send(pin(1, false)).await;
    ann.until("message:ack").await;
    ann.send(pin(1, true)).await;
    let last = ann.until("message:ack").await["offset"].clone();
    let offset: i64 = last.as_str().unwrap().parse().unwrap();
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", offset).await;
    let token = env.token("ann", &["t"]);
    let (status, pins) = http_get(g1.addr(), &format!("/v1/teams/t/pins?token={token}"), &[]).await;
    assert_eq!(status, 200, "{pins}");
    let seqs: Vec<&Value> = pins["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["seq"])
        .collect();
    assert_eq!(seqs, [&json!(1), &json!(3)]);
    let (_, page) = http_get(
        g1.addr(),
        &format!("/v1/teams/t/messages?token={token}"),
        &[],
    )
    .await;
    let flags: Vec<(Value, Value)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].clone(), m["pinned"].clone()))
        .collect();
    assert_eq!(
        flags,
        [
            (json!(3), json!(true)),
            (json!(2), json!(false)),
            (json!(1), json!(true))
        ]
    );

    // Redis loses the team's state: seeded again, the pins come back from PostgreSQL, so
    // an unpin is carried out, not acked as if there were nothing to unpin.
    let keys = env.keys();
    let mut redis = env.redis().await;
    let _: () = redis::AsyncCommands::del(&mut redis, &[keys.team_meta("t"), keys.team_pins("t")])
        .await
        .unwrap();
    // (The old epoch's connections are told to rejoin: a new one does.)
    drop(ann);
    let mut eve = Client::connect(g1.addr(), &env.token("eve", &["t"])).await;
    eve.join("t").await;
    eve.send(pin(3, false)).await;
    let unpinned = eve.until("message:ack").await;
    assert!(unpinned["offset"].is_string(), "{unpinned}");
    eve.send(pin(1, true)).await;
    assert!(eve.until("message:ack").await.get("offset").is_none());
    stop.cancel();
}
