//! Mutual TLS to upstreams: `server.upstream_client_cert` / `server.upstream_client_key`.
//!
//! A real https upstream (rustls, client certificates required and verified against a
//! test CA) in front of the real binary: with the client certificate configured the
//! call goes through and the upstream sees Portcullis's identity; without it the
//! browser gets the contract's `502 upstream_unavailable`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::harness::*;
use crate::ops::TestPki;

/// An https upstream that requires a client certificate issued by `pki`'s CA and
/// answers every request with the SHA-256 of that certificate (`x-client-cert-sha256`).
struct MtlsUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MtlsUpstream {
    async fn start(pki: &TestPki) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let (cert, key, _) = pki.leaf("upstream");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // No (or an untrusted) client certificate: the handshake fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| sha256_hex(c.as_ref()))
                        .unwrap_or_default();
                    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                        let client = client.clone();
                        async move {
                            let _ = request;
                            hyper::Response::builder()
                                .header("x-client-cert-sha256", client)
                                .body(http_body_util::Full::new(axum::body::Bytes::from(
                                    "mutual\n",
                                )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for MtlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn gateway(port: u16, upstream: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> Gateway {
    let identity = match client {
        Some((cert, key)) => format!(
            "upstream_client_cert = {:?}\nupstream_client_key = {:?}\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
        None => String::new(),
    };
    let config = standalone_config(
        port,
        &format!("http://127.0.0.1:{port}"),
        &format!("upstream_ca_file = {:?}\n{identity}", ca.to_str().unwrap()),
        &format!(
            "[[routes]]\nprefix = \"/mtls\"\nupstream = \"https://localhost:{}\"\n\
             token = \"none\"\nstrip_prefix = true",
            upstream.port()
        ),
    );
    Gateway::start(port, &config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mutual_tls_presents_the_configured_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let upstream = MtlsUpstream::start(&pki).await;
    let (client_cert, client_key, client_der) = pki.leaf("portcullis-gateway");
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("client.pem"),
        dir.path().join("client.key"),
    );
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&cert, &client_cert).unwrap();
    std::fs::write(&key, &client_key).unwrap();

    // With the client certificate: through, and the upstream saw that certificate.
    let with = gateway(free_port(), upstream.addr, &ca, Some((&cert, &key)));
    let r = Browser::new().get(&with.url("/mtls/hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "mutual\n");
    assert_eq!(
        r.headers["x-client-cert-sha256"].to_str().unwrap(),
        sha256_hex(&client_der),
        "the upstream saw Portcullis's client certificate"
    );

    // Without it: the upstream refuses the handshake, the browser gets the contract's 502.
    let mut without = gateway(free_port(), upstream.addr, &ca, None);
    let r = Browser::new().get(&without.url("/mtls/hello")).await;
    r.assert_error(502, "upstream_unavailable");
    without.stop();
    let logs = without.logs();
    assert!(
        logs.contains("upstream unavailable") && logs.contains("localhost"),
        "the reason is logged: {logs}"
    );
}
