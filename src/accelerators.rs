//! The accelerators a training pod may ask for as extended resources. Each
//! gets what the ExtendedResourceToleration admission plugin would give it:
//! requests equal to limits, and a toleration of the node pool's taint of
//! the same name. Devices asked for through Dynamic Resource Allocation (the
//! pod's `resourceClaims`) are the template's own and pass through as given.

use k8s_openapi::api::core::v1::{Container, Toleration};
use std::collections::BTreeMap;

/// Extended resources that name an accelerator.
pub const ACCELERATORS: &[&str] = &[
    "nvidia.com/gpu",
    "amd.com/gpu",
    "google.com/tpu",
    "aws.amazon.com/neuron",
    "aws.amazon.com/neuroncore",
];
/// Intel names each device kind under one prefix (gpu.intel.com/i915, /xe).
pub const ACCELERATOR_PREFIXES: &[&str] = &["gpu.intel.com/"];

pub fn is_accelerator(resource: &str) -> bool {
    ACCELERATORS.contains(&resource) || ACCELERATOR_PREFIXES.iter().any(|p| resource.starts_with(p))
}

/// Makes the container's accelerator requests equal its limits (a template
/// that gives only one gets the other) and returns the accelerators it uses.
pub fn match_requests_and_limits(c: &mut Container) -> Vec<String> {
    let Some(res) = c.resources.as_mut() else {
        return Vec::new();
    };
    let limits = res.limits.get_or_insert_with(BTreeMap::new);
    let requests = res.requests.get_or_insert_with(BTreeMap::new);
    let names: Vec<String> = limits
        .keys()
        .chain(requests.keys())
        .filter(|k| is_accelerator(k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for name in &names {
        match (limits.get(name).cloned(), requests.get(name).cloned()) {
            (Some(l), None) => {
                requests.insert(name.clone(), l);
            }
            (None, Some(r)) => {
                limits.insert(name.clone(), r);
            }
            _ => {}
        }
    }
    if limits.is_empty() {
        res.limits = None;
    }
    if res.requests.as_ref().is_some_and(|r| r.is_empty()) {
        res.requests = None;
    }
    names
}

/// Tolerates the taint accelerator node pools commonly carry:
/// `<resource>:NoSchedule`.
pub fn toleration(resource: &str) -> Toleration {
    Toleration {
        key: Some(resource.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn container(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect()
            })
        };
        Container {
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                limits: map(limits),
                requests: map(requests),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_accelerator_gets_requests_equal_to_limits() {
        for name in [
            "nvidia.com/gpu",
            "amd.com/gpu",
            "google.com/tpu",
            "aws.amazon.com/neuron",
            "gpu.intel.com/i915",
        ] {
            let mut c = container(&[(name, "4"), ("memory", "1Gi")], &[]);
            assert_eq!(match_requests_and_limits(&mut c), [name]);
            let r = c.resources.unwrap();
            assert_eq!(r.requests.unwrap()[name], Quantity("4".into()));
            assert_eq!(
                r.limits.unwrap()["memory"],
                Quantity("1Gi".into()),
                "others untouched"
            );
        }
        let mut only_request = container(&[], &[("google.com/tpu", "8")]);
        match_requests_and_limits(&mut only_request);
        assert_eq!(
            only_request.resources.unwrap().limits.unwrap()["google.com/tpu"],
            Quantity("8".into())
        );
    }

    #[test]
    fn cpu_and_memory_are_not_accelerators() {
        let mut c = container(&[("cpu", "2"), ("memory", "1Gi")], &[]);
        assert!(match_requests_and_limits(&mut c).is_empty());
        assert!(c.resources.unwrap().requests.is_none());
    }
}
