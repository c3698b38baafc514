//! `GET /v1/me/unread` (../shared/PROTOCOL.md, "Chat model"): per team in the token, the
//! newest seq, the user's read position, the messages above it by others and not
//! deleted, and how many of those mention the user, as the workers synced them.

mod common;

use serde_json::{Value, json};
use teamchat_testkit::{Client, TestEnv, http_get, try_http, wait_for_watermark};

const KEY: &str = "server-api-key-for-tests-0123456789abcdef";

async fn unread(addr: std::net::SocketAddr, token: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    http_get(addr, "/v1/me/unread", &[("authorization", bearer.as_str())]).await
}

/// Sends a frame and returns its ack, passing over other members' events.
async fn acked(client: &mut Client, frame: Value) -> Value {
    client.send(frame).await;
    client.until("message:ack").await
}

async fn synced(env: &TestEnv, team: &str, ack: &Value) {
    let offset: i64 = ack["offset"].as_str().unwrap().parse().unwrap();
    wait_for_watermark(&env.pg().await, team, offset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_follow_messages_deletes_mentions_and_receipts() {
    let env = TestEnv::new().await;
    let keys = format!("--api-keys={KEY}");
    let g = common::gateway(&env, &[&keys]).await;
    let stop = common::worker(&env, "w1");
    let mut ann = Client::connect(g.addr(), &env.token("ann", &["t", "u"])).await;
    let mut ben = Client::connect(g.addr(), &env.token("ben", &["t", "u"])).await;
    for team in ["t", "u"] {
        ann.join(team).await;
        ben.join(team).await;
    }
    let send = |team: &str, id: &str, mentions: &[&str]| {
        json!({"type": "message:send", "team": team, "client_id": id, "body": id,
               "mentions": mentions})
    };
    // t: 1, 2 by Ann; 3 mentions Ben; 4 is deleted; 5 by Ann; 6 by Ben himself; 7 is a
    // thread reply that mentions him.
    acked(&mut ann, send("t", "a1", &[])).await;
    acked(&mut ann, send("t", "a2", &[])).await;
    acked(&mut ann, send("t", "a3", &["ben", "carl"])).await;
    acked(&mut ann, send("t", "a4", &["ben"])).await;
    acked(&mut ann, send("t", "a5", &[])).await;
    acked(&mut ben, send("t", "b6", &["ben"])).await;
    let mut reply = send("t", "a7", &["ben"]);
    reply["parent"] = json!(1);
    acked(&mut ann, reply).await;
    acked(
        &mut ann,
        json!({"type": "message:delete", "team": "t", "seq": 4}),
    )
    .await;
    // Ben has read t up to 2 (Ann sees his receipt with its offset).
    ben.send(json!({"type": "receipt:update", "team": "t", "seq": 2}))
        .await;
    let receipt = ann.until("receipt:update").await;
    synced(&env, "t", &receipt).await;
    let last_u = acked(&mut ann, send("u", "u1", &[])).await;
    synced(&env, "u", &last_u).await;

    let token = env.token("ben", &["t", "u", "quiet"]);
    let (status, body) = unread(g.addr(), &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"teams": [
            {"team": "t", "seq": 7, "read": 2, "unread": 3, "mentions": 2},
            {"team": "u", "seq": 1, "read": 0, "unread": 1, "mentions": 0},
            {"team": "quiet", "seq": 0, "read": 0, "unread": 0, "mentions": 0},
        ]})
    );
    // Ann's own messages are not unread to her; Ben's one is.
    let (_, mine) = unread(g.addr(), &env.token("ann", &["t"])).await;
    assert_eq!(
        mine["teams"][0],
        json!({"team": "t", "seq": 7, "read": 0, "unread": 1, "mentions": 0})
    );

    // Reading on: what is below the read position no longer counts.
    ben.send(json!({"type": "receipt:update", "team": "t", "seq": 5}))
        .await;
    let receipt = ann.until("receipt:update").await;
    synced(&env, "t", &receipt).await;
    let (_, body) = unread(g.addr(), &token).await;
    assert_eq!(
        body["teams"][0],
        json!({"team": "t", "seq": 7, "read": 5, "unread": 1, "mentions": 1})
    );
    // A deleted mention goes with its message.
    let deleted = acked(
        &mut ann,
        json!({"type": "message:delete", "team": "t", "seq": 7}),
    )
    .await;
    synced(&env, "t", &deleted).await;
    let (_, body) = unread(g.addr(), &token).await;
    assert_eq!(
        body["teams"][0],
        json!({"team": "t", "seq": 7, "read": 5, "unread": 0, "mentions": 0})
    );

    // A team the application's backend removed the user from is left out; no token, or a
    // revoked one, is 401.
    let (status, _, _) = try_http(
        g.addr(),
        "DELETE",
        "/v1/server/teams/u/members/ben",
        &[("authorization", format!("Bearer {KEY}").as_str())],
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (_, body) = unread(g.addr(), &token).await;
    let teams: Vec<&Value> = body["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["team"])
        .collect();
    assert_eq!(teams, [&json!("t"), &json!("quiet")]);
    assert_eq!(http_get(g.addr(), "/v1/me/unread", &[]).await.0, 401);
    assert_eq!(unread(g.addr(), "not-a-token").await.0, 401);
    stop.cancel();
}
