//! Which alerts the applied state calls for: a pure function of the applied state, the effects
//! of the entries just applied and the engine's clock (no I/O), run on every server so that a
//! new leader knows the recent events too.
//!
//! - A workflow that finished `failed`, `timed_out` or `degraded` (its `Effect::Finished`).
//! - More than `count` new dead letters of one step of one workflow within `window_ms`
//!   (`--dlq-alert 50/1h`), judged on the letters' own `at_ms` (stamped by the leader, so
//!   every server judges alike); once per window per step: after firing, the step fires again
//!   only for a letter at least `window_ms` after the one that fired.
//!
//! Only the leader sends ([`Detector::step`] returns events only when `is_leader`). A server
//! that becomes leader sends again the events of the last [`RESEND_HORIZON_MS`] it knows
//! (the old leader may have died before delivering them): at-least-once, with duplicates
//! after a leader change that receivers drop by `id` (deterministic: the same event has the
//! same id on every server). Events older than the horizon (log replay at start, a snapshot
//! restore) are never sent.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use troupe_scheduler::state::{WfStatus, wf_name};
use troupe_scheduler::{Effect, State, WorkflowId};

/// Events kept for a new leader to send again, and the most sent after an event's time.
pub const RESEND_HORIZON_MS: u64 = 10 * 60 * 1000;
/// Most recent events kept (the horizon bounds them by time, this by count).
pub const RECENT_MAX: usize = 1024;
/// Steps whose dead-letter windows are tracked at once (the oldest windows go past it).
pub const WINDOWS_MAX: usize = 4096;

/// `--dlq-alert COUNT/WINDOW`: more than `count` new dead letters of one step in `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlqAlert {
    pub count: u32,
    pub window_ms: u64,
}

impl std::str::FromStr for DlqAlert {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, w) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write COUNT/WINDOW, e.g. 50/1h"))?;
        let count = n
            .trim()
            .parse::<u32>()
            .map_err(|e| format!("{s:?}: the count {n:?} is not a number: {e}"))?;
        let window_ms = troupe_scheduler::units::parse_duration_ms(w.trim())
            .map_err(|e| format!("{s:?}: the window: {e}"))?;
        if window_ms == 0 {
            return Err(format!("{s:?}: the window must be longer than 0"));
        }
        Ok(DlqAlert { count, window_ms })
    }
}

/// One webhook's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The same on every server for the same event: receivers drop duplicates by it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub workflow: String,
    pub name: String,
    pub status: String,
    pub reason: Option<String>,
    pub at_ms: u64,
    /// The server that sent it (the leader).
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

#[derive(Default)]
struct Window {
    /// `at_ms` of the step's latest letters (at most `count + 1`).
    times: VecDeque<u64>,
    fired_ms: Option<u64>,
}

pub struct Detector {
    node: String,
    dlq: Option<DlqAlert>,
    /// Dead letters up to this id have been counted.
    seen_dlq: u64,
    windows: BTreeMap<(WorkflowId, String), Window>,
    recent: VecDeque<Event>,
    was_leader: bool,
}

impl Detector {
    pub fn new(node: String, dlq: Option<DlqAlert>) -> Detector {
        Detector {
            node,
            dlq,
            seen_dlq: 0,
            windows: BTreeMap::new(),
            recent: VecDeque::new(),
            was_leader: false,
        }
    }

    /// The events to send now (none unless `is_leader`).
    pub fn step(
        &mut self,
        state: &State,
        effects: &[Effect],
        now_ms: u64,
        is_leader: bool,
    ) -> Vec<Event> {
        let mut new = self.finished(state, effects);
        new.extend(self.dead_letters(state));
        for e in &new {
            if self.recent.len() >= RECENT_MAX {
                self.recent.pop_front();
            }
            self.recent.push_back(e.clone());
        }
        while self
            .recent
            .front()
            .is_some_and(|e| e.at_ms.saturating_add(RESEND_HORIZON_MS) < now_ms)
        {
            self.recent.pop_front();
        }
        let gained = is_leader && !self.was_leader;
        self.was_leader = is_leader;
        let fresh = |e: &Event| e.at_ms.saturating_add(RESEND_HORIZON_MS) >= now_ms;
        let mut out: Vec<Event> = if gained {
            self.recent.iter().filter(|e| fresh(e)).cloned().collect()
        } else if is_leader {
            new.into_iter().filter(fresh).collect()
        } else {
            Vec::new()
        };
        for e in &mut out {
            e.node = self.node.clone();
        }
        out
    }

    fn finished(&self, state: &State, effects: &[Effect]) -> Vec<Event> {
        let mut out = Vec::new();
        for e in effects {
            let Effect::Finished(id) = e else { continue };
            let Some(wf) = state.workflows.get(id) else {
                continue;
            };
            let kind = match wf.status {
                WfStatus::Failed => "workflow.failed",
                WfStatus::TimedOut => "workflow.timed_out",
                WfStatus::Degraded => "workflow.degraded",
                _ => continue,
            };
            let at_ms = wf.finished_ms.unwrap_or(state.sched.stats.last_at_ms);
            out.push(Event {
                id: format!("{}.{}.{at_ms}", wf.name(), wf.status.name()),
                kind,
                workflow: wf.name(),
                name: wf.spec.name.clone(),
                status: wf.status.name().into(),
                reason: wf.reason.clone(),
                at_ms,
                node: String::new(),
                step: None,
                count: None,
                threshold: None,
                window: None,
                window_ms: None,
            });
        }
        out
    }

    fn dead_letters(&mut self, state: &State) -> Vec<Event> {
        let next = state.sched.next_dlq;
        let Some(alert) = self.dlq else {
            self.seen_dlq = next;
            return Vec::new();
        };
        if next <= self.seen_dlq {
            // Nothing new (or a snapshot from an earlier state was restored: start over).
            self.seen_dlq = next;
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut latest = 0;
        for (_, letter) in state.sched.dlq.range(self.seen_dlq + 1..) {
            latest = latest.max(letter.at_ms);
            let key = (letter.task.wf, letter.step_id.clone());
            let w = self.windows.entry(key).or_default();
            w.times.push_back(letter.at_ms);
            while w.times.len() > alert.count as usize + 1 {
                w.times.pop_front();
            }
            let start = letter.at_ms.saturating_sub(alert.window_ms);
            while w.times.front().is_some_and(|t| *t <= start) {
                w.times.pop_front();
            }
            let over = w.times.len() > alert.count as usize;
            let due = w
                .fired_ms
                .is_none_or(|f| letter.at_ms >= f.saturating_add(alert.window_ms));
            if !(over && due) {
                continue;
            }
            w.fired_ms = Some(letter.at_ms);
            let wf = state.workflows.get(&letter.task.wf);
            let window = troupe_scheduler::units::format_ms(alert.window_ms);
            out.push(Event {
                id: format!(
                    "{}.{}.dlq.{}",
                    wf_name(letter.task.wf),
                    letter.step_id,
                    letter.at_ms
                ),
                kind: "dlq.threshold",
                workflow: wf_name(letter.task.wf),
                name: wf.map(|w| w.spec.name.clone()).unwrap_or_default(),
                status: wf.map(|w| w.status.name()).unwrap_or("running").into(),
                reason: Some(format!(
                    "more than {} dead letters of step `{}` within {window}; the last: {}",
                    alert.count, letter.step_id, letter.last_error
                )),
                at_ms: letter.at_ms,
                node: String::new(),
                step: Some(letter.step_id.clone()),
                count: Some(w.times.len() as u32),
                threshold: Some(alert.count),
                window: Some(window),
                window_ms: Some(alert.window_ms),
            });
        }
        self.seen_dlq = next;
        if self.windows.len() > WINDOWS_MAX {
            let since = latest.saturating_sub(alert.window_ms);
            self.windows
                .retain(|_, w| w.times.back().is_some_and(|t| *t > since));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_scheduler::TaskRef;
    use troupe_scheduler::state::DeadLetter;

    const MIN: u64 = 60_000;

    fn letter(state: &mut State, wf: WorkflowId, step: &str, at_ms: u64) {
        state.sched.next_dlq += 1;
        let id = state.sched.next_dlq;
        state.sched.dlq.insert(
            id,
            DeadLetter {
                id,
                task: TaskRef {
                    wf,
                    step: 0,
                    item: id as u32,
                },
                step_id: step.into(),
                attempt: 1,
                attempts: 1,
                last_error: "exit 4".into(),
                log_stem: String::new(),
                at_ms,
                item_value: None,
                node: None,
            },
        );
    }

    fn detector() -> Detector {
        Detector::new(
            "n1".into(),
            Some(DlqAlert {
                count: 3,
                window_ms: 60 * MIN,
            }),
        )
    }

    #[test]
    fn parses_count_and_window() {
        let a: DlqAlert = "50/1h".parse().unwrap();
        assert_eq!((a.count, a.window_ms), (50, 3_600_000));
        assert!("50".parse::<DlqAlert>().is_err());
        assert!("x/1h".parse::<DlqAlert>().is_err());
        assert!("5/0s".parse::<DlqAlert>().is_err());
    }

    #[test]
    fn fires_once_per_window_per_step() {
        let (mut s, mut d) = (State::default(), detector());
        let t0 = 100 * MIN;
        for i in 0..3 {
            letter(&mut s, 1, "score", t0 + i);
        }
        assert!(d.step(&s, &[], t0, true).is_empty(), "3 is not more than 3");
        letter(&mut s, 1, "score", t0 + 10);
        letter(&mut s, 2, "score", t0 + 10);
        let out = d.step(&s, &[], t0 + 10, true);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].step.as_deref(), Some("score"));
        assert_eq!(out[0].count, Some(4));
        assert_eq!(out[0].workflow, "wf-1");
        assert_eq!(out[0].node, "n1");
        // More in the same window: nothing.
        for i in 0..10 {
            letter(&mut s, 1, "score", t0 + 20 + i);
        }
        assert!(d.step(&s, &[], t0 + 30, true).is_empty());
        // A window later, a new burst fires again.
        for i in 0..4 {
            letter(&mut s, 1, "score", t0 + 61 * MIN + i);
        }
        let again = d.step(&s, &[], t0 + 61 * MIN, true);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].id, out[0].id);
    }

    #[test]
    fn letters_spread_over_more_than_the_window_do_not_fire() {
        let (mut s, mut d) = (State::default(), detector());
        for i in 0..8 {
            letter(&mut s, 1, "score", 1_000 * MIN + i * 30 * MIN);
            assert!(d.step(&s, &[], 1_000 * MIN + i * 30 * MIN, true).is_empty());
        }
    }

    #[test]
    fn only_the_leader_sends_and_a_new_leader_sends_recent_events_again() {
        let (mut s, mut d) = (State::default(), detector());
        let t0 = 100 * MIN;
        for i in 0..4 {
            letter(&mut s, 1, "score", t0 + i);
        }
        assert!(
            d.step(&s, &[], t0, false).is_empty(),
            "a follower sends nothing"
        );
        let sent = d.step(&s, &[], t0 + MIN, true);
        assert_eq!(
            sent.len(),
            1,
            "the new leader sends what the old one may have missed"
        );
        assert!(d.step(&s, &[], t0 + MIN, true).is_empty());
        // Past the horizon nothing is sent again.
        d.step(&s, &[], t0 + 2 * MIN, false);
        assert!(
            d.step(&s, &[], t0 + RESEND_HORIZON_MS + MIN, true)
                .is_empty()
        );
    }

    #[test]
    fn old_letters_replayed_at_start_are_not_sent() {
        let (mut s, mut d) = (State::default(), detector());
        for i in 0..5 {
            letter(&mut s, 1, "score", MIN + i);
        }
        assert!(d.step(&s, &[], 1_000 * MIN, true).is_empty());
    }
}
