//! `GET /v1/teams/{team}/messages`: pages of a team's messages. PostgreSQL holds what the
//! workers synced; the team stream's events past the team's sync watermark are merged in,
//! so a message is readable as soon as its sender got the ack.

use std::collections::BTreeMap;

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use teamchat_shared::db::history::{MessageRow, Page, Scope};
use teamchat_shared::db::{self};
use teamchat_shared::event::EventData;

use super::{Body, authorized, check_access, json, json_error, unavailable};
use crate::AppState;
use crate::protocol::MessageView;

/// The most unsynced events one history request reads from the stream. Past it the
/// workers are far behind on the team (`TeamchatSyncBacklog` fires), and history answers
/// 503 rather than read without bound on every request.
pub(super) const MAX_UNSYNCED: u64 = 10_000;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

/// A history row: the fields of `message:new` plus edit and delete state, and a top-level
/// message's thread counters.
#[derive(Debug, Serialize)]
struct HistoryMessage {
    #[serde(flatten)]
    message: MessageView,
    edited_at: Option<i64>,
    deleted: bool,
    pinned: bool,
    /// `reply_count` and `last_reply_ts`; absent on a reply.
    #[serde(flatten)]
    thread: Option<Thread>,
    /// `[{"emoji","count","me"}]` as the workers synced them.
    reactions: serde_json::Value,
    /// Offset of the newest event applied (edits apply only over older versions).
    #[serde(skip)]
    version: u64,
}

/// What a thread's top-level message shows of its replies (they may trail the replies by
/// the workers' sync lag; deleted replies count).
#[derive(Debug, Serialize)]
struct Thread {
    reply_count: u64,
    last_reply_ts: Option<i64>,
}

/// `GET /v1/teams/{team}/messages`, `…/messages/{seq}/replies`, `…/messages/{seq}/edits`
/// and `…/pins`.
pub async fn handle<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    if path.ends_with("/pins") {
        return pins(state, req).await;
    }
    if let Some(rest) = path.strip_suffix("/edits") {
        return match rest.rsplit_once("/messages/").and_then(|(_, s)| seq(s)) {
            Some(seq) if seq >= 1 => {
                let suffix = &path[path.rfind("/messages/").unwrap_or_default()..];
                super::edits::handle(state, req, suffix, seq).await
            }
            _ => json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        };
    }
    // `/messages/{seq}/replies`: a thread's replies, oldest first.
    let replies_of = path.strip_suffix("/replies").map(|rest| {
        rest.rsplit_once("/messages/")
            .and_then(|(_, parent)| seq(parent))
            .filter(|parent| *parent >= 1)
    });
    let suffix = match replies_of {
        None => "/messages",
        Some(None) => return json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        Some(Some(_)) => &path[path.rfind("/messages/").unwrap_or_default()..],
    };
    let (team, me) = match readable_team(state, req, suffix).await {
        Ok(readable) => readable,
        Err(refused) => return *refused,
    };
    let reader = Reader {
        team,
        me: Some(&me),
    };
    match replies_of.flatten() {
        Some(parent) => replies_page(state, reader, parent, req.uri().query()).await,
        None => page_of(state, reader, req.uri().query()).await,
    }
}

/// Whose history is read: the team, and the user `me` in `reactions` is (none for the
/// server API).
#[derive(Clone, Copy)]
pub(super) struct Reader<'a> {
    pub team: &'a str,
    pub me: Option<&'a str>,
}

/// The team of `/v1/teams/{team}{suffix}` and the token's user, if the token may read the
/// team (and was neither revoked nor removed from it).
pub(super) async fn readable_team<'a, B>(
    state: &AppState,
    req: &'a Request<B>,
    suffix: &str,
) -> Result<(&'a str, String), Box<Response<Body>>> {
    let (team, claims) = authorized(state, req, ("/v1/teams/", "team", suffix))?;
    if !claims.may_read(team) {
        return Err(Box::new(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "team not in token",
        )));
    }
    check_access(state, &claims, Some(team)).await?;
    Ok((team, claims.sub))
}

/// The page of `team`'s messages the query asks for (the server API's too);
/// `top_level=true` leaves thread replies out.
pub(super) async fn page_of(
    state: &AppState,
    reader: Reader<'_>,
    query: Option<&str>,
) -> Response<Body> {
    let (page, limit, top_level) = match parse_query(query.unwrap_or_default()) {
        Ok(parsed) => parsed,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let scope = if top_level {
        Scope::TopLevel
    } else {
        Scope::All
    };
    answer(load(state, reader, page, scope, limit).await)
}

/// The most pinned messages listed.
const MAX_PINS: i64 = 1_000;

/// `GET /v1/teams/{team}/pins`: the pinned messages, most recently pinned first (as the
/// workers synced them: a pin may trail its live event by the sync lag).
async fn pins<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    let (team, me) = match readable_team(state, req, "/pins").await {
        Ok(readable) => readable,
        Err(refused) => return *refused,
    };
    match db::history::pins(&state.db, team, MAX_PINS, Some(&me)).await {
        Ok(rows) => {
            let messages: Vec<HistoryMessage> =
                rows.into_iter().map(|row| from_row(team, row)).collect();
            json(StatusCode::OK, &serde_json::json!({ "messages": messages }))
        }
        Err(e) => unavailable("pins", &e),
    }
}

/// A thread's replies after `after` (0: from the first), oldest first.
async fn replies_page(
    state: &AppState,
    reader: Reader<'_>,
    parent: u64,
    query: Option<&str>,
) -> Response<Body> {
    let (page, limit) = match parse_query(query.unwrap_or_default()) {
        Ok((page @ Page::After(_), limit, _)) => (page, limit),
        Ok((Page::Before(None), limit, _)) => (Page::After(0), limit),
        Ok(_) => {
            let message = "replies are listed oldest first: after, not before";
            return json_error(StatusCode::BAD_REQUEST, "bad_request", message);
        }
        Err(message) => return json_error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    answer(load(state, reader, page, Scope::Replies(parent), limit).await)
}

fn answer(loaded: anyhow::Result<Option<(Vec<HistoryMessage>, bool)>>) -> Response<Body> {
    match loaded {
        Ok(Some((messages, has_more))) => json(
            StatusCode::OK,
            &serde_json::json!({"messages": messages, "has_more": has_more}),
        ),
        Ok(None) => behind_its_sync(),
        Err(e) => unavailable("history", &e),
    }
}

/// 503 for a team the workers are far behind on (more than `MAX_UNSYNCED` events).
pub(super) fn behind_its_sync() -> Response<Body> {
    let mut response = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "history is behind its sync, retry later",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

fn parse_query(query: &str) -> Result<(Page, usize, bool), &'static str> {
    let (mut before, mut after, mut limit) = (None, None, DEFAULT_LIMIT);
    let mut top_level = false;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "top_level" => {
                top_level = match value.as_ref() {
                    "true" => true,
                    "false" => false,
                    _ => return Err("top_level must be true or false"),
                }
            }
            "before" => before = Some(seq(&value).ok_or("before must be a seq")?),
            "after" => after = Some(seq(&value).ok_or("after must be a seq")?),
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
    Ok((page, limit, top_level))
}

/// A seq from the query: a non-negative integer PostgreSQL's `int8` holds.
fn seq(value: &str) -> Option<u64> {
    value
        .parse::<u64>()
        .ok()
        .filter(|seq| *seq <= i64::MAX as u64)
}

/// A page, or `None` when more than `MAX_UNSYNCED` events of the team wait for the workers.
async fn load(
    state: &AppState,
    Reader { team, me }: Reader<'_>,
    page: Page,
    scope: Scope,
    limit: usize,
) -> anyhow::Result<Option<(Vec<HistoryMessage>, bool)>> {
    let watermark = db::watermark::read(&state.db, team).await?;
    // Events the workers have not synced yet (the watermark is contiguous, so this is all).
    let unsynced_from = watermark.unwrap_or(0) as u64 + 1;
    let top = state.broker.stream_top(team).await?;
    if top.saturating_sub(unsynced_from) >= MAX_UNSYNCED {
        return Ok(None);
    }
    let rows = db::history::page(&state.db, team, page, scope, (limit + 1) as i64, me).await?;
    let mut merged: BTreeMap<u64, HistoryMessage> = rows
        .into_iter()
        .map(|row| (row.seq as u64, from_row(team, row)))
        .collect();

    for event in state
        .broker
        .read_range(team, unsynced_from, top)
        .await?
        .events
    {
        if !page.contains(event.seq) {
            continue;
        }
        match &event.data {
            EventData::Message(m) if scope.contains(m.parent) => {
                merged.entry(event.seq).or_insert_with(|| HistoryMessage {
                    message: MessageView::new(team, event.seq, event.offset, m),
                    edited_at: None,
                    deleted: false,
                    pinned: false,
                    thread: m.parent.is_none().then_some(Thread {
                        reply_count: 0,
                        last_reply_ts: None,
                    }),
                    reactions: serde_json::json!([]),
                    version: event.offset,
                });
            }
            EventData::Message(_) => {}
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
                    row.message.mentions.clear();
                    row.message.attachments.clear();
                    row.version = row.version.max(event.offset);
                }
            }
            EventData::Pin(_) | EventData::Unpin(_) => {
                if let Some(row) = merged.get_mut(&event.seq) {
                    row.pinned = matches!(event.data, EventData::Pin(_));
                }
            }
            // Aggregates come from PostgreSQL alone (they may trail by the sync lag): a
            // reaction past the watermark may already be counted there.
            EventData::Receipt(_) | EventData::React(_) | EventData::Unreact(_) => {}
        }
    }

    let mut messages: Vec<HistoryMessage> = match page {
        Page::Before(_) => merged.into_values().rev().collect(),
        Page::After(_) => merged.into_values().collect(),
    };
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    Ok(Some((messages, has_more)))
}

fn from_row(team: &str, row: MessageRow) -> HistoryMessage {
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
            parent: row.parent.map(|p| p as u64),
            // (A deleted message's are blanked by the worker.)
            mentions: row.mentions.unwrap_or_default(),
            attachments: row
                .attachments
                .and_then(|a| serde_json::from_value(a).ok())
                .unwrap_or_default(),
        },
        edited_at: row.edited_at,
        deleted: row.deleted,
        pinned: row.pinned,
        thread: row.parent.is_none().then_some(Thread {
            reply_count: row.reply_count.unwrap_or(0) as u64,
            last_reply_ts: row.last_reply_ts,
        }),
        reactions: row.reactions,
        version: row.version as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn query_bounds_are_checked() {
        assert_eq!(parse_query(""), Ok((Page::Before(None), 50, false)));
        assert_eq!(
            parse_query("before=10&limit=5"),
            Ok((Page::Before(Some(10)), 5, false))
        );
        assert_eq!(parse_query("after=3"), Ok((Page::After(3), 50, false)));
        assert!(parse_query("before=1&after=2").is_err());
        assert!(parse_query("limit=0").is_err());
        assert!(parse_query("limit=201").is_err());
        assert!(parse_query("before=x").is_err());
        assert!(parse_query("after=-1").is_err());
        assert_eq!(
            parse_query("top_level=true&limit=7"),
            Ok((Page::Before(None), 7, true))
        );
        assert!(parse_query("top_level=1").is_err());
        // Past int8: refused, not wrapped round to a negative seq.
        assert!(parse_query("before=9223372036854775808").is_err());
        assert_eq!(
            parse_query("after=9223372036854775807"),
            Ok((Page::After(i64::MAX as u64), 50, false))
        );
    }

    proptest! {
        /// Any query string: no panic, and what is accepted is in range.
        #[test]
        fn fuzz_history_queries(query in prop_oneof![
            ".{0,40}",
            "((before|after|limit)=-?[0-9]{1,22}&?){0,3}",
        ]) {
            if let Ok((page, limit, _)) = parse_query(&query) {
                prop_assert!((1..=MAX_LIMIT).contains(&limit));
                let seq = match page {
                    Page::Before(before) => before.unwrap_or(0),
                    Page::After(after) => after,
                };
                prop_assert!(seq <= i64::MAX as u64);
            }
        }
    }
}
