//! The `http` builtin: one request per attempt to a model server (vLLM / OpenAI-compatible,
//! Triton, any JSON service); its JSON answer is the attempt's output.
//!
//! - 2xx: the answer (at most 64 KiB, JSON, or empty for no output) is the output.
//! - 429 and 5xx: a failure that retries apply to; with `Retry-After: N` (seconds) the report
//!   carries `RetryHint::After`, and apply places the retry no sooner than N s after it.
//! - Other 4xx: a failure with `RetryHint::Never`: the task fails (or is dead-lettered) now.
//! - `${env:NAME}` in the url and header values is read from this node's environment here,
//!   just before sending; the values never leave this function except on the wire (messages
//!   show the url as written, and any value that a server echoes into an error is masked).

pub(crate) mod connect;
mod limit;
#[cfg(test)]
mod tests;

use axum::body::Body;
use hyper::body::{Body as _, Bytes};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use std::time::Duration;
use troupe_actors::executor::KillSignal;
use troupe_clock::Clock;
use troupe_scheduler::spec::OUTPUT_BYTES_MAX;
use troupe_scheduler::spec::http::{EnvError, HttpArgs, RETRY_AFTER_MAX_MS, expand_env};
use troupe_scheduler::units::format_ms;
use troupe_scheduler::{Json, Outcome, RetryHint, RunSpec};

/// Runs one `http` attempt: waits for the step's limits on this node, sends, classifies.
pub async fn run(spec: &RunSpec, with: &Json, kill: KillSignal, clock: &dyn Clock) -> Outcome {
    run_with(
        spec,
        with,
        kill,
        &mut |name| std::env::var(name).ok(),
        clock,
    )
    .await
}

/// [`run`], reading `${env:NAME}` through `lookup`.
async fn run_with(
    spec: &RunSpec,
    with: &Json,
    kill: KillSignal,
    lookup: Lookup<'_>,
    clock: &dyn Clock,
) -> Outcome {
    let args = match HttpArgs::parse(&with.value()) {
        Ok(a) => a,
        Err((field, m)) => {
            return failed(format!("with.{field}: {m}"));
        }
    };
    let (req, secrets) = match request(&args, spec, lookup) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let key = (spec.task.wf, spec.task.step);
    let limits = limit::of(key, args.concurrency, args.rate, clock);
    let work = async {
        let _held = limits.acquire(clock).await;
        let sent = tokio::time::timeout(Duration::from_millis(args.timeout_ms), send(req, &args));
        match sent.await {
            Ok(o) => o,
            Err(_) => failed(format!(
                "{} {} gave no complete answer within {} (with.timeout); retryable",
                args.method,
                args.url,
                format_ms(args.timeout_ms)
            )),
        }
    };
    let limit = spec.timeout_ms.unwrap_or(u64::MAX);
    let out = tokio::select! {
        o = tokio::time::timeout(Duration::from_millis(limit), work) => match o {
            Ok(o) => o,
            Err(_) => Outcome::Failed { error: format!("timed out after {}", format_ms(limit)) },
        },
        _ = kill => Outcome::Failed { error: "stopped: the attempt was cancelled".into() },
    };
    mask(out, &secrets)
}

fn failed(e: String) -> Outcome {
    Outcome::Failed {
        error: format!("http: {e}"),
    }
}

/// Replaces every value read from the environment in an error with `***` (a server may echo
/// a header back in its error page).
fn mask(out: Outcome, secrets: &[String]) -> Outcome {
    let scrub = |mut e: String| {
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            e = e.replace(s.as_str(), "***");
        }
        e
    };
    match out {
        Outcome::Failed { error } => Outcome::Failed {
            error: scrub(error),
        },
        Outcome::FailedRetry { error, retry } => Outcome::FailedRetry {
            error: scrub(error),
            retry,
        },
        ok => ok,
    }
}

type Lookup<'a> = &'a mut (dyn FnMut(&str) -> Option<String> + Send);

fn env(
    field: &str,
    text: &str,
    secrets: &mut Vec<String>,
    lookup: Lookup<'_>,
) -> Result<String, String> {
    match expand_env(text, lookup) {
        Ok((s, used)) => {
            secrets.extend(used);
            Ok(s)
        }
        Err(EnvError::Missing(name)) => Err(format!(
            "with.{field} names ${{env:{name}}}, but the variable {name} is not set on this node"
        )),
        Err(EnvError::Malformed(m)) => Err(format!("with.{field}: {m}")),
    }
}

/// Builds the request, reading `${env:NAME}` now. Returns it and the values read.
fn request(
    args: &HttpArgs,
    spec: &RunSpec,
    lookup: Lookup<'_>,
) -> Result<(Request<Body>, Vec<String>), String> {
    let mut secrets = Vec::new();
    let url = env("url", &args.url, &mut secrets, lookup)?;
    let shown = &args.url;
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("with.url {shown:?} is not a valid URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "with.url {shown:?} must be http:// or https:// and name a host"
        ));
    }
    let method = Method::from_bytes(args.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    for (k, v) in &args.headers {
        let field = format!("headers.{k}");
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("with.{field}: not a valid header name"))?;
        let value = env(&field, v, &mut secrets, lookup)?;
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| format!("with.{field}: the value is not a valid header value"))?;
        value.set_sensitive(true);
        headers.append(name, value);
    }
    let body: Vec<u8> = match &args.body {
        Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
        Some(v) => v.to_string().into_bytes(),
        // By default, the item; a method that carries no body, and a step without map, send none.
        None if matches!(args.method, "GET" | "HEAD" | "DELETE" | "OPTIONS") => Vec::new(),
        None => spec
            .item
            .as_ref()
            .map(|i| i.0.clone().into_bytes())
            .unwrap_or_default(),
    };
    if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if !headers.contains_key(header::ACCEPT) {
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    }
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, HeaderValue::from_static("troupe"));
    }
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    *req.headers_mut() = headers;
    Ok((req, secrets))
}

/// The error and its causes, one after the other.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// The first characters of an answer, on one line.
fn snippet(b: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(b);
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &one[..i]),
        None => one,
    }
}

async fn send(req: Request<Body>, args: &HttpArgs) -> Outcome {
    let what = format!("{} {}", args.method, args.url);
    let resp = match connect::client().request(req).await {
        Ok(r) => r,
        Err(e) => {
            return failed(format!("{what}: {} (retryable)", chain(&e)));
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1_000).min(RETRY_AFTER_MAX_MS));
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content-type")
        .to_string();
    let reason = status.canonical_reason().unwrap_or("");
    let answered = format!("{what} answered {} {reason}", status.as_u16());
    let too_large = |n: String| {
        failed(format!(
            "{answered} with {n} bytes; the limit is {OUTPUT_BYTES_MAX} (the 64 KiB output limit): ask the server for a smaller answer"
        ))
    };
    if status.is_success() && length.is_some_and(|n| n > OUTPUT_BYTES_MAX as u64) {
        return too_large(length.unwrap_or_default().to_string());
    }
    let mut body = resp.into_body();
    let mut bytes: Vec<u8> = Vec::new();
    let mut over = false;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    let data: Bytes = data;
                    if bytes.len() + data.len() > OUTPUT_BYTES_MAX {
                        over = true;
                        break;
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Err(e) => {
                return failed(format!(
                    "{answered}, then the connection broke while sending the answer: {} (retryable)",
                    chain(&e)
                ));
            }
        }
    }
    if status.is_success() {
        if over {
            return too_large(format!("more than {OUTPUT_BYTES_MAX}"));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Outcome::Succeeded { output: None };
        }
        return match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => Outcome::Succeeded {
                output: Some(Json::from_value(&v)),
            },
            Err(e) => failed(format!(
                "{answered}, but the answer is not JSON ({content_type}, {} bytes): {e}; it starts with: {}",
                bytes.len(),
                snippet(&bytes, 80)
            )),
        };
    }
    let says = if bytes.is_empty() {
        String::new()
    } else {
        format!(": {}", snippet(&bytes, 300))
    };
    let code = status.as_u16();
    if code == 429 || status.is_server_error() {
        return match retry_after {
            Some(ms) => Outcome::FailedRetry {
                error: format!(
                    "http: {answered}; retryable: the retry waits at least Retry-After ({}){says}",
                    format_ms(ms)
                ),
                retry: RetryHint::After { ms },
            },
            None => failed(format!("{answered}; retryable{says}")),
        };
    }
    if status.is_client_error() {
        return Outcome::FailedRetry {
            error: format!(
                "http: {answered}; not retried (a {code} would come again; it counts as a failure){says}"
            ),
            retry: RetryHint::Never,
        };
    }
    failed(format!(
        "{answered}; only 2xx answers succeed (redirects are not followed){says}"
    ))
}
