//! Turns manifests plus bindings into the desired volume list (pure): which pods are ours, and
//! what each of their volumes needs on this host.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod, Volume};

use super::binder::Bindings;
use super::manifest::Manifests;
use super::{DesiredState, NodeConfig, WaitingVolume};
use crate::model::names::{check_component, check_host_path};
use crate::model::quantity::parse_bytes;
use crate::model::{DesiredVolume, MountSpec, PathType, Plugin, PodRef, VolumeKey};

/// Pods of this node that still need their volumes, with their refs.
pub fn our_pods<'a>(manifests: &'a Manifests, node: &NodeConfig) -> Vec<(PodRef, &'a Pod)> {
    manifests
        .pods
        .values()
        .filter(|pod| {
            let spec_node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("");
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("");
            (spec_node.is_empty() || spec_node == node.name)
                && !matches!(phase, "Succeeded" | "Failed")
        })
        .map(|pod| (pod_ref(pod), pod))
        .collect()
}

/// A pod's identity; without `metadata.uid` a stable uid is derived from namespace/name.
pub fn pod_ref(pod: &Pod) -> PodRef {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_else(|| {
        let seed = format!("volumed:pod/{namespace}/{name}");
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, seed.as_bytes()).to_string()
    });
    PodRef {
        namespace,
        name,
        uid,
    }
}

/// Claim keys (`namespace/name`) used by the given pods.
pub fn consumed_claims(pods: &[(PodRef, &Pod)]) -> BTreeSet<String> {
    pods.iter()
        .flat_map(|(pod, spec)| {
            volumes_of(spec)
                .iter()
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| format!("{}/{}", pod.namespace, c.claim_name))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn volumes_of(pod: &Pod) -> &[Volume] {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

/// Builds the desired volumes of our pods; `complete` and `problems` are left to the caller.
pub fn resolve(manifests: &Manifests, bindings: &Bindings, node: &NodeConfig) -> DesiredState {
    let mut state = DesiredState {
        warnings: manifests.warnings.clone(),
        ..Default::default()
    };
    for (pod, spec) in our_pods(manifests, node) {
        if let Err(err) = check_component("pod uid", &pod.uid) {
            state.problems.push(format!("pod {pod}: {err}"));
            continue;
        }
        if let Some(other) = state.pods.get(&pod.uid) {
            state.problems.push(format!(
                "pods {other} and {pod} share uid {}; give one a different metadata.uid",
                pod.uid
            ));
            continue;
        }
        state.pods.insert(pod.uid.clone(), pod.clone());
        let context = Context {
            manifests,
            bindings,
            node,
            pod: &pod,
        };
        for volume in volumes_of(spec) {
            match context.volume(volume) {
                Ok(desired) => {
                    state.volumes.insert(desired.key.clone(), desired);
                }
                Err((reason, blocking)) => state.waiting.push(WaitingVolume {
                    pod: pod.clone(),
                    volume_name: volume.name.clone(),
                    reason,
                    blocking,
                }),
            }
        }
    }
    state
}

struct Context<'a> {
    manifests: &'a Manifests,
    bindings: &'a Bindings,
    node: &'a NodeConfig,
    pod: &'a PodRef,
}

/// Why a volume waits, and whether the pod is blocked by it.
type Waiting = (String, bool);

fn blocked(reason: impl Into<String>) -> Waiting {
    (reason.into(), true)
}

impl Context<'_> {
    fn volume(&self, volume: &Volume) -> Result<DesiredVolume, Waiting> {
        check_component("volume name", &volume.name).map_err(|e| blocked(e.to_string()))?;
        let (plugin, name, spec, pv_name) = if let Some(empty_dir) = &volume.empty_dir {
            let spec = match empty_dir.medium.as_deref().unwrap_or("") {
                "" => MountSpec::Directory,
                "Memory" => MountSpec::Tmpfs {
                    size_bytes: match &empty_dir.size_limit {
                        Some(q) => Some(
                            parse_bytes(&q.0)
                                .map_err(|e| blocked(format!("emptyDir.sizeLimit: {e}")))?,
                        ),
                        None => None,
                    },
                },
                other => {
                    return Err(blocked(format!(
                        "emptyDir medium {other:?} is not supported; use \"\" or \"Memory\""
                    )))
                }
            };
            (Plugin::EmptyDir, volume.name.clone(), spec, None)
        } else if let Some(host_path) = &volume.host_path {
            let spec = self.bind(
                &host_path.path,
                host_path.type_.as_deref().unwrap_or(""),
                false,
            )?;
            (Plugin::HostPath, volume.name.clone(), spec, None)
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let (plugin, pv_name, spec) =
                self.claim(&claim.claim_name, claim.read_only.unwrap_or(false))?;
            (plugin, pv_name.clone(), spec, Some(pv_name))
        } else if volume.nfs.is_some() {
            return Err(blocked(
                "NFS volumes are not supported by this version of volumed",
            ));
        } else {
            return Err(("not managed by volumed (configMap, secret, projected and similar volumes belong to the container runtime's agent)".into(), false));
        };
        Ok(DesiredVolume {
            key: VolumeKey {
                pod_uid: self.pod.uid.clone(),
                plugin,
                name,
            },
            pod: self.pod.clone(),
            volume_name: volume.name.clone(),
            pv_name,
            spec,
        })
    }

    fn claim(
        &self,
        claim_name: &str,
        read_only: bool,
    ) -> Result<(Plugin, String, MountSpec), Waiting> {
        let key = format!("{}/{claim_name}", self.pod.namespace);
        let Some(claim) = self.manifests.claims.get(&key) else {
            return Err(blocked(format!(
                "PersistentVolumeClaim {key} does not exist"
            )));
        };
        let Some(pv_name) = self.bindings.bound.get(&key) else {
            let why = self
                .bindings
                .pending
                .get(&key)
                .map_or("not bound", String::as_str);
            return Err(blocked(format!(
                "PersistentVolumeClaim {key} is pending: {why}"
            )));
        };
        check_component("PersistentVolume name", pv_name).map_err(|e| blocked(e.to_string()))?;
        let pv: &PersistentVolume = &self.manifests.volumes[pv_name];
        let pv_spec = pv.spec.clone().unwrap_or_default();
        if pv_spec.volume_mode.as_deref() == Some("Block") {
            return Err(blocked(format!("PersistentVolume {pv_name} has volumeMode Block, which this version of volumed does not support")));
        }
        // A claim that can only be read is mounted read-only, like a readOnly pod volume.
        let claim_modes = claim
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_default();
        let read_only = read_only || claim_modes == ["ReadOnlyMany"];
        if let Some(local) = &pv_spec.local {
            let spec = self.bind(&local.path, "Directory", read_only)?;
            Ok((Plugin::LocalVolume, pv_name.clone(), spec))
        } else if let Some(host_path) = &pv_spec.host_path {
            let spec = self.bind(
                &host_path.path,
                host_path.type_.as_deref().unwrap_or(""),
                read_only,
            )?;
            Ok((Plugin::HostPath, pv_name.clone(), spec))
        } else {
            Err(blocked(format!("PersistentVolume {pv_name} has a volume source this version of volumed does not support (local and hostPath are)")))
        }
    }

    fn bind(&self, path: &str, path_type: &str, read_only: bool) -> Result<MountSpec, Waiting> {
        check_host_path("host path", path).map_err(|e| blocked(e.to_string()))?;
        let expect = PathType::parse(path_type).ok_or_else(|| {
            blocked(format!(
                "hostPath type {path_type:?} is not a Kubernetes HostPathType"
            ))
        })?;
        let source = PathBuf::from(path);
        if !self
            .node
            .host_path_roots
            .iter()
            .any(|root| source.starts_with(root))
        {
            return Err(blocked(format!(
                "host path {path} lies outside the allowed host path roots ({}); see --host-path-root",
                display_roots(&self.node.host_path_roots)
            )));
        }
        Ok(MountSpec::Bind {
            source,
            expect,
            read_only,
        })
    }
}

fn display_roots(roots: &[PathBuf]) -> String {
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
