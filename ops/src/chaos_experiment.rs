//! An experiment file (`troupe chaos run FILE`): faults on a schedule and an optional workload.
//!
//! ```toml
//! name = "leader-kill"
//! [workload]
//! spec = "sleep.toml"   # relative to this file
//! count = 30            # workflows submitted, each with its own idempotency key
//! rate = "5/s"          # submits per second
//! settle = "90s"        # after the last fault heals: wait this long at most for them to end
//! [[fault]]
//! at = "2s"             # after the start
//! kind = "kill"         # kill, pause, partition, slow-disk, skew-clock
//! node = "leader"       # leader, follower, worker, or a node id
//! for = "5s"
//! # partition only: mode = "blackhole" (default: frames dropped) or "reset" (sessions
//! # dropped); api = true also leaves the node's HTTP API unanswered.
//! ```
//!
//! Parsing is pure: errors name the file, the line and the field (toml's spans, or ours).

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Longest fault (the API's limit too).
pub const FOR_MAX_MS: u64 = 10 * 60 * 1000;

/// A duration as the file writes it (`"5s"`, `"250ms"`); `-` allowed only where said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub i64);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_signed_ms(&text)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// `"5s"`, `"-2m"`: milliseconds, signed.
pub fn parse_signed_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let (neg, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let ms = troupe_scheduler::units::parse_duration_ms(rest)?;
    let ms = i64::try_from(ms).map_err(|_| format!("{text:?} is too long"))?;
    Ok(if neg { -ms } else { ms })
}

/// The node's fault kinds (`POST /v1/chaos/faults`); an experiment may not use `fsync-error`,
/// which takes a node down until it is restarted by hand.
pub use troupe_node::chaos::fault::{Kind, PartitionMode};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub at: Dur,
    pub kind: Kind,
    /// `leader`, `follower`, `worker`, or a node id.
    pub node: String,
    /// partition only: node selectors it is cut from (default: every other node).
    #[serde(default)]
    pub from: Option<Vec<String>>,
    /// partition only: `blackhole` (default) or `reset`.
    #[serde(default)]
    pub mode: Option<PartitionMode>,
    /// partition only: cut the node's HTTP API too.
    #[serde(default)]
    pub api: Option<bool>,
    #[serde(rename = "for")]
    pub for_: Dur,
    /// slow-disk only.
    #[serde(default)]
    pub delay: Option<Dur>,
    /// skew-clock only (may be negative).
    #[serde(default)]
    pub skew: Option<Dur>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub spec: PathBuf,
    pub count: u32,
    /// `"N/s"` (submits per second) or `"N/m"`.
    #[serde(default = "default_rate")]
    pub rate: String,
    #[serde(default = "default_settle")]
    pub settle: Dur,
}

fn default_rate() -> String {
    "5/s".into()
}

fn default_settle() -> Dur {
    Dur(120_000)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub workload: Option<Workload>,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
}

impl Workload {
    /// Milliseconds between two submits.
    pub fn interval_ms(&self) -> Result<u64, String> {
        let (n, per) = self.rate.split_once('/').ok_or_else(|| {
            format!(
                "workload.rate {:?}: write e.g. \"5/s\" or \"30/m\"",
                self.rate
            )
        })?;
        let n: u64 =
            n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("workload.rate {:?}: the count must be 1 or more", self.rate)
            })?;
        let per_ms = match per.trim() {
            "s" => 1_000,
            "m" => 60_000,
            other => {
                return Err(format!(
                    "workload.rate {:?}: per {other:?}; use s or m",
                    self.rate
                ));
            }
        };
        Ok((per_ms / n).max(1))
    }
}

/// Parses an experiment; `file` names it in errors, and relative workload paths are resolved
/// against its folder.
pub fn parse(text: &str, file: &Path) -> Result<Experiment, String> {
    let mut e: Experiment =
        toml::from_str(text).map_err(|err| format!("{}: {err}", file.display()))?;
    let at = |i: usize, why: String| {
        format!(
            "{}: fault {} (the {} [[fault]]): {why}",
            file.display(),
            i + 1,
            ordinal(i + 1)
        )
    };
    if e.faults.is_empty() && e.workload.is_none() {
        return Err(format!(
            "{}: no [[fault]] and no [workload]: nothing to run",
            file.display()
        ));
    }
    for (i, f) in e.faults.iter().enumerate() {
        if f.at.0 < 0 {
            return Err(at(i, "at: must not be negative".into()));
        }
        if !(1..=FOR_MAX_MS as i64).contains(&f.for_.0) {
            return Err(at(
                i,
                format!("for: faults last 1 ms to {} min", FOR_MAX_MS / 60_000),
            ));
        }
        if f.node.trim().is_empty() {
            return Err(at(
                i,
                "node: give leader, follower, worker or a node id".into(),
            ));
        }
        if f.kind == Kind::FsyncError {
            return Err(at(
                i,
                "kind: fsync-error takes the node down until it is restarted by hand, so experiments cannot schedule it; use `troupe chaos` against one node".into(),
            ));
        }
        let only = |field: &str, set: bool, kind: Kind| {
            if set && f.kind != kind {
                return Err(at(i, format!("{field} is for {} faults only", kind.name())));
            }
            Ok(())
        };
        only("from", f.from.is_some(), Kind::Partition)?;
        only("mode", f.mode.is_some(), Kind::Partition)?;
        only("api", f.api.is_some(), Kind::Partition)?;
        only("delay", f.delay.is_some(), Kind::SlowDisk)?;
        only("skew", f.skew.is_some(), Kind::SkewClock)?;
        match f.kind {
            Kind::SlowDisk if f.delay.is_none_or(|d| d.0 <= 0) => {
                return Err(at(
                    i,
                    "delay: slow-disk needs a delay per fsync, e.g. \"50ms\"".into(),
                ));
            }
            Kind::SkewClock if f.skew.is_none_or(|d| d.0 == 0) => {
                return Err(at(
                    i,
                    "skew: skew-clock needs an offset, e.g. \"30s\" or \"-30s\"".into(),
                ));
            }
            _ => {}
        }
    }
    e.faults.sort_by_key(|f| f.at.0);
    if let Some(w) = &mut e.workload {
        if w.count == 0 {
            return Err(format!(
                "{}: workload.count must be 1 or more",
                file.display()
            ));
        }
        w.interval_ms()
            .map_err(|why| format!("{}: {why}", file.display()))?;
        if w.settle.0 <= 0 {
            return Err(format!(
                "{}: workload.settle must be positive",
                file.display()
            ));
        }
        if w.spec.is_relative()
            && let Some(dir) = file.parent()
        {
            w.spec = dir.join(&w.spec);
        }
    }
    Ok(e)
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Experiment, String> {
        parse(text, Path::new("/x/exp.toml"))
    }

    const GOOD: &str = r#"
name = "demo"
[workload]
spec = "sleep.toml"
count = 10
rate = "4/s"
[[fault]]
at = "6s"
kind = "pause"
node = "worker"
for = "4s"
[[fault]]
at = "1s"
kind = "partition"
node = "worker"
from = ["leader"]
mode = "reset"
for = "5s"
[[fault]]
at = "2s"
kind = "skew-clock"
node = "follower"
skew = "-30s"
for = "3s"
"#;

    #[test]
    fn a_good_file_parses_sorted_by_time_with_paths_resolved() {
        let e = p(GOOD).unwrap();
        assert_eq!(e.name, "demo");
        let ats: Vec<i64> = e.faults.iter().map(|f| f.at.0).collect();
        assert_eq!(ats, vec![1_000, 2_000, 6_000]);
        assert_eq!(e.faults[1].skew, Some(Dur(-30_000)));
        assert_eq!(
            e.faults[0].from.as_deref(),
            Some(&["leader".to_string()][..])
        );
        assert_eq!(e.faults[0].mode, Some(PartitionMode::Reset));
        assert_eq!(e.faults[0].api, None);
        let w = e.workload.unwrap();
        assert_eq!(w.spec, PathBuf::from("/x/sleep.toml"));
        assert_eq!(w.interval_ms(), Ok(250));
        assert_eq!(w.settle, Dur(120_000));
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = p("[[fault]]\nat = \"1s\"\nkind = \"melt\"\nnode = \"leader\"\nfor = \"1s\"\n")
            .unwrap_err();
        assert!(e.contains("/x/exp.toml") && e.contains("line 3"), "{e}");
        assert!(e.contains("melt"), "{e}");
        let e = p("[[fault]]\nat = \"soon\"\nkind = \"kill\"\nnode = \"leader\"\nfor = \"1s\"\n")
            .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = p(
            "[[fault]]\nat = \"1s\"\nkind = \"kill\"\nnode = \"leader\"\nfor = \"1s\"\nwhen = 3\n",
        )
        .unwrap_err();
        assert!(e.contains("when") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn rules_per_fault_name_the_fault() {
        let base = "[[fault]]\nat = \"1s\"\nnode = \"leader\"\n";
        let e = p(&format!("{base}kind = \"kill\"\nfor = \"11m\"\n")).unwrap_err();
        assert!(e.contains("fault 1 (the 1st [[fault]]): for:"), "{e}");
        let e = p(&format!("{base}kind = \"slow-disk\"\nfor = \"1s\"\n")).unwrap_err();
        assert!(e.contains("delay:"), "{e}");
        let e = p(&format!(
            "{base}kind = \"kill\"\nfor = \"1s\"\ndelay = \"5ms\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("delay is for slow-disk faults only"), "{e}");
        let e = p(&format!(
            "{base}kind = \"kill\"\nfor = \"1s\"\napi = true\n"
        ))
        .unwrap_err();
        assert!(e.contains("api is for partition faults only"), "{e}");
        let e = p(&format!(
            "{base}kind = \"partition\"\nfor = \"1s\"\nmode = \"silent\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("silent") && e.contains("blackhole"), "{e}");
        let e = p(&format!("{base}kind = \"skew-clock\"\nfor = \"1s\"\n")).unwrap_err();
        assert!(e.contains("skew:"), "{e}");
        let e = p(&format!("{base}kind = \"fsync-error\"\nfor = \"1s\"\n")).unwrap_err();
        assert!(e.contains("kind: fsync-error"), "{e}");
        assert!(
            p("name = \"empty\"\n")
                .unwrap_err()
                .contains("nothing to run")
        );
        let e = p("[workload]\nspec = \"a.toml\"\ncount = 1\nrate = \"fast\"\n").unwrap_err();
        assert!(e.contains("workload.rate"), "{e}");
    }
}
