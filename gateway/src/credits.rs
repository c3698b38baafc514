//! `GET /v1/users/{user}/credits`: the credits a user used (Redis, counted at append), the
//! part the workers synced into PostgreSQL, and the difference not synced yet.

use hyper::{Request, Response, StatusCode};
use teamchat_shared::ids::is_valid_id;

use crate::AppState;
use crate::server::{Body, http_claims, json, json_error, unauthorized};

pub async fn handle<B>(state: &AppState, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let Some(user) = path
        .strip_prefix("/v1/users/")
        .and_then(|rest| rest.strip_suffix("/credits"))
    else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    };
    let claims = match http_claims(state, req) {
        Ok(claims) => claims,
        Err(error) => return unauthorized(error),
    };
    if !is_valid_id(user) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "user is not a valid id",
        );
    }
    if claims.sub != user && !claims.is_staff() {
        return json_error(StatusCode::FORBIDDEN, "forbidden", "only the user or staff");
    }
    let used = match state.broker.credits_used(user).await {
        Ok(per_shard) => per_shard.iter().sum::<u64>(),
        Err(e) => {
            tracing::warn!(error = %e, "credits: Redis unavailable");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage unavailable, retry later",
            );
        }
    };
    let synced: Result<Option<i64>, _> =
        sqlx::query_scalar("SELECT used FROM credit_balances WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&state.db)
            .await;
    let synced = match synced {
        Ok(synced) => synced.unwrap_or(0) as u64,
        Err(e) => {
            tracing::warn!(error = %e, "credits: PostgreSQL unavailable");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage unavailable, retry later",
            );
        }
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
