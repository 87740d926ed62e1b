//! Prometheus metrics: reconciles, failures by error kind, reconcile
//! duration, and what happened to jobs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
    /// One per transition event: Started, Running, Preempted, TrainerFailed,
    /// Resuming, Succeeded, BackoffLimitExceeded, ...
    pub transitions: Family<EventLabels, Counter>,
    pub pods_created: Counter,
    pub preemptions: Counter,
    pub failures: Counter,
    /// Attempts after the first, started after a preemption or a failure.
    pub resumes: Counter,
    /// From the reconcile that found every old pod gone to the new pods
    /// created: the operator's own share of the time to resume.
    pub resume_seconds: Histogram,
    /// Steps redone after a preemption, from the launchers' reports.
    pub steps_lost: Histogram,
    pub save_bytes_per_second: Family<JobLabels, Gauge>,
    pub grace_seconds: Family<JobLabels, Gauge>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            reconcile_failures: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            transitions: Family::default(),
            pods_created: Counter::default(),
            preemptions: Counter::default(),
            failures: Counter::default(),
            resumes: Counter::default(),
            resume_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            steps_lost: Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0]),
            save_bytes_per_second: Family::default(),
            grace_seconds: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("trainingjob");
        r.register("reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed, by error kind",
            m.reconcile_failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            m.reconcile_duration.clone(),
        );
        r.register(
            "transitions",
            "Lifecycle transitions, by event reason",
            m.transitions.clone(),
        );
        r.register(
            "pods_created",
            "Training pods created",
            m.pods_created.clone(),
        );
        r.register(
            "grace_seconds",
            "terminationGracePeriodSeconds of the current attempt",
            m.grace_seconds.clone(),
        );
        m
    }
}
