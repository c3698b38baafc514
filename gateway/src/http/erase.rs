//! `POST /v1/server/users/{user}/erase` (server API): forgets what a user wrote in the
//! given teams (`teamchat_shared::erase`: their messages deleted through the append path,
//! then their texts blanked in PostgreSQL and the archive and removed from the streams).

use std::time::Duration;

use serde_json::{Value, json};
use teamchat_shared::erase::Eraser;
use teamchat_shared::ids::is_valid_id;

use super::server_api::{Answer, bad_request, unavailable};
use crate::AppState;

/// Teams one request may name.
const MAX_TEAMS: usize = 100;
/// How long an erasure waits for the workers to sync its deletes (in all its teams at
/// once) before it answers `scrubbed: false` for a team (ask again).
const SYNC_WAIT: Duration = Duration::from_secs(20);

pub(super) async fn erase(
    state: &AppState,
    user: &str,
    fields: serde_json::Map<String, Value>,
) -> Answer {
    let teams: Vec<String> = match fields.get("teams") {
        Some(Value::Array(teams)) if (1..=MAX_TEAMS).contains(&teams.len()) => {
            match teams.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                Some(teams) if teams.iter().all(|t| is_valid_id(t)) => {
                    teams.into_iter().map(str::to_owned).collect()
                }
                _ => return bad_request("teams must be team ids").answer(),
            }
        }
        _ => return bad_request("teams must be an array of 1..100 team ids").answer(),
    };
    let eraser = Eraser {
        appends: state.storage.appends().clone(),
        conn: state.broker.connection(),
        db: state.db.clone(),
        keys: state.broker.keys().clone(),
    };
    match eraser.erase(user, &teams, "server-api", SYNC_WAIT).await {
        Ok(erased) => {
            let answer = json!({"user": user, "teams": erased});
            (super::json(hyper::StatusCode::OK, &answer), "ok")
        }
        Err(e) => unavailable(&e).answer(),
    }
}
