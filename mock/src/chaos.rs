//! `chaos-P`: the model fails with probability P% in one of several ways, for fault
//! soaks.
//!
//! The draw is a pure function of a per-request seed and the model name, so that a
//! driver that sends the seed (header `x-mock-seed`) knows in advance how each model
//! of a fallback chain will answer that request, while the same request retried with
//! another model draws again. Without the header the mock uses a counter of its own.

use std::time::Duration;

/// The request header carrying the seed of the chaos draw (a decimal `u64`).
pub const SEED_HEADER: &str = "x-mock-seed";

/// How long the `Timeout` failure holds back the response headers: longer than any
/// per-try timeout a test or soak sets, so the proxy in front always gives up first.
pub const CHAOS_TIMEOUT: Duration = Duration::from_secs(10);

/// One way of failing, as drawn by [`chaos_draw`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChaosFailure {
    /// Status 500, 502, 503 or 429 with an OpenAI-style error body.
    Status(u16),
    /// No response headers for [`CHAOS_TIMEOUT`] (like `delay-10000`).
    Timeout,
    /// The connection is closed without an answer (like `drop`).
    Reset,
    /// Bytes that are not HTTP, then the connection closes (like `garbage`).
    Garbage,
    /// The answer starts and the connection breaks in the middle of its body: a
    /// stream after the role chunk and one content chunk (like `break-1`), a plain
    /// JSON answer halfway through (like `cut`).
    Break,
}

/// Every kind a chaos draw picks from, with equal weight.
pub const CHAOS_FAILURES: [ChaosFailure; 8] = [
    ChaosFailure::Status(500),
    ChaosFailure::Status(502),
    ChaosFailure::Status(503),
    ChaosFailure::Status(429),
    ChaosFailure::Timeout,
    ChaosFailure::Reset,
    ChaosFailure::Garbage,
    ChaosFailure::Break,
];

/// How the model `model`, asked with `chaos-percent`, answers the request seeded
/// with `seed`: `None` for a normal answer. `percent` above 100 counts as 100.
pub fn chaos_draw(seed: u64, model: &str, percent: u32) -> Option<ChaosFailure> {
    let hash = splitmix64(seed ^ fnv1a(model.as_bytes()));
    if hash % 100 >= u64::from(percent.min(100)) {
        return None;
    }
    let kinds = CHAOS_FAILURES.len() as u64;
    CHAOS_FAILURES.get(((hash >> 32) % kinds) as usize).copied()
}

/// The percentage of a `chaos-P` directive in `model`, if it has one (the last wins).
pub fn chaos_percent(model: &str) -> Option<u32> {
    model.split('+').rev().find_map(|part| {
        let percent = part.strip_prefix("chaos-")?.parse::<u32>().ok()?;
        (percent <= 100).then_some(percent)
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A bijective mixer: nearby seeds give unrelated draws.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn draws_are_deterministic_and_depend_on_seed_and_model() {
        assert_eq!(
            chaos_draw(7, "m+chaos-50", 50),
            chaos_draw(7, "m+chaos-50", 50)
        );
        let differs_by_seed = (0..64).any(|s| chaos_draw(s, "m", 50) != chaos_draw(s + 1, "m", 50));
        let differs_by_model = (0..64).any(|s| chaos_draw(s, "a", 50) != chaos_draw(s, "b", 50));
        assert!(differs_by_seed && differs_by_model);
    }

    #[test]
    fn percentages_hold_and_every_kind_is_drawn() {
        assert!((0..1000).all(|s| chaos_draw(s, "m", 0).is_none()));
        assert!((0..1000).all(|s| chaos_draw(s, "m", 100).is_some()));
        assert!((0..1000).all(|s| chaos_draw(s, "m", 250).is_some()));
        let mut kinds: HashMap<ChaosFailure, u32> = HashMap::new();
        let mut failures = 0;
        for seed in 0..20_000 {
            if let Some(kind) = chaos_draw(seed, "model+chaos-30", 30) {
                failures += 1;
                *kinds.entry(kind).or_default() += 1;
            }
        }
        assert!((5_400..6_600).contains(&failures), "{failures}");
        assert_eq!(kinds.len(), CHAOS_FAILURES.len(), "{kinds:?}");
        assert!(kinds.values().all(|n| *n > 400), "{kinds:?}");
    }

    #[test]
    fn percent_from_model_name() {
        assert_eq!(chaos_percent("a+chaos-30"), Some(30));
        assert_eq!(chaos_percent("a+chaos-30+chaos-100"), Some(100));
        assert_eq!(chaos_percent("a+chaos-101"), None);
        assert_eq!(chaos_percent("a+chaos-x"), None);
        assert_eq!(chaos_percent("plain"), None);
    }
}
