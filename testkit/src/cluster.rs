//! The local Redis Cluster the cluster tests run on (`scripts/test` starts it: 3 masters
//! and 3 replicas on loopback, its seed nodes in `TEST_REDIS_CLUSTER_URLS`), and what the
//! failover and resharding tests do to it: find a slot's nodes, stop, kill and restart
//! them, wait for the cluster to settle.

use std::time::Duration;

use crate::eventually;

/// The cluster's seed nodes, comma-separated.
pub fn urls() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URLS")
        .expect("TEST_REDIS_CLUSTER_URLS: run scripts/test, which starts a local Redis Cluster")
}

/// A connection to the cluster.
pub async fn connect() -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(urls().split(',').collect::<Vec<_>>())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

/// A connection to one node (`host:port`).
pub async fn node(address: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{address}"))?;
    let connecting = client.get_multiplexed_async_connection();
    tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))?
}

/// The addresses (`host:port`) of every node of the cluster.
pub fn addresses() -> Vec<String> {
    urls()
        .split(',')
        .map(|url| url.trim_start_matches("redis://").to_owned())
        .collect()
}

/// The slot of `key`.
pub async fn slot_of(key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut connect().await)
        .await
        .unwrap()
}

/// One node's line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub address: String,
    pub flags: String,
    pub master_id: String,
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.contains("master") && !self.flags.contains("fail")
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// `CLUSTER NODES` as the first node of `addresses` that answers sees it.
pub async fn nodes(addresses: &[String]) -> Vec<NodeLine> {
    for address in addresses {
        let Ok(mut conn) = node(address).await else {
            continue;
        };
        let Ok(text) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(&mut conn)
            .await
        else {
            continue;
        };
        return text
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                NodeLine {
                    id: f[0].to_owned(),
                    address: f[1].split('@').next().unwrap().to_owned(),
                    flags: f[2].to_owned(),
                    master_id: f[3].to_owned(),
                    // Ranges (`0-5460`) and single slots; `[…]` entries are migrations.
                    slots: f[8..]
                        .iter()
                        .filter(|r| !r.starts_with('['))
                        .map(|r| {
                            let (a, b) = r.split_once('-').unwrap_or((r, r));
                            (a.parse().unwrap(), b.parse().unwrap())
                        })
                        .collect(),
                }
            })
            .collect();
    }
    panic!("no cluster node answers");
}

/// The master serving `slot` and its replicas (addresses).
pub async fn nodes_of_slot(slot: u16) -> (String, Vec<String>) {
    try_nodes_of_slot(slot)
        .await
        .expect("a master serves the slot")
}

/// The master serving `slot` and its replicas; `None` while no master that is up does (a
/// failover in progress).
pub async fn try_nodes_of_slot(slot: u16) -> Option<(String, Vec<String>)> {
    let lines = nodes(&addresses()).await;
    let master = lines.iter().find(|n| n.is_master() && n.serves(slot))?;
    let replicas = lines
        .iter()
        .filter(|n| n.master_id == master.id)
        .map(|n| n.address.clone())
        .collect();
    Some((master.address.clone(), replicas))
}

/// A field of `INFO section` of the node at `address`.
pub async fn info(address: &str, section: &str, field: &str) -> Option<String> {
    let mut conn = node(address).await.ok()?;
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

/// The process id of the Redis at `address`.
pub async fn pid_of(address: &str) -> String {
    info(address, "server", "process_id")
        .await
        .expect("the node answers INFO")
}

/// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to a process.
pub fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A node stopped with SIGSTOP, continued when dropped: a test that fails while holding
/// one does not leave the cluster stuck for the tests after it.
pub struct Stopped(String);

impl Stopped {
    pub async fn new(address: &str) -> Stopped {
        let pid = pid_of(address).await;
        signal(&pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // No assertion: this may run while a failed test unwinds.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0])
            .status();
    }
}

/// A node killed with SIGKILL, started again from its folder when dropped (it rejoins as a
/// replica if it was failed over meanwhile).
pub struct Killed(String);

impl Killed {
    pub async fn new(address: &str) -> Killed {
        signal(&pid_of(address).await, "-KILL");
        Killed(address.to_owned())
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        start_node(&self.0);
    }
}

/// Makes the master at `address` drop its replicas' connections (`CLIENT KILL TYPE
/// replica`): with a replica stopped, what the master writes next never reaches it (what it
/// wrote before sits in the stopped replica's socket buffer, and would).
pub async fn drop_replicas(address: &str) {
    let mut conn = node(address).await.unwrap();
    let dropped: u32 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(dropped > 0, "{address} had no replica connected");
}

/// Starts the node of `address` again from its folder (`cluster_node_start` of
/// `scripts/services.sh`); whether it started. It rejoins the cluster, as a replica if it
/// was failed over.
fn start_node(address: &str) -> bool {
    let port = address.rsplit(':').next().unwrap_or_default();
    let services = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {services} && cluster_node_start {port}"))
        .status()
        .is_ok_and(|status| status.success())
}

/// Waits until every node answers, says `cluster_state:ok`, every slot has a master, and
/// every replica's link to its master is up.
pub async fn wait_until_settled() {
    eventually(Duration::from_secs(60), "the cluster to settle", || async {
        let all = addresses();
        for address in &all {
            let mut conn = node(address).await.ok()?;
            let state: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .ok()?;
            state
                .lines()
                .any(|l| l.trim() == "cluster_state:ok")
                .then_some(())?;
        }
        let lines = nodes(&all).await;
        if lines.len() != all.len() || lines.iter().any(|n| n.flags.contains("fail")) {
            return None;
        }
        for replica in lines.iter().filter(|n| n.flags.contains("slave")) {
            let link = info(&replica.address, "replication", "master_link_status").await;
            if link.as_deref() != Some("up") {
                return None;
            }
        }
        Some(())
    })
    .await;
}
