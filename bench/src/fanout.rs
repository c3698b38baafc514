//! Fan-out: rooms × members spread over two gateways, one sender per room at a fixed
//! offered rate; deliveries, delivery ratio, end-to-end latency (sender timestamp in
//! `meta`), the sender's ack latency, CPU of each process, and beside them the round trips
//! of a bare Redis `PING` and of a protocol `ping` to the senders' gateway in the same
//! window: the floors under the hops a message crosses on this machine. Step mode raises
//! the rate until p99 ≥ 100 ms or fewer than 99.9 % of deliveries arrive. With `--server`,
//! the same load and measurement drive a comparison peer instead (bench/peers: Socket.IO
//! and socketioxide, spoken to through `socketio_client`).
//!
//! One file for the scenario (its load, its probes and its row of the report), which
//! reads as one piece; hence its length.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, SplitSink};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Writes, Ws};
use crate::report::{Row, round};
use crate::socketio_client::{self, Incoming};
use crate::stack::{self, CpuMeter, Server, StackArgs};

/// A room's sending connection, shared by its pacing task and, for a peer, the reader
/// that answers the server's Engine.IO pings on it.
type Sender = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 1_000)]
    pub rooms: usize,
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Offered message rates to run, in messages per second over all rooms.
    #[arg(long, value_delimiter = ',', default_value = "500,2000,5000,10000")]
    pub rates: Vec<u64>,
    /// How long each rate is offered.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Stop at the first rate that misses p99 < 100 ms with ≥ 99.9 % delivered.
    #[arg(long)]
    pub step: bool,
    /// How the receivers connect: WebSocket, or one of the HTTP fallbacks (the senders
    /// stay on WebSocket).
    #[arg(long, value_enum, default_value = "websocket")]
    pub receivers: Receivers,
    /// The size of each message's body, in bytes of text (0: a short greeting). At 1 KiB
    /// and more, `websocket-deflate` receivers get it compressed.
    #[arg(long, default_value_t = 0)]
    pub body_bytes: usize,
    /// What the senders send: messages, or a reaction storm (each room's sender adds and
    /// takes back reactions on the room's one message, every one a durable event).
    #[arg(long, value_enum, default_value = "messages")]
    pub send: Sends,
    /// Run a worker syncing into PostgreSQL beside the gateways, and measure the whole
    /// stack's CPU per message: gateways, Redis, the worker and PostgreSQL (the server
    /// `DATABASE_URL` reaches, which must run on this machine).
    #[arg(long)]
    pub worker: bool,
    /// The server under test: teamchat, or a comparison peer from bench/peers driven with
    /// the same schedule and measured the same way (two processes of it on the one Redis;
    /// WebSocket receivers and messages only).
    #[arg(long, value_enum, default_value = "teamchat")]
    pub server: Server,
    /// A peer's program instead of the one built in bench/peers: the socketioxide binary,
    /// or the Node server's script for socketio.
    #[arg(long)]
    pub peer_bin: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// What the senders send.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sends {
    Messages,
    Reactions,
}

/// The receivers' transport.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receivers {
    Websocket,
    /// WebSocket with permessage-deflate negotiated (the gateways run with `WS_DEFLATE`).
    WebsocketDeflate,
    Sse,
    Polling,
}

/// A joined receiver or sender, by transport.
enum Joined {
    // Boxed: a wss:// stream holds its TLS session.
    Ws(Box<Ws>),
    Deflate(Box<crate::deflate_client::DeflateWs>),
    Sse(teamchat_testkit::http_session::Sse),
    Poll(teamchat_testkit::http_session::Poll),
}

/// What one offered rate (a window) saw.
struct Window {
    delivered: AtomicU64,
    acked: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    ack_us: Mutex<Histogram<u64>>,
}

impl Window {
    fn new() -> Self {
        Window {
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            latency_us: Mutex::new(histogram()),
            ack_us: Mutex::new(histogram()),
        }
    }
}

/// Microseconds from 1 to 10 minutes, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

pub async fn run(args: &FanoutArgs) -> anyhow::Result<Vec<Row>> {
    if args.stack.tls && !matches!(args.receivers, Receivers::Websocket) {
        anyhow::bail!("--tls measures WebSocket receivers only");
    }
    if args.send == Sends::Reactions && args.receivers != Receivers::Websocket {
        anyhow::bail!("--send reactions measures WebSocket receivers only");
    }
    let peer = args.server != Server::Teamchat;
    if peer {
        refuse_for_peers(args)?;
    }
    let mut stack_args = args.stack.clone();
    stack_args.deflate |= args.receivers == Receivers::WebsocketDeflate;
    let (gateways, prefix) = match args.server {
        Server::Teamchat => stack::start_gateways(&stack_args, 2).await?,
        server => stack::start_peers(&args.stack, server, args.peer_bin.as_deref(), 2).await?,
    };
    // Ack ids to a peer carry their send time from here (see `peer_ack_id`).
    let base_us = now_us();
    let mut processes = vec![
        ("gateway 1".to_owned(), gateways[0].pid),
        ("gateway 2".to_owned(), gateways[1].pid),
    ];
    processes.extend(stack::redis_pids(&args.stack).await?);
    let worker = match args.worker {
        true => Some(stack::start_worker(&args.stack, &prefix).await?),
        false => None,
    };
    if let Some(worker) = &worker {
        processes.push(("worker".to_owned(), worker.pid));
        processes.push((
            "postgres".to_owned(),
            stack::postgres_pid(&args.stack).await?,
        ));
    }
    processes.push(("generator".to_owned(), std::process::id()));
    let windows: Arc<Vec<Window>> = Arc::new(args.rates.iter().map(|_| Window::new()).collect());
    let frames = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(Closed::default());

    // Member m of room r is on gateway m % 2; member 0 sends, so half the receivers are
    // on the other gateway.
    let addrs: Vec<_> = gateways.iter().map(|g| g.addr).collect();
    let connections = args.rooms * args.members;
    let setup = Instant::now();
    // The sending connection of each room, by room number.
    let mut senders: Vec<Option<Sender>> = (0..args.rooms).map(|_| None).collect();
    let mut readers = tokio::task::JoinSet::new();
    let mut joined = stream::iter(0..connections)
        .map(|n| {
            let (room, member) = (n / args.members, n % args.members);
            let gateway = addrs[member % 2];
            let receivers = args.receivers;
            let reactions = args.send == Sends::Reactions;
            async move {
                let team = format!("room{room}");
                if peer {
                    let ws = peer_joined(gateway, client::source_ip(n), &team).await?;
                    return anyhow::Ok((room, member, Joined::Ws(Box::new(ws))));
                }
                let token = client::token(&format!("u{room}m{member}"), &[&team]);
                let joined = match receivers {
                    _ if member == 0 => None,
                    Receivers::Websocket => None,
                    Receivers::WebsocketDeflate => {
                        let ws = crate::deflate_client::connect(
                            gateway,
                            client::source_ip(n),
                            &token,
                            &team,
                        )
                        .await?;
                        Some(Joined::Deflate(Box::new(ws)))
                    }
                    Receivers::Sse => {
                        let query = format!("teams={team}");
                        let mut sse =
                            teamchat_testkit::http_session::sse(gateway, &token, &query, &[])
                                .await
                                .map_err(|(status, body)| {
                                    anyhow::anyhow!("SSE refused: {status} {body}")
                                })?;
                        sse.expect("room:joined").await;
                        sse.expect("receipt:list").await;
                        Some(Joined::Sse(sse))
                    }
                    Receivers::Polling => {
                        let teams = [team.as_str()];
                        let mut poll =
                            teamchat_testkit::http_session::poll_open(gateway, &token, &teams, &[])
                                .await
                                .map_err(|(status, body)| {
                                    anyhow::anyhow!("poll refused: {status} {body}")
                                })?;
                        poll.expect("room:joined").await;
                        poll.expect("receipt:list").await;
                        Some(Joined::Poll(poll))
                    }
                };
                let joined = match joined {
                    Some(joined) => joined,
                    None => {
                        let mut ws = client::connect(gateway, client::source_ip(n), &token).await?;
                        client::join(&mut ws, &team, None).await?;
                        if reactions && member == 0 {
                            // The message the storm reacts to: seq 1 of the room.
                            let frame = json!({"type": "message:send", "team": team,
                                "client_id": "storm", "body": "react to me"});
                            ws.send(Message::text(frame.to_string())).await?;
                            client::next_of(&mut ws, "message:ack").await?;
                        }
                        Joined::Ws(Box::new(ws))
                    }
                };
                anyhow::Ok((room, member, joined))
            }
        })
        .buffer_unordered(256);
    while let Some(result) = joined.next().await {
        let (room, member, joined) = result?;
        let windows = windows.clone();
        let frames = frames.clone();
        let closed = closed.clone();
        match joined {
            Joined::Ws(ws) if peer => {
                if member == 0 {
                    let (sink, reader) = (*ws).split();
                    let sink = Arc::new(tokio::sync::Mutex::new(sink));
                    senders[room] = Some(sink.clone());
                    readers.spawn(read_peer_acks(reader, sink, windows, base_us));
                } else {
                    readers.spawn(read_peer_deliveries(*ws, windows, frames, closed));
                }
            }
            Joined::Ws(ws) => {
                let (sink, reader) = (*ws).split();
                if member == 0 {
                    senders[room] = Some(Arc::new(tokio::sync::Mutex::new(sink)));
                    readers.spawn(read_acks(reader, windows));
                } else {
                    readers.spawn(read_deliveries(reader, windows, frames, closed));
                }
            }
            Joined::Deflate(ws) => {
                readers.spawn(read_deflated_deliveries(*ws, windows, frames, closed));
            }
            Joined::Sse(sse) => {
                readers.spawn(read_sse_deliveries(sse, windows, frames, closed));
            }
            Joined::Poll(poll) => {
                readers.spawn(read_polled_deliveries(poll, windows, frames, closed));
            }
        }
    }
    let senders: Vec<Sender> = senders
        .into_iter()
        .map(|sender| sender.expect("every room has a sender"))
        .collect();
    // Joins cause presence updates to every member (quadratic in a large room): measure
    // only once they have all arrived.
    quiet(&frames).await;
    eprintln!(
        "fanout: {connections} connections joined and settled in {:.1} s{}",
        setup.elapsed().as_secs_f64(),
        closed.describe()
    );

    // The probers: a Redis connection and a connection to the senders' gateway (a peer
    // has no protocol ping to probe it with).
    // No response timeout: a slow PING is what it measures, not a failure.
    let no_timeout = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut redis_prober = Some(
        teamchat_shared::config::redis_client(args.stack.first_redis_url())?
            .get_multiplexed_async_connection_with_config(&no_timeout)
            .await?,
    );
    let mut gateway_prober = match peer {
        true => None,
        false => {
            let token = client::token("prober", &[]);
            Some(client::connect(addrs[0], client::source_ip(connections), &token).await?)
        }
    };

    let mut rows = Vec::new();
    for (w, &rate) in args.rates.iter().enumerate() {
        let meter = CpuMeter::start(&processes);
        // (The gateways' own figures, from their /metrics: none from a peer.)
        let appends_before = match peer {
            true => None,
            false => append_seconds(addrs[0]).await,
        };
        let writes_before = match peer {
            true => None,
            false => Writes::read(&addrs).await,
        };
        let mut redis = redis_prober.take().expect("returned");
        let rewrites_before = aof_rewrites(&mut redis).await;
        let redis_pings = Pings::start(redis, redis_ping);
        let gateway_pings = gateway_prober
            .take()
            .map(|ws| Pings::start(ws, gateway_ping));
        let started = Instant::now();
        // One pacing task per room; each sends rate / rooms messages per second.
        let per_room = rate as f64 / args.rooms as f64;
        let total_per_room = (per_room * args.seconds as f64).round() as u64;
        let mut tasks = Vec::new();
        let body: Arc<str> = message_body(args.body_bytes).into();
        let sends = args.send;
        for (room, sender) in senders.iter().enumerate() {
            let sender = sender.clone();
            let body = body.clone();
            let team = format!("room{room}");
            let period = Duration::from_secs_f64(1.0 / per_room.max(1e-9));
            let phase = period.mul_f64(room as f64 / args.rooms as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                let mut tick = tokio::time::interval(period);
                let mut sent = 0u64;
                let mut emoji = String::new();
                for n in 0..total_per_room {
                    tick.tick().await;
                    // The send time in the client id too: the ack echoes it.
                    let sent_us = now_us();
                    let message = match sends {
                        // The same message to a peer, as a Socket.IO event with an ack id.
                        Sends::Messages if peer => {
                            let payload = json!({"team": team,
                                "client_id": format!("w{w}n{n}t{sent_us}"), "body": &*body,
                                "meta": {"sent_us": sent_us, "w": w}});
                            let id = peer_ack_id(w, sent_us, base_us);
                            socketio_client::emit("message:send", &payload, Some(id))
                        }
                        Sends::Messages => Message::text(
                            json!({"type": "message:send", "team": team,
                                "client_id": format!("w{w}n{n}t{sent_us}"), "body": &*body,
                                "meta": {"sent_us": sent_us, "w": w}})
                            .to_string(),
                        ),
                        // An add and its removal in turn, the emoji naming the window and
                        // the add's send time (at most one emoji stands at a time).
                        Sends::Reactions => {
                            if n % 2 == 0 {
                                emoji = format!("w{w}t{sent_us}");
                            }
                            let kind = if n % 2 == 0 {
                                "reaction:add"
                            } else {
                                "reaction:remove"
                            };
                            Message::text(
                                json!({"type": kind, "team": team, "seq": 1, "emoji": emoji,
                                    "rid": format!("w{w}t{sent_us}")})
                                .to_string(),
                            )
                        }
                    };
                    // Locked per send: between two, a peer's ack reader may answer a ping.
                    if sender.lock().await.send(message).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
                sent
            }));
        }
        let mut sent = 0;
        for task in tasks {
            sent += task.await?;
        }
        let send_time = started.elapsed();
        let expected = sent * (args.members as u64 - 1);
        let window = &windows[w];
        wait_settled(&window.delivered, expected).await;
        let cpu = meter.elapsed();
        let (mut redis, redis_rtt) = redis_pings.stop().await?;
        let rewrites = match (rewrites_before, aof_rewrites(&mut redis).await) {
            // A Redis restarted in the window counts from 0 again: no figure then.
            (Some(before), Some(after)) if after >= before => (after - before).into(),
            _ => serde_json::Value::Null,
        };
        redis_prober = Some(redis);
        let gateway_rtt = match gateway_pings {
            Some(pings) => {
                let (ws, rtt) = pings.stop().await?;
                gateway_prober = Some(ws);
                rtt
            }
            // Empty: null figures.
            None => histogram(),
        };
        let appends_after = match peer {
            true => None,
            false => append_seconds(addrs[0]).await,
        };
        let append_mean_ms = match (appends_before, appends_after) {
            (Some((sum0, n0)), Some((sum1, n1))) if n1 > n0 => {
                round((sum1 - sum0) * 1e3 / (n1 - n0) as f64, 2).into()
            }
            _ => serde_json::Value::Null,
        };
        let writes_after = match peer {
            true => None,
            false => Writes::read(&addrs).await,
        };
        let frames_per_write = match Writes::between(writes_before, writes_after) {
            Some(w) if w.writes > 0.0 => round(w.frames / w.writes, 2).into(),
            _ => serde_json::Value::Null,
        };
        let delivered = window.delivered.load(Ordering::Relaxed);
        let histogram = window.latency_us.lock().unwrap().clone();
        let acks = window.ack_us.lock().unwrap().clone();
        let ms = |q: f64| round(histogram.value_at_quantile(q) as f64 / 1000.0, 2);
        // Null when nothing was measured (no ack, a prober's connection gone).
        let ms_of = |h: &Histogram<u64>, q: f64| -> serde_json::Value {
            match h.is_empty() {
                true => serde_json::Value::Null,
                false => round(h.value_at_quantile(q) as f64 / 1000.0, 2).into(),
            }
        };
        let ratio = delivered as f64 / expected.max(1) as f64;
        let p99_ms = ms(0.99);
        let gateway_cpu: f64 = cpu.iter().take(2).map(|(_, secs, _)| secs).sum();
        let receivers = match args.receivers {
            Receivers::Websocket => "websocket",
            Receivers::WebsocketDeflate => "websocket-deflate",
            Receivers::Sse => "sse",
            Receivers::Polling => "polling",
        };
        let sends = match args.send {
            Sends::Messages => "messages",
            Sends::Reactions => "reactions",
        };
        let mut row = Row::new()
            .with("server", args.server.name())
            .with("sends", sends)
            .with("receivers", receivers)
            .with("rooms", args.rooms)
            .with("members", args.members)
            .with("body bytes", args.body_bytes)
            .with("offered msg/s", rate)
            .with(
                "sent msg/s",
                round(sent as f64 / send_time.as_secs_f64(), 0),
            )
            .with("acked", window.acked.load(Ordering::Relaxed))
            .with(
                "deliveries/s",
                round(delivered as f64 / send_time.as_secs_f64(), 0),
            )
            .with("delivered %", round(100.0 * ratio, 3))
            .with("receivers closed", closed.count())
            .with("p50 ms", ms(0.5))
            .with("p99 ms", p99_ms)
            .with("p99.9 ms", ms(0.999))
            .with("ack p50 ms", ms_of(&acks, 0.5))
            .with("ack p99 ms", ms_of(&acks, 0.99))
            .with("gateway append mean ms", append_mean_ms)
            .with("gateway ping p50 ms", ms_of(&gateway_rtt, 0.5))
            .with("redis ping p50 ms", ms_of(&redis_rtt, 0.5))
            .with("redis ping p99 ms", ms_of(&redis_rtt, 0.99))
            .with("redis AOF rewrites", rewrites)
            .with("frames per socket write", frames_per_write)
            .with(
                "gateway µs/delivery",
                round(gateway_cpu * 1e6 / delivered.max(1) as f64, 2),
            );
        // Redis: one server, or a cluster's masters (their sum, and per master).
        let redis: Vec<(f64, f64)> = cpu
            .iter()
            .filter(|(name, _, _)| name.starts_with("redis"))
            .map(|(_, secs, share)| (*secs, *share))
            .collect();
        let masters = redis.len().max(1) as f64;
        row = row
            .with("redis masters", redis.len())
            .with(
                "redis CPU %",
                round(redis.iter().map(|(_, s)| s).sum::<f64>() * 100.0, 0),
            )
            .with(
                "redis CPU % per master",
                round(
                    redis.iter().map(|(_, s)| s).sum::<f64>() * 100.0 / masters,
                    0,
                ),
            )
            .with(
                "redis µs/message per master",
                round(
                    redis.iter().map(|(secs, _)| secs).sum::<f64>() * 1e6
                        / masters
                        / sent.max(1) as f64,
                    1,
                ),
            );
        for (name, _, share) in &cpu {
            let column: &'static str = match name.as_str() {
                "gateway 1" => "gateway 1 CPU %",
                "gateway 2" => "gateway 2 CPU %",
                "worker" => "worker CPU %",
                "postgres" => "postgres CPU %",
                "generator" => "generator CPU %",
                _ => continue,
            };
            row = row.with(column, round(share * 100.0, 0));
        }
        if peer {
            // No worker and no PostgreSQL beside a peer: its stack is itself and Redis.
            row = row
                .with("worker CPU %", serde_json::Value::Null)
                .with("postgres CPU %", serde_json::Value::Null);
        }
        if args.worker || peer {
            // Everything but the load generator, per message sent.
            let stack_cpu: f64 = cpu
                .iter()
                .filter(|(name, _, _)| name != "generator")
                .map(|(_, secs, _)| secs)
                .sum();
            row = row.with(
                "stack µs/message",
                round(stack_cpu * 1e6 / sent.max(1) as f64, 1),
            );
        }
        let passed = p99_ms < 100.0 && ratio >= 0.999;
        row = row.with("holds target", passed);
        eprintln!(
            "fanout: {rate} msg/s offered: {delivered} delivered ({:.3} %), p99 {p99_ms} ms{}",
            100.0 * ratio,
            closed.describe()
        );
        rows.push(row);
        if args.step && !passed {
            break;
        }
    }
    drop(senders);
    // The readers end before their gateways do (a poller would reconnect and fail).
    readers.abort_all();
    // Gone before the clean-up, so that nothing they wrote lands after it.
    for gateway in gateways {
        gateway.stop().await;
    }
    drop(worker);
    stack::clean_redis(&args.stack, &prefix).await?;
    Ok(rows)
}

/// What makes no sense for a peer (it has none of it) is refused, not silently ignored.
fn refuse_for_peers(args: &FanoutArgs) -> anyhow::Result<()> {
    let server = args.server.name();
    let refused = [
        (args.stack.tls, "--tls"),
        (args.stack.deflate, "--deflate"),
        (args.worker, "--worker"),
        (
            args.receivers != Receivers::Websocket,
            "--receivers other than websocket",
        ),
        (args.send != Sends::Messages, "--send reactions"),
        (args.stack.gateway_bin.is_some(), "--gateway-bin"),
        (
            !args.stack.redis_cluster_urls.is_empty(),
            "--redis-cluster-urls",
        ),
        (args.stack.wait_replicas > 0, "--wait-replicas"),
    ];
    if let Some((_, option)) = refused.iter().find(|(given, _)| *given) {
        anyhow::bail!(
            "{option} is for teamchat only: --server {server} measures plain WebSocket messages"
        );
    }
    if args.rates.len() > 1 << PEER_WINDOW_BITS {
        anyhow::bail!(
            "at most {} rates per run with a peer",
            1 << PEER_WINDOW_BITS
        );
    }
    Ok(())
}

/// Bits of a peer ack id that name the window (the rest is the send time).
const PEER_WINDOW_BITS: u32 = 10;

/// The ack id of a message to a peer: its window and its send time in µs since the run
/// started, what the ack's timing needs (the ack echoes only the id). Small enough to
/// stay exact in a JavaScript number (< 2^53) for years of run.
fn peer_ack_id(w: usize, sent_us: u64, base_us: u64) -> u64 {
    (sent_us.saturating_sub(base_us) << PEER_WINDOW_BITS) | w as u64
}

/// A connection to a peer joined to `team`, tried again when the handshake or the join
/// stalls: in a storm of 10,000 connects, a socketioxide run once left one unanswered for
/// minutes, hanging the run.
async fn peer_joined(
    server: std::net::SocketAddr,
    source: std::net::IpAddr,
    team: &str,
) -> anyhow::Result<Ws> {
    const ATTEMPTS: u32 = 3;
    for attempt in 1.. {
        let joined = tokio::time::timeout(Duration::from_secs(20), async {
            let mut ws = socketio_client::connect(server, source).await?;
            socketio_client::join(&mut ws, team).await?;
            anyhow::Ok(ws)
        })
        .await;
        match joined {
            Ok(Ok(ws)) => return Ok(ws),
            Ok(Err(e)) if attempt == ATTEMPTS => return Err(e),
            Err(_) if attempt == ATTEMPTS => {
                anyhow::bail!("no join to {server} within 20 s, {ATTEMPTS} times")
            }
            _ => eprintln!("fanout: a connection to {server} stalled; connecting again"),
        }
    }
    unreachable!("the loop returns by its last attempt")
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn read_deliveries(
    mut reader: futures_util::stream::SplitStream<Ws>,
    windows: Arc<Vec<Window>>,
    frames: Arc<AtomicU64>,
    closed: Arc<Closed>,
) {
    loop {
        match next_text(&mut reader).await {
            Ok(text) => counted(&text, &windows, &frames),
            Err(end) => return closed.record(end),
        }
    }
}

/// A data frame a WebSocket receiver got: counted, and timed if it is a measured
/// `message:new`. (Data frames only: heartbeat pings never stop, the join storm's chatter
/// does.)
fn counted(text: &str, windows: &[Window], frames: &AtomicU64) {
    frames.fetch_add(1, Ordering::Relaxed);
    if text.starts_with(r#"{"type":"reaction:"#) {
        // The emoji is w<window>t<the add's send time>: a removal is counted, not timed.
        const EMOJI: &str = r#""emoji":"w"#;
        let Some(at) = text.find(EMOJI) else {
            return;
        };
        let emoji = &text[at..];
        let Some(w) = client::number_after(emoji, EMOJI) else {
            return;
        };
        if text.starts_with(r#"{"type":"reaction:added""#) {
            if let Some(sent) = client::number_after(emoji, "t") {
                timed(windows, sent, w);
            }
        } else if let Some(window) = windows.get(w as usize) {
            window.delivered.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    if !text.starts_with(r#"{"type":"message:new""#) {
        return;
    }
    if let (Some(sent), Some(w)) = (
        client::number_after(text, r#""sent_us""#),
        client::number_after(text, r#""w""#),
    ) {
        timed(windows, sent, w);
    }
}

/// A measured delivery of window `w`, sent at `sent` (µs).
fn timed(windows: &[Window], sent: u64, w: u64) {
    let Some(window) = windows.get(w as usize) else {
        return;
    };
    window.delivered.fetch_add(1, Ordering::Relaxed);
    let latency = now_us().saturating_sub(sent).max(1);
    let _ = window.latency_us.lock().unwrap().record(latency);
}

/// Reads a permessage-deflate receiver: compressed messages inflated, then as above.
async fn read_deflated_deliveries(
    mut ws: crate::deflate_client::DeflateWs,
    windows: Arc<Vec<Window>>,
    frames: Arc<AtomicU64>,
    closed: Arc<Closed>,
) {
    loop {
        match crate::deflate_client::next_text(&mut ws).await {
            Ok(text) => counted(&text, &windows, &frames),
            Err(end) => return closed.record(end),
        }
    }
}

/// A message body of `bytes` bytes of text (words of a work chat, not one repeated
/// sentence), or a short greeting.
fn message_body(bytes: usize) -> String {
    if bytes == 0 {
        return "hello, room".to_owned();
    }
    teamchat_testkit::work_chat(bytes)
}

/// A frame delivered over HTTP: counted, and timed if it is a measured `message:new`.
fn delivered(frame: &serde_json::Value, windows: &[Window], frames: &AtomicU64) {
    frames.fetch_add(1, Ordering::Relaxed);
    if frame["type"] != "message:new" {
        return;
    }
    if let (Some(sent), Some(w)) = (
        frame["meta"]["sent_us"].as_u64(),
        frame["meta"]["w"].as_u64(),
    ) {
        timed(windows, sent, w);
    }
}

async fn read_sse_deliveries(
    mut sse: teamchat_testkit::http_session::Sse,
    windows: Arc<Vec<Window>>,
    frames: Arc<AtomicU64>,
    closed: Arc<Closed>,
) {
    while let Some(event) = sse.next_event().await {
        if event.event == "session:closed" {
            return closed.record(format!("session closed {}", event.data["code"]));
        }
        delivered(&event.data, &windows, &frames);
    }
    closed.record("end of stream".to_owned());
}

async fn read_polled_deliveries(
    mut poll: teamchat_testkit::http_session::Poll,
    windows: Arc<Vec<Window>>,
    frames: Arc<AtomicU64>,
    closed: Arc<Closed>,
) {
    loop {
        let (status, answer) = poll.poll_raw(poll.next).await;
        if status != 200 {
            return closed.record(format!("poll answered {status}"));
        }
        let Some(list) = answer["frames"].as_array() else {
            return closed.record("a poll answer without frames".to_owned());
        };
        poll.next += list.len() as u64;
        for frame in list {
            if frame["type"] == "session:closed" {
                return closed.record(format!("session closed {}", frame["code"]));
            }
            delivered(frame, &windows, &frames);
        }
    }
}

async fn read_acks(mut reader: futures_util::stream::SplitStream<Ws>, windows: Arc<Vec<Window>>) {
    while let Some(Ok(message)) = reader.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if !text.starts_with(r#"{"type":"message:ack""#) {
            if text.starts_with(r#"{"type":"error""#) {
                eprintln!("fanout: a send was refused: {text}");
            }
            continue;
        }
        // The client id is w<window>n<count>t<sent µs>; a reaction's rid w<window>t<sent µs>.
        const KEY: &str = r#""client_id":""#;
        const RID: &str = r#""rid":""#;
        let Some((at, key)) = text
            .find(KEY)
            .map(|at| (at, KEY))
            .or_else(|| text.find(RID).map(|at| (at, RID)))
        else {
            continue;
        };
        let id = &text[at + key.len()..];
        let id = &id[..id.find('"').unwrap_or(id.len())];
        let window = client::number_after(id, "w");
        if let Some(window) = window.and_then(|w| windows.get(w as usize)) {
            window.acked.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = client::number_after(id, "t") {
                let latency = now_us().saturating_sub(sent).max(1);
                let _ = window.ack_us.lock().unwrap().record(latency);
            }
        }
    }
}

/// Reads a peer's receiver: answers its Engine.IO pings (it owns the whole connection:
/// a receiver sends nothing else), counts data packets, and times `message:new`.
async fn read_peer_deliveries(
    mut ws: Ws,
    windows: Arc<Vec<Window>>,
    frames: Arc<AtomicU64>,
    closed: Arc<Closed>,
) {
    loop {
        let text = match next_text(&mut ws).await {
            Ok(text) => text,
            Err(end) => return closed.record(end),
        };
        match socketio_client::parse(&text) {
            Incoming::Ping => {
                if let Err(error) = ws.send(socketio_client::pong()).await {
                    return closed.record(error.to_string());
                }
            }
            Incoming::Closed => return closed.record(format!("socket.io {text}")),
            Incoming::Event { name, args } => {
                frames.fetch_add(1, Ordering::Relaxed);
                if name != "message:new" {
                    continue;
                }
                if let (Some(sent), Some(w)) = (
                    client::number_after(args, r#""sent_us""#),
                    client::number_after(args, r#""w""#),
                ) {
                    timed(&windows, sent, w);
                }
            }
            Incoming::Ack { .. } | Incoming::Other => {
                frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Reads a peer's sender: times the acks (their id says the window and the send time, see
/// `peer_ack_id`) and answers Engine.IO pings on the shared sink.
async fn read_peer_acks(
    mut reader: futures_util::stream::SplitStream<Ws>,
    sink: Sender,
    windows: Arc<Vec<Window>>,
    base_us: u64,
) {
    while let Ok(text) = next_text(&mut reader).await {
        match socketio_client::parse(&text) {
            Incoming::Ping => {
                let pong = sink.lock().await.send(socketio_client::pong()).await;
                if pong.is_err() {
                    return;
                }
            }
            Incoming::Ack { id, args } => {
                if !args.contains(r#""ok":true"#) {
                    eprintln!("fanout: a send was refused: {text}");
                    continue;
                }
                let w = id & ((1 << PEER_WINDOW_BITS) - 1);
                let sent = base_us + (id >> PEER_WINDOW_BITS);
                if let Some(window) = windows.get(w as usize) {
                    window.acked.fetch_add(1, Ordering::Relaxed);
                    let latency = now_us().saturating_sub(sent).max(1);
                    let _ = window.ack_us.lock().unwrap().record(latency);
                }
            }
            _ => {}
        }
    }
}

/// The next text frame of a connection, or why it ended.
async fn next_text<S>(reader: &mut S) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match reader.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or("no code".to_owned(), |f| u16::from(f.code).to_string());
                return Err(format!("close {code}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("end of stream".to_owned()),
        }
    }
}

/// Round trips measured every 10 ms while a window runs, on a connection of their own:
/// a bare Redis `PING`, or a protocol `ping` to the senders' gateway (no Redis on its
/// path). Each is the floor under the hops it crosses, measured beside the load: a hundred
/// a second, few beside it (at 500 msg/s the senders' gateway takes 500 sends a second).
struct Pings<S> {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(S, Histogram<u64>)>,
}

impl<S: Send + 'static> Pings<S> {
    fn start(mut state: S, round_trip: for<'a> fn(&'a mut S) -> BoxFuture<'a, bool>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut rtt = histogram();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => return (state, rtt),
                    _ = tick.tick() => {}
                }
                let started = Instant::now();
                if round_trip(&mut state).await {
                    let _ = rtt.record((started.elapsed().as_micros() as u64).max(1));
                }
            }
        });
        Pings { stop, task }
    }

    async fn stop(self) -> anyhow::Result<(S, Histogram<u64>)> {
        let _ = self.stop.send(());
        Ok(self.task.await?)
    }
}

/// The senders' gateway's own append round trips so far (its metric's sum in seconds and
/// count), read from `/metrics`.
async fn append_seconds(gateway: std::net::SocketAddr) -> Option<(f64, u64)> {
    let text = client::metrics_text(gateway).await?;
    // Absent (0) before the gateway's first append.
    let name = teamchat_shared::metrics::APPEND_SECONDS;
    let sum = client::metric_sum(&text, &format!("{name}_sum"));
    let count = client::metric_sum(&text, &format!("{name}_count")) as u64;
    Some((sum, count))
}

/// Redis's count of AOF rewrites so far: a rewrite forks Redis and writes out its whole
/// dataset, which on two cores shows in the window's tail.
async fn aof_rewrites(redis: &mut MultiplexedConnection) -> Option<u64> {
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(redis)
        .await
        .ok()?;
    client::number_after(&info, "aof_rewrites:")
}

fn redis_ping(redis: &mut MultiplexedConnection) -> BoxFuture<'_, bool> {
    Box::pin(async move {
        redis::cmd("PING")
            .query_async::<String>(redis)
            .await
            .is_ok()
    })
}

fn gateway_ping(ws: &mut Ws) -> BoxFuture<'_, bool> {
    Box::pin(async move {
        ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_ok()
            && client::next_of(ws, "pong").await.is_ok()
    })
}

/// Receiving connections the gateway ended (e.g. 1013 when a client reads too slowly),
/// by reason: a delivery ratio under 100 % says why.
#[derive(Default)]
struct Closed(Mutex<std::collections::BTreeMap<String, u64>>);

impl Closed {
    fn record(&self, reason: String) {
        *self.0.lock().unwrap().entry(reason).or_default() += 1;
    }

    fn count(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }

    fn describe(&self) -> String {
        let reasons = self.0.lock().unwrap();
        if reasons.is_empty() {
            return String::new();
        }
        let list: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} × {r}")).collect();
        format!("; receivers closed: {}", list.join(", "))
    }
}

/// Waits until no frame arrived for a second (at most two minutes).
async fn quiet(frames: &AtomicU64) {
    let started = Instant::now();
    let mut last = frames.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(1)
        && started.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = frames.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
}

/// Waits until `expected` deliveries arrived, or none arrived for two seconds.
async fn wait_settled(delivered: &AtomicU64, expected: u64) {
    let mut last = delivered.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    while last < expected && still_since.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
    }
}
