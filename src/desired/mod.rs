//! Desired state: what the pods on this host need, published as complete snapshots on a
//! `watch` channel by a source (the manifest directory now, the API later).

pub mod api_bindings;
pub mod binder;
pub mod binding_store;
pub mod dir_watch;
pub mod file;
pub mod file_identity;
pub mod kube;
pub mod local_disks;
pub mod manifest;
pub mod memory;
pub mod reclaim;
pub mod resolve;
pub mod selector;

use serde::Serialize;
use std::collections::BTreeMap;

use crate::model::host_paths::HostPathPolicy;
use crate::model::{DesiredVolume, PodRef, VolumeKey};

/// This node as the sources and the binder see it.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// Labels for PV node affinity; `kubernetes.io/hostname` is always set to `name`.
    pub labels: selector::Labels,
    /// Where hostPath and local volume paths may point.
    pub host_paths: HostPathPolicy,
    /// Memory pods may use here (allocatable; in file mode MemTotal): it bounds a
    /// memory-backed emptyDir without a smaller limit. `None`: unknown.
    pub memory_bytes: Option<u64>,
}

/// One snapshot of what the pods on this host need.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DesiredState {
    /// False when a source could not deliver its full list: then nothing may be torn down.
    pub complete: bool,
    /// Why the snapshot is incomplete, one message per problem.
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// Pods of this node that are not terminal, by uid.
    pub pods: BTreeMap<String, PodRef>,
    /// Shown as a list: each volume carries its key (JSON maps need string keys).
    #[serde(serialize_with = "values_in_order")]
    pub volumes: BTreeMap<VolumeKey, DesiredVolume>,
    /// Pods being deleted: their volumes stay as they are, none is newly set up.
    pub terminating: std::collections::BTreeSet<String>,
    /// Pod volumes that cannot be set up yet, or are not volumed's to set up.
    pub waiting: Vec<WaitingVolume>,
    /// Where each pod (by uid) was defined, `file:line`, when it came from a manifest.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_origins: BTreeMap<String, String>,
}

/// Serializes a map as the list of its values, in key order.
fn values_in_order<S: serde::Serializer, K, V: Serialize>(
    map: &BTreeMap<K, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaitingVolume {
    pub pod: PodRef,
    pub volume_name: String,
    pub reason: String,
    /// True when the pod cannot run without it (e.g. an unbound claim); false for volume
    /// types volumed leaves to others (configMap, secret, ...).
    pub blocking: bool,
    /// Where the pod was defined (`file:line`), when it came from a manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl WaitingVolume {
    /// A blocking wait for each of `volume_names` of `pod`, all for one reason; a pod without
    /// volumes gets one row named `-`, so that it still shows why it is held back.
    pub fn all_of(
        pod: &PodRef,
        volume_names: Vec<String>,
        reason: &str,
        origin: Option<&String>,
    ) -> Vec<WaitingVolume> {
        let names = if volume_names.is_empty() {
            vec!["-".to_string()]
        } else {
            volume_names
        };
        names
            .into_iter()
            .map(|volume_name| WaitingVolume {
                pod: pod.clone(),
                volume_name,
                reason: reason.to_string(),
                blocking: true,
                origin: origin.cloned(),
            })
            .collect()
    }
}
