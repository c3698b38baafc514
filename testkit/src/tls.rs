//! A throwaway certificate authority for TLS tests, made with the `openssl` command: its CA
//! certificate, and a server certificate it signed for 127.0.0.1 and localhost.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub struct TestCa {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl on PATH (scripts/services.sh installs it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// Signs a server certificate for 127.0.0.1 and localhost with a new key, as
/// `{name}.pem` and `{name}.key`.
fn issue(dir: &Path, name: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-subj",
            "/CN=localhost",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            &pem,
        ],
    );
}

impl TestCa {
    /// A new CA and a server certificate signed by it, in a fresh folder.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "teamchat-test-ca-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=teamchat test CA",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&dir, &ca);
        issue(&dir, "server");
        TestCa { dir }
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// Renews the server certificate, as a certificate manager does: a new key and a new
    /// certificate, each file replaced whole (written aside, then renamed over).
    pub fn renew(&self) {
        issue(&self.dir, "renewed");
        std::fs::rename(self.dir.join("renewed.pem"), self.server_cert()).unwrap();
        std::fs::rename(self.dir.join("renewed.key"), self.server_key()).unwrap();
    }

    /// The server certificate now in the file (DER).
    pub fn server_cert_der(&self) -> Vec<u8> {
        let pem = std::fs::read(self.server_cert()).unwrap();
        let mut certs = CertificateDer::pem_slice_iter(&pem);
        certs.next().expect("a certificate").unwrap().to_vec()
    }

    /// A TLS client configuration that trusts this CA alone.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca())
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS connection to `addr`, its certificate checked for the address's IP.
pub async fn connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
}

/// The certificate the server presented on `stream` (DER).
pub fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, session) = stream.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

/// One HTTP/1.1 request over TLS (the connection closed after it): the status, the
/// response head and the body.
pub async fn https(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    request_head: &str,
) -> (u16, String, String) {
    let mut stream = connect(addr, tls).await.expect("TLS handshake");
    let head = format!("{request_head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    split_answer(&answer)
}

/// The status, head and body of an HTTP answer.
pub fn split_answer(answer: &[u8]) -> (u16, String, String) {
    let answer = String::from_utf8_lossy(answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A TLS client configuration that trusts the CA certificate in `ca_file` alone.
pub fn client_config(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
