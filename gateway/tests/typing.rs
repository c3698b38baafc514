//! Typing crosses gateways to other users' connections and always ends with a stop: sent,
//! timed out, on leave, on disconnect, and when the typist's gateway dies.

mod common;

use serde_json::json;
use teamchat_testkit::{Client, TestEnv};

async fn pair(
    env: &TestEnv,
) -> (
    teamchat_gateway::Gateway,
    teamchat_gateway::Gateway,
    Client,
    Client,
) {
    let (g1, g2) = common::two_gateways(env).await;
    let mut typist = Client::connect(g1.addr(), &env.token("tina", &["t"])).await;
    let mut reader = Client::connect(g2.addr(), &env.token("rob", &["t"])).await;
    typist.join("t").await;
    reader.join("t").await;
    (g1, g2, typist, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_other_users_on_other_gateways_only() {
    let env = TestEnv::new().await;
    let (g1, _g2, mut typist, mut reader) = pair(&env).await;
    let mut typist_elsewhere = Client::connect(g1.addr(), &env.token("tina", &["t"])).await;
    typist_elsewhere.join("t").await;

    typist.send(json!({"type":"typing:start","team":"t"})).await;
    let start = reader.expect("typing:start").await;
    assert_eq!(
        start,
        json!({"type":"typing:start","team":"t","user":"tina"})
    );
    typist.send(json!({"type":"typing:stop","team":"t"})).await;
    assert_eq!(reader.expect("typing:stop").await["user"], "tina");

    // Neither the typist's own connections got anything: the next frame of each is the
    // reader's message.
    let ack = reader.send_message("t", "m1", "hello").await;
    assert_eq!(typist.expect("message:new").await["offset"], ack["offset"]);
    assert_eq!(
        typist_elsewhere.expect("message:new").await["offset"],
        ack["offset"]
    );
}

/// A flood of starts is relayed once: each would go to every member of the team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_starts_are_relayed_once() {
    let env = TestEnv::new().await;
    let (_g1, _g2, mut typist, mut reader) = pair(&env).await;
    for _ in 0..10 {
        typist.send(json!({"type":"typing:start","team":"t"})).await;
    }
    assert_eq!(reader.expect("typing:start").await["user"], "tina");
    // The next frame the reader gets is the typist's message, not another start.
    let ack = typist.send_message("t", "m1", "hello").await;
    assert_eq!(reader.expect("message:new").await["offset"], ack["offset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_typist_gets_a_stop_after_the_timeout() {
    let env = TestEnv::new().await;
    let g1 = common::gateway(&env, &["--typing-timeout-ms=300"]).await;
    let g2 = common::gateway(&env, &["--typing-timeout-ms=300"]).await;
    let mut typist = Client::connect(g1.addr(), &env.token("tina", &["t"])).await;
    let mut reader = Client::connect(g2.addr(), &env.token("rob", &["t"])).await;
    typist.join("t").await;
    reader.join("t").await;
    typist.send(json!({"type":"typing:start","team":"t"})).await;
    reader.expect("typing:start").await;
    let started = std::time::Instant::now();
    assert_eq!(reader.expect("typing:stop").await["user"], "tina");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_or_disconnecting_stops_typing() {
    let env = TestEnv::new().await;
    let (g1, _g2, mut typist, mut reader) = pair(&env).await;
    typist.send(json!({"type":"typing:start","team":"t"})).await;
    reader.expect("typing:start").await;
    typist.send(json!({"type":"room:leave","team":"t"})).await;
    typist.expect("room:left").await;
    assert_eq!(reader.expect("typing:stop").await["user"], "tina");

    let mut typist = Client::connect(g1.addr(), &env.token("tina", &["t"])).await;
    typist.join("t").await;
    typist.send(json!({"type":"typing:start","team":"t"})).await;
    reader.expect("typing:start").await;
    drop(typist);
    assert_eq!(reader.expect("typing:stop").await["user"], "tina");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_stops_when_the_typists_gateway_is_killed() {
    let env = TestEnv::new().await;
    let port = teamchat_testkit::free_port();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_teamchat-gateway"));
    let mut doomed = teamchat_testkit::spawn_gateway(
        binary,
        &env.gateway_config(&[]),
        port,
        &[("TYPING_TIMEOUT_MS", "500")],
    )
    .await;
    let doomed_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let survivor = common::gateway(&env, &["--typing-timeout-ms=500"]).await;
    let mut typist = Client::connect(doomed_addr, &env.token("tina", &["t"])).await;
    let mut reader = Client::connect(survivor.addr(), &env.token("rob", &["t"])).await;
    typist.join("t").await;
    reader.join("t").await;
    typist.send(json!({"type":"typing:start","team":"t"})).await;
    reader.expect("typing:start").await;
    doomed.kill().await.unwrap();
    assert_eq!(reader.expect("typing:stop").await["user"], "tina");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_needs_a_joined_team() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &[]).await;
    let mut c = Client::connect(g.addr(), &env.token("tina", &["t"])).await;
    c.send(json!({"type":"typing:start","team":"t","rid":"x"}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["rid"].as_str()),
        (Some("not_joined"), Some("x"))
    );
    c.send(json!({"type":"typing:stop"})).await;
    assert_eq!(c.expect("error").await["code"], "bad_request");
}
