//! The `http` handler against a real local server (hyper, in the test).

use super::run_with;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use troupe_scheduler::state::TaskRef;
use troupe_scheduler::{Json, Launch, Outcome, RetryHint, RunSpec};

/// What the server saw of each request: method, path, headers, body.
type Seen = Arc<Mutex<Vec<(String, String, Vec<(String, String)>, String)>>>;

/// What the test server answers for a path: status, headers, body.
type Answer = (u16, Vec<(&'static str, &'static str)>, String);

/// A server answering every request with `answer(path)`.
async fn server(answer: fn(&str) -> Answer) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = axum::body::to_bytes(axum::body::Body::new(body), 1 << 20)
                            .await
                            .unwrap_or_default();
                        let path = parts.uri.path().to_string();
                        seen.lock().unwrap().push((
                            parts.method.to_string(),
                            path.clone(),
                            parts
                                .headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                                .collect(),
                            String::from_utf8_lossy(&body).into(),
                        ));
                        let (status, headers, text) = answer(&path);
                        let mut r = Response::builder().status(status);
                        for (k, v) in headers {
                            r = r.header(k, v);
                        }
                        Ok::<_, std::convert::Infallible>(
                            r.body(axum::body::Body::from(text)).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn answer(path: &str) -> Answer {
    match path {
        "/ok" => (
            200,
            vec![("content-type", "application/json")],
            r#"{"text": "hi", "n": 2}"#.into(),
        ),
        "/empty" => (204, vec![], String::new()),
        "/busy" => (
            429,
            vec![("retry-after", "2")],
            r#"{"error": "slow down"}"#.into(),
        ),
        "/down" => (503, vec![], "overloaded".into()),
        "/missing" => (404, vec![], r#"{"error": "no such model"}"#.into()),
        "/echo-auth" => (401, vec![], "bad token Bearer s3cret-value".into()),
        "/html" => (
            200,
            vec![("content-type", "text/html")],
            "<html>hello</html>".into(),
        ),
        "/huge" => (200, vec![], format!("[{}1]", "1,".repeat(40_000))),
        _ => (500, vec![], String::new()),
    }
}

fn spec(item: Option<Value>, with: Value) -> (RunSpec, Json) {
    let with = Json::from_value(&with);
    let r = RunSpec {
        task: TaskRef {
            wf: 1,
            step: 0,
            item: 0,
        },
        attempt: 1,
        epoch: 1,
        node: "n".into(),
        workflow: "wf-1".into(),
        step_id: "call".into(),
        item: item.map(|v| Json::from_value(&v)),
        input: None,
        iteration: 1,
        launch: Launch::Builtin {
            handler: troupe_scheduler::spec::Builtin::Http,
            with: with.clone(),
        },
        timeout_ms: None,
        gpus: vec![],
        log_stem: "x".into(),
    };
    (r, with)
}

async fn call(item: Option<Value>, with: Value) -> Outcome {
    let (s, w) = spec(item, with);
    let (_tx, kill) = tokio::sync::oneshot::channel();
    let mut env = |n: &str| (n == "TOKEN").then(|| "s3cret-value".to_string());
    run_with(&s, &w, kill, &mut env, &troupe_clock::SystemClock).await
}

fn error(o: &Outcome) -> &str {
    match o {
        Outcome::Failed { error }
        | Outcome::FailedRetry { error, .. }
        | Outcome::WorkerBroken { error } => error,
        Outcome::Succeeded { .. } => panic!("succeeded: {o:?}"),
    }
}

#[tokio::test]
async fn answers_become_outputs_or_failures_that_say_why() {
    let (base, seen) = server(answer).await;
    let out = call(
        Some(json!({"doc": 7})),
        json!({"url": format!("{base}/ok"), "headers": {"Authorization": "Bearer ${env:TOKEN}"}}),
    )
    .await;
    assert_eq!(
        out,
        Outcome::Succeeded {
            output: Some(Json::from_value(&json!({"n": 2, "text": "hi"})))
        }
    );
    {
        let seen = seen.lock().unwrap();
        let (method, _, headers, body) = &seen[0];
        assert_eq!(method, "POST");
        assert_eq!(body, r#"{"doc":7}"#, "the default body is the item");
        let h = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(h("authorization").as_deref(), Some("Bearer s3cret-value"));
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
    }
    // A body template (already rendered) is sent as written.
    call(
        None,
        json!({"url": format!("{base}/ok"), "body": {"prompt": "x"}, "method": "put"}),
    )
    .await;
    assert_eq!(seen.lock().unwrap()[1].3, r#"{"prompt":"x"}"#);
    assert_eq!(seen.lock().unwrap()[1].0, "PUT");

    let out = call(None, json!({"url": format!("{base}/empty")})).await;
    assert_eq!(out, Outcome::Succeeded { output: None });

    let out = call(None, json!({"url": format!("{base}/busy")})).await;
    assert!(
        matches!(
            out,
            Outcome::FailedRetry {
                retry: RetryHint::After { ms: 2000 },
                ..
            }
        ),
        "{out:?}"
    );
    assert!(
        error(&out).contains(
            "answered 429 Too Many Requests; retryable: the retry waits at least Retry-After (2.0s)"
        ),
        "{out:?}"
    );

    let out = call(None, json!({"url": format!("{base}/down")})).await;
    assert!(matches!(out, Outcome::Failed { .. }), "{out:?}");
    assert!(
        error(&out).contains("503 Service Unavailable; retryable: overloaded"),
        "{out:?}"
    );

    let out = call(None, json!({"url": format!("{base}/missing")})).await;
    assert!(
        matches!(
            out,
            Outcome::FailedRetry {
                retry: RetryHint::Never,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(
        error(&out).contains("404 Not Found; not retried"),
        "{out:?}"
    );
    assert!(error(&out).contains("no such model"), "{out:?}");

    // A server that echoes the secret: the error masks it.
    let out = call(
        None,
        json!({"url": format!("{base}/echo-auth"), "headers": {"X-Key": "${env:TOKEN}"}}),
    )
    .await;
    assert!(!error(&out).contains("s3cret-value"), "{out:?}");
    assert!(error(&out).contains("bad token Bearer ***"), "{out:?}");

    let out = call(None, json!({"url": format!("{base}/html")})).await;
    assert!(
        error(&out).contains("the answer is not JSON (text/html, 18 bytes)"),
        "{out:?}"
    );

    let out = call(None, json!({"url": format!("{base}/huge")})).await;
    assert!(error(&out).contains("the 64 KiB output limit"), "{out:?}");

    // A missing variable fails naming it, before anything is sent.
    let n = seen.lock().unwrap().len();
    let out = call(
        None,
        json!({"url": format!("{base}/ok"), "headers": {"Authorization": "${env:NOT_SET_HERE}"}}),
    )
    .await;
    assert!(
        error(&out).contains("with.headers.Authorization names ${env:NOT_SET_HERE}, but the variable NOT_SET_HERE is not set on this node"),
        "{out:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), n);

    // Nothing listening: a retryable failure naming the url as written.
    let out = call(None, json!({"url": "http://127.0.0.1:9/x"})).await;
    assert!(matches!(out, Outcome::Failed { .. }), "{out:?}");
    assert!(
        error(&out).starts_with("http: POST http://127.0.0.1:9/x: "),
        "{out:?}"
    );
}

#[tokio::test]
async fn the_request_timeout_and_the_attempt_timeout_stop_a_slow_server() {
    // Accepts and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let out = call(
        None,
        json!({"url": format!("http://{addr}/"), "timeout": "200ms"}),
    )
    .await;
    assert!(
        error(&out).contains("gave no complete answer within 200ms (with.timeout)"),
        "{out:?}"
    );
    let (mut s, w) = spec(None, json!({"url": format!("http://{addr}/")}));
    s.timeout_ms = Some(150);
    let (_tx, kill) = tokio::sync::oneshot::channel();
    let out = run_with(&s, &w, kill, &mut |_| None, &troupe_clock::SystemClock).await;
    assert_eq!(error(&out), "timed out after 150ms");
}
