//! A stranger cannot tie up a gateway: connections that never finish a request head, or
//! idle between requests, are dropped after `HEADER_TIMEOUT_MS`, and past
//! `MAX_CONNECTIONS` new connections are refused at once, while clients that behave keep
//! connecting and chatting.

mod common;

use std::time::Duration;

use teamchat_testkit::{Client, TestEnv, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than the timeouts the tests set: a connection still open then is held.
const HELD: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection; what it sent first. Fails if the
/// connection is still open after `HELD`.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(HELD, stream.read(&mut buffer)).await {
            Err(_) => panic!("the connection is still open after {HELD:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return received,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Two members exchange a message, as every client does meanwhile.
async fn chat(env: &TestEnv, addr: std::net::SocketAddr, n: usize) {
    let mut a = Client::connect(addr, &env.token(&format!("a{n}"), &["t"])).await;
    let mut b = Client::connect(addr, &env.token(&format!("b{n}"), &["t"])).await;
    a.join("t").await;
    b.join("t").await;
    a.send_message("t", &format!("c{n}"), "hi").await;
    assert_eq!(b.expect("message:new").await["body"], "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_dropped_while_others_keep_chatting() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--header-timeout-ms=1000"]).await;
    let mut lorises = Vec::new();
    for _ in 0..1_000 {
        let mut stream = TcpStream::connect(g.addr()).await.unwrap();
        stream
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        lorises.push(stream);
    }
    // Connecting and chatting goes on while they hang.
    for n in 0..3 {
        chat(&env, g.addr(), n).await;
    }
    for stream in &mut lorises {
        let answer = until_closed(stream).await;
        // hyper answers 408 or just closes; never an upgrade.
        assert!(!answer.starts_with(b"HTTP/1.1 101"));
    }
    chat(&env, g.addr(), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_dropped() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--header-timeout-ms=500"]).await;
    let mut stream = TcpStream::connect(g.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_are_refused_at_once() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--max-connections=2"]).await;
    let first = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    let _second = Client::connect(g.addr(), &env.token("u2", &["t"])).await;

    let mut third = TcpStream::connect(g.addr()).await.unwrap();
    let answer = until_closed(&mut third).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A connection that goes gives its place back.
    drop(first);
    eventually(Duration::from_secs(10), "a place is free again", || async {
        let mut stream = TcpStream::connect(g.addr()).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let answer = until_closed(&mut stream).await;
        answer.starts_with(b"HTTP/1.1 200").then_some(())
    })
    .await;
    // (The /healthz connection may still hold its place a moment after its answer: the
    // metrics request is retried until it gets one.)
    eventually(Duration::from_secs(10), "the refusal counted", || async {
        let (status, metrics) = teamchat_testkit::try_http_get(g.addr(), "/metrics", &[]).await?;
        let counted = metrics
            .as_str()
            .is_some_and(|m| m.contains("teamchat_gateway_connections_refused_total"));
        (status == 200 && counted).then_some(())
    })
    .await;
}
