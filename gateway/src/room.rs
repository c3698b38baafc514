//! One team's room on this gateway: the single sequencer of the team's events for the local
//! members. It delivers each durable event once, in offset order, to every member except
//! the session that caused it, and reads from the team stream whatever pub/sub did not
//! bring: on start, on an offset gap, on a periodic check of the stream's top, and to
//! replay what a joining member missed (`since`).

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use teamchat_shared::event::{Ephemeral, Published, StreamEvent};
use teamchat_shared::protocol::{ErrorCode, RequestError, ServerFrame, Since};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tracing::{error, warn};

use teamchat_shared::metrics as m;

use crate::broker::{Broker, TeamState, Top};
use crate::presence_batch::{PresenceBatch, PresenceChange};
use crate::queue;
use crate::writer::{OutFrame, Outbound, Outlet};

/// Who a connection is: one allocation shared by its session and its member entries
/// (a room of many members holds one pointer each, not copies of the ids and name).
pub struct Who {
    pub session: Arc<str>,
    pub user: Arc<str>,
    pub name: Option<String>,
}

/// A connection in a room.
pub struct Member {
    pub conn_id: u64,
    pub who: Arc<Who>,
    /// The member's connection: a full queue closes it with 1013; a lost team stream
    /// with 1012.
    pub outlet: Outlet,
}

/// A join request. The room sends `room:joined` (and any replay) into the member's queue
/// before any live event, then answers `done`.
pub struct Join {
    pub member: Member,
    pub rid: Option<String>,
    pub since: Option<Since>,
    pub done: oneshot::Sender<Result<(), RequestError>>,
}

/// A member leaving. `reply: Some(rid)` sends `room:left` with that rid; `done` fires once
/// the member is out, so nothing of this room follows `room:left`.
pub struct Leave {
    pub conn_id: u64,
    pub session: Arc<str>,
    pub reply: Option<Option<String>>,
    pub done: Option<oneshot::Sender<()>>,
}

/// What a room's queue carries: commands and published events. Every variant holds at
/// most a pointer: the queue allocates its slots at the size of the largest.
pub enum RoomCmd {
    Join(Box<Join>),
    Leave(Box<Leave>),
    /// An event published on the team's channel.
    Published(Box<Published>),
    /// Read the stream beyond the last delivered offset now (pub/sub may have missed some).
    CatchUp,
    /// The stream's epoch and top offset, from the gateway's periodic check of all rooms.
    Top(Box<Top>),
    /// Refresh this gateway's members' presence entries (the hub asks each room once per
    /// third of the TTL, at the room's own step of that period).
    Refresh,
    Shutdown,
}

impl RoomCmd {
    /// Published events are what a room's queue bounds (see `queue`).
    pub fn is_published(&self) -> bool {
        matches!(self, RoomCmd::Published(_))
    }
}

/// What every room of the gateway shares: one pointer per room.
pub struct RoomShared {
    pub broker: Broker,
    pub typing_timeout: Duration,
    pub presence_ttl: Duration,
}

pub struct Room {
    team: String,
    shared: Arc<RoomShared>,
    /// Users typing in the team (on any gateway), with when their `typing:stop` is due.
    /// A short list: a few typists at a time, and every room holds one.
    typing: Vec<(String, Instant)>,
    /// Presence changes not yet sent to the members.
    presence_out: PresenceBatch,
    epoch: String,
    /// Offset of the newest event delivered to the members.
    last: u64,
    members: Vec<Member>,
}

impl Room {
    pub fn new(team: String, shared: Arc<RoomShared>) -> Self {
        Self {
            team,
            shared,
            typing: Vec::new(),
            presence_out: PresenceBatch::default(),
            epoch: String::new(),
            last: 0,
            members: Vec::new(),
        }
    }

    /// Runs until shut down. Waits for the subscription first, so nothing published after
    /// a state read can be missed. (An `async` block: an `async fn`'s future would hold
    /// the room twice, as captured and as moved into its body.)
    #[allow(clippy::manual_async_fn)] // deliberately not an `async fn`: see above
    pub fn run(
        mut self,
        subscribed: oneshot::Receiver<()>,
        mut queue: queue::Receiver<RoomCmd>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let _ = subscribed.await;
            let mut batch = Vec::new();
            // One timer for the presence batch and the typists' stops, there only while one
            // is due (most rooms wait without), set again only when what it waits for
            // changes: not once per event.
            let mut timer: Option<Pin<Box<Sleep>>> = None;
            loop {
                arm(&mut timer, self.next_due());
                tokio::select! {
                    received = queue.recv_many(&mut batch, 256) => {
                        if received == 0 {
                            return;
                        }
                        // Joins are answered together, with one state read. Events need
                        // not wait for them: a joiner starts at the state it reads, and
                        // what it has already is not delivered twice.
                        let mut joins = Vec::new();
                        for cmd in batch.drain(..) {
                            match cmd {
                                RoomCmd::Join(join) => joins.push(*join),
                                RoomCmd::Published(event) => self.on_published(event).await,
                                other => {
                                    // Keep the order: joins queued before this go first.
                                    Box::pin(self.on_joins(std::mem::take(&mut joins))).await;
                                    match other {
                                        RoomCmd::CatchUp => Box::pin(self.check_top()).await,
                                        RoomCmd::Top(top) => Box::pin(self.on_top(*top)).await,
                                        RoomCmd::Refresh => {
                                            Box::pin(self.refresh_presence()).await
                                        }
                                        RoomCmd::Leave(leave) => {
                                            let Leave { conn_id, session, reply, done } = *leave;
                                            Box::pin(self.on_leave(conn_id, &session, reply)).await;
                                            if let Some(done) = done {
                                                let _ = done.send(());
                                            }
                                        }
                                        _ => return,
                                    }
                                }
                            }
                        }
                        Box::pin(self.on_joins(joins)).await;
                        // No room keeps a batch's memory between bursts: most rooms are
                        // quiet, and a join storm's batch would stay in every one.
                        batch = Vec::new();
                        // Presence changes of this burst go out together (or when due).
                        if self.presence_out.due().is_some_and(|due| due <= Instant::now()) {
                            self.send_presence();
                        }
                    }
                    () = fired(&mut timer) => {
                        if self.presence_out.due().is_some_and(|due| due <= Instant::now()) {
                            self.send_presence();
                        }
                        self.expire_typing();
                    }
                }
            }
        }
    }

    /// How long the members' presence entries live without a refresh.
    fn presence_ttl_ms(&self) -> u64 {
        self.shared.presence_ttl.as_millis() as u64
    }

    /// Answers joins with one state read: the room first delivers everything up to the
    /// state's offset to its members, so each new member starts exactly there.
    async fn on_joins(&mut self, joins: Vec<Join>) {
        if joins.is_empty() {
            return;
        }
        let state = match self.shared.broker.team_state(&self.team).await {
            Ok(state) => state,
            Err(e) => {
                {
                    metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                    warn!(error = %e, team = %self.team, "join: Redis unavailable")
                };
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
            .map(|(join, _)| {
                let member = &join.member;
                (
                    &*member.who.session,
                    &*member.who.user,
                    member.who.name.as_deref(),
                )
            })
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
    async fn replay_for(
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
    fn refuse(&self, join: Join, what: &str, e: &redis::RedisError) {
        metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
        warn!(error = %e, team = %self.team, "{what}: Redis unavailable");
        self.refuse_unavailable(join);
    }

    /// Answers a join that storage could not serve: `room:error` `unavailable`.
    fn refuse_unavailable(&self, join: Join) {
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
    async fn replay_since(
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
        let events = self
            .shared
            .broker
            .read_range(&self.team, from + 1, state.offset)
            .await?;
        let complete =
            events.len() as u64 == missed && events.first().map(|e| e.offset) == Some(from + 1);
        Ok(complete.then_some(events))
    }

    async fn on_leave(&mut self, conn_id: u64, session: &str, reply: Option<Option<String>>) {
        if let Err(e) = self.shared.broker.presence_leave(&self.team, session).await {
            // The entry expires after PRESENCE_TTL_MS instead.
            {
                metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                warn!(error = %e, team = %self.team, "presence leave: Redis unavailable")
            };
        }
        let Some(index) = self.members.iter().position(|m| m.conn_id == conn_id) else {
            return;
        };
        let member = self.members.swap_remove(index);
        if let Some(rid) = reply {
            let left = ServerFrame::RoomLeft {
                team: self.team.clone(),
                rid,
            };
            // A full queue closes the connection (1013).
            let _ = member.outlet.try_send(Outbound::own(left));
        }
    }

    /// Keeps this gateway's members online and lets the presence script expire the
    /// sessions of gateways that stopped refreshing (it publishes their offline updates).
    async fn refresh_presence(&mut self) {
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
                metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                warn!(error = %e, team = %self.team, "presence refresh: Redis unavailable");
                return;
            }
        };
        // Sessions that expired while this gateway could not refresh them (a Redis outage
        // longer than the TTL): they are online again, and others hear so.
        let rejoining: Vec<_> = self
            .members
            .iter()
            .filter(|m| missing.iter().any(|s| **s == *m.who.session))
            .map(|m| (&*m.who.session, &*m.who.user, m.who.name.as_deref()))
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
            metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
            warn!(error = %e, team = %self.team, "presence rejoin: Redis unavailable");
        }
    }

    async fn on_published(&mut self, published: Box<Published>) {
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
    async fn deliver_after_gap(&mut self, event: Box<StreamEvent>) {
        if self.fill(self.last + 1, event.offset - 1).await {
            self.deliver(&event);
        }
    }

    /// Relays typing to other users' connections. Every gateway's room sees the same
    /// starts and stops, so each sends the stop of a silent typist itself: no typist stays
    /// "typing" when their gateway died.
    fn on_typing(&mut self, kind: Ephemeral, user: String) {
        let frame = match kind {
            Ephemeral::TypingStart => {
                let due = Instant::now() + self.shared.typing_timeout;
                match self.typing.iter_mut().find(|(typist, _)| *typist == user) {
                    Some(typist) => typist.1 = due,
                    None => self.typing.push((user.clone(), due)),
                }
                ServerFrame::TypingStart {
                    team: self.team.clone(),
                    user,
                }
            }
            Ephemeral::TypingStop => {
                let Some(index) = self.typing.iter().position(|(typist, _)| *typist == user) else {
                    return;
                };
                self.typing.swap_remove(index);
                ServerFrame::TypingStop {
                    team: self.team.clone(),
                    user,
                }
            }
            Ephemeral::PresenceOnline | Ephemeral::PresenceOffline => return,
        };
        self.send_to_others(frame);
    }

    /// Sends the pending presence changes to every member, as one queued batch each; the
    /// connection that caused a change does not hear it.
    fn send_presence(&mut self) {
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

    /// When the room's timer is next due: the pending presence batch or the earliest
    /// typing stop; `None` when neither is.
    fn next_due(&self) -> Option<Instant> {
        let typing = self.typing.iter().map(|(_, due)| *due).min();
        [self.presence_out.due(), typing]
            .into_iter()
            .flatten()
            .min()
    }

    fn expire_typing(&mut self) {
        let now = Instant::now();
        let (silent, typing) = std::mem::take(&mut self.typing)
            .into_iter()
            .partition(|(_, due)| *due <= now);
        self.typing = typing;
        for (user, _) in silent {
            self.send_to_others(ServerFrame::TypingStop {
                team: self.team.clone(),
                user,
            });
        }
    }

    /// Sends an ephemeral frame to the members that are not its user's connections.
    fn send_to_others(&mut self, frame: ServerFrame) {
        let user = match &frame {
            ServerFrame::TypingStart { user, .. } | ServerFrame::TypingStop { user, .. } => {
                user.clone()
            }
            _ => String::new(),
        };
        let frame = OutFrame::new(frame);
        let mut sent = 0;
        self.members.retain(|member| {
            *member.who.user == *user
                || offer(member, Outbound::Shared(frame.clone()), 1, &mut sent)
        });
        count_out(&frame, sent);
    }

    /// When the team's epoch changed (its stream was lost), nothing delivered so far can be
    /// continued: the members are closed with 1012 and rejoin with `since`, which then says
    /// `recovered: false`. Returns whether that happened; the caller sets the new `last`.
    fn reset_if_new_epoch(&mut self, epoch: &str) -> bool {
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
    async fn check_top(&mut self) {
        if self.epoch.is_empty() || self.members.is_empty() {
            return;
        }
        match self.shared.broker.top_offset(&self.team).await {
            Ok(top) => self.on_top(top).await,
            Err(e) => {
                metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                warn!(error = %e, team = %self.team, "tail check: Redis unavailable")
            }
        }
    }

    /// Compares the stream's top with what was delivered: reads what is missing, or, if
    /// the stream is another one (a new epoch) or its top went back, checks whether it was
    /// lost and started anew. A new stream's offsets do not follow the old one's, even
    /// when they are higher.
    async fn on_top(&mut self, top: Top) {
        if self.epoch.is_empty() || self.members.is_empty() {
            return;
        }
        let same_stream = top.epoch.is_empty() || top.epoch == self.epoch;
        if same_stream && top.offset > self.last {
            self.fill(self.last + 1, top.offset).await;
        } else if !same_stream || top.offset < self.last {
            match self.shared.broker.team_state(&self.team).await {
                Ok(state) if self.reset_if_new_epoch(&state.epoch) => self.last = state.offset,
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                    warn!(error = %e, team = %self.team, "tail check: Redis unavailable")
                }
            }
        }
    }

    /// Reads `from..=to` from the stream and delivers it. Returns false when Redis could not
    /// be read. If the stream no longer holds the whole range, the members cannot be given
    /// a gap: they are closed with 1013 and resume with `since` (getting `recovered: false`).
    async fn fill(&mut self, from: u64, to: u64) -> bool {
        let events = match self.shared.broker.read_range(&self.team, from, to).await {
            Ok(events) => events,
            Err(e) => {
                {
                    metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                    warn!(error = %e, team = %self.team, "gap fill: Redis unavailable")
                };
                return false;
            }
        };
        let complete = events.len() as u64 == to - from + 1;
        if !complete {
            error!(team = %self.team, from, to, got = events.len(), "events trimmed before delivery");
            for member in self.members.drain(..) {
                member.outlet.too_slow();
            }
            self.last = to;
            return true;
        }
        for event in &events {
            self.deliver(event);
        }
        true
    }

    /// Sends one event to every member but its sender, encoded once per encoding.
    fn deliver(&mut self, event: &StreamEvent) {
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
        let age_ms = crate::broker::now_ms() - event.data.ts();
        metrics::histogram!(m::FANOUT_SECONDS).record(age_ms.max(0) as f64 / 1000.0);
    }
}

/// Sets the timer to `due`: made when first needed, dropped when nothing is due.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, due: Option<Instant>) {
    match (due, timer.as_mut()) {
        (None, _) => *timer = None,
        (Some(due), Some(sleep)) if sleep.deadline() != due => sleep.as_mut().reset(due),
        (Some(_), Some(_)) => {}
        (Some(due), None) => *timer = Some(Box::pin(tokio::time::sleep_until(due))),
    }
}

/// Resolves when the timer fires; never without a timer.
fn fired(timer: &mut Option<Pin<Box<Sleep>>>) -> impl Future<Output = ()> + '_ {
    poll_fn(move |cx| match timer {
        Some(sleep) => sleep.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// Counts a frame offered to `recipients` members (one metric update per event, not per
/// recipient).
fn count_out(frame: &OutFrame, recipients: usize) {
    metrics::counter!(m::EVENTS_OUT, "type" => frame.kind()).increment(recipients as u64);
}

/// Queues an item holding `frames` frames for a member (counting them in `sent`); false
/// when the member must go (its queue is full, and it is closed with 1013, or its
/// connection is gone).
fn offer(member: &Member, item: Outbound, frames: usize, sent: &mut usize) -> bool {
    let offered = member.outlet.try_send(item).is_ok();
    if offered {
        *sent += frames;
    }
    offered
}
