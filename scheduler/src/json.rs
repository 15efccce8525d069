//! JSON values inside replicated state.
//!
//! bincode cannot carry `serde_json::Value` (it needs `deserialize_any`), so the state stores
//! compact JSON text and parses it where a value is needed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Json(pub String);

impl Json {
    pub fn null() -> Self {
        Json("null".into())
    }
    pub fn from_value(v: &serde_json::Value) -> Self {
        Json(v.to_string())
    }
    /// The value; text that is not JSON (impossible unless state was corrupted) reads as `null`.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
    pub fn is_null(&self) -> bool {
        self.0 == "null"
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        Json::from_value(&v)
    }
}

/// FNV-1a, 64 bit: a stable digest (unlike `DefaultHasher`, it never changes between Rust versions).
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Mixes numbers into a stable pseudo-random value (used for deterministic backoff jitter).
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for p in parts {
        h ^= p
            .wrapping_add(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
    }
    h
}
