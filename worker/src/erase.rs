//! `teamchat-worker erase --user U [--team T]`: the server API's erasure from the command
//! line (`teamchat_shared::erase`), for operators without the server API at hand. Its
//! deletes go through the same append path as a gateway's, one script call each; the
//! running workers sync them, and this waits for that before it scrubs.

use std::time::Duration;

use anyhow::Context;
use teamchat_shared::append::Appends;
use teamchat_shared::config::{Timeouts, WorkerConfig};
use teamchat_shared::erase::{Erased, Eraser};
use teamchat_shared::ids::is_valid_id;

/// Erases `user`'s texts in `teams`, or in every team they wrote in when `teams` is empty.
pub async fn erase(
    config: &WorkerConfig,
    user: &str,
    teams: &[String],
    wait: Duration,
) -> anyhow::Result<Vec<Erased>> {
    anyhow::ensure!(is_valid_id(user), "not a user id: {user:?}");
    if let Some(team) = teams.iter().find(|t| !is_valid_id(t)) {
        anyhow::bail!("not a team id: {team:?}");
    }
    let db = crate::replay::archive(&config.database_url)?;
    let conn = config
        .redis
        .connect(Timeouts::default())
        .await
        .context("connecting to Redis")?;
    let keys = config.redis.keys();
    let appends = Appends::new(
        conn.clone(),
        conn.clone(),
        db.clone(),
        keys.clone(),
        config.stream_maxlen,
    );
    let eraser = Eraser {
        appends,
        conn,
        db,
        keys,
    };
    let teams = match teams {
        [] => eraser.teams_of(user).await?,
        teams => teams.to_vec(),
    };
    eraser.erase(user, &teams, "worker-erase", wait).await
}
