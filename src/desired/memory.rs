//! How big a memory-backed emptyDir's tmpfs is (pure), as kubelet sizes it: the smallest of
//! the node's allocatable memory, the pod's memory limit (when every container sets one) and
//! the volume's `sizeLimit`. Without any of them the kernel would give it half of RAM.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::model::quantity::parse_bytes;
use crate::model::TmpfsSize;

/// The tmpfs size for an emptyDir of `pod` with `size_limit`, and what decided it.
pub fn tmpfs_size(
    size_limit: Option<u64>,
    pod: &Pod,
    node_memory: Option<u64>,
) -> (Option<u64>, TmpfsSize) {
    let candidates = [
        (node_memory, TmpfsSize::NodeMemory),
        (pod_memory_limit(pod), TmpfsSize::PodMemoryLimit),
        (size_limit, TmpfsSize::SizeLimit),
    ];
    // Later ones win ties, as in kubelet (a sizeLimit equal to the pod's limit is the limit).
    candidates
        .into_iter()
        .filter_map(|(size, source)| Some((size.filter(|s| *s > 0)?, source)))
        .reduce(|best, next| if next.0 <= best.0 { next } else { best })
        .map_or((None, TmpfsSize::KernelDefault), |(size, source)| {
            (Some(size), source)
        })
}

/// The pod's memory limit as its cgroup gets it (kubelet's `PodLimits`): the sum over its
/// containers and its sidecars (init containers that keep running), or what an init container
/// needs beside the sidecars started before it, if that is more; none when any container has
/// no memory limit (a limit of 0 is none). Pod overhead and pod-level resources are not
/// counted.
fn pod_memory_limit(pod: &Pod) -> Option<u64> {
    let spec = pod.spec.as_ref()?;
    let limit = |c: &Container| -> Option<u64> {
        let quantity = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        parse_bytes(&quantity.0).ok().filter(|l| *l > 0)
    };
    let mut sidecars = 0u64;
    let mut init = 0u64;
    for container in spec.init_containers.iter().flatten() {
        let own = limit(container)?;
        if container.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.checked_add(own)?;
            init = init.max(sidecars);
        } else {
            init = init.max(sidecars.checked_add(own)?);
        }
    }
    let mut sum = sidecars;
    for container in &spec.containers {
        sum = sum.checked_add(limit(container)?)?;
    }
    Some(sum.max(init))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(limits: &[Option<&str>]) -> Pod {
        let containers: Vec<serde_json::Value> = limits
            .iter()
            .enumerate()
            .map(|(i, limit)| match limit {
                Some(l) => serde_json::json!({"name": format!("c{i}"), "resources": {"limits": {"memory": l}}}),
                None => serde_json::json!({"name": format!("c{i}")}),
            })
            .collect();
        serde_json::from_value(serde_json::json!({"spec": {"containers": containers}})).unwrap()
    }

    #[test]
    fn the_smallest_of_node_memory_pod_limit_and_size_limit_sizes_the_tmpfs() {
        const MI: u64 = 1 << 20;
        let limited = pod(&[Some("256Mi"), Some("256Mi")]);
        let unlimited = pod(&[Some("256Mi"), None]);
        let cases = [
            (
                None,
                &limited,
                Some(8192 * MI),
                (Some(512 * MI), TmpfsSize::PodMemoryLimit),
            ),
            (
                Some(64 * MI),
                &limited,
                Some(8192 * MI),
                (Some(64 * MI), TmpfsSize::SizeLimit),
            ),
            (
                Some(1024 * MI),
                &limited,
                Some(8192 * MI),
                (Some(512 * MI), TmpfsSize::PodMemoryLimit),
            ),
            (
                None,
                &unlimited,
                Some(8192 * MI),
                (Some(8192 * MI), TmpfsSize::NodeMemory),
            ),
            (None, &unlimited, None, (None, TmpfsSize::KernelDefault)),
            (
                Some(64 * MI),
                &unlimited,
                None,
                (Some(64 * MI), TmpfsSize::SizeLimit),
            ),
        ];
        for (size_limit, pod, node, want) in cases {
            assert_eq!(
                tmpfs_size(size_limit, pod, node),
                want,
                "{size_limit:?} {node:?}"
            );
        }
        // A sidecar (an init container that keeps running) counts with the containers; a
        // limit of 0 is no limit.
        let with_sidecar: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "initContainers": [{"name": "s", "restartPolicy": "Always", "resources": {"limits": {"memory": "64Mi"}}}],
            "containers": [{"name": "c", "resources": {"limits": {"memory": "128Mi"}}}],
        }}))
        .unwrap();
        assert_eq!(pod_memory_limit(&with_sidecar), Some(192 * MI));
        assert_eq!(pod_memory_limit(&pod(&[Some("0"), Some("1Gi")])), None);
    }
}
