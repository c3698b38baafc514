//! Rate limits are hit with `rate_limited` + `retry_after_ms`, change nothing, and release.

mod common;

use std::time::Duration;

use serde_json::json;
use teamchat_testkit::{Client, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_the_limit_are_refused_until_the_budget_refills() {
    let env = TestEnv::new().await;
    // 240/min with bursts of 60: a refill every 250 ms.
    let g = common::gateway(&env, &["--rate-send-per-min=240"]).await;
    let mut c = Client::connect(g.addr(), &env.token("u1", &["t"])).await;
    c.join("t").await;
    for n in 0..60 {
        c.send_message("t", &format!("c{n}"), "b").await;
    }
    c.send(json!({"type":"message:send","team":"t","client_id":"over","body":"b","rid":"r"}))
        .await;
    let error = c.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["rid"].as_str()),
        (Some("rate_limited"), Some("r"))
    );
    let retry = error["retry_after_ms"].as_u64().unwrap();
    assert!((1..=250).contains(&retry), "retry_after_ms {retry}");

    // After waiting as told, the same request goes through, and the refused one left no trace.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    let ack = c.send_message("t", "over", "b").await;
    assert_eq!(ack["seq"], 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_typing_have_budgets_of_their_own() {
    let env = TestEnv::new().await;
    let g = common::gateway(
        &env,
        &[
            "--rate-join-per-min=8",
            "--rate-typing-per-min=4",
            "--max-rooms=10",
        ],
    )
    .await;
    let teams = ["a", "b", "c"];
    let mut c = Client::connect(g.addr(), &env.token("u1", &teams)).await;
    c.join("a").await;
    c.join("b").await;
    c.send(json!({"type":"room:join","team":"c"})).await;
    let error = c.expect("room:error").await;
    assert_eq!(
        (error["code"].as_str(), error["team"].as_str()),
        (Some("rate_limited"), Some("c"))
    );
    assert!(error["retry_after_ms"].as_u64().unwrap() > 0);

    c.send(json!({"type":"typing:start","team":"a"})).await;
    c.send(json!({"type":"typing:start","team":"a"})).await;
    assert_eq!(c.expect("error").await["code"], "rate_limited");
    // Messages are not limited by the other budgets.
    c.send_message("a", "m", "still fine").await;
}

/// A user's receipts share a budget across their connections: past it they wait (and
/// coalesce) instead of each connection writing one a second to every member; none is
/// lost, and what waits is written when the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_over_the_users_budget_wait_and_are_not_lost() {
    let env = TestEnv::new().await;
    // 4 a minute, bursts of one: the second waits 15 s.
    let g = common::gateway(&env, &["--rate-receipt-per-min=4"]).await;
    let mut writer = Client::connect(g.addr(), &env.token("writer", &["t"])).await;
    writer.join("t").await;
    for n in 1..=3 {
        writer.send_message("t", &format!("m{n}"), "b").await;
    }
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut reader = Client::connect(g.addr(), &env.token("reader", &["t"])).await;
        reader.join("t").await;
        readers.push(reader);
    }
    readers[0]
        .send(json!({"type":"receipt:update","team":"t","seq":1}))
        .await;
    assert_eq!(writer.expect("receipt:update").await["seq"], 1);
    for (n, reader) in readers.iter_mut().enumerate().skip(1) {
        reader
            .send(json!({"type":"receipt:update","team":"t","seq":n + 1}))
            .await;
    }
    // The next frame the writer gets is the marker message, not the two receipts over
    // the budget.
    let marker = readers[0].send_message("t", "marker", "b").await;
    assert_eq!(
        writer.expect("message:new").await["offset"],
        marker["offset"]
    );
    // Closing flushes what waits: the highest receipt is written.
    drop(readers);
    loop {
        let update = writer.expect("receipt:update").await;
        if update["seq"] == 3 {
            break;
        }
    }
}
