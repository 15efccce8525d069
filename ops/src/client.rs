//! A small blocking client for the node's HTTP API: `http://` or `https://` (rustls, trusting
//! `--ca FILE`, else the system's CA bundle), with `Authorization: Bearer TOKEN` when a token
//! is given (`--token` / `TROUPE_TOKEN`).

use anyhow::{Context, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// The `Authorization` header value, when a token was given.
    bearer: Option<String>,
}

/// How the CLI authenticates to the API and what it trusts for HTTPS.
#[derive(Clone, Default)]
pub struct Access {
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
}

/// Where the system's CA certificates are, when no `--ca` is given.
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn roots(ca: Option<&Path>) -> anyhow::Result<ureq::tls::RootCerts> {
    let path: PathBuf = match ca {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .or_else(|| CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()))
            .context(
                "no CA certificates for https: give the API's CA with --ca FILE (or TROUPE_CA)",
            )?,
    };
    let pem = std::fs::read(&path)
        .with_context(|| format!("cannot read the CA file {}", path.display()))?;
    let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// An answer that is not 2xx: the status and the API's error text.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}
impl std::error::Error for ApiError {}

impl Client {
    /// A client without a token (the nodes a command started itself, without `--tokens`).
    pub fn new(base: &str) -> Self {
        Client::with(base, &Access::default()).expect("a plain http client needs no files")
    }

    pub fn with(base: &str, access: &Access) -> anyhow::Result<Self> {
        Client::with_timeout(base, access, Duration::from_secs(660))
    }

    /// A client whose calls give up after `timeout` (a frozen node must not hold a caller up).
    pub fn with_timeout(base: &str, access: &Access, timeout: Duration) -> anyhow::Result<Self> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout));
        if base.starts_with("https://") {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .root_certs(roots(access.ca.as_deref())?)
                .build();
            config = config.tls_config(tls);
        } else if access.ca.is_some() {
            bail!("--ca is for an https:// API address; {base} is not one");
        }
        let bearer = match access.token.as_deref().map(str::trim) {
            Some("") | None => None,
            Some(t) => Some(format!("Bearer {t}")),
        };
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            agent: config.build().into(),
            bearer,
        })
    }

    /// The API address this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get_req(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let r = self.agent.get(&self.url(path));
        match &self.bearer {
            Some(b) => r.header("authorization", b),
            None => r,
        }
    }

    fn finish(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut r = r.with_context(|| format!("cannot reach the troupe API at {} ({what}); is `troupe dev` running? (--api / TROUPE_API)", self.base))?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(ApiError { status, message }.into())
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.finish(path, self.get_req(path).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let r = self.agent.post(&self.url(path));
        let r = match &self.bearer {
            Some(b) => r.header("authorization", b),
            None => r,
        };
        self.finish(path, r.send_json(body))
    }

    /// A GET whose answer is bytes (a log), with the answer's headers.
    pub fn bytes(&self, path: &str) -> anyhow::Result<(Vec<u8>, ureq::http::HeaderMap)> {
        let mut r = self
            .get_req(path)
            .call()
            .with_context(|| format!("cannot reach the troupe API at {}", self.base))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r
            .body_mut()
            .with_config()
            .limit(LOG_BYTES_MAX)
            .read_to_vec()
            .unwrap_or_default();
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body).into_owned();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!(ApiError { status, message });
        }
        Ok((body, headers))
    }
}

/// Most bytes read from one log answer (the API sends at most 1 MiB).
const LOG_BYTES_MAX: u64 = 2 << 20;

/// True for answers worth retrying as they are: no connection, 503 (no leader, election) and
/// 429 (busy). Everything else (a refused spec, a conflict) would fail again.
pub fn retryable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ApiError>() {
        Some(a) => a.status == 503 || a.status == 429 || a.status == 502 || a.status == 504,
        None => true,
    }
}

/// Runs `f` again while it fails with a retryable error, with jittered exponential backoff,
/// for up to `limit` in all (a leader change takes about a second).
pub fn with_retries<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    use backon::{BlockingRetryable, ExponentialBuilder};
    let policy = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_total_delay(Some(limit))
        .without_max_times();
    (|| f())
        .retry(policy)
        .when(retryable)
        .notify(|e, wait| eprintln!("{what}: {e:#}; retrying in {wait:?}"))
        .call()
}
