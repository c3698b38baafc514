//! `GET /v1/users/{user}/credits`: the credits a user used (Redis, counted at append), the
//! part the workers synced into PostgreSQL, and the difference not synced yet.

use hyper::{Request, Response, StatusCode};
use teamchat_shared::db;

use super::{Body, authorized, json, json_error, unavailable};
use crate::AppState;

pub async fn handle<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    let (user, claims) = match authorized(state, req, ("/v1/users/", "user", "/credits")) {
        Ok(authorized) => authorized,
        Err(response) => return *response,
    };
    if claims.sub != user && !claims.is_staff() {
        return json_error(StatusCode::FORBIDDEN, "forbidden", "only the user or staff");
    }
    if let Err(refused) = super::check_access(state, &claims, None).await {
        return *refused;
    }
    let used = match state.storage.credits_used(user).await {
        Ok(per_shard) => per_shard.iter().sum::<u64>(),
        Err(e) => return unavailable("credits", &e),
    };
    let synced = match db::credits::synced(&state.db, user).await {
        Ok(synced) => synced,
        Err(e) => return unavailable("credits", &e),
    };
    json(
        StatusCode::OK,
        &serde_json::json!({
            "user": user,
            "used": used,
            "synced": synced,
            "unsynced": used.saturating_sub(synced),
        }),
    )
}
