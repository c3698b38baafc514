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
    assert!(listed);
    sending.await.unwrap();
    assert_eq!(
        seen,
        (1..=MESSAGES as u64).collect::<Vec<_>>(),
        "no loss, no duplicate"
    );
}
