//! Malformed and refused requests get the documented error or close code, and change nothing.

mod common;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use teamchat_testkit::client::{self, Auth};
use teamchat_testkit::tokio_tungstenite::tungstenite::Message;
use teamchat_testkit::{Client, TestEnv};

/// A request and the answer it must get: the frame's `type`, its `code` and `rid`.
struct Case {
    frame: String,
    answer: &'static str,
    code: &'static str,
    rid: Option<&'static str>,
}

fn case(frame: impl ToString, answer: &'static str, code: &'static str) -> Case {
    Case {
        frame: frame.to_string(),
        answer,
        code,
        rid: None,
    }
}

/// Sends each case's frame and checks its answer.
async fn check(c: &mut Client, cases: &[Case]) {
    for Case {
        frame,
        answer,
        code,
        rid,
    } in cases
    {
        c.ws.send(Message::text(frame.clone())).await.unwrap();
        let e = c.expect(answer).await;
        assert_eq!(
            (e["code"].as_str(), e["rid"].as_str()),
            (Some(*code), *rid),
            "the answer to {frame}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_refused_requests_get_error_codes() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-body=16", "--max-meta=32"]).await;
    let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    let send = |fields: serde_json::Value| {
        let mut frame = json!({"type": "message:send", "team": "t", "client_id": "c", "body": "b"});
        for (key, value) in fields.as_object().unwrap() {
            match value {
                serde_json::Value::Null => frame.as_object_mut().unwrap().remove(key),
                value => frame
                    .as_object_mut()
                    .unwrap()
                    .insert(key.clone(), value.clone()),
            };
        }
        frame
    };

    check(
        &mut c,
        &[
            case("{not json", "error", "bad_request"),
            case("[1,2]", "error", "bad_request"),
            Case {
                rid: Some("r9"),
                ..case(
                    json!({"type":"no:such","rid":"r9"}),
                    "error",
                    "unknown_type",
                )
            },
            case(json!({"type":"room:join"}), "room:error", "bad_request"),
            case(
                json!({"type":"room:join","team":"bad team!"}),
                "room:error",
                "bad_request",
            ),
            case(
                json!({"type":"room:join","team":"t","since":{"offset":"x"}}),
                "room:error",
                "bad_request",
            ),
            Case {
                rid: Some("l1"),
                ..case(
                    json!({"type":"room:leave","team":"t","rid":"l1"}),
                    "room:error",
                    "not_joined",
                )
            },
            case(send(json!({})), "error", "not_joined"),
        ],
    )
    .await;

    c.join("t").await;
    check(
        &mut c,
        &[
            case(send(json!({"body": "x".repeat(17)})), "error", "too_large"),
            case(
                send(json!({"meta": {"k": "x".repeat(40)}})),
                "error",
                "too_large",
            ),
            case(send(json!({"meta": "text"})), "error", "bad_request"),
            case(send(json!({"client_id": ""})), "error", "bad_request"),
            case(send(json!({"client_id": null})), "error", "bad_request"),
        ],
    )
    .await;

    // None of that was accepted: the first message gets seq 1 at offset 1.
    let ack = c.send_message("t", "ok", "fine").await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["offset"].as_str()),
        (Some(1), Some("1"))
    );

    c.send(json!({"type":"ping","rid":"p"})).await;
    assert_eq!(c.expect("pong").await["rid"], "p");

    c.send(json!({"type":"room:leave","team":"t","rid":"bye"}))
        .await;
    let left = c.expect("room:left").await;
    assert_eq!(
        (left["team"].as_str(), left["rid"].as_str()),
        (Some("t"), Some("bye"))
    );
    check(
        &mut c,
        &[case(
            send(json!({"client_id": "c2"})),
            "error",
            "not_joined",
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_frame_closes_1009() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-frame=1024"]).await;
    let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    assert_eq!(c.welcome["max_frame"], 1024);
    let body = "x".repeat(2000);
    c.ws.send(Message::text(json!({"type":"ping","pad":body}).to_string()))
        .await
        .unwrap();
    assert_eq!(c.close_code().await.0, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_at_the_heartbeat_and_answers_pings() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--heartbeat-ms=200"]).await;
    let (mut ws, _) = client::open(g.addr(), Auth::Query(&env.token("u1", &["t"])), None)
        .await
        .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("\"heartbeat_ms\":200"));
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let (mut got_pong, mut got_ping) = (false, false);
    while !(got_pong && got_ping) {
        match tokio::time::timeout(client::RECV_TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"hi");
                got_pong = true;
            }
            Message::Ping(_) => got_ping = true,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_4000() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--heartbeat-ms=100"]).await;
    // A raw socket that never answers the server's pings: nothing reaches the gateway.
    let mut stream = client::open_raw(g.addr(), &env.token("u1", &["t"])).await;
    let started = std::time::Instant::now();
    assert_eq!(client::raw_close_code(&mut stream).await, 4000);
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_assembled_and_capped_at_max_frame() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-frame=1000"]).await;
    let token = env.token("u1", &["t"]);
    let mut raw = client::open_raw(g.addr(), &token).await;
    let request = br#"{"type":"ping","rid":"in-three-parts"}"#;
    client::raw_send_frame(&mut raw, false, 0x1, &request[..10]).await;
    client::raw_send(&mut raw, 0x9, b"between").await; // control frames may interleave
    client::raw_send_frame(&mut raw, false, 0x0, &request[10..20]).await;
    client::raw_send_frame(&mut raw, true, 0x0, &request[20..]).await;
    client::raw_send_text(&mut raw, r#"{"type":"nope"}"#).await;
    // The pong of the assembled request comes before the error of the next one; the
    // unknown type then gets its error, and closing shows both arrived.
    client::raw_send(&mut raw, 0x8, &1000u16.to_be_bytes()).await;
    let (_, frames) = client::raw_frames_until_close(&mut raw).await;
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["session:welcome", "pong", "error"]);
    assert_eq!(frames[1]["rid"], "in-three-parts");

    // Each fragment is small, together they pass max_frame: 1009.
    let mut raw = client::open_raw(g.addr(), &token).await;
    client::raw_send_frame(&mut raw, false, 0x1, &[b' '; 600]).await;
    client::raw_send_frame(&mut raw, false, 0x0, &[b' '; 600]).await;
    assert_eq!(client::raw_close_code(&mut raw).await, 1009);
}

/// Pongs read from a raw socket until the one with `rid`; returns their rids.
async fn pongs_until(raw: &mut tokio::net::TcpStream, rid: &str) -> Vec<String> {
    let mut rids = Vec::new();
    while rids.last().map(String::as_str) != Some(rid) {
        let (opcode, payload) = client::raw_next_frame(raw).await;
        assert_eq!(opcode, 0x1, "a text frame expected");
        let frame: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        if frame["type"] == "pong" {
            rids.push(frame["rid"].as_str().unwrap().to_owned());
        }
    }
    rids
}

/// A frame sent with the upgrade request, and frames sent together in one packet, are
/// all read at once: the reader waits for the socket only when it holds nothing unread
/// (the client here waits for the answers before it sends anything more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_handshake_or_together_are_read_at_once() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let token = env.token("u1", &["t"]);
    let ping = |rid: &str| {
        let request = json!({"type": "ping", "rid": rid}).to_string();
        client::raw_frame(true, 0x1, request.as_bytes())
    };
    let mut raw = client::open_raw_with(g.addr(), &token, &ping("early")).await;
    assert_eq!(pongs_until(&mut raw, "early").await, ["early"]);

    raw.write_all(&[ping("one"), ping("two")].concat())
        .await
        .unwrap();
    assert_eq!(pongs_until(&mut raw, "two").await, ["one", "two"]);
    client::raw_send(&mut raw, 0x8, &1000u16.to_be_bytes()).await;
    assert_eq!(client::raw_close_code(&mut raw).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_answered_1000() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    c.join("t").await;
    use teamchat_testkit::tokio_tungstenite::tungstenite::protocol::{
        CloseFrame, frame::coding::CloseCode,
    };
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    c.ws.close(Some(normal)).await.unwrap();
    // The server echoes the close, code included.
    let (code, frames) = c.close_code().await;
    assert_eq!(code, 1000);
    assert!(frames.is_empty());
}
