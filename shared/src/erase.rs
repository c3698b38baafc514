//! Forgetting what a user wrote in some teams (the server API's
//! `POST /v1/server/users/{user}/erase`, the worker's `erase`). Each of their messages not
//! yet deleted is deleted through the append path, so members hear `message:deleted` and
//! the delete is an event like any other (in the archive, in every replay). Once the
//! workers have synced those deletes, the user's message and edit texts (body, meta, name,
//! mentions, attachments) are blanked in PostgreSQL and the event archive, and their
//! entries are removed from the team stream and, once acknowledged, from the shard's
//! ingest stream. Idempotent: asking again finishes what a first call could not
//! (`scrubbed: false`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use redis::streams::{StreamId, StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply};
use sqlx::PgPool;

use crate::append::{Append, AppendOutcome, Appends, ScriptSender};
use crate::db;
use crate::event::{self, ActorData, EventData, EventKind};
use crate::keys::Keys;
use crate::redis_conn::Redis;
use crate::runtime::now_ms;
use crate::stream;

/// Entries read per stream page while looking for the user's.
const PAGE: usize = 1_000;
/// The most unsynced events of a team an erasure reads (as history does).
const MAX_UNSYNCED: u64 = 10_000;

/// What an erasure did in one team.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub team: String,
    /// The user's messages deleted now (those deleted before are not counted).
    pub deleted: usize,
    /// The texts were blanked and the stream entries removed; false when the workers had
    /// not synced the deletes in time (ask again).
    pub scrubbed: bool,
}

/// What an erasure needs: the append path for the deletes, Redis and PostgreSQL.
pub struct Eraser<S> {
    pub appends: Appends<S>,
    pub conn: Redis,
    pub db: PgPool,
    pub keys: Keys,
}

impl<S: ScriptSender> Eraser<S> {
    /// Erases `user`'s texts in `teams`: every team's deletes first, then one wait of at
    /// most `sync_wait` for the workers to sync them all, then the scrub of each team
    /// synced by then. `src` names the caller in the deletes it appends.
    pub async fn erase(
        &self,
        user: &str,
        teams: &[String],
        src: &str,
        sync_wait: Duration,
    ) -> anyhow::Result<Vec<Erased>> {
        let mut deleted = Vec::with_capacity(teams.len());
        for team in teams {
            deleted.push(self.delete_messages(user, team, src).await?);
        }
        let deadline = Instant::now() + sync_wait;
        let mut erased = Vec::with_capacity(teams.len());
        for (team, (count, through)) in teams.iter().zip(deleted) {
            let scrubbed = self
                .scrub_once_synced(user, team, through, deadline)
                .await?;
            erased.push(Erased {
                team: team.clone(),
                deleted: count,
                scrubbed,
            });
        }
        Ok(erased)
    }

    /// The teams where `user` wrote: as stored, and in the ingest streams not synced yet.
    pub async fn teams_of(&self, user: &str) -> anyhow::Result<Vec<String>> {
        let mut teams: BTreeSet<String> =
            sqlx::query_scalar("SELECT DISTINCT team FROM messages WHERE user_id = $1")
                .bind(user)
                .fetch_all(&self.db)
                .await?
                .into_iter()
                .collect();
        let mut conn = self.conn.clone();
        for shard in 0..self.keys.shards() {
            let ingest = self.keys.ingest(shard);
            for_each_entry(&mut conn, &ingest, |entry| {
                if let Ok(e) = event::from_fields(None, Some(0), event::entry_fields(&entry.map))
                    && e.kind() == EventKind::Message
                    && e.data.user() == user
                {
                    teams.insert(e.team);
                }
            })
            .await?;
        }
        Ok(teams.into_iter().collect())
    }

    /// Deletes the user's messages in `team` not yet deleted. Returns how many, and the
    /// team's newest offset after them (what must be synced before the scrub).
    async fn delete_messages(
        &self,
        user: &str,
        team: &str,
        src: &str,
    ) -> anyhow::Result<(usize, u64)> {
        // Their messages not deleted: as stored, and in the stream past the sync.
        let mut live: BTreeSet<u64> = sqlx::query_scalar::<_, i64>(
            "SELECT seq FROM messages WHERE team = $1 AND user_id = $2 AND id IS NOT NULL AND NOT deleted",
        )
        .bind(team)
        .bind(user)
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|seq| seq as u64)
        .collect();
        let mut conn = self.conn.clone();
        let watermark = db::watermark::read(&self.db, team).await?.unwrap_or(0) as u64;
        let top = stream::top(&mut conn, &self.keys, team).await?;
        if top.saturating_sub(watermark) > MAX_UNSYNCED {
            anyhow::bail!("team {team} is far behind its sync; retry later");
        }
        let unsynced = stream::read_range(&mut conn, &self.keys, team, watermark + 1, top).await?;
        for event in unsynced.events {
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
                src,
                data: &data,
                target: seq,
                staff: true,
                cost: 0,
                limit: None,
            };
            // A message deleted meanwhile is refused (`not_found`): nothing left to do.
            if let AppendOutcome::Appended(_) = self.appends.append(&append).await? {
                deleted += 1;
            }
        }
        Ok((deleted, stream::top(&mut conn, &self.keys, team).await?))
    }

    /// Scrubs the user's texts in `team` once the workers synced it `through` that offset
    /// (an unsynced message's row would bring its text back when the worker writes it);
    /// false if that did not happen by `deadline`.
    async fn scrub_once_synced(
        &self,
        user: &str,
        team: &str,
        through: u64,
        deadline: Instant,
    ) -> anyhow::Result<bool> {
        loop {
            let synced = db::watermark::read(&self.db, team).await?.unwrap_or(0) as u64;
            if synced >= through {
                break;
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.scrub_postgres(user, team).await?;
        self.scrub_streams(user, team, deadline).await?;
        Ok(true)
    }

    async fn scrub_postgres(&self, user: &str, team: &str) -> sqlx::Result<()> {
        let mut tx = self.db.begin().await?;
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

    /// Removes the user's message and edit entries from the team stream, and from the
    /// shard's ingest stream once the workers acknowledged them (they ack just after the
    /// commit the caller waited for; one still held at the deadline goes when the stream
    /// is trimmed).
    async fn scrub_streams(
        &self,
        user: &str,
        team: &str,
        deadline: Instant,
    ) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let events = self.keys.team_events(team);
        let doomed = entries_of(&mut conn, &events, user, team).await?;
        delete(&mut conn, &events, &doomed).await?;

        let ingest = self.keys.ingest(self.keys.shard_of(team));
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
}

/// Calls `each` with every entry of `stream`, oldest first, a page at a time.
async fn for_each_entry(
    conn: &mut Redis,
    stream: &str,
    mut each: impl FnMut(&StreamId),
) -> redis::RedisResult<()> {
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
            return Ok(());
        };
        page.ids.iter().for_each(&mut each);
        if page.ids.len() < PAGE {
            return Ok(());
        }
        start = format!("({last}");
    }
}

/// The ids of the user's message and edit entries of `team` in `stream`.
async fn entries_of(
    conn: &mut Redis,
    stream: &str,
    user: &str,
    team: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    for_each_entry(conn, stream, |entry| {
        if theirs(entry, user, team) {
            found.push(entry.id.clone());
        }
    })
    .await?;
    Ok(found)
}

/// Whether a stream entry is the user's message or edit in `team`.
fn theirs(entry: &StreamId, user: &str, team: &str) -> bool {
    let fields = event::entry_fields(&entry.map);
    match event::from_fields(Some(team), Some(0), fields) {
        Ok(e) if e.team == team => {
            matches!(e.kind(), EventKind::Message | EventKind::Edit) && e.data.user() == user
        }
        _ => false,
    }
}

async fn delete(conn: &mut Redis, stream: &str, ids: &[String]) -> redis::RedisResult<()> {
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
async fn oldest_pending(conn: &mut Redis, ingest: &str) -> redis::RedisResult<Option<String>> {
    let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(ingest)
        .query_async(conn)
        .await
        .unwrap_or_default();
    let mut oldest: Option<String> = None;
    for group in groups.groups {
        let pending: StreamPendingReply = redis::cmd("XPENDING")
            .arg(ingest)
            .arg(&group.name)
            .query_async(conn)
            .await?;
        if let StreamPendingReply::Data(data) = pending
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

#[cfg(test)]
mod tests {
    use super::older;

    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        assert!(older("5-0", "5-1"));
        assert!(older("5-9", "10-0"));
        assert!(!older("10-0", "9-99"));
        assert!(!older("7-3", "7-3"));
    }
}
