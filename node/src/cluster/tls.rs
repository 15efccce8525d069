//! TLS between nodes (optional): mutual TLS with one cluster CA. Every node presents its
//! certificate (which must name `server_name`, default `troupe`, as a DNS SAN) and accepts only
//! peers whose certificate the CA signed. The cookie is still checked inside the TLS session.

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub server_name: String,
}

/// What the cluster transport needs to accept and to dial over TLS.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

impl Tls {
    pub fn load(f: &TlsFiles) -> Result<Tls, String> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let chain = certs(&f.cert)?;
        let key = PrivateKeyDer::from_pem_file(&f.key)
            .map_err(|e| format!("cannot read the private key {}: {e}", f.key.display()))?;
        let mut roots = RootCertStore::empty();
        for ca in certs(&f.ca)? {
            roots
                .add(ca)
                .map_err(|e| format!("bad CA certificate in {}: {e}", f.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
            .build()
            .map_err(|e| format!("cannot build the client verifier: {e}"))?;
        let server = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("the certificate and key do not fit together: {e}"))?;
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the certificate and key do not fit together: {e}"))?;
        let server_name = ServerName::try_from(f.server_name.clone())
            .map_err(|e| format!("bad --tls-name {:?}: {e}", f.server_name))?;
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }
}
