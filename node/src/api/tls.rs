//! HTTPS for the API (optional): `--api-tls-cert` and `--api-tls-key` serve it over TLS (rustls,
//! the crates the cluster's mutual TLS uses). Clients are not asked for a certificate: they
//! authenticate with a token. `--api-tls-ca` is what this node trusts when it calls another
//! node's API (a follower forwarding to the leader, the leader fetching a log from the node
//! that ran the attempt): every node's API certificate must carry the address the node
//! registers (its `--api-listen` IP) as a subject alternative name.

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ApiTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed the other nodes' API certificates (clusters).
    pub ca: Option<PathBuf>,
}

/// What the API needs to serve HTTPS and to call other nodes' APIs over it.
#[derive(Clone)]
pub struct ApiTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Trusts `ca`; `None` when no CA was given (this node then cannot call another over TLS).
    pub connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls")
            .field("connector", &self.connector.is_some())
            .finish()
    }
}

impl ApiTls {
    pub fn load(f: &ApiTlsFiles) -> Result<ApiTls, String> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let chain = crate::cluster::tls::certs(&f.cert)?;
        let key = PrivateKeyDer::from_pem_file(&f.key)
            .map_err(|e| format!("cannot read the private key {}: {e}", f.key.display()))?;
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("the API certificate and key do not fit together: {e}"))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = match &f.ca {
            None => None,
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in crate::cluster::tls::certs(ca)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
                }
                let mut client = ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                client.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsConnector::from(Arc::new(client)))
            }
        };
        Ok(ApiTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector,
        })
    }
}
