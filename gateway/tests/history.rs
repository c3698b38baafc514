//! HTTP history: readable at once after the ack, from PostgreSQL once synced, and paged as
//! docs/protocol.md says.

mod common;

use redis::AsyncCommands;
use serde_json::Value;
use teamchat_testkit::{Client, TestEnv, http_get, now, sign, try_http};

fn seqs(body: &Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_in_history_at_once_and_after_sync() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("alice", &["t"]);
    let mut c = Client::connect(g.addr(), &token).await;
    c.join("t").await;
    let mut acks = Vec::new();
    for n in 1..=7 {
        acks.push(
            c.send_message("t", &format!("c{n}"), &format!("body {n}"))
                .await,
        );
    }
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];

    // No worker has run: the messages come from the stream.
    let (status, body) = http_get(g.addr(), "/v1/teams/t/messages", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seqs(&body), vec![7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(body["has_more"], false);
    let newest = &body["messages"][0];
    for field in ["seq", "id", "offset", "client_id", "ts"] {
        assert_eq!(newest[field], acks[6][field], "{field}");
    }
    assert_eq!(newest["body"], "body 7");
    assert_eq!(newest["user"], "alice");
    assert_eq!(newest["deleted"], false);
    assert!(newest["edited_at"].is_null());

    // Paging, both directions, bounds exclusive.
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages?limit=3", &headers).await;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        (vec![7, 6, 5], Some(true))
    );
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages?before=5&limit=3", &headers).await;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        (vec![4, 3, 2], Some(true))
    );
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages?before=3&limit=3", &headers).await;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        (vec![2, 1], Some(false))
    );
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages?after=2&limit=3", &headers).await;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        (vec![3, 4, 5], Some(true))
    );
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages?after=5", &headers).await;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        (vec![6, 7], Some(false))
    );
    let before_sync = http_get(g.addr(), "/v1/teams/t/messages", &headers).await.1;

    // After the worker synced, the stream can be gone and history still has every message.
    let stop = common::worker(&env, "w1");
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", 7).await;
    let mut redis = env.redis().await;
    let _: () = redis.del(env.keys().team_events("t")).await.unwrap();
    let (_, after_sync) = http_get(g.addr(), "/v1/teams/t/messages", &headers).await;
    assert_eq!(after_sync, before_sync, "PostgreSQL serves the same page");
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages?after=2&limit=3", &headers).await;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        (vec![3, 4, 5], Some(true))
    );

    // A message acked after the sync comes from the stream again, merged with the rows.
    c.send_message("t", "c8", "body 8").await;
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages?limit=2", &headers).await;
    assert_eq!(
        (seqs(&body), body["has_more"].as_bool()),
        (vec![8, 7], Some(true))
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_refuses_bad_tokens_teams_and_parameters() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("alice", &["t"]);
    let expired = sign(&serde_json::json!({"sub": "alice", "teams": ["t"], "exp": now() - 3600}));
    let get = |path: String, token: Option<String>| {
        let addr = g.addr();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            http_get(addr, &path, &headers).await
        }
    };
    assert_eq!(get("/v1/teams/t/messages".into(), None).await.0, 401);
    assert_eq!(
        get("/v1/teams/t/messages".into(), Some("junk".into()))
            .await
            .0,
        401
    );
    assert_eq!(
        get("/v1/teams/t/messages".into(), Some(expired)).await.0,
        401
    );
    let (status, body) = get("/v1/teams/other/messages".into(), Some(token.clone())).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    for query in ["before=1&after=2", "limit=0", "limit=201", "before=abc"] {
        let (status, body) =
            get(format!("/v1/teams/t/messages?{query}"), Some(token.clone())).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("bad_request")),
            "{query}"
        );
    }
    // The token may also come from the query or the cookie.
    let (status, body) = http_get(
        g.addr(),
        &format!("/v1/teams/t/messages?token={token}"),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["messages"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let cookie = format!("tc_token={token}");
    assert_eq!(
        http_get(
            g.addr(),
            "/v1/teams/t/messages",
            &[("cookie", cookie.as_str())]
        )
        .await
        .0,
        200
    );
    // Staff read any team.
    let staff =
        sign(&serde_json::json!({"sub": "boss", "teams": [], "role": "staff", "exp": now() + 600}));
    assert_eq!(
        get("/v1/teams/other/messages".into(), Some(staff)).await.0,
        200
    );

    assert_eq!(http_get(g.addr(), "/healthz", &[]).await.0, 200);
    let (status, body) = http_get(g.addr(), "/readyz", &[]).await;
    assert_eq!(
        (status, body["redis"].as_bool(), body["postgres"].as_bool()),
        (200, Some(true), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_on_allowed_origins_may_read_history_from_the_browser() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--allowed-origins=https://chat.example"]).await;
    let token = env.token("alice", &["t"]);
    let bearer = format!("Bearer {token}");
    let path = "/v1/teams/t/messages";
    let header = |headers: &hyper::HeaderMap, name: &str| {
        headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    };

    // The browser's preflight for a GET with an Authorization header.
    let preflight = [
        ("origin", "https://chat.example"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
    ];
    let (status, headers, _) = try_http(g.addr(), "OPTIONS", path, &preflight, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(
        header(&headers, "access-control-allow-origin").as_deref(),
        Some("https://chat.example")
    );
    assert_eq!(
        header(&headers, "access-control-allow-headers").as_deref(),
        Some("authorization, content-type, last-event-id")
    );
    let (status, headers, body) = try_http(
        g.addr(),
        "GET",
        path,
        &[
            ("origin", "https://chat.example"),
            ("authorization", &bearer),
        ],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(
        header(&headers, "access-control-allow-origin").as_deref(),
        Some("https://chat.example")
    );

    // Another origin gets no CORS grant: the browser keeps the answer from its page.
    let elsewhere = [
        ("origin", "https://evil.example"),
        ("authorization", &bearer),
    ];
    let (_, headers, _) = try_http(g.addr(), "GET", path, &elsewhere, Vec::new())
        .await
        .unwrap();
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    let (status, _, _) = try_http(g.addr(), "OPTIONS", path, &elsewhere, Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 403);
}

/// A page the client accepts gzip for comes back gzipped, and decodes to the same JSON as
/// the plain page; a small answer, or a client that refuses gzip, gets it plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_gzipped_for_clients_that_accept_it() {
    use std::io::Read;
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("alice", &["t"]);
    let mut c = Client::connect(g.addr(), &token).await;
    c.join("t").await;
    for n in 1..=20 {
        c.send_message(
            "t",
            &format!("c{n}"),
            &format!("message number {n} with some words"),
        )
        .await;
    }
    let auth = format!("Bearer {token}");
    let page = |encoding: &'static str| {
        let (addr, auth) = (g.addr(), auth.clone());
        async move {
            try_http(
                addr,
                "GET",
                "/v1/teams/t/messages",
                &[
                    ("authorization", auth.as_str()),
                    ("accept-encoding", encoding),
                ],
                Vec::new(),
            )
            .await
            .unwrap()
        }
    };
    let (status, headers, plain) = page("identity").await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert!(
        plain.len() > 1_024,
        "a page worth compressing: {} bytes",
        plain.len()
    );

    let (status, headers, gzipped) = page("br;q=1.0, gzip;q=0.8").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-encoding"], "gzip");
    assert!(
        gzipped.len() < plain.len() / 2,
        "{} of {}",
        gzipped.len(),
        plain.len()
    );
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_end(&mut decoded)
        .unwrap();
    let decoded: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(decoded, serde_json::from_slice::<Value>(&plain).unwrap());

    let (_, headers, _) = page("gzip;q=0").await;
    assert!(
        headers.get("content-encoding").is_none(),
        "q=0 refuses gzip"
    );
    let (status, headers, _) = try_http(
        g.addr(),
        "GET",
        "/healthz",
        &[("accept-encoding", "gzip")],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        headers.get("content-encoding").is_none(),
        "small answers stay plain"
    );
}

/// (kind, body) of each version the edit history lists.
fn versions(body: &Value) -> Vec<(String, String)> {
    body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lists_its_versions_from_archive_and_stream_until_deleted() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("alice", &["t"]);
    let mut c = Client::connect(g.addr(), &token).await;
    c.join("t").await;
    c.send_message("t", "c1", "first").await;
    c.send_message("t", "c2", "other").await;
    let edit = |seq: u64, body: &str| serde_json::json!({"type":"message:edit","team":"t","seq":seq,"body":body});
    c.send(edit(1, "second")).await;
    c.expect("message:ack").await;
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let expected = |bodies: &[(&str, &str)]| -> Vec<(String, String)> {
        bodies
            .iter()
            .map(|(k, b)| (k.to_string(), b.to_string()))
            .collect()
    };

    // Nothing synced: from the stream.
    let (status, body) = http_get(g.addr(), "/v1/teams/t/messages/1/edits", &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        versions(&body),
        expected(&[("message", "first"), ("edit", "second")])
    );
    assert_eq!(
        (body["seq"].as_u64(), body["deleted"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(body["versions"][1]["offset"], "3");
    assert_eq!(body["versions"][1]["user"], "alice");

    // Synced, the stream gone: from the archive, with a newer edit from the stream.
    let stop = common::worker(&env, "w1");
    let pg = env.pg().await;
    teamchat_testkit::wait_for_watermark(&pg, "t", 3).await;
    stop.cancel();
    let mut redis = env.redis().await;
    let _: () = redis.del(env.keys().team_events("t")).await.unwrap();
    c.send(edit(1, "third")).await;
    c.expect("message:ack").await;
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages/1/edits", &headers).await;
    assert_eq!(
        versions(&body),
        expected(&[("message", "first"), ("edit", "second"), ("edit", "third")])
    );
    // A message never edited has its one version; one never sent is not found.
    let (_, body) = http_get(g.addr(), "/v1/teams/t/messages/2/edits", &headers).await;
    assert_eq!(versions(&body), expected(&[("message", "other")]));
    let (status, body) = http_get(g.addr(), "/v1/teams/t/messages/9/edits", &headers).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // Other teams' messages are not readable through it.
    let outsider = env.token("mallory", &["u"]);
    let auth = format!("Bearer {outsider}");
    let (status, _) = http_get(
        g.addr(),
        "/v1/teams/t/messages/1/edits",
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, 403);

    // Deleted: no body of it is shown any more.
    c.send(serde_json::json!({"type":"message:delete","team":"t","seq":1}))
        .await;
    c.expect("message:ack").await;
    let (status, body) = http_get(g.addr(), "/v1/teams/t/messages/1/edits", &headers).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["deleted"].as_bool(), versions(&body)),
        (Some(true), vec![])
    );
}
