//! Group commit of durable events: appends queue per shard, and one task per shard sends
//! whatever queued while its previous call was in flight as the next call of the append
//! script (`shared/scripts/append.lua`, a batch of events in, a batch of answers out). The
//! script's entry, its arguments' parsing, the round trip and the AOF write are paid per
//! batch; nothing waits for a batch to fill, so at light load a batch is one event. All
//! of a shard's keys share its hash tag, so a batch stays on one cluster slot.

use redis::{RedisError, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

use teamchat_shared::append::{ScriptSender, script_answer, script_call};
use teamchat_shared::metrics as m;
use teamchat_shared::redis_conn::Redis;

/// One event's keys and arguments (9 and 20, in the script's order) and where its answer
/// goes.
struct Job {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
    answer: oneshot::Sender<RedisResult<Vec<String>>>,
}

/// How many replicas must confirm a batch before its senders are answered
/// (`REDIS_WAIT_REPLICAS`), and how long they may take.
#[derive(Clone, Copy, Debug)]
pub struct Replicas {
    pub count: u32,
    pub timeout_ms: u64,
}

/// The per-shard queues; the tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct Appender {
    shards: std::sync::Arc<[mpsc::UnboundedSender<Job>]>,
}

impl Appender {
    /// Starts one task per shard on `conn` (on the current runtime), each sending up to
    /// `max_batch` events per call (`APPEND_BATCH_MAX`: the script runs them one after the
    /// other and Redis serves nothing else meanwhile, ≈ 45 µs a message).
    pub fn start(conn: &Redis, shards: u32, max_batch: usize, replicas: Option<Replicas>) -> Self {
        let shards = (0..shards)
            .map(|_| {
                let (queue, jobs) = mpsc::unbounded_channel();
                tokio::spawn(run(conn.clone(), jobs, max_batch.max(1), replicas));
                queue
            })
            .collect();
        Self { shards }
    }
}

/// Appends one event of `shard` (its 10 keys and 20 arguments) in the shard's next batch
/// and returns the script's answer for it.
impl ScriptSender for Appender {
    async fn send(
        &self,
        shard: u32,
        keys: Vec<String>,
        args: Vec<Vec<u8>>,
    ) -> RedisResult<Vec<String>> {
        let (answer, answered) = oneshot::channel();
        self.shards[shard as usize]
            .send(Job { keys, args, answer })
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Sends a shard's queued events, a batch per call, in the order they queued.
async fn run(
    mut conn: Redis,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    replicas: Option<Replicas>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while jobs.recv_many(&mut batch, max_batch).await > 0 {
        metrics::histogram!(m::APPEND_BATCH).record(batch.len() as f64);
        let call = script_call(
            batch
                .iter()
                .map(|job| (job.keys.as_slice(), job.args.as_slice())),
        );
        let mut answers: RedisResult<Vec<Value>> = call.invoke_async(&mut conn).await;
        // Held until the replicas have the batch: an ack then survives the master's loss.
        if let (Ok(_), Some(replicas)) = (&answers, replicas)
            && let Err(e) = replicated(&conn, &batch[0].keys[0], replicas).await
        {
            metrics::counter!(m::APPEND_UNREPLICATED).increment(1);
            answers = Err(e);
        }
        match answers {
            Ok(answers) if answers.len() == batch.len() => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    let _ = job.answer.send(script_answer(answer));
                }
            }
            Ok(_) => {
                for job in batch.drain(..) {
                    let _ = job.answer.send(Err(unexpected("one answer per event")));
                }
            }
            // None, some or all of the batch may have been written (a lost connection, or
            // a command failing mid-script stops it after the events before): each sender
            // is told `unavailable` and retries, as a lost reply made it before batching
            // (a repeated client_id gets its first ack).
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.answer.send(Err(RedisError::from((
                        e.kind(),
                        "append script call failed",
                        e.to_string(),
                    ))));
                }
            }
        }
    }
}

fn unexpected(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

/// Waits for `replicas` to confirm what this connection wrote to the master of `key`'s
/// slot; an error when fewer did in time (the batch is written, perhaps not replicated).
async fn replicated(conn: &Redis, key: &str, replicas: Replicas) -> RedisResult<()> {
    let confirmed = conn
        .wait_replicas(key, replicas.count, replicas.timeout_ms)
        .await?;
    if confirmed < u64::from(replicas.count) {
        return Err(RedisError::from((
            redis::ErrorKind::Io,
            "append not replicated in time",
            format!("{confirmed} of {} replicas confirmed", replicas.count),
        )));
    }
    Ok(())
}

/// The shard's task is gone: the gateway is shutting down.
fn stopped() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "append queue closed"))
}
