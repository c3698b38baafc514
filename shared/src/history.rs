//! A team's events by offset from wherever they are still held: the team stream for the
//! range it holds, the event archive in PostgreSQL for what the stream no longer holds
//! (trimmed, or lost with a Redis). One ordered sequence, each offset once; offsets held
//! by neither are reported as missing, never skipped in silence. The worker's replay and
//! export and the server API's event export read through it.

use std::ops::RangeInclusive;

use redis::aio::ConnectionLike;
use sqlx::PgPool;

use crate::db::archive::read_page as read_archive;
use crate::event::StreamEvent;
use crate::keys::Keys;
use crate::stream;

/// The next events of the range, in offset order.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<StreamEvent>,
    /// Offsets of stream entries that cannot be decoded (passed over, as elsewhere).
    pub undecodable: Vec<u64>,
    /// Offsets before these events that neither the stream nor the archive holds.
    pub missing: Option<RangeInclusive<u64>>,
}

/// Reads `from..=to` of one team's history, page by page.
pub struct History<C> {
    redis: C,
    keys: Keys,
    archive: PgPool,
    team: String,
    next: u64,
    to: u64,
    page: usize,
    /// The first offset the stream held at or after `next` when last read: below it the
    /// archive is read. `None` until the stream is read, or when it held nothing more.
    stream_from: Option<u64>,
    /// Whether the stream was read and held nothing at or after the offset it was read at.
    stream_done: bool,
}

impl<C: ConnectionLike + Send + Sync> History<C> {
    pub fn new(
        redis: C,
        keys: Keys,
        archive: PgPool,
        team: String,
        range: RangeInclusive<u64>,
        page: usize,
    ) -> Self {
        Self {
            redis,
            keys,
            archive,
            team,
            next: *range.start(),
            to: *range.end(),
            page: page.max(1),
            stream_from: None,
            stream_done: false,
        }
    }

    /// The next page, or `None` once nothing further is held anywhere.
    pub async fn next_page(&mut self) -> anyhow::Result<Option<Page>> {
        if self.next > self.to {
            return Ok(None);
        }
        let below_stream = match self.stream_from {
            Some(from) => self.next < from,
            None => self.stream_done,
        };
        if !below_stream {
            let mut range = stream::read_page(
                &mut self.redis,
                &self.keys,
                &self.team,
                self.next,
                self.to,
                self.page,
            )
            .await?;
            let mut offsets: Vec<u64> = range.events.iter().map(|e| e.offset).collect();
            offsets.extend(&range.undecodable);
            offsets.sort_unstable();
            // How far the stream runs on from `next` without a hole.
            let run = offsets
                .iter()
                .zip(self.next..)
                .take_while(|(held, wanted)| *held == wanted)
                .count();
            if run > 0 {
                let end = self.next + run as u64;
                if let Some(&after) = offsets.get(run) {
                    // A hole inside the stream (entries removed): the archive may hold it.
                    self.stream_from = Some(after);
                    range.events.retain(|e| e.offset < end);
                    range.undecodable.retain(|o| *o < end);
                }
                self.next = end;
                return Ok(Some(Page {
                    events: range.events,
                    undecodable: range.undecodable,
                    missing: None,
                }));
            }
            // The stream holds nothing at `next`: what comes before its first entry (or all
            // of the range, if it holds none) is read from the archive.
            self.stream_from = offsets.first().copied();
            self.stream_done = offsets.is_empty();
        }
        let until = match self.stream_from {
            Some(from) => self.to.min(from - 1),
            None => self.to,
        };
        let events = read_archive(&self.archive, &self.team, self.next, until, self.page).await?;
        let Some(first) = events.first().map(|e| e.offset) else {
            // Nothing archived up to the stream's next entry: a hole, with events after it.
            // With no stream entry after it, the history simply ends here.
            let Some(from) = self.stream_from else {
                return Ok(None);
            };
            let missing = self.next..=from - 1;
            self.next = from;
            return Ok(Some(Page {
                missing: Some(missing),
                ..Page::default()
            }));
        };
        let missing = (first > self.next).then(|| self.next..=first - 1);
        // Up to the first hole: the next page reports it.
        let run = events
            .iter()
            .zip(first..)
            .take_while(|(event, wanted)| event.offset == *wanted)
            .count();
        let mut events = events;
        events.truncate(run);
        self.next = first + run as u64;
        Ok(Some(Page {
            events,
            undecodable: Vec::new(),
            missing,
        }))
    }
}
