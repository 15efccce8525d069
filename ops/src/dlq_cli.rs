//! `troupe dlq ...` and `troupe item`: the dead-letter queue in bulk, and one item's path.

use crate::DlqCmd;
use crate::client::Client;
use crate::commands::{print_json, s};
use serde_json::{Value, json};

/// Which dead letters: the flags combine with AND.
#[derive(clap::Args, Clone, Default)]
pub struct FilterArgs {
    /// Only this workflow's (wf-12).
    #[arg(long)]
    workflow: Option<String>,
    /// Only this step's.
    #[arg(long)]
    step: Option<String>,
    /// Only those whose error contains this text.
    #[arg(long)]
    grep: Option<String>,
    /// Only those at most this old (30m, 2h, 1d).
    #[arg(long)]
    since: Option<String>,
}

impl FilterArgs {
    /// Flags given after the subcommand win over those before it.
    fn or(self, outer: &FilterArgs) -> FilterArgs {
        FilterArgs {
            workflow: self.workflow.or(outer.workflow.clone()),
            step: self.step.or(outer.step.clone()),
            grep: self.grep.or(outer.grep.clone()),
            since: self.since.or(outer.since.clone()),
        }
    }

    fn body(&self, ids: &[u64], all: bool) -> Value {
        json!({
            "ids": ids,
            "workflow": self.workflow,
            "step": self.step,
            "grep": self.grep,
            "since": self.since,
            "all": all,
        })
    }

    fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("workflow", &self.workflow),
            ("step", &self.step),
            ("grep", &self.grep),
            ("since", &self.since),
        ] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        q.join("&")
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn run(
    client: &Client,
    as_json: bool,
    cmd: Option<DlqCmd>,
    outer: FilterArgs,
) -> anyhow::Result<()> {
    match cmd {
        None => list(client, as_json, &outer, 100, 0),
        Some(DlqCmd::List {
            filter,
            limit,
            offset,
        }) => list(client, as_json, &filter.or(&outer), limit, offset),
        Some(DlqCmd::Redrive { ids, filter, all }) => {
            let body = filter.or(&outer).body(&ids, all);
            let v = client.post("/v1/dlq/redrive", &body)?;
            report(as_json, &v, "redriven")
        }
        Some(DlqCmd::Discard {
            ids,
            filter,
            all,
            reason,
        }) => {
            let mut body = filter.or(&outer).body(&ids, all);
            body["reason"] = json!(reason);
            let v = client.post("/v1/dlq/discard", &body)?;
            report(as_json, &v, "discarded")
        }
    }
}

fn report(as_json: bool, v: &Value, what: &str) -> anyhow::Result<()> {
    if as_json {
        print_json(v);
        return Ok(());
    }
    println!("{} dead letter(s) {what}", v[what]);
    if v["refused"].as_u64().unwrap_or(0) > 0 {
        println!("{} refused:", v["refused"]);
        for n in v["notes"].as_array().into_iter().flatten() {
            println!("  {}", s(n));
        }
    }
    Ok(())
}

fn list(
    client: &Client,
    as_json: bool,
    f: &FilterArgs,
    limit: usize,
    offset: usize,
) -> anyhow::Result<()> {
    let mut q = f.query();
    if !q.is_empty() {
        q.push('&');
    }
    q.push_str(&format!("limit={limit}&offset={offset}"));
    let v = client.get(&format!("/v1/dlq?{q}"))?;
    if as_json {
        print_json(&v);
        return Ok(());
    }
    let list = v["dead_letters"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no dead letters match");
        return Ok(());
    }
    for d in &list {
        let value = match &d["item_value"] {
            Value::Null => String::new(),
            other => format!(" ({})", s(other)),
        };
        let node = d["node"]
            .as_str()
            .map(|n| format!(" on {n}"))
            .unwrap_or_default();
        println!(
            "#{:<5} {} step {} item {}{value} after {} attempt(s){node}: {}\n       log: {}.err",
            d["id"],
            s(&d["workflow"]),
            s(&d["step"]),
            d["item"],
            d["attempts"],
            s(&d["last_error"]),
            s(&d["log"])
        );
    }
    let total = v["total"].as_u64().unwrap_or(0);
    match v["next_offset"].as_u64() {
        Some(next) => println!(
            "{} of {total} shown; next page: --offset {next}",
            list.len()
        ),
        None => println!("{total} dead letter(s)"),
    }
    Ok(())
}

pub fn item(client: &Client, as_json: bool, id: &str, index: u32) -> anyhow::Result<()> {
    let v = client.get(&format!("/v1/workflows/{id}/items/{index}"))?;
    if as_json {
        print_json(&v);
        return Ok(());
    }
    let value = match &v["value"] {
        Value::Null => String::new(),
        other => format!(" ({})", s(other)),
    };
    println!("{} item {index}{value}", s(&v["workflow"]));
    for st in v["steps"].as_array().into_iter().flatten() {
        let mut line = format!("  {:<16} {:<16}", s(&st["step"]), s(&st["status"]));
        if let Some(d) = st["dead_letter"].as_u64() {
            line.push_str(&format!(" dead letter #{d}"));
        }
        if st["attempt"].as_u64().unwrap_or(0) > 0 {
            line.push_str(&format!(" attempt {}", st["attempt"]));
        }
        if let Some(n) = st["node"].as_str() {
            line.push_str(&format!(" on {n}"));
        }
        if let Some(ms) = st["duration_ms"].as_u64() {
            line.push_str(&format!(" {}", troupe_scheduler::units::format_ms(ms)));
        }
        println!("{line}");
        if let Some(e) = st["error"].as_str() {
            println!("  {:<16} error: {e}", "");
        }
        if let Some(r) = st["discarded"].as_str() {
            println!("  {:<16} discarded: {r}", "");
        }
        if let Some(l) = st["log"].as_str() {
            println!("  {:<16} log: {l}.out / .err", "");
        }
    }
    Ok(())
}
