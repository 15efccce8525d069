//! The worker wire format: JSON lines over the worker's stdin and stdout
//! (`docs/workflow-spec.md`, "Worker steps"). Pure: builds request lines, reads answer lines.
//!
//! - the worker prints `{"ready": true}` once it has loaded;
//! - Troupe writes `{"tasks": [{"id": "<id>", "attempt": N, "item": <item>}, ...]}`, with the
//!   extra keys `"input"` (`from` steps) and `"traceparent"` (traces on) that workers may ignore;
//! - the worker answers each request with one line
//!   `{"results": [{"id": "<id>", "output": <json>} | {"id": "<id>", "error": "message"}, ...]}`.

use crate::exec::output_from_text;
use serde_json::Value;
use troupe_scheduler::{Json, Outcome};

/// One task of a request.
pub struct TaskLine<'a> {
    pub id: &'a str,
    pub attempt: u32,
    pub item: Option<&'a Json>,
    /// `from` steps: the upstream item's output.
    pub input: Option<&'a Json>,
    /// Traces on: the attempt span's W3C `traceparent` (`00-<trace>-<span>-01`).
    pub traceparent: Option<&'a str>,
}

/// The request line for a batch (with its newline).
pub fn request(tasks: &[TaskLine<'_>]) -> String {
    let mut out = String::with_capacity(64 * tasks.len() + 16);
    out.push_str("{\"tasks\":[");
    for (i, t) in tasks.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":");
        out.push_str(&Value::String(t.id.to_string()).to_string());
        out.push_str(",\"attempt\":");
        out.push_str(&t.attempt.to_string());
        out.push_str(",\"item\":");
        // Json holds validated JSON text: it goes on the line as it is.
        out.push_str(t.item.map_or("null", |j| j.0.as_str()));
        if let Some(input) = t.input {
            out.push_str(",\"input\":");
            out.push_str(&input.0);
        }
        if let Some(tp) = t.traceparent {
            out.push_str(",\"traceparent\":");
            out.push_str(&Value::String(tp.to_string()).to_string());
        }
        out.push('}');
    }
    out.push_str("]}\n");
    out
}

/// What a worker's stdout line says.
#[derive(Debug, PartialEq)]
pub enum Line {
    Ready,
    /// (task id, its outcome), in the order the worker gave them.
    Results(Vec<(String, Outcome)>),
}

/// Reads one stdout line; an error names what is wrong with it (the worker broke the protocol).
pub fn parse(line: &[u8]) -> Result<Line, String> {
    let shown = || {
        let text = String::from_utf8_lossy(line);
        let cut: String = text.chars().take(120).collect();
        if cut.len() < text.len() {
            format!("{cut}...")
        } else {
            cut
        }
    };
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| format!("printed a line that is not JSON ({e}): {:?}", shown()))?;
    if v.get("ready") == Some(&Value::Bool(true)) {
        return Ok(Line::Ready);
    }
    let Some(results) = v.get("results").and_then(Value::as_array) else {
        return Err(format!(
            "printed a line that is neither {{\"ready\": true}} nor {{\"results\": [...]}}: {:?}",
            shown()
        ));
    };
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let Some(id) = r.get("id").and_then(Value::as_str) else {
            return Err(format!("a result has no string \"id\": {:?}", shown()));
        };
        let outcome = match (r.get("output"), r.get("error")) {
            (_, Some(e)) => Outcome::Failed {
                error: format!(
                    "worker: {}",
                    e.as_str().map_or_else(|| e.to_string(), str::to_string)
                ),
            },
            (Some(o), None) => output_from_text(o.to_string().as_bytes()),
            (None, None) => Outcome::Succeeded { output: None },
        };
        out.push((id.to_string(), outcome));
    }
    Ok(Line::Results(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line() {
        let item = Json::from_value(&serde_json::json!({"doc": "a\nb"}));
        let line = request(&[
            TaskLine {
                id: "wf-1/score/0@1",
                attempt: 1,
                item: Some(&item),
                input: None,
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            },
            TaskLine {
                id: "wf-1/score/1@2",
                attempt: 2,
                item: None,
                input: None,
                traceparent: None,
            },
        ]);
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["tasks"][0]["id"], "wf-1/score/0@1");
        assert_eq!(v["tasks"][0]["item"]["doc"], "a\nb");
        assert_eq!(v["tasks"][1]["attempt"], 2);
        assert_eq!(v["tasks"][1]["item"], Value::Null);
        // The extra key only when traces are on.
        assert_eq!(
            v["tasks"][0]["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert!(v["tasks"][1].get("traceparent").is_none(), "{line}");
    }

    #[test]
    fn answers_are_read_and_bad_lines_are_named() {
        assert_eq!(parse(br#"{"ready": true}"#), Ok(Line::Ready));
        let Ok(Line::Results(r)) = parse(
            br#"{"results": [{"id": "b", "error": "bad doc"}, {"id": "a", "output": {"p": 0.5}}]}"#,
        ) else {
            panic!("results");
        };
        assert_eq!(r[0].0, "b");
        assert!(matches!(&r[0].1, Outcome::Failed { error } if error == "worker: bad doc"));
        assert!(matches!(&r[1].1, Outcome::Succeeded { output: Some(o) } if o.0 == r#"{"p":0.5}"#));
        let e = parse(b"loading model...").unwrap_err();
        assert!(e.contains("not JSON") && e.contains("loading model"), "{e}");
        let e = parse(br#"{"progress": 3}"#).unwrap_err();
        assert!(e.contains("neither"), "{e}");
        let e = parse(br#"{"results": [{"output": 1}]}"#).unwrap_err();
        assert!(e.contains("no string \"id\""), "{e}");
    }

    #[test]
    fn an_oversized_output_fails_its_task_only() {
        let big = "x".repeat(70_000);
        let line = format!(
            r#"{{"results": [{{"id": "a", "output": "{big}"}}, {{"id": "b", "output": 1}}]}}"#
        );
        let Ok(Line::Results(r)) = parse(line.as_bytes()) else {
            panic!("results");
        };
        assert!(matches!(&r[0].1, Outcome::Failed { error } if error.contains("64 KiB")));
        assert!(matches!(&r[1].1, Outcome::Succeeded { .. }));
    }
}

#[cfg(test)]
#[path = "protocol_fuzz.rs"]
mod fuzz;
