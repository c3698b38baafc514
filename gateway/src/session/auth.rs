//! Client authentication: where the token is taken from, and its verification.

use hyper::Request;
use hyper::header::{AUTHORIZATION, COOKIE};
use std::sync::{Arc, PoisonError};

use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;

use super::signing_keys::{Checks, KeyRing, SigningKey};

/// The claims teamchat reads from a token (docs/protocol.md, Transport and connecting).
#[derive(Clone, Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub teams: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    /// Credits the user may use in all (overrides the configured default).
    #[serde(default)]
    pub credit_limit: Option<u64>,
    /// When the token was issued (seconds, fractions kept): revocations and removals
    /// refuse tokens issued before them.
    #[serde(default)]
    pub iat: Option<f64>,
    /// Not in the token: the teams the server API removed this connection from, and the
    /// time each removal refuses tokens issued before (kept across `token:refresh`).
    #[serde(skip)]
    pub removed: Vec<(String, u64)>,
}

impl Claims {
    pub fn is_staff(&self) -> bool {
        self.role.as_deref() == Some("staff")
    }

    /// Whether the user may send and write receipts in the team.
    pub fn is_member(&self, team: &str) -> bool {
        self.teams.iter().any(|t| t == team)
    }

    /// Whether the user may join and read the team.
    pub fn may_read(&self, team: &str) -> bool {
        self.is_member(team) || self.is_staff()
    }

    /// When the token was issued, in ms; a token without `iat` counts as issued at 0.
    pub fn issued_ms(&self) -> u64 {
        // `as` saturates: a negative `iat` is 0, a huge one u64::MAX.
        self.iat.map_or(0, |iat| (iat * 1000.0) as u64)
    }
}

/// Why a token was refused: missing, invalid or revoked closes 4001 (HTTP 401), expired
/// 4003.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid,
    Expired,
    /// Issued before the server API revoked the user's tokens.
    Revoked,
}

impl AuthError {
    pub fn close_code(self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid | AuthError::Revoked => 4001,
            AuthError::Expired => 4003,
        }
    }

    /// The `reason` label of the auth-failure metric.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Expired => "expired",
            AuthError::Revoked => "revoked",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Invalid => "invalid token",
            AuthError::Expired => "token expired",
            AuthError::Revoked => "revoked",
        }
    }
}

/// Where a token came from; only cookie tokens are Origin-checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Query,
    Header,
    Cookie,
}

/// The token of a request, from the first source present: `token` query parameter,
/// `Authorization: Bearer`, cookie `tc_token`. Later sources are never consulted.
pub fn extract_token<B>(req: &Request<B>) -> Option<(String, TokenSource)> {
    if let Some(query) = req.uri().query()
        && let Some((_, token)) =
            url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "token")
    {
        return Some((token.into_owned(), TokenSource::Query));
    }
    if let Some(value) = req.headers().get(AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        let token = value.strip_prefix("Bearer ").unwrap_or_default().trim();
        return Some((token.to_owned(), TokenSource::Header));
    }
    for header in req.headers().get_all(COOKIE) {
        for pair in header.to_str().unwrap_or_default().split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == "tc_token"
            {
                return Some((value.to_owned(), TokenSource::Cookie));
            }
        }
    }
    None
}

/// The latest `exp` accepted: the last second of the year 9999. Beyond it (up to `u64::MAX`)
/// a deadline would overflow.
pub const MAX_EXP: u64 = 253_402_300_799;

/// The longest display name a token may carry, in bytes.
pub const MAX_NAME: usize = 256;

/// Verifies tokens with the configured keys (`signing_keys`).
pub struct Verifier {
    keys: KeyRing,
}

impl Verifier {
    /// An HS256 verifier with a shared secret.
    pub fn new(secret: &str, leeway_s: u64) -> Self {
        let checks = Checks {
            leeway_s,
            ..Checks::default()
        };
        Self::with_keys(vec![checks.secret(secret)])
    }

    pub fn with_keys(keys: Vec<SigningKey>) -> Self {
        Self {
            keys: KeyRing::new(Arc::new(keys)),
        }
    }

    /// Puts new keys in use (a reloaded JWKS).
    pub fn install(&self, keys: Vec<SigningKey>) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// The key a token names by `kid`; the only key when there is one and the token names
    /// none (or one the key does not have).
    fn key_for(keys: &[SigningKey], token: &str) -> Option<usize> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid;
        if let Some(kid) = kid
            && let Some(index) = keys.iter().position(|k| k.kid.as_deref() == Some(&kid))
        {
            return Some(index);
        }
        (keys.len() == 1).then_some(0)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let keys = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let key = &keys[Self::key_for(&keys, token).ok_or(AuthError::Invalid)?];
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        let claims = data.claims;
        if !teamchat_shared::ids::is_valid_id(&claims.sub) || claims.exp > MAX_EXP {
            return Err(AuthError::Invalid);
        }
        // The name is stored with every message the user sends (PostgreSQL text: no NUL)
        // and shown to every member.
        let name_ok = claims
            .name
            .as_deref()
            .is_none_or(|n| n.len() <= MAX_NAME && !n.contains('\0'));
        if !name_ok {
            return Err(AuthError::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    proptest! {
        /// Any string as a token: refused, never a panic.
        #[test]
        fn fuzz_tokens_from_arbitrary_text(token in ".{0,300}") {
            prop_assert!(Verifier::new(SECRET, 30).verify(&token).is_err() || token.is_empty());
        }

        /// Validly signed tokens with claims of any value: what is accepted is in range.
        #[test]
        fn fuzz_tokens_with_any_claims(
            sub in prop_oneof![Just("u1".to_owned()), ".{0,70}"],
            exp in prop_oneof![any::<u64>(), (0u64..4_000_000_000)],
            name in proptest::option::of(".{0,300}"),
            teams in prop::collection::vec(".{0,8}", 0..3),
        ) {
            let claims = json!({"sub": sub, "exp": exp, "name": name, "teams": teams});
            let token = jsonwebtoken::encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap();
            if let Ok(claims) = Verifier::new(SECRET, 30).verify(&token) {
                prop_assert!(teamchat_shared::ids::is_valid_id(&claims.sub));
                prop_assert!(claims.exp <= MAX_EXP);
                prop_assert!(claims.name.is_none_or(|n| n.len() <= MAX_NAME && !n.contains('\0')));
            }
        }
    }
}
