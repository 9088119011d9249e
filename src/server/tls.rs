//! TLS termination on the browser-facing listener (`[server.tls]`): rustls with the
//! aws-lc-rs provider, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, so browsers get
//! HTTP/2. The certificate and key are PEM files, re-read on SIGHUP: each new
//! handshake takes the current configuration, connections already open keep theirs,
//! so a renewal drops nothing. A reload that fails (unreadable file, key not matching
//! the certificate) is logged and keeps the previous certificate.
//!
//! TLS to upstreams is the upstream layer's: `crate::upstream::tls`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::upstream::tls::provider;

/// The listener's TLS configuration, swappable at runtime.
pub struct TlsTerminator {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsTerminator {
    /// Loads the certificate and key; the error names the key and the problem.
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, String> {
        let current = server_config(&config.cert, &config.key)?;
        Ok(Arc::new(Self {
            cert: config.cert.clone(),
            key: config.key.clone(),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// An acceptor with the current certificate, for one handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Re-reads the files (SIGHUP). On failure the previous certificate stays.
    pub fn reload(&self) -> Result<(), String> {
        let result = server_config(&self.cert, &self.key);
        let outcome = if result.is_ok() { "success" } else { "error" };
        crate::telemetry::metrics()
            .tls_reloads
            .get_or_create(&[("outcome", outcome)])
            .inc();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(result?);
        Ok(())
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("server.tls.cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "server.tls.cert: {}: no certificate found",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("server.tls.key: {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| format!("server.tls: the key does not fit the certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
