//! Retries after a failed reconcile: exponential per job, with jitter, so a
//! flaky API server is not hit by every job at the same moment.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

pub const BASE: Duration = Duration::from_millis(500);
pub const MAX: Duration = Duration::from_secs(300);

/// Failures in a row, by job uid; a success forgets the job.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before the next try: BASE x 2^(n-1), capped at MAX, then
    /// scaled by a random factor in [0.5, 1.5).
    pub fn failed(&self, uid: &str) -> Duration {
        let mut map = self.failures.lock().unwrap();
        let n = map.entry(uid.into()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = BASE.saturating_mul(1u32 << (*n - 1).min(20)).min(MAX);
        exp.mul_f64(0.5 + jitter())
    }

    pub fn succeeded(&self, uid: &str) {
        let mut map = self.failures.lock().unwrap();
        if !map.is_empty() {
            map.remove(uid);
        }
    }
}

/// A number in [0, 1): each RandomState is seeded afresh, which is all the
/// randomness a retry spread needs.
fn jitter() -> f64 {
    (RandomState::new().hash_one(0u8) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_reset_on_success() {
        let b = Backoff::default();
        let first = b.failed("j");
        assert!(first >= BASE / 2 && first < BASE * 3 / 2, "{first:?}");
        for _ in 0..30 {
            b.failed("j");
        }
        let late = b.failed("j");
        assert!(late >= MAX / 2 && late < MAX * 3 / 2, "{late:?}");
        b.succeeded("j");
        assert!(b.failed("j") < BASE * 3 / 2);
        let spread: std::collections::HashSet<u128> =
            (0..20).map(|_| b.failed("k").as_nanos() % 1000).collect();
        assert!(spread.len() > 1, "no jitter");
    }
}
