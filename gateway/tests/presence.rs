//! Presence across gateways: the list on join, online when a user's first connection
//! appears, offline when the last goes, also when their gateway is killed; and the limit
//! on connections per user across gateways (4029); a storm of joins and leaves.

mod common;

use std::collections::BTreeSet;

use futures_util::future::join_all;
use serde_json::{Value, json};
use teamchat_testkit::{Client, TestEnv};

fn users(list: &Value) -> Vec<String> {
    let mut users: Vec<String> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_a_users_first_and_last_connection_across_gateways() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    ann.send(json!({"type":"room:join","team":"t"})).await;
    ann.expect("room:joined").await;
    let list = ann.expect("presence:list").await;
    assert_eq!(users(&list), ["ann"]);
    assert_eq!(list["users"][0]["name"], "ann name");
    assert!(list["users"][0]["since"].as_i64().unwrap() > 1_700_000_000_000);
    ann.expect("receipt:list").await;

    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ben.send(json!({"type":"room:join","team":"t"})).await;
    ben.expect("room:joined").await;
    assert_eq!(users(&ben.expect("presence:list").await), ["ann", "ben"]);
    ben.expect("receipt:list").await;
    let update = ann.expect("presence:update").await;
    assert_eq!(
        update,
        json!({"type":"presence:update","team":"t","user":"ben","status":"online"})
    );

    // Ben's second connection is not news; its going is not either.
    let mut ben_again = Client::connect(g1.addr(), &env.token("ben", &["t"])).await;
    ben_again.join("t").await;
    drop(ben_again);
    // Ben's last connection going is: ann hears offline, and nothing about the second one
    // came before it.
    drop(ben);
    let update = ann.recv().await;
    assert_eq!(
        update,
        json!({"type":"presence:update","team":"t","user":"ben","status":"offline"})
    );
}

/// Applies a `presence:update` to a member's view of who is online.
fn apply(view: &mut BTreeSet<String>, update: &Value) {
    assert_eq!(update["team"], "t", "{update}");
    let user = update["user"].as_str().unwrap().to_owned();
    match update["status"].as_str() {
        Some("online") => view.insert(user),
        Some("offline") => view.remove(&user),
        other => panic!("unexpected status {other:?}"),
    };
}

/// Every join is news to every member: a storm of them is sent in batches, so members
/// whose queues hold far fewer frames than there are joins keep up, and each ends with the
/// list it got plus the updates after it saying exactly who is online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_joins_and_leaves_leaves_every_member_knowing_who_is_online() {
    const USERS: usize = 120;
    let env = TestEnv::new().await;
    let g1 = common::gateway(&env, &["--send-queue=16"]).await;
    let g2 = common::gateway(&env, &["--send-queue=16"]).await;
    let names: Vec<String> = (0..USERS).map(|n| format!("u{n:03}")).collect();
    let clients = join_all(names.iter().enumerate().map(|(n, user)| {
        let addr = if n % 2 == 0 { g1.addr() } else { g2.addr() };
        let token = env.token(user, &["t"]);
        async move {
            let mut client = Client::connect(addr, &token).await;
            client.send(json!({"type":"room:join","team":"t"})).await;
            client.expect("room:joined").await;
            let list = client.expect("presence:list").await;
            client.expect("receipt:list").await;
            (client, users(&list).into_iter().collect::<BTreeSet<_>>())
        }
    }))
    .await;

    let everyone: BTreeSet<String> = names.iter().cloned().collect();
    let converge = |expected: BTreeSet<String>| {
        move |(mut client, mut view): (Client, BTreeSet<String>)| {
            let expected = expected.clone();
            async move {
                // A missing update times out here; a member closed for falling behind
                // fails the read.
                while view != expected {
                    apply(&mut view, &client.expect("presence:update").await);
                }
                (client, view)
            }
        }
    };
    let clients = join_all(clients.into_iter().map(converge(everyone))).await;

    // Every other user goes: the rest hear each of them leave.
    let (stay, go): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .enumerate()
        .partition(|(n, _)| n % 2 == 1);
    drop(go);
    let stay: Vec<_> = stay.into_iter().map(|(_, client)| client).collect();
    let remaining: BTreeSet<String> = names.iter().skip(1).step_by(2).cloned().collect();
    join_all(stay.into_iter().map(converge(remaining))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_killed_gateway_go_offline_within_the_presence_ttl() {
    let env = TestEnv::new().await;
    let port = teamchat_testkit::free_port();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_teamchat-gateway"));
    let mut doomed = teamchat_testkit::spawn_gateway(
        binary,
        &env.gateway_config(&[]),
        port,
        &[("PRESENCE_TTL_MS", "1000")],
    )
    .await;
    let doomed_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let survivor = common::gateway(&env, &["--presence-ttl-ms=1000"]).await;
    let mut ann = Client::connect(survivor.addr(), &env.token("ann", &["t"])).await;
    ann.join("t").await;
    let mut ben = Client::connect(doomed_addr, &env.token("ben", &["t"])).await;
    ben.join("t").await;
    assert_eq!(ann.expect("presence:update").await["status"], "online");

    doomed.kill().await.unwrap();
    let killed_at = std::time::Instant::now();
    let update = ann.expect("presence:update").await;
    assert_eq!(
        (update["user"].as_str(), update["status"].as_str()),
        (Some("ben"), Some("offline"))
    );
    println!(
        "offline {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_connection_of_a_user_across_gateways_closes_4029() {
    let env = TestEnv::new().await;
    let (g1, g2) = common::two_gateways(&env).await;
    let token = env.token("u1", &["t"]);
    let mut open = Vec::new();
    for n in 0..5 {
        let addr = if n % 2 == 0 { g1.addr() } else { g2.addr() };
        open.push(Client::connect(addr, &token).await);
    }
    let (mut ws, _) = teamchat_testkit::client::open(
        g2.addr(),
        teamchat_testkit::client::Auth::Query(&token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(teamchat_testkit::client::close_code(&mut ws).await.0, 4029);
    // Another user is not affected.
    Client::connect(g1.addr(), &env.token("u2", &["t"])).await;
    // Once one closes, there is room again (the close is counted when the gateway sees it).
    let mut first = open.remove(0);
    first.ws.close(None).await.unwrap();
    let _ = first.close_code().await;
    teamchat_testkit::eventually(
        std::time::Duration::from_secs(10),
        "a free connection slot",
        || {
            let token = token.clone();
            let addr = g1.addr();
            async move {
                let (mut ws, _) = teamchat_testkit::client::open(
                    addr,
                    teamchat_testkit::client::Auth::Query(&token),
                    None,
                )
                .await
                .ok()?;
                use futures_util::StreamExt;
                match ws.next().await? {
                    Ok(message) if message.is_text() => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pings_alone_keep_a_connection_alive() {
    let env = TestEnv::new().await;
    let g = common::gateway(&env, &["--heartbeat-ms=200"]).await;
    let mut raw = teamchat_testkit::client::open_raw(g.addr(), &env.token("u1", &["t"])).await;
    // Ping every 100 ms for a second: five heartbeat windows of 400 ms pass.
    for _ in 0..10 {
        teamchat_testkit::client::raw_send(&mut raw, 0x9, b"hb").await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    teamchat_testkit::client::raw_send_text(&mut raw, r#"{"type":"ping","rid":"alive"}"#).await;
    // The request is answered only while the connection is open (a closed one reads no
    // more requests).
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(r#""rid":"alive""#) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expired_during_an_outage_comes_back_online() {
    use redis::AsyncCommands;
    let env = TestEnv::new().await;
    let g1 = common::gateway(&env, &["--presence-ttl-ms=300"]).await;
    let g2 = common::gateway(&env, &["--presence-ttl-ms=300"]).await;
    let mut ann = Client::connect(g1.addr(), &env.token("ann", &["t"])).await;
    let mut ben = Client::connect(g2.addr(), &env.token("ben", &["t"])).await;
    ann.join("t").await;
    ben.join("t").await;
    // Ann's entry vanishes as if it had expired while her gateway could not refresh it.
    let session = ann.welcome["session"].as_str().unwrap().to_owned();
    let [sessions, expiry, users] = env.keys().presence("t");
    let mut redis = env.redis().await;
    let _: () = redis.hdel(&sessions, &session).await.unwrap();
    let _: () = redis.zrem(&expiry, &session).await.unwrap();
    let _: () = redis.hdel(&users, "ann").await.unwrap();
    // Her gateway's next refresh finds her missing and puts her back: ben hears it.
    let update = ben.expect("presence:update").await;
    assert_eq!(
        (update["user"].as_str(), update["status"].as_str()),
        (Some("ann"), Some("online"))
    );
    let online: i64 = redis.hget(&users, "ann").await.unwrap();
    assert_eq!(online, 1);
}
