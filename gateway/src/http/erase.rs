//! `POST /v1/server/users/{user}/erase` (server API): forgets what a user wrote in the
//! given teams. Each of their messages not yet deleted is deleted through the append path,
//! so members hear `message:deleted` and the delete is an event like any other (in the
//! archive, in every replay). Once the workers have synced those deletes, the user's
//! message and edit texts (body, meta, name, mentions, attachments) are blanked in
//! PostgreSQL and the event archive, and their entries are removed from the team stream
//! and, once acknowledged, from the shard's ingest stream. Idempotent: asking again
//! finishes what a first call could not (`scrubbed: false`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis::streams::StreamRangeReply;
use serde_json::{Value, json};
use teamchat_shared::db;
use teamchat_shared::event::{self, ActorData, EventData, EventKind};
use teamchat_shared::ids::is_valid_id;
use teamchat_shared::runtime::now_ms;

use super::server_api::{Answer, bad_request, unavailable};
use crate::AppState;
use crate::broker::{Append, AppendOutcome};

/// Teams one request may name.
const MAX_TEAMS: usize = 100;
/// How long an erasure waits for the workers to sync its deletes (in all its teams at
/// once) before it answers `scrubbed: false` for a team (ask again).
const SYNC_WAIT: Duration = Duration::from_secs(20);
/// Entries read per stream page while looking for the user's.
const PAGE: usize = 1_000;
/// The most unsynced events of a team the erasure reads (as history does).
const MAX_UNSYNCED: u64 = 10_000;

pub(super) async fn erase(
    state: &AppState,
    user: &str,
    fields: serde_json::Map<String, Value>,
) -> Answer {
    let teams: Vec<&str> = match fields.get("teams") {
        Some(Value::Array(teams)) if (1..=MAX_TEAMS).contains(&teams.len()) => {
            match teams.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
                Some(teams) if teams.iter().all(|t| is_valid_id(t)) => teams,
                _ => return bad_request("teams must be team ids").answer(),
            }
        }
        _ => return bad_request("teams must be an array of 1..100 team ids").answer(),
    };
    // Every team's deletes first, then one wait for the workers to sync them all.
    let mut deleted = Vec::new();
    for team in &teams {
        match delete_messages(state, user, team).await {
            Ok(done) => deleted.push(done),
            Err(e) => return unavailable(&e).answer(),
        }
    }
    let deadline = Instant::now() + SYNC_WAIT;
    let mut erased = Vec::new();
    for (team, (count, through)) in teams.iter().zip(deleted) {
        match scrub_once_synced(state, user, team, through, deadline).await {
            Ok(scrubbed) => {
                erased.push(json!({"team": team, "deleted": count, "scrubbed": scrubbed}));
            }
            Err(e) => return unavailable(&e).answer(),
        }
    }
    let answer = json!({"user": user, "teams": erased});
    (super::json(hyper::StatusCode::OK, &answer), "ok")
}

/// Deletes the user's messages in `team` not yet deleted. Returns how many, and the
/// team's newest offset after them (what must be synced before the scrub).
async fn delete_messages(state: &AppState, user: &str, team: &str) -> anyhow::Result<(usize, u64)> {
    // Their messages not deleted: as stored, and in the stream past the sync.
    let mut live: BTreeSet<u64> = sqlx::query_scalar::<_, i64>(
        "SELECT seq FROM messages WHERE team = $1 AND user_id = $2 AND id IS NOT NULL AND NOT deleted",
    )
    .bind(team)
    .bind(user)
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|seq| seq as u64)
    .collect();
    let watermark = db::watermark::read(&state.db, team).await?.unwrap_or(0) as u64;
    let top = state.broker.stream_top(team).await?;
    if top.saturating_sub(watermark) > MAX_UNSYNCED {
        anyhow::bail!("team {team} is far behind its sync; retry later");
    }
    for event in state
        .broker
        .read_range(team, watermark + 1, top)
        .await?
        .events
    {
        match &event.data {
            EventData::Message(m) if m.user == user => {
                live.insert(event.seq);
            }
            EventData::Delete(_) => {
                live.remove(&event.seq);
            }
            _ => {}
        }
    }

    let mut deleted = 0;
    for seq in live {
        let data = EventData::Delete(ActorData {
            user: user.to_owned(),
            ts: now_ms(),
        });
        let append = Append {
            team,
            src: "server-api",
            data: &data,
            target: seq,
            staff: true,
            cost: 0,
            limit: None,
        };
        // A message deleted meanwhile is refused (`not_found`): nothing left to do for it.
        if let AppendOutcome::Appended(_) = state.storage.append(&append).await? {
            deleted += 1;
        }
    }

    Ok((deleted, state.broker.stream_top(team).await?))
}

/// Scrubs the user's texts in `team` once the workers synced it `through` that offset
/// (an unsynced message's row would bring its text back when the worker writes it);
/// false if that did not happen by `deadline`.
async fn scrub_once_synced(
    state: &AppState,
    user: &str,
    team: &str,
    through: u64,
    deadline: Instant,
) -> anyhow::Result<bool> {
    loop {
        let synced = db::watermark::read(&state.db, team).await?.unwrap_or(0) as u64;
        if synced >= through {
            break;
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    scrub_postgres(state, user, team).await?;
    scrub_streams(state, user, team, deadline).await?;
    Ok(true)
}

async fn scrub_postgres(state: &AppState, user: &str, team: &str) -> sqlx::Result<()> {
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE messages SET body = '', meta = NULL, name = NULL, mentions = NULL, attachments = NULL
         WHERE team = $1 AND user_id = $2",
    )
    .bind(team)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"UPDATE events SET data = (data - 'meta' - 'name' - 'mentions' - 'attachments') || '{"body": ""}'
           WHERE team = $1 AND user_id = $2 AND kind IN ('message', 'edit')"#,
    )
    .bind(team)
    .bind(user)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Whether a stream entry is the user's message or edit in `team`.
fn theirs(entry: &redis::streams::StreamId, user: &str, team: &str) -> bool {
    let fields = event::entry_fields(&entry.map);
    match event::from_fields(Some(team), Some(0), fields) {
        Ok(e) if e.team == team => {
            matches!(e.kind(), EventKind::Message | EventKind::Edit) && e.data.user() == user
        }
        _ => false,
    }
}

/// Removes the user's message and edit entries from the team stream, and from the shard's
/// ingest stream once the workers acknowledged them (they ack just after the commit the
/// caller waited for; one still held at `SYNC_WAIT` goes when the stream is trimmed).
async fn scrub_streams(
    state: &AppState,
    user: &str,
    team: &str,
    deadline: Instant,
) -> redis::RedisResult<()> {
    let keys = state.broker.keys();
    let mut conn = state.broker.connection();
    let events = keys.team_events(team);
    let doomed = entries_of(&mut conn, &events, user, team).await?;
    delete(&mut conn, &events, &doomed).await?;

    let ingest = keys.ingest(keys.shard_of(team));
    let mut doomed = entries_of(&mut conn, &ingest, user, team).await?;
    while !doomed.is_empty() {
        let held_from = oldest_pending(&mut conn, &ingest).await?;
        let (acked, held): (Vec<String>, Vec<String>) = doomed
            .into_iter()
            .partition(|id| held_from.as_deref().is_none_or(|held| older(id, held)));
        delete(&mut conn, &ingest, &acked).await?;
        doomed = held;
        if Instant::now() > deadline {
            break;
        }
        if !doomed.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The ids of the user's message and edit entries of `team` in `stream`.
async fn entries_of(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    user: &str,
    team: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(conn)
            .await?;
        let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
            break;
        };
        found.extend(
            page.ids
                .iter()
                .filter(|e| theirs(e, user, team))
                .map(|e| e.id.clone()),
        );
        if page.ids.len() < PAGE {
            break;
        }
        start = format!("({last}");
    }
    Ok(found)
}

async fn delete(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    ids: &[String],
) -> redis::RedisResult<()> {
    for chunk in ids.chunks(PAGE) {
        redis::cmd("XDEL")
            .arg(stream)
            .arg(chunk)
            .query_async::<i64>(conn)
            .await?;
    }
    Ok(())
}

/// The oldest ingest entry a worker of any group still holds.
async fn oldest_pending(
    conn: &mut redis::aio::ConnectionManager,
    ingest: &str,
) -> redis::RedisResult<Option<String>> {
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(ingest)
        .query_async(conn)
        .await
        .unwrap_or_default();
    let mut oldest: Option<String> = None;
    for group in groups.groups {
        let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(ingest)
            .arg(&group.name)
            .query_async(conn)
            .await?;
        if let redis::streams::StreamPendingReply::Data(data) = pending
            && oldest
                .as_deref()
                .is_none_or(|held| older(&data.start_id, held))
        {
            oldest = Some(data.start_id);
        }
    }
    Ok(oldest)
}

/// Whether stream id `a` comes before `b` (`ms-seq`).
fn older(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) < parse(b)
}
