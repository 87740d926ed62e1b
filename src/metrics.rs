//! Prometheus metrics: reconciles, failures by error kind, reconcile
//! duration, and what happened to jobs. Each family is registered where it
//! is declared, so none can be declared and never exported.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub reason: String,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_failures: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Reconciles started and not yet finished: how many reconciles' worth
    /// of memory the operator holds at once (see `InFlight`).
    pub reconciles_in_flight: Gauge,
    /// One per transition event, by its reason.
    pub transitions: Family<EventLabels, Counter>,
    pub pods_created: Counter,
    pub preemptions: Counter,
    pub failures: Counter,
    /// Attempts after the first, started after a preemption or a failure.
    pub resumes: Counter,
    /// From the reconcile that found every old pod gone to the new pods
    /// created: the operator's own share of the time to resume.
    pub resume_seconds: Histogram,
    /// Steps redone after an interruption, from the launchers' reports.
    pub steps_lost: Histogram,
    /// Per job, removed when the job is deleted.
    pub save_bytes_per_second: Family<JobLabels, Gauge>,
    /// Per job, removed when the job is deleted.
    pub grace_seconds: Family<JobLabels, Gauge>,
    /// Periodic trims of the heap (see heap.rs), and what they returned.
    pub heap: crate::heap::Trimmer,
}

/// Registers `metric` under `name` and hands it back for the struct.
pub(crate) fn register<M: Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("trainingjob");
        Self {
            reconciles: register(r, "reconciles", "Reconciles run", Counter::default()),
            reconcile_failures: register(
                r,
                "reconcile_failures",
                "Reconciles that failed, by error kind",
                Family::default(),
            ),
            reconcile_duration: register(
                r,
                "reconcile_duration_seconds",
                "Time one reconcile took",
                Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            ),
            reconciles_in_flight: register(
                r,
                "reconciles_in_flight",
                "Reconciles started and not yet finished",
                Gauge::default(),
            ),
            transitions: register(
                r,
                "transitions",
                "Lifecycle transitions, by event reason",
                Family::default(),
            ),
            pods_created: register(
                r,
                "pods_created",
                "Training pods created",
                Counter::default(),
            ),
            preemptions: register(
                r,
                "preemptions",
                "Ranks taken away (eviction, deletion, preemption, node loss); never failures",
                Counter::default(),
            ),
            failures: register(
                r,
                "failures",
                "Trainers that exited non-zero without having been signalled",
                Counter::default(),
            ),
            resumes: register(
                r,
                "resumes",
                "Attempts started after a preemption or a failure",
                Counter::default(),
            ),
            resume_seconds: register(
                r,
                "resume_seconds",
                "Every old pod seen gone to the next attempt's pods created",
                Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            ),
            steps_lost: register(
                r,
                "steps_lost",
                "Steps an interruption made the next attempt redo",
                Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0]),
            ),
            save_bytes_per_second: register(
                r,
                "save_bytes_per_second",
                "Checkpoint save throughput the launcher measured, per job",
                Family::default(),
            ),
            grace_seconds: register(
                r,
                "grace_seconds",
                "terminationGracePeriodSeconds of the current attempt, per job",
                Family::default(),
            ),
            heap: crate::heap::Trimmer::register(r),
        }
    }

    pub fn transition(&self, reason: &str) {
        self.transitions
            .get_or_create(&EventLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_failures
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }

    /// A deleted job's series go with it, so the registry holds live jobs only.
    pub fn forget_job(&self, namespace: &str, name: &str) {
        let job = JobLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.grace_seconds.remove(&job);
        self.save_bytes_per_second.remove(&job);
    }
}

/// Counts one reconcile in `reconciles_in_flight` for as long as it lives,
/// so a reconcile that returns early, fails or is dropped mid-await still
/// leaves the gauge.
pub struct InFlight(Gauge);

impl InFlight {
    pub fn enter(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(r: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, r).unwrap();
        text
    }

    /// The families the README's metrics table names, by their full name.
    fn readme_families() -> Vec<String> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("<!-- metrics -->")
            .nth(1)
            .expect("README.md has a <!-- metrics --> table");
        table
            .lines()
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .map(String::from)
            .collect()
    }

    #[test]
    fn every_family_the_readme_names_is_exported() {
        let mut r = Registry::default();
        let m = Metrics::new(&mut r);
        // Labelled families print only once they hold a series.
        m.reconcile_failed("api");
        m.transition("Preempted");
        let job = JobLabels {
            namespace: "ns".into(),
            name: "j".into(),
        };
        m.grace_seconds.get_or_create(&job).set(30);
        m.save_bytes_per_second.get_or_create(&job).set(1);
        let text = encode(&r);
        let names = readme_families();
        assert!(names.len() >= 12, "README names {names:?}");
        for name in names {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} is in the README but not on /metrics:\n{text}"
            );
        }
    }

    #[test]
    fn a_reconcile_is_in_flight_until_it_is_dropped() {
        let mut r = Registry::default();
        let m = Metrics::new(&mut r);
        let a = InFlight::enter(&m.reconciles_in_flight);
        let b = InFlight::enter(&m.reconciles_in_flight);
        assert_eq!(m.reconciles_in_flight.get(), 2);
        drop(a);
        assert!(encode(&r).contains("trainingjob_reconciles_in_flight 1\n"));
        drop(b);
        assert_eq!(m.reconciles_in_flight.get(), 0);
    }

    #[test]
    fn a_deleted_jobs_series_are_removed() {
        let mut r = Registry::default();
        let m = Metrics::new(&mut r);
        let job = JobLabels {
            namespace: "ns".into(),
            name: "j".into(),
        };
        m.grace_seconds.get_or_create(&job).set(30);
        assert!(encode(&r).contains("name=\"j\""));
        m.forget_job("ns", "j");
        assert!(!encode(&r).contains("name=\"j\""));
    }
}
