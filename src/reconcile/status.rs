//! Status rows (pure): one row per pod volume, from the desired state, the mount table, the
//! pod directories and the failures the executor reported.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::in_place;
use super::pod_dirs;
use crate::desired::DesiredState;
use crate::model::mountinfo::{MountEntry, PodMounts};
use crate::model::on_disk::OnDisk;
use crate::model::{MountSpec, Plugin, VolumeKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    /// Mounted (or, for a plain emptyDir, its directory exists).
    Mounted,
    /// Wanted, not yet in place, no failure so far.
    NotReady,
    /// Cannot be set up until something else changes (e.g. an unbound claim).
    Pending,
    /// The last attempt failed.
    Failed,
    /// Not volumed's to set up (configMap, secret, ...).
    Unmanaged,
    /// Left over from a pod that is gone; being torn down.
    TearingDown,
    /// Not wanted by any pod, but kept: the desired state is incomplete, or a pod with its
    /// uid waits (doubt keeps).
    Kept,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow {
    /// `namespace/name`, or the uid of a pod that is gone.
    pub pod: String,
    pub volume: String,
    pub kind: String,
    pub path: String,
    pub state: VolumeState,
    /// Why it is not mounted (or kept): empty for a mounted volume that matches its spec.
    pub reason: String,
    /// What the spec asks for (`tmpfs size=64Mi (its sizeLimit)`, `bind /srv/logs`, ...).
    #[serde(default)]
    pub detail: String,
}

/// Failures by volume key (`uid/plugin/name`), as the executor last reported them.
pub type Failures = BTreeMap<String, String>;

pub fn rows(
    root: &Path,
    desired: &DesiredState,
    mounts: &PodMounts,
    on_disk: &OnDisk,
    failures: &Failures,
) -> Vec<StatusRow> {
    let desired = &*pod_dirs::assign(desired, on_disk);
    let held = pod_dirs::held(desired, on_disk);
    let mut rows = Vec::new();
    for volume in desired.volumes.values() {
        let in_place = in_place(volume, mounts, on_disk);
        let differs = mounts
            .volumes
            .get(&volume.key)
            .and_then(|stack| differs(&volume.spec, stack.last()?));
        let (state, reason) = match failures.get(&volume.key.to_string()) {
            _ if in_place && differs.is_some() => {
                (VolumeState::Failed, differs.unwrap_or_default())
            }
            _ if in_place => (VolumeState::Mounted, String::new()),
            Some(error) => (VolumeState::Failed, error.clone()),
            None => (
                VolumeState::NotReady,
                format!("waiting to set up {}", volume.spec.describe()),
            ),
        };
        rows.push(StatusRow {
            pod: volume.pod.to_string(),
            volume: volume.volume_name.clone(),
            kind: volume.key.plugin.to_string(),
            path: volume.key.path(root).display().to_string(),
            state,
            reason,
            detail: volume.spec.describe(),
        });
    }
    for waiting in &desired.waiting {
        rows.push(StatusRow {
            pod: waiting.pod.to_string(),
            volume: waiting.volume_name.clone(),
            kind: "-".into(),
            path: "-".into(),
            state: if waiting.blocking {
                VolumeState::Pending
            } else {
                VolumeState::Unmanaged
            },
            reason: waiting.reason.clone(),
            detail: String::new(),
        });
    }
    let leftovers = mounts.volumes.keys().chain(on_disk.pods.values().flatten());
    let mut seen = std::collections::BTreeSet::new();
    for key in leftovers.filter(|k| !desired.volumes.contains_key(*k)) {
        if seen.insert(key.clone()) {
            rows.push(leftover(
                root,
                key,
                desired,
                held.contains(key.pod_uid.as_str()),
                failures,
            ));
        }
    }
    rows.sort_by(|a, b| (&a.pod, &a.volume).cmp(&(&b.pod, &b.volume)));
    rows
}

/// Why a mount at a wanted volume's path does not match its spec. volumed never remounts
/// under a running pod, so this is reported, not changed.
fn differs(spec: &MountSpec, top: &MountEntry) -> Option<String> {
    let why = match spec {
        MountSpec::Tmpfs { .. } if top.fs_type != "tmpfs" => {
            format!("a {} mount is there, not tmpfs", top.fs_type)
        }
        MountSpec::Bind {
            read_only: true, ..
        } if !top.read_only => "it is mounted read-write, the spec wants read-only".into(),
        MountSpec::Bind {
            read_only: false, ..
        } if top.read_only => "it is mounted read-only, the spec wants read-write".into(),
        _ => return None,
    };
    Some(format!("mounted, but differs from the spec: {why}; volumed does not remount under a running pod, recreate the pod to apply it"))
}

fn leftover(
    root: &Path,
    key: &VolumeKey,
    desired: &DesiredState,
    held: bool,
    failures: &Failures,
) -> StatusRow {
    // Kept before tearing-down: a failure from an earlier teardown try does not make a
    // volume that is kept now look as if it were going.
    let last_error = failures
        .get(&key.to_string())
        .map_or(String::new(), |e| format!(" (an earlier teardown: {e})"));
    let (state, reason) = match failures.get(&key.to_string()) {
        _ if matches!(key.plugin, Plugin::Other(_)) => (
            VolumeState::Unmanaged,
            "a plugin volumed does not manage; left alone".to_string(),
        ),
        _ if !desired.complete => (
            VolumeState::Kept,
            format!("the desired state is incomplete: nothing is torn down until it is whole{last_error}"),
        ),
        _ if held => (
            VolumeState::Kept,
            format!("a pod with this uid waits (see its pending volumes), and doubt keeps{last_error}"),
        ),
        Some(error) => (VolumeState::TearingDown, error.clone()),
        None => (VolumeState::TearingDown, "no pod wants it any more".into()),
    };
    StatusRow {
        pod: desired
            .pods
            .get(&key.pod_uid)
            .map_or_else(|| key.pod_uid.clone(), |p| p.to_string()),
        volume: key.name.clone(),
        kind: key.plugin.to_string(),
        path: key.path(root).display().to_string(),
        state,
        reason,
        detail: String::new(),
    }
}
