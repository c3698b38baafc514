//! The gateway's TLS certificate (`TLS_CERT_FILE`, `TLS_KEY_FILE`): loaded at start (a
//! bad pair stops the start with a clear error), served to every handshake, and replaced
//! without a restart when either file changes or on SIGHUP. A new pair that does not load
//! (a certificate written before its key, a key of another certificate) is refused and
//! the pair in use kept, until the files change again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use teamchat_shared::config::GatewayConfig;
use teamchat_shared::metrics as m;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How often the files are looked at for a change.
const POLL: Duration = Duration::from_secs(1);

/// The certificate in use, swapped whole on a reload.
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The files' contents when first loaded, taken by `watch`.
    loaded: std::sync::Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// TLS for the gateway's listeners when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set: the
/// acceptor, and the certificates to `watch`.
pub fn from_config(
    config: &GatewayConfig,
) -> anyhow::Result<Option<(TlsAcceptor, Arc<Certificates>)>> {
    let (Some(cert_file), Some(key_file)) = (&config.tls_cert_file, &config.tls_key_file) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // What the files held before the load: a change after it is seen by `watch`.
    let loaded = read_both(cert_file, key_file);
    let certificates = Arc::new(Certificates {
        current: RwLock::new(Arc::new(load(cert_file, key_file, &provider)?)),
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        provider: provider.clone(),
        loaded: std::sync::Mutex::new(loaded),
    });
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
    // HTTP/1.1 only: WebSocket upgrades, the HTTP API and the fallback transports.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Dashboards show 0, not "no data", until something happens.
    for reason in ["plain_http", "timeout", "refused"] {
        metrics::counter!(m::TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(0);
    }
    for result in ["loaded", "refused"] {
        metrics::counter!(m::TLS_RELOADS, "result" => result).increment(0);
    }
    Ok(Some((TlsAcceptor::from(Arc::new(server)), certificates)))
}

/// The certificate chain and key of the files, checked to belong together.
fn load(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading TLS_CERT_FILE {}", cert_file.display()))?;
    if chain.is_empty() {
        bail!("TLS_CERT_FILE {} holds no certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading TLS_KEY_FILE {}", key_file.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "TLS_KEY_FILE {} is not the key of TLS_CERT_FILE {} (or not a usable key)",
            key_file.display(),
            cert_file.display()
        )
    })
}

impl Certificates {
    /// Loads the files again; the pair in use is kept when they do not load.
    fn reload(&self) {
        match load(&self.cert_file, &self.key_file, &self.provider) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
                metrics::counter!(m::TLS_RELOADS, "result" => "loaded").increment(1);
                info!(cert = %self.cert_file.display(), "TLS certificate loaded");
            }
            Err(e) => {
                metrics::counter!(m::TLS_RELOADS, "result" => "refused").increment(1);
                warn!(
                    error = format!("{e:#}"),
                    "TLS certificate refused; the one in use kept"
                );
            }
        }
    }

    /// The files' contents, to notice a change (a renamed-over file or a Kubernetes
    /// secret's swapped link keep no useful modification time).
    fn contents(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        read_both(&self.cert_file, &self.key_file)
    }
}

fn read_both(cert_file: &Path, key_file: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((
        std::fs::read(cert_file).ok()?,
        std::fs::read(key_file).ok()?,
    ))
}

/// Reloads the certificate when either file changes, or on SIGHUP, until `stop`.
pub async fn watch(certificates: Arc<Certificates>, stop: tokio_util::sync::CancellationToken) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(
            |e| warn!(error = %e, "SIGHUP not watched: the TLS certificate reloads on change only"),
        )
        .ok();
    let mut last = certificates
        .loaded
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let mut every = tokio::time::interval(POLL);
    loop {
        let forced = tokio::select! {
            _ = every.tick() => false,
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = stop.cancelled() => return,
        };
        let now = certificates.contents();
        if forced || (now.is_some() && now != last) {
            certificates.reload();
        }
        last = now;
    }
}
