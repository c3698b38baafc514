//! The outlet against a real socket pair: order, coalescing, closes.

use super::*;
use fastwebsockets::OpCode;
use fastwebsockets::{Role, WebSocket};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

/// An outlet on one end of a loopback connection, a client reading frames on the other.
async fn connected(capacity: usize) -> (Outlet, WebSocket<TcpStream>, OwnedReadHalf) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (read, write) = server.into_split();
    let limits = QueueLimits {
        frames: capacity as u32,
        bytes: u32::MAX,
        stall_ms: 30_000,
    };
    let outlet = Outlet::new(WriteHalf::Plain(write), Encoding::Json, false, limits, None);
    (
        outlet,
        WebSocket::after_handshake(client, Role::Client),
        read,
    )
}

/// A binary frame of `size` bytes that names its sender and number.
fn numbered(sender: u8, n: u32, size: usize) -> Outbound {
    let mut payload = vec![0u8; size];
    payload[0] = sender;
    payload[1..5].copy_from_slice(&n.to_be_bytes());
    Outbound::control(OpCode::Binary, payload.into())
}

/// The next frame; a stream broken mid-frame would leave the client waiting.
async fn next_frame(client: &mut WebSocket<TcpStream>) -> (OpCode, Vec<u8>) {
    let read = tokio::time::timeout(Duration::from_secs(20), client.read_frame());
    let frame = read.await.expect("a whole frame").unwrap();
    (frame.opcode, frame.payload.to_vec())
}

fn number(payload: &[u8]) -> (usize, u32) {
    let n = u32::from_be_bytes(payload[1..5].try_into().unwrap());
    (payload[0] as usize, n)
}

const FRAMES: u32 = 400;
const SIZE: usize = 30_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_from_concurrent_senders_arrive_whole_and_in_each_senders_order() {
    let (outlet, mut client, _read) = connected(2 * FRAMES as usize).await;
    // 24 MB to a client that reads as they come: the socket's buffers fill and drain,
    // writes end part way, and senders meet the writer at every stage.
    let reading = tokio::spawn(async move {
        let mut next = [0u32; 2];
        while next != [FRAMES, FRAMES] {
            let (opcode, payload) = next_frame(&mut client).await;
            assert_eq!(opcode, OpCode::Binary);
            let (sender, n) = number(&payload);
            assert_eq!(n, next[sender], "sender {sender}'s frames out of order");
            assert_eq!(payload.len(), SIZE + n as usize);
            next[sender] += 1;
        }
    });
    let senders: Vec<_> = (0..2u8)
        .map(|sender| {
            let outlet = outlet.clone();
            tokio::spawn(async move {
                for n in 0..FRAMES {
                    outlet
                        .try_send(numbered(sender, n, SIZE + n as usize))
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    reading.await.unwrap();
}

#[tokio::test]
async fn frames_sent_together_to_an_idle_connection_take_one_write() {
    let (outlet, mut client, _read) = connected(16).await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        outlet
            .try_send_all((0..3).map(|n| numbered(0, n, 10)))
            .unwrap();
        outlet.try_send(numbered(0, 3, 10)).unwrap();
    });
    for n in 0..4 {
        assert_eq!(number(&next_frame(&mut client).await.1), (0, n));
    }
    let text = handle.render();
    let writes = text
        .lines()
        .find_map(|line| line.strip_prefix(m::SOCKET_WRITES)?.strip_prefix(' '));
    assert_eq!(writes, Some("2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_for_a_slow_peer_follows_the_last_whole_frame() {
    let (outlet, mut client, _read) = connected(FRAMES as usize).await;
    for n in 0..FRAMES {
        outlet.try_send(numbered(0, n, SIZE)).unwrap();
    }
    outlet.too_slow();
    let mut next = 0;
    let code = loop {
        let (opcode, payload) = next_frame(&mut client).await;
        if opcode == OpCode::Close {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
        assert_eq!((opcode, number(&payload)), (OpCode::Binary, (0, next)));
        assert_eq!(payload.len(), SIZE);
        next += 1;
    };
    assert_eq!(code, 1013);
    outlet.ended().await;
    assert_eq!(outlet.try_send(Outbound::Ping), Err(TrySendError::Closed));
    // Nothing follows the close, and the peer is told so at once (this test still
    // holds the socket, as rooms may for a while).
    let after = tokio::time::timeout(Duration::from_secs(5), client.read_frame()).await;
    assert!(after.expect("end of stream after the close").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_once_the_connection_is_given_up() {
    let (outlet, _client, _read) = connected(FRAMES as usize).await;
    // The client never reads: the writer waits for the socket mid-frame.
    for n in 0..FRAMES {
        outlet.try_send(numbered(0, n, SIZE)).unwrap();
    }
    outlet.end();
    outlet.abandon();
    // A room that still holds the member asks for a close: no writer may start (its
    // close frame would follow a frame written in part).
    outlet.too_slow();
    assert!(
        outlet.0.lock().writer.is_none(),
        "a writer started after giving up"
    );
    assert_eq!(outlet.try_send(Outbound::Ping), Err(TrySendError::Closed));
    outlet.ended().await;
}
