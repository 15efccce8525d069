//! Scenario tests of `http` steps in the pure core: a retry hint (`Retry-After`, or a 4xx that
//! must not be retried) delays or stops the retry; urls and headers render from templates.

mod common;
use common::*;
use troupe_scheduler::state::{TaskState, WfStatus};
use troupe_scheduler::*;

const HTTP_STEP: &str = r#"
name = "h"
[[step]]
id = "call"
handler = "http"
with = { url = "http://127.0.0.1:9/v1" }
retries = { attempts = 3, initial = "10ms", max = "10ms", jitter = false }
"#;

#[test]
fn a_retry_hint_delays_the_retry_or_stops_it() {
    // Retry-After longer than the backoff: the retry waits for it.
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(HTTP_STEP);
    sim.place();
    sim.finish_all(&|_| Outcome::FailedRetry {
        error: "answered 429".into(),
        retry: RetryHint::After { ms: 1_000 },
    });
    let task = &sim.wf(id).steps[0].tasks[&0];
    assert_eq!(
        task.state,
        TaskState::Waiting {
            due_ms: sim.now + 1_000
        }
    );
    // Shorter than the backoff: the backoff wins.
    sim.now += 1_000;
    sim.place();
    sim.finish_all(&|_| Outcome::FailedRetry {
        error: "answered 503".into(),
        retry: RetryHint::After { ms: 1 },
    });
    let task = &sim.wf(id).steps[0].tasks[&0];
    assert_eq!(
        task.state,
        TaskState::Waiting {
            due_ms: sim.now + 10
        }
    );
    // Never: the task fails now, with attempts left, counting the failures made.
    sim.now += 10;
    sim.place();
    sim.finish_all(&|_| Outcome::FailedRetry {
        error: "answered 404 Not Found; not retried".into(),
        retry: RetryHint::Never,
    });
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Failed, "{:?}", wf.history);
    assert_eq!(sim.ran.len(), 3);
    let reason = wf.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("failed after 3 attempt(s): answered 404"),
        "{reason}"
    );

    // Never on the first attempt of three: no retry, and the count says 1.
    let mut sim = Sim::new(2);
    let id = sim.submit_toml(HTTP_STEP);
    sim.place();
    sim.finish_all(&|_| Outcome::FailedRetry {
        error: "answered 400".into(),
        retry: RetryHint::Never,
    });
    let wf = sim.wf(id);
    assert_eq!(wf.status, WfStatus::Failed);
    assert_eq!(sim.ran.len(), 1);
    assert!(
        wf.reason
            .as_deref()
            .unwrap_or("")
            .contains("failed after 1 attempt(s)"),
        "{:?}",
        wf.reason
    );
}

#[test]
fn http_urls_and_headers_render_with_data_dollars_doubled() {
    let mut sim = Sim::new(2);
    sim.submit_toml(
        r#"
name = "h"
[[step]]
id = "call"
handler = "http"
map = { items = ["${env:SECRET}"] }
with = { url = "http://h/{{ item }}", headers = { A = "${env:KEY} {{ item }}" }, body = { q = "{{ item }}" } }
"#,
    );
    sim.place();
    let Launch::Builtin { with, .. } = &sim.running[0].launch else {
        panic!("not a builtin")
    };
    let w = with.value();
    assert_eq!(w["url"], "http://h/$${env:SECRET}");
    assert_eq!(w["headers"]["A"], "${env:KEY} $${env:SECRET}");
    // The body is not expanded on the node, so it is rendered as it is.
    assert_eq!(w["body"]["q"], "${env:SECRET}");
}
