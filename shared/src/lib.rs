//! Shared by the gateway and the worker: the event model, the client protocol's frames and
//! codecs, the Redis key schema and scripts, and configuration.

pub mod config;
pub mod event;
pub mod ids;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod scripts;
pub mod stream;
