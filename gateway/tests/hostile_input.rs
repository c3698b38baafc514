//! Hostile input hurts no one else (docs/security.md): what is appended can always be read
//! back, a poison entry is passed over rather than punishing the team, numbers from
//! outside are range-checked, and no reply echoes unbounded input.

mod common;

use redis::AsyncCommands;
use serde_json::{Value, json};
use teamchat_testkit::client::{self, Auth};
use teamchat_testkit::{Client, TestEnv, http_get, now, sign};

/// A `meta` object nested `levels` deep: `{"k":{"k":…{"k":1}}}`.
fn nested(levels: usize) -> Value {
    (1..levels).fold(json!({"k": 1}), |inner, _| json!({ "k": inner }))
}

/// The attack that closed a whole team: a MessagePack `meta` nested past what the readers
/// decode, well under MAX_META. It is refused before the append, in either encoding; at
/// the limit it is appended and every member reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_nested_past_the_limit_is_refused_in_either_encoding() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let token = env.token("mallory", &["t"]);
    let mut attacker = Client::connect_msgpack(g1.addr(), &token).await;
    let mut json_attacker = Client::connect(g1.addr(), &token).await;
    let mut member = Client::connect(g2.addr(), &env.token("alice", &["t"])).await;
    for c in [&mut attacker, &mut json_attacker, &mut member] {
        c.join("t").await;
    }

    for (msgpack, levels) in [(true, 130), (true, 33), (false, 33)] {
        let c = if msgpack {
            &mut attacker
        } else {
            &mut json_attacker
        };
        c.send(json!({"type": "message:send", "rid": "deep", "team": "t",
                      "client_id": format!("deep{levels}"), "body": "b", "meta": nested(levels)}))
            .await;
        let e = c.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["rid"].as_str()),
            (Some("bad_request"), Some("deep")),
            "{levels} levels: {e}"
        );
    }

    // At the limit: appended, and delivered to a member of the other gateway, who
    // decodes it (and stays connected).
    attacker
        .send(
            json!({"type": "message:send", "team": "t", "client_id": "deep32",
                     "body": "b", "meta": nested(32)}),
        )
        .await;
    let ack = attacker.expect("message:ack").await;
    assert_eq!(ack["offset"], "1", "nothing refused was appended");
    let new = member.expect("message:new").await;
    assert_eq!(new["meta"], nested(32));
    json_attacker.expect("message:new").await;
}

/// A `client_id` PostgreSQL cannot store is refused before the ack, not acked and then
/// dropped by the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_with_a_nul_is_refused_before_the_ack() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    c.join("t").await;
    c.send(json!({"type": "message:send", "rid": "n", "team": "t", "client_id": "a\u{0}b", "body": "b"}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["rid"].as_str()),
        (Some("bad_request"), Some("n"))
    );
    assert_eq!(c.send_message("t", "ok", "fine").await["offset"], "1");
}

/// Appends `fields` to the team stream by hand at the team's next offset, as an older
/// version or a bug might have written it.
async fn inject_stream_entry(env: &TestEnv, team: &str, fields: &[(&str, &str)]) -> u64 {
    let keys = env.keys();
    let mut redis = env.redis().await;
    let offset: u64 = redis
        .hincr(keys.team_meta(team), "offset", 1)
        .await
        .unwrap();
    let _: String = redis
        .xadd(keys.team_events(team), format!("{offset}-0"), fields)
        .await
        .unwrap();
    offset
}

/// A stream entry no reader can decode, and a garbled pub/sub message, are passed over
/// (and counted): the team's members stay connected and get every event after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_is_passed_over_and_the_team_goes_on() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut sender = Client::connect(g1.addr(), &env.token("alice", &["t"])).await;
    let mut near = Client::connect(g1.addr(), &env.token("bob", &["t"])).await;
    let mut far = Client::connect(g2.addr(), &env.token("carol", &["t"])).await;
    for c in [&mut sender, &mut near, &mut far] {
        c.join("t").await;
    }
    assert_eq!(
        sender.send_message("t", "c1", "before").await["offset"],
        "1"
    );
    for c in [&mut near, &mut far] {
        assert_eq!(c.expect("message:new").await["offset"], "1");
    }

    let poison = inject_stream_entry(
        &env,
        "t",
        &[
            ("k", "message"),
            ("seq", "2"),
            ("src", "x"),
            ("d", "{not json"),
        ],
    )
    .await;
    assert_eq!(poison, 2);
    let mut redis = env.redis().await;
    let _: i64 = redis
        .publish(env.keys().team_channel("t"), "garbage without the parts")
        .await
        .unwrap();

    // The next message follows the poison entry: every member gets it, none is closed.
    assert_eq!(sender.send_message("t", "c2", "after").await["offset"], "3");
    for c in [&mut near, &mut far] {
        let new = c.expect("message:new").await;
        assert_eq!(
            (new["offset"].as_str(), new["body"].as_str()),
            (Some("3"), Some("after"))
        );
    }

    // A member resuming from before the poison entry gets what can be read, recovered.
    let mut back = Client::connect(g2.addr(), &env.token("dave", &["t"])).await;
    let epoch = sender_epoch(&env).await;
    back.send(json!({"type": "room:join", "team": "t", "since": {"offset": "1", "epoch": epoch}}))
        .await;
    let joined = back.expect("room:joined").await;
    assert_eq!(joined["recovered"], true);
    let replayed = back.expect("message:new").await;
    assert_eq!(replayed["offset"], "3", "the poison entry is not replayed");

    let (_, metrics) = http_get(g1.addr(), "/metrics", &[]).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for source in ["stream", "pubsub"] {
        assert!(
            metrics.contains(&format!(
                "teamchat_gateway_undecodable_events_total{{source=\"{source}\"}}"
            )),
            "{source} counted: {metrics}"
        );
    }
}

/// The team's epoch, as `room:joined` gives it.
async fn sender_epoch(env: &TestEnv) -> String {
    let mut redis = env.redis().await;
    redis
        .hget(env.keys().team_meta("t"), "epoch")
        .await
        .unwrap()
}

/// Numbers from outside are range-checked: a `seq` past what the append script holds
/// exactly, history bounds past `int8`, a token `exp` past any representable deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_out_of_range_are_refused_not_wrapped() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("u1", &["t"]);
    let mut c = Client::connect(g.addr(), &token).await;
    c.join("t").await;
    for frame in [
        json!({"type": "message:edit", "rid": "r", "team": "t", "seq": 9_007_199_254_740_992u64, "body": "b"}),
        json!({"type": "receipt:update", "rid": "r", "team": "t", "seq": u64::MAX}),
    ] {
        c.send(frame).await;
        let e = c.expect("error").await;
        assert_eq!(
            (e["code"].as_str(), e["message"].as_str()),
            (Some("bad_request"), Some("seq is out of range"))
        );
    }

    let bearer = format!("Bearer {token}");
    for query in [
        "before=9223372036854775808",
        "after=18446744073709551616",
        "after=-1",
    ] {
        let (status, body) = http_get(
            g.addr(),
            &format!("/v1/teams/t/messages?{query}"),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("bad_request")),
            "{query}"
        );
    }

    // A far-future exp, or a name PostgreSQL could not store: 4001, not a panic.
    for claims in [
        json!({"sub": "u2", "teams": ["t"], "exp": u64::MAX}),
        json!({"sub": "u2", "teams": ["t"], "exp": now() + 60, "name": "a\u{0}b"}),
        json!({"sub": "u2", "teams": ["t"], "exp": now() + 60, "name": "n".repeat(300)}),
    ] {
        let (mut ws, _) = client::open(g.addr(), Auth::Query(&sign(&claims)), None)
            .await
            .unwrap();
        assert_eq!(client::close_code(&mut ws).await.0, 4001, "{claims}");
    }
    // The connection that sent all that is still served.
    c.send(json!({"type": "ping", "rid": "p"})).await;
    assert_eq!(c.expect("pong").await["rid"], "p");
}

/// No reply echoes unbounded input: an unknown `type` of 500 KB gets a short error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_do_not_echo_unbounded_input() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    c.send(json!({"type": "x".repeat(500_000), "rid": "big"}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["rid"].as_str()),
        (Some("unknown_type"), Some("big"))
    );
    let message = e["message"].as_str().unwrap();
    assert!(message.len() <= 200, "{} bytes", message.len());
}

/// Authorization follows the token: a `token:refresh` whose `teams` no longer lists a
/// joined team takes the connection out of that room at once (`room:left`, reason
/// `forbidden`), and none of the team's events reach it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_without_a_team_leaves_its_room() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut removed = Client::connect(g1.addr(), &env.token("eve", &["a", "b"])).await;
    let mut other = Client::connect(g2.addr(), &env.token("alice", &["a"])).await;
    // On the same gateway as `removed`: its room delivers to both in one pass.
    let mut watcher = Client::connect(g1.addr(), &env.token("bob", &["a"])).await;
    removed.join("a").await;
    removed.join("b").await;
    other.join("a").await;
    watcher.join("a").await;

    let token = env.token("eve", &["b"]);
    removed
        .send(json!({"type": "token:refresh", "rid": "r", "token": token}))
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame = removed.recv().await;
        if frame["type"] != "presence:update" {
            got.push(frame);
        }
    }
    got.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0]["type"], "room:left", "{got:?}");
    assert_eq!(
        (
            got[0]["team"].as_str(),
            got[0]["reason"].as_str(),
            got[0].get("rid")
        ),
        (Some("a"), Some("forbidden"), None)
    );
    assert_eq!(got[1]["type"], "token:refreshed");

    // The team goes on without it: a message there does not reach it (the pong is the next
    // frame it gets), and its writes there are refused.
    other.send_message("a", "m1", "after").await;
    assert_eq!(watcher.expect("message:new").await["body"], "after");
    removed
        .send(json!({"type": "ping", "rid": "barrier"}))
        .await;
    assert_eq!(removed.expect("pong").await["rid"], "barrier");
    removed
        .send(json!({"type": "message:send", "team": "a", "client_id": "x", "body": "b"}))
        .await;
    assert_eq!(removed.expect("error").await["code"], "not_joined");
    removed
        .send(json!({"type": "room:join", "team": "a"}))
        .await;
    assert_eq!(removed.expect("room:error").await["code"], "forbidden");
}
