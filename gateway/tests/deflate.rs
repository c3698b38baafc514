//! WebSocket permessage-deflate (RFC 7692) with `WS_DEFLATE`, over raw TCP and modelled on
//! the Autobahn|Testsuite cases 12.x (compressed messages) and 13.x (negotiation): the
//! offer answered or declined, compressed client messages (whole and fragmented) inflated,
//! RSV1 refused where it may not be, a decompression bomb stopped at `MAX_FRAME`, server
//! messages of 1 KiB and more compressed, smaller ones not, and the bytes a 4 KiB message
//! takes on the wire with and without.

mod common;

use std::net::SocketAddr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use teamchat_testkit::TestEnv;
use teamchat_testkit::client::{
    open_raw_headers, raw_frame, raw_frames_until_close, raw_next_frame_whole,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;
const RSV1: u8 = 0x40;
const MAX_FRAME: usize = 65_536;
/// What Chromium offers.
const CHROMIUM: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

async fn gateway(env: &TestEnv, deflate: bool) -> teamchat_gateway::Gateway {
    let max_frame = format!("--max-frame={MAX_FRAME}");
    let mut flags = vec![max_frame.as_str()];
    if deflate {
        flags.push("--ws-deflate");
    }
    common::gateway(env, &flags).await
}

/// A message compressed as a client does: raw deflate, sync flush, its tail taken off.
fn compress(message: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 1_024);
    compressor
        .compress_vec(message, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// One masked client frame with RSV1 set (or not).
fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = raw_frame(fin, opcode, payload);
    if rsv1 {
        bytes[0] |= RSV1;
    }
    bytes
}

/// A probe: answered `not_joined` with its `rid`.
fn probe(rid: &str) -> Vec<u8> {
    let pad = "all work and no play makes jack a dull boy. ".repeat(40);
    json!({"type": "room:leave", "team": "t", "rid": rid, "pad": pad})
        .to_string()
        .into_bytes()
}

struct Conn {
    stream: TcpStream,
    /// The 101 response's head.
    head: String,
}

impl Conn {
    async fn open(addr: SocketAddr, env: &TestEnv, user: &str, offer: &str) -> Self {
        let (stream, head) = open_raw_headers(addr, &env.token(user, &["t"]), offer, &[]).await;
        let mut conn = Conn { stream, head };
        assert_eq!(conn.next().await.1["type"], "session:welcome");
        conn
    }

    /// The `Sec-WebSocket-Extensions` answer, if any.
    fn extensions(&self) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim())
        })
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next data frame: its first byte, and its JSON (inflated when RSV1 is set).
    async fn next(&mut self) -> (u8, Value) {
        loop {
            let (first, payload) = raw_next_frame_whole(&mut self.stream).await;
            if first & 0x0f != TEXT {
                continue;
            }
            let payload = if first & RSV1 != 0 {
                inflate(&payload)
            } else {
                payload
            };
            return (first, serde_json::from_slice(&payload).unwrap());
        }
    }

    /// The next frame of `kind`, passing over others.
    async fn expect(&mut self, kind: &str) -> (u8, Value) {
        loop {
            let (first, frame) = self.next().await;
            if frame["type"] == kind {
                return (first, frame);
            }
        }
    }

    async fn answers(&mut self, rid: &str) {
        let (_, reply) = self.next().await;
        assert_eq!(
            (&reply["code"], &reply["rid"]),
            (&"not_joined".into(), &rid.into())
        );
    }

    async fn closed_with(&mut self) -> u16 {
        raw_frames_until_close(&mut self.stream).await.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_answered_or_declined() {
    let env = TestEnv::new().await;
    let on = gateway(&env, true).await;
    let chromium = Conn::open(on.addr(), &env, "u1", CHROMIUM).await;
    assert_eq!(chromium.extensions(), Some(ANSWER));
    let none = Conn::open(on.addr(), &env, "u2", "").await;
    assert_eq!(none.extensions(), None);
    let unknown = "Sec-WebSocket-Extensions: permessage-deflate; mux=4\r\n";
    assert_eq!(
        Conn::open(on.addr(), &env, "u3", unknown)
            .await
            .extensions(),
        None
    );
    let second = "Sec-WebSocket-Extensions: permessage-deflate; mux=4, permessage-deflate\r\n";
    assert_eq!(
        Conn::open(on.addr(), &env, "u4", second).await.extensions(),
        Some(ANSWER)
    );
    // WS_DEFLATE off: offers are not answered.
    let off = gateway(&env, false).await;
    assert_eq!(
        Conn::open(off.addr(), &env, "u5", CHROMIUM)
            .await
            .extensions(),
        None
    );
}

/// 12.x: compressed client messages, whole and fragmented, uncompressed ones between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_client_messages_are_inflated() {
    let env = TestEnv::new().await;
    let g = gateway(&env, true).await;
    let mut conn = Conn::open(g.addr(), &env, "u1", CHROMIUM).await;
    conn.send(&frame(true, true, TEXT, &compress(&probe("whole"))))
        .await;
    conn.answers("whole").await;
    // RSV1 is per message: the next may come uncompressed.
    conn.send(&frame(true, false, TEXT, &probe("plain"))).await;
    conn.answers("plain").await;
    // Fragmented: RSV1 on the first frame only; a ping between fragments is answered.
    let compressed = compress(&probe("fragments"));
    let (a, rest) = compressed.split_at(compressed.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    conn.send(&frame(false, true, TEXT, a)).await;
    conn.send(&frame(false, false, CONTINUATION, b)).await;
    conn.send(&frame(true, false, PING, b"between")).await;
    conn.send(&frame(true, false, CONTINUATION, c)).await;
    conn.answers("fragments").await;
}

/// RSV1 where RFC 7692 §6 forbids it, or without negotiation: 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsv1_is_refused_on_control_frames_continuations_and_without_negotiation() {
    let env = TestEnv::new().await;
    let g = gateway(&env, true).await;
    let mut ping = Conn::open(g.addr(), &env, "u1", CHROMIUM).await;
    ping.send(&frame(true, true, PING, b"x")).await;
    assert_eq!(ping.closed_with().await, 1002);

    let mut continuation = Conn::open(g.addr(), &env, "u2", CHROMIUM).await;
    let compressed = compress(&probe("c"));
    let (a, b) = compressed.split_at(compressed.len() / 2);
    continuation.send(&frame(false, true, TEXT, a)).await;
    continuation.send(&frame(true, true, CONTINUATION, b)).await;
    assert_eq!(continuation.closed_with().await, 1002);

    let mut not_offered = Conn::open(g.addr(), &env, "u3", "").await;
    not_offered
        .send(&frame(true, true, TEXT, &compress(&probe("n"))))
        .await;
    assert_eq!(not_offered.closed_with().await, 1002);
}

/// A decompression bomb stops at `MAX_FRAME` (1009); bad deflate data and compressed text
/// that is not UTF-8 are 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_and_bad_data_close_the_connection() {
    let env = TestEnv::new().await;
    let g = gateway(&env, true).await;
    let mut bomb = Conn::open(g.addr(), &env, "u1", CHROMIUM).await;
    let zeros = compress(&vec![b' '; 16 << 20]);
    assert!(zeros.len() < MAX_FRAME, "{} bytes on the wire", zeros.len());
    bomb.send(&frame(true, true, TEXT, &zeros)).await;
    assert_eq!(bomb.closed_with().await, 1009);

    let mut garbage = Conn::open(g.addr(), &env, "u2", CHROMIUM).await;
    garbage.send(&frame(true, true, TEXT, &[0xff; 64])).await;
    assert_eq!(garbage.closed_with().await, 1007);

    let mut latin1 = Conn::open(g.addr(), &env, "u3", CHROMIUM).await;
    latin1
        .send(&frame(
            true,
            true,
            TEXT,
            &compress(b"{\"type\":\"caf\xe9\"}"),
        ))
        .await;
    assert_eq!(latin1.closed_with().await, 1007);

    // The gateway goes on serving.
    let mut next = Conn::open(g.addr(), &env, "u4", CHROMIUM).await;
    next.send(&frame(true, true, TEXT, &compress(&probe("after"))))
        .await;
    next.answers("after").await;
}

/// Server messages of 1 KiB and more go compressed to connections that negotiated it (the
/// same message as others get uncompressed); smaller ones go as they are. The bytes of a
/// 4 KiB message on the wire, with and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_server_messages_go_compressed() {
    let env = TestEnv::new().await;
    let g = gateway(&env, true).await;
    let mut sender = Conn::open(g.addr(), &env, "u1", CHROMIUM).await;
    let mut deflating = Conn::open(g.addr(), &env, "u2", CHROMIUM).await;
    let mut plain = Conn::open(g.addr(), &env, "u3", "").await;
    for conn in [&mut sender, &mut deflating, &mut plain] {
        conn.send(&frame(
            true,
            false,
            TEXT,
            br#"{"type":"room:join","team":"t"}"#,
        ))
        .await;
        conn.expect("receipt:list").await;
    }
    let body: String =
        "Meeting notes: ship the release on Thursday, then review the on-call rota. "
            .chars()
            .cycle()
            .take(4_096)
            .collect();
    let send = json!({"type": "message:send", "team": "t", "client_id": "c1", "body": body});
    sender
        .send(&frame(true, false, TEXT, send.to_string().as_bytes()))
        .await;
    let (ack_first, _) = sender.expect("message:ack").await;
    assert_eq!(ack_first, 0x81, "an ack is under 1 KiB: not compressed");

    let (compressed_first, compressed) = deflating.expect("message:new").await;
    let (plain_first, uncompressed) = plain.expect("message:new").await;
    assert_eq!(compressed_first, 0x80 | RSV1 | TEXT);
    assert_eq!(plain_first, 0x80 | TEXT);
    assert_eq!(compressed, uncompressed);
    assert_eq!(compressed["body"], body.as_str());

    // Bytes on the wire (frame head included) of 4 KiB messages read again raw: the one
    // above (one sentence over and over), and words of a work chat in no fixed order.
    let wire = |(first, payload): (u8, Vec<u8>)| {
        assert_eq!(first & 0x0f, TEXT);
        payload.len() + 4
    };
    for (client_id, body, most) in [
        ("c2", body, 0.25),
        ("c3", teamchat_testkit::work_chat(4_096), 0.5),
    ] {
        let send =
            json!({"type": "message:send", "team": "t", "client_id": client_id, "body": body});
        sender
            .send(&frame(true, false, TEXT, send.to_string().as_bytes()))
            .await;
        let deflated_bytes = wire(next_message_new(&mut deflating).await);
        let plain_bytes = wire(next_message_new(&mut plain).await);
        println!(
            "a 4 KiB message ({client_id}) on the wire: {plain_bytes} bytes plain, {deflated_bytes} deflated"
        );
        assert!(
            (deflated_bytes as f64) < plain_bytes as f64 * most,
            "{deflated_bytes} vs {plain_bytes}"
        );
    }
}

/// The next `message:new` frame, raw.
async fn next_message_new(conn: &mut Conn) -> (u8, Vec<u8>) {
    loop {
        let (first, payload) = raw_next_frame_whole(&mut conn.stream).await;
        let text = if first & RSV1 != 0 {
            inflate(&payload)
        } else {
            payload.clone()
        };
        if String::from_utf8_lossy(&text).contains("\"message:new\"") {
            return (first, payload);
        }
    }
}
