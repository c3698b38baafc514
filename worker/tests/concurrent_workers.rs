//! Several workers share the consumer group: every event is synced once, whichever worker
//! got it, and each team's sync watermark reaches its newest offset.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use teamchat_gateway::Gateway;
use teamchat_testkit::{Client, TestEnv, eventually};
use tokio_util::sync::CancellationToken;

const TEAMS: usize = 6;
const PER_TEAM: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_sync_every_event_once() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    for name in ["w1", "w2", "w3"] {
        let mut config = env.worker_config(name);
        config.batch_size = 20;
        tokio::spawn(teamchat_worker::run(config, stop.clone()));
    }
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let teams: Vec<String> = (0..TEAMS).map(|t| format!("team{t}")).collect();
    let team_refs: Vec<&str> = teams.iter().map(String::as_str).collect();
    let mut client = Client::connect(gateway.addr(), &env.token("u1", &team_refs)).await;
    for team in &teams {
        client.join(team).await;
    }
    // Interleave the teams, so every batch mixes them.
    let mut acked = BTreeMap::new();
    for n in 0..PER_TEAM {
        for team in &teams {
            client
                .send(json!({"type":"message:send","team":team,"client_id":format!("{team}-{n}"),"body":"b"}))
                .await;
        }
        for _ in &teams {
            let ack = client.expect("message:ack").await;
            acked.insert(
                (
                    ack["team"].as_str().unwrap().to_owned(),
                    ack["seq"].as_i64().unwrap(),
                ),
                ack["client_id"].as_str().unwrap().to_owned(),
            );
        }
    }
    let pg = env.pg().await;
    eventually(
        Duration::from_secs(60),
        "every team's watermark at its top",
        || async {
            let done: i64 =
                sqlx::query_scalar("SELECT count(*) FROM team_sync WHERE synced_offset = $1")
                    .bind(PER_TEAM as i64)
                    .fetch_one(&pg)
                    .await
                    .ok()?;
            (done == TEAMS as i64).then_some(())
        },
    )
    .await;
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT team, seq, client_id FROM messages ORDER BY team, seq")
            .fetch_all(&pg)
            .await
            .unwrap();
    assert_eq!(rows.len(), TEAMS * PER_TEAM);
    let synced: BTreeMap<(String, i64), String> =
        rows.into_iter().map(|(t, s, c)| ((t, s), c)).collect();
    assert_eq!(synced, acked);
    let ahead: i64 = sqlx::query_scalar("SELECT count(*) FROM synced_ahead")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(ahead, 0, "nothing left waiting past a gap");
    // Every entry is acked by some worker (just after its COMMIT): nothing stays pending.
    let redis = env.redis().await;
    let streams = env.keys().all_ingest();
    eventually(Duration::from_secs(20), "no pending entries", || {
        let (mut redis, streams) = (redis.clone(), streams.clone());
        async move {
            for stream in &streams {
                let pending: redis::Value = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg("sync")
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                let redis::Value::Array(parts) = pending else {
                    return None;
                };
                if parts.first() != Some(&redis::Value::Int(0)) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    stop.cancel();
}
