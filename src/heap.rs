//! The process heap as glibc's malloc sees it, and handing its free pages
//! back to the kernel.
//!
//! At 10000 jobs the operator's RSS stood about 60 MiB above what its
//! caches hold (docs/benchmarks.md). glibc returns memory to the kernel
//! only from the top of an arena, so what a burst (the initial list, a
//! wave of creations) frees in the middle stays resident. The gauges say
//! how much the allocator holds free; `Trimmer` gives those pages back
//! with `malloc_trim`, which does release free pages anywhere in a heap.
//! Elsewhere than glibc both are no-ops: no gauges, nothing trimmed.

use crate::metrics::register;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// What the allocator holds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Handed out and not yet freed, mmapped blocks included.
    pub in_use: u64,
    /// Freed but kept by the allocator; resident unless trimmed.
    pub free: u64,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn usage() -> Option<Usage> {
    // SAFETY: mallinfo2 takes no arguments and only reads malloc's state
    // under its own locks.
    let m = unsafe { libc::mallinfo2() };
    Some(Usage {
        in_use: (m.uordblks + m.hblkhd) as u64,
        free: m.fordblks as u64,
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn usage() -> Option<Usage> {
    None
}

/// Gives every free page of every arena back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes malloc's locks itself; 0 keeps no padding.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// The resident set, from /proc/self/statm; 0 where it cannot be read.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Below this much held free, a trim is not worth its walk of the arenas.
const WORTH_TRIMMING: u64 = 4 << 20;

/// Trims the heap now and then, counting what the resident set lost.
#[derive(Clone, Debug, Default)]
pub struct Trimmer {
    /// Trims run, worth it or not: a scrape can tell that one has run.
    pub trims: Counter,
    pub trimmed: Counter,
}

impl Trimmer {
    /// The trims' counters and the allocator's own count, on `/metrics`.
    pub fn register(r: &mut Registry) -> Self {
        let trimmer = Self {
            trims: register(
                r,
                "heap_trims",
                "Periodic heap trims run, whether or not they handed anything back",
                Counter::default(),
            ),
            trimmed: register(
                r,
                "heap_trimmed_bytes",
                "Resident bytes handed back to the kernel by heap trims",
                Counter::default(),
            ),
        };
        r.register_collector(Box::new(HeapCollector));
        trimmer
    }

    /// One trim if enough is held free; returns the bytes the RSS fell by.
    pub fn trim_once(&self) -> u64 {
        self.trims.inc();
        match usage() {
            Some(u) if u.free >= WORTH_TRIMMING => {}
            _ => return 0,
        }
        let before = rss_bytes();
        trim();
        let fell = before.saturating_sub(rss_bytes());
        self.trimmed.inc_by(fell);
        fell
    }

    /// Trims every `period` until the task is dropped. A trim takes the
    /// allocator's locks for a walk of its free lists (milliseconds at a
    /// few hundred MiB), so it runs on a blocking thread.
    pub async fn run(self, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            if let Ok(fell) = tokio::task::spawn_blocking(move || me.trim_once()).await {
                tracing::debug!("heap trimmed: RSS fell by {} KiB", fell >> 10);
            }
        }
    }
}

/// `trainingjob_heap_in_use_bytes` and `trainingjob_heap_free_bytes`,
/// read from the allocator on each scrape.
#[derive(Debug)]
pub struct HeapCollector;

impl Collector for HeapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(u) = usage() else { return Ok(()) };
        let families = [
            (
                "heap_in_use",
                "Bytes the allocator has handed out.",
                u.in_use,
            ),
            (
                "heap_free",
                "Bytes freed but still held by the allocator.",
                u.free,
            ),
        ];
        for (name, help, value) in families {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_what_is_held() {
        let before = usage().unwrap();
        let block = vec![1u8; 8 << 20];
        let during = usage().unwrap();
        assert!(during.in_use >= before.in_use + (8 << 20) - 4096);
        drop(block);
    }

    /// A hole below a live block is what glibc keeps resident on its own;
    /// the trim must hand it back.
    #[test]
    fn a_trim_returns_a_hole_in_the_heap() {
        let hole: Vec<Box<[u8; 1024]>> = (0..64 * 1024).map(|_| Box::new([7u8; 1024])).collect();
        let pin = Box::new([1u8; 1024]);
        drop(hole);
        let trimmer = Trimmer::default();
        let fell = trimmer.trim_once();
        assert!(fell >= 32 << 20, "the trim returned only {fell} bytes");
        assert_eq!(trimmer.trimmed.get(), fell);
        assert_eq!(trimmer.trims.get(), 1);
        drop(pin);
    }
}
