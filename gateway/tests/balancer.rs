//! Two gateways behind HAProxy, run with the repository's `deploy/haproxy/haproxy.cfg`:
//! clients know the balancer's address only. One gateway drains mid-chat; its clients come
//! back through the balancer, land on the other, resume by offset, and lose nothing and
//! double nothing.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use teamchat_testkit::tokio_tungstenite::tungstenite::Message;
use teamchat_testkit::{Client, TestEnv, eventually, free_port, try_http};

/// HAProxy, stopped when dropped.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn balancer(gateways: [SocketAddr; 2]) -> (Haproxy, SocketAddr) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/haproxy/haproxy.cfg");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f", config])
        .env("HAPROXY_BIND", addr.to_string())
        .env("GATEWAY1", gateways[0].to_string())
        .env("GATEWAY2", gateways[1].to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy runs (scripts/services.sh installs it)");
    let haproxy = Haproxy(child);
    eventually(
        Duration::from_secs(20),
        "the balancer to serve",
        || async move {
            let (status, _, _) = try_http(addr, "GET", "/readyz", &[], Vec::new()).await?;
            (status == 200).then_some(())
        },
    )
    .await;
    (haproxy, addr)
}

/// Reads a team's messages through the balancer until it has `total`, reconnecting (and
/// resuming with `since`) whenever its gateway closes it. Returns the seqs in the order
/// they came, and how many times it was closed 1012.
async fn read_through(
    balancer: SocketAddr,
    token: String,
    total: u64,
    joined: tokio::sync::mpsc::Sender<()>,
) -> (Vec<u64>, usize) {
    let mut seqs: Vec<u64> = Vec::new();
    let mut since: Option<Value> = None;
    let mut drained = 0;
    loop {
        let mut client = Client::connect(balancer, &token).await;
        let mut join = json!({"type": "room:join", "team": "t"});
        if let Some(since) = &since {
            join["since"] = since.clone();
        }
        client.send(join).await;
        let answer = client.expect("room:joined").await;
        if since.is_some() {
            assert_eq!(answer["recovered"], true, "{answer}");
        } else {
            let _ = joined.send(()).await;
        }
        let epoch = answer["epoch"].clone();
        loop {
            let frame = match client.ws.next().await {
                Some(Ok(Message::Text(text))) => serde_json::from_str::<Value>(&text).unwrap(),
                Some(Ok(Message::Close(close))) => {
                    let code = close.map(|c| u16::from(c.code));
                    assert_eq!(code, Some(1012), "only the drain closes a reader");
                    drained += 1;
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("the reader's connection failed: {other:?}"),
            };
            if frame["type"] == "message:new" {
                seqs.push(frame["seq"].as_u64().unwrap());
                since = Some(json!({"epoch": epoch, "offset": frame["offset"]}));
                if seqs.len() as u64 == total {
                    return (seqs, drained);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_drains_behind_the_balancer_and_its_clients_lose_nothing() {
    const READERS: usize = 6;
    const MESSAGES: u64 = 300;
    let env = TestEnv::new().await;
    let (draining, staying) = common::two_gateways(&env).await;
    let (_haproxy, front) = balancer([draining.addr(), staying.addr()]).await;

    let (joined, mut all_joined) = tokio::sync::mpsc::channel(READERS);
    let readers: Vec<_> = (0..READERS)
        .map(|n| {
            let token = env.token(&format!("r{n}"), &["t"]);
            tokio::spawn(read_through(front, token, MESSAGES, joined.clone()))
        })
        .collect();
    for _ in 0..READERS {
        all_joined.recv().await.unwrap();
    }
    // The sender is on the gateway that stays, by its own address.
    let mut sender = Client::connect(staying.addr(), &env.token("s", &["t"])).await;
    sender.join("t").await;
    let (halfway, mut reached) = tokio::sync::oneshot::channel();
    let sending = tokio::spawn(async move {
        let mut halfway = Some(halfway);
        for n in 0..MESSAGES {
            sender
                .send_message("t", &format!("m{n}"), "through the balancer")
                .await;
            if n == MESSAGES / 3 {
                let _ = halfway.take().unwrap().send(());
            }
        }
    });
    (&mut reached).await.unwrap();
    draining.stop().await;
    sending.await.unwrap();

    let expected: Vec<u64> = (1..=MESSAGES).collect();
    let mut drained = 0;
    for reader in readers {
        let (seqs, closes) = reader.await.unwrap();
        assert_eq!(seqs, expected, "every message once, in order");
        drained += closes;
    }
    // leastconn spread the readers over both gateways: some were drained and came back.
    assert!(drained > 0, "no reader was on the draining gateway");
}
