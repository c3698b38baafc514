//! Typing: starts and stops relayed to the other users' connections, and a stop sent by
//! the room itself for a typist gone silent, so no one stays "typing" when their gateway
//! died.

use teamchat_shared::event::Ephemeral;
use tokio::time::Instant;

use super::{Room, count_out, offer};
use crate::outlet::{OutFrame, Outbound};
use crate::protocol::ServerFrame;

/// A user typing in the team (on any gateway).
pub(super) struct Typist {
    user: String,
    /// When the room stops them itself unless another start comes.
    pub(super) due: Instant,
    /// When their last start was relayed: starts repeated sooner are not relayed again
    /// (each would go to every member), only keep them typing.
    relayed: Instant,
}

impl Room {
    /// Relays typing to other users' connections. Every gateway's room sees the same
    /// starts and stops, so each sends the stop of a silent typist itself: no typist stays
    /// "typing" when their gateway died.
    pub(super) fn on_typing(&mut self, kind: Ephemeral, user: String) {
        let frame = match kind {
            Ephemeral::TypingStart => {
                let now = Instant::now();
                let due = now + self.shared.typing_timeout;
                let relay_every = self.shared.typing_timeout / 2;
                match self.typing.iter_mut().find(|typist| typist.user == user) {
                    Some(typist) => {
                        typist.due = due;
                        if now < typist.relayed + relay_every {
                            return;
                        }
                        typist.relayed = now;
                    }
                    None => self.typing.push(Typist {
                        user: user.clone(),
                        due,
                        relayed: now,
                    }),
                }
                ServerFrame::TypingStart {
                    team: self.team.clone(),
                    user,
                }
            }
            Ephemeral::TypingStop => {
                let Some(index) = self.typing.iter().position(|typist| typist.user == user) else {
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

    pub(super) fn expire_typing(&mut self) {
        let now = Instant::now();
        let (silent, typing) = std::mem::take(&mut self.typing)
            .into_iter()
            .partition(|typist: &Typist| typist.due <= now);
        self.typing = typing;
        for Typist { user, .. } in silent {
            self.send_to_others(ServerFrame::TypingStop {
                team: self.team.clone(),
                user,
            });
        }
    }

    /// Sends an ephemeral frame to the members that are not its user's connections.
    pub(super) fn send_to_others(&mut self, frame: ServerFrame) {
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
}
