//! Shared by the fuzz targets of every crate (each includes this file with `#[path]`): the
//! proptest configuration, the seed corpus under `fuzz/corpus/<target>/`, byte-level mutation
//! of seeds, and a wall-clock bound per case. See docs/ARCHITECTURE.md, "Fuzzing".
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use std::path::PathBuf;
use std::time::Duration;

/// The seed every target starts from unless `PROPTEST_RNG_SEED` says otherwise: `.ci/run` is a
/// gate, and a gate that passes or fails by chance is no gate. Longer runs pick other seeds.
pub const SEED: u64 = 0x7200_0e5e_ed00_0001;

/// `default_cases` cases (or `PROPTEST_CASES`), from [`SEED`] (or `PROPTEST_RNG_SEED`).
/// Failures are saved under `proptest-regressions/` and replayed first on the next run.
pub fn config(default_cases: u32) -> Config {
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default_cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(SEED);
    }
    // Shrinking a slow failure can take long; a bound keeps a failing gate fast.
    c.max_shrink_iters = 2_000;
    c
}

/// The repository's `fuzz/` folder.
pub fn root(manifest_dir: &str) -> PathBuf {
    PathBuf::from(manifest_dir).join("..").join("fuzz")
}

/// The files of `fuzz/corpus/<target>/`, sorted by name (`(name, bytes)`).
pub fn corpus(manifest_dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root(manifest_dir).join("corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("corpus file");
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "corpus {} is empty", dir.display());
    out
}

/// One edit of a seed. Positions are taken modulo the length, so every edit applies.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR one byte.
    Flip(u32, u8),
    /// Overwrite one byte.
    Set(u32, u8),
    /// Insert bytes (random, or a token from the target's dictionary).
    Insert(u32, Vec<u8>),
    /// Remove up to `n` bytes.
    Remove(u32, u8),
    /// Copy a range elsewhere (repeats structure: tables, list elements).
    Dup(u32, u8, u32),
    /// Cut the input.
    Truncate(u32),
}

impl Mutation {
    pub fn apply(&self, b: &mut Vec<u8>) {
        let at = |p: u32, len: usize| (p as usize) % (len + 1);
        match self {
            Mutation::Flip(p, x) if !b.is_empty() => {
                let i = *p as usize % b.len();
                b[i] ^= x;
            }
            Mutation::Set(p, x) if !b.is_empty() => {
                let i = *p as usize % b.len();
                b[i] = *x;
            }
            Mutation::Insert(p, bytes) => {
                let i = at(*p, b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(p, n) => {
                let i = at(*p, b.len());
                let end = (i + *n as usize).min(b.len());
                b.drain(i..end);
            }
            Mutation::Dup(p, n, to) => {
                let i = at(*p, b.len());
                let end = (i + *n as usize).min(b.len());
                let piece: Vec<u8> = b[i..end].to_vec();
                let j = at(*to, b.len());
                b.splice(j..j, piece);
            }
            Mutation::Truncate(p) => {
                let i = at(*p, b.len());
                b.truncate(i);
            }
            _ => {}
        }
    }
}

fn mutation(dict: &'static [&'static [u8]]) -> impl Strategy<Value = Mutation> {
    let token = if dict.is_empty() {
        proptest::collection::vec(any::<u8>(), 1..8).boxed()
    } else {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..8),
            proptest::sample::select(dict).prop_map(|t| t.to_vec()),
        ]
        .boxed()
    };
    prop_oneof![
        (any::<u32>(), 1..=255u8).prop_map(|(p, x)| Mutation::Flip(p, x)),
        (any::<u32>(), any::<u8>()).prop_map(|(p, x)| Mutation::Set(p, x)),
        (any::<u32>(), token).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (any::<u32>(), 1..64u8).prop_map(|(p, n)| Mutation::Remove(p, n)),
        (any::<u32>(), 1..128u8, any::<u32>()).prop_map(|(p, n, t)| Mutation::Dup(p, n, t)),
        any::<u32>().prop_map(Mutation::Truncate),
    ]
}

/// A seed with 1 to 8 edits (the seeds themselves come through unchanged as well).
pub fn mutated(
    seeds: Vec<Vec<u8>>,
    dict: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "no seeds");
    let n = seeds.len();
    (
        0..n,
        proptest::collection::vec(mutation(dict), 0..8),
        prop::bool::weighted(0.9),
    )
        .prop_map(move |(i, edits, edit)| {
            let mut b = seeds[i].clone();
            if edit {
                for m in &edits {
                    m.apply(&mut b);
                }
            }
            b
        })
}

/// Tokens that make bincode read huge lengths and odd variants: the varint markers for u16,
/// u32, u64 and u128 followed by all-ones, and large enum indexes.
pub const BINCODE_DICT: &[&[u8]] = &[
    &[0xfb, 0xff, 0xff],
    &[0xfc, 0xff, 0xff, 0xff, 0xff],
    &[0xfc, 0x00, 0x00, 0x00, 0x40],
    &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
    &[0xfd, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00],
    &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    &[0xfa],
    &[0xff],
    &[0x00],
    &[0x01],
    &[0x7f],
];

/// Runs `f`, failing the case when it takes over `bound` (the "bounded time" property). The
/// bound is wall-clock on a shared machine: set well above what the slowest case takes.
#[allow(clippy::disallowed_methods)] // a test measures time; the code under test never reads it
pub fn within<T>(bound: Duration, what: impl Fn() -> String, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(
        took <= bound,
        "{} took {took:?}, over the bound of {bound:?}",
        what()
    );
    out
}

/// The time bound of one case: debug builds are ~10x slower than release.
pub fn bound_ms(release_ms: u64) -> Duration {
    Duration::from_millis(if cfg!(debug_assertions) {
        release_ms * 10
    } else {
        release_ms
    })
}

/// Shortened text of an input, for failure messages.
pub fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(300)];
    format!("{:?} ({} bytes)", String::from_utf8_lossy(cut), bytes.len())
}
