//! What a platform team sets once for every job (the operator's flags, the
//! chart's values) and a job's spec may override.

use crate::api::{SpotProvider, TrainingJob};

/// The preemption notice of the most common spot offers (GKE, Azure).
pub const NOTICE_SECONDS: i32 = 30;

#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// Notice budget for jobs whose spec gives none.
    pub notice_seconds: i32,
    /// Spot provider for jobs whose spec names none.
    pub spot: Option<SpotProvider>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            notice_seconds: NOTICE_SECONDS,
            spot: None,
        }
    }
}

impl Defaults {
    pub fn notice_seconds(&self, job: &TrainingJob) -> i32 {
        job.spec
            .preemption
            .notice_seconds
            .unwrap_or(self.notice_seconds)
    }

    pub fn spot(&self, job: &TrainingJob) -> Option<SpotProvider> {
        job.spec.spot.as_ref().map(|s| s.provider).or(self.spot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SpotSpec;

    #[test]
    fn the_spec_wins_over_the_operators_defaults() {
        let mut job: TrainingJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
            "spec": {"checkpoint": {"claimName": "c"}, "template": {}}
        }))
        .unwrap();
        let d = Defaults {
            notice_seconds: 120,
            spot: Some(SpotProvider::Eks),
        };
        assert_eq!(d.notice_seconds(&job), 120);
        assert_eq!(d.spot(&job), Some(SpotProvider::Eks));
        job.spec.preemption.notice_seconds = Some(25);
        job.spec.spot = Some(SpotSpec {
            provider: SpotProvider::Gke,
        });
        assert_eq!(d.notice_seconds(&job), 25);
        assert_eq!(d.spot(&job), Some(SpotProvider::Gke));
        assert_eq!(
            Defaults::default().notice_seconds(&TrainingJob {
                spec: {
                    let mut s = job.spec.clone();
                    s.preemption.notice_seconds = None;
                    s
                },
                ..job.clone()
            }),
            30
        );
    }
}
