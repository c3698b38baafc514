//! Cross-origin access: pages on `ALLOWED_ORIGINS` may call the HTTP API (history,
//! credits) from the browser and connect with a `tc_token` cookie.

use hyper::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, HeaderValue, ORIGIN, VARY,
};
use hyper::{Request, Response, StatusCode};
use teamchat_shared::config::GatewayConfig;

use super::Body;

/// The request's `Origin`, if it is on `ALLOWED_ORIGINS`.
pub fn allowed_origin<B>(config: &GatewayConfig, req: &Request<B>) -> Option<HeaderValue> {
    let origin = req.headers().get(ORIGIN)?;
    let allowed = origin
        .to_str()
        .is_ok_and(|o| config.allowed_origins.iter().any(|a| a == o));
    allowed.then(|| origin.clone())
}

/// The answer to a CORS preflight: the API is read with GET and a bearer token.
pub fn preflight(allowed: bool, credentials: bool) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = if allowed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::FORBIDDEN
    };
    if allowed {
        let headers = response.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        // POST of JSON (the HTTP fallback's send and poll) is preflighted for its type.
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        if credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    response
}

/// Whether a browser says the request comes from a page of another site (an `Origin`, or
/// `Sec-Fetch-Site` other than `same-origin` or `none`) that is not on `ALLOWED_ORIGINS`.
/// Requests without either header (same-origin `GET`s of older browsers, other clients)
/// are not.
pub fn from_another_site<B>(config: &GatewayConfig, req: &Request<B>) -> bool {
    let headers = req.headers();
    let cross_site = headers.contains_key(ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|site| site != "same-origin" && site != "none");
    cross_site && allowed_origin(config, req).is_none()
}

/// Lets the allowed origin (if any) read the response.
/// With `credentials` (the HTTP fallback), the page may send its cookie too.
pub fn with_cors<B>(
    mut response: Response<B>,
    origin: Option<HeaderValue>,
    credentials: bool,
) -> Response<B> {
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(VARY, HeaderValue::from_static("origin"));
        if credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    response
}
