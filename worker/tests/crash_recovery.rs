//! Killing the worker (SIGKILL) in the middle of a run loses and doubles nothing: after
//! restarts, PostgreSQL holds every acked message exactly once, with its seq.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use teamchat_gateway::Gateway;
use teamchat_testkit::{Client, TestEnv, eventually};
use tokio::process::{Child, Command};

const MESSAGES: usize = 5_000;
const BURST: usize = 100;

fn spawn_worker(env: &TestEnv, consumer: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_teamchat-worker"))
        .args(env.worker_args(consumer))
        .args(["--batch-size=50", "--claim-idle-ms=1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the worker binary")
}

async fn synced(pg: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(pg)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_and_doubles_nothing() {
    let env = TestEnv::new().await;
    let gateway = Gateway::start(env.gateway_config(&[])).await.unwrap();
    let pg = env.pg().await;
    let mut client = Client::connect(gateway.addr(), &env.token("u1", &["t"])).await;
    client.join("t").await;

    // Send in bursts, collecting every ack, while the worker syncs, is killed and restarts.
    let sender = tokio::spawn(async move {
        let mut acked = BTreeMap::new();
        for burst in 0..MESSAGES / BURST {
            for n in 0..BURST {
                let id = format!("m{}", burst * BURST + n);
                client
                    .send(json!({"type":"message:send","team":"t","client_id":id,"body":format!("body of {id}")}))
                    .await;
            }
            for _ in 0..BURST {
                let ack = client.expect("message:ack").await;
                acked.insert(
                    ack["seq"].as_i64().unwrap(),
                    ack["client_id"].as_str().unwrap().to_owned(),
                );
            }
        }
        acked
    });

    let mut worker = spawn_worker(&env, "w1");
    for (kill_at, restart_as) in [(1_000, "w1"), (3_000, "w2")] {
        eventually(Duration::from_secs(60), "rows to sync", || async {
            (synced(&pg).await >= kill_at).then_some(())
        })
        .await;
        worker.kill().await.expect("SIGKILL");
        let at_kill = synced(&pg).await;
        println!("killed the worker at {at_kill} synced rows; restarting as {restart_as}");
        // w1 resumes its own pending entries; w2 claims w1's once they are idle.
        worker = spawn_worker(&env, restart_as);
    }

    let acked = sender.await.unwrap();
    assert_eq!(acked.len(), MESSAGES);
    eventually(Duration::from_secs(60), "all rows synced", || async {
        (synced(&pg).await >= MESSAGES as i64).then_some(())
    })
    .await;
    // Let the restarted worker finish anything it holds, then compare exactly.
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, client_id, body FROM messages WHERE team = 't' ORDER BY seq")
            .fetch_all(&pg)
            .await
            .unwrap();
    let synced_rows: BTreeMap<i64, String> = rows.iter().map(|(s, c, _)| (*s, c.clone())).collect();
    assert_eq!(rows.len(), MESSAGES, "no row twice, none extra");
    assert_eq!(synced_rows, acked, "every acked message with its seq");
    for (_, client_id, body) in &rows {
        assert_eq!(body, &format!("body of {client_id}"));
    }
    let watermark: i64 = sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = 't'")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(watermark, MESSAGES as i64);
    // Credits: charged once per acked message, in Redis and in the ledger and balance.
    let balance: i64 = eventually(Duration::from_secs(30), "the balance", || async {
        sqlx::query_scalar("SELECT used FROM credit_balances WHERE user_id = 'u1'")
            .fetch_optional(&pg)
            .await
            .ok()?
    })
    .await;
    let ledger: i64 =
        sqlx::query_scalar("SELECT sum(cost)::int8 FROM credit_ledger WHERE user_id = 'u1'")
            .fetch_one(&pg)
            .await
            .unwrap();
    let mut redis = env.redis().await;
    let keys = env.keys();
    let mut in_redis = 0;
    for shard in 0..keys.shards() {
        let used: Option<i64> =
            redis::AsyncCommands::hget(&mut redis, keys.user_credits(shard), "u1")
                .await
                .unwrap();
        in_redis += used.unwrap_or(0);
    }
    assert_eq!(
        (balance, ledger, in_redis),
        (MESSAGES as i64, MESSAGES as i64, MESSAGES as i64)
    );
    worker.kill().await.ok();
    gateway.stop().await;
}
