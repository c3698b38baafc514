//! `GET /v1/teams/{team}/messages`: pages of a team's messages. PostgreSQL holds what the
//! workers synced; the team stream's events past the team's sync watermark are merged in,
//! so a message is readable as soon as its sender got the ack.

use std::collections::BTreeMap;

use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use teamchat_shared::event::EventData;
use teamchat_shared::ids::is_valid_id;
use teamchat_shared::protocol::MessageView;

use crate::AppState;
use crate::server::{Body, http_claims, json, json_error, unauthorized};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

/// A history row: the fields of `message:new` plus edit and delete state.
#[derive(Debug, Serialize)]
struct HistoryMessage {
    #[serde(flatten)]
    message: MessageView,
    edited_at: Option<i64>,
    deleted: bool,
    /// Offset of the newest event applied (edits apply only over older versions).
    #[serde(skip)]
    version: u64,
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    id: String,
    client_id: String,
    user_id: String,
    name: Option<String>,
    body: String,
    meta: Option<serde_json::Value>,
    ts: i64,
    offset: i64,
    edited_at: Option<i64>,
    deleted: bool,
    version: i64,
}

/// Which page: newest first before a seq (or from the newest), or oldest first after one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    Before(Option<u64>),
    After(u64),
}

impl Page {
    fn contains(self, seq: u64) -> bool {
        match self {
            Page::Before(None) => true,
            Page::Before(Some(before)) => seq < before,
            Page::After(after) => seq > after,
        }
    }
}

pub async fn handle<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let Some(team) = path
        .strip_prefix("/v1/teams/")
        .and_then(|rest| rest.strip_suffix("/messages"))
    else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    };
    let claims = match http_claims(state, req) {
        Ok(claims) => claims,
        Err(error) => return unauthorized(error),
    };
    if !is_valid_id(team) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "team is not a valid id",
        );
    }
    if !claims.may_read(team) {
        return json_error(StatusCode::FORBIDDEN, "forbidden", "team not in token");
    }
    let (page, limit) = match parse_query(req.uri().query().unwrap_or_default()) {
        Ok(parsed) => parsed,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    match load(state, team, page, limit).await {
        Ok((messages, has_more)) => json(
            StatusCode::OK,
            &serde_json::json!({"messages": messages, "has_more": has_more}),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "history unavailable");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage unavailable, retry later",
            )
        }
    }
}

fn parse_query(query: &str) -> Result<(Page, usize), &'static str> {
    let (mut before, mut after, mut limit) = (None, None, DEFAULT_LIMIT);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "before" => before = Some(value.parse::<u64>().map_err(|_| "before must be a seq")?),
            "after" => after = Some(value.parse::<u64>().map_err(|_| "after must be a seq")?),
            "limit" => {
                limit = value.parse().map_err(|_| "limit must be 1..200")?;
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err("limit must be 1..200");
                }
            }
            _ => {}
        }
    }
    let page = match (before, after) {
        (Some(_), Some(_)) => return Err("before and after cannot be combined"),
        (_, Some(after)) => Page::After(after),
        (before, None) => Page::Before(before),
    };
    Ok((page, limit))
}

async fn load(
    state: &AppState,
    team: &str,
    page: Page,
    limit: usize,
) -> anyhow::Result<(Vec<HistoryMessage>, bool)> {
    let watermark: Option<i64> =
        sqlx::query_scalar("SELECT synced_offset FROM team_sync WHERE team = $1")
            .bind(team)
            .fetch_optional(&state.db)
            .await?;
    let columns = r#"seq, id, client_id, user_id, name, body, meta, ts, "offset", edited_at, deleted, version"#;
    let fetch = (limit + 1) as i64;
    let rows: Vec<Row> = match page {
        Page::Before(before) => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {columns} FROM messages WHERE team = $1 AND id IS NOT NULL AND ($2::int8 IS NULL OR seq < $2)
                 ORDER BY seq DESC LIMIT $3"
            )))
            .bind(team)
            .bind(before.map(|b| b as i64))
            .bind(fetch)
            .fetch_all(&state.db)
            .await?
        }
        Page::After(after) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM messages WHERE team = $1 AND id IS NOT NULL AND seq > $2 ORDER BY seq ASC LIMIT $3"
        )))
        .bind(team)
        .bind(after as i64)
        .bind(fetch)
        .fetch_all(&state.db)
        .await?,
    };
    let mut merged: BTreeMap<u64, HistoryMessage> = rows
        .into_iter()
        .map(|row| (row.seq as u64, from_row(team, row)))
        .collect();

    // Events the workers have not synced yet (the watermark is contiguous, so this is all).
    let unsynced_from = watermark.unwrap_or(0) as u64 + 1;
    for event in state
        .broker
        .read_range(team, unsynced_from, u64::MAX)
        .await?
    {
        if !page.contains(event.seq) {
            continue;
        }
        match &event.data {
            EventData::Message(m) => {
                merged.entry(event.seq).or_insert_with(|| HistoryMessage {
                    message: MessageView::new(team, event.seq, event.offset, m),
                    edited_at: None,
                    deleted: false,
                    version: event.offset,
                });
            }
            EventData::Edit(edit) => {
                if let Some(row) = merged.get_mut(&event.seq)
                    && !row.deleted
                    && row.version < event.offset
                {
                    row.message.body = edit.body.clone();
                    row.edited_at = Some(edit.ts);
                    row.version = event.offset;
                }
            }
            EventData::Delete(_) => {
                if let Some(row) = merged.get_mut(&event.seq) {
                    row.deleted = true;
                    row.message.body.clear();
                    row.version = row.version.max(event.offset);
                }
            }
            EventData::Receipt(_) => {}
        }
    }

    let mut messages: Vec<HistoryMessage> = match page {
        Page::Before(_) => merged.into_values().rev().collect(),
        Page::After(_) => merged.into_values().collect(),
    };
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    Ok((messages, has_more))
}

fn from_row(team: &str, row: Row) -> HistoryMessage {
    HistoryMessage {
        message: MessageView {
            team: team.to_owned(),
            seq: row.seq as u64,
            id: row.id,
            client_id: row.client_id,
            user: row.user_id,
            name: row.name,
            body: if row.deleted { String::new() } else { row.body },
            meta: row.meta,
            ts: row.ts,
            offset: row.offset.to_string(),
        },
        edited_at: row.edited_at,
        deleted: row.deleted,
        version: row.version as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bounds_are_checked() {
        assert_eq!(parse_query(""), Ok((Page::Before(None), 50)));
        assert_eq!(
            parse_query("before=10&limit=5"),
            Ok((Page::Before(Some(10)), 5))
        );
        assert_eq!(parse_query("after=3"), Ok((Page::After(3), 50)));
        assert!(parse_query("before=1&after=2").is_err());
        assert!(parse_query("limit=0").is_err());
        assert!(parse_query("limit=201").is_err());
        assert!(parse_query("before=x").is_err());
        assert!(parse_query("after=-1").is_err());
    }
}
