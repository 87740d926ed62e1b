//! How long a trainer needs between SIGTERM and exit, and how often it should
//! checkpoint when that does not fit in the preemption notice.
//!
//! A grace period is an upper bound: a trainer that has saved exits at once.
//! So while nothing is measured the whole notice may be used; measurements
//! say when a save cannot fit, and let a hung trainer be cut off sooner.

/// Measured saves take longer than their estimate; this covers the spread
/// between the p95 save and a save under a loaded node.
pub const SAFETY_FACTOR: f64 = 1.5;
/// Finishing the current step and the launcher's own exit path.
pub const OVERHEAD_SECONDS: f64 = 3.0;
/// A raw fsync'd write probe ran 2.5x faster than a real `torch.save` of a
/// GPU-resident state on the same volume (1.66 vs 0.66 GB/s measured on an H100 node), so a
/// probe figure is discounted by this much before use.
pub const PROBE_DISCOUNT: f64 = 2.5;
/// Write throughput assumed for a size hint when nothing was measured: a
/// network volume on a busy node, on the slow side on purpose.
pub const ASSUMED_BYTES_PER_SECOND: f64 = 100.0 * 1024.0 * 1024.0;
/// Mean time between preemptions assumed before the job has seen one.
pub const DEFAULT_MTBF_SECONDS: f64 = 2.0 * 3600.0;

/// What is known about the cost of a save.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaveEvidence {
    /// p95 of measured save durations.
    pub measured_p95_seconds: Option<f64>,
    /// Size of the last complete checkpoint.
    pub last_bytes: Option<u64>,
    /// Throughput of the launcher's write probe.
    pub probe_bytes_per_second: Option<f64>,
    /// The spec's checkpoint.sizeHint.
    pub size_hint_bytes: Option<u64>,
}

/// Where an estimate came from, for events and conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    MeasuredSaves,
    Probe,
    SizeHint,
    /// Nothing to go on: the whole notice is used.
    Notice,
}

impl std::fmt::Display for Basis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Basis::MeasuredSaves => "measured saves",
            Basis::Probe => "the volume's write probe",
            Basis::SizeHint => "the checkpoint size hint",
            Basis::Notice => "the preemption notice (nothing measured yet)",
        })
    }
}

/// The grace period for an attempt's pods.
#[derive(Clone, Debug, PartialEq)]
pub struct Grace {
    /// terminationGracePeriodSeconds to set.
    pub seconds: i64,
    /// Estimated seconds of one save, when anything is known.
    pub save_seconds: Option<f64>,
    /// Seconds the trainer needs in all (save x safety + overhead).
    pub needed_seconds: Option<i64>,
    pub basis: Basis,
    /// By how much the need exceeds the notice, when it does.
    pub short_by_seconds: Option<i64>,
}

impl SaveEvidence {
    /// The best estimate of one save's duration, and what it rests on.
    pub fn save_seconds(&self) -> Option<(f64, Basis)> {
        if let Some(p95) = self
            .measured_p95_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
        {
            return Some((p95, Basis::MeasuredSaves));
        }
        let bytes = self.last_bytes.or(self.size_hint_bytes)? as f64;
        if let Some(bps) = self
            .probe_bytes_per_second
            .filter(|b| b.is_finite() && *b > 0.0)
        {
            return Some((bytes / (bps / PROBE_DISCOUNT), Basis::Probe));
        }
        self.size_hint_bytes
            .map(|hint| (hint as f64 / ASSUMED_BYTES_PER_SECOND, Basis::SizeHint))
    }
}

/// Sizes the grace period: save x safety + overhead, within
/// [min_grace, notice]; the whole notice while nothing is known.
pub fn grace(evidence: &SaveEvidence, notice_seconds: i64, min_grace_seconds: i64) -> Grace {
    let notice = notice_seconds.max(1);
    let floor = min_grace_seconds.clamp(1, notice);
    match evidence.save_seconds() {
        None => Grace {
            seconds: notice,
            save_seconds: None,
            needed_seconds: None,
            basis: Basis::Notice,
            short_by_seconds: None,
        },
        Some((save, basis)) => {
            let needed = (save * SAFETY_FACTOR + OVERHEAD_SECONDS).ceil();
            let needed = if needed.is_finite() {
                needed.min(i64::MAX as f64) as i64
            } else {
                i64::MAX
            };
            Grace {
                seconds: needed.clamp(floor, notice),
                save_seconds: Some(save),
                needed_seconds: Some(needed),
                basis,
                short_by_seconds: (needed > notice).then(|| needed - notice),
            }
        }
    }
}

/// Young/Daly: the checkpoint interval that minimises expected lost work
/// plus save overhead, about sqrt(2 x save cost x mean time between
/// preemptions). Never shorter than the save itself.
pub fn checkpoint_interval_seconds(save_seconds: f64, mtbf_seconds: f64) -> i64 {
    let save = save_seconds.max(0.0);
    let mtbf = if mtbf_seconds.is_finite() && mtbf_seconds > 0.0 {
        mtbf_seconds
    } else {
        DEFAULT_MTBF_SECONDS
    };
    let interval = (2.0 * save * mtbf).sqrt().max(save).max(1.0);
    interval.ceil().min(i64::MAX as f64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_nothing_known_the_whole_notice_is_used() {
        let g = grace(&SaveEvidence::default(), 30, 5);
        assert_eq!(g.seconds, 30);
        assert_eq!(g.basis, Basis::Notice);
        assert_eq!(g.short_by_seconds, None);
    }

    #[test]
    fn a_measured_save_sets_the_grace_with_safety_and_overhead() {
        let e = SaveEvidence {
            measured_p95_seconds: Some(10.0),
            ..Default::default()
        };
        let g = grace(&e, 120, 5);
        assert_eq!(g.seconds, 18); // 10 x 1.5 + 3
        assert_eq!(g.basis, Basis::MeasuredSaves);
    }

    #[test]
    fn a_fast_save_is_held_at_the_minimum_grace() {
        let e = SaveEvidence {
            measured_p95_seconds: Some(0.1),
            ..Default::default()
        };
        assert_eq!(grace(&e, 30, 5).seconds, 5);
    }

    #[test]
    fn a_save_longer_than_the_notice_says_by_how_much() {
        // A measured H100 figure: a 14 GB torch.save took 21.1 s.
        let e = SaveEvidence {
            measured_p95_seconds: Some(21.1),
            ..Default::default()
        };
        let g = grace(&e, 30, 5);
        assert_eq!(g.seconds, 30);
        assert_eq!(g.needed_seconds, Some(35)); // ceil(21.1 x 1.5 + 3)
        assert_eq!(g.short_by_seconds, Some(5));
    }

    #[test]
    fn a_probe_is_discounted_before_use() {
        let e = SaveEvidence {
            last_bytes: None,
            size_hint_bytes: Some(14_000_000_000),
            probe_bytes_per_second: Some(1.66e9),
            ..Default::default()
        };
        let (save, basis) = e.save_seconds().unwrap();
        assert_eq!(basis, Basis::Probe);
        assert!((save - 14e9 / (1.66e9 / 2.5)).abs() < 1e-9);
    }

    #[test]
    fn a_size_hint_alone_assumes_a_slow_volume() {
        let e = SaveEvidence {
            size_hint_bytes: Some(1024 * 1024 * 1024),
            ..Default::default()
        };
        let g = grace(&e, 60, 5);
        assert_eq!(g.basis, Basis::SizeHint);
        assert_eq!(g.seconds, 19); // 1 GiB at 100 MiB/s = 10.24 s; x1.5 + 3 = 18.36
    }

    #[test]
    fn measured_saves_win_over_probe_and_hint() {
        let e = SaveEvidence {
            measured_p95_seconds: Some(2.0),
            probe_bytes_per_second: Some(1e6),
            size_hint_bytes: Some(1 << 40),
            ..Default::default()
        };
        assert_eq!(e.save_seconds().unwrap().1, Basis::MeasuredSaves);
    }

    #[test]
    fn nonsense_figures_do_not_panic() {
        let e = SaveEvidence {
            measured_p95_seconds: Some(f64::NAN),
            probe_bytes_per_second: Some(0.0),
            size_hint_bytes: Some(u64::MAX),
            ..Default::default()
        };
        let g = grace(&e, 30, 50);
        assert_eq!(g.seconds, 30);
        assert!(checkpoint_interval_seconds(f64::INFINITY, f64::NAN) > 0);
    }

    #[test]
    fn young_daly_interval() {
        // sqrt(2 x 21.1 x 7200) = 551.2
        assert_eq!(checkpoint_interval_seconds(21.1, 7200.0), 552);
        assert_eq!(checkpoint_interval_seconds(0.0, 7200.0), 1);
        // A save longer than the optimum: checkpoint back to back at least.
        assert_eq!(checkpoint_interval_seconds(100.0, 10.0), 100);
    }
}
