//! The server API (docs/server-api.md): the backend posts as a user with an API key, and
//! reads a team's state, presence and history; every input is checked as on the WebSocket
//! path; the API is off without keys and can be kept off the public address.

mod common;

use serde_json::{Value, json};
use teamchat_testkit::{Client, TestEnv, http_get, try_http};

const KEY: &str = "server-api-key-for-tests-0123456789abcdef";

/// A gateway whose API takes `KEY` (and another key).
async fn api_gateway(env: &TestEnv) -> teamchat_gateway::Gateway {
    let keys = format!("--api-keys=other-key-of-32-bytes-at-least-xxxxx,{KEY}");
    common::gateway(env, &[&keys]).await
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let auth = key.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, _, body) = try_http(
        addr,
        "POST",
        path,
        &headers,
        serde_json::to_vec(body).unwrap(),
    )
    .await
    .expect("the gateway answers");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    http_get(addr, path, &[("authorization", auth.as_str())]).await
}

/// Posted on one gateway, a message reaches a member on another, is in history, and a
/// retry with the same `client_id` is answered with the first post's ack, not a second
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reaches_members_on_every_gateway_once() {
    let env = TestEnv::new().await;
    let (g1, g2) = (api_gateway(&env).await, api_gateway(&env).await);
    let mut member = Client::connect(g2.addr(), &env.token("ann", &["t"])).await;
    member.join("t").await;

    let post_body = json!({"user": "bot", "name": "Build bot", "body": "deployed",
                           "meta": {"kind": "deploy"}, "client_id": "deploy-1"});
    let (status, ack) = post(
        g1.addr(),
        "/v1/server/teams/t/messages",
        Some(KEY),
        &post_body,
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        (&ack["team"], &ack["seq"], &ack["offset"]),
        (&json!("t"), &json!(1), &json!("1"))
    );
    let new = member.expect("message:new").await;
    assert_eq!(
        (
            &new["user"],
            &new["name"],
            &new["body"],
            &new["meta"],
            &new["id"]
        ),
        (
            &json!("bot"),
            &json!("Build bot"),
            &json!("deployed"),
            &json!({"kind": "deploy"}),
            &ack["id"]
        )
    );

    let (status, again) = post(
        g2.addr(),
        "/v1/server/teams/t/messages",
        Some(KEY),
        &post_body,
    )
    .await;
    assert_eq!(
        (status, &again["seq"], &again["id"]),
        (200, &json!(1), &ack["id"])
    );
    assert_eq!(again["duplicate"], true);
    // The member's next frame is the next message, not the retry.
    let ack2 = member.send_message("t", "c2", "thanks").await;
    assert_eq!(ack2["seq"], 2);

    let (status, page) = get(g1.addr(), "/v1/server/teams/t/messages").await;
    assert_eq!(status, 200);
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["thanks", "deployed"]);

    let (status, team) = get(g2.addr(), "/v1/server/teams/t").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&team["seq"], &team["offset"], &team["online"]),
        (&json!(2), &json!("2"), &json!(1))
    );
    assert!(team["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    let (status, presence) = get(g1.addr(), "/v1/server/teams/t/presence").await;
    assert_eq!(status, 200);
    assert_eq!(presence["users"][0]["user"], "ann");
    assert_eq!(presence["users"].as_array().unwrap().len(), 1);
}

/// A broadcast posts to each team on its own, idempotent per team, with each team's
/// result in order; a bad team list is refused as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_posts_to_each_team_once() {
    let env = TestEnv::new().await;
    let g = api_gateway(&env).await;
    let mut member = Client::connect(g.addr(), &env.token("ann", &["a", "b"])).await;
    member.join("a").await;
    member.join("b").await;
    member.send_message("b", "first", "b's first").await;
    let body =
        json!({"teams": ["a", "b"], "user": "status", "body": "maintenance", "client_id": "m1"});
    let (status, answer) = post(g.addr(), "/v1/server/broadcast", Some(KEY), &body).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let fields: Vec<(&Value, &Value)> = results.iter().map(|r| (&r["team"], &r["seq"])).collect();
    assert_eq!(fields, [(&json!("a"), &json!(1)), (&json!("b"), &json!(2))]);
    // Each team's rooms deliver on their own: the two may come in either order.
    let mut delivered = Vec::new();
    for _ in ["a", "b"] {
        let new = member.expect("message:new").await;
        delivered.push((new["team"].clone(), new["body"].clone()));
    }
    delivered.sort_by_key(|(team, _)| team.to_string());
    assert_eq!(
        delivered,
        [
            (json!("a"), json!("maintenance")),
            (json!("b"), json!("maintenance"))
        ]
    );
    let (_, again) = post(g.addr(), "/v1/server/broadcast", Some(KEY), &body).await;
    assert!(
        again["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["duplicate"] == true),
        "{again}"
    );

    for teams in [
        json!([]),
        json!(["ok", "not ok"]),
        json!("a"),
        json!(vec!["t"; 101]),
    ] {
        let body = json!({"teams": teams, "user": "status", "body": "b", "client_id": "m2"});
        let (status, answer) = post(g.addr(), "/v1/server/broadcast", Some(KEY), &body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("bad_request")),
            "{teams}"
        );
    }
}

/// No key, a wrong key and bad input are refused with the documented codes; nothing
/// refused is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_input_are_checked() {
    let env = TestEnv::new().await;
    let g = api_gateway(&env).await;
    let path = "/v1/server/teams/t/messages";
    let good = json!({"user": "bot", "body": "b", "client_id": "c"});
    for key in [
        None,
        Some("wrong-key-wrong-key-wrong-key-wrong-key"),
        Some(""),
    ] {
        let (status, body) = post(g.addr(), path, key, &good).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{key:?}"
        );
    }
    // Every endpoint, without a key and with a wrong one.
    let endpoints = [
        ("POST", "/v1/server/teams/t/messages"),
        ("POST", "/v1/server/broadcast"),
        ("POST", "/v1/server/users/u/disconnect"),
        ("POST", "/v1/server/users/u/notify"),
        ("POST", "/v1/server/users/u/revoke"),
        ("DELETE", "/v1/server/teams/t/members/u"),
        ("GET", "/v1/server/teams/t"),
        ("GET", "/v1/server/teams/t/presence"),
        ("GET", "/v1/server/teams/t/messages"),
    ];
    let wrong = "Bearer wrong-key-wrong-key-wrong-key-wrong-key";
    for (method, path) in endpoints {
        for headers in [&[][..], &[("authorization", wrong)][..]] {
            let (status, _, _) = try_http(g.addr(), method, path, headers, b"{}".to_vec())
                .await
                .expect("the gateway answers");
            assert_eq!(status, 401, "{method} {path} {headers:?}");
        }
    }

    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let cases = [
        (json!({"body": "b", "client_id": "c"}), 400, "bad_request"),
        (
            json!({"user": "no spaces", "body": "b", "client_id": "c"}),
            400,
            "bad_request",
        ),
        (
            json!({"user": "bot", "body": "nul \u{0}", "client_id": "c"}),
            400,
            "bad_request",
        ),
        (
            json!({"user": "bot", "body": "b", "client_id": "c", "meta": {"deep": deep}}),
            400,
            "bad_request",
        ),
        (
            json!({"user": "bot", "body": "x".repeat(20_000), "client_id": "c"}),
            413,
            "too_large",
        ),
        (json!({"user": "bot", "body": "b"}), 400, "bad_request"),
        (
            json!({"user": "bot", "name": 5, "body": "b", "client_id": "c"}),
            400,
            "bad_request",
        ),
        (json!(["not", "an", "object"]), 400, "bad_request"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = post(g.addr(), path, Some(KEY), &body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (status, _) = post(
        g.addr(),
        "/v1/server/teams/bad%20team/messages",
        Some(KEY),
        &good,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(g.addr(), "/v1/server/nothing-here").await;
    assert_eq!(status, 404);
    let (_, team) = get(g.addr(), "/v1/server/teams/t").await;
    assert_eq!(team["seq"], 0, "nothing refused was appended");
}

/// Without keys the API is off (404); with `API_LISTEN` it is served there and not on the
/// public address; keys shorter than 32 bytes are refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_off_without_keys_and_can_have_its_own_address() {
    let env = TestEnv::new().await;
    let off = common::gateway(&env, &[]).await;
    let (status, _) = get(off.addr(), "/v1/server/teams/t").await;
    assert_eq!(status, 404);

    let flags = [
        format!("--api-keys={KEY}"),
        "--api-listen=127.0.0.1:0".to_owned(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let g = common::gateway(&env, &flags).await;
    let api = g.api_addr().expect("an API address");
    assert_eq!(get(api, "/v1/server/teams/t").await.0, 200);
    assert_eq!(get(g.addr(), "/v1/server/teams/t").await.0, 404);
    // The API address serves the API alone.
    assert_eq!(http_get(api, "/healthz", &[]).await.0, 404);

    // Each key has a budget (here 4 a minute, bursts of one).
    let flags = [
        format!("--api-keys={KEY}"),
        "--rate-api-per-min=4".to_owned(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let limited = common::gateway(&env, &flags).await;
    assert_eq!(get(limited.addr(), "/v1/server/teams/t").await.0, 200);
    let (status, body) = get(limited.addr(), "/v1/server/teams/t").await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));

    let short = teamchat_gateway::Gateway::start(env.gateway_config(&["--api-keys=short"])).await;
    assert!(short.is_err(), "a short key is refused");
}

/// Disconnect and notify reach every connection of the user, on every gateway, and no
/// one else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_notify_reach_every_connection_of_the_user() {
    let env = TestEnv::new().await;
    let (g1, g2) = (api_gateway(&env).await, api_gateway(&env).await);
    let mut ann_here = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ann_there = Client::connect(g2.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;

    let data = json!({"unread": 3, "team": "t"});
    let (status, _) = post(
        g1.addr(),
        "/v1/server/users/ann/notify",
        Some(KEY),
        &json!({"data": data}),
    )
    .await;
    assert_eq!(status, 200);
    for ann in [&mut ann_here, &mut ann_there] {
        assert_eq!(
            ann.expect("notify").await,
            json!({"type": "notify", "data": data})
        );
    }
    // ann's connection on ben's gateway got it: so would ben's have by now, had it been his.
    ben.send(json!({"type": "ping", "rid": "p"})).await;
    assert_eq!(ben.expect("pong").await["rid"], "p");

    let (status, _) = post(
        g1.addr(),
        "/v1/server/users/ann/disconnect",
        Some(KEY),
        &json!({"code": 4001}),
    )
    .await;
    assert_eq!(status, 200);
    for ann in [&mut ann_here, &mut ann_there] {
        assert_eq!(ann.close_code().await.0, 4001);
    }
    ben.send(json!({"type": "ping", "rid": "q"})).await;
    assert_eq!(ben.expect("pong").await["rid"], "q");

    let cases = [
        (
            "/v1/server/users/ann/disconnect",
            json!({"code": 1011}),
            400,
        ),
        ("/v1/server/users/ann/notify", json!({"data": "text"}), 400),
        (
            "/v1/server/users/ann/notify",
            json!({"data": {"x": "y".repeat(5_000)}}),
            413,
        ),
        ("/v1/server/users/no%20one/notify", json!({"data": {}}), 400),
    ];
    for (path, body, status) in cases {
        assert_eq!(
            post(g1.addr(), path, Some(KEY), &body).await.0,
            status,
            "{path} {body}"
        );
    }
}

/// A token for `user` issued now, with the fraction of the second kept (as the Node helper
/// signs them), so a token issued after a revocation in the same second is told apart.
fn token_issued_now(user: &str, teams: &[&str]) -> String {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    teamchat_testkit::sign(&json!({"sub": user, "teams": teams, "iat": iat,
                                   "exp": teamchat_testkit::now() + 3600}))
}

/// Connects and expects to be refused: the close code and reason.
async fn refused(addr: std::net::SocketAddr, token: &str) -> (u16, String) {
    let auth = teamchat_testkit::client::Auth::Query(token);
    let (mut ws, _) = teamchat_testkit::client::open(addr, auth, Some("teamchat.v1.json"))
        .await
        .expect("upgrade");
    let (code, reason, _) = teamchat_testkit::client::close_frame(&mut ws).await;
    (code, reason)
}

/// A revocation closes the user's connections on every gateway (4001 "revoked"), keeps
/// their old tokens out at connect, join, refresh and history, lets a token issued after
/// it in, and touches no one else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_closes_and_refuses_tokens_issued_before_it() {
    let env = TestEnv::new().await;
    let (g1, g2) = (api_gateway(&env).await, api_gateway(&env).await);
    let old = token_issued_now("ann", &["t"]);
    let mut ann_here = Client::connect(g1.addr(), &old).await;
    let mut ann_there = Client::connect(g2.addr(), &old).await;
    ann_there.join("t").await;
    let mut ben = Client::connect(g2.addr(), &token_issued_now("ben", &["t"])).await;

    let (status, body) = post(
        g1.addr(),
        "/v1/server/users/ann/revoke",
        Some(KEY),
        &json!({}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"published": true})));
    for ann in [&mut ann_here, &mut ann_there] {
        let (code, reason, _) = teamchat_testkit::client::close_frame(&mut ann.ws).await;
        assert_eq!((code, reason.as_str()), (4001, "revoked"));
    }
    ben.send(json!({"type": "ping", "rid": "p"})).await;
    assert_eq!(ben.expect("pong").await["rid"], "p");

    // The old token: refused at connect on both gateways, and by history.
    for gateway in [&g1, &g2] {
        assert_eq!(
            refused(gateway.addr(), &old).await,
            (4001, "revoked".to_owned())
        );
    }
    let bearer = format!("Bearer {old}");
    let (status, body) = http_get(
        g2.addr(),
        "/v1/teams/t/messages",
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!((status, body["code"].clone()), (401, json!("unauthorized")));

    // A token issued after the revocation connects, joins and reads history; refreshing
    // to the old token closes the connection.
    let fresh = token_issued_now("ann", &["t"]);
    let mut ann = Client::connect(g2.addr(), &fresh).await;
    ann.join("t").await;
    let bearer = format!("Bearer {fresh}");
    let (status, _) = http_get(
        g2.addr(),
        "/v1/teams/t/messages",
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(status, 200);
    ann.send(json!({"type": "token:refresh", "token": old, "rid": "r"}))
        .await;
    let (code, reason, _) = teamchat_testkit::client::close_frame(&mut ann.ws).await;
    assert_eq!((code, reason.as_str()), (4001, "revoked"));

    // A token without `iat` counts as issued at 0 once a revocation exists.
    let undated = env.token("ann", &["t"]);
    assert_eq!(refused(g1.addr(), &undated).await.0, 4001);
    // ben has no revocation: his undated token still works.
    Client::connect(g1.addr(), &env.token("ben", &["t"])).await;

    let cases = [
        json!({"issued_before": "yesterday"}),
        json!({"issued_before": -1}),
        // Milliseconds given for seconds: far in the future, refused.
        json!({"issued_before": teamchat_testkit::now() * 1000}),
    ];
    for body in cases {
        let (status, _) = post(g1.addr(), "/v1/server/users/ann/revoke", Some(KEY), &body).await;
        assert_eq!(status, 400, "{body}");
    }
}

/// A removal takes the user's connections out of the team at once (`room:left`, reason
/// "removed", nothing of the team after it) on every gateway, keeps their old token out of
/// the team's joins and history, leaves their other teams alone, and a token issued after
/// it that lists the team is honoured again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_takes_a_member_out_of_the_team_until_a_new_token() {
    let env = TestEnv::new().await;
    let (g1, g2) = (api_gateway(&env).await, api_gateway(&env).await);
    let old = token_issued_now("ann", &["t", "u"]);
    let mut ann = Client::connect(g2.addr(), &old).await;
    ann.join("t").await;
    ann.join("u").await;
    let mut ben = Client::connect(g1.addr(), &token_issued_now("ben", &["t"])).await;
    ben.join("t").await;

    let (status, _, body) = try_http(
        g1.addr(),
        "DELETE",
        "/v1/server/teams/t/members/ann",
        &[("authorization", format!("Bearer {KEY}").as_str())],
        Vec::new(),
    )
    .await
    .expect("the gateway answers");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let left = ann.expect("room:left").await;
    assert_eq!(
        left,
        json!({"type": "room:left", "team": "t", "reason": "removed"})
    );

    // Nothing of t reaches ann after `room:left` (ben's message is not the next frame),
    // while u still does; and ann may no longer write to t.
    ben.send_message("t", "c1", "after the removal").await;
    let (status, _) = post(
        g1.addr(),
        "/v1/server/teams/u/messages",
        Some(KEY),
        &json!({"user": "bot", "body": "in u", "client_id": "c2"}),
    )
    .await;
    assert_eq!(status, 200);
    let next = ann.expect("message:new").await;
    assert_eq!(
        (next["team"].clone(), next["body"].clone()),
        (json!("u"), json!("in u"))
    );
    ann.send(
        json!({"type": "message:send", "team": "t", "client_id": "x", "body": "hi", "rid": "s"}),
    )
    .await;
    assert_eq!(ann.expect("error").await["code"], "not_joined");
    // Nor is ann told of mentions in t any more: carl, on ann's gateway, is told of the
    // same message's, and ann of nothing.
    let mut carl = Client::connect(g2.addr(), &token_issued_now("carl", &["t"])).await;
    ben.send(
        json!({"type": "message:send", "team": "t", "client_id": "c3",
                    "body": "@ann @carl", "mentions": ["ann", "carl"]}),
    )
    .await;
    ben.expect("message:ack").await;
    carl.expect("mention").await;
    ann.settled().await;
    // Refreshing with a token from before the removal does not bring t back.
    ann.send(json!({"type": "token:refresh", "token": old, "rid": "again"}))
        .await;
    ann.expect("token:refreshed").await;
    ben.send(
        json!({"type": "message:send", "team": "t", "client_id": "c4",
                    "body": "@ann @carl again", "mentions": ["ann", "carl"]}),
    )
    .await;
    ben.expect("message:ack").await;
    carl.expect("mention").await;
    ann.settled().await;

    // The old token can no longer join t or read its history, on either gateway.
    ann.send(json!({"type": "room:join", "team": "t", "rid": "j"}))
        .await;
    let error = ann.expect("room:error").await;
    assert_eq!(
        (error["code"].clone(), error["rid"].clone()),
        (json!("forbidden"), json!("j"))
    );
    let mut elsewhere = Client::connect(g1.addr(), &old).await;
    elsewhere
        .send(json!({"type": "room:join", "team": "t"}))
        .await;
    assert_eq!(elsewhere.expect("room:error").await["code"], "forbidden");
    let bearer = format!("Bearer {old}");
    let (status, body) = http_get(
        g1.addr(),
        "/v1/teams/t/messages",
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!((status, body["code"].clone()), (403, json!("forbidden")));
    let (status, _) = http_get(
        g1.addr(),
        "/v1/teams/u/messages",
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(status, 200);

    // Re-adding is issuing a new token that lists the team.
    let mut back = Client::connect(g1.addr(), &token_issued_now("ann", &["t"])).await;
    back.join("t").await;
    let bad = try_http(
        g1.addr(),
        "DELETE",
        "/v1/server/teams/t/members/no%20one",
        &[("authorization", format!("Bearer {KEY}").as_str())],
        Vec::new(),
    )
    .await
    .expect("the gateway answers");
    assert_eq!(bad.0, 400);
    let unkeyed = try_http(
        g1.addr(),
        "DELETE",
        "/v1/server/teams/t/members/ann",
        &[],
        Vec::new(),
    )
    .await
    .expect("the gateway answers");
    assert_eq!(unkeyed.0, 401);
}

/// The team's history as the events endpoint streams it: one JSON object per line.
async fn events(addr: std::net::SocketAddr, query: &str, gzip: bool) -> (u16, Vec<Value>) {
    use std::io::Read;
    let auth = format!("Bearer {KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if gzip {
        headers.push(("accept-encoding", "gzip"));
    }
    let path = format!("/v1/server/teams/t/events{query}");
    let (status, answered, body) = try_http(addr, "GET", &path, &headers, Vec::new())
        .await
        .expect("the gateway answers");
    let mut text = Vec::new();
    if answered
        .get("content-encoding")
        .is_some_and(|v| v == "gzip")
    {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut text)
            .unwrap();
    } else {
        text = body.to_vec();
    }
    let lines = String::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (status, lines)
}

/// `GET /v1/server/teams/{team}/events` streams a range of the team's history from the
/// archive and the stream joined, names what neither holds, and needs the API key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_the_history_from_archive_and_stream() {
    let env = TestEnv::new().await;
    let g = api_gateway(&env).await;
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    for n in 1..=1_200 {
        ann.send_message("t", &format!("c{n}"), &format!("body {n}"))
            .await;
    }
    let stop = common::worker(&env, "w1");
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", 1_200).await;
    stop.cancel();
    // The stream keeps offsets from 1,001 only; 1,201 and on come after the sync.
    let mut redis = env.redis().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(env.keys().team_events("t"))
        .arg("MINID")
        .arg("1001")
        .query_async(&mut redis)
        .await
        .unwrap();
    ann.send_message("t", "late", "late").await;

    for gzip in [false, true] {
        let (status, lines) = events(g.addr(), "", gzip).await;
        assert_eq!(status, 200);
        let offsets: Vec<u64> = lines
            .iter()
            .map(|l| l["offset"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(offsets, (1..=1_201).collect::<Vec<u64>>(), "gzip {gzip}");
        assert_eq!(lines[999]["data"]["body"], "body 1000");
        assert_eq!(lines[1_200]["data"]["body"], "late");
    }
    let (_, lines) = events(g.addr(), "?from=998&to=1002", false).await;
    let offsets: Vec<&str> = lines
        .iter()
        .map(|l| l["offset"].as_str().unwrap())
        .collect();
    assert_eq!(offsets, ["998", "999", "1000", "1001", "1002"]);

    // Offsets neither holds are named in their place.
    let pg = env.pg().await;
    sqlx::query(r#"DELETE FROM events WHERE team = 't' AND "offset" BETWEEN 10 AND 19"#)
        .execute(&pg)
        .await
        .unwrap();
    let (_, lines) = events(g.addr(), "?from=9&to=21", false).await;
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["missing"], json!({"from": "10", "to": "19"}));

    // The API key, and a valid range.
    let (status, _, _) = try_http(
        g.addr(),
        "GET",
        "/v1/server/teams/t/events",
        &[],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    let (status, lines) = events(g.addr(), "?from=x", false).await;
    assert_eq!(
        (status, lines[0]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

/// `POST /v1/server/users/{user}/erase` deletes the user's messages where members see it,
/// then forgets their texts everywhere: PostgreSQL, the event archive, both streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_forgets_a_users_texts_everywhere() {
    let env = TestEnv::new().await;
    let g = api_gateway(&env).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t", "u"])).await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ann.join("u").await;
    ben.join("t").await;
    for frame in [
        json!({"type":"message:send","team":"u","client_id":"u1","body":"secret in u"}),
        json!({"type":"message:send","team":"t","client_id":"a1","body":"secret one",
               "meta":{"k":"secret meta"},"mentions":["ben"]}),
        json!({"type":"message:send","team":"t","client_id":"a2","body":"secret two"}),
        json!({"type":"message:edit","team":"t","seq":2,"body":"secret edit"}),
        json!({"type":"message:send","team":"t","client_id":"a3","body":"secret three"}),
        json!({"type":"message:delete","team":"t","seq":3}),
    ] {
        ann.send(frame).await;
        ann.expect("message:ack").await;
    }
    ben.send(json!({"type":"message:send","team":"t","client_id":"b1","body":"ben stays"}))
        .await;
    ben.until("message:ack").await;

    let teams = json!({"teams":["t", "u"]});
    let erase = || post(g.addr(), "/v1/server/users/ann/erase", Some(KEY), &teams);
    let (status, answer) = erase().await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["teams"],
        json!([{"team":"t","deleted":2,"scrubbed":true},{"team":"u","deleted":1,"scrubbed":true}])
    );
    // Members saw both go.
    let mut gone = vec![
        ben.until("message:deleted").await["seq"].as_u64().unwrap(),
        ben.until("message:deleted").await["seq"].as_u64().unwrap(),
    ];
    gone.sort_unstable();
    assert_eq!(gone, [1, 2]);
    // Again: nothing left to delete.
    let (_, again) = erase().await;
    assert_eq!(again["teams"][0]["deleted"], 0);

    // No trace of the texts anywhere; the other member's message stays.
    let pg = env.pg().await;
    let count = |sql: &'static str| {
        let pg = pg.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pg)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count(
            "SELECT count(*) FROM messages WHERE body LIKE '%secret%' OR meta::text LIKE '%secret%'"
        )
        .await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE data::text LIKE '%secret%'").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM messages WHERE user_id = 'ann' AND NOT deleted").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM messages WHERE body = 'ben stays'").await,
        1
    );
    let keys = env.keys();
    for stream in [
        keys.team_events("t"),
        keys.team_events("u"),
        keys.ingest(keys.shard_of("t")),
        keys.ingest(keys.shard_of("u")),
    ] {
        let text = env.stream_text(&stream).await;
        assert!(!text.contains("secret"), "{stream}: {text}");
        assert!(
            text.contains("ben stays") || stream != keys.team_events("t"),
            "{stream}"
        );
    }
    // Nor in what an export or a replay reads.
    let mut out = Vec::new();
    let config = env.worker_config("exporter");
    let spec = teamchat_worker::replay::ExportSpec::default();
    teamchat_worker::replay::export(&config, "t", &spec, &mut out)
        .await
        .unwrap();
    let exported = String::from_utf8(out).unwrap();
    assert!(exported.contains("ben stays") && !exported.contains("secret"));
    stop.cancel();
}
