//! Bridge from raft-rs's `slog` records to `tracing` events (target `raft`).
//!
//! Key-value pairs of the record and of the logger are appended to the message as ` key=value`.
//! Records are only formatted when `tracing` would keep them.

use std::fmt::{self, Write as _};

use slog::{Drain, KV, Level, OwnedKVList, Record};

/// An `slog::Drain` that forwards to `tracing`.
pub(crate) struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let enabled = match record.level() {
            Level::Critical | Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
            Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        // Our serializer never fails; ignore the Result to stay infallible.
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        let kv = kv.0;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            Level::Info => tracing::info!(target: "raft", "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// The logger handed to `RawNode::new`.
pub(crate) fn raft_logger(raft_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("raft_id" => raft_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_are_rendered() {
        let rs = slog::record_static!(Level::Info, "");
        let args = format_args!("became leader");
        let kvs = slog::b!("term" => 5, "who" => "n1");
        let record = Record::new(&rs, &args, kvs);
        let mut kv = KvText(String::new());
        record.kv().serialize(&record, &mut kv).unwrap();
        assert!(
            kv.0.contains(" term=5") && kv.0.contains(" who=n1"),
            "{}",
            kv.0
        );
        // The drain itself must accept records with or without a subscriber.
        let log = raft_logger(1);
        slog::info!(log, "hello"; "k" => 1);
        slog::crit!(log, "critical"; "k" => 2);
    }
}
