//! The HTTP fallback transports (docs/protocol.md, HTTP fallback): an SSE stream and
//! long-polling give what a WebSocket gives — the same frames, in the same order with no
//! gap, resumed by offset and epoch, under the same limits — mixed with WebSocket clients
//! on other gateways.

mod common;

use serde_json::{Value, json};
use teamchat_testkit::http_session::{poll_open, send, sse};
use teamchat_testkit::{Client, TestEnv};

/// An SSE client and a long-polling client on one gateway get what WebSocket senders on
/// another send, every message once and in order; they send like a socket (an ack to the
/// sender, `message:new` to the others, nothing echoed), and typing reaches the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_polling_get_and_send_what_a_socket_does() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let ann_token = env.token("ann", &["t"]);
    let mut stream = sse(g2.addr(), "", &format!("teams=t&token={ann_token}"), &[])
        .await
        .expect("the stream opens");
    stream.token = ann_token.clone();
    assert_eq!(
        stream.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    let joined = stream.expect("room:joined").await;
    assert_eq!(joined.data["team"], "t");
    stream.expect("receipt:list").await;
    let mut poll = poll_open(g2.addr(), &env.token("bob", &["t"]), &["t"], &[])
        .await
        .expect("the poll session opens");
    poll.expect("room:joined").await;
    poll.expect("receipt:list").await;

    // Three senders on the other gateway, at once, each sending without waiting for acks.
    const EACH: usize = 200;
    let mut senders = Vec::new();
    for user in ["s1", "s2", "s3"] {
        let mut sender = Client::connect(g1.addr(), &env.token(user, &["t"])).await;
        sender.join("t").await;
        senders.push(sender);
    }
    for n in 0..EACH {
        for sender in &mut senders {
            sender
                .send(json!({"type": "message:send", "team": "t", "client_id": format!("c{n}"), "body": "hi"}))
                .await;
        }
    }
    let total = 3 * EACH;
    let expected: Vec<u64> = (1..=total as u64).collect();
    let (mut ids, mut streamed) = (Vec::new(), Vec::new());
    while streamed.len() < total {
        let event = stream.expect("message:new").await;
        ids.push(event.id.clone().expect("a durable event has an id"));
        streamed.push(event.data["seq"].as_u64().unwrap());
    }
    assert_eq!(streamed, expected);
    let epoch = joined.data["epoch"].as_str().unwrap();
    assert_eq!(
        ids[0],
        format!("t:{epoch}:1"),
        "ids are <team>:<epoch>:<offset>"
    );
    let mut polled = Vec::new();
    while polled.len() < total {
        polled.push(poll.expect("message:new").await["seq"].as_u64().unwrap());
    }
    assert_eq!(polled, expected);

    // Sending from the stream's session: the ack is the reply, with the client's rid; a
    // socket and the poll session get the message.
    let mut watcher = Client::connect(g1.addr(), &env.token("w", &["t"])).await;
    watcher.join("t").await;
    let (status, ack) = stream
        .send(json!({"type": "message:send", "team": "t", "client_id": "a1", "body": "from sse", "rid": "r1"}))
        .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        (ack["type"].clone(), ack["rid"].clone()),
        (json!("message:ack"), json!("r1"))
    );
    let new = watcher.expect("message:new").await;
    assert_eq!(
        (new["user"].clone(), new["body"].clone()),
        (json!("ann"), json!("from sse"))
    );
    let polled = poll.expect("message:new").await;
    assert_eq!(polled["body"], "from sse");
    // A retry is the same ack, nothing new.
    let (_, again) = stream
        .send(json!({"type": "message:send", "team": "t", "client_id": "a1", "body": "from sse"}))
        .await;
    assert_eq!(again["seq"], ack["seq"]);

    // Typing from the poll session reaches the socket; the answer comes on the stream.
    let (status, _) = poll
        .send(json!({"type": "typing:start", "team": "t"}))
        .await;
    assert_eq!(status, 204);
    let typing = watcher.expect("typing:start").await;
    assert_eq!(typing["user"], "bob");

    // Errors are the WebSocket's: a team not joined, an unknown type.
    let (status, error) = poll
        .send(
            json!({"type": "message:send", "team": "u", "client_id": "x", "body": "b", "rid": "e"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (error["code"].clone(), error["rid"].clone()),
        (json!("not_joined"), json!("e"))
    );
    let (_, unknown) = poll.send(json!({"type": "no:such"})).await;
    assert_eq!(unknown["code"], "unknown_type");
    // Nothing of ann's own message came back on her stream: the next event is bob's
    // message, not hers.
    poll.send(json!({"type": "message:send", "team": "t", "client_id": "b1", "body": "from poll"}))
        .await;
    // (bob's typing reached ann's stream too.)
    let next = loop {
        let event = stream.next().await;
        if event.event == "message:new" {
            break event;
        }
        assert!(
            event.event.starts_with("typing:") || event.event.starts_with("presence:"),
            "{event:?}"
        );
    };
    assert_eq!(next.data["body"], "from poll");
}

/// A stream dropped and opened again with `Last-Event-ID` (and a poll session opened again
/// with `since`) resumes where it was: what was sent meanwhile, once, nothing before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_or_poll_session_resumes_by_offset() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut sender = Client::connect(g1.addr(), &env.token("s", &["t"])).await;
    sender.join("t").await;
    let token = env.token("ann", &["t"]);
    let mut stream = sse(g2.addr(), &token, "teams=t", &[]).await.unwrap();
    stream.expect("room:joined").await;
    stream.expect("receipt:list").await;
    sender.send_message("t", "c1", "one").await;
    let last = stream.expect("message:new").await.id.unwrap();
    drop(stream);
    sender.send_message("t", "c2", "two").await;
    sender.send_message("t", "c3", "three").await;

    // `since` names an older position of the team: Last-Event-ID wins.
    let resumed_headers = [("last-event-id", last.as_str())];
    let epoch = last.split(':').nth(1).unwrap();
    let query = format!("teams=t&since=t:{epoch}:0");
    let mut stream = sse(g2.addr(), &token, &query, &resumed_headers)
        .await
        .unwrap();
    let joined = stream.expect("room:joined").await;
    assert_eq!(joined.data["recovered"], true);
    for body in ["two", "three"] {
        assert_eq!(stream.expect("message:new").await.data["body"], body);
    }
    stream.expect("receipt:list").await;

    // Long-polling: a new session with `since` (this time on the other gateway).
    let since = vec![last.clone()];
    let mut poll = poll_open(g1.addr(), &token, &["t"], &since).await.unwrap();
    assert_eq!(poll.expect("room:joined").await["recovered"], true);
    for body in ["two", "three"] {
        assert_eq!(poll.expect("message:new").await["body"], body);
    }
}

/// A poll answer that is lost is asked for again with the same `ack` and comes again, the
/// same frames; the next `ack` lets go of them: nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_poll_answer_is_sent_again() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let mut sender = Client::connect(g.addr(), &env.token("s", &["t"])).await;
    sender.join("t").await;
    let mut poll = poll_open(g.addr(), &env.token("ann", &["t"]), &["t"], &[])
        .await
        .unwrap();
    poll.expect("room:joined").await;
    poll.expect("receipt:list").await;
    sender.send_message("t", "c1", "one").await;
    sender.send_message("t", "c2", "two").await;
    let ack = poll.next;
    let (_, first) = poll.poll_raw(ack).await;
    let bodies = |answer: &Value| -> Vec<Value> {
        answer["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["type"] == "message:new")
            .map(|f| f["body"].clone())
            .collect()
    };
    // Both messages may not be in the first answer yet: wait for the second one.
    let mut answer = first;
    while bodies(&answer).len() < 2 {
        let (_, more) = poll.poll_raw(ack).await;
        answer = more;
    }
    // The answer is "lost": the same ack gets the same frames again.
    let (_, again) = poll.poll_raw(ack).await;
    assert_eq!(again, answer);
    assert_eq!(bodies(&again), [json!("one"), json!("two")]);
    // Acknowledged, they are gone; what follows comes once.
    let next = again["next"].as_u64().unwrap();
    sender.send_message("t", "c3", "three").await;
    let (_, after) = poll.poll_raw(next).await;
    assert_eq!(bodies(&after), [json!("three")]);
    let (status, refused) = poll.poll_raw(next + 100).await;
    assert_eq!(
        (status, refused["code"].clone()),
        (400, json!("bad_request"))
    );

    // One poll at a time: a second one makes the first answer at once (nothing new), so
    // a client cannot pile up held requests on a session. Nothing is sent until one of the
    // two answered: only being overtaken answers a poll so early.
    let next = after["next"].as_u64().unwrap();
    let path = format!("/v1/poll?session={}&ack={next}", poll.session);
    let auth = format!("Bearer {}", poll.token);
    let held = |path: String, auth: String| {
        let addr = g.addr();
        tokio::spawn(async move {
            let (status, _, body) = teamchat_testkit::try_http(
                addr,
                "GET",
                &path,
                &[("authorization", &auth)],
                Vec::new(),
            )
            .await
            .unwrap();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        })
    };
    let polls = [held(path.clone(), auth.clone()), held(path, auth)];
    let [a, b] = polls;
    let (overtaken, other) = match futures_util::future::select(a, b).await {
        futures_util::future::Either::Left((answer, other)) => (answer.unwrap(), other),
        futures_util::future::Either::Right((answer, other)) => (answer.unwrap(), other),
    };
    assert_eq!(
        (overtaken.0, overtaken.1["frames"].clone()),
        (200, json!([]))
    );
    sender.send_message("t", "c4", "four").await;
    let (status, answer) = other.await.unwrap();
    assert_eq!((status, bodies(&answer)), (200, vec![json!("four")]));
}

/// Refusals are the WebSocket's, as HTTP: a bad token 401, over the per-user connection
/// limit 429, a cookie from another site 403, an unknown session 404 `session_gone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_match_the_socket() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-connections-per-user=1"]).await;
    let (status, body) = sse(g.addr(), "", "teams=t&token=not.a.token", &[])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body["code"].clone()), (401, json!("unauthorized")));
    let (status, _) = poll_open(g.addr(), "not.a.token", &["t"], &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    let token = env.token("ann", &["t"]);
    let (status, body) = sse(g.addr(), &token, "teams=no%20team", &[])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body["code"].clone()), (400, json!("bad_request")));
    let (status, body) = poll_open(g.addr(), &token, &["t", "other"], &[])
        .await
        .err()
        .unwrap();
    assert_eq!((status, body["code"].clone()), (403, json!("forbidden")));

    let _socket = Client::connect(g.addr(), &token).await;
    let (status, body) = poll_open(g.addr(), &token, &["t"], &[])
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body["code"].clone()),
        (429, json!("too_many_connections"))
    );

    let cookie = format!("tc_token={}", env.token("bob", &["t"]));
    let refused = sse(
        g.addr(),
        "",
        "teams=t",
        &[
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example"),
        ],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.0, 403);

    let bob = env.token("bob", &["t"]);
    let (status, body) = send(g.addr(), "0123456789abcdef", &bob, json!({"type": "ping"})).await;
    assert_eq!((status, body["code"].clone()), (404, json!("session_gone")));
    let path = "/v1/poll?session=0123456789abcdef&ack=0";
    let auth = format!("Bearer {bob}");
    let (status, _, _) = teamchat_testkit::try_http(
        g.addr(),
        "GET",
        path,
        &[("authorization", &auth)],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    // A session answers its user's token only: no token 401, another user's 401.
    let poll = poll_open(g.addr(), &bob, &["t"], &[]).await.unwrap();
    let (status, _) = send(g.addr(), &poll.session, "", json!({"type": "ping"})).await;
    assert_eq!(status, 401);
    let eve = env.token("eve", &["t"]);
    let (status, _) = send(g.addr(), &poll.session, &eve, json!({"type": "ping"})).await;
    assert_eq!(status, 401);
    let (status, pong) = poll.send(json!({"type": "ping", "rid": "p"})).await;
    assert_eq!((status, pong), (200, json!({"type": "pong", "rid": "p"})));
}

/// A poll session nobody polls any more lapses after two heartbeats, as a silent socket
/// closes: its user stops typing and goes offline for the others. A closed one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_http_session_ends_presence() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--heartbeat-ms=300"]).await;
    let mut watcher = Client::connect(g.addr(), &env.token("w", &["t"])).await;
    watcher.join("t").await;
    let mut poll = poll_open(g.addr(), &env.token("ann", &["t"]), &["t"], &[])
        .await
        .unwrap();
    poll.expect("room:joined").await;
    poll.expect("receipt:list").await;
    let online = watcher.expect("presence:update").await;
    assert_eq!(
        (online["user"].clone(), online["status"].clone()),
        (json!("ann"), json!("online"))
    );
    let (status, _) = poll
        .send(json!({"type": "typing:start", "team": "t"}))
        .await;
    assert_eq!(status, 204);
    assert_eq!(watcher.expect("typing:start").await["user"], "ann");
    // No more polls: the session lapses; ann stops typing and goes offline.
    assert_eq!(watcher.expect("typing:stop").await["user"], "ann");
    let offline = watcher.expect("presence:update").await;
    assert_eq!(
        (offline["user"].clone(), offline["status"].clone()),
        (json!("ann"), json!("offline"))
    );
    // What was kept, then `session:closed`, then the session is gone.
    let closed = poll.expect("session:closed").await;
    assert_eq!(closed["code"], 1000);
    let (status, body) = poll.poll_raw(poll.next).await;
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!("session_gone")),
        "{body}"
    );

    let closing = poll_open(g.addr(), &env.token("bob", &["t"]), &["t"], &[])
        .await
        .unwrap();
    assert_eq!(closing.close().await, 200);
    // What was kept comes first, then `session:closed` (once), then the session is gone.
    let mut closing = closing;
    closing.expect("room:joined").await;
    closing.expect("receipt:list").await;
    let closed = closing.expect("session:closed").await;
    assert_eq!(closed["code"], 1000);
    let (status, body) = closing.poll_raw(closing.next).await;
    assert_eq!((status, body["code"].clone()), (404, json!("session_gone")));
}

/// What the server API asks of a user reaches their HTTP sessions as their sockets: a
/// notification is a frame, a removal a `room:left`, a revocation the session's end (4001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_reaches_http_sessions() {
    const KEY: &str = "server-api-key-for-tests-0123456789abcdef";
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[&format!("--api-keys={KEY}")]).await;
    let token = env.token("ann", &["t", "u"]);
    let mut stream = sse(g.addr(), &token, "teams=t,u", &[]).await.unwrap();
    stream.expect("room:joined").await;
    stream.expect("receipt:list").await;
    stream.expect("room:joined").await;
    stream.expect("receipt:list").await;
    let addr = g.addr();
    let api = move |method: &'static str, path: String, body: Value| async move {
        let auth = format!("Bearer {KEY}");
        teamchat_testkit::try_http(
            addr,
            method,
            &path,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            serde_json::to_vec(&body).unwrap(),
        )
        .await
        .unwrap()
        .0
    };
    let status = api(
        "POST",
        "/v1/server/users/ann/notify".into(),
        json!({"data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(stream.expect("notify").await.data["data"], json!({"n": 1}));
    let status = api(
        "DELETE",
        "/v1/server/teams/t/members/ann".into(),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    let left = stream.expect("room:left").await;
    assert_eq!(
        (left.data["team"].clone(), left.data["reason"].clone()),
        (json!("t"), json!("removed"))
    );
    let status = api("POST", "/v1/server/users/ann/revoke".into(), json!({})).await;
    assert_eq!(status, 200);
    let closed = stream.expect("session:closed").await;
    assert_eq!(
        (closed.data["code"].clone(), closed.data["reason"].clone()),
        (json!(4001), json!("revoked"))
    );
}

/// A session nothing holds stops counting towards the user's connection limit (its client
/// may be opening a new one); a poll that comes back to it then counts it again, or, with
/// the limit reached meanwhile, ends it 4029.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_its_grace_period_does_not_count() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-connections-per-user=1"]).await;
    let token = env.token("ann", &["t"]);
    let mut poll = poll_open(g.addr(), &token, &["t"], &[]).await.unwrap();
    poll.expect("room:joined").await;
    poll.expect("receipt:list").await;
    // Nothing polls it now: a socket of the same user gets in once it stopped counting.
    let socket = teamchat_testkit::eventually(
        std::time::Duration::from_secs(10),
        "the idle session to stop counting",
        || async {
            let auth = teamchat_testkit::client::Auth::Query(&token);
            let (mut ws, _) =
                teamchat_testkit::client::open(g.addr(), auth, Some("teamchat.v1.json"))
                    .await
                    .ok()?;
            let first = futures_util::StreamExt::next(&mut ws).await?.ok()?;
            first
                .to_text()
                .ok()?
                .contains("session:welcome")
                .then_some(ws)
        },
    )
    .await;
    // The poll comes back: the user is at the limit, so the session ends as a socket over
    // the limit would.
    let closed = poll.expect("session:closed").await;
    assert_eq!(closed["code"], 4029);
    drop(socket);
}

/// A session whose client takes nothing is too slow like a socket that does not read: past
/// `SEND_QUEUE` frames kept it ends with `session:closed` 1013 (what was kept still comes
/// first), and a new session with `since` gets the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_takes_nothing_ends_too_slow() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--send-queue=8"]).await;
    let mut sender = Client::connect(g.addr(), &env.token("s", &["t"])).await;
    sender.join("t").await;
    let token = env.token("ann", &["t"]);
    let mut poll = poll_open(g.addr(), &token, &["t"], &[]).await.unwrap();
    let joined = poll.expect("room:joined").await;
    // At least three frames are kept unacknowledged (the join's answer): six messages
    // pass the eight.
    for n in 0..6 {
        sender
            .send_message("t", &format!("c{n}"), &format!("m{n}"))
            .await;
    }
    // Polls that acknowledge nothing (ack 0) take no frame off the session: it ends.
    let answer = loop {
        let (status, answer) = poll.poll_raw(0).await;
        assert_eq!(status, 200, "{answer}");
        let frames = answer["frames"].as_array().unwrap();
        if frames.iter().any(|f| f["type"] == "session:closed") {
            break answer;
        }
    };
    let frames = answer["frames"].as_array().unwrap();
    let closed = frames.last().unwrap().clone();
    let last = frames
        .iter()
        .filter(|f| f["type"] == "message:new")
        .map(|f| f["offset"].as_str().unwrap().to_owned())
        .next_back();
    assert_eq!(closed["code"], 1013);
    let last = last.expect("some messages came before the end");
    let epoch = joined["epoch"].as_str().unwrap();
    let since = vec![format!("t:{epoch}:{last}")];
    let mut again = poll_open(g.addr(), &token, &["t"], &since).await.unwrap();
    let rejoined = again.expect("room:joined").await;
    assert_eq!(rejoined["recovered"], true, "{rejoined} since {since:?}");
    let mut bodies = Vec::new();
    loop {
        let frame = again.expect_any().await;
        match frame["type"].as_str() {
            Some("message:new") => bodies.push(frame["body"].as_str().unwrap().to_owned()),
            Some("receipt:list") => break,
            _ => {}
        }
    }
    assert_eq!(bodies.last().map(String::as_str), Some("m5"), "{bodies:?}");
    let first: usize = bodies[0][1..].parse().unwrap();
    assert_eq!(bodies.len(), 6 - first, "the rest, once each: {bodies:?}");
}

/// Pages of an allowed origin may use the fallback with their cookie: CORS with
/// credentials, preflights included; other origins get no grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_grants_credentials_to_allowed_origins() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--allowed-origins=https://chat.example"]).await;
    let preflight = [
        ("origin", "https://chat.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    let (status, headers, _) = teamchat_testkit::try_http(
        g.addr(),
        "OPTIONS",
        "/v1/send?session=x",
        &preflight,
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 204);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://chat.example"
    );
    let cookie = format!("tc_token={}", env.token("ann", &["t"]));
    let stream = sse(
        g.addr(),
        "",
        "teams=t",
        &[
            ("cookie", cookie.as_str()),
            ("origin", "https://chat.example"),
        ],
    )
    .await
    .expect("an allowed origin's cookie opens a stream");
    assert_eq!(stream.headers["access-control-allow-credentials"], "true");
    let (status, _, _) = teamchat_testkit::try_http(
        g.addr(),
        "OPTIONS",
        "/v1/send?session=x",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
}
