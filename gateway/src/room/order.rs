//! Ordering: each durable event is delivered once, in offset order, to every member but
//! the session that caused it. What pub/sub did not bring (an offset gap, the periodic
//! check of the stream's top) is read from the team stream first; a stream lost and
//! started anew (a new epoch) closes the members with 1012.

use teamchat_shared::event::{Ephemeral, Published, StreamEvent};
use teamchat_shared::metrics as m;
use teamchat_shared::runtime::now_ms;
use teamchat_shared::stream;
use tracing::{error, warn};

use super::presence::PresenceChange;
use super::{Room, count_out, offer};
use crate::broker::Top;
use crate::outlet::{OutFrame, Outbound};
use crate::protocol::ServerFrame;

impl Room {
    pub(super) async fn on_published(&mut self, published: Box<Published>) {
        let event = match *published {
            Published::Durable { epoch, event } => {
                if self.reset_if_new_epoch(&epoch) {
                    self.last = event.offset;
                    return;
                }
                event
            }
            Published::Ephemeral {
                kind: Ephemeral::PresenceOnline,
                src,
                user,
            } => {
                return self.presence_out.push(PresenceChange {
                    user,
                    status: "online",
                    src,
                });
            }
            Published::Ephemeral {
                kind: Ephemeral::PresenceOffline,
                src,
                user,
            } => {
                return self.presence_out.push(PresenceChange {
                    user,
                    status: "offline",
                    src,
                });
            }
            Published::Ephemeral { kind, user, .. } => return self.on_typing(kind, user),
        };
        let offset = event.offset;
        if self.epoch.is_empty() || offset <= self.last {
            // Before the first state read nobody is a member yet; otherwise a duplicate.
            return;
        }
        // Presence heard before this event is sent before it, as it was heard.
        self.send_presence();
        if offset > self.last + 1 {
            // Boxed with the event: a gap is rare, and what waits for its fill would
            // otherwise widen the room's future.
            Box::pin(self.deliver_after_gap(event)).await;
        } else {
            self.deliver(&event);
        }
    }

    /// Reads what is missing before `event` from the stream, then delivers it all. Past a
    /// gap that cannot be read nothing is delivered; the periodic check retries the read.
    pub(super) async fn deliver_after_gap(&mut self, event: Box<StreamEvent>) {
        if self.fill(self.last + 1, event.offset - 1).await {
            self.deliver(&event);
        }
    }

    /// When the team's epoch changed (its stream was lost), nothing delivered so far can be
    /// continued: the members are closed with 1012 and rejoin with `since`, which then says
    /// `recovered: false`. Returns whether that happened; the caller sets the new `last`.
    pub(super) fn reset_if_new_epoch(&mut self, epoch: &str) -> bool {
        if self.epoch.is_empty() || self.epoch == epoch {
            return false;
        }
        warn!(team = %self.team, old = %self.epoch, new = %epoch, "team stream was reset");
        for member in self.members.drain(..) {
            member.outlet.stream_reset();
        }
        self.typing.clear();
        self.epoch = epoch.to_owned();
        true
    }

    /// Catches up with the stream's top: events pub/sub lost or has not brought yet.
    pub(super) async fn check_top(&mut self) {
        if self.epoch.is_empty() || self.members.is_empty() {
            return;
        }
        match self.shared.broker.top_offset(&self.team).await {
            Ok(top) => self.on_top(top).await,
            Err(e) => self.storage_failed("tail check", &e),
        }
    }

    /// Compares the stream's top with what was delivered: reads what is missing, or, if
    /// the stream is another one (a new epoch) or its top went back, checks whether it was
    /// lost and started anew. A new stream's offsets do not follow the old one's, even
    /// when they are higher.
    pub(super) async fn on_top(&mut self, top: Top) {
        if self.epoch.is_empty() || self.members.is_empty() {
            return;
        }
        let same_stream = top.epoch.is_empty() || top.epoch == self.epoch;
        if same_stream && top.offset > self.last {
            self.fill(self.last + 1, top.offset).await;
        } else if !same_stream || top.offset < self.last {
            match self.shared.storage.team_state(&self.team).await {
                Ok(state) if self.reset_if_new_epoch(&state.epoch) => self.last = state.offset,
                Ok(_) => {}
                Err(e) => self.storage_failed("tail check", &e),
            }
        }
    }

    /// Reads `from..=to` from the stream and delivers it, a page at a time (a long gap,
    /// after a pub/sub outage, is never read or held at once). Returns false when Redis
    /// could not be read. If the stream no longer holds the whole range, the members
    /// cannot be given a gap: they are closed with 1013 and resume with `since` (getting
    /// `recovered: false`).
    pub(super) async fn fill(&mut self, from: u64, to: u64) -> bool {
        let mut start = from;
        while start <= to {
            let end = to.min(start.saturating_add(stream::PAGE as u64 - 1));
            let range = match self.shared.broker.read_page(&self.team, start, end).await {
                Ok(range) => range,
                Err(e) => {
                    self.storage_failed("gap fill", &e);
                    return false;
                }
            };
            if range.entries() as u64 != end - start + 1 {
                error!(team = %self.team, from = start, to = end, got = range.entries(), "events trimmed before delivery");
                for member in self.members.drain(..) {
                    member.outlet.too_slow();
                }
                self.last = to;
                return true;
            }
            // An entry no reader can decode is passed over (counted, logged once: `last`
            // moves past it), never a reason to close the members or stall the team.
            let mut undecodable = range.undecodable.iter().peekable();
            for event in &range.events {
                while let Some(offset) = undecodable.next_if(|offset| **offset < event.offset) {
                    self.pass_over(*offset);
                }
                self.deliver(event);
            }
            for offset in undecodable {
                self.pass_over(*offset);
            }
            start = end + 1;
        }
        true
    }

    /// Moves past an entry of the team stream that cannot be decoded.
    fn pass_over(&mut self, offset: u64) {
        debug_assert_eq!(offset, self.last + 1);
        self.last = offset;
        metrics::counter!(m::UNDECODABLE_EVENTS, "source" => "stream").increment(1);
        error!(team = %self.team, offset, "undecodable stream entry passed over");
    }

    /// Sends one event to every member but its sender, encoded once per encoding.
    pub(super) fn deliver(&mut self, event: &StreamEvent) {
        debug_assert_eq!(event.offset, self.last + 1);
        self.last = event.offset;
        if self.members.is_empty() {
            return;
        }
        let frame = OutFrame::new(ServerFrame::from_event(event));
        let mut sent = 0;
        self.members.retain(|member| {
            *member.who.session == *event.src
                || offer(member, Outbound::Shared(frame.clone()), 1, &mut sent)
        });
        count_out(&frame, sent);
        let age_ms = now_ms() - event.data.ts();
        metrics::histogram!(m::FANOUT_SECONDS).record(age_ms.max(0) as f64 / 1000.0);
    }
}
