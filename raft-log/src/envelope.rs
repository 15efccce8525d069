//! The payload of one raft entry: a versioned bincode [`Envelope`] carrying many proposals.
//!
//! Wire format (bincode 2, `config::standard()`, serde): `Envelope { v, at_ms, origin, groups }`.
//! `v` is checked on its own before the rest is decoded, so a future layout can be detected.
//! `origin` is the incarnation nonce of the engine that proposed the entry: group ids are only
//! meaningful to that incarnation, so ids replayed after a restart never reach a new waiter.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::MAX_ENTRY_BYTES;

/// Current envelope version. Bump it (and keep decoding the old one) when the layout changes.
pub(crate) const ENVELOPE_VERSION: u16 = 1;

/// One raft entry's payload.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct Envelope<C> {
    /// Layout version, [`ENVELOPE_VERSION`].
    pub v: u16,
    /// Leader wall clock (ms since the epoch) when the entry was proposed; passed to `apply`.
    pub at_ms: u64,
    /// Incarnation nonce of the proposing engine.
    pub origin: u64,
    /// The proposals packed into this entry, applied in order.
    pub groups: Vec<Group<C>>,
}

/// One proposal: its commands are applied in order and their outputs go to waiter `id`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct Group<C> {
    /// Waiter id within the origin incarnation; 0 = nobody waits.
    pub id: u64,
    /// The commands.
    pub cmds: Vec<C>,
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_ENTRY_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_ENTRY_BYTES>()
}

/// Encodes an envelope; fails if a command cannot be serialized or the entry would exceed
/// [`MAX_ENTRY_BYTES`].
pub(crate) fn encode<C: Serialize>(env: &Envelope<C>) -> Result<Vec<u8>, String> {
    // bincode does not enforce the limit while encoding; check the result instead.
    let bytes = bincode::serde::encode_to_vec(env, config())
        .map_err(|e| format!("a command could not be encoded ({e}); fix its serde impl"))?;
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(format!(
            "the entry is {} bytes, over the {} MiB limit; propose fewer or smaller commands at once",
            bytes.len(),
            MAX_ENTRY_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// Decodes an envelope written by [`encode`]. Never panics on arbitrary bytes.
pub(crate) fn decode<C: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<C>, String> {
    let (v, _): (u16, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| format!("unreadable envelope version: {e}"))?;
    if v != ENVELOPE_VERSION {
        return Err(format!(
            "unsupported envelope version {v} (this build reads {ENVELOPE_VERSION})"
        ));
    }
    let (env, used): (Envelope<C>, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| format!("undecodable envelope: {e}"))?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the envelope",
            bytes.len() - used
        ));
    }
    Ok(env)
}

/// Splits `items` into consecutive chunks of at most `max` units (as measured by `size`),
/// keeping order and never splitting an item: an item bigger than `max` gets a chunk of its own.
pub(crate) fn pack<T>(items: Vec<T>, max: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut current_size = 0usize;
    for item in items {
        let s = size(&item);
        if !current.is_empty() && current_size.saturating_add(s) > max {
            chunks.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current_size = current_size.saturating_add(s);
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Cmd {
        Add(u64),
        Put { key: String, value: Vec<u8> },
    }

    fn sample() -> Envelope<Cmd> {
        Envelope {
            v: ENVELOPE_VERSION,
            at_ms: 1_700_000_000_123,
            origin: 0xdead_beef,
            groups: vec![
                Group {
                    id: 7,
                    cmds: vec![Cmd::Add(1), Cmd::Add(2)],
                },
                Group {
                    id: 0,
                    cmds: vec![Cmd::Put {
                        key: "k".into(),
                        value: vec![1, 2, 3],
                    }],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let env = sample();
        let bytes = encode(&env).unwrap();
        assert_eq!(decode::<Cmd>(&bytes).unwrap(), env);
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<Cmd>(&bytes[..cut]).is_err(),
                "prefix {cut} decoded"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode::<Cmd>(&extra).is_err());
        // A huge length prefix must not allocate or panic.
        let evil = [1u8, 0, 0, 0xfc, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Cmd>(&evil).is_err());
        assert!(decode::<Cmd>(&[0xff; 64]).is_err());
    }

    #[test]
    fn other_versions_are_rejected() {
        let mut env = sample();
        env.v = ENVELOPE_VERSION + 1;
        let bytes = encode(&env).unwrap();
        let err = decode::<Cmd>(&bytes).unwrap_err();
        assert!(err.contains("unsupported envelope version"), "{err}");
    }

    #[test]
    fn pack_respects_max_and_never_splits() {
        let sizes = vec![3usize, 2, 4, 10, 1, 1, 1, 5];
        let chunks = pack(sizes, 5, |s| *s);
        assert_eq!(
            chunks,
            vec![vec![3, 2], vec![4], vec![10], vec![1, 1, 1], vec![5]]
        );
        assert!(pack(Vec::<usize>::new(), 5, |s| *s).is_empty());
        let zeros = pack(vec![0usize, 0, 0], 1, |s| *s);
        assert_eq!(zeros, vec![vec![0, 0, 0]]);
    }
}
