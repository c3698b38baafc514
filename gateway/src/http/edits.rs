//! `GET /v1/teams/{team}/messages/{seq}/edits`: a message's versions, oldest first — its
//! body as sent, then each edit — from the event archive (what the workers synced) and
//! the team stream past the sync watermark (what they have not yet). A deleted message
//! shows none: its delete takes back its earlier bodies too.

use std::collections::BTreeMap;

use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use teamchat_shared::db;
use teamchat_shared::event::{EventData, EventKind};

use super::history::{MAX_UNSYNCED, readable_team};
use super::{Body, json, json_error, unavailable};
use crate::AppState;

/// One version of a message.
#[derive(Debug, Serialize)]
struct Version {
    /// The event that made it: the message itself, or an edit.
    kind: &'static str,
    offset: String,
    user: String,
    body: String,
    ts: i64,
}

/// What the message's events say, by offset: a version, or its delete.
enum Change {
    Version(Version),
    Deleted,
}

fn change(offset: u64, data: &EventData) -> Option<Change> {
    let version = |kind, user: &str, body: &str, ts| {
        Some(Change::Version(Version {
            kind,
            offset: offset.to_string(),
            user: user.to_owned(),
            body: body.to_owned(),
            ts,
        }))
    };
    match data {
        EventData::Message(m) => version("message", &m.user, &m.body, m.ts),
        EventData::Edit(e) => version("edit", &e.user, &e.body, e.ts),
        EventData::Delete(_) => Some(Change::Deleted),
        _ => None,
    }
}

/// Answers `/v1/teams/{team}{suffix}`, `suffix` being `/messages/{seq}/edits` as the
/// path spells it (`seq` parsed by the caller).
pub(super) async fn handle<B>(
    state: &AppState,
    req: &Request<B>,
    suffix: &str,
    seq: u64,
) -> Response<Body> {
    let (team, _) = match readable_team(state, req, suffix).await {
        Ok(readable) => readable,
        Err(refused) => return *refused,
    };
    match load(state, team, seq).await {
        Ok(Some(Some((deleted, versions)))) => json(
            StatusCode::OK,
            &serde_json::json!({
                "team": team, "seq": seq, "deleted": deleted, "versions": versions,
            }),
        ),
        Ok(Some(None)) => json_error(StatusCode::NOT_FOUND, "not_found", "no such message"),
        Ok(None) => super::history::behind_its_sync(),
        Err(e) => unavailable("edit history", &e),
    }
}

/// `None` when the workers are too far behind on the team; `Some(None)` when there is no
/// such message; else whether it is deleted and its versions (none once deleted).
async fn load(
    state: &AppState,
    team: &str,
    seq: u64,
) -> anyhow::Result<Option<Option<(bool, Vec<Version>)>>> {
    let watermark = db::watermark::read(&state.db, team).await?;
    let unsynced_from = watermark.unwrap_or(0) as u64 + 1;
    let top = state.broker.stream_top(team).await?;
    if top.saturating_sub(unsynced_from) >= MAX_UNSYNCED {
        return Ok(None);
    }
    let mut changes: BTreeMap<u64, Change> = BTreeMap::new();
    for row in db::archive::versions(&state.db, team, seq as i64).await? {
        let Some(kind) = EventKind::parse(&row.kind) else {
            continue;
        };
        let data = EventData::decode(kind, row.data.as_bytes())?;
        if let Some(change) = change(row.offset as u64, &data) {
            changes.insert(row.offset as u64, change);
        }
    }
    for event in state
        .broker
        .read_range(team, unsynced_from, top)
        .await?
        .events
    {
        if event.seq == seq
            && let Some(change) = change(event.offset, &event.data)
        {
            changes.insert(event.offset, change);
        }
    }
    // A message stored before the archive existed has a row but no archived events.
    let row = db::archive::deleted(&state.db, team, seq as i64).await?;
    let sent = changes
        .values()
        .any(|c| matches!(c, Change::Version(v) if v.kind == "message"));
    if row.is_none() && !sent {
        return Ok(Some(None));
    }
    let deleted = row == Some(true) || changes.values().any(|c| matches!(c, Change::Deleted));
    if deleted {
        return Ok(Some(Some((true, Vec::new()))));
    }
    let versions = changes
        .into_values()
        .filter_map(|c| match c {
            Change::Version(v) => Some(v),
            Change::Deleted => None,
        })
        .collect();
    Ok(Some(Some((false, versions))))
}
