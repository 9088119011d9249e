//! TLS to `https://` upstreams: they are verified against the system's roots plus,
//! if set, the CA certificates in `server.upstream_ca_file` (for a private PKI).
//! There is no switch to turn verification off. With `server.upstream_client_cert`
//! and `server.upstream_client_key`, Portcullis presents that certificate to
//! upstreams that ask for one (mutual TLS); it is read once at startup (by
//! `Gateway::new`), and one identity serves every `https://` route.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ServerConfig;

/// The files of the client certificate for upstreams: (cert, key).
pub type ClientIdentity<'a> = (&'a Path, &'a Path);

/// `server.upstream_client_cert` and `…_key`, when both are set (`validate` refuses one alone).
pub fn client_identity(server: &ServerConfig) -> Option<ClientIdentity<'_>> {
    Some((
        server.upstream_client_cert.as_deref()?,
        server.upstream_client_key.as_deref()?,
    ))
}

/// The crypto provider of every TLS configuration (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS client configuration of `https://` upstreams, from `[server]`: the system
/// roots plus `upstream_ca_file`, and the client certificate if one is set.
pub fn client_config_for(server: &ServerConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    upstream_client_config(server.upstream_ca_file.as_deref(), client_identity(server))
}

fn upstream_client_config(
    ca_file: Option<&Path>,
    identity: Option<ClientIdentity<'_>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(file) = ca_file {
        let certs = CertificateDer::pem_file_iter(file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("server.upstream_ca_file: {}: {e}", file.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "server.upstream_ca_file: {}: no certificate found",
                file.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("server.upstream_ca_file: {}: {e}", file.display()))?;
        }
    } else if added == 0 {
        tracing::debug!("no system root certificates found");
    }
    match identity {
        None => Ok(Arc::new(client_config(roots))),
        Some((cert, key)) => Ok(Arc::new(client_config_with_identity(roots, cert, key)?)),
    }
}

/// Like [`client_config`], presenting the certificate in `cert` (mutual TLS).
fn client_config_with_identity(
    roots: rustls::RootCertStore,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ClientConfig, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("server.upstream_client_cert: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "server.upstream_client_cert: {}: no certificate found",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("server.upstream_client_key: {}: {e}", key.display()))?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private)
        .map_err(|e| {
            format!(
                "server.upstream_client_key: does not fit server.upstream_client_cert ({}): {e}",
                cert.display()
            )
        })
}

fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    // ALPN is set by the connector (HTTP/1.1: the upstream pool's protocol).
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn an_upstream_client_identity_is_loaded_and_checked_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "gateway");
        let (_, other_key) = self_signed(dir.path(), "other");

        let config = upstream_client_config(None, Some((&cert, &key))).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        let plain = upstream_client_config(None, None).unwrap();
        assert!(!plain.client_auth_cert_resolver.has_certs());

        let mismatch = upstream_client_config(None, Some((&cert, &other_key))).unwrap_err();
        assert!(
            mismatch.starts_with("server.upstream_client_key: does not fit"),
            "{mismatch}"
        );
        let missing =
            upstream_client_config(None, Some((&dir.path().join("no.pem"), &key))).unwrap_err();
        assert!(
            missing.starts_with("server.upstream_client_cert: "),
            "{missing}"
        );
        let not_a_key = upstream_client_config(None, Some((&cert, &cert))).unwrap_err();
        assert!(
            not_a_key.starts_with("server.upstream_client_key: "),
            "{not_a_key}"
        );
    }
}
