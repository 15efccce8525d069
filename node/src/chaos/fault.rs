//! What a fault request says and the rules it must keep: a known kind, a bounded duration,
//! the fields the kind needs and no others. Pure (no clock): unit-tested here.

use serde::{Deserialize, Serialize};

/// Longest fault: every fault heals by itself within this.
pub const FOR_MAX_MS: u64 = 10 * 60 * 1000;
/// Largest clock offset, either way (a day).
pub const SKEW_MAX_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Dies like `kill -9` (no shutdown, volatile state lost); restarted after `for_ms` with
    /// the same command line, environment and data dir.
    Kill,
    /// Frozen like `kill -STOP` for `for_ms` (TCP stays up), then resumed.
    Pause,
    /// Cut from `from` (default: every other node) for `for_ms`: by default a silent blackhole
    /// (sessions stay up, every cluster frame to and from them is dropped); `mode = reset`
    /// drops the sessions instead; `api` also leaves its HTTP API unanswered.
    Partition,
    /// Every fsync of the Raft log takes `delay_ms` longer for `for_ms`.
    SlowDisk,
    /// The next fsync of the Raft log fails: the node fail-stops (exits; restart it by hand).
    FsyncError,
    /// The node's wall clock runs `skew_ms` off for `for_ms`.
    SkewClock,
}

/// How a partition cuts the node from its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionMode {
    /// Sessions stay up; every cluster frame (Raft, Exec, Propose, Renew) to and from the cut
    /// peers is dropped, so they see silence (what a real partition usually looks like).
    #[default]
    Blackhole,
    /// The sessions with the cut peers are dropped: they see a refused connection.
    Reset,
}

impl PartitionMode {
    pub fn name(self) -> &'static str {
        match self {
            PartitionMode::Blackhole => "blackhole",
            PartitionMode::Reset => "reset",
        }
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::SlowDisk => "slow-disk",
            Kind::FsyncError => "fsync-error",
            Kind::SkewClock => "skew-clock",
        }
    }
}

/// `POST /v1/chaos/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// kill, pause, partition, slow-disk, fsync-error or skew-clock.
    #[schema(value_type = String)]
    pub kind: Kind,
    /// The target node's id (as `GET /v1/nodes` lists it).
    pub node: String,
    /// partition only: the nodes it is cut from (default: every other node).
    #[serde(default)]
    pub from: Option<Vec<String>>,
    /// partition only: `blackhole` (default: frames dropped, sessions up) or `reset`
    /// (sessions dropped).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mode: Option<PartitionMode>,
    /// partition only: the node's HTTP API stops answering too (requests are held unanswered
    /// until the partition heals, then refused with 503 unprocessed).
    #[serde(default)]
    pub api: Option<bool>,
    /// How long the fault lasts (at most 10 minutes); it heals by itself.
    #[serde(default)]
    pub for_ms: u64,
    /// slow-disk only: extra milliseconds per fsync.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// skew-clock only: milliseconds added to the node's wall clock (negative: behind).
    #[serde(default)]
    pub skew_ms: Option<i64>,
}

impl FaultRequest {
    /// Checks the fields against the kind; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.node.trim().is_empty() {
            return Err("node: give the target node's id".into());
        }
        if self.kind != Kind::FsyncError && !(1..=FOR_MAX_MS).contains(&self.for_ms) {
            return Err(format!(
                "for_ms: {} is out of range; every fault lasts 1 ms to {} min",
                self.for_ms,
                FOR_MAX_MS / 60_000
            ));
        }
        let only = |field: &str, set: bool, kind: Kind| -> Result<(), String> {
            if set && self.kind != kind {
                return Err(format!("{field} is for {} faults only", kind.name()));
            }
            Ok(())
        };
        only("from", self.from.is_some(), Kind::Partition)?;
        only("mode", self.mode.is_some(), Kind::Partition)?;
        only("api", self.api.is_some(), Kind::Partition)?;
        only("delay_ms", self.delay_ms.is_some(), Kind::SlowDisk)?;
        only("skew_ms", self.skew_ms.is_some(), Kind::SkewClock)?;
        match self.kind {
            Kind::SlowDisk => match self.delay_ms {
                Some(d) if (1..=troupe_raft_log::FSYNC_DELAY_MAX_MS).contains(&d) => {}
                _ => {
                    return Err(format!(
                        "delay_ms: slow-disk needs 1 to {} ms",
                        troupe_raft_log::FSYNC_DELAY_MAX_MS
                    ));
                }
            },
            Kind::SkewClock => match self.skew_ms {
                Some(s) if s != 0 && s.abs() <= SKEW_MAX_MS => {}
                _ => {
                    return Err(format!(
                        "skew_ms: skew-clock needs a non-zero offset within ±{SKEW_MAX_MS} ms"
                    ));
                }
            },
            Kind::Partition => {
                if let Some(f) = &self.from {
                    if f.is_empty() {
                        return Err("from: list at least one node, or leave it out for all".into());
                    }
                    if f.contains(&self.node) {
                        return Err("from: a node cannot be cut from itself".into());
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A fault in force on a node (`GET /v1/chaos/faults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveFault {
    pub id: u64,
    pub kind: Kind,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<String>>,
    /// partition only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PartitionMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<bool>,
    /// Wall-clock ms (not skewed) when it started and when it heals.
    pub since_ms: u64,
    pub until_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: Kind) -> FaultRequest {
        FaultRequest {
            kind,
            node: "n1".into(),
            from: None,
            mode: None,
            api: None,
            for_ms: 1000,
            delay_ms: None,
            skew_ms: None,
        }
    }

    #[test]
    fn each_kind_needs_its_fields_and_a_bounded_duration() {
        assert!(req(Kind::Kill).validate().is_ok());
        assert!(req(Kind::Pause).validate().is_ok());
        assert!(req(Kind::Partition).validate().is_ok());
        let e = req(Kind::SlowDisk).validate().unwrap_err();
        assert!(e.starts_with("delay_ms"), "{e}");
        let e = req(Kind::SkewClock).validate().unwrap_err();
        assert!(e.starts_with("skew_ms"), "{e}");
        let mut r = req(Kind::Kill);
        r.for_ms = FOR_MAX_MS + 1;
        assert!(r.validate().unwrap_err().starts_with("for_ms"));
        r.for_ms = 0;
        assert!(r.validate().unwrap_err().starts_with("for_ms"));
        let mut r = req(Kind::FsyncError);
        r.for_ms = 0;
        assert!(r.validate().is_ok(), "fsync-error has no duration");
    }

    #[test]
    fn fields_of_another_kind_are_refused() {
        let mut r = req(Kind::Kill);
        r.delay_ms = Some(5);
        assert_eq!(
            r.validate().unwrap_err(),
            "delay_ms is for slow-disk faults only"
        );
        let mut r = req(Kind::Partition);
        r.from = Some(vec!["n1".into()]);
        assert!(r.validate().unwrap_err().contains("itself"));
        r.from = Some(vec![]);
        assert!(r.validate().unwrap_err().starts_with("from"));
        let mut r = req(Kind::Pause);
        r.mode = Some(PartitionMode::Reset);
        assert_eq!(
            r.validate().unwrap_err(),
            "mode is for partition faults only"
        );
        r.mode = None;
        r.api = Some(true);
        assert_eq!(
            r.validate().unwrap_err(),
            "api is for partition faults only"
        );
    }

    #[test]
    fn a_partition_is_a_blackhole_unless_it_says_reset() {
        let r: FaultRequest =
            serde_json::from_str(r#"{"kind":"partition","node":"n2","for_ms":500}"#).unwrap();
        assert_eq!(r.mode.unwrap_or_default(), PartitionMode::Blackhole);
        let r: FaultRequest = serde_json::from_str(
            r#"{"kind":"partition","node":"n2","for_ms":500,"mode":"reset","api":true}"#,
        )
        .unwrap();
        assert_eq!((r.mode, r.api), (Some(PartitionMode::Reset), Some(true)));
        assert!(r.validate().is_ok());
        assert!(
            serde_json::from_str::<FaultRequest>(
                r#"{"kind":"partition","node":"n2","for_ms":5,"mode":"drop"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn the_wire_names_are_kebab_case_and_unknown_fields_are_refused() {
        let r: FaultRequest =
            serde_json::from_str(r#"{"kind":"slow-disk","node":"n2","for_ms":500,"delay_ms":20}"#)
                .unwrap();
        assert_eq!((r.kind, r.delay_ms), (Kind::SlowDisk, Some(20)));
        assert!(serde_json::from_str::<FaultRequest>(r#"{"kind":"melt","node":"n"}"#).is_err());
        assert!(
            serde_json::from_str::<FaultRequest>(r#"{"kind":"kill","node":"n","forr":1}"#).is_err()
        );
    }
}
