//! TLS on the gateway (`TLS_CERT_FILE`, `TLS_KEY_FILE`): wss:// clients chat and read
//! history over https://; plain HTTP on the TLS port is answered 400; a silent or stalled
//! handshake is dropped; a renewed certificate is served without a restart (a broken one
//! refused); the HTTP fallback works behind TLS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use teamchat_testkit::client::{Auth, open};
use teamchat_testkit::tls::{TestCa, connect, https, presented, split_answer};
use teamchat_testkit::{Client, TestEnv, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_gateway(env: &TestEnv, ca: &TestCa, extra: &[&str]) -> teamchat_gateway::Gateway {
    let cert = format!("--tls-cert-file={}", ca.server_cert().display());
    let key = format!("--tls-key-file={}", ca.server_key().display());
    let mut flags = vec![cert.as_str(), key.as_str()];
    flags.extend(extra);
    common::gateway(env, &flags).await
}

/// A raw request on a plain TCP connection: the whole answer.
async fn plain_request(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway ends the connection")
        .expect("no reset: the answer is read whole");
    split_answer(&answer)
}

/// The value of a metric series on a TLS gateway's `/metrics`.
async fn metric_at(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, series: &str) -> f64 {
    let (_, _, page) = https(addr, tls, "GET /metrics HTTP/1.1").await;
    metric(&page, series)
}

/// The value of a metric series in a `/metrics` page (0 when absent).
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_chat_and_read_history_over_https() {
    let env = TestEnv::new().await;
    let ca = TestCa::new();
    let g = tls_gateway(&env, &ca, &[]).await;
    let addr = g.addr();
    let stop = common::worker(&env, "w1");
    let tls = ca.client_config();
    let mut alice = Client::connect_tls(g.addr(), tls.clone(), &env.token("alice", &["t"])).await;
    let mut bob = Client::connect_tls(g.addr(), tls.clone(), &env.token("bob", &["t"])).await;
    alice.join("t").await;
    bob.join("t").await;

    // A message larger than a TLS record (16 KiB with its frame), then a burst sent while
    // bob does not read: records split over writes, and ciphertext the socket did not take
    // at once, all arrive whole and in order.
    let big = "é".repeat(8_000);
    let ack = alice.send_message("t", "big", &big).await;
    let burst = 300;
    for n in 0..burst {
        alice
            .send(json!({"type": "message:send", "team": "t", "client_id": format!("m{n}"), "body": format!("{n} {}", "x".repeat(2_000))}))
            .await;
    }
    let first = bob.expect("message:new").await;
    assert_eq!(first["body"], big.as_str());
    assert_eq!(first["seq"], ack["seq"]);
    for n in 0..burst {
        let frame = bob.expect("message:new").await;
        let body = frame["body"].as_str().unwrap();
        assert!(
            body.starts_with(&format!("{n} ")),
            "message {n} out of order: {body:.12}"
        );
    }

    // History over https, once the worker synced the burst.
    let mut last_offset = 0;
    for _ in 0..burst {
        let ack = alice.expect("message:ack").await;
        last_offset = ack["offset"].as_str().unwrap().parse().unwrap();
    }
    teamchat_testkit::wait_for_watermark(&env.pg().await, "t", last_offset).await;
    let token = env.token("bob", &["t"]);
    let request =
        format!("GET /v1/teams/t/messages?limit=2 HTTP/1.1\r\nAuthorization: Bearer {token}");
    let (status, _, body) = https(addr, tls.clone(), &request).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    // Newest first.
    let newest = page["messages"][0]["body"].as_str().unwrap();
    assert!(
        newest.starts_with(&format!("{} ", burst - 1)),
        "{newest:.12}"
    );
    let older = page["messages"][1]["body"].as_str().unwrap();
    assert!(older.starts_with(&format!("{} ", burst - 2)), "{older:.12}");

    // A client that does not trust the gateway's CA is refused in the handshake.
    let stranger = TestCa::new();
    assert!(connect(g.addr(), stranger.client_config()).await.is_err());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_answered_400() {
    let env = TestEnv::new().await;
    let ca = TestCa::new();
    let api_key = "k".repeat(40);
    let keys = format!("--api-keys={api_key}");
    let g = tls_gateway(&env, &ca, &["--api-listen=127.0.0.1:0", &keys]).await;
    for addr in [g.addr(), g.api_addr().unwrap()] {
        let (status, _, body) =
            plain_request(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 400);
        assert!(body.contains("https://"), "{body}");
    }
    // A ws:// client gets the same answer, not a hang.
    let refused = open(g.addr(), Auth::Query(&env.token("u", &["t"])), None).await;
    match refused {
        Err(teamchat_testkit::tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("a plain upgrade on the TLS port: {other:?}"),
    }
    // The server API speaks TLS too.
    let request =
        format!("GET /v1/server/teams/t/presence HTTP/1.1\r\nAuthorization: Bearer {api_key}");
    let (status, _, body) = https(g.api_addr().unwrap(), ca.client_config(), &request).await;
    assert_eq!(status, 200, "{body}");
    // Counted once each refusal is over (the client's end of stream read).
    let series = "teamchat_gateway_tls_handshake_failures_total{reason=\"plain_http\"}";
    let tls = ca.client_config();
    let addr = g.addr();
    eventually(Duration::from_secs(10), "the refusals counted", || {
        let tls = tls.clone();
        async move { (metric_at(addr, tls, series).await >= 3.0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_handshakes_are_dropped() {
    let env = TestEnv::new().await;
    let ca = TestCa::new();
    let g = tls_gateway(&env, &ca, &["--header-timeout-ms=1000"]).await;
    // Nothing sent; half a ClientHello sent.
    let mut silent = TcpStream::connect(g.addr()).await.unwrap();
    let mut stalled = TcpStream::connect(g.addr()).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    for stream in [&mut silent, &mut stalled] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the gateway drops the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // Others are served after.
    let tls = ca.client_config();
    let mut client = Client::connect_tls(g.addr(), tls, &env.token("u", &["t"])).await;
    client.join("t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let env = TestEnv::new().await;
    let ca = TestCa::new();
    let g = tls_gateway(&env, &ca, &[]).await;
    let addr = g.addr();
    let tls = ca.client_config();
    let before = ca.server_cert_der();
    let first = connect(g.addr(), tls.clone()).await.unwrap();
    assert_eq!(presented(&first), before);
    let mut alice = Client::connect_tls(g.addr(), tls.clone(), &env.token("alice", &["t"])).await;
    alice.join("t").await;

    ca.renew();
    let renewed = ca.server_cert_der();
    assert_ne!(renewed, before);
    eventually(Duration::from_secs(20), "the renewed certificate", || {
        let tls = tls.clone();
        let renewed = renewed.clone();
        async move { (presented(&connect(addr, tls).await.ok()?) == renewed).then_some(()) }
    })
    .await;
    // The connection opened before goes on.
    alice.send_message("t", "after-renewal", "still here").await;

    let loaded = "teamchat_gateway_tls_reloads_total{result=\"loaded\"}";
    let refused = "teamchat_gateway_tls_reloads_total{result=\"refused\"}";
    assert!(metric_at(addr, tls.clone(), loaded).await >= 1.0);

    // A broken certificate file is refused; the renewed one is kept. (The renewal itself
    // may have been refused once, seen between its two renames: counted from here.)
    let refused_before = metric_at(addr, tls.clone(), refused).await;
    std::fs::write(ca.server_cert(), "not a certificate").unwrap();
    eventually(Duration::from_secs(20), "the refusal", || {
        let tls = tls.clone();
        async move { (metric_at(addr, tls, refused).await > refused_before).then_some(()) }
    })
    .await;
    let latest = connect(g.addr(), tls.clone()).await.unwrap();
    assert_eq!(presented(&latest), renewed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_fallback_works_behind_tls() {
    let env = TestEnv::new().await;
    let ca = TestCa::new();
    let g = tls_gateway(&env, &ca, &[]).await;
    let tls = ca.client_config();
    let mut alice = Client::connect_tls(g.addr(), tls.clone(), &env.token("alice", &["t"])).await;
    alice.join("t").await;
    let token = env.token("bob", &["t"]);
    let request = format!(
        "POST /v1/poll/open?teams=t HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 0"
    );
    let (status, _, body) = https(g.addr(), tls.clone(), &request).await;
    assert_eq!(status, 200, "{body}");
    let opened: Value = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = opened["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["type"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"session:welcome"), "{kinds:?}");
    // Alice learns that bob came (his HTTP session joined through the loopback bridge).
    loop {
        let frame = alice.recv().await;
        if frame["type"] == "presence:update" && frame["user"] == "bob" {
            assert_eq!(frame["status"], "online");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_code_reaches_a_wss_client() {
    let env = TestEnv::new().await;
    let ca = TestCa::new();
    let g = tls_gateway(&env, &ca, &["--max-frame=1024"]).await;
    let mut client =
        Client::connect_tls(g.addr(), ca.client_config(), &env.token("u", &["t"])).await;
    // A frame over MAX_FRAME, the rest of it still arriving when the gateway closes: the
    // close frame (and the TLS close_notify) are read before the connection ends.
    let oversized = "x".repeat(256 * 1024);
    client.send(json!({"type": "ping", "pad": oversized})).await;
    let (code, _) = client.close_code().await;
    assert_eq!(code, 1009);
}
