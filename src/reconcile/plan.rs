//! `plan`: all reconcile policy in one pure function. It compares what the pods need with what
//! the mount table and the pod directories show, and returns the ops that close the gap.

use std::collections::BTreeSet;

use super::pod_dirs;
use crate::desired::DesiredState;
use crate::model::mountinfo::PodMounts;
use crate::model::on_disk::OnDisk;
use crate::model::op::{Contents, IfHung, Op};
use crate::model::{DesiredVolume, MountSpec, Plugin, VolumeKey};

/// The ops that move the host towards `desired`. Teardown is planned only from a complete
/// snapshot (rule 1) and only for volumes of plugins volumed manages; a running pod with a
/// volume that cannot be resolved keeps all its volumes (a typo never costs data). Mounts
/// nested inside a volume go first, innermost first, then the volume, then its directory,
/// and a pod directory only after all its volumes and mounts are gone. A pod whose uid names
/// another pod's directory waits until that directory is gone (`pod_dirs`).
pub fn plan(desired: &DesiredState, mounts: &PodMounts, on_disk: &OnDisk) -> Vec<Op> {
    plan_assigned(&pod_dirs::assign(desired, on_disk), mounts, on_disk)
}

/// `plan` of a snapshot `pod_dirs::assign` has already given its pod directories (the sync
/// loop assigns once per pass, for its notices too).
pub fn plan_assigned(desired: &DesiredState, mounts: &PodMounts, on_disk: &OnDisk) -> Vec<Op> {
    let mut ops: Vec<Op> = desired
        .volumes
        .values()
        // A pod being deleted keeps what it has and gets nothing new (as kubelet).
        .filter(|volume| {
            !in_place(volume, mounts, on_disk) && !desired.terminating.contains(&volume.key.pod_uid)
        })
        .map(|volume| Op::SetUp {
            volume: Box::new(volume.clone()),
        })
        .collect();
    ops.extend(
        pod_dirs::unclaimed(desired, on_disk)
            .into_iter()
            .map(|pod| Op::ClaimPodDir { pod: pod.clone() }),
    );
    if desired.complete {
        ops.extend(teardown(desired, mounts, on_disk));
    }
    ops
}

/// Unmounts, directory removals and pod-directory removals for what no pod wants.
fn teardown(desired: &DesiredState, mounts: &PodMounts, on_disk: &OnDisk) -> Vec<Op> {
    let mut ops = Vec::new();
    let held = pod_dirs::held(desired, on_disk);
    let unwanted = |key: &VolumeKey| {
        !matches!(key.plugin, Plugin::Other(_))
            && !desired.volumes.contains_key(key)
            && !held.contains(key.pod_uid.as_str())
    };
    let mounted_keys: BTreeSet<&VolumeKey> =
        mounts.volumes.keys().chain(mounts.nested.keys()).collect();
    for key in mounted_keys.into_iter().filter(|k| unwanted(k)) {
        let innermost = mounts.next_nested(key);
        if innermost.is_some() || mounts.is_mounted(key) {
            let server = (key.plugin == Plugin::Nfs)
                .then(|| mounts.nfs_server(key))
                .flatten();
            ops.push(Op::Unmount {
                key: key.clone(),
                nested: innermost,
                server,
                // A hung NFS server must not hold the volume for ever; a local unmount that
                // hangs has a reason worth waiting out.
                if_hung: if key.plugin == Plugin::Nfs {
                    IfHung::ForceThenDetach
                } else {
                    IfHung::Wait
                },
            });
        }
    }
    let idle = |key: &&VolumeKey| !mounts.is_mounted(key) && !mounts.nested.contains_key(*key);
    ops.extend(
        on_disk
            .pods
            .values()
            .flatten()
            .filter(|key| unwanted(key))
            .filter(idle)
            .map(|key| Op::RemoveVolumeDir {
                key: key.clone(),
                // Only an emptyDir's data is the pod's to lose (rule 4).
                contents: if key.plugin == Plugin::EmptyDir {
                    Contents::DeleteAll
                } else {
                    Contents::KeepAny
                },
            }),
    );
    // A global mount goes when no wanted volume uses its PV and no pod mount shows it.
    let wanted_global = |pv: &str| {
        mounts.global_in_use(pv)
            || desired.volumes.values().any(|v| {
                matches!(v.spec, MountSpec::Local { .. }) && v.pv_name.as_deref() == Some(pv)
            })
    };
    for pv_name in mounts.globals.keys().filter(|pv| !wanted_global(pv)) {
        ops.push(Op::UnmountGlobal {
            pv_name: pv_name.clone(),
        });
    }
    for pv_name in on_disk
        .globals
        .iter()
        .filter(|pv| !wanted_global(pv) && !mounts.globals.contains_key(*pv))
    {
        ops.push(Op::RemoveGlobalDir {
            pv_name: pv_name.clone(),
        });
    }
    ops.extend(
        on_disk
            .pods
            .iter()
            .filter(|(uid, volumes)| {
                !desired.pods.contains_key(*uid)
                    && !held.contains(uid.as_str())
                    && volumes.is_empty()
                    && !mounts.pod_has_mounts(uid)
            })
            .map(|(uid, _)| Op::RemovePodDir {
                pod_uid: uid.clone(),
            }),
    );
    ops
}

/// A volume is in place when something is mounted at its path (or, for a plain emptyDir,
/// its directory exists). Whether the mount matches the spec is status's business: volumed
/// never remounts under a running pod.
pub fn in_place(volume: &DesiredVolume, mounts: &PodMounts, on_disk: &OnDisk) -> bool {
    if volume.spec.is_mount() {
        mounts.is_mounted(&volume.key)
    } else {
        on_disk.has_volume(&volume.key)
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
