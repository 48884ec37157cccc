//! `plan`: all reconcile policy in one pure function. It compares what the pods need with what
//! the mount table and the pod directories show, and returns the ops that close the gap.

use serde::Serialize;

use crate::actual::mountinfo::PodMounts;
use crate::actual::OnDisk;
use crate::desired::DesiredState;
use crate::model::{DesiredVolume, VolumeKey};

/// One step towards the desired state. Each is idempotent: running it on a host where it
/// already happened changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Create the volume's path and mount (or create) what the spec says.
    SetUp { volume: Box<DesiredVolume> },
    /// Unmount the top mount at an unwanted volume path.
    Unmount { key: VolumeKey },
    /// Remove an unwanted, unmounted volume path (an emptyDir's contents with it).
    RemoveVolumeDir { key: VolumeKey },
    /// Remove the directory of a pod that is gone, once its volumes are.
    RemovePodDir { pod_uid: String },
}

/// What an op is serialized on: at most one op per key runs at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKey {
    Volume(VolumeKey),
    Pod(String),
}

impl Op {
    pub fn key(&self) -> OpKey {
        match self {
            Op::SetUp { volume } => OpKey::Volume(volume.key.clone()),
            Op::Unmount { key } | Op::RemoveVolumeDir { key } => OpKey::Volume(key.clone()),
            Op::RemovePodDir { pod_uid } => OpKey::Pod(pod_uid.clone()),
        }
    }

    pub fn pod_uid(&self) -> &str {
        match self {
            Op::SetUp { volume } => &volume.key.pod_uid,
            Op::Unmount { key } | Op::RemoveVolumeDir { key } => &key.pod_uid,
            Op::RemovePodDir { pod_uid } => pod_uid,
        }
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Op::SetUp { .. } => "set-up",
            Op::Unmount { .. } => "unmount",
            Op::RemoveVolumeDir { .. } => "remove-volume-dir",
            Op::RemovePodDir { .. } => "remove-pod-dir",
        }
    }
}

/// The ops that move the host towards `desired`. Teardown is planned only from a complete
/// snapshot (rule 1); a volume is torn down before its directory, and a pod directory only
/// after all its volumes and mounts are gone.
pub fn plan(desired: &DesiredState, mounts: &PodMounts, on_disk: &OnDisk) -> Vec<Op> {
    let mut ops: Vec<Op> = desired
        .volumes
        .values()
        .filter(|volume| {
            let in_place = if volume.spec.is_mount() {
                mounts.is_mounted(&volume.key)
            } else {
                on_disk.has_volume(&volume.key)
            };
            !in_place
        })
        .map(|volume| Op::SetUp {
            volume: Box::new(volume.clone()),
        })
        .collect();
    if !desired.complete {
        return ops;
    }
    let unwanted = |key: &&VolumeKey| !desired.volumes.contains_key(*key);
    ops.extend(
        mounts
            .volumes
            .keys()
            .filter(unwanted)
            .map(|key| Op::Unmount { key: key.clone() }),
    );
    let dirs = on_disk.pods.values().flatten();
    ops.extend(
        dirs.filter(unwanted)
            .filter(|key| !mounts.is_mounted(key))
            .map(|key| Op::RemoveVolumeDir { key: key.clone() }),
    );
    ops.extend(
        on_disk
            .pods
            .iter()
            .filter(|(uid, volumes)| {
                !desired.pods.contains_key(*uid)
                    && volumes.is_empty()
                    && !mounts.pod_has_mounts(uid)
            })
            .map(|(uid, _)| Op::RemovePodDir {
                pod_uid: uid.clone(),
            }),
    );
    ops
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
