//! `room:join` with `since` replays exactly what was missed, or says it cannot.

mod common;

use serde_json::json;
use teamchat_testkit::{Client, TestEnv};

/// The next `message:ack`, passing over the events others cause meanwhile.
async fn ack_of(client: &mut Client) -> serde_json::Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] == "message:ack" {
            return frame;
        }
    }
}

/// Deletes the team's stream and meta, as a Redis restart without persistence would;
/// returns the connection used.
async fn lose_team_stream(env: &TestEnv, team: &str) -> teamchat_shared::redis_conn::Redis {
    use redis::AsyncCommands;
    let keys = env.keys();
    let mut redis = env.redis().await;
    let _: () = redis
        .del(&[keys.team_meta(team), keys.team_events(team)])
        .await
        .unwrap();
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_with_since_replays_the_missed_events_before_live_ones() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut alice = Client::connect(g1.addr(), &env.token("alice", &["t"])).await;
    alice.join("t").await;
    let mut bob = Client::connect(g2.addr(), &env.token("bob", &["t"])).await;
    let joined = bob.join("t").await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    alice.send_message("t", "a0", "seen").await;
    let seen = bob.expect("message:new").await;
    drop(bob);

    // 100 missed events of every durable kind, with typing in between (not replayed).
    let mut carol = Client::connect(g2.addr(), &env.token("carol", &["t"])).await;
    carol.join("t").await;
    let mut missed: Vec<(String, String)> = Vec::new(); // (type, offset)
    for n in 1..=25 {
        alice
            .send(json!({"type":"message:send","team":"t","client_id":format!("a{n}"),"body":format!("missed {n}")}))
            .await;
        let ack = ack_of(&mut alice).await;
        missed.push(("message:new".into(), ack["offset"].as_str().unwrap().into()));
        alice.send(json!({"type":"typing:start","team":"t"})).await;
        alice
            .send(json!({"type":"message:edit","team":"t","seq":ack["seq"],"body":"edited"}))
            .await;
        let edit = ack_of(&mut alice).await;
        missed.push((
            "message:edited".into(),
            edit["offset"].as_str().unwrap().into(),
        ));
        alice
            .send(json!({"type":"message:delete","team":"t","seq":ack["seq"]}))
            .await;
        let delete = ack_of(&mut alice).await;
        missed.push((
            "message:deleted".into(),
            delete["offset"].as_str().unwrap().into(),
        ));
        // Receipts go out at most once a second per connection: each from a new one.
        let mut reader = Client::connect(g2.addr(), &env.token("carol", &["t"])).await;
        reader.join("t").await;
        reader
            .send(json!({"type":"receipt:update","team":"t","seq":ack["seq"]}))
            .await;
        let receipt = loop {
            let frame = carol.recv().await;
            if frame["type"] == "receipt:update" {
                break frame;
            }
        };
        assert_eq!(receipt["seq"], ack["seq"]);
        missed.push((
            "receipt:update".into(),
            receipt["offset"].as_str().unwrap().into(),
        ));
    }
    assert_eq!(missed.len(), 100);
    let mut bob = Client::connect(g1.addr(), &env.token("bob", &["t"])).await;
    bob.send(json!({"type":"room:join","team":"t","rid":"r","since":{"offset":seen["offset"],"epoch":epoch}}))
        .await;
    let joined = bob.expect("room:joined").await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["rid"], "r");
    assert_eq!(
        joined["offset"],
        (seen["offset"].as_str().unwrap().parse::<u64>().unwrap() + 100).to_string()
    );
    alice
        .send(
            json!({"type":"message:send","team":"t","client_id":"live","body":"after the rejoin"}),
        )
        .await;
    let live = ack_of(&mut alice).await;
    let mut last: u64 = seen["offset"].as_str().unwrap().parse().unwrap();
    for (kind, offset) in &missed {
        let event = bob.recv().await;
        assert_eq!(event["type"], kind.as_str(), "{event}");
        assert_eq!(event["offset"], offset.as_str());
        let offset: u64 = event["offset"].as_str().unwrap().parse().unwrap();
        assert!(offset > last);
        last = offset;
    }
    let online = bob.expect("presence:list").await;
    let mut users: Vec<&str> = online["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob", "carol"]);
    bob.expect("receipt:list").await;
    assert_eq!(bob.expect("message:new").await["offset"], live["offset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_with_another_epoch_or_a_future_offset_is_not_recovered() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let mut alice = Client::connect(g.addr(), &env.token("alice", &["a", "b", "c"])).await;
    let epoch = alice.join("a").await["epoch"].as_str().unwrap().to_owned();
    alice.send_message("a", "x", "one").await;
    let mut bob = Client::connect(g.addr(), &env.token("bob", &["a", "b"])).await;
    bob.send(json!({"type":"room:join","team":"a","since":{"offset":"0","epoch":"other"}}))
        .await;
    let joined = bob.expect("room:joined").await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["offset"], "1");
    let mut carol = Client::connect(g.addr(), &env.token("carol", &["a"])).await;
    carol
        .send(json!({"type":"room:join","team":"a","since":{"offset":"99","epoch":epoch}}))
        .await;
    assert_eq!(carol.expect("room:joined").await["recovered"], false);
    let mut dave = Client::connect(g.addr(), &env.token("dave", &["a"])).await;
    dave.send(json!({"type":"room:join","team":"a","since":{"offset":"1","epoch":epoch}}))
        .await;
    assert_eq!(dave.expect("room:joined").await["recovered"], true);
    // Without since, `recovered` is absent.
    assert!(alice.join("c").await.get("recovered").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_joins_at_most_max_rooms() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-rooms=2"]).await;
    let mut c = Client::connect(g.addr(), &env.token("u", &["a", "b", "c"])).await;
    c.join("a").await;
    c.join("b").await;
    c.send(json!({"type":"room:join","team":"c"})).await;
    let error = c.expect("room:error").await;
    assert_eq!(
        (error["code"].as_str(), error["team"].as_str()),
        (Some("too_many_rooms"), Some("c"))
    );
    c.send(json!({"type":"room:leave","team":"a"})).await;
    c.expect("room:left").await;
    c.join("c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_team_stream_closes_1012_and_rejoining_is_not_recovered() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut reader = Client::connect(g1.addr(), &env.token("reader", &["t"])).await;
    let joined = reader.join("t").await;
    let old_epoch = joined["epoch"].as_str().unwrap().to_owned();
    let mut writer = Client::connect(g2.addr(), &env.token("writer", &["t"])).await;
    writer.join("t").await;
    writer.send_message("t", "m1", "before the loss").await;
    let seen = reader.expect("message:new").await;

    // Redis loses the team's stream and meta (say, a restart without persistence).
    lose_team_stream(&env, "t").await;
    // The writer's own connection is closed too (its ack may or may not come first).
    writer
        .send(json!({"type":"message:send","team":"t","client_id":"m2","body":"after the loss"}))
        .await;

    let (code, _) = reader.close_code().await;
    assert_eq!(code, 1012);
    let mut reader = Client::connect(g1.addr(), &env.token("reader", &["t"])).await;
    reader
        .send(json!({"type":"room:join","team":"t","since":{"offset":seen["offset"],"epoch":old_epoch}}))
        .await;
    let joined = reader.expect("room:joined").await;
    assert_eq!(joined["recovered"], false);
    assert_ne!(joined["epoch"], old_epoch.as_str());
    assert_eq!(
        joined["offset"], "1",
        "offsets start again under the new epoch (PostgreSQL holds nothing of the team)"
    );
}

/// The tail check reads what pub/sub did not bring. If the team's stream was lost and a
/// new one has already grown past the room's position meanwhile, its events are not the
/// next ones of the old stream: members are closed with 1012, not given them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_check_notices_a_reset_stream_that_grew_past_the_room() {
    use redis::AsyncCommands;
    let env = TestEnv::new().await;
    let gateway = common::gateway(&env, &["--tail-check-ms=50"]).await;
    let mut reader = Client::connect(common::addr(&gateway), &env.token("reader", &["t"])).await;
    let old_epoch = reader.join("t").await["epoch"].as_str().unwrap().to_owned();
    let mut writer = Client::connect(common::addr(&gateway), &env.token("writer", &["t"])).await;
    writer.join("t").await;
    writer.send_message("t", "m1", "before the loss").await;
    assert_eq!(reader.expect("message:new").await["offset"], "1");

    // The stream is lost and a new one (another epoch) gets three events whose
    // notifications never arrive: only the tail check can find them.
    let keys = env.keys();
    let mut redis = lose_team_stream(&env, "t").await;
    for n in 1..=3u64 {
        let data = json!({"id": format!("n{n}"), "client_id": format!("n{n}"), "user": "writer",
                          "body": "in the new stream", "ts": 1});
        let fields = [
            ("k", "message".to_owned()),
            ("seq", n.to_string()),
            ("src", "elsewhere".to_owned()),
            ("d", data.to_string()),
        ];
        let _: String = redis
            .xadd(keys.team_events("t"), format!("{n}-0"), &fields)
            .await
            .unwrap();
    }
    let meta = [
        ("epoch", format!("{old_epoch}-new")),
        ("offset", "3".into()),
        ("seq", "3".into()),
    ];
    let _: () = redis
        .hset_multiple(keys.team_meta("t"), &meta)
        .await
        .unwrap();

    let (code, frames) = reader.close_code().await;
    assert_eq!(code, 1012, "frames before the close: {frames:?}");
    assert!(
        frames.iter().all(|f| f["type"] != "message:new"),
        "no event of the new stream delivered as if it followed: {frames:?}"
    );
}

/// A message appended straight through storage, as the gateway does on `message:send`.
async fn append_message(
    storage: &teamchat_gateway::storage::Storage,
    client_id: &str,
) -> teamchat_gateway::broker::Appended {
    use teamchat_shared::event::{EventData, MessageData};
    let data = EventData::Message(MessageData {
        id: format!("id-{client_id}"),
        client_id: client_id.into(),
        user: "alice".into(),
        name: None,
        body: "hello".into(),
        meta: None,
        ts: 1,
        parent: None,
        mentions: Vec::new(),
        attachments: Vec::new(),
    });
    let append = teamchat_gateway::broker::Append {
        team: "t",
        src: "session",
        data: &data,
        target: 0,
        staff: false,
        cost: 0,
        limit: None,
    };
    match storage.append(&append).await.expect("append") {
        teamchat_gateway::broker::AppendOutcome::Appended(appended) => appended,
        other => panic!("not appended: {other:?}"),
    }
}

/// Storage on the test's Redis prefix and database, as a gateway has.
async fn storage(env: &TestEnv) -> teamchat_gateway::storage::Storage {
    let broker = teamchat_gateway::broker::Broker::connect(&env.gateway_config(&[]))
        .await
        .unwrap();
    teamchat_gateway::storage::Storage::new(broker, env.pg().await)
}

/// The team's meta hash lost (say, evicted) while its stream and messages were not: the
/// team is seeded again from what Redis still has, so the next append follows the stream's
/// top instead of failing for good on an offset the stream has passed, takes the seq after
/// the newest message instead of giving one twice, and the hash is written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_after_the_meta_hash_is_lost_follows_the_streams_top() {
    use redis::AsyncCommands;
    let env = TestEnv::new().await;
    let storage = storage(&env).await;
    for n in 1..=3u64 {
        assert_eq!(append_message(&storage, &format!("c{n}")).await.offset, n);
    }
    let keys = env.keys();
    let mut redis = env.redis().await;
    let _: () = redis.del(keys.team_meta("t")).await.unwrap();

    let after = append_message(&storage, "c4").await;
    assert!(after.is_new);
    assert_eq!(after.offset, 4, "the offset after the stream's top");
    assert_eq!(after.seq, 4, "the seq after the newest message");
    let first: String = redis.hget(keys.team_messages("t"), 1).await.unwrap();
    assert_eq!(first, "alice\tid-c1", "the first message keeps its seq");
    let top: redis::streams::StreamRangeReply = redis
        .xrevrange_count(keys.team_events("t"), "+", "-", 1)
        .await
        .unwrap();
    assert_eq!(top.ids[0].id, "4-0");
    let offset: String = redis.hget(keys.team_meta("t"), "offset").await.unwrap();
    assert_eq!(offset, "4", "the meta hash written again");
    // The next append goes on from the hash again.
    let next = append_message(&storage, "c5").await;
    assert_eq!((next.offset, next.seq), (5, 5));
}

/// A team whose whole Redis state is gone (a Redis without persistence restarted, say)
/// while PostgreSQL holds what the worker synced: its counters go on after PostgreSQL's
/// newest seq and synced offset, so nothing is given out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_without_redis_state_goes_on_after_what_postgresql_holds() {
    let env = TestEnv::new().await;
    let pg = env.pg().await;
    // Messages 1–5 at offsets 1–5, the watermark at 6 and offset 9 synced ahead of it
    // (7 and 8 were never synced, and went with Redis).
    sqlx::query(
        r#"INSERT INTO messages (team, seq, id, body, "offset", version)
           SELECT 't', n, 'old' || n, 'old', n, n FROM generate_series(1, 5) AS n"#,
    )
    .execute(&pg)
    .await
    .unwrap();
    sqlx::query("INSERT INTO team_sync (team, synced_offset, waiting) VALUES ('t', 6, true)")
        .execute(&pg)
        .await
        .unwrap();
    sqlx::query(r#"INSERT INTO synced_ahead (team, "offset") VALUES ('t', 9)"#)
        .execute(&pg)
        .await
        .unwrap();
    let storage = storage(&env).await;

    let state = storage.team_state("t").await.unwrap();
    assert_eq!(
        (state.offset, state.seq),
        (9, 5),
        "room:joined starts there"
    );
    assert!(!state.epoch.is_empty());
    let appended = append_message(&storage, "c1").await;
    assert_eq!((appended.offset, appended.seq), (10, 6));
    assert_eq!(appended.epoch, state.epoch);
    let next = append_message(&storage, "c2").await;
    assert_eq!((next.offset, next.seq), (11, 7));
    // The watermark passed the lost offsets, so it can follow the new ones.
    let watermark: (i64, bool) =
        sqlx::query_as("SELECT synced_offset, waiting FROM team_sync WHERE team = 't'")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!(watermark, (9, false));
    let ahead: i64 = sqlx::query_scalar("SELECT count(*) FROM synced_ahead WHERE team = 't'")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(ahead, 0);
}

/// A meta hash behind its own stream (written by hand, say): the append is not refused
/// for good; its offset follows the stream's top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_with_the_meta_hash_behind_the_stream_follows_the_streams_top() {
    use redis::AsyncCommands;
    let env = TestEnv::new().await;
    let storage = storage(&env).await;
    for n in 1..=3u64 {
        append_message(&storage, &format!("c{n}")).await;
    }
    let mut redis = env.redis().await;
    let _: () = redis
        .hset(env.keys().team_meta("t"), "offset", 1)
        .await
        .unwrap();
    let after = append_message(&storage, "c4").await;
    assert_eq!((after.offset, after.seq), (4, 4));
}

/// End to end: messages synced, the team's Redis state lost, then a new message. It is
/// stored beside the old ones with the next seq, not dropped as a second "message 1", and
/// the old ones can still be edited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_after_the_teams_redis_state_was_lost_is_stored_beside_the_synced_ones() {
    use redis::AsyncCommands;
    let env = TestEnv::new().await;
    let gateway = common::gateway(&env, &[]).await;
    let worker = common::worker(&env, "w1");
    let pg = env.pg().await;
    let mut writer = Client::connect(gateway.addr(), &env.token("writer", &["t"])).await;
    writer.join("t").await;
    writer.send_message("t", "m1", "first").await;
    writer.send_message("t", "m2", "second").await;
    teamchat_testkit::wait_for_watermark(&pg, "t", 2).await;

    let keys = env.keys();
    let mut redis = lose_team_stream(&env, "t").await;
    let _: () = redis
        .del(&[keys.team_messages("t"), keys.team_receipts("t")])
        .await
        .unwrap();

    let mut again = Client::connect(gateway.addr(), &env.token("writer", &["t"])).await;
    let joined = again.join("t").await;
    assert_eq!(
        (&joined["offset"], &joined["seq"]),
        (&json!("2"), &json!(2))
    );
    // The team started a new epoch: the connection from before it is closed.
    assert_eq!(writer.close_code().await.0, 1012);
    let ack = again.send_message("t", "m3", "after the loss").await;
    assert_eq!((&ack["offset"], &ack["seq"]), (&json!("3"), &json!(3)));
    teamchat_testkit::wait_for_watermark(&pg, "t", 3).await;
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, body FROM messages WHERE team = 't' ORDER BY seq")
            .fetch_all(&pg)
            .await
            .unwrap();
    let expected = [(1, "first"), (2, "second"), (3, "after the loss")];
    let expected: Vec<(i64, String)> = expected
        .iter()
        .map(|(seq, body)| (*seq, body.to_string()))
        .collect();
    assert_eq!(stored, expected);

    // The messages from before the loss can still be edited: PostgreSQL has their authors.
    again
        .send(json!({"type":"message:edit","team":"t","seq":1,"body":"first, edited"}))
        .await;
    assert_eq!(again.expect("message:ack").await["seq"], 1);
    worker.cancel();
}
