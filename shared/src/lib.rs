//! Shared by the gateway and the worker: the event model and its codecs, the Redis key
//! schema and scripts, the append path of durable events (`append`), the PostgreSQL
//! statements both run (`db`), configuration, metric names, and the clock and stop
//! signal (`runtime`).

pub mod append;
pub mod config;
pub mod db;
pub mod erase;
pub mod event;
pub mod history;
pub mod ids;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod redis_conn;
pub mod runtime;
pub mod scripts;
pub mod stream;
