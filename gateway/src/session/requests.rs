//! One function per client request: what a session does with a decoded frame. Each
//! checks what the connection's token allows, then asks the room (`hub`) or storage, and
//! returns the direct reply, if any. (Eleven requests, one file: a little over 400 lines.)

use std::time::Duration;

use teamchat_shared::event::{
    ActorData, EditData, Ephemeral, EventData, MessageData, ReactionData,
};
use teamchat_shared::metrics as m;
use teamchat_shared::runtime::now_ms;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::auth::AuthError;
use super::limits::Operation;
use super::receipts;
use super::{CloseAsked, Session};
use crate::broker::{Append, AppendOutcome, Refusal};
use crate::protocol::{self, ClientFrame, ErrorCode, Request, RequestError, ServerFrame};
use crate::room::{Join, Left, Member};

impl Session {
    /// Carries out one request; returns the direct reply the reader queues, if any.
    pub(super) async fn handle(&mut self, frame: ClientFrame) -> Option<ServerFrame> {
        let ClientFrame { rid, request } = frame;
        metrics::counter!(m::EVENTS_IN, "type" => request.kind()).increment(1);
        let operation = match &request {
            Request::MessageSend { .. }
            | Request::MessageEdit { .. }
            | Request::MessageDelete { .. }
            | Request::MessagePin { .. }
            | Request::Reaction { .. } => Some(Operation::Send),
            Request::TypingStart { .. } | Request::TypingStop { .. } => Some(Operation::Typing),
            Request::RoomJoin { .. } => Some(Operation::Join),
            _ => None,
        };
        if let Some(operation) = operation
            && let Err(wait) = self.state.rate_limits.check(operation, &self.claims.sub)
        {
            metrics::counter!(m::RATE_LIMITED, "operation" => operation.label()).increment(1);
            let (room, team) = match &request {
                Request::RoomJoin { team, .. } => (true, Some(team.clone())),
                Request::MessageSend { team, .. }
                | Request::MessageEdit { team, .. }
                | Request::MessageDelete { team, .. }
                | Request::MessagePin { team, .. }
                | Request::Reaction { team, .. }
                | Request::TypingStart { team }
                | Request::TypingStop { team } => (false, Some(team.clone())),
                _ => (false, None),
            };
            let error = RequestError {
                rid,
                team,
                room,
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
                ..RequestError::new(ErrorCode::RateLimited, "rate limited, retry later")
            };
            return Some(error.into_frame());
        }
        let result = match request {
            Request::Ping => return Some(ServerFrame::Pong { rid }),
            Request::TokenRefresh { token } => return self.refresh_token(&token, rid).await,
            Request::TypingStart { team } => self.typing(team, true).await,
            Request::TypingStop { team } => self.typing(team, false).await,
            Request::RoomJoin { team, since } => self.join(team, since, rid.clone()).await,
            Request::RoomLeave { team } => self.leave(team, rid.clone()).await,
            Request::MessageEdit { team, seq, body } => {
                self.amend_message(team, seq, Some(body), rid.clone()).await
            }
            Request::MessageDelete { team, seq } => {
                self.amend_message(team, seq, None, rid.clone()).await
            }
            Request::MessagePin { team, seq, pin } => {
                self.pin_message(team, seq, pin, rid.clone()).await
            }
            Request::Reaction {
                team,
                seq,
                emoji,
                add,
            } => self.react(team, seq, emoji, add, rid.clone()).await,
            Request::ReceiptUpdate { team, seq } => self.update_receipt(team, seq),
            Request::MessageSend {
                team,
                client_id,
                body,
                meta,
                parent,
                mentions,
                attachments,
            } => {
                let content = Content {
                    body,
                    meta,
                    parent,
                    mentions,
                    attachments,
                };
                self.send_message(team, client_id, content, rid.clone())
                    .await
            }
        };
        match result {
            Ok(reply) => reply,
            Err(mut error) => {
                error.rid = rid;
                self.count_violation(error.code);
                Some(error.into_frame())
            }
        }
    }

    /// `token:refresh`: a valid token of the same user extends the session; anything else
    /// closes it (4003 if expired, else 4001). Authorization follows the new token: a
    /// joined team it no longer lists (or a `staff` role it drops) is left at once.
    async fn refresh_token(&mut self, token: &str, rid: Option<String>) -> Option<ServerFrame> {
        match self.state.verifier.verify(token) {
            Ok(claims) if claims.sub == self.claims.sub => {
                // A revoked token does not extend the session; with Redis away it is not
                // checked (the next join is).
                let records = self.state.broker.access_records(&claims.sub, None).await;
                if records.is_ok_and(|records| records.revoked(claims.issued_ms())) {
                    self.close_with = Some(CloseAsked::BadToken(AuthError::Revoked));
                    return None;
                }
                // A team the server API removed this connection from does not come back
                // with a token issued before the removal.
                let mut claims = claims;
                let issued = claims.issued_ms();
                claims.removed = std::mem::take(&mut self.claims.removed);
                let removed = &claims.removed;
                claims.teams.retain(|team| {
                    !removed
                        .iter()
                        .any(|(gone, before_ms)| gone == team && issued < *before_ms)
                });
                self.expires_at = self.token_deadline(claims.exp);
                let exp = claims.exp;
                *self.claims = claims;
                self.leave_forbidden_teams().await;
                Some(ServerFrame::TokenRefreshed { exp, rid })
            }
            Ok(_) => {
                self.close_with = Some(CloseAsked::OtherUser);
                None
            }
            Err(error) => {
                self.close_with = Some(CloseAsked::BadToken(error));
                None
            }
        }
    }

    /// Takes the connection out of every joined team its token no longer lets it read: the
    /// room sends `room:left` with `"reason":"forbidden"`, and nothing of the team after it.
    async fn leave_forbidden_teams(&mut self) {
        let claims = &self.claims;
        let forbidden: Vec<String> = self
            .joined
            .iter()
            .filter(|team| !claims.may_read(team))
            .cloned()
            .collect();
        for team in forbidden {
            if self.end_membership(&team, "forbidden") {
                self.publish_typing(&team, Ephemeral::TypingStop).await;
            }
        }
    }

    /// The server ends the connection's membership of a team it joined: the room sends
    /// `room:left` with `reason` and nothing of the team after it. Returns whether the
    /// connection was typing there (the caller sends `typing:stop`).
    pub(super) fn end_membership(&mut self, team: &str, reason: &'static str) -> bool {
        if self.joined.remove(team) {
            let left = Left {
                rid: None,
                reason: Some(reason),
            };
            let session = self.who.session.clone();
            self.state
                .hub
                .leave(team, self.conn_id, session, Some(left), None);
        }
        self.typing.remove(team)
    }

    /// Counts protocol violations; too many within a minute closes the connection (1008).
    pub(super) fn count_violation(&mut self, code: ErrorCode) {
        if !matches!(code, ErrorCode::BadRequest | ErrorCode::UnknownType) {
            return;
        }
        let now = Instant::now();
        self.violations
            .retain(|t| now.duration_since(*t) <= Duration::from_secs(60));
        self.violations.push(now);
        if self.violations.len() >= self.state.config.max_violations.max(1) {
            self.close_with = Some(CloseAsked::Violations);
        }
    }

    async fn typing(
        &mut self,
        team: String,
        start: bool,
    ) -> Result<Option<ServerFrame>, RequestError> {
        let error = |code, message: &str| RequestError {
            team: Some(team.clone()),
            ..RequestError::new(code, message)
        };
        if !self.joined.contains(&team) {
            return Err(error(ErrorCode::NotJoined, "team not joined"));
        }
        if !self.claims.is_member(&team) {
            return Err(error(ErrorCode::Forbidden, "team not in token"));
        }
        let kind = if start {
            self.typing.insert(team.clone());
            Ephemeral::TypingStart
        } else {
            self.typing.remove(&team);
            Ephemeral::TypingStop
        };
        self.publish_typing(&team, kind).await;
        Ok(None)
    }

    /// Typing is best effort: if Redis is down it is dropped (the room's timeout ends it).
    pub(super) async fn publish_typing(&self, team: &str, kind: Ephemeral) {
        if let Err(e) = self
            .state
            .broker
            .publish_ephemeral(team, kind, &self.who.session, &self.claims.sub)
            .await
        {
            debug!(error = %e, "typing not published");
        }
    }

    async fn join(
        &mut self,
        team: String,
        since: Option<protocol::Since>,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        let room_error = |code, message: &str| RequestError {
            team: Some(team.clone()),
            room: true,
            ..RequestError::new(code, message)
        };
        if !self.claims.may_read(&team) {
            return Err(room_error(ErrorCode::Forbidden, "team not in token"));
        }
        if self.joined.contains(&team) {
            // Already joined: nothing changes; the room's answer was given on the first join.
            return Err(room_error(ErrorCode::BadRequest, "already joined"));
        }
        if self.joined.len() >= self.state.config.max_rooms {
            return Err(room_error(
                ErrorCode::TooManyRooms,
                "too many rooms on this connection",
            ));
        }
        // Checked at every join, not only told by the control channel: a gateway cut off
        // from Redis when the server API revoked or removed still refuses the token.
        let issued = self.claims.issued_ms();
        match self
            .state
            .broker
            .access_records(&self.claims.sub, Some(&team))
            .await
        {
            Ok(records) if records.revoked(issued) => {
                self.close_with = Some(CloseAsked::BadToken(AuthError::Revoked));
                return Err(room_error(ErrorCode::Forbidden, "token revoked"));
            }
            Ok(records) if records.removed(issued) => {
                return Err(room_error(ErrorCode::Forbidden, "removed from the team"));
            }
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "access records unavailable");
                return Err(room_error(ErrorCode::Unavailable, "storage unavailable"));
            }
        }
        let (done, answered) = oneshot::channel();
        let member = Member {
            conn_id: self.conn_id,
            who: self.who.clone(),
            outlet: self.outlet.clone(),
        };
        self.state.hub.join(
            &team,
            Join {
                member,
                rid,
                since,
                done,
            },
        );
        match answered.await {
            Ok(Ok(())) => {
                self.joined.insert(team);
                Ok(None)
            }
            Ok(Err(error)) => {
                self.state
                    .hub
                    .leave(&team, self.conn_id, self.who.session.clone(), None, None);
                Err(error)
            }
            Err(_) => {
                self.state
                    .hub
                    .leave(&team, self.conn_id, self.who.session.clone(), None, None);
                Err(room_error(ErrorCode::Unavailable, "room unavailable"))
            }
        }
    }

    async fn leave(
        &mut self,
        team: String,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        if !self.joined.remove(&team) {
            return Err(RequestError {
                team: Some(team),
                room: true,
                ..RequestError::new(ErrorCode::NotJoined, "team not joined")
            });
        }
        let (done, left) = oneshot::channel();
        self.state.hub.leave(
            &team,
            self.conn_id,
            self.who.session.clone(),
            Some(Left { rid, reason: None }),
            Some(done),
        );
        let _ = left.await;
        if self.typing.remove(&team) {
            self.publish_typing(&team, Ephemeral::TypingStop).await;
        }
        Ok(None)
    }

    /// Checks a team-scoped write: joined, and in the token (staff may delete anywhere).
    fn check_write(&self, team: &str, staff_may: bool) -> Result<(), RequestError> {
        let error = |code, message: &str| RequestError {
            team: Some(team.to_owned()),
            ..RequestError::new(code, message)
        };
        if !self.joined.contains(team) {
            return Err(error(ErrorCode::NotJoined, "team not joined"));
        }
        let allowed = self.claims.is_member(team) || (staff_may && self.claims.is_staff());
        if !allowed {
            return Err(error(ErrorCode::Forbidden, "team not in token"));
        }
        Ok(())
    }

    /// Appends a durable event for a request and builds its `message:ack`.
    async fn append_acked(
        &self,
        team: String,
        data: EventData,
        target: u64,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        let error = |code, message: &str| RequestError {
            team: Some(team.clone()),
            ..RequestError::new(code, message)
        };
        let started = std::time::Instant::now();
        let appended = self
            .state
            .storage
            .append(&Append {
                team: &team,
                src: &self.who.session,
                data: &data,
                target,
                staff: self.claims.is_staff(),
                cost: credit_cost(&self.state.config, &data),
                limit: self.claims.credit_limit.or(self.state.config.credit_limit),
            })
            .await;
        metrics::histogram!(m::APPEND_SECONDS).record(started.elapsed().as_secs_f64());
        match appended {
            Ok(AppendOutcome::Appended(appended)) => {
                if appended.is_new {
                    super::connections::mention(&self.state.broker, &team, appended.seq, &data);
                }
                Ok(Some(ServerFrame::MessageAck {
                    client_id: match data {
                        EventData::Message(m) => Some(m.client_id),
                        _ => None,
                    },
                    team,
                    seq: appended.seq,
                    id: appended.id,
                    offset: Some(appended.offset.to_string()),
                    ts: appended.ts,
                    rid,
                }))
            }
            Ok(AppendOutcome::Refused(Refusal::NotFound)) => {
                Err(error(ErrorCode::NotFound, "no such message"))
            }
            Ok(AppendOutcome::Refused(Refusal::Forbidden)) => Err(error(
                ErrorCode::Forbidden,
                "only the author may change a message",
            )),
            Ok(AppendOutcome::Refused(Refusal::QuotaExceeded)) => {
                Err(error(ErrorCode::QuotaExceeded, "credit limit reached"))
            }
            Ok(AppendOutcome::Refused(Refusal::BadRequest))
                if matches!(data, EventData::Message(_)) =>
            {
                Err(error(
                    ErrorCode::BadRequest,
                    "a thread reply's parent must be a top-level message",
                ))
            }
            Ok(AppendOutcome::Refused(Refusal::TooLarge)) => Err(error(
                ErrorCode::TooLarge,
                "a message has at most 50 distinct reactions",
            )),
            Ok(AppendOutcome::Refused(code)) => Err(error(code.into(), "refused")),
            Ok(AppendOutcome::Ignored) => Ok(None),
            // Already as asked: acked without an offset (nothing was appended).
            Ok(AppendOutcome::Unchanged(id)) => Ok(Some(ServerFrame::MessageAck {
                client_id: None,
                team,
                seq: target,
                id,
                offset: None,
                ts: now_ms(),
                rid,
            })),
            // Storage seeds the team or looks the message up and appends again, or fails:
            // never seen here.
            Ok(AppendOutcome::Unseeded | AppendOutcome::Lookup | AppendOutcome::LoadReactions) => {
                Err(error(
                    ErrorCode::Unavailable,
                    "storage unavailable, retry later",
                ))
            }
            Err(e) => {
                metrics::counter!(m::GATEWAY_REDIS_ERRORS).increment(1);
                warn!(error = %e, "append failed");
                Err(error(
                    ErrorCode::Unavailable,
                    "storage unavailable, retry later",
                ))
            }
        }
    }

    async fn send_message(
        &mut self,
        team: String,
        client_id: String,
        content: Content,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, false)?;
        let data = EventData::Message(MessageData {
            id: uuid::Uuid::now_v7().simple().to_string(),
            client_id,
            user: self.claims.sub.clone(),
            name: self.claims.name.clone(),
            body: content.body,
            meta: content.meta,
            ts: now_ms(),
            parent: content.parent,
            mentions: content.mentions,
            attachments: content.attachments,
        });
        // The script checks the parent, as it checks an edit's target.
        self.append_acked(team, data, content.parent.unwrap_or(0), rid)
            .await
    }

    /// `message:edit` (`body: Some`) or `message:delete`.
    async fn amend_message(
        &mut self,
        team: String,
        seq: u64,
        body: Option<String>,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, body.is_none())?;
        let (user, ts) = (self.claims.sub.clone(), now_ms());
        let data = match body {
            Some(body) => EventData::Edit(EditData { user, body, ts }),
            None => EventData::Delete(ActorData { user, ts }),
        };
        self.append_acked(team, data, seq, rid).await
    }

    /// `message:pin` / `message:unpin`: any member may; acked without `offset` (and no
    /// event) when the message already is as asked.
    async fn pin_message(
        &mut self,
        team: String,
        seq: u64,
        pin: bool,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, false)?;
        let actor = ActorData {
            user: self.claims.sub.clone(),
            ts: now_ms(),
        };
        let data = match pin {
            true => EventData::Pin(actor),
            false => EventData::Unpin(actor),
        };
        self.append_acked(team, data, seq, rid).await
    }

    /// `reaction:add` / `reaction:remove`: any member, for their own reaction only; acked
    /// without `offset` (and no event) when the user already has it as asked.
    async fn react(
        &mut self,
        team: String,
        seq: u64,
        emoji: String,
        add: bool,
        rid: Option<String>,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, false)?;
        let reaction = ReactionData {
            user: self.claims.sub.clone(),
            emoji,
            ts: now_ms(),
        };
        let data = match add {
            true => EventData::React(reaction),
            false => EventData::Unreact(reaction),
        };
        self.append_acked(team, data, seq, rid).await
    }

    /// `receipt:update`: no reply; coalesced per team (see `receipts`).
    fn update_receipt(
        &mut self,
        team: String,
        seq: u64,
    ) -> Result<Option<ServerFrame>, RequestError> {
        self.check_write(&team, false)?;
        let (state, session, user) = (&self.state, &self.who.session, &self.claims.sub);
        self.receipts
            .get_or_insert_with(|| {
                let limit = self.claims.credit_limit.or(state.config.credit_limit);
                receipts::Coalescer::spawn(state.clone(), session.clone(), user.clone(), limit)
            })
            .update(team, seq);
        Ok(None)
    }
}

/// What an event costs, by kind (`CREDIT_COST_*`).
pub(crate) fn credit_cost(
    config: &teamchat_shared::config::GatewayConfig,
    data: &EventData,
) -> u64 {
    match data {
        EventData::Message(_) => config.credit_cost_message,
        EventData::Edit(_) => config.credit_cost_edit,
        EventData::Delete(_) => config.credit_cost_delete,
        EventData::Receipt(_) => config.credit_cost_receipt,
        EventData::Pin(_) | EventData::Unpin(_) => config.credit_cost_pin,
        EventData::React(_) | EventData::Unreact(_) => config.credit_cost_reaction,
    }
}

/// What a `message:send` says, beside where and under which client id.
struct Content {
    body: String,
    meta: Option<serde_json::Value>,
    parent: Option<u64>,
    mentions: Vec<String>,
    attachments: Vec<teamchat_shared::event::Attachment>,
}
