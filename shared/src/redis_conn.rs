//! One Redis, or a Redis Cluster (`REDIS_CLUSTER_URLS`), behind one connection type. Every
//! command of teamchat names keys of one slot (a team's and its shard's keys share the
//! shard's hash tag; a user's keys the user's), so a command goes where its key is; what
//! spans slots is sent as one command per slot on a cluster (`each`). Publishing to a
//! team's channel is sharded on a cluster (`SPUBLISH`, on its shard's node only).

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to the configured Redis, cheap to clone (clones share it).
#[derive(Clone)]
pub enum Redis {
    /// One server, reconnected on failure.
    Single(ConnectionManager),
    /// One server, one connection: once lost, its requests fail and the caller connects
    /// again (a blocking reader that must notice a half-open connection).
    Direct(MultiplexedConnection),
    /// A cluster: commands routed by their key's slot, MOVED/ASK followed, the slot map
    /// refreshed after a failover or a resharding.
    Cluster(ClusterConnection),
}

impl Redis {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// How team events are published: `PUBLISH`, or `SPUBLISH` on a cluster.
    pub fn publish_command(&self) -> &'static str {
        publish_command(self.is_cluster())
    }

    /// Runs `commands`, which may name keys of different slots, and answers their replies
    /// in order: one pipeline on one server, one command per slot (concurrently) on a
    /// cluster.
    pub async fn each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> RedisResult<Vec<T>> {
        match self {
            Self::Single(_) | Self::Direct(_) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(&mut self.clone()).await
            }
            Self::Cluster(conn) => {
                let calls = commands.into_iter().map(|command| {
                    let mut conn = conn.clone();
                    async move { command.query_async::<T>(&mut conn).await }
                });
                futures_util::future::try_join_all(calls).await
            }
        }
    }
}

impl Redis {
    /// Waits until `replicas` replicas have every write this connection made to the
    /// master of `key`'s slot, at most `timeout_ms`; answers how many confirmed (`WAIT`,
    /// on the same connection as the writes: the node's connection on a cluster).
    pub async fn wait_replicas(
        &self,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisResult<u64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        match self {
            Self::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let reply = conn.clone().route_command(wait, to).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            _ => wait.query_async(&mut self.clone()).await,
        }
    }

    /// The keys matching `pattern`, by SCAN (on every master of a cluster).
    pub async fn scan_match(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let masters = match self {
            Self::Single(_) | Self::Direct(_) => vec![None],
            Self::Cluster(_) => self.masters().await?.into_iter().map(Some).collect(),
        };
        let mut found = Vec::new();
        for master in masters {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1_000);
                let (next, keys): (u64, Vec<String>) = match (self, &master) {
                    (Self::Cluster(conn), Some((host, port))) => {
                        let to = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        let reply = conn
                            .clone()
                            .route_command(scan, RoutingInfo::SingleNode(to))
                            .await?;
                        redis::from_redis_value(reply)?
                    }
                    _ => scan.query_async(&mut self.clone()).await?,
                };
                found.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }

    /// A cluster's masters (`host`, `port`), as `CLUSTER NODES` lists them.
    async fn masters(&self) -> RedisResult<Vec<(String, u16)>> {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut self.clone())
            .await?;
        Ok(nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags = fields.get(2)?;
                if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                    return None;
                }
                // `host:port@cport`
                let address = fields.get(1)?.split('@').next()?;
                let (host, port) = address.rsplit_once(':')?;
                Some((host.to_owned(), port.parse().ok()?))
            })
            .collect())
    }
}

/// How team events are published: `PUBLISH` on one server, `SPUBLISH` on a cluster.
pub fn publish_command(cluster: bool) -> &'static str {
    if cluster { "SPUBLISH" } else { "PUBLISH" }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Direct(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Direct(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Direct(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
