//! The chaos test (docs/architecture.md's invariants): three gateways and two workers as processes,
//! twenty clients sending messages, edits, deletes and receipts for a bounded time, while a
//! random worker or gateway is killed (SIGKILL) and restarted every couple of seconds, and
//! PostgreSQL and Redis (AOF on) are each crashed and restarted once. Clients retry what
//! was not answered, with the same `client_id`, as real clients do. At the end PostgreSQL
//! holds exactly the acked messages, each once, with their latest edit or deletion,
//! receipts equal to Redis's, credit balances equal to the ledger and to Redis, and the
//! event archive holding each event of the streams once.
//!
//! `CHAOS_SEED` replays a run; `CHAOS_SECONDS` sets the load's length (default 20).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use serde_json::{Value, json};
use teamchat_testkit::pg_server::PgServer;
use teamchat_testkit::redis_server::RedisServer;
use teamchat_testkit::tokio_tungstenite::tungstenite::Message;
use teamchat_testkit::{TestEnv, eventually};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const GATEWAYS: usize = 3;
const WORKERS: usize = 2;
const CLIENTS: usize = 20;
const TEAMS: [&str; 4] = ["red", "green", "blue", "gold"];

fn gateway_binary() -> PathBuf {
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_teamchat-worker"));
    let gateway = worker.with_file_name("teamchat-gateway");
    assert!(
        gateway.exists(),
        "{gateway:?} missing: build the workspace first (scripts/test does)"
    );
    gateway
}

struct Cluster {
    env: TestEnv,
    gateway_ports: Vec<u16>,
    gateways: Vec<Option<Child>>,
    workers: Vec<Option<Child>>,
}

impl Cluster {
    async fn spawn_gateway(&mut self, i: usize) {
        let config = self.env.gateway_config(&[]);
        let child =
            teamchat_testkit::spawn_gateway(&gateway_binary(), &config, self.gateway_ports[i], &[])
                .await;
        self.gateways[i] = Some(child);
    }

    fn spawn_worker(&mut self, i: usize) {
        let child = Command::new(env!("CARGO_BIN_EXE_teamchat-worker"))
            .args(self.env.worker_args(&format!("w{i}")))
            .args([
                "--batch-size=100",
                "--claim-idle-ms=2000",
                "--trim-every-ms=1000",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting a worker");
        self.workers[i] = Some(child);
    }
}

/// What the clients were told, all of them together.
#[derive(Default)]
struct Ledger {
    /// (team, seq) → (client_id, body, author)
    messages: BTreeMap<(String, u64), (String, String, String)>,
    /// (team, seq) → body of the latest acked edit
    edits: BTreeMap<(String, u64), String>,
    deleted: BTreeSet<(String, u64)>,
    /// (team, parent) → seqs of the acked replies in its thread
    replies: BTreeMap<(String, u64), BTreeSet<u64>>,
    /// (team, seq) → pinned, as the last acked pin or unpin left it
    pins: BTreeMap<(String, u64), bool>,
    /// (team, seq, user, emoji) → whether it stands, as the user's last acked add or
    /// remove left it
    reactions: BTreeMap<(String, u64, String, String), bool>,
    ops: usize,
    retries: usize,
    reconnects: usize,
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        team: String,
        client_id: String,
        body: String,
        /// A thread reply to this top-level message.
        parent: Option<u64>,
    },
    Pin {
        team: String,
        seq: u64,
        pin: bool,
    },
    React {
        team: String,
        seq: u64,
        emoji: &'static str,
        add: bool,
    },
    Edit {
        team: String,
        seq: u64,
        body: String,
    },
    Delete {
        team: String,
        seq: u64,
    },
    Receipt {
        team: String,
        seq: u64,
    },
}

impl Op {
    fn frame(&self, rid: &str) -> Value {
        match self {
            Op::Send {
                team,
                client_id,
                body,
                parent,
            } => {
                // Some mention two users (the same on every retry of the send).
                let mentions: Vec<&str> = match client_id.len() % 3 {
                    0 => vec!["user1", "user2"],
                    _ => vec![],
                };
                json!({"type":"message:send","team":team,"client_id":client_id,"body":body,"rid":rid,
                       "parent":parent,"mentions":mentions})
            }
            Op::Pin { team, seq, pin } => {
                let kind = if *pin { "message:pin" } else { "message:unpin" };
                json!({"type":kind,"team":team,"seq":seq,"rid":rid})
            }
            Op::React {
                team,
                seq,
                emoji,
                add,
            } => {
                let kind = if *add {
                    "reaction:add"
                } else {
                    "reaction:remove"
                };
                json!({"type":kind,"team":team,"seq":seq,"emoji":emoji,"rid":rid})
            }
            Op::Edit { team, seq, body } => {
                json!({"type":"message:edit","team":team,"seq":seq,"body":body,"rid":rid})
            }
            Op::Delete { team, seq } => {
                json!({"type":"message:delete","team":team,"seq":seq,"rid":rid})
            }
            Op::Receipt { team, seq } => json!({"type":"receipt:update","team":team,"seq":seq}),
        }
    }
}

type Ws = teamchat_testkit::client::Ws;

async fn connect(addr: SocketAddr, token: &str) -> Option<Ws> {
    let url = format!("ws://{addr}/ws?token={token}");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(2),
        teamchat_testkit::tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    for team in TEAMS {
        let rid = format!("join-{team}");
        ws.send(Message::text(
            json!({"type":"room:join","team":team,"rid":rid}).to_string(),
        ))
        .await
        .ok()?;
        let reply = reply_to(&mut ws, &rid).await?;
        if reply["type"] != "room:joined" {
            return None;
        }
    }
    Some(ws)
}

/// The reply carrying `rid`, passing over everything else; None if the connection broke.
async fn reply_to(ws: &mut Ws, rid: &str) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).ok()?;
                if frame["rid"] == rid {
                    return Some(frame);
                }
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

async fn run_client(
    n: usize,
    seed: u64,
    ports: Vec<u16>,
    until: Instant,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (n as u64).wrapping_mul(0x9e37_79b9));
    let user = format!("user{n}");
    let token = teamchat_testkit::sign(
        &json!({"sub": user, "teams": TEAMS, "exp": teamchat_testkit::now() + 3600}),
    );
    let mut mine: Vec<(String, u64)> = Vec::new();
    // The top-level ones among them: what replies may go to.
    let mut tops: Vec<(String, u64)> = Vec::new();
    let mut pending: Option<Op> = None;
    let mut counter = 0;
    'reconnect: loop {
        let port = ports[rng.random_range(0..ports.len())];
        let Some(mut ws) = connect(format!("127.0.0.1:{port}").parse().unwrap(), &token).await
        else {
            ledger.lock().unwrap().reconnects += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let op = match pending.take() {
                Some(op) => op,
                None if Instant::now() >= until => break 'reconnect,
                None => {
                    counter += 1;
                    let team = TEAMS[rng.random_range(0..TEAMS.len())].to_owned();
                    let roll = rng.random_range(0..100);
                    match mine.get(rng.random_range(0..mine.len().max(1))).cloned() {
                        Some((team, seq)) if roll < 12 => Op::Edit {
                            team,
                            seq,
                            body: format!("{user} edit {counter}"),
                        },
                        Some((team, seq)) if roll < 18 => Op::Delete { team, seq },
                        Some((team, seq)) if roll < 30 => Op::Receipt { team, seq },
                        Some((team, seq)) if roll < 36 => Op::Pin {
                            team,
                            seq,
                            pin: rng.random_bool(0.6),
                        },
                        Some((team, seq)) if roll < 44 => Op::React {
                            team,
                            seq,
                            emoji: ["👍", "🎉", "👀"][rng.random_range(0..3)],
                            add: rng.random_bool(0.6),
                        },
                        _ => match tops.get(rng.random_range(0..tops.len().max(1))).cloned() {
                            Some((team, parent)) if roll < 56 => Op::Send {
                                team,
                                client_id: format!("{user}-{counter}"),
                                body: format!("{user} replies {counter}"),
                                parent: Some(parent),
                            },
                            _ => Op::Send {
                                team,
                                client_id: format!("{user}-{counter}"),
                                body: format!("{user} says {counter}"),
                                parent: None,
                            },
                        },
                    }
                }
            };
            let rid = format!("r{counter}-{}", rng.random::<u32>());
            if ws
                .send(Message::text(op.frame(&rid).to_string()))
                .await
                .is_err()
            {
                pending = Some(op);
                ledger.lock().unwrap().reconnects += 1;
                continue 'reconnect;
            }
            if let Op::Receipt { .. } = op {
                ledger.lock().unwrap().ops += 1;
                continue; // no reply; best effort
            }
            let Some(reply) = reply_to(&mut ws, &rid).await else {
                pending = Some(op);
                ledger.lock().unwrap().reconnects += 1;
                continue 'reconnect;
            };
            if reply["type"] == "error" && reply["code"] == "unavailable" {
                ledger.lock().unwrap().retries += 1;
                pending = Some(op);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let mut ledger = ledger.lock().unwrap();
            match (reply["type"].as_str(), reply["code"].as_str(), &op) {
                (
                    Some("message:ack"),
                    _,
                    Op::Send {
                        team,
                        client_id,
                        body,
                        parent,
                    },
                ) => {
                    let seq = reply["seq"].as_u64().unwrap();
                    ledger.messages.insert(
                        (team.clone(), seq),
                        (client_id.clone(), body.clone(), user.clone()),
                    );
                    mine.push((team.clone(), seq));
                    match parent {
                        Some(parent) => {
                            let thread = ledger.replies.entry((team.clone(), *parent));
                            thread.or_default().insert(seq);
                        }
                        None => tops.push((team.clone(), seq)),
                    }
                }
                // Its parent was deleted meanwhile (by this client, between two tries).
                (
                    Some("error"),
                    Some("not_found"),
                    Op::Send {
                        parent: Some(_), ..
                    },
                ) => {}
                // Acked with an offset or without (a retry whose first try went through).
                (Some("message:ack"), _, Op::Pin { team, seq, pin }) => {
                    ledger.pins.insert((team.clone(), *seq), *pin);
                }
                (Some("error"), Some("not_found"), Op::Pin { .. }) => {}
                (
                    Some("message:ack"),
                    _,
                    Op::React {
                        team,
                        seq,
                        emoji,
                        add,
                    },
                ) => {
                    let key = (team.clone(), *seq, user.clone(), emoji.to_string());
                    ledger.reactions.insert(key, *add);
                }
                (Some("error"), Some("not_found"), Op::React { .. }) => {}
                (Some("message:ack"), _, Op::Edit { team, seq, body }) => {
                    ledger.edits.insert((team.clone(), *seq), body.clone());
                }
                // A retried delete whose first attempt went through finds nothing to delete.
                (Some("message:ack"), _, Op::Delete { team, seq })
                | (Some("error"), Some("not_found"), Op::Delete { team, seq }) => {
                    ledger.deleted.insert((team.clone(), *seq));
                    mine.retain(|m| m != &(team.clone(), *seq));
                    tops.retain(|m| m != &(team.clone(), *seq));
                }
                _ => panic!("unexpected reply {reply} to {op:?}"),
            }
            ledger.ops += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acked_is_lost_or_doubled_through_crashes_of_every_part() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("chaos seed {seed}, {seconds} s of load");
    let mut rng = StdRng::seed_from_u64(seed);

    let pg = PgServer::start().await;
    let mut redis_server = RedisServer::start().await;
    let mut env = TestEnv::new().await;
    env.redis_url = redis_server.url();
    env.database_url = pg.url();
    let ports: Vec<u16> = (0..GATEWAYS)
        .map(|_| teamchat_testkit::free_port())
        .collect();
    let mut cluster = Cluster {
        env,
        gateway_ports: ports.clone(),
        gateways: vec![],
        workers: vec![],
    };
    cluster.gateways.resize_with(GATEWAYS, || None);
    cluster.workers.resize_with(WORKERS, || None);
    for i in 0..GATEWAYS {
        cluster.spawn_gateway(i).await;
    }
    for i in 0..WORKERS {
        cluster.spawn_worker(i);
    }

    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(run_client(n, seed, ports.clone(), until, ledger.clone())))
        .collect();

    // The chaos: a random gateway or worker every ~2 s; PostgreSQL at a third, Redis at two thirds.
    let (mut pg_restarted, mut redis_restarted, mut kills) = (false, false, 0);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_500..2_500))).await;
        let elapsed = start.elapsed().as_secs_f64() / seconds as f64;
        if !pg_restarted && elapsed > 0.33 {
            pg_restarted = true;
            pg.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            pg.restart();
            println!("restarted PostgreSQL at {:?}", start.elapsed());
        } else if !redis_restarted && elapsed > 0.66 {
            redis_restarted = true;
            redis_server.kill().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            redis_server.restart().await;
            println!("restarted Redis at {:?}", start.elapsed());
        } else if rng.random_bool(0.5) {
            let i = rng.random_range(0..GATEWAYS);
            if let Some(mut child) = cluster.gateways[i].take() {
                child.kill().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster.spawn_gateway(i).await;
            kills += 1;
        } else {
            let i = rng.random_range(0..WORKERS);
            if let Some(mut child) = cluster.workers[i].take() {
                child.kill().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster.spawn_worker(i);
            kills += 1;
        }
    }
    for client in clients {
        client.await.expect("a client failed");
    }

    // Every team synced up to its newest offset.
    let keys = cluster.env.keys();
    let mut redis = cluster.env.redis().await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url())
        .await
        .unwrap();
    for team in TEAMS {
        let top: Option<i64> = redis.hget(keys.team_meta(team), "offset").await.unwrap();
        let top = top.unwrap_or(0);
        eventually(Duration::from_secs(60), "every team synced", || async {
            let w: Option<i64> =
                sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = $1")
                    .bind(team)
                    .fetch_optional(&db)
                    .await
                    .ok()?;
            (w.unwrap_or(0) == top).then_some(())
        })
        .await;
    }

    let ledger = Arc::try_unwrap(ledger)
        .ok()
        .expect("clients are done")
        .into_inner()
        .unwrap();
    println!(
        "seed {seed}: {} ops, {} messages acked ({} replies), {} edits, {} deletes, {} pins, {} reactions, {} retries, {} reconnects, {kills} kills",
        ledger.ops,
        ledger.messages.len(),
        ledger.replies.values().map(BTreeSet::len).sum::<usize>(),
        ledger.edits.len(),
        ledger.deleted.len(),
        ledger.pins.len(),
        ledger.reactions.len(),
        ledger.retries,
        ledger.reconnects
    );
    assert!(ledger.messages.len() > 100, "the load did not get going");

    // Exactly the acked messages, each once, with their latest edit or their deletion.
    type Row = (
        String,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row> =
        sqlx::query_as("SELECT team, seq, client_id, user_id, body, deleted FROM messages WHERE id IS NOT NULL ORDER BY team, seq")
            .fetch_all(&db)
            .await
            .unwrap();
    let placeholders: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE id IS NULL")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(placeholders, 0, "an edit or delete without its message");
    assert_eq!(
        rows.len(),
        ledger.messages.len(),
        "seed {seed}: rows vs acked messages"
    );
    for (team, seq, client_id, user, body, deleted) in rows {
        let key = (team, seq as u64);
        let (acked_client_id, acked_body, author) = ledger
            .messages
            .get(&key)
            .unwrap_or_else(|| panic!("seed {seed}: {key:?} in PostgreSQL was never acked"));
        assert_eq!(
            (client_id.as_deref(), user.as_deref()),
            (Some(acked_client_id.as_str()), Some(author.as_str()))
        );
        if ledger.deleted.contains(&key) {
            assert!(
                deleted && body.as_deref() == Some(""),
                "seed {seed}: {key:?} should be deleted"
            );
        } else {
            assert!(
                !deleted,
                "seed {seed}: {key:?} deleted without an acked delete"
            );
            let expected = ledger.edits.get(&key).unwrap_or(acked_body);
            assert_eq!(
                body.as_deref(),
                Some(expected.as_str()),
                "seed {seed}: {key:?} body"
            );
        }
    }

    // Each acked reply counted once in its thread (deleted replies too).
    let threads: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT team, parent, reply_count FROM threads ORDER BY team, parent")
            .fetch_all(&db)
            .await
            .unwrap();
    let expected: Vec<(String, i64, i64)> = ledger
        .replies
        .iter()
        .map(|((team, parent), replies)| (team.clone(), *parent as i64, replies.len() as i64))
        .collect();
    assert_eq!(threads, expected, "seed {seed}: thread counters");
    // Each message's pin as its author's last acked pin or unpin left it.
    let pinned: BTreeSet<(String, i64)> = sqlx::query_as(
        "SELECT team, seq FROM messages WHERE pinned AND NOT deleted AND id IS NOT NULL",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let expected: BTreeSet<(String, i64)> = ledger
        .pins
        .iter()
        .filter(|(key, pinned)| **pinned && !ledger.deleted.contains(key))
        .map(|((team, seq), _)| (team.clone(), *seq as i64))
        .collect();
    assert_eq!(pinned, expected, "seed {seed}: pins");
    // Each message's reaction counts are its users' last acked adds and removes.
    let counted: BTreeMap<(String, i64, String), i64> = sqlx::query_as(
        "SELECT c.team, c.seq, c.emoji, c.count FROM reaction_counts c
         JOIN messages m ON m.team = c.team AND m.seq = c.seq
         WHERE c.count > 0 AND NOT m.deleted",
    )
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .map(|(team, seq, emoji, count)| ((team, seq, emoji), count))
    .collect();
    let mut expected: BTreeMap<(String, i64, String), i64> = BTreeMap::new();
    for ((team, seq, _, emoji), stands) in &ledger.reactions {
        if *stands && !ledger.deleted.contains(&(team.clone(), *seq)) {
            *expected
                .entry((team.clone(), *seq as i64, emoji.clone()))
                .or_default() += 1;
        }
    }
    assert_eq!(counted, expected, "seed {seed}: reactions");

    // Receipts in PostgreSQL are Redis's (each user's max).
    for team in TEAMS {
        let in_redis: HashMap<String, i64> = redis.hgetall(keys.team_receipts(team)).await.unwrap();
        let in_pg: Vec<(String, i64)> =
            sqlx::query_as("SELECT user_id, seq FROM receipts WHERE team = $1")
                .bind(team)
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(
            in_pg.into_iter().collect::<HashMap<_, _>>(),
            in_redis,
            "seed {seed}: receipts of {team}"
        );
    }

    // Unread counts from the worker's blocks = counting the messages, for every user at
    // the read position PostgreSQL has for them.
    for team in TEAMS {
        for n in 0..CLIENTS {
            let user = format!("user{n}");
            let counted = teamchat_shared::db::unread::counts(&db, &user, &[team.to_owned()])
                .await
                .unwrap();
            let counted = (counted[0].read, counted[0].unread, counted[0].mentions);
            let expected: (i64, i64, i64) = sqlx::query_as(
                "WITH r AS (SELECT COALESCE((SELECT seq FROM receipts WHERE team = $1 AND user_id = $2), 0) AS read)
                 SELECT r.read,
                        GREATEST((SELECT COALESCE(max(seq), 0) FROM messages WHERE team = $1 AND id IS NOT NULL)
                                 - r.read - count(m.seq) FILTER (WHERE m.deleted OR m.user_id = $2), 0),
                        count(m.seq) FILTER (WHERE NOT m.deleted AND m.user_id <> $2 AND $2 = ANY (m.mentions))
                 FROM r LEFT JOIN messages m ON m.team = $1 AND m.seq > r.read
                 GROUP BY r.read",
            )
            .bind(team)
            .bind(&user)
            .fetch_one(&db)
            .await
            .unwrap();
            assert_eq!(counted, expected, "seed {seed}: unread of {user} in {team}");
        }
    }

    // The event archive: each event of every team stream once, nothing else.
    for team in TEAMS {
        let archived: Vec<(i64, String, i64)> = sqlx::query_as(
            r#"SELECT "offset", kind, seq FROM events WHERE team = $1 ORDER BY "offset""#,
        )
        .bind(team)
        .fetch_all(&db)
        .await
        .unwrap();
        let held = teamchat_shared::stream::read_range(&mut redis, &keys, team, 1, u64::MAX)
            .await
            .unwrap();
        let expected: Vec<(i64, String, i64)> = held
            .events
            .iter()
            .map(|e| (e.offset as i64, e.kind().as_str().to_owned(), e.seq as i64))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(archived, expected, "seed {seed}: the archive of {team}");
    }

    // Credits: balance = ledger = Redis, per user.
    let balances: Vec<(String, i64)> = sqlx::query_as("SELECT user_id, used FROM credit_balances")
        .fetch_all(&db)
        .await
        .unwrap();
    let ledger_sums: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, sum(cost)::int8 FROM credit_ledger GROUP BY user_id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        balances.iter().cloned().collect::<HashMap<_, _>>(),
        ledger_sums.into_iter().collect::<HashMap<_, _>>()
    );
    for (user, used) in balances {
        let mut in_redis = 0;
        for shard in 0..keys.shards() {
            let v: Option<i64> = redis.hget(keys.user_credits(shard), &user).await.unwrap();
            in_redis += v.unwrap_or(0);
        }
        assert_eq!(used, in_redis, "seed {seed}: credits of {user}");
    }
    assert!(pg_restarted && redis_restarted);
}
