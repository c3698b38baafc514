//! Development mode (`DEV_MODE`, off by default and unsafe in production): serves the demo
//! chat page and the client library, and mints tokens for any user who asks.
//!
//! `GET /` is `<DEV_CLIENTS_DIR>/demo/www/index.html`, `GET /demo/<path>` is a file of
//! `demo/www/`, `GET /lib/<path>` a file of the built library (`js/dist/`), and
//! `POST /dev/token` answers `{"token","exp"}` for `{"user","name"?,"teams"?}`.

use std::path::{Component, Path, PathBuf};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use teamchat_shared::runtime::now_ms;

use super::{Body, json, json_error};
use crate::AppState;

/// How long a development token lives; the client library refreshes it before it ends.
const TOKEN_TTL_S: u64 = 3600;
const MAX_TOKEN_REQUEST: usize = 4096;

/// A static file of the demo page or the library, or 404.
pub async fn static_file(state: &AppState, path: &str) -> Response<Body> {
    let root = Path::new(&state.config.dev_clients_dir);
    let file = match path {
        "/" | "/index.html" => Some(root.join("demo/www/index.html")),
        _ => path
            .strip_prefix("/demo/")
            .and_then(|rest| under(&root.join("demo/www"), rest))
            .or_else(|| {
                path.strip_prefix("/lib/")
                    .and_then(|rest| under(&root.join("js/dist"), rest))
            }),
    };
    let Some(file) = file else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such file");
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&file)));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        Err(_) => json_error(StatusCode::NOT_FOUND, "not_found", "no such file"),
    }
}

/// `dir/rest`, if `rest` is a plain relative path (no `..`, no root): nothing outside `dir`
/// is served.
fn under(dir: &Path, rest: &str) -> Option<PathBuf> {
    let rest = Path::new(rest);
    let plain = rest.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && !rest.as_os_str().is_empty()).then(|| dir.join(rest))
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    user: String,
    name: Option<String>,
    teams: Option<Vec<String>>,
}

#[derive(Serialize)]
struct DevClaims<'a> {
    sub: &'a str,
    name: &'a str,
    teams: &'a [String],
    exp: u64,
}

/// Signs a token for the asked user and teams with the gateway's own secret.
pub async fn token(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_TOKEN_REQUEST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "body too large"),
    };
    let request: TokenRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let teams = request.teams.unwrap_or_else(|| vec!["general".to_owned()]);
    let ids = std::iter::once(&request.user).chain(&teams);
    if teams.is_empty()
        || !ids
            .into_iter()
            .all(|id| teamchat_shared::ids::is_valid_id(id))
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid user or team id",
        );
    }
    let now = (now_ms() / 1000) as u64;
    let claims = DevClaims {
        sub: &request.user,
        name: request.name.as_deref().unwrap_or(&request.user),
        teams: &teams,
        exp: now + TOKEN_TTL_S,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(state.config.jwt_secret.as_bytes());
    match jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) {
        Ok(token) => json(
            StatusCode::OK,
            &serde_json::json!({"token": token, "exp": claims.exp}),
        ),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::under;
    use std::path::Path;

    #[test]
    fn only_plain_relative_paths_are_served() {
        let dir = Path::new("/srv/www");
        assert_eq!(under(dir, "app.js"), Some(dir.join("app.js")));
        assert_eq!(under(dir, "css/a.css"), Some(dir.join("css/a.css")));
        assert_eq!(under(dir, "../secret"), None);
        assert_eq!(under(dir, "a/../../secret"), None);
        assert_eq!(under(dir, "/etc/passwd"), None);
        assert_eq!(under(dir, "./app.js"), None);
        assert_eq!(under(dir, ""), None);
    }
}
