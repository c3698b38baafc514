//! Reading a team's stream back: the events of an offset range, page by page. Used by the
//! gateway (gap fill, recovery, history) and the worker (replay, export).

use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;

use crate::event::{self, StreamEvent};
use crate::keys::Keys;

/// Entries read per XRANGE call.
pub const PAGE: usize = 1_000;

/// One page of the team's events with offsets in `from..=to`, at most `count`, in order.
/// Entries that cannot be decoded are logged and passed over.
pub async fn read_page<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
    team: &str,
    from: u64,
    to: u64,
    count: usize,
) -> redis::RedisResult<Vec<StreamEvent>> {
    let reply: StreamRangeReply = conn
        .xrange_count(
            keys.team_events(team),
            format!("{from}-0"),
            format!("{to}-0"),
            count,
        )
        .await?;
    let mut events = Vec::with_capacity(reply.ids.len());
    for entry in reply.ids {
        let Some(offset) = event::offset_of_entry_id(&entry.id) else {
            continue;
        };
        match event::from_fields(Some(team), Some(offset), event::entry_fields(&entry.map)) {
            Ok(event) => events.push(event),
            Err(error) => tracing::error!(%error, team, offset, "undecodable stream entry"),
        }
    }
    Ok(events)
}

/// All of the team's events with offsets in `from..=to` that the stream still holds.
pub async fn read_range<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
    team: &str,
    from: u64,
    to: u64,
) -> redis::RedisResult<Vec<StreamEvent>> {
    let mut events = Vec::new();
    let mut start = from;
    while start <= to {
        let page = read_page(conn, keys, team, start, to, PAGE).await?;
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            start = last.offset + 1;
        }
        events.extend(page);
        if !full {
            break;
        }
    }
    Ok(events)
}
