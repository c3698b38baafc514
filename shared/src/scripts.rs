//! The Redis scripts, kept as `.lua` files beside this crate and loaded by SHA at first use
//! (`redis::Script` falls back to EVAL when the server does not know the script yet). Those
//! that give out or report a team's counters start with `lineage.lua`, which notices a
//! promoted replica.

use redis::Script;
use std::sync::LazyLock;

/// A script with `lineage.lua` before it.
macro_rules! with_lineage {
    ($file:literal) => {
        concat!(
            include_str!("../scripts/lineage.lua"),
            include_str!(concat!("../scripts/", $file))
        )
    };
}

/// Appends one durable event: dedupe, next offset and seq, XADD to the team and ingest
/// streams, PUBLISH on the team channel. See `scripts/append.lua`.
pub static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(with_lineage!("append.lua")));

/// A team's epoch, newest offset and newest seq, for `room:joined`.
pub static TEAM_STATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(with_lineage!("team_state.lua")));

/// Sets a new (or lost) team's offset and seq counters after what was given out before.
pub static SEED_TEAM: LazyLock<Script> =
    LazyLock::new(|| Script::new(with_lineage!("seed_team.lua")));

/// A team's presence: join, leave, and the periodic refresh-and-expire tick.
pub static PRESENCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/presence.lua")));

/// Connections per user across gateways: open (checking the limit), refresh, close.
pub static CONNECTION_LIMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/connection_limit.lua")));

/// Records a revocation or a removal, never moving its time back.
pub static ACCESS_RECORD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/access_record.lua")));

/// A new random epoch, used when a team (or its lost stream) starts afresh.
pub fn new_epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}", nanos ^ (u128::from(std::process::id()) << 64))
}

/// A script's answer for a team whose counters are not set yet (append, team state).
pub fn is_unseeded(reply: &[String]) -> bool {
    matches!(reply, [only] if only == "unseeded")
}
