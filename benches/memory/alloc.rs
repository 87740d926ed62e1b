//! A global allocator that counts the bytes and blocks live, and the
//! process's resident set, so each holder's share can be read as a delta.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

static BYTES: AtomicI64 = AtomicI64::new(0);
static ALLOCS: AtomicI64 = AtomicI64::new(0);
/// The most bytes live since the last `reset_peak`.
static PEAK: AtomicI64 = AtomicI64::new(0);

fn count(bytes: i64) {
    let now = BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Starts a new high-water mark at the bytes live now.
pub fn reset_peak() {
    PEAK.store(BYTES.load(Ordering::SeqCst), Ordering::SeqCst);
}

/// The high-water mark of bytes live since `reset_peak`.
pub fn peak() -> i64 {
    PEAK.load(Ordering::SeqCst)
}

pub struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as i64);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as i64);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        q
    }
}

/// Bytes and blocks live, and the resident set, at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Live {
    pub bytes: i64,
    pub allocs: i64,
    pub rss: i64,
}

impl Live {
    pub fn now() -> Self {
        Self {
            bytes: BYTES.load(Ordering::SeqCst),
            allocs: ALLOCS.load(Ordering::SeqCst),
            rss: rss(),
        }
    }

    pub fn since(&self, from: &Live) -> Live {
        Live {
            bytes: self.bytes - from.bytes,
            allocs: self.allocs - from.allocs,
            rss: self.rss - from.rss,
        }
    }
}

/// The resident set in bytes, from /proc/self/statm (0 where there is none).
fn rss() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The heap bytes a clone of `v` allocates.
pub fn heap_of<T: Clone>(v: &T) -> usize {
    let before = BYTES.load(Ordering::SeqCst);
    let copy = v.clone();
    let after = BYTES.load(Ordering::SeqCst);
    drop(copy);
    (after - before).max(0) as usize
}
