//! The server API (docs/server-api.md): the application's backend posts messages as any
//! user and reads a team's state, presence and history with an API key (`API_KEYS`),
//! not a user's token. Served under `/v1/server/` on `LISTEN`, or on `API_LISTEN` alone.
//! Every input is checked as the WebSocket path checks it, and what is posted takes the
//! same append path: idempotent per user and `client_id`, in history, delivered live.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
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
use crate::session::limits::Operation;
use crate::storage::StorageError;

/// What the session names a connection: posts by the backend come from none of them.
const SOURCE: &str = "server-api";

/// An endpoint's answer, with the outcome its metric counts.
type Answer = (Response<Body>, &'static str);

pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/v1/server/").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let endpoint = match (req.method(), segments.as_slice()) {
        (&Method::POST, ["teams", _, "messages"]) => "publish",
        (&Method::GET, ["teams", _, "messages"]) => "history",
        (&Method::GET, ["teams", _, "presence"]) => "presence",
        (&Method::GET, ["teams", _]) => "team",
        _ => "unknown",
    };
    let (response, outcome) = match authorize(state, &req) {
        Err(refused) => *refused,
        Ok(()) if endpoint == "unknown" => not_found("no such endpoint"),
        Ok(()) => {
            let team = segments[1];
            if !is_valid_id(team) {
                bad_request("team is not a valid id")
            } else {
                match endpoint {
                    "publish" => publish(state, team, req).await,
                    "history" => ok(history::page_of(state, team, req.uri().query()).await),
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
fn authorize<B>(state: &AppState, req: &Request<B>) -> Result<(), Box<Answer>> {
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
    let limit = state.config.max_frame;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let message = "body over max_frame";
            return (
                json_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
                "bad_request",
            );
        }
    };
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("the body must be one JSON object");
    };
    let user = match fields.remove("user") {
        Some(Value::String(user)) if is_valid_id(&user) => user,
        _ => return bad_request("user must be a valid id"),
    };
    let name = match fields.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name.len() <= MAX_NAME && !name.contains('\0') => Some(name),
        Some(_) => return bad_request("name must be a string of at most 256 bytes, no NUL"),
    };
    let charge = match fields.remove("charge") {
        None => true,
        Some(Value::Bool(charge)) => charge,
        Some(_) => return bad_request("charge must be a boolean"),
    };
    // The rest is checked by the very decoder of a client's `message:send`.
    fields.insert("type".into(), "message:send".into());
    fields.insert("team".into(), team.into());
    let frame = serde_json::to_vec(&fields).expect("JSON values encode");
    let limits = Limits {
        max_body: state.config.max_body,
        max_meta: state.config.max_meta,
    };
    let (client_id, body, meta) = match protocol::decode_client(&frame, Encoding::Json, limits) {
        Ok(frame) => match frame.request {
            ClientRequest::MessageSend {
                client_id,
                body,
                meta,
                ..
            } => (client_id, body, meta),
            _ => unreachable!("decoded as the message:send it was made"),
        },
        Err(error) => return refused(error.code, &error.message),
    };
    let data = EventData::Message(MessageData {
        id: uuid::Uuid::now_v7().simple().to_string(),
        client_id,
        user,
        name,
        body,
        meta,
        ts: now_ms(),
    });
    let cost = if charge {
        crate::session::credit_cost(&state.config, &data)
    } else {
        0
    };
    let append = Append {
        team,
        src: SOURCE,
        data: &data,
        target: 0,
        staff: false,
        cost,
        limit: None,
    };
    match state.storage.append(&append).await {
        Ok(AppendOutcome::Appended(appended)) => ok(json(
            StatusCode::OK,
            &json!({
                "team": team,
                "seq": appended.seq,
                "id": appended.id,
                "offset": appended.offset.to_string(),
                "ts": appended.ts,
                "duplicate": !appended.is_new,
            }),
        )),
        Ok(AppendOutcome::Refused(code)) => refused(code, "refused"),
        Ok(_) => unavailable(&"the team's state is missing"),
        Err(e) => unavailable(&e),
    }
}

/// `GET /v1/server/teams/{team}`: the team's stream position and how many are online.
async fn team_state(state: &AppState, team: &str) -> Answer {
    let stream = match state.storage.team_state(team).await {
        Ok(stream) => stream,
        Err(e) => return unavailable(&e),
    };
    let online = match state.broker.presence(team).await {
        Ok(online) => online.len(),
        Err(e) => return unavailable(&StorageError::from(e)),
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
        Err(e) => unavailable(&StorageError::from(e)),
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

fn bad_request(message: &str) -> Answer {
    (
        json_error(StatusCode::BAD_REQUEST, "bad_request", message),
        "bad_request",
    )
}

fn not_found(message: &str) -> Answer {
    (
        json_error(StatusCode::NOT_FOUND, "not_found", message),
        "not_found",
    )
}

/// A request the append path refused, with the WebSocket path's code.
fn refused(code: ErrorCode, message: &str) -> Answer {
    let (status, outcome) = match code {
        ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorCode::QuotaExceeded => (StatusCode::PAYMENT_REQUIRED, "quota_exceeded"),
        ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "bad_request"),
        _ => (StatusCode::BAD_REQUEST, "bad_request"),
    };
    let code = serde_json::to_value(code).unwrap_or_default();
    (
        json_error(status, code.as_str().unwrap_or("bad_request"), message),
        outcome,
    )
}

fn unavailable(error: &dyn std::fmt::Display) -> Answer {
    (super::unavailable("server API", error), "unavailable")
}
