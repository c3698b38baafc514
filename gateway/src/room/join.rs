//! Joining and leaving a room: joins are answered together with one state read, the
//! room first brings its members up to that state so each joiner starts exactly there,
//! then each gets `room:joined`, what it missed (`since`), who is online and the receipts,
//! in one write.

use teamchat_shared::event::StreamEvent;

use super::{Join, Left, Room};
use crate::broker::TeamState;
use crate::outlet::{OutFrame, Outbound};
use crate::protocol::{ErrorCode, RequestError, ServerFrame, Since};

impl Room {
    /// Answers joins with one state read: the room first delivers everything up to the
    /// state's offset to its members, so each new member starts exactly there.
    pub(super) async fn on_joins(&mut self, joins: Vec<Join>) {
        if joins.is_empty() {
            return;
        }
        let state = match self.shared.storage.team_state(&self.team).await {
            Ok(state) => state,
            Err(e) => {
                self.storage_failed("join", &e);
                for join in joins {
                    self.refuse_unavailable(join);
                }
                return;
            }
        };
        if self.epoch.is_empty() || self.reset_if_new_epoch(&state.epoch) {
            (self.epoch, self.last) = (state.epoch.clone(), state.offset);
        } else if state.offset > self.last && !self.fill(self.last + 1, state.offset).await {
            // The stream could not be read: members cannot start at a consistent point.
            for join in joins {
                self.refuse_unavailable(join);
            }
            return;
        }
        // The joins' replays are read at once (the multiplexed connection pipelines them),
        // then the joiners are marked online in one call, whose list of who is online they
        // all share: a storm of joins costs round trips per batch, not per join.
        let replays = futures_util::future::join_all(
            joins
                .iter()
                .map(|join| self.replay_for(join, &state, join.member.outlet.capacity())),
        )
        .await;
        let mut ready = Vec::with_capacity(joins.len());
        for (join, replay) in joins.into_iter().zip(replays) {
            match replay {
                Ok(replay) => ready.push((join, replay)),
                Err(e) => self.refuse(join, "replay", &e),
            }
        }
        if ready.is_empty() {
            return;
        }
        let joining: Vec<_> = ready
            .iter()
            .map(|(join, _)| join.member.who.presence())
            .collect();
        let ttl = self.presence_ttl_ms();
        let online = match self
            .shared
            .broker
            .presence_join(&self.team, &joining, ttl)
            .await
        {
            Ok(online) => online,
            Err(e) => {
                for (join, _) in ready {
                    self.refuse(join, "presence", &e);
                }
                return;
            }
        };
        drop(joining);
        // Changes heard before the joiners' list was read go to the members there were
        // then: held back, a later opposite change would cancel them, and a joiner whose
        // list has the first would never hear of the second.
        self.send_presence();
        let list = OutFrame::new(ServerFrame::PresenceList {
            team: self.team.clone(),
            users: online,
        });
        let receipts = OutFrame::new(ServerFrame::ReceiptList {
            team: self.team.clone(),
            receipts: state.receipts.clone(),
        });
        for (join, replay) in ready {
            let joined = ServerFrame::RoomJoined {
                team: self.team.clone(),
                epoch: state.epoch.clone(),
                offset: state.offset.to_string(),
                seq: state.seq,
                recovered: replay.as_ref().map(Option::is_some),
                rid: join.rid,
            };
            let member = join.member;
            let replay = replay.flatten().unwrap_or_default();
            let mut frames = Vec::with_capacity(replay.len() + 3);
            frames.push(Outbound::own(joined));
            frames.extend(
                replay
                    .iter()
                    .map(|event| Outbound::Shared(OutFrame::new(ServerFrame::from_event(event)))),
            );
            frames.push(Outbound::Shared(list.clone()));
            frames.push(Outbound::Shared(receipts.clone()));
            // Sent together: one write for the whole greeting. A full queue closes the
            // connection (1013).
            if member.outlet.try_send_all(frames).is_ok() {
                self.members.push(member);
            }
            let _ = join.done.send(Ok(()));
        }
    }

    /// What a join missed, if it came with `since`: `Some(None)` when that cannot be
    /// replayed.
    pub(super) async fn replay_for(
        &self,
        join: &Join,
        state: &TeamState,
        room_in_queue: usize,
    ) -> redis::RedisResult<Option<Option<Vec<StreamEvent>>>> {
        match &join.since {
            None => Ok(None),
            Some(since) => Ok(Some(self.replay_since(since, state, room_in_queue).await?)),
        }
    }

    /// Answers a join whose reads failed: `room:error` `unavailable`.
    pub(super) fn refuse(&self, join: Join, what: &str, e: &redis::RedisError) {
        self.storage_failed(what, e);
        self.refuse_unavailable(join);
    }

    /// Answers a join that storage could not serve: `room:error` `unavailable`.
    pub(super) fn refuse_unavailable(&self, join: Join) {
        let error = RequestError {
            rid: join.rid,
            team: Some(self.team.clone()),
            room: true,
            ..RequestError::new(ErrorCode::Unavailable, "storage unavailable, retry later")
        };
        let _ = join.done.send(Err(error));
    }

    /// The events after `since`, if the epoch matches, the stream still holds all of them
    /// and they fit the member's free queue space; `Ok(None)` means the client must reload
    /// (`recovered: false`), rather than be closed for overflowing its queue on every try.
    pub(super) async fn replay_since(
        &self,
        since: &Since,
        state: &TeamState,
        room_in_queue: usize,
    ) -> redis::RedisResult<Option<Vec<StreamEvent>>> {
        let Ok(from) = since.offset.parse::<u64>() else {
            return Ok(None);
        };
        if since.epoch != state.epoch || from > state.offset {
            return Ok(None);
        }
        let missed = state.offset - from;
        // One place stays free for `room:joined`, and some for what follows.
        if missed as usize + 1 > room_in_queue / 2 {
            return Ok(None);
        }
        if missed == 0 {
            return Ok(Some(Vec::new()));
        }
        let range = self
            .shared
            .broker
            .read_range(&self.team, from + 1, state.offset)
            .await?;
        // Entries no reader can decode are not replayed (the room passed them over too).
        let complete = range.entries() as u64 == missed;
        Ok(complete.then_some(range.events))
    }

    pub(super) async fn on_leave(&mut self, conn_id: u64, session: &str, reply: Option<Left>) {
        if let Err(e) = self.shared.broker.presence_leave(&self.team, session).await {
            // The entry expires after PRESENCE_TTL_MS instead.
            self.storage_failed("presence leave", &e);
        }
        let Some(index) = self.members.iter().position(|m| m.conn_id == conn_id) else {
            return;
        };
        let member = self.members.swap_remove(index);
        if let Some(Left { rid, reason }) = reply {
            let left = ServerFrame::RoomLeft {
                team: self.team.clone(),
                rid,
                reason,
            };
            // A full queue closes the connection (1013).
            let _ = member.outlet.try_send(Outbound::own(left));
        }
    }
}
