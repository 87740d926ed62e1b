//! /dev/shm sizing. A memory-backed emptyDir's pages count against the pod's
//! memory limit, so the size is checked against it, not only set.

use crate::api::SharedMemorySpec;
use crate::quantity::{self, BadQuantity};

/// Room beyond the DataLoader's batches: pinned-memory staging and NCCL's
/// own shared-memory segments live in /dev/shm too.
pub const HEADROOM_BYTES: u64 = 256 << 20;

/// Bytes of /dev/shm the spec asks for.
pub fn size_bytes(spec: &SharedMemorySpec) -> Result<Option<u64>, BadQuantity> {
    if let Some(limit) = &spec.size_limit {
        return quantity::bytes(limit).map(Some);
    }
    match &spec.data_loader {
        None => Ok(None),
        Some(dl) => {
            let batch = quantity::bytes(&dl.batch_bytes)?;
            let batches =
                u64::from(dl.workers.max(0) as u32) * u64::from(dl.prefetch_factor.max(1) as u32);
            // In flight: every worker's prefetched batches plus the one being
            // consumed, with 25% for allocator slack.
            let bytes = batch.saturating_mul(batches.saturating_add(1));
            Ok(Some(
                bytes
                    .saturating_add(bytes / 4)
                    .saturating_add(HEADROOM_BYTES),
            ))
        }
    }
}

/// Why a /dev/shm size cannot run under a memory limit, if it cannot.
pub fn check_against_memory_limit(
    shm_bytes: u64,
    memory_limit_bytes: Option<u64>,
) -> Result<(), String> {
    match memory_limit_bytes {
        Some(limit) if shm_bytes >= limit => Err(format!(
            "/dev/shm of {} does not fit in the trainer's memory limit of {}: tmpfs pages count against the limit, \
             so the trainer would be OOM-killed as /dev/shm fills. Raise resources.limits.memory above the /dev/shm size \
             plus what the trainer itself uses, or shrink sharedMemory",
            quantity::format_bytes(shm_bytes),
            quantity::format_bytes(limit)
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DataLoaderSpec;

    #[test]
    fn an_explicit_size_is_used_as_given() {
        let spec = SharedMemorySpec {
            size_limit: Some("16Gi".into()),
            data_loader: None,
        };
        assert_eq!(size_bytes(&spec), Ok(Some(16 << 30)));
    }

    #[test]
    fn a_dataloader_size_covers_every_prefetched_batch() {
        let spec = SharedMemorySpec {
            size_limit: None,
            data_loader: Some(DataLoaderSpec {
                workers: 8,
                prefetch_factor: 2,
                batch_bytes: "256Mi".into(),
            }),
        };
        // (8 x 2 + 1) x 256Mi = 4352Mi, +25% = 5440Mi, +256Mi headroom
        assert_eq!(size_bytes(&spec), Ok(Some(5696 << 20)));
    }

    #[test]
    fn zero_workers_still_leave_room_for_the_main_process() {
        let spec = SharedMemorySpec {
            size_limit: None,
            data_loader: Some(DataLoaderSpec {
                workers: 0,
                prefetch_factor: 2,
                batch_bytes: "100Mi".into(),
            }),
        };
        assert_eq!(size_bytes(&spec), Ok(Some((125 << 20) + HEADROOM_BYTES)));
    }

    #[test]
    fn shm_at_or_over_the_memory_limit_is_refused_with_what_to_change() {
        let err = check_against_memory_limit(16 << 30, Some(8 << 30)).unwrap_err();
        assert!(err.contains("16Gi"), "{err}");
        assert!(err.contains("8Gi"), "{err}");
        assert!(err.contains("Raise resources.limits.memory"), "{err}");
        assert!(check_against_memory_limit(1 << 30, Some(8 << 30)).is_ok());
        assert!(check_against_memory_limit(1 << 30, None).is_ok());
    }
}
