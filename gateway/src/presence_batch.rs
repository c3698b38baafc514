//! Presence changes a room has received but not yet sent to its members.
//!
//! Every join in a room is a presence change for every other member: a storm of joins is
//! quadratic. Changes are therefore gathered and sent as one batch (one queue slot and one
//! write per member), at most once per `GAP` while they keep coming, and a user who came
//! and went within a batch (or went and came back) is not sent at all: the members' view
//! of who is online ends the same.

use std::time::Duration;

use tokio::time::Instant;

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
