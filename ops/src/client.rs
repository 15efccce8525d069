//! A small blocking client for the node's HTTP API.

use anyhow::{Context, bail};
use serde_json::Value;
use std::time::Duration;

pub struct Client {
    base: String,
    agent: ureq::Agent,
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
    pub fn new(base: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(660)))
            .build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent: config.into(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
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
        self.finish(path, self.agent.get(&self.url(path)).call())
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.finish(path, self.agent.post(&self.url(path)).send_json(body))
    }

    pub fn text(&self, path: &str) -> anyhow::Result<String> {
        let mut r = self
            .agent
            .get(&self.url(path))
            .call()
            .with_context(|| format!("cannot reach the troupe API at {}", self.base))?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let message = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!(ApiError { status, message });
        }
        Ok(text)
    }
}

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
