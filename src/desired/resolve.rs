//! Turns manifests plus bindings into the desired volume list (pure): which pods are ours, and
//! what each of their volumes needs on this host.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeSpec, Pod, Volume};

use super::binder::Bindings;
use super::manifest::Manifests;
use super::memory::tmpfs_size;
use super::{DesiredState, NodeConfig, WaitingVolume};
use crate::model::mount_options::{check_mount_options, check_nfs_options};
use crate::model::names::{check_component, check_host_path, check_nfs_path, check_nfs_server};
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
        .map(|pod| (pod_ref(pod), &**pod))
        .collect()
}

/// Why `--node-name` looks wrong, when it does: no pod in the manifests names this node, while
/// pods name other nodes and some of those have a pod directory here (`has_pod_dir`, by uid).
/// Acting on that would tear down the pods of this host that a wrong name made another
/// node's, so the file source calls such a snapshot incomplete (rule 7, as the API source does
/// for a missing Node). Pods deleted from the manifests are not in it: they are torn down.
pub fn unknown_node_name(
    manifests: &Manifests,
    node: &NodeConfig,
    has_pod_dir: impl Fn(&str) -> bool,
) -> Option<String> {
    let node_of = |pod: &Pod| {
        pod.spec
            .as_ref()?
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
    };
    let named: BTreeSet<String> = manifests
        .pods
        .values()
        .filter_map(|pod| node_of(pod))
        .collect();
    if named.is_empty() || named.contains(&node.name) {
        return None;
    }
    let here: Vec<String> = manifests
        .pods
        .values()
        .filter(|pod| node_of(pod).is_some() && has_pod_dir(&pod_ref(pod).uid))
        .map(|pod| pod_ref(pod).to_string())
        .collect();
    if here.is_empty() {
        return None;
    }
    let names: Vec<String> = named.into_iter().collect();
    Some(format!(
        "no pod in the manifests names this node ({}, from --node-name or the host name), while pods name {}, and {} of them ({}) have their directories on this host; nothing is torn down: run with --node-name set to this node's name as the manifests spell it (if those pods were moved to another node on purpose, give them a new name or metadata.uid, as Kubernetes would: a pod never changes nodes)",
        node.name,
        names.join(", "),
        here.len(),
        here.join(", ")
    ))
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
    let pods = our_pods(manifests, node);
    let mut sharing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut claim_users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (pod, _) in &pods {
        sharing.entry(&pod.uid).or_default().push(pod.to_string());
    }
    // Pods refused for their uid are not counted: they use nothing.
    for (pod, spec) in pods
        .iter()
        .filter(|(p, _)| sharing[p.uid.as_str()].len() == 1)
    {
        for claim in volumes_of(spec)
            .iter()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
        {
            let key = format!("{}/{}", pod.namespace, claim.claim_name);
            let users = claim_users.entry(key).or_default();
            if !users.contains(&pod.to_string()) {
                users.push(pod.to_string());
            }
        }
    }
    for (pod, spec) in &pods {
        let origin = manifests.origin("Pod", &pod.to_string());
        if let Some(origin) = &origin {
            state.pod_origins.insert(pod.uid.clone(), origin.clone());
        }
        if let Err(err) = check_component("pod uid", &pod.uid) {
            state.problems.push(format!("pod {pod}: {err}"));
            continue;
        }
        // Two pods with one uid would share one directory: neither is set up, and what the
        // directory holds stays (its waiting pods hold it), while the rest of the node goes on.
        if let Some(names) = sharing.get(pod.uid.as_str()).filter(|n| n.len() > 1) {
            let reason = format!(
                "pods {} share uid {}; neither gets volumes until one has a different metadata.uid",
                names.join(" and "),
                pod.uid
            );
            let volumes = volumes_of(spec).iter().map(|v| v.name.clone()).collect();
            state.waiting.extend(WaitingVolume::all_of(
                pod,
                volumes,
                &reason,
                origin.as_ref(),
            ));
            continue;
        }
        let (pod, spec) = (pod.clone(), *spec);
        if spec.metadata.deletion_timestamp.is_some() {
            state.terminating.insert(pod.uid.clone());
        }
        state.pods.insert(pod.uid.clone(), pod.clone());
        let context = Context {
            manifests,
            bindings,
            node,
            pod: &pod,
            spec,
            claim_users: &claim_users,
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
                    origin: origin.clone(),
                }),
            }
        }
    }
    state
}

struct Context<'a> {
    manifests: &'a Manifests,
    /// The pods of this node using each claim (`namespace/name`).
    claim_users: &'a BTreeMap<String, Vec<String>>,
    bindings: &'a Bindings,
    node: &'a NodeConfig,
    pod: &'a PodRef,
    spec: &'a Pod,
}

/// Why a volume waits, and whether the pod is blocked by it.
type Waiting = (String, bool);

fn blocked(reason: impl Into<String>) -> Waiting {
    (reason.into(), true)
}

impl Context<'_> {
    fn volume(&self, volume: &Volume) -> Result<DesiredVolume, Waiting> {
        check_component("volume name", &volume.name).map_err(|e| blocked(e.to_string()))?;
        let claim_name = volume
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.clone());
        let (plugin, name, spec, pv_name, block) = if let Some(empty_dir) = &volume.empty_dir {
            let spec = match empty_dir.medium.as_deref().unwrap_or("") {
                "" => MountSpec::Directory,
                "Memory" => {
                    let size_limit = match &empty_dir.size_limit {
                        Some(q) => Some(
                            parse_bytes(&q.0)
                                .map_err(|e| blocked(format!("emptyDir.sizeLimit: {e}")))?,
                        ),
                        None => None,
                    };
                    let (size_bytes, sized_by) =
                        tmpfs_size(size_limit, self.spec, self.node.memory_bytes);
                    MountSpec::Tmpfs {
                        size_bytes,
                        sized_by,
                    }
                }
                other => {
                    return Err(blocked(format!(
                        "emptyDir medium {other:?} is not supported; use \"\" or \"Memory\""
                    )))
                }
            };
            (Plugin::EmptyDir, volume.name.clone(), spec, None, false)
        } else if let Some(host_path) = &volume.host_path {
            let spec = self.bind(
                &host_path.path,
                host_path.type_.as_deref().unwrap_or(""),
                self.mounted_read_only(&volume.name),
            )?;
            (Plugin::HostPath, volume.name.clone(), spec, None, false)
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let (plugin, pv_name, spec) =
                self.claim(&claim.claim_name, claim.read_only.unwrap_or(false))?;
            let block = matches!(spec, MountSpec::BlockDevice { .. });
            self.check_usage(&volume.name, block)?;
            (plugin, pv_name.clone(), spec, Some(pv_name), block)
        } else if let Some(nfs) = &volume.nfs {
            let spec = nfs_spec(&nfs.server, &nfs.path, &[], nfs.read_only.unwrap_or(false))?;
            (Plugin::Nfs, volume.name.clone(), spec, None, false)
        } else {
            return Err(("not managed by volumed (configMap, secret, projected and similar volumes belong to the container runtime's agent)".into(), false));
        };
        Ok(DesiredVolume {
            key: VolumeKey {
                pod_uid: self.pod.uid.clone(),
                plugin,
                name,
                block,
            },
            pod: self.pod.clone(),
            volume_name: volume.name.clone(),
            pv_name,
            claim: claim_name,
            spec,
        })
    }

    /// True when every container that mounts the volume mounts it `readOnly` (and one does):
    /// then the bind itself is read-only, as the container's view would be.
    fn mounted_read_only(&self, volume: &str) -> bool {
        let mut mounts = self.containers().flat_map(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == volume)
        });
        let mut any = false;
        let all = mounts.all(|m| {
            any = true;
            m.read_only == Some(true)
        });
        any && all
    }

    /// The pod's containers and init containers.
    fn containers(&self) -> impl Iterator<Item = &k8s_openapi::api::core::v1::Container> {
        self.spec.spec.iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
    }

    /// The volume's mode must match how the containers use it: volumeMounts for a
    /// filesystem, volumeDevices for a raw block volume.
    fn check_usage(&self, volume: &str, block: bool) -> Result<(), Waiting> {
        let (mut as_fs, mut as_device) = (false, false);
        for container in self.containers() {
            as_fs |= container
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == volume);
            as_device |= container
                .volume_devices
                .iter()
                .flatten()
                .any(|d| d.name == volume);
        }
        match (block, as_fs, as_device) {
            (true, true, _) => Err(blocked(format!("volume {volume} has volumeMode Block but a container mounts it as a filesystem; use volumeDevices"))),
            (false, _, true) => Err(blocked(format!("volume {volume} has volumeMode Filesystem but a container asks for it as a device; use volumeMounts"))),
            _ => Ok(()),
        }
    }

    fn claim(
        &self,
        claim_name: &str,
        read_only: bool,
    ) -> Result<(Plugin, String, MountSpec), Waiting> {
        let key = format!("{}/{claim_name}", self.pod.namespace);
        let Some(claim) = self.manifests.claims.get(&key) else {
            return Err(blocked(
                self.manifests
                    .unread_note("PersistentVolumeClaim", &key)
                    .unwrap_or_else(|| format!("PersistentVolumeClaim {key} does not exist")),
            ));
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
        let pv: &PersistentVolume = self.manifests.volumes.get(pv_name).ok_or_else(|| {
            blocked(format!(
                "PersistentVolumeClaim {key} is bound to PersistentVolume {pv_name}, which is not defined"
            ))
        })?;
        let no_spec = Default::default();
        let pv_spec: &PersistentVolumeSpec = pv.spec.as_ref().unwrap_or(&no_spec);
        // A claim that can only be read is mounted read-only, like a readOnly pod volume.
        let claim_modes = claim
            .spec
            .as_ref()
            .and_then(|s| s.access_modes.clone())
            .unwrap_or_default();
        // As the API server admits it: one pod at a time for a ReadWriteOncePod claim.
        let users = self.claim_users.get(&key).map_or(&[][..], Vec::as_slice);
        if claim_modes.iter().any(|m| m == "ReadWriteOncePod") && users.len() > 1 {
            return Err(blocked(format!(
                "PersistentVolumeClaim {key} is ReadWriteOncePod, and pods {} all use it; neither gets it until only one does",
                users.join(" and ")
            )));
        }
        let read_only = read_only || claim_modes == ["ReadOnlyMany"];
        if let Some(local) = &pv_spec.local {
            let path = self.host_path(&local.path, true, read_only)?;
            let spec = if pv_spec.volume_mode.as_deref() == Some("Block") {
                MountSpec::BlockDevice { path, read_only }
            } else {
                let mount_options = pv_spec.mount_options.clone().unwrap_or_default();
                check_mount_options(&mount_options)
                    .map_err(|e| blocked(format!("PersistentVolume {pv_name}: {e}")))?;
                let fs_type = local.fs_type.clone().unwrap_or_else(|| "ext4".into());
                check_component("fsType", &fs_type).map_err(|e| blocked(e.to_string()))?;
                MountSpec::Local {
                    path,
                    fs_type,
                    mount_options,
                    read_only,
                }
            };
            Ok((Plugin::LocalVolume, pv_name.clone(), spec))
        } else if let Some(nfs) = &pv_spec.nfs {
            let options = pv_spec.mount_options.clone().unwrap_or_default();
            let read_only = read_only || nfs.read_only.unwrap_or(false);
            let spec = nfs_spec(&nfs.server, &nfs.path, &options, read_only)
                .map_err(|(why, b)| (format!("PersistentVolume {pv_name}: {why}"), b))?;
            Ok((Plugin::Nfs, pv_name.clone(), spec))
        } else if pv_spec.volume_mode.as_deref() == Some("Block") {
            Err(blocked(format!("PersistentVolume {pv_name} has volumeMode Block; only local volumes can be raw block volumes")))
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
        let source = self.host_path(path, false, read_only)?;
        let expect = PathType::parse(path_type).ok_or_else(|| {
            blocked(format!(
                "hostPath type {path_type:?} is not a Kubernetes HostPathType"
            ))
        })?;
        Ok(MountSpec::Bind {
            source,
            expect,
            read_only,
        })
    }

    /// A host path from an object: absolute, normal, and inside the allowed roots. Only a
    /// local PV (`local_device`) may also name a device node under /dev; the executor then
    /// checks it is a block device. A pod's own hostPath never gets that exception.
    fn host_path(
        &self,
        path: &str,
        local_device: bool,
        read_only: bool,
    ) -> Result<PathBuf, Waiting> {
        check_host_path("host path", path).map_err(|e| blocked(e.to_string()))?;
        let source = PathBuf::from(path);
        if local_device && source.starts_with("/dev/") {
            return Ok(source);
        }
        self.node
            .host_paths
            .admits(&source, read_only)
            .map_err(|why| blocked(format!("host path {path} is refused: {why}")))?;
        Ok(source)
    }
}

/// An NFS mount with every field checked, so nothing from the object reaches the mount
/// helper as an extra argument or option.
fn nfs_spec(
    server: &str,
    path: &str,
    options: &[String],
    read_only: bool,
) -> Result<MountSpec, Waiting> {
    check_nfs_server(server).map_err(|e| blocked(e.to_string()))?;
    check_nfs_path(path).map_err(|e| blocked(e.to_string()))?;
    check_nfs_options(options).map_err(|e| blocked(e.to_string()))?;
    Ok(MountSpec::Nfs {
        server: server.into(),
        path: path.into(),
        options: options.to_vec(),
        read_only,
    })
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
