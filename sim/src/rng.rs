//! The simulator's only source of randomness: SplitMix64 from one seed (`troupe-clock`'s
//! `Rng`, the same one the nodes use; the same seed gives the same stream on every platform).

pub use troupe_clock::Rng;
