//! Messages cross gateways through Redis, in one order for everyone, each once.

mod common;

use std::collections::HashMap;

use serde_json::{Value, json};
use teamchat_testkit::{Client, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_reaches_a_client_on_another_gateway_and_not_its_sender() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut a = Client::connect(g1.addr(), &env.token("alice", &["acme"])).await;
    let mut b = Client::connect(g2.addr(), &env.token("bob", &["acme"])).await;
    let joined = a.join("acme").await;
    assert_eq!(joined["offset"], "0");
    assert_eq!(joined["seq"], 0);
    b.join("acme").await;

    a.send(json!({"type":"message:send","rid":"r1","team":"acme","client_id":"c1","body":"hello","meta":{"k":[1,2]}}))
        .await;
    let ack = a.expect("message:ack").await;
    assert_eq!(ack["rid"], "r1");
    assert_eq!(ack["client_id"], "c1");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["offset"], "1");

    let new = b.expect("message:new").await;
    for field in ["seq", "id", "offset", "client_id", "ts", "team"] {
        assert_eq!(new[field], ack[field], "field {field}");
    }
    assert_eq!(new["user"], "alice");
    assert_eq!(new["name"], "alice name");
    assert_eq!(new["body"], "hello");
    assert_eq!(new["meta"], json!({"k":[1,2]}));
    assert!(new.get("rid").is_none());

    // Events reach a connection in offset order: had alice's own message come back to her,
    // it would arrive before bob's reply.
    let reply = b.send_message("acme", "c2", "hi alice").await;
    let next = a.expect("message:new").await;
    assert_eq!(next["offset"], reply["offset"]);
    assert_eq!(next["body"], "hi alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_sees_one_order_without_gaps_or_duplicates() {
    const PER_SENDER: usize = 200;
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let gateways = [g1.addr(), g2.addr(), g1.addr()];
    let mut observers = vec![
        Client::connect(g1.addr(), &env.token("obs1", &["t"])).await,
        Client::connect(g2.addr(), &env.token("obs2", &["t"])).await,
    ];
    for o in &mut observers {
        o.join("t").await;
    }
    let mut senders = Vec::new();
    for (i, addr) in gateways.iter().enumerate() {
        let mut client = Client::connect(*addr, &env.token(&format!("s{i}"), &["t"])).await;
        client.join("t").await;
        senders.push(client);
    }
    // The three senders send concurrently; each reads its acks and the others' messages.
    let total = PER_SENDER * senders.len();
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                for n in 0..PER_SENDER {
                    client
                        .send(json!({"type":"message:send","team":"t","client_id":format!("{i}-{n}"),"body":format!("{i}:{n}")}))
                        .await;
                }
                let mut seen = Vec::new();
                let mut acks = 0;
                while seen.len() + acks < total {
                    let frame = client.recv().await;
                    match frame["type"].as_str() {
                        Some("message:ack") => acks += 1,
                        Some("message:new") => seen.push(frame),
                        Some("presence:update") => {}
                        _ => panic!("unexpected {frame}"),
                    }
                }
                assert_eq!(acks, PER_SENDER);
                seen
            })
        })
        .collect();

    let mut observed = Vec::new();
    for o in &mut observers {
        let mut frames = Vec::new();
        for _ in 0..total {
            frames.push(o.expect("message:new").await);
        }
        observed.push(frames);
    }
    // Observers see all offsets 1..=total, in order, and agree on each message.
    for frames in &observed {
        let offsets: Vec<u64> = frames
            .iter()
            .map(|f| f["offset"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>());
        let seqs: Vec<u64> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    }
    let by_offset = |frames: &[Value]| -> HashMap<String, (String, u64)> {
        frames
            .iter()
            .map(|f| {
                (
                    f["offset"].as_str().unwrap().to_owned(),
                    (
                        f["client_id"].as_str().unwrap().to_owned(),
                        f["seq"].as_u64().unwrap(),
                    ),
                )
            })
            .collect()
    };
    let reference = by_offset(&observed[0]);
    assert_eq!(reference, by_offset(&observed[1]));
    // Per sender, its own messages are in the order it sent them.
    for i in 0..3 {
        let own: Vec<String> = observed[0]
            .iter()
            .filter(|f| f["user"] == format!("s{i}"))
            .map(|f| f["client_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            own,
            (0..PER_SENDER)
                .map(|n| format!("{i}-{n}"))
                .collect::<Vec<_>>()
        );
    }
    // Senders see everyone else's messages, in the same order, and never their own.
    for (i, task) in tasks.into_iter().enumerate() {
        let seen = task.await.unwrap();
        assert_eq!(seen.len(), total - PER_SENDER);
        let mut last = 0;
        for frame in &seen {
            assert_ne!(frame["user"], format!("s{i}"));
            let offset: u64 = frame["offset"].as_str().unwrap().parse().unwrap();
            assert!(offset > last, "offsets must increase");
            last = offset;
            let (client_id, seq) = &reference[frame["offset"].as_str().unwrap()];
            assert_eq!(
                (
                    frame["client_id"].as_str().unwrap(),
                    frame["seq"].as_u64().unwrap()
                ),
                (client_id.as_str(), *seq)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_and_json_clients_understand_each_other() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut json_client = Client::connect(g1.addr(), &env.token("j", &["mix"])).await;
    let mut pack_client = Client::connect_msgpack(g2.addr(), &env.token("p", &["mix"])).await;
    assert_eq!(pack_client.welcome["user"], "p");
    json_client.join("mix").await;
    let joined = pack_client.join("mix").await;
    assert!(joined["epoch"].is_string());

    pack_client
        .send(json!({"type":"message:send","team":"mix","client_id":"p1","body":"from msgpack ✓","meta":{"n":1.5}}))
        .await;
    let ack = pack_client.expect("message:ack").await;
    let got = json_client.expect("message:new").await;
    assert_eq!(got["body"], "from msgpack ✓");
    assert_eq!(got["meta"], json!({"n":1.5}));
    assert_eq!(got["id"], ack["id"]);

    let ack = json_client.send_message("mix", "j1", "from json").await;
    let got = pack_client.expect("message:new").await;
    assert_eq!(got["body"], "from json");
    assert_eq!(got["seq"], ack["seq"]);
    assert_eq!(got["offset"], ack["offset"]);
}
