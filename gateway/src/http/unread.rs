//! `GET /v1/me/unread`: the unread counts of the token's user in every team the token
//! holds (../shared/PROTOCOL.md, "Chat model"), as the workers synced them: one statement
//! whose cost does not grow with the teams' history (`db::unread`).

use hyper::{Request, Response, StatusCode};
use teamchat_shared::db;

use super::{Body, check_access, json, token_claims, unavailable};
use crate::AppState;

pub async fn handle<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    let claims = match token_claims(state, req) {
        Ok(claims) => claims,
        Err(refused) => return *refused,
    };
    // A revoked token: 401.
    if let Err(refused) = check_access(state, &claims, None).await {
        return *refused;
    }
    // Teams the application's backend removed the user from are left out.
    let mut teams: Vec<String> = Vec::with_capacity(claims.teams.len());
    for team in &claims.teams {
        if teams.contains(team) {
            continue;
        }
        match state.broker.access_records(&claims.sub, Some(team)).await {
            Ok(records) if records.removed(claims.issued_ms()) => {}
            Ok(_) => teams.push(team.clone()),
            Err(e) => return unavailable("unread", &e),
        }
    }
    match db::unread::counts(&state.db, &claims.sub, &teams).await {
        Ok(counts) => json(StatusCode::OK, &serde_json::json!({ "teams": counts })),
        Err(e) => unavailable("unread", &e),
    }
}
