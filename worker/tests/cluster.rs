//! Gateways and a worker on a Redis Cluster (its nodes in `TEST_REDIS_CLUSTER_URLS`,
//! started by `scripts/test`: 3 masters and 3 replicas on loopback): the same guarantees as on one
//! Redis — every team's events in order, once, across gateways; synced to PostgreSQL;
//! resumed by offset — with team channels sharded (`SPUBLISH` on the team's node).

use std::collections::BTreeSet;

use serde_json::json;
use teamchat_gateway::Gateway;
use teamchat_shared::config::WorkerConfig;
use teamchat_testkit::cluster;
use teamchat_testkit::{Client, TestEnv, wait_for_watermark};
use tokio_util::sync::CancellationToken;

/// Teams whose shards spread over every master.
const TEAMS: [&str; 8] = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_a_worker_keep_every_guarantee_on_a_cluster() {
    let env = TestEnv::new().await;
    let urls = format!("--redis-cluster-urls={}", cluster::urls());
    let a = Gateway::start(env.gateway_config(&[&urls])).await.unwrap();
    let b = Gateway::start(env.gateway_config(&[&urls])).await.unwrap();
    let mut worker_args = vec!["teamchat-worker".to_owned()];
    worker_args.extend(env.worker_args("w1"));
    worker_args.push(urls.clone());
    let worker = <WorkerConfig as clap::Parser>::try_parse_from(worker_args).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(teamchat_worker::run(worker, stop.clone()));

    // The teams' shards live on more than one master.
    let keys = env.keys();
    let mut owners = BTreeSet::new();
    for team in TEAMS {
        let slot = cluster::slot_of(&keys.team_events(team)).await;
        owners.insert(cluster::nodes_of_slot(slot).await.0);
    }
    assert!(owners.len() > 1, "{owners:?}");

    let mut ann = Client::connect(a.addr(), &env.token("ann", &TEAMS)).await;
    let mut ben = Client::connect(b.addr(), &env.token("ben", &TEAMS)).await;
    let mut epochs = Vec::new();
    for team in TEAMS {
        ann.join(team).await;
        epochs.push(ben.join(team).await["epoch"].as_str().unwrap().to_owned());
    }

    // Messages, across gateways, in order and once per team; typing (published, not
    // stored) crosses too.
    for round in 0..5 {
        for team in TEAMS {
            ann.send_message(team, &format!("{team}-{round}"), &format!("{team} {round}"))
                .await;
        }
    }
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); TEAMS.len()];
    for _ in 0..5 * TEAMS.len() {
        let message = ben.until("message:new").await;
        let i = TEAMS
            .iter()
            .position(|t| *t == message["team"].as_str().unwrap())
            .unwrap();
        seen[i].push(message["seq"].as_u64().unwrap());
    }
    for (team, seqs) in TEAMS.iter().zip(&seen) {
        assert_eq!(seqs, &[1, 2, 3, 4, 5], "{team}");
    }
    ann.send(json!({"type":"typing:start","team":"c3"})).await;
    let typing = ben.until("typing:start").await;
    assert_eq!(
        (typing["team"].as_str(), typing["user"].as_str()),
        (Some("c3"), Some("ann"))
    );

    // A repeated client_id is acked with the first append's seq, appended once.
    let again = ann.send_message("c0", "c0-0", "c0 0").await;
    assert_eq!(again["seq"].as_u64(), Some(1));

    // The worker reads each shard's ingest stream where it lives.
    let pg = env.pg().await;
    for team in TEAMS {
        wait_for_watermark(&pg, team, 5).await;
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(stored, 5 * TEAMS.len() as i64);

    // Ben goes; what is sent meanwhile comes back on resume, from any gateway.
    let last: Vec<u64> = TEAMS.iter().map(|_| 5).collect();
    drop(ben);
    for team in TEAMS {
        ann.send_message(team, &format!("{team}-late"), "late")
            .await;
    }
    let mut ben = Client::connect(a.addr(), &env.token("ben", &TEAMS)).await;
    for (i, team) in TEAMS.iter().enumerate() {
        ben.send(json!({"type":"room:join","team":team,
                        "since":{"offset":last[i].to_string(),"epoch":epochs[i]}}))
            .await;
        let joined = ben.until("room:joined").await;
        assert_eq!(joined["recovered"], true, "{team}");
        let missed = ben.until("message:new").await;
        assert_eq!(
            (missed["team"].as_str(), missed["seq"].as_u64()),
            (Some(*team), Some(6))
        );
    }
    stop.cancel();
}

/// With `REDIS_WAIT_REPLICAS=1` an ack means a replica has the append: while the team's
/// master's replica is stopped, a send answers `unavailable` (written, not acked); once
/// it runs again, the retry with the same `client_id` is acked, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_wait_replicas_an_ack_waits_for_a_replica() {
    let env = TestEnv::new().await;
    let urls = cluster::urls();
    let a = Gateway::start(env.gateway_config(&[
        &format!("--redis-cluster-urls={urls}"),
        "--redis-wait-replicas=1",
        "--redis-wait-timeout-ms=300",
    ]))
    .await
    .unwrap();
    let mut ann = Client::connect(a.addr(), &env.token("ann", &["w"])).await;
    ann.join("w").await;
    assert_eq!(ann.send_message("w", "m1", "replicated").await["seq"], 1);

    let keys = env.keys();
    let mut redis = cluster::connect().await;
    let slot = cluster::slot_of(&keys.team_events("w")).await;
    let (_, replicas) = cluster::nodes_of_slot(slot).await;
    let stopped = cluster::Stopped::new(&replicas[0]).await;
    ann.send(json!({"type":"message:send","team":"w","client_id":"m2","body":"held"}))
        .await;
    let refused = ann.expect("error").await;
    drop(stopped);
    assert_eq!(refused["code"], "unavailable");

    let retried = ann.send_message("w", "m2", "held").await;
    assert_eq!(retried["seq"], 2);
    let entries: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(keys.team_events("w"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(entries.len(), 2, "the held message is in the stream once");
}
