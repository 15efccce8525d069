//! The table `troupe chaos verify` prints: one row per invariant with its figures, then the
//! failovers and re-placements seen, then the violations (if any).

use serde_json::Value;
use std::fmt::Write;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn secs(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// Rows for the rules: which violations belong to each.
const RULES: [(&str, &str); 5] = [
    ("G1", "acknowledged workflows present"),
    ("G2", "one workflow per idempotency key"),
    ("G3", "one accepted result per task attempt"),
    ("G4", "no result accepted against fencing"),
    ("G6", "no over-commit at any index"),
];

pub fn render(r: &Value, with_history: bool) -> String {
    let mut out = String::new();
    let violations = r["violations"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "replayed {} entries ({} commands), index {}..{}, on {} from {}",
        n(&r["entries"]),
        n(&r["commands"]),
        n(&r["from_index"]),
        n(&r["to_index"]),
        r["node"].as_str().unwrap_or("?"),
        r["replayed_from"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "{:<4} {:<38} {:<7} figures", "", "invariant", "result");
    for (rule, what) in RULES {
        let broken = violations.iter().filter(|v| v["rule"] == rule).count();
        let figures = match rule {
            "G1" if with_history => {
                format!("{} acknowledged submits checked", n(&r["acked_submits"]))
            }
            "G1" => "no --history: nothing acknowledged to check".into(),
            "G2" => format!("{} workflows", n(&r["workflows"])),
            "G3" => format!(
                "{} results accepted, {} refused (stale or fenced)",
                n(&r["reports_accepted"]),
                n(&r["reports_refused"])
            ),
            "G4" => "every accepted result checked against its attempt and epoch".into(),
            _ => format!("{} node checks", n(&r["capacity_checks"])),
        };
        let result = if broken > 0 {
            format!("FAIL({broken})")
        } else if rule == "G1" && !with_history {
            "-".into()
        } else {
            "ok".into()
        };
        let _ = writeln!(out, "{rule:<4} {what:<38} {result:<7} {figures}");
    }
    let _ = writeln!(
        out,
        "     {:<38} {:<7} {} of {}",
        "workflows finished",
        "",
        n(&r["workflows_terminal"]),
        n(&r["workflows"])
    );
    let fails = r["failovers"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "failovers: {}", fails.len());
    for f in &fails {
        let _ = writeln!(
            out,
            "  term {} -> {} at index {}: {} between the last entry of the old leader and the first of the new",
            n(&f["from_term"]),
            n(&f["to_term"]),
            n(&f["index"]),
            secs(n(&f["gap_ms"]))
        );
    }
    let reps = r["replacements"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "nodes lost: {}", reps.len());
    for p in &reps {
        let times: Vec<u64> = p["replaced_ms"]
            .as_array()
            .map(|a| a.iter().map(n).collect())
            .unwrap_or_default();
        let figures = match (times.first(), times.last()) {
            (Some(_), Some(max)) => format!(
                "{} re-placed, median {}, max {}",
                times.len(),
                secs(times[times.len() / 2]),
                secs(*max)
            ),
            _ => "none re-placed".into(),
        };
        let _ = writeln!(
            out,
            "  {} at index {}: held {} attempts; {figures}",
            p["node"].as_str().unwrap_or("?"),
            n(&p["index"]),
            n(&p["attempts"])
        );
    }
    if violations.is_empty() {
        let _ = writeln!(out, "all invariants hold");
    } else {
        let _ = writeln!(out, "violations: {}", n(&r["violation_count"]));
        for v in &violations {
            let _ = writeln!(
                out,
                "  {} at index {}: {}",
                v["rule"].as_str().unwrap_or("?"),
                n(&v["index"]),
                v["detail"].as_str().unwrap_or("")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_renders_each_rule_and_the_figures() {
        let r = json!({
            "entries": 10, "commands": 20, "from_index": 2, "to_index": 11, "node": "n1",
            "replayed_from": "the empty state", "reports_accepted": 5, "reports_refused": 1,
            "capacity_checks": 30, "workflows": 3, "workflows_terminal": 3, "acked_submits": 3,
            "failovers": [{"from_term": 2, "to_term": 3, "index": 7, "gap_ms": 1234}],
            "replacements": [{"node": "w1", "index": 9, "attempts": 2, "replaced_ms": [900, 1500]}],
            "violations": [{"rule": "G3", "index": 8, "detail": "a second result"}],
            "violation_count": 1,
        });
        let t = render(&r, true);
        assert!(
            t.contains("G1   acknowledged workflows present         ok      3 acknowledged"),
            "{t}"
        );
        assert!(
            t.contains("G3   one accepted result per task attempt   FAIL(1)"),
            "{t}"
        );
        assert!(t.contains("term 2 -> 3 at index 7: 1.23s"), "{t}");
        assert!(
            t.contains("w1 at index 9: held 2 attempts; 2 re-placed, median 1.50s, max 1.50s"),
            "{t}"
        );
        assert!(t.contains("G3 at index 8: a second result"), "{t}");
    }
}
