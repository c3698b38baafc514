//! WebSocket conformance (RFC 6455), frame by frame over raw TCP, modelled on the
//! Autobahn|Testsuite server cases: framing (1.x), pings and pongs (2.x), reserved bits
//! (3.x), opcodes (4.x), fragmentation (5.x), UTF-8 (6.x), closing (7.x), limits (9.x),
//! masking, and the closing handshake's delivery of the close code (a lingering close).
//! Each case names the RFC section it checks. The probe of a live connection is a
//! `room:leave` of a team not joined: answered `not_joined` with its `rid`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use teamchat_testkit::TestEnv;
use teamchat_testkit::client::{self, raw_next_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MAX_FRAME: usize = 65_536;

/// A client frame's bytes: `rsv` are the three reserved bits (0..8), `masked` as a client
/// must.
fn frame(fin: bool, rsv: u8, opcode: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut bytes = vec![u8::from(fin) << 7 | rsv << 4 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => bytes.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        bytes.extend_from_slice(&mask);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, 0, opcode, true, payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// A probe request: answered `not_joined` carrying `rid`, padded to `len` bytes.
fn probe(rid: &str, len: usize) -> Vec<u8> {
    let head = format!(r#"{{"type":"room:leave","team":"t","rid":"{rid}","pad":""#);
    let mut text = head.into_bytes();
    let tail = br#""}"#;
    text.resize(len.max(text.len() + tail.len()) - tail.len(), b'x');
    text.extend_from_slice(tail);
    text
}

struct Conn {
    stream: TcpStream,
}

impl Conn {
    async fn open(addr: SocketAddr, env: &TestEnv) -> Self {
        let mut stream = client::open_raw(addr, &env.token("u1", &["t"])).await;
        let (opcode, welcome) = raw_next_frame(&mut stream).await;
        assert_eq!(opcode, TEXT);
        assert!(String::from_utf8_lossy(&welcome).contains("session:welcome"));
        Conn { stream }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writing");
    }

    async fn next(&mut self) -> (u8, Vec<u8>) {
        raw_next_frame(&mut self.stream).await
    }

    /// The probe with this rid is answered (the connection is alive and in step).
    async fn answers(&mut self, rid: &str) {
        let (opcode, reply) = self.next().await;
        assert_eq!(opcode, TEXT, "{}", String::from_utf8_lossy(&reply));
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            (&reply["code"], &reply["rid"]),
            (&"not_joined".into(), &rid.into()),
            "{reply}"
        );
    }

    /// The gateway's close code, then the end of its stream (a FIN, not a reset: the close
    /// frame was not thrown away).
    async fn closed_with(mut self) -> u16 {
        let code = loop {
            let (opcode, payload) = self.next().await;
            if opcode == CLOSE {
                break u16::from_be_bytes([payload[0], payload[1]]);
            }
        };
        // The client's half of the closing handshake.
        let _ = self
            .stream
            .write_all(&masked(true, CLOSE, &close_payload(code, b"")))
            .await;
        let mut rest = [0u8; 64];
        let end = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut rest))
            .await
            .expect("the gateway ends the TCP connection after its close");
        assert!(matches!(end, Ok(0)), "a FIN after the close frame: {end:?}");
        code
    }
}

async fn gateway(env: &TestEnv) -> teamchat_gateway::Gateway {
    let max_frame = format!("--max-frame={MAX_FRAME}");
    common::gateway(env, &[&max_frame, "--max-violations=1000"]).await
}

/// §5.2, §5.6 (Autobahn 1.1, 1.2): text and binary messages of every length encoding
/// (7-bit, 16-bit, 64-bit) are read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_every_length_encoding() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    let mut c = Conn::open(g.addr(), &env).await;
    for (n, len) in [0usize, 60, 125, 126, 127, 65_535, MAX_FRAME]
        .into_iter()
        .enumerate()
    {
        let rid = format!("t{n}");
        c.send(&masked(true, TEXT, &probe(&rid, len))).await;
        c.answers(&rid).await;
    }
    c.send(&masked(true, BINARY, &probe("bin", 200))).await;
    c.answers("bin").await;
    // Several frames in one write are read one by one.
    let mut burst = masked(true, TEXT, &probe("b1", 10));
    burst.extend(masked(true, TEXT, &probe("b2", 300)));
    c.send(&burst).await;
    c.answers("b1").await;
    c.answers("b2").await;
}

/// §5.5.2, §5.5.3 (Autobahn 2.x): a ping is answered by a pong with its payload (empty,
/// binary, 125 bytes); an unsolicited pong is ignored; a ping over 125 bytes fails 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_pongs() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    let mut c = Conn::open(g.addr(), &env).await;
    for payload in [
        vec![],
        b"hello".to_vec(),
        vec![0xff, 0x00, 0xfe],
        vec![b'p'; 125],
    ] {
        c.send(&masked(true, PING, &payload)).await;
        assert_eq!(c.next().await, (PONG, payload));
    }
    c.send(&masked(true, PONG, b"unasked")).await;
    c.send(&masked(true, TEXT, &probe("after-pong", 10))).await;
    c.answers("after-pong").await;
    // Ten pings in one write: ten pongs, in order.
    let burst: Vec<u8> = (0..10u8).flat_map(|n| masked(true, PING, &[n])).collect();
    c.send(&burst).await;
    for n in 0..10u8 {
        assert_eq!(c.next().await, (PONG, vec![n]));
    }
    c.send(&masked(true, PING, &[b'p'; 126])).await;
    assert_eq!(c.closed_with().await, 1002);
}

/// §5.2 (Autobahn 3.x): a reserved bit set without a negotiated extension fails 1002, on
/// data and control frames alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bits() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    for (rsv, opcode) in [(4, TEXT), (2, TEXT), (1, TEXT), (7, BINARY), (3, PING)] {
        let mut c = Conn::open(g.addr(), &env).await;
        c.send(&frame(true, rsv, opcode, true, &probe("r", 10)))
            .await;
        assert_eq!(c.closed_with().await, 1002, "rsv {rsv} opcode {opcode}");
    }
}

/// §5.2 (Autobahn 4.x): reserved opcodes, data (3–7) and control (0xB–0xF), fail 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_opcodes() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    for opcode in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut c = Conn::open(g.addr(), &env).await;
        c.send(&masked(true, opcode, b"x")).await;
        assert_eq!(c.closed_with().await, 1002, "opcode {opcode:#x}");
    }
}

/// §5.4, §5.5 (Autobahn 5.x): fragments make one message, with control frames allowed
/// between them; a fragmented control frame, a continuation with nothing to continue and
/// a new message inside a fragmented one fail 1002.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmentation() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    let mut c = Conn::open(g.addr(), &env).await;
    let message = probe("frag", 90);
    let (one, rest) = message.split_at(30);
    let (two, three) = rest.split_at(30);
    c.send(&masked(false, TEXT, one)).await;
    c.send(&masked(true, PING, b"between")).await;
    c.send(&masked(false, CONTINUATION, two)).await;
    c.send(&masked(true, CONTINUATION, three)).await;
    assert_eq!(c.next().await, (PONG, b"between".to_vec()));
    c.answers("frag").await;
    // Fragments of one byte each.
    let message = probe("bytes", 40);
    for (i, byte) in message.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        c.send(&masked(i + 1 == message.len(), opcode, &[*byte]))
            .await;
    }
    c.answers("bytes").await;

    let cases: [(&str, Vec<u8>); 4] = [
        ("fragmented ping", masked(false, PING, b"x")),
        (
            "fragmented close",
            masked(false, CLOSE, &close_payload(1000, b"")),
        ),
        ("continuation first", masked(true, CONTINUATION, b"x")),
        (
            "a message inside a message",
            [masked(false, TEXT, b"{"), masked(true, TEXT, b"{}")].concat(),
        ),
    ];
    for (case, bytes) in cases {
        let mut c = Conn::open(g.addr(), &env).await;
        c.send(&bytes).await;
        assert_eq!(c.closed_with().await, 1002, "{case}");
    }
}

/// §8.1, §5.6 (Autobahn 6.x): text must be UTF-8. Valid text split inside a code point
/// across fragments is one message; invalid text fails 1007, as soon as it cannot become
/// valid (fail fast), and a code point left unfinished by the last fragment too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_handling() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    let mut c = Conn::open(g.addr(), &env).await;
    // "κόσμε" in the padding, cut inside its second code point.
    let text = r#"{"type":"room:leave","team":"t","rid":"utf8","pad":"κόσμε"}"#.as_bytes();
    let cut = text.iter().position(|b| *b == 0xcf).unwrap() + 1;
    c.send(&masked(false, TEXT, &text[..cut])).await;
    c.send(&masked(true, CONTINUATION, &text[cut..])).await;
    c.answers("utf8").await;
    // A binary message is not text: its bytes are not checked as UTF-8 by the framing.
    c.send(&masked(true, BINARY, &probe("bin", 20))).await;
    c.answers("bin").await;

    let cases: [(&str, Vec<u8>); 4] = [
        (
            "invalid text",
            masked(
                true,
                TEXT,
                b"{\"x\":\"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\"}",
            ),
        ),
        (
            // The first fragment is already invalid; its message never ends.
            "invalid first fragment",
            masked(false, TEXT, b"\xce\xba\xff"),
        ),
        (
            "unfinished at the last fragment",
            [
                masked(false, TEXT, b"{\"x\":\"\xce"),
                masked(true, CONTINUATION, b""),
            ]
            .concat(),
        ),
        (
            "invalid close reason",
            masked(true, CLOSE, &close_payload(1000, b"\xff\xfe")),
        ),
    ];
    for (case, bytes) in cases {
        let mut c = Conn::open(g.addr(), &env).await;
        c.send(&bytes).await;
        assert_eq!(c.closed_with().await, 1007, "{case}");
    }
}

/// §5.5.1, §7.4 (Autobahn 7.x): a close with a valid code is echoed with it; with no code
/// it is echoed empty; a one-byte payload, a code that must not be on the wire or a close
/// over 125 bytes fails 1002; nothing is answered after a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999,
    ] {
        let mut c = Conn::open(g.addr(), &env).await;
        c.send(&masked(true, CLOSE, &close_payload(code, b"bye")))
            .await;
        let (opcode, payload) = c.next().await;
        assert_eq!(
            (opcode, &payload[..2]),
            (CLOSE, &code.to_be_bytes()[..]),
            "code {code}"
        );
        let mut rest = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(10), c.stream.read(&mut rest)).await;
        assert!(
            matches!(end, Ok(Ok(0))),
            "then the TCP connection ends: {end:?}"
        );
    }
    // An empty close is echoed empty; a request after it is not answered.
    let mut c = Conn::open(g.addr(), &env).await;
    let mut bytes = masked(true, CLOSE, b"");
    bytes.extend(masked(true, TEXT, &probe("late", 10)));
    c.send(&bytes).await;
    assert_eq!(c.next().await, (CLOSE, vec![]));
    let mut rest = [0u8; 16];
    assert!(matches!(c.stream.read(&mut rest).await, Ok(0)));

    let mut bad: Vec<(String, Vec<u8>)> = vec![("one byte".into(), masked(true, CLOSE, &[0x03]))];
    for code in [
        0u16, 999, 1004, 1005, 1006, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        bad.push((
            format!("code {code}"),
            masked(true, CLOSE, &close_payload(code, b"")),
        ));
    }
    bad.push((
        "126 bytes".into(),
        masked(true, CLOSE, &close_payload(1000, &[b'r'; 124])),
    ));
    for (case, bytes) in bad {
        let mut c = Conn::open(g.addr(), &env).await;
        c.send(&bytes).await;
        assert_eq!(c.closed_with().await, 1002, "{case}");
    }
}

/// §10.4 (Autobahn 9.x, sized to `max_frame`): a message of `max_frame` bytes is read; one
/// byte more fails 1009, whole or in fragments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    let mut c = Conn::open(g.addr(), &env).await;
    c.send(&masked(true, TEXT, &probe("max", MAX_FRAME))).await;
    c.answers("max").await;
    let message = probe("fragments", MAX_FRAME);
    let fragments: Vec<&[u8]> = message.chunks(4096).collect();
    for (i, fragment) in fragments.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        c.send(&masked(i + 1 == fragments.len(), opcode, fragment))
            .await;
    }
    c.answers("fragments").await;

    let mut c = Conn::open(g.addr(), &env).await;
    c.send(&masked(true, TEXT, &probe("over", MAX_FRAME + 1)))
        .await;
    assert_eq!(c.closed_with().await, 1009);
    let mut c = Conn::open(g.addr(), &env).await;
    let over = probe("over", MAX_FRAME + 1);
    let (first, second) = over.split_at(MAX_FRAME / 2);
    c.send(&masked(false, TEXT, first)).await;
    c.send(&masked(true, CONTINUATION, second)).await;
    assert_eq!(c.closed_with().await, 1009);
}

/// §5.1, §5.3: a client frame without the mask bit fails 1002, data or control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frames() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    for opcode in [TEXT, BINARY, PING, CLOSE] {
        let mut c = Conn::open(g.addr(), &env).await;
        c.send(&frame(true, 0, opcode, false, &probe("plain", 10)))
            .await;
        assert_eq!(c.closed_with().await, 1002, "opcode {opcode:#x}");
    }
    // The gateway goes on serving everyone else.
    let mut c = Conn::open(g.addr(), &env).await;
    c.send(&masked(true, TEXT, &probe("fine", 10))).await;
    c.answers("fine").await;
}

/// Reads frames until the gateway's close; its code (`None`: the stream ended or was
/// reset first, so the close frame was lost).
async fn close_code_while(read: &mut tokio::net::tcp::OwnedReadHalf) -> Option<u16> {
    loop {
        let mut head = [0u8; 2];
        read.read_exact(&mut head).await.ok()?;
        let len = match head[1] & 0x7f {
            126 => u64::from(read.read_u16().await.ok()?),
            127 => read.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        read.read_exact(&mut payload).await.ok()?;
        if head[0] & 0x0f == CLOSE {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// §7.1.1 (the closing handshake): a client still writing when the gateway closes it
/// finishes its write and reads the close code — 1009 for a frame over `max_frame` whose
/// rest it goes on sending, 1008 for a stream of bad requests — in every trial. Without
/// the lingering close the gateway dropped the socket with the client's bytes unread: the
/// kernel reset the connection, the client's write failed, and a client library reports
/// 1006 instead of the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_writing_reads_the_close_code() {
    const TRIALS: usize = 20;
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[&format!("--max-frame={MAX_FRAME}")]).await;
    let mut delivered = [0usize; 2];
    for trial in 0..TRIALS {
        for (n, expected) in [1009u16, 1008].into_iter().enumerate() {
            let c = Conn::open(g.addr(), &env).await;
            let (mut read, mut write) = c.stream.into_split();
            // As a client that finishes writing before it reads, and gives up (1006) when a
            // write fails: more than the sockets' buffers hold, so the gateway must read on.
            let mut wrote_all = true;
            if expected == 1009 {
                // The head of a frame of 8 MB, then its payload, 64 KiB at a time.
                let whole = masked(true, TEXT, &vec![b'x'; 8 << 20]);
                for chunk in whole.chunks(64 << 10) {
                    if write.write_all(chunk).await.is_err() {
                        wrote_all = false;
                        break;
                    }
                }
            } else {
                let bad = masked(true, TEXT, br#"{"type":"nope"}"#).repeat(10_000);
                for _ in 0..20 {
                    if write.write_all(&bad).await.is_err() {
                        wrote_all = false;
                        break;
                    }
                }
            }
            let code = tokio::time::timeout(Duration::from_secs(10), close_code_while(&mut read))
                .await
                .expect("a close or the end within 10 s")
                .filter(|_| wrote_all);
            if code == Some(expected) {
                delivered[n] += 1;
            } else {
                eprintln!("trial {trial}: expected {expected}, got {code:?}");
            }
        }
    }
    println!(
        "close codes delivered to a client still writing: 1009 {}/{TRIALS}, 1008 {}/{TRIALS}",
        delivered[0], delivered[1]
    );
    assert_eq!(delivered, [TRIALS, TRIALS]);
}

/// A client that never answers the close, and one that keeps trickling bytes after it,
/// do not hold the gateway's socket: the TCP connection ends within the close grace
/// (2 s; 10 s allowed here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_closes_does_not_hold_the_socket() {
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    for trickle in [false, true] {
        let c = Conn::open(g.addr(), &env).await;
        let (mut read, mut write) = c.stream.into_split();
        write
            .write_all(&frame(true, 0, TEXT, false, b"{}"))
            .await
            .unwrap();
        let trickling = tokio::spawn(async move {
            if trickle {
                loop {
                    if write.write_all(b"x").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            // Never closes its side: holds the write half until the test ends.
            std::future::pending::<()>().await;
        });
        assert_eq!(close_code_while(&mut read).await, Some(1002));
        let mut rest = [0u8; 64];
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match read.read(&mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            end.is_ok(),
            "the gateway ended the connection (trickle: {trickle})"
        );
        trickling.abort();
    }
}

/// The same at the handshake: a client with a bad token that starts writing at once
/// finishes its write and reads 4001, in every trial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_still_writing_reads_4001() {
    const TRIALS: usize = 20;
    let env = TestEnv::new().await;
    let g = gateway(&env).await;
    let mut delivered = 0;
    for _ in 0..TRIALS {
        let stream = client::open_raw(g.addr(), "not-a-token").await;
        let (mut read, mut write) = stream.into_split();
        let requests = masked(true, TEXT, &probe("early", 1000)).repeat(4_000);
        let wrote_all = write.write_all(&requests).await.is_ok();
        let code = tokio::time::timeout(Duration::from_secs(10), close_code_while(&mut read))
            .await
            .expect("a close or the end within 10 s");
        if wrote_all && code == Some(4001) {
            delivered += 1;
        }
    }
    println!("4001 delivered to a client still writing: {delivered}/{TRIALS}");
    assert_eq!(delivered, TRIALS);
}
