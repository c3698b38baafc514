//! Presence in a room: the members' entries kept online (refreshed three times per TTL,
//! the sessions of gateways that stopped refreshing expired), and the changes the room has
//! received but not yet sent to its members.
//!
//! Every join in a room is a presence change for every other member: a storm of joins is
//! quadratic. Changes are therefore gathered and sent as one batch (one queue slot and one
//! write per member), at most once per `GAP` while they keep coming, and a user who came
//! and went within a batch (or went and came back) is not sent at all: the members' view
//! of who is online ends the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Room, count_out, offer};
use crate::outlet::{OutFrame, Outbound};
use crate::protocol::ServerFrame;

/// The least time between two batches of one room. The first change after a quiet spell
/// goes out at once.
pub const GAP: Duration = Duration::from_millis(20);

/// One user's pending change: `src` is the session that caused it, which does not hear it.
#[derive(Debug, PartialEq, Eq)]
pub struct PresenceChange {
    pub user: String,
    pub status: &'static str,
    pub src: String,
}

#[derive(Default)]
pub struct PresenceBatch {
    changes: Vec<PresenceChange>,
    last_sent: Option<Instant>,
}

impl PresenceBatch {
    /// Adds a change; one for a user already pending with the other status cancels it.
    pub fn push(&mut self, change: PresenceChange) {
        match self.changes.iter().position(|c| c.user == change.user) {
            Some(i) if self.changes[i].status != change.status => {
                self.changes.remove(i);
            }
            Some(i) => self.changes[i] = change,
            None => self.changes.push(change),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// When the pending changes are to be sent; `None` when there are none.
    pub fn due(&self) -> Option<Instant> {
        if self.changes.is_empty() {
            return None;
        }
        Some(self.last_sent.map_or_else(Instant::now, |at| at + GAP))
    }

    /// Takes the pending changes to send them now.
    pub fn take(&mut self, now: Instant) -> Vec<PresenceChange> {
        if !self.changes.is_empty() {
            self.last_sent = Some(now);
        }
        std::mem::take(&mut self.changes)
    }
}

impl Room {
    /// Sends the pending presence changes to every member, as one queued batch each; the
    /// connection that caused a change does not hear it.
    pub(super) fn send_presence(&mut self) {
        if self.presence_out.is_empty() {
            return;
        }
        let changes = self.presence_out.take(Instant::now());
        if self.members.is_empty() {
            return;
        }
        let frames: Vec<Arc<OutFrame>> = changes
            .iter()
            .map(|change| {
                OutFrame::new(ServerFrame::PresenceUpdate {
                    team: self.team.clone(),
                    user: change.user.clone(),
                    status: change.status,
                })
            })
            .collect();
        let caused: HashMap<&str, u32> = changes
            .iter()
            .enumerate()
            .map(|(i, change)| (change.src.as_str(), i as u32))
            .collect();
        let frames = Arc::new(frames);
        let mut sent = 0;
        self.members.retain(|member| {
            let skip = caused.get(&*member.who.session).copied();
            if skip.is_some() && frames.len() == 1 {
                return true;
            }
            let batch = Outbound::Batch(frames.clone(), skip.unwrap_or(u32::MAX));
            offer(
                member,
                batch,
                frames.len() - usize::from(skip.is_some()),
                &mut sent,
            )
        });
        count_out(&frames[0], sent);
    }

    /// Keeps this gateway's members online and lets the presence script expire the
    /// sessions of gateways that stopped refreshing (it publishes their offline updates).
    pub(super) async fn refresh_presence(&mut self) {
        if self.members.is_empty() {
            return;
        }
        let sessions: Vec<Arc<str>> = self.members.iter().map(|m| m.who.session.clone()).collect();
        let ttl = self.presence_ttl_ms();
        let missing = match self
            .shared
            .broker
            .presence_tick(&self.team, &sessions, ttl)
            .await
        {
            Ok(missing) => missing,
            Err(e) => {
                self.storage_failed("presence refresh", &e);
                return;
            }
        };
        // Sessions that expired while this gateway could not refresh them (a Redis outage
        // longer than the TTL): they are online again, and others hear so.
        let rejoining: Vec<_> = self
            .members
            .iter()
            .filter(|m| missing.iter().any(|s| **s == *m.who.session))
            .map(|m| m.who.presence())
            .collect();
        if rejoining.is_empty() {
            return;
        }
        if let Err(e) = self
            .shared
            .broker
            .presence_join(&self.team, &rejoining, ttl)
            .await
        {
            self.storage_failed("presence rejoin", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, status: &'static str, src: &str) -> PresenceChange {
        PresenceChange {
            user: user.to_owned(),
            status,
            src: src.to_owned(),
        }
    }

    #[test]
    fn a_user_who_came_and_went_within_a_batch_is_not_sent() {
        let mut batch = PresenceBatch::default();
        batch.push(change("ann", "online", "s1"));
        batch.push(change("ben", "online", "s2"));
        batch.push(change("ann", "offline", "s1"));
        batch.push(change("cid", "offline", "s3"));
        batch.push(change("cid", "online", "s4"));
        assert_eq!(batch.take(Instant::now()), [change("ben", "online", "s2")]);
    }

    #[test]
    fn a_repeated_change_is_sent_once_from_its_latest_source() {
        let mut batch = PresenceBatch::default();
        batch.push(change("ann", "online", "s1"));
        batch.push(change("ann", "online", "s2"));
        assert_eq!(batch.take(Instant::now()), [change("ann", "online", "s2")]);
    }

    #[test]
    fn batches_follow_each_other_at_least_a_gap_apart() {
        let mut batch = PresenceBatch::default();
        assert_eq!(batch.due(), None);
        batch.push(change("ann", "online", "s1"));
        assert!(
            batch.due().unwrap() <= Instant::now(),
            "the first change goes out at once"
        );
        let sent = Instant::now();
        assert_eq!(batch.take(sent).len(), 1);
        assert_eq!(batch.due(), None);
        batch.push(change("ben", "online", "s2"));
        assert_eq!(batch.due(), Some(sent + GAP));
    }
}
