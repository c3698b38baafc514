//! End-to-end latency between two gateways: user A on the first sends, user B on the second
//! receives; one message in flight at a time. Prints the median and tail in microseconds.
//!
//! Against a stack whose send rate limit allows it (`RATE_SEND_PER_MIN=100000000 scripts/run`):
//! `JWT_SECRET=… cargo run --release -p teamchat-testkit --example e2e_latency -- 127.0.0.1:8080 127.0.0.1:8081 [count]`

use std::time::Instant;

use serde_json::json;
use teamchat_testkit::{Client, now, sign_with};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gateway_a = args
        .get(1)
        .map_or("127.0.0.1:8080", String::as_str)
        .parse()
        .unwrap();
    let gateway_b = args
        .get(2)
        .map_or("127.0.0.1:8081", String::as_str)
        .parse()
        .unwrap();
    let count: usize = args.get(3).map_or(5_000, |n| n.parse().unwrap());
    let secret = std::env::var("JWT_SECRET").unwrap_or_else(|_| "dev-secret-change-me".into());
    let team = format!("latency{}", now());
    let token = |user: &str| {
        sign_with(
            &json!({"sub": user, "teams": [team], "exp": now() + 3600}),
            &secret,
        )
    };

    let mut a = Client::connect(gateway_a, &token("a")).await;
    let mut b = Client::connect(gateway_b, &token("b")).await;
    a.join(&team).await;
    b.join(&team).await;
    let mut micros = Vec::with_capacity(count);
    for n in 0..count {
        let sent = Instant::now();
        a.send(
            json!({"type":"message:send","team":team,"client_id":format!("m{n}"),"body":"ping"}),
        )
        .await;
        b.expect("message:new").await;
        micros.push(sent.elapsed().as_micros() as u64);
        a.expect("message:ack").await;
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        "{count} messages A→B across two gateways: median {} µs, p90 {} µs, p99 {} µs, max {} µs",
        at(0.5),
        at(0.9),
        at(0.99),
        micros[micros.len() - 1]
    );
}
