//! The keys tokens are verified with: the HS256 secret (`JWT_SECRET`), one public key
//! (`JWT_PUBLIC_KEY`: RS256, ES256 or EdDSA), or a JWKS document (`JWKS_FILE`, read again
//! when it changes or on SIGHUP). Each key accepts only its own algorithm family, so a
//! token signed with HS256 is never checked against a public key used as a secret.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use teamchat_shared::config::GatewayConfig;
use tracing::{info, warn};

/// A key and what a token verified with it must hold.
pub struct SigningKey {
    /// The JWKS `kid`, when the key came from one.
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub validation: Validation,
}

/// The claims checked besides the signature, the same for every key.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    pub leeway_s: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl Checks {
    pub fn from_config(config: &GatewayConfig) -> Self {
        Checks {
            leeway_s: config.token_leeway_s,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        }
    }

    /// The validation of a key accepting `algorithms`.
    pub fn validation(&self, algorithms: Vec<Algorithm>) -> Validation {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = self.leeway_s;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The HS256 key of a shared secret.
    pub fn secret(&self, secret: &str) -> SigningKey {
        SigningKey {
            kid: None,
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation: self.validation(vec![Algorithm::HS256]),
        }
    }

    /// A public key in PEM (RSA, EC or Ed25519, told by the PEM itself).
    pub fn public_pem(&self, pem: &[u8]) -> anyhow::Result<SigningKey> {
        let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (
                key,
                vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
            )
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (key, vec![Algorithm::ES256, Algorithm::ES384])
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (key, vec![Algorithm::EdDSA])
        } else {
            anyhow::bail!("not an RSA, EC or Ed25519 public key in PEM");
        };
        Ok(SigningKey {
            kid: None,
            key,
            validation: self.validation(algorithms),
        })
    }

    /// The public keys of a JWKS document; keys of other kinds (symmetric, for
    /// encryption, of unknown algorithms) are skipped.
    pub fn jwks(&self, document: &[u8]) -> anyhow::Result<Vec<SigningKey>> {
        let set: JwkSet = serde_json::from_slice(document).context("not a JWKS document")?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let family: &[Algorithm] = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => {
                    &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
                }
                AlgorithmParameters::EllipticCurve(_) => &[Algorithm::ES256, Algorithm::ES384],
                AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
                // A shared secret has no place in a list of public keys.
                _ => continue,
            };
            let encrypts = jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|usage| *usage != jsonwebtoken::jwk::PublicKeyUse::Signature);
            if encrypts {
                continue;
            }
            // A key that names its algorithm accepts that one only.
            let algorithms = match jwk
                .common
                .key_algorithm
                .map(|alg| alg.to_string().parse::<Algorithm>())
            {
                Some(Ok(alg)) if family.contains(&alg) => vec![alg],
                Some(_) => continue,
                None => family.to_vec(),
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.push(SigningKey {
                kid: jwk.common.key_id.clone(),
                key,
                validation: self.validation(algorithms),
            });
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "the JWKS document has no usable signing key"
        );
        Ok(keys)
    }
}

/// The keys the configuration names: a JWKS file, else a public key, else the secret.
pub fn from_config(config: &GatewayConfig) -> anyhow::Result<Vec<SigningKey>> {
    let checks = Checks::from_config(config);
    if let Some(path) = &config.jwks_file {
        let document =
            std::fs::read(path).with_context(|| format!("reading JWKS_FILE {}", path.display()))?;
        return checks
            .jwks(&document)
            .with_context(|| format!("JWKS_FILE {}", path.display()));
    }
    if let Some(key) = &config.jwt_public_key {
        let pem = if key.trim_start().starts_with("-----BEGIN") {
            key.as_bytes().to_vec()
        } else {
            std::fs::read(key).with_context(|| format!("reading JWT_PUBLIC_KEY file {key}"))?
        };
        return Ok(vec![checks.public_pem(&pem).context("JWT_PUBLIC_KEY")?]);
    }
    Ok(vec![checks.secret(&config.jwt_secret)])
}

/// How often the JWKS file is looked at for a change.
const JWKS_POLL: Duration = Duration::from_secs(1);

/// Reads `JWKS_FILE` again whenever its content changes or the process gets SIGHUP, and
/// hands the new keys to `install`. A document that does not parse keeps the keys in use.
pub async fn watch_jwks(
    path: std::path::PathBuf,
    checks: Checks,
    install: impl Fn(Vec<SigningKey>) + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            warn!(error = %e, "SIGHUP not watched: JWKS_FILE reloads on change only");
            None
        }
    };
    let mut last = std::fs::read(&path).ok();
    let mut every = tokio::time::interval(JWKS_POLL);
    loop {
        let forced = tokio::select! {
            _ = every.tick() => false,
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = stop.cancelled() => return,
        };
        let document = match std::fs::read(&path) {
            Ok(document) => document,
            Err(e) => {
                if forced {
                    warn!(error = %e, path = %path.display(), "JWKS_FILE unreadable; keys kept");
                }
                continue;
            }
        };
        if !forced && last.as_deref() == Some(document.as_slice()) {
            continue;
        }
        match checks.jwks(&document) {
            Ok(keys) => {
                info!(keys = keys.len(), path = %path.display(), "JWKS_FILE loaded");
                install(keys);
            }
            Err(e) => warn!(error = %e, path = %path.display(), "JWKS_FILE refused; keys kept"),
        }
        last = Some(document);
    }
}

/// The keys in use, shared by every verification and swapped whole on a reload.
pub type KeyRing = std::sync::RwLock<Arc<Vec<SigningKey>>>;
