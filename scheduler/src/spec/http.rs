//! The `http` builtin's arguments (`with = { url, method, body, headers, timeout, concurrency,
//! rate }`): one parser, used at submit (validation) and on the node (after rendering), and the
//! `${env:NAME}` references that the node replaces when it sends the request.
//!
//! Secrets: `${env:NAME}` in `url` and header values stays as written in the spec, the log and
//! every rendered `RunSpec`; only the node that sends the request reads the variable. Text a
//! template brings in (an item, a param, an output) has its `$` doubled when the attempt is
//! rendered ([`escape_dollars`]), so data can never name a variable of the node.

use crate::units::parse_duration_ms;
use serde_json::Value;

/// Most requests of one step in flight at once on one node.
pub const CONCURRENCY_MAX: u32 = 10_000;
/// Limit of one request (send to the last byte of the answer) when `timeout` is not given.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Longest `Retry-After` honoured (a larger one is cut to this).
pub const RETRY_AFTER_MAX_MS: u64 = 3_600_000;
/// The methods `method` may name.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// The fields `with` takes.
pub const FIELDS: &[&str] = &[
    "url",
    "method",
    "body",
    "headers",
    "timeout",
    "concurrency",
    "rate",
];

/// `with` of an `http` step, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpArgs {
    /// As written (after `{{ }}` rendering on the node); `${env:NAME}` not yet replaced.
    pub url: String,
    pub method: &'static str,
    /// `None`: the item as JSON (no body in a step without `map`).
    pub body: Option<Value>,
    /// Names as written; values with `${env:NAME}` not yet replaced.
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u64,
    pub concurrency: Option<u32>,
    pub rate: Option<Rate>,
}

/// A token bucket: `count` requests per `per_ms`, up to `count` (at least 1) at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub per_ms: u64,
}

impl Rate {
    /// `"100/s"`, `"20/m"`, `"5/h"`, `"10/500ms"`, `"3/10s"`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = |why: &str| {
            format!(
                "rate = {text:?}: {why}; write requests per time, e.g. \"100/s\", \"20/m\" or \"5/10s\""
            )
        };
        let (n, per) = text.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let count: f64 = n
            .trim()
            .parse()
            .map_err(|_| bad(&format!("`{}` is not a number", n.trim())))?;
        if !(count.is_finite() && count > 0.0) {
            return Err(bad("the count must be greater than zero"));
        }
        let per = per.trim();
        let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
            per.to_string()
        } else {
            format!("1{per}")
        };
        let per_ms = parse_duration_ms(&per).map_err(|e| bad(&e))?;
        if per_ms == 0 {
            return Err(bad("the period must be greater than zero"));
        }
        if count / per_ms as f64 > 1_000.0 {
            return Err(bad("more than 1,000,000 per second"));
        }
        Ok(Rate { count, per_ms })
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HttpArgs {
    /// Checks `with`. The error names the field under `with` (`"rate"`, `"headers.Accept"`).
    pub fn parse(with: &Value) -> Result<HttpArgs, (String, String)> {
        let e = |field: &str, m: String| (field.to_string(), m);
        let Some(obj) = with.as_object() else {
            return Err(e(
                "",
                "http needs `with = { url = \"http://host:port/path\" }`".into(),
            ));
        };
        for k in obj.keys() {
            if !FIELDS.contains(&k.as_str()) {
                return Err(e(
                    k,
                    format!(
                        "unknown field `{k}`; the http handler takes {}",
                        FIELDS.join(", ")
                    ),
                ));
            }
        }
        let url = match obj.get("url") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(_) => return Err(e("url", "must be a string".into())),
            None => {
                return Err(e(
                    "url",
                    "http needs `with = { url = \"http://host:port/path\" }`".into(),
                ));
            }
        };
        let lower = url.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        match rest {
            // A url that starts with a template is checked once rendered, on the node.
            None if url.starts_with("{{") => {}
            None => {
                return Err(e(
                    "url",
                    format!("{url:?} must start with http:// or https://"),
                ));
            }
            Some(r) if r.is_empty() || r.starts_with('/') => {
                return Err(e("url", format!("{url:?} names no host")));
            }
            Some(_) => {}
        }
        // (Inside templates spaces are allowed: `{{ item }}`; the node checks the result.)
        if !url.contains("{{") && url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(e(
                "url",
                format!("{url:?} contains spaces or control characters"),
            ));
        }
        check_env_refs(&url).map_err(|m| e("url", m))?;
        check_dollar_before_template(&url).map_err(|m| e("url", m))?;
        let method = match obj.get("method") {
            None => "POST",
            Some(Value::String(m)) => {
                let up = m.trim().to_ascii_uppercase();
                *METHODS.iter().find(|x| **x == up).ok_or_else(|| {
                    e(
                        "method",
                        format!("unknown method {m:?}; use {}", METHODS.join(", ")),
                    )
                })?
            }
            Some(_) => return Err(e("method", "must be a string".into())),
        };
        let mut headers = Vec::new();
        match obj.get("headers") {
            None => {}
            Some(Value::Object(h)) => {
                for (k, v) in h {
                    let field = format!("headers.{k}");
                    if !is_token(k) {
                        return Err(e(&field, format!("{k:?} is not a valid header name")));
                    }
                    let lk = k.to_ascii_lowercase();
                    if lk == "content-length" || lk == "transfer-encoding" || lk == "connection" {
                        return Err(e(&field, format!("{k} is set by Troupe")));
                    }
                    let Value::String(v) = v else {
                        return Err(e(&field, "a header value must be a string".into()));
                    };
                    if v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
                        return Err(e(&field, "a header value must be one line".into()));
                    }
                    check_env_refs(v).map_err(|m| e(&field, m))?;
                    check_dollar_before_template(v).map_err(|m| e(&field, m))?;
                    headers.push((k.clone(), v.clone()));
                }
            }
            Some(_) => {
                return Err(e(
                    "headers",
                    "must be a table of strings: headers = { Authorization = \"Bearer ${env:API_KEY}\" }"
                        .into(),
                ));
            }
        }
        let timeout_ms = match obj.get("timeout") {
            None => DEFAULT_TIMEOUT_MS,
            Some(Value::String(t)) => {
                let ms = parse_duration_ms(t).map_err(|m| e("timeout", m))?;
                if ms == 0 {
                    return Err(e(
                        "timeout",
                        format!("duration {t:?} must be greater than zero"),
                    ));
                }
                ms
            }
            Some(_) => {
                return Err(e("timeout", "must be a duration such as \"30s\"".into()));
            }
        };
        let concurrency = match obj.get("concurrency") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=CONCURRENCY_MAX as u64).contains(&n) => Some(n as u32),
                _ => {
                    return Err(e(
                        "concurrency",
                        format!(
                            "concurrency = {v}: give a whole number from 1 to {CONCURRENCY_MAX} (most requests in flight at once on one node)"
                        ),
                    ));
                }
            },
        };
        let rate = match obj.get("rate") {
            None => None,
            Some(Value::String(r)) => Some(Rate::parse(r).map_err(|m| e("rate", m))?),
            Some(v) => {
                return Err(e(
                    "rate",
                    format!("rate = {v}: write a string such as \"100/s\""),
                ));
            }
        };
        let body = match obj.get("body") {
            None | Some(Value::Null) => None,
            Some(b) => Some(b.clone()),
        };
        Ok(HttpArgs {
            url,
            method,
            body,
            headers,
            timeout_ms,
            concurrency,
            rate,
        })
    }
}

/// A `$` right before a template (`${{ item }}`) could join with the value into `${env:...}`:
/// it is refused (write `$$` for a `$` there).
fn check_dollar_before_template(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    for (i, _) in s.match_indices("{{") {
        let dollars = b[..i].iter().rev().take_while(|&&c| c == b'$').count();
        if dollars % 2 == 1 {
            return Err(
                "a `$` right before `{{` is ambiguous; write `$$` for a literal `$`".into(),
            );
        }
    }
    Ok(())
}

/// Doubles every `$`: what a template brings into `url` or a header value stays text.
pub fn escape_dollars(s: &str) -> String {
    s.replace('$', "$$")
}

/// Why a `${env:NAME}` could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// The variable is not set on the node (or is not UTF-8).
    Missing(String),
    /// The text is not a well-formed reference.
    Malformed(String),
}

/// Replaces each `${env:NAME}` with `lookup(NAME)`; `$$` is one `$`; any other `$` stays.
/// Returns the text and the values it put in (to scrub them from messages).
pub fn expand_env(
    s: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<(String, Vec<String>), EnvError> {
    let mut out = String::with_capacity(s.len());
    let mut used = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(a) = after.strip_prefix("{env:") {
            let end = a.find('}').ok_or_else(|| {
                EnvError::Malformed("unclosed `${env:`; write ${env:NAME}".into())
            })?;
            let name = &a[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(EnvError::Malformed(format!(
                    "`${{env:{name}}}`: a variable name is letters, digits and _, not starting with a digit"
                )));
            }
            let v = lookup(name).ok_or_else(|| EnvError::Missing(name.to_string()))?;
            out.push_str(&v);
            used.push(v);
            rest = &a[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok((out, used))
}

/// The names of the variables a text refers to (`${env:NAME}`), checking the syntax.
pub fn check_env_refs(s: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    expand_env(s, &mut |n| {
        names.push(n.to_string());
        Some(String::new())
    })
    .map_err(|e| match e {
        EnvError::Malformed(m) | EnvError::Missing(m) => m,
    })?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_references_expand_and_dollars_escape() {
        let mut env = |n: &str| (n == "KEY").then(|| "s3cret".to_string());
        let (s, used) = expand_env("Bearer ${env:KEY}; $$5 $x", &mut env).unwrap();
        assert_eq!(s, "Bearer s3cret; $5 $x");
        assert_eq!(used, vec!["s3cret".to_string()]);
        assert_eq!(
            expand_env("${env:NOPE}", &mut env),
            Err(EnvError::Missing("NOPE".into()))
        );
        assert!(matches!(
            expand_env("${env:KEY", &mut env),
            Err(EnvError::Malformed(_))
        ));
        // Data brought in by a template cannot name a variable, even across the boundary.
        let data = escape_dollars("${env:KEY}");
        assert_eq!(expand_env(&data, &mut env).unwrap().0, "${env:KEY}");
        let joined = format!("{}{}", escape_dollars("$"), "{env:KEY}");
        assert_eq!(expand_env(&joined, &mut env).unwrap().0, "${env:KEY}");
        assert_eq!(
            check_env_refs("a ${env:A} ${env:B_2}").unwrap(),
            vec!["A", "B_2"]
        );
        assert!(check_env_refs("${env:1A}").is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("100/s").unwrap(),
            Rate {
                count: 100.0,
                per_ms: 1000
            }
        );
        assert_eq!(Rate::parse("5/10s").unwrap().per_ms, 10_000);
        assert_eq!(Rate::parse("0.5/m").unwrap().count, 0.5);
        for bad in ["100", "x/s", "0/s", "10/parsec", "-1/s", "10/0s", "1e9/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn with_is_checked_field_by_field() {
        let ok = HttpArgs::parse(&json!({"url": "http://127.0.0.1:8000/v1/completions",
            "headers": {"Authorization": "Bearer ${env:KEY}"}, "concurrency": 3, "rate": "10/s",
            "timeout": "5s", "method": "put"}))
        .unwrap();
        assert_eq!(ok.method, "PUT");
        assert_eq!(ok.concurrency, Some(3));
        assert_eq!(ok.timeout_ms, 5000);
        assert_eq!(ok.body, None);
        let field = |w: Value| HttpArgs::parse(&w).unwrap_err().0;
        assert_eq!(field(json!({})), "url");
        assert_eq!(field(json!({"url": "ftp://x"})), "url");
        assert_eq!(field(json!({"url": "http://"})), "url");
        assert_eq!(
            field(json!({"url": "http://x", "method": "FETCH"})),
            "method"
        );
        assert_eq!(
            field(json!({"url": "http://x", "concurrency": 0})),
            "concurrency"
        );
        assert_eq!(
            field(json!({"url": "http://x", "concurrency": 10001})),
            "concurrency"
        );
        assert_eq!(field(json!({"url": "http://x", "rate": "fast"})), "rate");
        assert_eq!(
            field(json!({"url": "http://x", "timeout": "soon"})),
            "timeout"
        );
        assert_eq!(
            field(json!({"url": "http://x", "headers": {"a b": "1"}})),
            "headers.a b"
        );
        assert_eq!(
            field(json!({"url": "http://x", "headers": {"X": "${env:}"}})),
            "headers.X"
        );
        assert_eq!(field(json!({"url": "http://x", "retry": 1})), "retry");
        assert!(HttpArgs::parse(&json!({"url": "https://{{ params.host }}/x"})).is_ok());
        assert!(HttpArgs::parse(&json!({"url": "{{ params.endpoint }}"})).is_ok());
        assert_eq!(field(json!({"url": "http://x/${{ item }}"})), "url");
        assert!(HttpArgs::parse(&json!({"url": "http://x/$${{ item }}"})).is_ok());
    }
}
