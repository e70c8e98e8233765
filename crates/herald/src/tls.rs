//! TLS for the WebSocket and HTTP API listener (wss/https), with rustls.
//!
//! The certificate and key are read from PEM files and re-read when either
//! file changes, so a renewed certificate (cert-manager, certbot) takes
//! effect without a restart: new handshakes use it, open connections keep
//! theirs. A file that fails to load keeps the previous certificate in use.

use anyhow::Context;
use parking_lot::RwLock;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// How often the files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(TlsAcceptor, Option<SystemTime>)>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("no PEM certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read TLS key {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("TLS certificate and key do not form a valid pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Tls {
    /// Loads the certificate; an error here stops startup.
    pub fn new(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let acceptor = load(cert, key)?;
        let stamp = modified(cert).max(modified(key));
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new((acceptor, stamp)),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().0.clone()
    }

    /// Re-reads the files whenever they change, forever.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            let stamp = modified(&self.cert).max(modified(&self.key));
            if stamp == self.current.read().1 {
                continue;
            }
            match load(&self.cert, &self.key) {
                Ok(acceptor) => {
                    *self.current.write() = (acceptor, stamp);
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    // Keep serving the previous certificate; try again on the next change.
                    self.current.write().1 = stamp;
                    tracing::warn!(error = %format!("{e:#}"), "TLS certificate not reloaded");
                }
            }
        }
    }
}
