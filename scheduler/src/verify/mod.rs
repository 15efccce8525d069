//! Checking a committed history: the rules every applied index must keep ([`rules`]) and a
//! replay of a whole log through the real state machine that checks them and measures
//! failovers and re-placements ([`replay`]). Pure: entries and their timestamps come in as
//! values. Used by the simulator and by `troupe chaos verify`.

pub mod replay;
pub mod rules;

pub use replay::{AckedSubmit, Failover, LogEntry, Replacement, Replay, Report, Violation};
pub use rules::{Accepted, capacity, may_accept};
