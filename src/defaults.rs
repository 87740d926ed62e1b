//! What a platform team sets once for every job (the operator's flags, the
//! chart's values) and a job's spec may override, and the notice each
//! cloud documents for its spot capacity.

use crate::api::{SpotProvider, TrainingJob};

/// The notice when nothing names one: Azure's, and GKE's whole shutdown.
pub const NOTICE_SECONDS: i32 = 30;

/// The time a cloud documents for an ordinary pod between its spot
/// notice and the VM going away.
pub fn documented_notice_seconds(provider: SpotProvider) -> i32 {
    match provider {
        // GKE Spot VMs get 30 s of graceful node shutdown, of which
        // ordinary pods get 15 s and system pods the rest; node pools on
        // GKE 1.35+ can raise it to 120 s.
        // https://cloud.google.com/kubernetes-engine/docs/concepts/spot-vms#termination
        SpotProvider::Gke => 15,
        // EC2 Spot: a two-minute interruption notice.
        // https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html
        SpotProvider::Eks | SpotProvider::Karpenter => 120,
        // Azure Spot: Scheduled Events give at least 30 s before eviction.
        // https://learn.microsoft.com/azure/virtual-machines/linux/scheduled-events
        SpotProvider::Aks => 30,
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Defaults {
    /// Notice budget for jobs whose spec gives none; without it, the spot
    /// provider's documented notice, then NOTICE_SECONDS.
    pub notice_seconds: Option<i32>,
    /// Spot provider for jobs whose spec names none.
    pub spot: Option<SpotProvider>,
}

impl Defaults {
    /// The spec's notice, the operator's, the provider's documented one, or
    /// NOTICE_SECONDS, in that order.
    pub fn notice_seconds(&self, job: &TrainingJob) -> i32 {
        job.spec
            .preemption
            .notice_seconds
            .or(self.notice_seconds)
            .or(self.spot(job).map(documented_notice_seconds))
            .unwrap_or(NOTICE_SECONDS)
    }

    pub fn spot(&self, job: &TrainingJob) -> Option<SpotProvider> {
        job.spec.spot.as_ref().map(|s| s.provider).or(self.spot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SpotSpec;

    fn job() -> TrainingJob {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
            "spec": {"checkpoint": {"claimName": "c"}, "template": {}}
        }))
        .unwrap()
    }

    #[test]
    fn the_spec_wins_over_the_operators_defaults() {
        let mut job = job();
        let d = Defaults {
            notice_seconds: Some(120),
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
    }

    #[test]
    fn without_a_notice_the_providers_documented_one_applies() {
        let mut job = job();
        assert_eq!(Defaults::default().notice_seconds(&job), NOTICE_SECONDS);
        for (provider, notice) in [
            (SpotProvider::Gke, 15),
            (SpotProvider::Eks, 120),
            (SpotProvider::Karpenter, 120),
            (SpotProvider::Aks, 30),
        ] {
            job.spec.spot = Some(SpotSpec { provider });
            assert_eq!(
                Defaults::default().notice_seconds(&job),
                notice,
                "{provider:?}"
            );
        }
        let operator = Defaults {
            notice_seconds: Some(90),
            spot: None,
        };
        assert_eq!(
            operator.notice_seconds(&job),
            90,
            "the operator's flag wins"
        );
    }
}
