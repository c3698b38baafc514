//! The server API (docs/server-api.md): the application's backend posts messages as any
//! user (to one team or many), disconnects, notifies, revokes the tokens of, or removes
//! from a team a user on every gateway (the control channel), and reads a team's state, presence and history with an API key
//! (`API_KEYS`), not a user's token. Served under `/v1/server/` on `LISTEN`, or on
//! `API_LISTEN` alone.
//! Every input is checked as the WebSocket path checks it, and what is posted takes the
//! same append path: idempotent per user and `client_id`, in history, delivered live.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use teamchat_shared::event::{EventData, MessageData};
use teamchat_shared::ids::is_valid_id;
use teamchat_shared::metrics as m;
use teamchat_shared::runtime::now_ms;

use super::{Body, history, json, json_error};
use crate::AppState;
use crate::broker::{Append, AppendOutcome};
use crate::protocol::{self, Encoding, ErrorCode, Limits, Request as ClientRequest};
use crate::session::auth::MAX_NAME;
use crate::session::connections::{self, Control};
use crate::session::limits::Operation;
use crate::storage::StorageError;

/// What the session names a connection: posts by the backend come from none of them.
const SOURCE: &str = "server-api";

/// An endpoint's answer, with the outcome its metric counts.
pub(super) type Answer = (Response<Body>, &'static str);

pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v1/server/").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let endpoint = match (req.method(), segments.as_slice()) {
        (&Method::POST, ["teams", _, "messages"]) => "publish",
        (&Method::POST, ["broadcast"]) => "broadcast",
        (&Method::GET, ["teams", _, "messages"]) => "history",
        (&Method::GET, ["teams", _, "presence"]) => "presence",
        (&Method::GET, ["teams", _]) => "team",
        (&Method::POST, ["users", _, "disconnect"]) => "disconnect",
        (&Method::POST, ["users", _, "notify"]) => "notify",
        (&Method::POST, ["users", _, "revoke"]) => "revoke",
        (&Method::POST, ["users", _, "erase"]) => "erase",
        (&Method::DELETE, ["teams", _, "members", _]) => "remove",
        _ => "unknown",
    };
    let (response, outcome) = match authorize(state, &req) {
        Err(refused) => *refused,
        Ok(()) if endpoint == "unknown" => not_found("no such endpoint"),
        Ok(()) if endpoint == "broadcast" => broadcast(state, req).await,
        Ok(()) if endpoint == "remove" => {
            let (team, user) = (segments[1], segments[3]);
            if !is_valid_id(team) || !is_valid_id(user) {
                bad_request("team and user must be valid ids").answer()
            } else {
                remove(state, team, user).await
            }
        }
        Ok(()) if endpoint == "erase" => {
            let user = segments[1].to_owned();
            if !is_valid_id(&user) {
                bad_request("user is not a valid id").answer()
            } else {
                match read_body(state, req).await {
                    Ok(fields) => super::erase::erase(state, &user, fields).await,
                    Err(refusal) => refusal.answer(),
                }
            }
        }
        Ok(()) if matches!(endpoint, "disconnect" | "notify" | "revoke") => {
            let user = segments[1];
            if !is_valid_id(user) {
                bad_request("user is not a valid id").answer()
            } else {
                control(state, user, endpoint, req).await
            }
        }
        Ok(()) => {
            let team = segments[1];
            if !is_valid_id(team) {
                bad_request("team is not a valid id").answer()
            } else {
                match endpoint {
                    "publish" => publish(state, team, req).await,
                    "history" => {
                        let reader = history::Reader { team, me: None };
                        ok(history::page_of(state, reader, req.uri().query()).await)
                    }
                    "presence" => presence(state, team).await,
                    _ => team_state(state, team).await,
                }
            }
        }
    };
    metrics::counter!(m::API_REQUESTS, "endpoint" => endpoint, "outcome" => outcome).increment(1);
    response
}

/// The key's check (every key compared in constant time) and its rate limit.
pub(super) fn authorize<B>(state: &AppState, req: &Request<B>) -> Result<(), Box<Answer>> {
    let keys = &state.config.api_keys;
    if keys.is_empty() {
        return Err(Box::new(not_found("the server API is off (no API_KEYS)")));
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let matched = keys.iter().enumerate().fold(None, |found, (index, key)| {
        let equal: bool = key.as_bytes().ct_eq(given.as_bytes()).into();
        found.or(equal.then_some(index))
    });
    let Some(index) = matched else {
        let message = "missing or unknown API key";
        let refused = json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
        return Err(Box::new((refused, "unauthorized")));
    };
    // Budgets by the key's place in API_KEYS: the key itself is kept nowhere else.
    if let Err(wait) = state
        .rate_limits
        .check(Operation::Api, &format!("key{index}"))
    {
        let retry_after_ms = wait.as_millis().max(1) as u64;
        let body = json!({"code": "rate_limited", "message": "rate limited, retry later",
                          "retry_after_ms": retry_after_ms});
        let refused = json(StatusCode::TOO_MANY_REQUESTS, &body);
        return Err(Box::new((refused, "rate_limited")));
    }
    Ok(())
}

/// `POST /v1/server/teams/{team}/messages`: a message from `user`, as if sent on a
/// connection of theirs.
async fn publish(state: &AppState, team: &str, req: Request<Incoming>) -> Answer {
    let post = match read_body(state, req).await.and_then(Post::read) {
        Ok(post) => post,
        Err(refusal) => return refusal.answer(),
    };
    match post.append(state, team).await {
        Ok(ack) => (json(StatusCode::OK, &ack), "ok"),
        Err(refusal) => refusal.answer(),
    }
}

/// The most teams one broadcast posts to.
const MAX_BROADCAST: usize = 100;

/// `POST /v1/server/broadcast`: the same message in each of `teams`, each post on its
/// own (idempotent per team), each team's result in order.
async fn broadcast(state: &AppState, req: Request<Incoming>) -> Answer {
    let mut fields = match read_body(state, req).await {
        Ok(fields) => fields,
        Err(refusal) => return refusal.answer(),
    };
    let teams: Vec<String> = match fields.remove("teams") {
        Some(Value::Array(teams)) if (1..=MAX_BROADCAST).contains(&teams.len()) => {
            match teams
                .into_iter()
                .map(|t| match t {
                    Value::String(team) if is_valid_id(&team) => Some(team),
                    _ => None,
                })
                .collect()
            {
                Some(teams) => teams,
                None => return bad_request("teams must be valid ids").answer(),
            }
        }
        _ => return bad_request("teams must be a list of 1 to 100 team ids").answer(),
    };
    let post = match Post::read(fields) {
        Ok(post) => post,
        Err(refusal) => return refusal.answer(),
    };
    let mut results = Vec::with_capacity(teams.len());
    for team in &teams {
        results.push(match post.append(state, team).await {
            Ok(ack) => ack,
            Err(refusal) => json!({"team": team, "code": refusal.code, "message": refusal.message}),
        });
    }
    (json(StatusCode::OK, &json!({ "results": results })), "ok")
}

/// The largest `data` of a notification, in bytes of its JSON.
const MAX_NOTIFY: usize = 4_096;

/// `POST /v1/server/users/{user}/disconnect`, `…/notify` and `…/revoke`: published on
/// the control channel, carried out by every gateway on the user's connections there (a
/// revocation is recorded first, for connections yet to come and gateways cut off).
async fn control(state: &AppState, user: &str, endpoint: &str, req: Request<Incoming>) -> Answer {
    let empty = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|length| length == "0");
    let mut fields = match empty {
        true => Map::new(),
        false => match read_body(state, req).await {
            Ok(fields) => fields,
            Err(refusal) => return refusal.answer(),
        },
    };
    let user = user.to_owned();
    let control = if endpoint == "revoke" {
        let now = now_ms() as u64;
        let before_ms = match fields.remove("issued_before") {
            None => now,
            Some(at) => match at.as_f64() {
                // Seconds; a time further ahead than a clock's skew is a mistake (ms given
                // for s would lock the user out for MAX_TOKEN_TTL_S).
                Some(at) if at >= 0.0 && at * 1000.0 <= (now + FUTURE_SLACK_MS) as f64 => {
                    (at * 1000.0) as u64
                }
                _ => {
                    return bad_request("issued_before must be unix seconds, not in the future")
                        .answer();
                }
            },
        };
        let keep_ms = state.config.max_token_ttl_s.saturating_mul(1000);
        let before_ms = match state
            .broker
            .record_revocation(&user, before_ms, keep_ms)
            .await
        {
            Ok(kept) => kept,
            Err(e) => return unavailable(&e).answer(),
        };
        Control::Revoke { user, before_ms }
    } else if endpoint == "disconnect" {
        let code = match fields.remove("code") {
            None => 1000,
            Some(code) => match code.as_u64() {
                Some(code @ (1000 | 4001 | 4003)) => code as u16,
                _ => return bad_request("code must be 1000, 4001 or 4003").answer(),
            },
        };
        Control::Disconnect { user, code }
    } else {
        let data = match fields.remove("data") {
            Some(data @ Value::Object(_)) => data,
            _ => return bad_request("data must be a JSON object").answer(),
        };
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |json| json.len());
        if size > MAX_NOTIFY {
            let message = "data is over 4096 bytes";
            return Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                message,
                "bad_request",
            )
            .answer();
        }
        if protocol::client::deeper_than(&data, protocol::client::MAX_META_DEPTH) {
            return bad_request("data is nested deeper than 32 levels").answer();
        }
        Control::Notify { user, data }
    };
    publish_control(state, &control).await
}

/// How far ahead of this gateway's clock `issued_before` may be.
const FUTURE_SLACK_MS: u64 = 60_000;

/// `DELETE /v1/server/teams/{team}/members/{user}`: the user's tokens issued until now no
/// longer grant the team (recorded, so every later join and history request refuses
/// them); their connections in it get `room:left` with reason "removed".
async fn remove(state: &AppState, team: &str, user: &str) -> Answer {
    let keep_ms = state.config.max_token_ttl_s.saturating_mul(1000);
    let before_ms = match state
        .broker
        .record_removal(team, user, now_ms() as u64, keep_ms)
        .await
    {
        Ok(kept) => kept,
        Err(e) => return unavailable(&e).answer(),
    };
    let control = Control::Remove {
        team: team.to_owned(),
        user: user.to_owned(),
        before_ms,
    };
    publish_control(state, &control).await
}

/// Publishes a control message to every gateway.
async fn publish_control(state: &AppState, control: &Control) -> Answer {
    let published = serde_json::to_string(control).expect("controls encode");
    match state.broker.publish_control(&published).await {
        Ok(()) => (json(StatusCode::OK, &json!({ "published": true })), "ok"),
        Err(e) => unavailable(&e).answer(),
    }
}

/// A request body: one JSON object of at most `MAX_FRAME` bytes.
async fn read_body(
    state: &AppState,
    req: Request<Incoming>,
) -> Result<Map<String, Value>, Refusal> {
    let body = match Limited::new(req.into_body(), state.config.max_frame)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body over max_frame",
                "bad_request",
            ));
        }
    };
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(bad_request("the body must be one JSON object")),
    }
}

/// A message to post: its author and whether to charge them checked here, the rest by
/// the decoder of a client's `message:send` once its team is known.
struct Post {
    user: String,
    name: Option<String>,
    charge: bool,
    fields: Map<String, Value>,
}

impl Post {
    fn read(mut fields: Map<String, Value>) -> Result<Self, Refusal> {
        let user = match fields.remove("user") {
            Some(Value::String(user)) if is_valid_id(&user) => user,
            _ => return Err(bad_request("user must be a valid id")),
        };
        let name = match fields.remove("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if name.len() <= MAX_NAME && !name.contains('\0') => {
                Some(name)
            }
            Some(_) => {
                return Err(bad_request(
                    "name must be a string of at most 256 bytes, no NUL",
                ));
            }
        };
        let charge = match fields.remove("charge") {
            None => true,
            Some(Value::Bool(charge)) => charge,
            Some(_) => return Err(bad_request("charge must be a boolean")),
        };
        fields.insert("type".into(), "message:send".into());
        Ok(Post {
            user,
            name,
            charge,
            fields,
        })
    }

    /// Appends the post to `team`: the ack's fields, or why not.
    async fn append(&self, state: &AppState, team: &str) -> Result<Value, Refusal> {
        let mut fields = self.fields.clone();
        fields.insert("team".into(), team.into());
        let frame = serde_json::to_vec(&fields).expect("JSON values encode");
        let limits = Limits {
            max_body: state.config.max_body,
            max_meta: state.config.max_meta,
        };
        let decoded = protocol::decode_client(&frame, Encoding::Json, limits)
            .map_err(|error| refused(error.code, &error.message))?;
        let ClientRequest::MessageSend {
            client_id,
            body,
            meta,
            parent,
            mentions,
            attachments,
            ..
        } = decoded.request
        else {
            unreachable!("decoded as the message:send it was made");
        };
        let data = EventData::Message(MessageData {
            id: uuid::Uuid::now_v7().simple().to_string(),
            client_id,
            user: self.user.clone(),
            name: self.name.clone(),
            body,
            meta,
            ts: now_ms(),
            parent,
            mentions,
            attachments,
        });
        let cost = match self.charge {
            true => crate::session::credit_cost(&state.config, &data),
            false => 0,
        };
        let append = Append {
            team,
            src: SOURCE,
            data: &data,
            target: parent.unwrap_or(0),
            staff: false,
            cost,
            limit: None,
        };
        match state.storage.append(&append).await {
            Ok(AppendOutcome::Appended(appended)) => {
                if appended.is_new {
                    connections::mention(&state.broker, team, appended.seq, &data);
                }
                Ok(json!({
                "team": team,
                "seq": appended.seq,
                "id": appended.id,
                "offset": appended.offset.to_string(),
                "ts": appended.ts,
                "duplicate": !appended.is_new,
                }))
            }
            Ok(AppendOutcome::Refused(code)) => Err(refused(code.into(), "refused")),
            Ok(_) => Err(unavailable(&"the team's state is missing")),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

/// `GET /v1/server/teams/{team}`: the team's stream position and how many are online.
async fn team_state(state: &AppState, team: &str) -> Answer {
    let stream = match state.storage.team_state(team).await {
        Ok(stream) => stream,
        Err(e) => return unavailable(&e).answer(),
    };
    let online = match state.broker.presence(team).await {
        Ok(online) => online.len(),
        Err(e) => return unavailable(&StorageError::from(e)).answer(),
    };
    ok(json(
        StatusCode::OK,
        &json!({"team": team, "epoch": stream.epoch, "offset": stream.offset.to_string(),
                "seq": stream.seq, "online": online}),
    ))
}

/// `GET /v1/server/teams/{team}/presence`: who is online, on any gateway.
async fn presence(state: &AppState, team: &str) -> Answer {
    match state.broker.presence(team).await {
        Ok(users) => ok(json(StatusCode::OK, &json!({ "users": users }))),
        Err(e) => unavailable(&StorageError::from(e)).answer(),
    }
}

fn ok(response: Response<Body>) -> Answer {
    let outcome = match response.status() {
        StatusCode::OK => "ok",
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "unavailable",
    };
    (response, outcome)
}

/// A refused request: its status, `code`, message, and the outcome its metric counts.
pub(super) struct Refusal {
    status: StatusCode,
    code: String,
    message: String,
    outcome: &'static str,
}

impl Refusal {
    fn new(status: StatusCode, code: &str, message: &str, outcome: &'static str) -> Self {
        Refusal {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            outcome,
        }
    }

    pub(super) fn answer(self) -> Answer {
        (
            json_error(self.status, &self.code, &self.message),
            self.outcome,
        )
    }
}

pub(super) fn bad_request(message: &str) -> Refusal {
    Refusal::new(
        StatusCode::BAD_REQUEST,
        "bad_request",
        message,
        "bad_request",
    )
}

fn not_found(message: &str) -> Answer {
    Refusal::new(StatusCode::NOT_FOUND, "not_found", message, "not_found").answer()
}

/// A request the decoder or the append path refused, with the WebSocket path's code.
fn refused(code: ErrorCode, message: &str) -> Refusal {
    let (status, outcome) = match code {
        ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorCode::QuotaExceeded => (StatusCode::PAYMENT_REQUIRED, "quota_exceeded"),
        ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "bad_request"),
        _ => (StatusCode::BAD_REQUEST, "bad_request"),
    };
    let code = serde_json::to_value(code).unwrap_or_default();
    Refusal::new(
        status,
        code.as_str().unwrap_or("bad_request"),
        message,
        outcome,
    )
}

/// Storage did not answer (logged).
pub(super) fn unavailable(error: &dyn std::fmt::Display) -> Refusal {
    tracing::warn!(error = %error, "server API: storage unavailable");
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "storage unavailable, retry later",
        "unavailable",
    )
}
