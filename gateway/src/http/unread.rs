//! `GET /v1/me/unread`: the unread counts of the token's user in every team the token
//! holds (../shared/PROTOCOL.md, "Chat model"), as the workers synced them: one statement
//! whose cost does not grow with the teams' history (`db::unread`).

use std::collections::HashSet;

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
    // Each team once, in the token's order; those the application's backend removed the
    // user from are left out (one round trip for all of them).
    let mut seen = HashSet::with_capacity(claims.teams.len());
    let listed: Vec<String> = claims
        .teams
        .iter()
        .filter(|team| seen.insert(team.as_str()))
        .cloned()
        .collect();
    let records = match state
        .broker
        .access_records_of_teams(&claims.sub, &listed)
        .await
    {
        Ok(records) => records,
        Err(e) => return unavailable("unread", &e),
    };
    let issued = claims.issued_ms();
    let teams: Vec<String> = listed
        .into_iter()
        .zip(records)
        .filter(|(_, records)| !records.removed(issued))
        .map(|(team, _)| team)
        .collect();
    match db::unread::counts(&state.db, &claims.sub, &teams).await {
        Ok(counts) => json(StatusCode::OK, &serde_json::json!({ "teams": counts })),
        Err(e) => unavailable("unread", &e),
    }
}
