//! One team's room on this gateway: the single sequencer of the team's events for the local
//! members. It delivers each durable event once, in offset order, to every member except
//! the session that caused it, and reads from the team stream whatever pub/sub did not
//! bring: on start, on an offset gap, on a periodic check of the stream's top, and to
//! replay what a joining member missed (`since`).
//!
//! The room task's loop is here; its parts are `join` (joins and leaves), `order`
//! (sequencing, gap fill, delivery), `typing`, `presence`, and `queue` (its command queue).

mod join;
mod order;
pub mod presence;
pub mod queue;
mod typing;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use teamchat_shared::event::Published;
use teamchat_shared::metrics as m;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use self::presence::PresenceBatch;
use crate::broker::{Broker, Top};
use crate::outlet::{OutFrame, Outbound, Outlet};
use crate::protocol::{RequestError, Since};
use crate::storage::Storage;

/// Who a connection is: one allocation shared by its session and its member entries
/// (a room of many members holds one pointer each, not copies of the ids and name).
pub struct Who {
    pub session: Arc<str>,
    pub user: Arc<str>,
    pub name: Option<String>,
}

impl Who {
    /// (session, user, name): what a presence entry records.
    pub fn presence(&self) -> (&str, &str, Option<&str>) {
        (&self.session, &self.user, self.name.as_deref())
    }
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

/// The `room:left` a leaving member is sent: the `rid` of its `room:leave`, or the reason
/// the server took it out (`forbidden`: a refreshed token no longer lists the team).
pub struct Left {
    pub rid: Option<String>,
    pub reason: Option<&'static str>,
}

/// A member leaving. With `reply` the member is sent `room:left`; `done` fires once the
/// member is out, so nothing of this room follows `room:left`.
pub struct Leave {
    pub conn_id: u64,
    pub session: Arc<str>,
    pub reply: Option<Left>,
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
    /// Panics the room's task (tests of what a bug there does to its members).
    #[cfg(test)]
    Panic,
}

impl RoomCmd {
    /// Published events are what a room's queue bounds (see `queue`).
    pub fn is_published(&self) -> bool {
        matches!(self, RoomCmd::Published(_))
    }
}

/// What every room of the gateway shares: one pointer per room.
pub struct RoomShared {
    /// Team state (seeding a new team's counters first).
    pub storage: Storage,
    /// Stream reads and presence.
    pub broker: Broker,
    pub typing_timeout: Duration,
    pub presence_ttl: Duration,
}

pub struct Room {
    team: String,
    shared: Arc<RoomShared>,
    /// Users typing in the team (on any gateway), with when their `typing:stop` is due.
    /// A short list: a few typists at a time, and every room holds one.
    typing: Vec<typing::Typist>,
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
                            // The hub is gone (the gateway stopped): its sessions end.
                            self.members.clear();
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
                                        #[cfg(test)]
                                        RoomCmd::Panic => panic!("a bug in a room"),
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

    /// Counts and logs a Redis or PostgreSQL failure of this room's `what`.
    fn storage_failed(&self, what: &str, e: &dyn std::fmt::Display) {
        metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
        tracing::warn!(error = %e, team = %self.team, "{what}: storage unavailable");
    }

    /// When the room's timer is next due: the pending presence batch or the earliest
    /// typing stop; `None` when neither is.
    fn next_due(&self) -> Option<Instant> {
        let typing = self.typing.iter().map(|typist| typist.due).min();
        [self.presence_out.due(), typing]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Drop for Room {
    /// The hub shuts a room down once its last member left: a room dropped with members
    /// ended by a panic. They are closed with 1011 and rejoin with `since`, missing
    /// nothing, in the room the hub opens the team anew.
    fn drop(&mut self) {
        for member in &self.members {
            member.outlet.internal_error();
        }
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
