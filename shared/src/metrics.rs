//! The Prometheus metrics of the gateway and the worker: one catalogue (name, type, help)
//! that installs their descriptions, renders `/metrics`, and that docs/operations.md lists
//! (a test checks the two agree). Labels are bounded: never a team or user id.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The kinds of metric, as Prometheus names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub const CONNECTIONS: &str = "teamchat_gateway_connections";
pub const CONNECTS: &str = "teamchat_gateway_connects_total";
pub const CLOSES: &str = "teamchat_gateway_closes_total";
pub const AUTH_FAILURES: &str = "teamchat_gateway_auth_failures_total";
pub const ROOMS: &str = "teamchat_gateway_rooms";
pub const EVENTS_IN: &str = "teamchat_gateway_events_in_total";
pub const EVENTS_OUT: &str = "teamchat_gateway_events_out_total";
pub const SOCKET_WRITES: &str = "teamchat_gateway_socket_writes_total";
pub const APPEND_SECONDS: &str = "teamchat_gateway_append_seconds";
pub const APPEND_BATCH: &str = "teamchat_gateway_append_batch_events";
pub const APPEND_UNREPLICATED: &str = "teamchat_gateway_append_unreplicated_total";
pub const FANOUT_SECONDS: &str = "teamchat_gateway_fanout_seconds";
pub const QUEUE_OVERFLOWS: &str = "teamchat_gateway_send_queue_overflows_total";
pub const ROOM_EVENTS_DROPPED: &str = "teamchat_gateway_room_events_dropped_total";
pub const RATE_LIMITED: &str = "teamchat_gateway_rate_limited_total";
pub const GATEWAY_REDIS_ERRORS: &str = "teamchat_gateway_redis_errors_total";
pub const CONNECTIONS_REFUSED: &str = "teamchat_gateway_connections_refused_total";
pub const MAX_CONNECTIONS: &str = "teamchat_gateway_max_connections";
pub const PANICS: &str = "teamchat_gateway_panics_total";
pub const UNDECODABLE_EVENTS: &str = "teamchat_gateway_undecodable_events_total";
pub const API_REQUESTS: &str = "teamchat_gateway_api_requests_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "teamchat_gateway_tls_handshake_failures_total";
pub const TLS_RELOADS: &str = "teamchat_gateway_tls_reloads_total";
pub const BATCHES: &str = "teamchat_worker_batches_total";
pub const ROWS_SYNCED: &str = "teamchat_worker_rows_synced_total";
pub const EVENTS_SYNCED: &str = "teamchat_worker_events_synced_total";
pub const BATCH_SIZE: &str = "teamchat_worker_batch_size";
pub const BATCH_SECONDS: &str = "teamchat_worker_batch_seconds";
pub const SYNC_LAG_SECONDS: &str = "teamchat_worker_sync_lag_seconds";
pub const PENDING_ENTRIES: &str = "teamchat_worker_pending_entries";
pub const RETRIES: &str = "teamchat_worker_retries_total";
pub const RECLAIMED: &str = "teamchat_worker_reclaimed_total";
pub const DEAD_LETTERS: &str = "teamchat_worker_dead_letters_total";
pub const CREDITS_SYNCED: &str = "teamchat_worker_credits_synced_total";
pub const UNSYNCED_CREDITS: &str = "teamchat_worker_unsynced_credits";

/// Every metric: name, type, labels, meaning.
pub const CATALOGUE: &[(&str, Kind, &str, &str)] = &[
    (CONNECTIONS, Kind::Gauge, "", "open WebSocket connections"),
    (
        CONNECTS,
        Kind::Counter,
        "",
        "authenticated connections opened",
    ),
    (
        CLOSES,
        Kind::Counter,
        "code",
        "connections closed, by close code (`none`: the socket just ended)",
    ),
    (
        AUTH_FAILURES,
        Kind::Counter,
        "reason",
        "refused tokens (`missing`, `invalid`, `expired`, `revoked`), WebSocket and HTTP",
    ),
    (
        ROOMS,
        Kind::Gauge,
        "",
        "teams with a room on this gateway, i.e. team channels tailed",
    ),
    (EVENTS_IN, Kind::Counter, "type", "client requests, by type"),
    (
        EVENTS_OUT,
        Kind::Counter,
        "type",
        "frames queued to clients, by type",
    ),
    (
        SOCKET_WRITES,
        Kind::Counter,
        "",
        "write calls to client sockets (frames out over writes: frames coalesced per write)",
    ),
    (
        APPEND_SECONDS,
        Kind::Histogram,
        "",
        "append script round trip (the wait before an ack)",
    ),
    (
        APPEND_BATCH,
        Kind::Histogram,
        "",
        "durable events per append script call (group commit: what queued for a shard while its previous call was in flight)",
    ),
    (
        APPEND_UNREPLICATED,
        Kind::Counter,
        "",
        "append batches answered unavailable: fewer than REDIS_WAIT_REPLICAS replicas confirmed them in time",
    ),
    (
        FANOUT_SECONDS,
        Kind::Histogram,
        "",
        "event timestamp to frames queued for local recipients",
    ),
    (
        QUEUE_OVERFLOWS,
        Kind::Counter,
        "",
        "connections closed 1013 because their send queue was full",
    ),
    (
        ROOM_EVENTS_DROPPED,
        Kind::Counter,
        "",
        "published events a room's buffer could not take: durable ones are read back from the stream, typing and presence changes are lost",
    ),
    (
        RATE_LIMITED,
        Kind::Counter,
        "operation",
        "requests refused `rate_limited`, by operation",
    ),
    (
        GATEWAY_REDIS_ERRORS,
        Kind::Counter,
        "",
        "Redis commands that failed",
    ),
    (
        CONNECTIONS_REFUSED,
        Kind::Counter,
        "",
        "TCP connections refused because the gateway held `MAX_CONNECTIONS`",
    ),
    (
        MAX_CONNECTIONS,
        Kind::Gauge,
        "",
        "the `MAX_CONNECTIONS` setting: open TCP connections served at once",
    ),
    (
        PANICS,
        Kind::Counter,
        "",
        "sessions closed 1011 by a bug that panicked (the process goes on)",
    ),
    (
        UNDECODABLE_EVENTS,
        Kind::Counter,
        "source",
        "events a room could not decode and passed over (`stream` entries, `pubsub` messages): written by hand, an older version or a bug",
    ),
    (
        API_REQUESTS,
        Kind::Counter,
        "endpoint, outcome",
        "server API requests, by endpoint and outcome (`ok`, `unauthorized`, `bad_request`, `forbidden`, `not_found`, `rate_limited`, `quota_exceeded`, `unavailable`)",
    ),
    (
        TLS_HANDSHAKE_FAILURES,
        Kind::Counter,
        "reason",
        "TLS handshakes that did not complete (`plain_http`: answered 400; `timeout`: past `HEADER_TIMEOUT_MS`; `refused`)",
    ),
    (
        TLS_RELOADS,
        Kind::Counter,
        "result",
        "TLS certificate files read again after a change or SIGHUP (`loaded`, or `refused`: the certificate in use kept)",
    ),
    (BATCHES, Kind::Counter, "", "batches committed"),
    (
        ROWS_SYNCED,
        Kind::Counter,
        "",
        "ingest entries committed to PostgreSQL",
    ),
    (
        EVENTS_SYNCED,
        Kind::Counter,
        "kind",
        "durable events committed to PostgreSQL, by kind",
    ),
    (
        BATCH_SIZE,
        Kind::Histogram,
        "",
        "entries per committed batch",
    ),
    (
        BATCH_SECONDS,
        Kind::Histogram,
        "",
        "time to write and commit a batch",
    ),
    (
        SYNC_LAG_SECONDS,
        Kind::Histogram,
        "",
        "event timestamp to its commit in PostgreSQL",
    ),
    (
        PENDING_ENTRIES,
        Kind::Gauge,
        "",
        "ingest entries delivered to the group and not yet acked",
    ),
    (
        RETRIES,
        Kind::Counter,
        "",
        "failed PostgreSQL writes retried",
    ),
    (
        RECLAIMED,
        Kind::Counter,
        "",
        "entries claimed from idle consumers",
    ),
    (
        DEAD_LETTERS,
        Kind::Counter,
        "",
        "entries moved to the dead letters",
    ),
    (
        CREDITS_SYNCED,
        Kind::Counter,
        "",
        "credits of the events in committed batches",
    ),
    (
        UNSYNCED_CREDITS,
        Kind::Gauge,
        "",
        "credits counted in Redis and not yet in PostgreSQL",
    ),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once) and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ];
            let sizes = [
                1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
            ];
            let append_sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(APPEND_BATCH.into()), &append_sizes)
                })
                .expect("histogram buckets are valid")
                .install_recorder()
                .expect("one metrics recorder per process");
            for (name, kind, _, help) in CATALOGUE {
                match kind {
                    Kind::Counter => metrics::describe_counter!(*name, *help),
                    Kind::Gauge => metrics::describe_gauge!(*name, *help),
                    Kind::Histogram => metrics::describe_histogram!(*name, *help),
                }
            }
            handle
        })
        .clone()
}

/// Makes the label-less metrics of one role (`teamchat_gateway_` or `teamchat_worker_`)
/// visible at zero before anything happened, so dashboards show 0 rather than no data.
pub fn touch(prefix: &str) {
    for (name, kind, labels, _) in CATALOGUE {
        if !name.starts_with(prefix) || !labels.is_empty() {
            continue;
        }
        match kind {
            Kind::Counter => metrics::counter!(*name).increment(0),
            Kind::Gauge => metrics::gauge!(*name).increment(0.0),
            Kind::Histogram => {}
        }
    }
}
