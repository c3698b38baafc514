//! Group commit: sends from many connections at once are appended in batches (one script
//! call for what queued on a shard meanwhile), and each still gets its own seq, offset and
//! ack, retries their first ack, and everyone hears every message once, in offset order.
//! (Alone in its binary: it reads the process's metrics.)

use std::collections::BTreeSet;

use serde_json::{Value, json};
use teamchat_gateway::Gateway;
use teamchat_testkit::{Client, TestEnv, http_get};

const CLIENTS: usize = 8;
const MESSAGES: usize = 25;
/// Every fifth message is sent a second time with the same client_id.
const REPEATS: usize = MESSAGES / 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_are_batched_and_each_acked_once_in_order() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let token = env.token(&format!("u{c}"), &["t"]);
        let mut client = Client::connect(gateway.addr(), &token).await;
        client.join("t").await;
        clients.push(client);
    }
    // Every client writes all its sends at once, then reads.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            tokio::spawn(async move {
                for n in 0..MESSAGES {
                    let send = json!({"type": "message:send", "team": "t",
                        "client_id": format!("c{n}"), "body": format!("u{c} {n}")});
                    client.send(send.clone()).await;
                    if n % 5 == 4 {
                        client.send(send).await;
                    }
                }
                let mut acks: Vec<Value> = Vec::new();
                let mut heard: Vec<u64> = Vec::new();
                let others = (CLIENTS - 1) * MESSAGES;
                while acks.len() < MESSAGES + REPEATS || heard.len() < others {
                    let frame = client.until_any(&["message:ack", "message:new"]).await;
                    match frame["type"].as_str() {
                        Some("message:ack") => acks.push(frame),
                        _ => heard.push(offset(&frame)),
                    }
                }
                (c, acks, heard)
            })
        })
        .collect();

    let mut own_offsets = BTreeSet::new();
    let mut seqs = BTreeSet::new();
    let mut heard_by = Vec::new();
    for task in tasks {
        let (c, acks, heard) = task.await.unwrap();
        // Acks come in the order the sends were made: a repeat right after its first.
        let mut acks = acks.into_iter();
        for n in 0..MESSAGES {
            let ack = acks.next().unwrap();
            assert_eq!(ack["client_id"], format!("c{n}"), "client {c}");
            if n % 5 == 4 {
                let again = acks.next().unwrap();
                assert_eq!(again, ack, "a repeat gets the first ack");
            }
            assert!(own_offsets.insert(offset(&ack)), "offset given twice");
            assert!(seqs.insert(ack["seq"].as_u64().unwrap()), "seq given twice");
        }
        assert!(
            heard.windows(2).all(|w| w[0] < w[1]),
            "client {c} heard out of order"
        );
        heard_by.push(heard);
    }
    let all = (CLIENTS * MESSAGES) as u64;
    assert_eq!(seqs, (1..=all).collect::<BTreeSet<_>>());
    assert_eq!(own_offsets, (1..=all).collect::<BTreeSet<_>>());
    // Each client heard every message but its own, once.
    for heard in heard_by {
        let heard: BTreeSet<u64> = heard.into_iter().collect();
        assert_eq!(heard.len(), (CLIENTS - 1) * MESSAGES);
        assert!(heard.is_subset(&own_offsets));
    }

    // Some calls carried more than one event (the sends raced each other).
    let (_, metrics) = http_get(gateway.addr(), "/metrics", &[]).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let sum = series(&metrics, "teamchat_gateway_append_batch_events_sum");
    let calls = series(&metrics, "teamchat_gateway_append_batch_events_count");
    // The repeats are answered by the script too: every send is one event of a call.
    assert_eq!(sum, (CLIENTS * (MESSAGES + REPEATS)) as f64);
    assert!(calls < sum, "{calls} calls for {sum} events: no batch");
    println!("{sum} events in {calls} append calls");
}

fn offset(frame: &Value) -> u64 {
    frame["offset"].as_str().unwrap().parse().unwrap()
}

fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
}
