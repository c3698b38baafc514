//! A reader that cannot keep up is closed with 1013 while the others keep receiving in
//! order; a draining gateway closes with 1012 and its clients resume elsewhere.

mod common;

use serde_json::{Value, json};
use teamchat_testkit::client::{self};
use teamchat_testkit::{Client, TestEnv};

fn offset(frame: &Value) -> u64 {
    frame["offset"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_1013_and_the_others_keep_receiving() {
    const MESSAGES: usize = 300;
    let env = TestEnv::new().await;
    let g = common::gateway(
        &env,
        &["--send-queue=8", "--max-body=65536", "--max-frame=200000"],
    )
    .await;
    // The slow reader joins, then reads nothing while ~19 MB are sent to it.
    let mut slow = client::open_raw(g.addr(), &env.token("slow", &["t"])).await;
    client::raw_send_text(&mut slow, r#"{"type":"room:join","team":"t"}"#).await;
    let mut fast = Client::connect(g.addr(), &env.token("fast", &["t"])).await;
    fast.join("t").await;
    let mut sender = Client::connect(g.addr(), &env.token("sender", &["t"])).await;
    sender.join("t").await;
    let body = "x".repeat(64_000);
    let sending = tokio::spawn(async move {
        for n in 0..MESSAGES {
            sender.send_message("t", &format!("m{n}"), &body).await;
        }
    });
    for n in 1..=MESSAGES as u64 {
        assert_eq!(offset(&fast.expect("message:new").await), n);
    }
    sending.await.unwrap();
    // The slow reader got an unbroken prefix of the events, then 1013.
    let (code, frames) = client::raw_frames_until_close(&mut slow).await;
    assert_eq!(code, 1013);
    let events: Vec<u64> = frames
        .iter()
        .filter(|f| f["type"] == "message:new")
        .map(offset)
        .collect();
    assert!(events.len() < MESSAGES, "it could not have kept up");
    assert_eq!(events, (1..=events.len() as u64).collect::<Vec<_>>());
}

/// A gateway with `flags`, a raw member of team `t` that reads nothing, and `messages`
/// of 64 KB sent to the team (each acked) by another member.
async fn flood_a_reader_that_does_not_read(
    env: &TestEnv,
    flags: &[&str],
    messages: usize,
) -> (teamchat_gateway::Gateway, tokio::net::TcpStream) {
    let mut flags = flags.to_vec();
    flags.extend(["--max-body=65536", "--max-frame=200000"]);
    let g = common::gateway(env, &flags).await;
    let mut slow = client::open_raw(g.addr(), &env.token("slow", &["t"])).await;
    client::raw_send_text(&mut slow, r#"{"type":"room:join","team":"t"}"#).await;
    let mut sender = Client::connect(g.addr(), &env.token("sender", &["t"])).await;
    sender.join("t").await;
    let body = "x".repeat(64_000);
    for n in 0..messages {
        sender.send_message("t", &format!("m{n}"), &body).await;
    }
    (g, slow)
}

/// The send queue is bounded in bytes too: a few large frames (here messages of 64 KB,
/// far fewer than `SEND_QUEUE`) for a reader that does not read close it 1013 once they
/// pass `SEND_QUEUE_BYTES`, instead of being held for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_1013_once_its_queue_passes_its_bytes() {
    const MESSAGES: usize = 300;
    let env = TestEnv::new().await;
    let flags = ["--send-queue=1024", "--send-queue-bytes=1048576"];
    let (_g, mut slow) = flood_a_reader_that_does_not_read(&env, &flags, MESSAGES).await;
    let (code, frames) = client::raw_frames_until_close(&mut slow).await;
    assert_eq!(code, 1013);
    let events = frames.iter().filter(|f| f["type"] == "message:new").count();
    assert!(events < MESSAGES, "closed before all of it: {events}");
}

/// A socket that takes no bytes for `WRITE_TIMEOUT_MS` while some wait is given up, even
/// with its queue within bounds: what is queued for it is not held indefinitely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_takes_nothing_is_given_up_after_the_write_timeout() {
    use redis::AsyncCommands;
    const MESSAGES: usize = 200;
    let env = TestEnv::new().await;
    // 12.8 MB: more than the sockets' buffers hold, less than the queue's bounds.
    let flags = ["--write-timeout-ms=300"];
    let (_g, mut slow) = flood_a_reader_that_does_not_read(&env, &flags, MESSAGES).await;
    // Given up, the session ends: its connection is no longer counted.
    let redis = env.redis().await;
    let connections = env.keys().user_connections("slow");
    teamchat_testkit::eventually(
        std::time::Duration::from_secs(10),
        "the stalled connection given up",
        || {
            let (mut redis, key) = (redis.clone(), connections.clone());
            async move {
                let open: u64 = redis.zcard(key).await.ok()?;
                (open == 0).then_some(())
            }
        },
    )
    .await;
    // What the socket buffers held is there, then the connection ends.
    let mut received = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0; 1 << 16];
        while let Ok(n) = slow.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the connection ended");
    assert!(
        received.len() < MESSAGES * 64_000,
        "not everything was written: {} bytes",
        received.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_closes_1012_and_clients_resume_on_another() {
    const MESSAGES: usize = 400;
    let env = TestEnv::new().await;
    let draining = common::gateway(&env, &[]).await;
    let other = common::gateway(&env, &[]).await;
    let mut reader = Client::connect(draining.addr(), &env.token("reader", &["t"])).await;
    let epoch = reader.join("t").await["epoch"].as_str().unwrap().to_owned();
    let mut sender = Client::connect(other.addr(), &env.token("sender", &["t"])).await;
    sender.join("t").await;
    let sending = tokio::spawn(async move {
        for n in 0..MESSAGES {
            sender.send_message("t", &format!("m{n}"), "b").await;
        }
    });

    // Read a while, then drain the reader's gateway mid-stream.
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.push(offset(&reader.expect("message:new").await));
    }
    let stopping = tokio::spawn(draining.stop());
    let (code, frames) = reader.close_code().await;
    assert_eq!(code, 1012);
    seen.extend(
        frames
            .iter()
            .filter(|f| f["type"] == "message:new")
            .map(offset),
    );
    stopping.await.unwrap();

    // Resume on the other gateway from the last offset seen.
    let mut reader = Client::connect(other.addr(), &env.token("reader", &["t"])).await;
    let last = *seen.last().unwrap();
    reader
        .send(json!({"type":"room:join","team":"t","since":{"offset":last.to_string(),"epoch":epoch}}))
        .await;
    assert_eq!(reader.expect("room:joined").await["recovered"], true);
    // The missed events come first, then the presence list, then live events.
    let mut listed = false;
    while seen.len() < MESSAGES {
        let frame = reader.recv().await;
        match frame["type"].as_str() {
            Some("message:new") => seen.push(offset(&frame)),
            Some("presence:list") if !listed => listed = true,
            Some("receipt:list") if listed => {}
            Some("presence:update") => {}
            _ => panic!("unexpected {frame}"),
        }
    }
    // All of them may have been missed (the drain waits for the client's close, up to
    // 2 s): the presence list then follows the last.
    if !listed {
        reader.expect("presence:list").await;
    }
    sending.await.unwrap();
    assert_eq!(
        seen,
        (1..=MESSAGES as u64).collect::<Vec<_>>(),
        "no loss, no duplicate"
    );
}

/// A draining gateway answers `/readyz` 503 at once, even over a connection a balancer
/// kept alive from before (new connections are not accepted any more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_is_not_ready() {
    use http_body_util::{BodyExt, Full};
    let env = TestEnv::new().await;
    let gateway = common::gateway(&env, &["--drain-grace-ms=5000"]).await;
    let addr = gateway.addr();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut balancer, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // The same kept-alive connection for every probe, as a balancer's health check
    // would use; wait for it to be ready again before the next request.
    let mut ready = async || {
        balancer.ready().await.unwrap();
        let req = hyper::Request::builder()
            .uri("/readyz")
            .header("host", addr.to_string())
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = balancer.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(ready().await.0, 200);
    // A client that does not answer the close keeps the drain going for a while.
    let _stuck = client::open_raw(addr, &env.token("u", &["t"])).await;
    let stopping = tokio::spawn(gateway.stop());
    let draining = loop {
        let (status, body) = ready().await;
        if status == 503 {
            break body;
        }
        assert!(
            !stopping.is_finished(),
            "the drain ended before /readyz said so"
        );
    };
    assert_eq!(draining, json!({"draining": true}));
    stopping.await.unwrap();
}
