//! The sync watermark: per team, the offset up to which every durable event is in
//! PostgreSQL (`team_sync.synced_offset`).
//!
//! The invariant: every offset at or below the watermark is stored (or, after a loss, gone
//! for good); it only ever moves forward, and only over contiguous offsets. History reads
//! PostgreSQL up to it and the team stream beyond it, so an acked event is readable at
//! once and never twice.
//!
//! Workers commit out of order, so offsets synced past a gap wait in `synced_ahead`, and
//! the team row says so (`waiting`). Every writer locks the team rows (in team order,
//! against deadlocks) before it reads them: the statements after the lock see every offset
//! committed by the transactions before it, and a transaction whose offsets were not yet
//! visible to another moves the watermark itself.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgConnection, PgPool};

/// The team's watermark; `None` before anything of it was synced.
pub async fn read(db: &PgPool, team: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = $1")
        .bind(team)
        .fetch_optional(db)
        .await
}

/// Records offsets synced in this transaction (`(team, offset)` pairs) and moves each
/// team's watermark as far as the offsets synced so far allow.
pub async fn record_synced(tx: &mut PgConnection, synced: &[(&str, i64)]) -> sqlx::Result<()> {
    let mut offsets: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for (team, offset) in synced {
        offsets.entry(team).or_default().insert(*offset);
    }
    let teams: Vec<&str> = offsets.keys().copied().collect();
    // Creates missing rows and locks them all; a no-op update locks the row as FOR UPDATE
    // would, and also one a concurrent transaction is inserting.
    let watermarks: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO team_sync (team) SELECT * FROM UNNEST($1::text[])
         ON CONFLICT (team) DO UPDATE SET synced_offset = team_sync.synced_offset
         RETURNING team, synced_offset",
    )
    .bind(&teams)
    .fetch_all(&mut *tx)
    .await?;
    let (mut ahead_team, mut ahead_offset) = (Vec::new(), Vec::new());
    for (team, watermark) in &watermarks {
        for offset in offsets[team.as_str()].range(watermark + 1..) {
            ahead_team.push(team.as_str());
            ahead_offset.push(*offset);
        }
    }
    if !ahead_team.is_empty() {
        sqlx::query(
            r#"INSERT INTO synced_ahead (team, "offset") SELECT * FROM UNNEST($1::text[], $2::int8[])
               ON CONFLICT DO NOTHING"#,
        )
        .bind(&ahead_team)
        .bind(&ahead_offset)
        .execute(&mut *tx)
        .await?;
    }
    settle(tx, &teams).await
}

/// Moves the team's watermark to at least `offset`: everything up to it is in PostgreSQL
/// (a replay wrote the stream up to there) or gone for good (offsets lost with the team's
/// stream, which history must stop reading the stream for). Offsets waiting past it that
/// now follow on are passed too.
pub async fn pass_through(db: &PgPool, team: &str, offset: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO team_sync (team, synced_offset) VALUES ($1, $2)
         ON CONFLICT (team) DO UPDATE SET synced_offset = GREATEST(team_sync.synced_offset, $2)",
    )
    .bind(team)
    .bind(offset)
    .execute(&mut *tx)
    .await?;
    settle(&mut tx, &[team]).await?;
    tx.commit().await
}

/// Marks the offsets `from..=to` of the team that PostgreSQL does not hold as gone for good
/// (lost with a Redis master whose replica did not have them): the watermark passes over
/// them once the offsets before them are synced, as over synced ones.
pub async fn mark_gone(db: &PgPool, team: &str, from: i64, to: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO team_sync (team) VALUES ($1)
         ON CONFLICT (team) DO UPDATE SET synced_offset = team_sync.synced_offset",
    )
    .bind(team)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        r#"INSERT INTO synced_ahead (team, "offset") SELECT $1, generate_series($2::int8, $3::int8)
           ON CONFLICT DO NOTHING"#,
    )
    .bind(team)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    settle(&mut tx, &[team]).await?;
    tx.commit().await
}

/// Moves the (locked) teams' watermarks over the waiting offsets that now follow on,
/// deletes the offsets they passed, and sets the rows' `waiting`.
async fn settle(tx: &mut PgConnection, teams: &[&str]) -> sqlx::Result<()> {
    sqlx::query(
        r#"UPDATE team_sync ts SET synced_offset = adv.top
           FROM (SELECT s.team, max(a."offset") AS top
                 FROM team_sync s
                 JOIN LATERAL (SELECT "offset", row_number() OVER (ORDER BY "offset") AS rn
                               FROM synced_ahead
                               WHERE team = s.team AND "offset" > s.synced_offset) a
                   ON a."offset" = s.synced_offset + a.rn
                 WHERE s.team = ANY($1)
                 GROUP BY s.team) adv
           WHERE ts.team = adv.team"#,
    )
    .bind(teams)
    .execute(&mut *tx)
    .await?;
    // Then what the watermark passed goes, and the rows say whether any offset still waits.
    sqlx::query(
        r#"WITH passed AS (
               DELETE FROM synced_ahead a USING team_sync s
               WHERE a.team = s.team AND s.team = ANY($1) AND a."offset" <= s.synced_offset)
           UPDATE team_sync s SET waiting = EXISTS (
               SELECT 1 FROM synced_ahead a WHERE a.team = s.team AND a."offset" > s.synced_offset)
           WHERE s.team = ANY($1)"#,
    )
    .bind(teams)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
