//! Reading the ingest streams through the consumer group: new entries, this consumer's own
//! pending entries after a restart, entries claimed from dead consumers, and acks.

use std::time::Duration;

use anyhow::Context;
use redis::AsyncCommands;
use std::collections::HashMap;

use redis::streams::{
    StreamAutoClaimReply, StreamInfoGroupsReply, StreamPendingReply, StreamReadOptions,
};
use teamchat_shared::config::{Timeouts, WorkerConfig};
use teamchat_shared::event::{self, StreamEvent};
use teamchat_shared::redis_conn::Redis;

/// One ingest entry: where it came from, and the event or why it could not be decoded.
#[derive(Debug)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    pub event: Result<StreamEvent, String>,
    /// The raw fields as read, for the dead letters.
    pub fields: Vec<(String, Vec<u8>)>,
    /// For an event that cannot be decoded, its team and offset if those can: a dead letter
    /// still counts as synced, or the team's watermark would stop at it for good.
    pub position: Option<(String, u64)>,
    /// How often the group delivered this entry (1 for a new one).
    pub deliveries: u64,
}

/// Entries kept in each dead-letter stream (the table keeps them all).
const DEAD_LETTER_STREAM_MAXLEN: usize = 10_000;

/// How much longer than a blocking read's wait a reply may take (trims and claims of a
/// large backlog included) before the connection is taken for dead.
const REPLY_GRACE: Duration = Duration::from_secs(5);

pub struct Ingest {
    keys: teamchat_shared::keys::Keys,
    /// Blocking reads get a connection of their own, whose replies may take up to
    /// `BATCH_WAIT_MS` (plus `REPLY_GRACE`).
    blocking: Redis,
    streams: Vec<String>,
    group: String,
    consumer: String,
    batch_size: usize,
    wait: Duration,
    claim_idle_ms: u64,
}

impl Ingest {
    pub async fn connect(config: &WorkerConfig) -> anyhow::Result<Self> {
        // A blocking read answers within BATCH_WAIT_MS. A reply much later means the
        // connection is half open (Redis's host went away without a reset): the read
        // fails, and the worker connects again instead of waiting for ever.
        let wait = Duration::from_millis(config.batch_wait_ms);
        let timeouts = Timeouts {
            connect: REPLY_GRACE,
            response: Some(wait + REPLY_GRACE),
            retries: None,
        };
        let blocking = config
            .redis
            .connect_direct(timeouts)
            .await
            .context("connecting to Redis")?;
        Ok(Self {
            keys: config.redis.keys(),
            blocking,
            streams: config.redis.keys().all_ingest(),
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            batch_size: config.batch_size.max(1),
            wait: Duration::from_millis(config.batch_wait_ms),
            claim_idle_ms: config.claim_idle_ms,
        })
    }

    /// Creates the consumer group on every ingest stream (and the stream) if missing.
    pub async fn ensure_groups(&mut self) -> anyhow::Result<()> {
        for stream in &self.streams {
            let created: redis::RedisResult<()> = self
                .blocking
                .xgroup_create_mkstream(stream, &self.group, "0")
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e).context("creating the consumer group"),
            }
        }
        Ok(())
    }

    /// New entries, waiting up to `batch_wait_ms` for the first.
    pub async fn read_new(&mut self) -> anyhow::Result<Vec<Entry>> {
        if self.blocking.is_cluster() {
            let entries = self.read_each_shard(">").await?;
            if entries.is_empty() {
                tokio::time::sleep(self.wait).await;
            }
            return Ok(entries);
        }
        let ids = vec![">"; self.streams.len()];
        let options = StreamReadOptions::default()
            .group(&self.group, &self.consumer)
            .count(self.batch_size)
            .block(self.wait.as_millis() as usize);
        let reply: redis::Value = self
            .blocking
            .xread_options(&self.streams, &ids, &options)
            .await?;
        read_reply(reply)
    }

    /// On a cluster, where one read cannot span the shards' slots: each shard's stream
    /// read at once, without blocking (`read_new` waits `BATCH_WAIT_MS` when all were
    /// empty).
    async fn read_each_shard(&mut self, id: &str) -> anyhow::Result<Vec<Entry>> {
        let reads = self.streams.iter().map(|stream| {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(self.batch_size)
                .arg("STREAMS")
                .arg(stream)
                .arg(id);
            read
        });
        let replies: Vec<redis::Value> = self.blocking.each(reads.collect()).await?;
        let mut entries = Vec::new();
        for reply in replies {
            entries.extend(read_reply(reply)?);
        }
        Ok(entries)
    }

    /// Entries delivered to this consumer but never acked (it crashed before COMMIT).
    pub async fn read_own_pending(&mut self) -> anyhow::Result<Vec<Entry>> {
        let mut entries = if self.blocking.is_cluster() {
            self.read_each_shard("0").await?
        } else {
            let ids = vec!["0"; self.streams.len()];
            let options = StreamReadOptions::default()
                .group(&self.group, &self.consumer)
                .count(self.batch_size);
            let reply: redis::Value = self
                .blocking
                .xread_options(&self.streams, &ids, &options)
                .await?;
            read_reply(reply)?
        };
        self.count_deliveries(&mut entries).await?;
        Ok(entries)
    }

    /// Fills in how often each (re)delivered entry was delivered, from XPENDING.
    async fn count_deliveries(&mut self, entries: &mut [Entry]) -> anyhow::Result<()> {
        let mut by_stream: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            by_stream.entry(entry.stream.clone()).or_default().push(i);
        }
        for (stream, indexes) in by_stream {
            let ids: Vec<&str> = indexes.iter().map(|i| entries[*i].id.as_str()).collect();
            let (first, last) = (
                ids.iter().min().unwrap().to_string(),
                ids.iter().max().unwrap().to_string(),
            );
            let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(&self.group)
                .arg(first)
                .arg(last)
                .arg(ids.len().max(self.batch_size))
                .arg(&self.consumer)
                .query_async(&mut self.blocking)
                .await?;
            let counts: HashMap<String, u64> =
                pending.into_iter().map(|(id, _, _, n)| (id, n)).collect();
            for i in indexes {
                entries[i].deliveries = counts.get(&entries[i].id).copied().unwrap_or(1);
            }
        }
        Ok(())
    }

    /// Trims each ingest stream behind what the group has acknowledged, so Redis holds only
    /// what is pending or not yet read.
    /// Returns how many entries are pending (delivered, not acked) over all streams.
    pub async fn trim_acked(&mut self) -> anyhow::Result<u64> {
        let mut pending_total = 0;
        for stream in &self.streams {
            let groups: StreamInfoGroupsReply = self.blocking.xinfo_groups(stream).await?;
            let Some(group) = groups.groups.iter().find(|g| g.name == self.group) else {
                continue;
            };
            let pending: StreamPendingReply = self.blocking.xpending(stream, &self.group).await?;
            let keep_from = match pending {
                StreamPendingReply::Data(data) => {
                    pending_total += data.count as u64;
                    data.start_id
                }
                _ => group.last_delivered_id.clone(),
            };
            redis::cmd("XTRIM")
                .arg(stream)
                .arg("MINID")
                .arg("~")
                .arg(keep_from)
                .query_async::<i64>(&mut self.blocking)
                .await?;
        }
        Ok(pending_total)
    }

    /// The credits counted by the append script on every shard (each shard's `#total`).
    pub async fn credit_total(&mut self) -> anyhow::Result<i64> {
        let reads = (0..self.keys.shards()).map(|shard| {
            let mut read = redis::cmd("HGET");
            read.arg(self.keys.user_credits(shard)).arg("#total");
            read
        });
        let totals: Vec<Option<i64>> = self.blocking.each(reads.collect()).await?;
        Ok(totals.into_iter().flatten().sum())
    }

    /// Takes over entries pending on other consumers for longer than `claim_idle_ms`.
    pub async fn claim_idle(&mut self) -> anyhow::Result<Vec<Entry>> {
        let mut claimed = Vec::new();
        for stream in &self.streams {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.claim_idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(self.batch_size)
                .query_async(&mut self.blocking)
                .await?;
            claimed.extend(reply.claimed.into_iter().map(|entry| {
                let fields = event::entry_fields(&entry.map)
                    .map(|(name, value)| (name.to_owned(), value.to_vec()))
                    .collect();
                decode(stream, entry.id, fields)
            }));
        }
        self.count_deliveries(&mut claimed).await?;
        Ok(claimed)
    }

    /// Copies dead-lettered entries to their shard's dead-letter stream (`…:dead`, capped),
    /// where operators can watch them besides the `dead_letters` table.
    pub async fn publish_dead_letters(&mut self, dead: &[(&Entry, String)]) -> anyhow::Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut adds = Vec::with_capacity(dead.len());
        for (entry, error) in dead {
            let key = format!("{}:dead", entry.stream.trim_end_matches(":ingest"));
            let fields = entry.fields_json().to_string();
            let mut add = redis::cmd("XADD");
            add.arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_LETTER_STREAM_MAXLEN)
                .arg("*")
                .arg(&[
                    ("entry", entry.id.as_str()),
                    ("error", error.as_str()),
                    ("fields", fields.as_str()),
                ]);
            adds.push(add);
        }
        self.blocking.each::<redis::Value>(adds).await?;
        Ok(())
    }

    /// Acknowledges entries once their batch is committed.
    pub async fn ack(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        // One XACK per stream, with all its ids.
        let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
        for entry in entries {
            by_stream
                .entry(entry.stream.as_str())
                .or_default()
                .push(entry.id.as_str());
        }
        let acks = by_stream.into_iter().map(|(stream, ids)| {
            let mut ack = redis::cmd("XACK");
            ack.arg(stream).arg(&self.group).arg(ids);
            ack
        });
        self.blocking.each::<redis::Value>(acks.collect()).await?;
        Ok(())
    }
}

impl Entry {
    /// The raw fields as a JSON object (values as text), as dead letters keep them.
    pub fn fields_json(&self) -> serde_json::Value {
        self.fields
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value).into_owned();
                (name.clone(), serde_json::Value::from(value))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// The entries of an XREADGROUP reply (`[[stream, [[id, [field, value, …]], …]], …]`, or
/// a map of streams under RESP3), taken apart without copying the values: this is the
/// worker's hottest loop after PostgreSQL.
fn read_reply(reply: redis::Value) -> anyhow::Result<Vec<Entry>> {
    use redis::Value;
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) => <[Value; 2]>::try_from(pair).ok().map(|[k, v]| (k, v)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>(),
        Value::Map(streams) => Some(streams),
        _ => None,
    }
    .context("XREADGROUP reply: streams")?;
    let mut entries = Vec::new();
    for (stream, stream_entries) in streams {
        let stream = text(stream).context("XREADGROUP reply: stream name")?;
        let Value::Array(stream_entries) = stream_entries else {
            anyhow::bail!("XREADGROUP reply: entries of {stream}");
        };
        entries.reserve(stream_entries.len());
        for entry in stream_entries {
            let Value::Array(entry) = entry else {
                anyhow::bail!("XREADGROUP reply: an entry of {stream}");
            };
            let Ok([id, fields]) = <[Value; 2]>::try_from(entry) else {
                anyhow::bail!("XREADGROUP reply: an entry of {stream}");
            };
            let id = text(id).context("XREADGROUP reply: entry id")?;
            let fields = match fields {
                Value::Array(flat) => {
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        if let (Some(name), Some(value)) = (text(name), bytes(value)) {
                            pairs.push((name, value));
                        }
                    }
                    pairs
                }
                Value::Map(map) => map
                    .into_iter()
                    .filter_map(|(name, value)| Some((text(name)?, bytes(value)?)))
                    .collect(),
                // An entry deleted while pending reads back without fields.
                _ => Vec::new(),
            };
            entries.push(decode(&stream, id, fields));
        }
    }
    Ok(entries)
}

fn bytes(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

fn text(value: redis::Value) -> Option<String> {
    String::from_utf8(bytes(value)?).ok()
}

fn decode(stream: &str, id: String, fields: Vec<(String, Vec<u8>)>) -> Entry {
    let pairs = || fields.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
    let event = event::from_fields(None, None, pairs()).map_err(|e| e.to_string());
    // Only an entry that cannot be decoded needs its position read on its own.
    let position = match &event {
        Ok(_) => None,
        Err(_) => {
            let field = |name: &str| {
                pairs()
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| std::str::from_utf8(v).ok())
            };
            field("team")
                .zip(field("off").and_then(|off| off.parse().ok()))
                .map(|(team, off)| (team.to_owned(), off))
        }
    };
    Entry {
        stream: stream.to_owned(),
        id,
        event,
        fields,
        position,
        deliveries: 1,
    }
}
