//! API authentication: bearer tokens with roles, read from a TOML file (`--tokens FILE`) and
//! re-read on SIGHUP.
//!
//! ```toml
//! [[token]]
//! name = "ci"            # shows in the node's log when a call is refused (the secret never does)
//! secret = "..."         # at least 16 characters; sent as `Authorization: Bearer SECRET`
//! role = "operate"       # read, operate or admin
//! ```
//!
//! Roles are ordered: `read` (every GET) < `operate` (submit, cancel, pause, resume, retry,
//! redrive, discard) < `admin` (everything: drain, servers, fault injection). `/v1/health` and
//! the dashboard's files (`GET /`, `/ui/app.js`, `/ui/app.css`: no data in them) are open. Every node checks every call it receives, including the calls a follower or a worker
//! forwards to the leader (they keep the caller's `Authorization` header), so all nodes of a
//! cluster must be given the same file. Secrets are compared as SHA-256 digests in constant
//! time, against every token (no early exit).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use subtle::ConstantTimeEq;

/// Shortest secret the file may hold.
pub const SECRET_CHARS_MIN: usize = 16;
/// Most tokens one file may hold (each call is checked against all of them).
pub const TOKENS_MAX: usize = 1_000;
/// Largest tokens file read.
const FILE_BYTES_MAX: u64 = 1 << 20;

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Operate,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "operate" => Some(Role::Operate),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

struct Token {
    name: String,
    digest: [u8; 32],
    role: Role,
}

/// The tokens of one file.
pub struct Tokens {
    list: Vec<Token>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<toml::Spanned<RawToken>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    secret: String,
    role: String,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(Sha256::digest(secret).as_slice());
    out
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Tokens {
    /// Parses a tokens file; errors name the file and the line.
    pub fn parse(text: &str, file: &Path) -> Result<Tokens, String> {
        let f = file.display();
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            format!("{f}:{line}: {}", e.message().trim())
        })?;
        if raw.token.is_empty() {
            return Err(format!(
                "{f}:1: no [[token]] in the file (each needs name, secret and role)"
            ));
        }
        if raw.token.len() > TOKENS_MAX {
            return Err(format!("{f}: more than {TOKENS_MAX} tokens"));
        }
        let mut list: Vec<Token> = Vec::with_capacity(raw.token.len());
        for t in &raw.token {
            let line = line_of(text, t.span().start);
            let t = t.get_ref();
            let at = format!("{f}:{line}: token {:?}", t.name);
            if t.name.trim().is_empty() {
                return Err(format!("{f}:{line}: a token has an empty name"));
            }
            let role = Role::parse(&t.role)
                .ok_or_else(|| format!("{at}: role {:?}: use read, operate or admin", t.role))?;
            if t.secret.chars().count() < SECRET_CHARS_MIN {
                return Err(format!(
                    "{at}: the secret is shorter than {SECRET_CHARS_MIN} characters"
                ));
            }
            if t.secret.trim() != t.secret || t.secret.contains(char::is_control) {
                return Err(format!(
                    "{at}: the secret has spaces at its ends or control characters"
                ));
            }
            let d = digest(t.secret.as_bytes());
            if list.iter().any(|o| o.name == t.name) {
                return Err(format!("{at}: another token has this name"));
            }
            if list.iter().any(|o| bool::from(o.digest.ct_eq(&d))) {
                return Err(format!("{at}: another token has the same secret"));
            }
            list.push(Token {
                name: t.name.clone(),
                digest: d,
                role,
            });
        }
        Ok(Tokens { list })
    }

    pub fn load(path: &Path) -> Result<Tokens, String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(FILE_BYTES_MAX).read_to_string(&mut text))
            .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
        Tokens::parse(&text, path)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The token with this secret: every token is compared, in constant time each.
    fn find(&self, secret: &str) -> Option<(&str, Role)> {
        let d = digest(secret.as_bytes());
        let mut found = None;
        for t in &self.list {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some((t.name.as_str(), t.role));
            }
        }
        found
    }
}

/// The node's tokens, shared by its API routers and swapped whole on reload. Without a file
/// the API is open.
#[derive(Clone, Default)]
pub struct Auth {
    file: Option<PathBuf>,
    tokens: Arc<RwLock<Option<Arc<Tokens>>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("file", &self.file).finish()
    }
}

impl Auth {
    /// No tokens: every call is let through.
    pub fn open() -> Auth {
        Auth::default()
    }

    /// Tokens from this file (a bad file is an error naming the line).
    pub fn from_file(path: &Path) -> Result<Auth, String> {
        let tokens = Tokens::load(path)?;
        Ok(Auth {
            // Re-read from the same file even if the working directory changes.
            file: Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())),
            tokens: Arc::new(RwLock::new(Some(Arc::new(tokens)))),
        })
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn current(&self) -> Option<Arc<Tokens>> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again. A bad file keeps the tokens in use and returns why.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.file else {
            return Err("no --tokens file to re-read".into());
        };
        let tokens = Tokens::load(path)?;
        let n = tokens.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(tokens));
        Ok(n)
    }

    /// Re-reads the file on every SIGHUP, for as long as the process runs (only with a file:
    /// without one, SIGHUP keeps its default action).
    pub fn reload_on_sighup(&self) {
        if !self.enabled() {
            return;
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the tokens file is read at start only");
                return;
            }
        };
        let auth = self.clone();
        tokio::spawn(async move {
            // Ends when the signal stream does (the runtime shuts down).
            while hup.recv().await.is_some() {
                let file = auth.file().map(|p| p.display().to_string());
                match auth.reload() {
                    Ok(n) => {
                        tracing::info!(file, tokens = n, "SIGHUP: re-read the tokens file")
                    }
                    Err(why) => tracing::warn!(
                        file,
                        error = %why,
                        "SIGHUP: the tokens file is not valid; keeping the tokens in use"
                    ),
                }
            }
        });
    }

    /// Who `secret` is, if a token has it.
    fn who(&self, secret: &str) -> Option<(String, Role)> {
        let tokens = self.current()?;
        tokens.find(secret).map(|(n, r)| (n.to_string(), r))
    }
}

/// The role a call needs: `None` for the open routes (liveness, and the dashboard's files,
/// which hold no data). Anything not listed needs `admin`, so a route added later is closed
/// until it is placed here.
pub fn required(method: &Method, path: &str) -> Option<Role> {
    if path == "/v1/health" {
        return None;
    }
    let read = method == Method::GET || method == Method::HEAD;
    if read && super::dashboard::is_asset(path) {
        return None;
    }
    // Fault injection and its verdict: admin only, reads included (docs/chaos.md).
    if path.starts_with("/v1/chaos/") {
        return Some(Role::Admin);
    }
    if read {
        return Some(Role::Read);
    }
    if method != Method::POST {
        return Some(Role::Admin);
    }
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let operate = match parts.as_slice() {
        ["", "v1", "workflows"] => true,
        ["", "v1", "workflows", _, action] => {
            matches!(*action, "cancel" | "pause" | "resume" | "retry")
        }
        ["", "v1", "dlq", "redrive" | "discard"] => true,
        ["", "v1", "dlq", _, "redrive"] => true,
        _ => false,
    };
    Some(if operate { Role::Operate } else { Role::Admin })
}

fn refuse(status: StatusCode, msg: String) -> Response {
    let mut r = (status, Json(serde_json::json!({ "error": msg }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The secret of an `Authorization: Bearer SECRET` header.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

/// The middleware: lets a call through, or answers 401 (no token, or an unknown one) or 403
/// (a token whose role is too low), and logs the refusal with the caller's address.
pub async fn check(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if !auth.enabled() {
        return next.run(req).await;
    }
    let Some(needed) = required(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "unknown".into());
    // Set by a follower or worker that forwards the call: for the log only, never trusted.
    let via = req
        .headers()
        .get(super::forward::FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (method, route) = (req.method().clone(), req.uri().path().to_string());
    let who = bearer(&req).map(|s| auth.who(s));
    let (status, token, msg) = match who {
        Some(Some((_, role))) if role >= needed => return next.run(req).await,
        Some(Some((name, role))) => (
            StatusCode::FORBIDDEN,
            name.clone(),
            format!(
                "{method} {route} needs the {} role; token {name:?} has {}",
                needed.as_str(),
                role.as_str()
            ),
        ),
        Some(None) => (
            StatusCode::UNAUTHORIZED,
            String::new(),
            format!(
                "unknown token; {method} {route} needs a token with the {} role (Authorization: Bearer SECRET; troupe --token or TROUPE_TOKEN)",
                needed.as_str()
            ),
        ),
        None => (
            StatusCode::UNAUTHORIZED,
            String::new(),
            format!(
                "no token; {method} {route} needs a token with the {} role (Authorization: Bearer SECRET; troupe --token or TROUPE_TOKEN)",
                needed.as_str()
            ),
        ),
    };
    let needed = needed.as_str();
    let code = status.as_u16();
    if via.is_empty() {
        tracing::warn!(%source, %method, %route, %token, needed, status = code, "api call refused");
    } else {
        tracing::warn!(%source, forwarded_for = %via, %method, %route, %token, needed, status = code, "api call refused");
    }
    refuse(status, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[[token]]\nname = \"ro\"\nsecret = \"read-secret-0123456789\"\nrole = \"read\"\n\n[[token]]\nname = \"ops\"\nsecret = \"operate-secret-0123456789\"\nrole = \"operate\"\n";

    #[test]
    fn tokens_are_found_by_secret_with_their_role() {
        let t = Tokens::parse(GOOD, Path::new("t.toml")).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.find("read-secret-0123456789"), Some(("ro", Role::Read)));
        assert_eq!(
            t.find("operate-secret-0123456789"),
            Some(("ops", Role::Operate))
        );
        assert_eq!(t.find("read-secret-012345678"), None);
        assert_eq!(t.find(""), None);
    }

    #[test]
    fn a_bad_file_names_the_line() {
        let bad_role = GOOD.replace("role = \"operate\"", "role = \"root\"");
        let e = Tokens::parse(&bad_role, Path::new("t.toml")).err().unwrap();
        assert!(
            e.starts_with("t.toml:6: token \"ops\": role \"root\""),
            "{e}"
        );
        let short = GOOD.replace("read-secret-0123456789", "short");
        let e = Tokens::parse(&short, Path::new("t.toml")).err().unwrap();
        assert!(e.starts_with("t.toml:1: token \"ro\""), "{e}");
        assert!(e.contains("shorter than 16"), "{e}");
        let syntax = GOOD.replace("name = \"ops\"", "name = ops");
        let e = Tokens::parse(&syntax, Path::new("t.toml")).err().unwrap();
        assert!(e.starts_with("t.toml:7:"), "{e}");
        let unknown = GOOD.replace("role = \"read\"", "role = \"read\"\nrights = 1");
        let e = Tokens::parse(&unknown, Path::new("t.toml")).err().unwrap();
        assert!(e.contains("rights"), "{e}");
        let dup = GOOD.replace("operate-secret", "read-secret");
        let e = Tokens::parse(&dup, Path::new("t.toml")).err().unwrap();
        assert!(e.contains("same secret"), "{e}");
        let e = Tokens::parse("", Path::new("t.toml")).err().unwrap();
        assert!(e.contains("no [[token]]"), "{e}");
    }

    #[test]
    fn routes_need_the_documented_roles() {
        let post = Method::POST;
        assert_eq!(required(&Method::GET, "/v1/health"), None);
        assert_eq!(required(&Method::GET, "/"), None);
        assert_eq!(required(&Method::GET, "/ui/app.js"), None);
        assert_eq!(required(&Method::GET, "/ui/other.js"), Some(Role::Read));
        assert_eq!(required(&post, "/"), Some(Role::Admin));
        assert_eq!(required(&Method::GET, "/v1/workflows"), Some(Role::Read));
        assert_eq!(required(&Method::GET, "/v1/servers"), Some(Role::Read));
        assert_eq!(required(&post, "/v1/workflows"), Some(Role::Operate));
        for a in ["cancel", "pause", "resume", "retry"] {
            let p = format!("/v1/workflows/wf-1/{a}");
            assert_eq!(required(&post, &p), Some(Role::Operate), "{p}");
        }
        assert_eq!(
            required(&post, "/v1/workflows/wf-1/delete"),
            Some(Role::Admin)
        );
        assert_eq!(required(&post, "/v1/dlq/redrive"), Some(Role::Operate));
        assert_eq!(required(&post, "/v1/dlq/discard"), Some(Role::Operate));
        assert_eq!(required(&post, "/v1/dlq/7/redrive"), Some(Role::Operate));
        assert_eq!(required(&post, "/v1/nodes/n1/drain"), Some(Role::Admin));
        assert_eq!(required(&post, "/v1/servers"), Some(Role::Admin));
        assert_eq!(required(&post, "/v1/chaos/panic/raft"), Some(Role::Admin));
        assert_eq!(required(&post, "/v1/chaos/faults"), Some(Role::Admin));
        assert_eq!(
            required(&Method::GET, "/v1/chaos/faults"),
            Some(Role::Admin)
        );
        assert_eq!(required(&post, "/v1/chaos/verify"), Some(Role::Admin));
        assert_eq!(required(&Method::PUT, "/v1/workflows"), Some(Role::Admin));
    }

    #[test]
    fn a_bad_reload_keeps_the_tokens_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, GOOD).unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert!(auth.who("read-secret-0123456789").is_some());
        std::fs::write(&path, "[[token]]\nname = 1\n").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.who("read-secret-0123456789").is_some());
        std::fs::write(
            &path,
            format!("{GOOD}\n[[token]]\nname = \"new\"\nsecret = \"admin-secret-0123456789\"\nrole = \"admin\"\n"),
        )
        .unwrap();
        assert_eq!(auth.reload(), Ok(3));
        assert_eq!(
            auth.who("admin-secret-0123456789"),
            Some(("new".to_string(), Role::Admin))
        );
    }
}
