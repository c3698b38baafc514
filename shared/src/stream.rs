//! Reading a team's stream back: the events of an offset range, page by page. Used by the
//! gateway (gap fill, recovery, history) and the worker (replay, export).

use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;

use crate::event::{self, StreamEvent};
use crate::keys::Keys;

/// Entries read per XRANGE call.
pub const PAGE: usize = 1_000;

/// Part of a team's stream as read back: its events, and the offsets whose entries are
/// there but cannot be decoded (written by hand, by an older version, by a bug). Readers
/// pass those over, so one poison entry never stalls a team or punishes its members.
#[derive(Debug, Default)]
pub struct Range {
    /// The decodable events, in offset order.
    pub events: Vec<StreamEvent>,
    /// Offsets of the entries that could not be decoded, in order.
    pub undecodable: Vec<u64>,
}

impl Range {
    /// Entries read, decodable or not.
    pub fn entries(&self) -> usize {
        self.events.len() + self.undecodable.len()
    }

    /// The offset of the last entry read, decodable or not.
    pub fn last_offset(&self) -> Option<u64> {
        let event = self.events.last().map(|e| e.offset);
        event.max(self.undecodable.last().copied())
    }
}

/// One page of the team's entries with offsets in `from..=to`, at most `count`, in order.
/// Entries that cannot be decoded are reported by offset (the caller logs and counts them:
/// history, which reads the same entries again and again, does neither).
pub async fn read_page<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
    team: &str,
    from: u64,
    to: u64,
    count: usize,
) -> redis::RedisResult<Range> {
    let reply: StreamRangeReply = conn
        .xrange_count(
            keys.team_events(team),
            format!("{from}-0"),
            format!("{to}-0"),
            count,
        )
        .await?;
    let mut range = Range {
        events: Vec::with_capacity(reply.ids.len()),
        undecodable: Vec::new(),
    };
    for entry in reply.ids {
        let Some(offset) = event::offset_of_entry_id(&entry.id) else {
            continue;
        };
        match event::from_fields(Some(team), Some(offset), event::entry_fields(&entry.map)) {
            Ok(event) => range.events.push(event),
            Err(_) => range.undecodable.push(offset),
        }
    }
    Ok(range)
}

/// All of the team's entries with offsets in `from..=to` that the stream still holds.
pub async fn read_range<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
    team: &str,
    from: u64,
    to: u64,
) -> redis::RedisResult<Range> {
    let mut range = Range::default();
    let mut start = from;
    while start <= to {
        let page = read_page(conn, keys, team, start, to, PAGE).await?;
        let full = page.entries() == PAGE;
        match page.last_offset() {
            Some(last) => start = last + 1,
            None => break,
        }
        range.events.extend(page.events);
        range.undecodable.extend(page.undecodable);
        if !full {
            break;
        }
    }
    Ok(range)
}

/// The offset of the newest entry the team's stream holds (0 for none).
pub async fn top<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
    team: &str,
) -> redis::RedisResult<u64> {
    let reply: StreamRangeReply = conn
        .xrevrange_count(keys.team_events(team), "+", "-", 1)
        .await?;
    Ok(reply
        .ids
        .first()
        .and_then(|entry| event::offset_of_entry_id(&entry.id))
        .unwrap_or(0))
}
