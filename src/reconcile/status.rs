//! Status rows (pure): one row per pod volume, from the desired state, the mount table, the
//! pod directories and the failures the executor reported; and one per local disk, from the
//! discoverer, the cleanup journal and the PVs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plan::in_place;
use super::pod_dirs;
use k8s_openapi::api::core::v1::PersistentVolume;

use crate::desired::binding_store::Recorded;
use crate::desired::DesiredState;
use crate::localpv::cleanup::{Cleaning, Journal};
use crate::localpv::discover::{Discovered, PROVISIONED_BY};
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
    /// A local disk whose PV no claim holds.
    Available,
    /// A local disk whose PV a claim holds.
    Bound,
    /// A local disk whose claim is gone and that is not (or not yet) cleaned.
    Released,
    /// A local disk being cleaned for reuse.
    Cleaning,
    /// A local PV whose disk is gone (unmounted or removed): kept, used again when it is back.
    Vanished,
    /// An entry of a local-PV `mount_dir` that is not a disk.
    Skipped,
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

/// What the local-disk rows are made from.
pub struct LocalDisks<'a> {
    pub node: &'a str,
    pub discovered: &'a Discovered,
    pub journal: &'a Journal,
    /// The PVs as the API has them (API mode); `None` in file mode.
    pub published: Option<&'a [PersistentVolume]>,
    /// File mode's binding record: claim → PV, and the PVs released from deleted claims.
    pub recorded: &'a Recorded,
    /// File mode's claims (`namespace/name`) as the manifests define them now.
    pub claims: &'a std::collections::BTreeSet<String>,
    /// Whether a read of the manifests now may release (they have no errors, and the
    /// directory has manifests).
    pub may_release: bool,
}

/// Why a Released local PV is as it is, and what comes next: `why` it is Released, what an
/// operator does to `free` a disk that is left alone, and what the disk is then (`after`).
fn released_reason(pv: &PersistentVolume, why: &str, free: &str, after: &str) -> String {
    let spec = pv.spec.as_ref();
    let policy = spec
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Delete");
    let formatted = spec.and_then(|s| s.volume_mode.as_deref()) != Some("Block")
        && spec
            .and_then(|s| s.local.as_ref())
            .is_some_and(|l| l.fs_type.is_some());
    if policy == "Retain" {
        format!("{why}; reclaim policy Retain: left as it is; {free} when its data is no longer needed, and the disk is {after}")
    } else if formatted {
        format!("{why}; it holds a filesystem volumed made on the block device, and wiping that is not built yet: it stays Released; wipe the device and {free}, and the disk is {after}")
    } else {
        format!("{why}: it is cleaned and {after}")
    }
}

/// One row per local disk: each discovered disk with its PV's state, each skipped entry, each
/// cleanup under way (or failed), and each PV of ours whose disk is gone.
pub fn local_disk_rows(disks: &LocalDisks) -> Vec<StatusRow> {
    let row = |pv: &str, claim: Option<String>, path: &str, state, reason: String| StatusRow {
        pod: claim.unwrap_or_else(|| "-".into()),
        volume: pv.to_string(),
        kind: "local-pv".into(),
        path: path.to_string(),
        state,
        reason,
        detail: String::new(),
    };
    let local_path = |pv: &PersistentVolume| Some(pv.spec.as_ref()?.local.as_ref()?.path.clone());
    let claim_of = |pv: &PersistentVolume| {
        let r = pv.spec.as_ref()?.claim_ref.as_ref()?;
        Some(format!(
            "{}/{}",
            r.namespace.as_deref().unwrap_or("default"),
            r.name.as_deref()?
        ))
    };
    let mut rows = Vec::new();
    let mut found = std::collections::BTreeSet::new();
    for pv in &disks.discovered.volumes {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let path = local_path(pv).unwrap_or_default();
        found.insert(path.clone());
        if let Some(cleaning) = disks.journal.cleaning.get(&name) {
            // Journaled, but bound (or otherwise not Released) now: the cleaner leaves it.
            let taken = match disks.published {
                Some(published) => published
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Released")
                    })
                    .map(|p| claim_of(p).unwrap_or_else(|| "no claim".into())),
                None => (!disks.recorded.released.contains_key(&name))
                    .then(|| disks.recorded.bindings.iter().find(|(_, v)| **v == name))
                    .flatten()
                    .map(|(claim, _)| claim.clone()),
            };
            rows.push(match taken {
                Some(claim) => row(
                    &name,
                    Some(claim),
                    &path,
                    VolumeState::Failed,
                    "its cleanup began, but it is no longer Released: it is left alone (neither cleaned nor offered); check the disk, then remove its entry from the root dir's state/localpv-cleanups.json".into(),
                ),
                None => cleaning_row(&name, &path, cleaning),
            });
            continue;
        }
        let (claim, state, reason) = match disks.published {
            Some(published) => match published
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
            {
                None => (
                    None,
                    VolumeState::Available,
                    "not published yet".to_string(),
                ),
                Some(p) => {
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    match phase {
                        Some("Bound") => (claim_of(p), VolumeState::Bound, String::new()),
                        Some("Released") => (
                            claim_of(p),
                            VolumeState::Released,
                            released_reason(
                                p,
                                "its claim is gone",
                                "delete the PV",
                                "published again",
                            ),
                        ),
                        _ => (None, VolumeState::Available, String::new()),
                    }
                }
            },
            None => {
                let recorded = disks.recorded;
                match recorded.bindings.iter().find(|(_, v)| **v == name) {
                    _ if recorded.released.contains_key(&name) => {
                        let released = &recorded.released[&name];
                        // Judged by the policy it was released with, as the cleaner judges.
                        let mut as_released = pv.clone();
                        if let Some(spec) = as_released.spec.as_mut() {
                            spec.persistent_volume_reclaim_policy =
                                Some(released.reclaim_policy.clone().unwrap_or("Retain".into()));
                        }
                        (
                            Some(released.claim.clone()),
                            VolumeState::Released,
                            released_reason(
                                &as_released,
                                "its claim's manifest was deleted",
                                &format!("run `volumed release {name}`"),
                                "available again",
                            ),
                        )
                    }
                    Some((claim, _)) if !disks.claims.contains(claim) => (
                        Some(claim.clone()),
                        VolumeState::Released,
                        if disks.may_release {
                            "its claim's manifest is gone: the next `volumed run` releases it"
                        } else {
                            "its claim's manifest is gone, but nothing is released while the manifests have errors or the directory has none"
                        }
                        .into(),
                    ),
                    Some((claim, _)) => (Some(claim.clone()), VolumeState::Bound, String::new()),
                    None => (None, VolumeState::Available, String::new()),
                }
            }
        };
        rows.push(row(&name, claim, &path, state, reason));
    }
    // A vanished PV's path is shown once, as vanished, not also as a skipped entry.
    let mut gone = std::collections::BTreeSet::new();
    let ours = format!("volumed-{}", disks.node);
    for pv in disks.published.unwrap_or_default() {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let by = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PROVISIONED_BY));
        let path = local_path(pv).unwrap_or_default();
        if by == Some(&ours)
            && !found.contains(&path)
            && !disks.journal.cleaning.contains_key(&name)
        {
            let there = disks
                .discovered
                .skipped
                .iter()
                .find(|s| s.path.display().to_string() == path)
                .map_or(String::new(), |s| format!(" (now {})", s.reason));
            let why = format!("its disk is gone (unmounted or removed){there}; the PV is kept and used again when the disk is back");
            rows.push(row(&name, claim_of(pv), &path, VolumeState::Vanished, why));
            gone.insert(path);
        }
    }
    for skipped in &disks.discovered.skipped {
        let path = skipped.path.display().to_string();
        if gone.contains(&path) {
            continue;
        }
        let why = format!("{} (class {})", skipped.reason, skipped.storage_class);
        rows.push(row("-", None, &path, VolumeState::Skipped, why));
    }
    for (name, cleaning) in &disks.journal.cleaning {
        let path = cleaning.host_path.display().to_string();
        if !found.contains(&path) {
            rows.push(cleaning_row(name, &path, cleaning));
        }
    }
    rows
}

fn cleaning_row(name: &str, path: &str, cleaning: &Cleaning) -> StatusRow {
    let (state, reason) = match &cleaning.last_error {
        Some(error) => (
            VolumeState::Failed,
            format!("its cleanup failed and is tried again: {error}"),
        ),
        None if cleaning.cleaned => (
            VolumeState::Cleaning,
            "cleaned; its PV is deleted and published again next".into(),
        ),
        None => (VolumeState::Cleaning, "being cleaned for reuse".into()),
    };
    StatusRow {
        pod: "-".into(),
        volume: name.to_string(),
        kind: "local-pv".into(),
        path: path.to_string(),
        state,
        reason,
        detail: String::new(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localpv::discover::Skipped;

    fn pv(name: &str, path: &str, phase: &str, policy: &str, claim: bool) -> PersistentVolume {
        let claim_ref = if claim {
            serde_json::json!({"namespace": "shop", "name": "data"})
        } else {
            serde_json::Value::Null
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: "volumed-node-a"}},
            "spec": {"local": {"path": path}, "persistentVolumeReclaimPolicy": policy,
                     "claimRef": claim_ref},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn each_local_disk_gets_one_row_saying_where_its_pv_stands() {
        let discovered = Discovered {
            volumes: vec![
                pv("a", "/d/a", "", "Delete", false),
                pv("b", "/d/b", "", "Delete", false),
                pv("c", "/d/c", "", "Delete", false),
                pv("e", "/d/e", "", "Delete", false),
            ],
            skipped: vec![
                Skipped {
                    storage_class: "fast".into(),
                    path: "/d/plain".into(),
                    reason: "not a mount point".into(),
                },
                Skipped {
                    storage_class: "fast".into(),
                    path: "/d/gone".into(),
                    reason: "not a mount point".into(),
                },
            ],
        };
        let published = [
            pv("a", "/d/a", "Bound", "Delete", true),
            pv("b", "/d/b", "Released", "Retain", true),
            pv("c", "/d/c", "Released", "Delete", true),
            pv("gone", "/d/gone", "Available", "Delete", false),
        ];
        let journal = Journal {
            cleaning: BTreeMap::from([(
                "c".to_string(),
                Cleaning {
                    host_path: "/d/c".into(),
                    class: "fast".into(),
                    entry: "c".into(),
                    block: false,
                    cleaned: false,
                    last_error: Some("a file is busy".into()),
                },
            )]),
        };
        let rows = local_disk_rows(&LocalDisks {
            node: "node-a",
            discovered: &discovered,
            journal: &journal,
            published: Some(&published),
            recorded: &Recorded::default(),
            claims: &Default::default(),
            may_release: true,
        });
        let got: Vec<(&str, &str, VolumeState)> = rows
            .iter()
            .map(|r| (r.path.as_str(), r.pod.as_str(), r.state))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/d/a", "shop/data", VolumeState::Bound),
                ("/d/b", "shop/data", VolumeState::Released),
                ("/d/c", "-", VolumeState::Failed),
                ("/d/e", "-", VolumeState::Available),
                ("/d/gone", "-", VolumeState::Vanished),
                ("/d/plain", "-", VolumeState::Skipped),
            ]
        );
        assert!(rows[2].reason.contains("a file is busy"), "{:?}", rows[2]);
        assert!(rows[1].reason.contains("Retain"), "{:?}", rows[1]);
        assert!(rows[3].reason.contains("not published"), "{:?}", rows[3]);
        assert!(
            rows[4].reason.contains("not a mount point"),
            "{:?}",
            rows[4]
        );
    }

    #[test]
    fn in_file_mode_a_disk_whose_claim_is_gone_or_was_released_is_released() {
        let discovered = Discovered {
            volumes: vec![
                pv("a", "/d/a", "", "Delete", false),
                pv("b", "/d/b", "", "Delete", false),
                pv("c", "/d/c", "", "Delete", false),
                pv("d", "/d/d", "", "Retain", false),
            ],
            skipped: vec![],
        };
        let recorded = Recorded {
            policies: Default::default(),
            bindings: BTreeMap::from([
                ("shop/data".to_string(), "a".to_string()),
                ("shop/old".to_string(), "b".to_string()),
            ]),
            released: BTreeMap::from([(
                "c".to_string(),
                crate::desired::binding_store::ReleasedVolume {
                    claim: "shop/gone".into(),
                    reclaim_policy: Some("Delete".into()),
                },
            )]),
        };
        let claims = std::collections::BTreeSet::from(["shop/data".to_string()]);
        let rows = local_disk_rows(&LocalDisks {
            node: "node-a",
            discovered: &discovered,
            journal: &Journal::default(),
            published: None,
            recorded: &recorded,
            claims: &claims,
            may_release: true,
        });
        let got: Vec<(&str, &str, VolumeState)> = rows
            .iter()
            .map(|r| (r.volume.as_str(), r.pod.as_str(), r.state))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "shop/data", VolumeState::Bound),
                ("b", "shop/old", VolumeState::Released),
                ("c", "shop/gone", VolumeState::Released),
                ("d", "-", VolumeState::Available),
            ]
        );
        assert!(
            rows[1]
                .reason
                .contains("the next `volumed run` releases it"),
            "{}",
            rows[1].reason
        );
        assert!(
            rows[2].reason.contains("it is cleaned and available again"),
            "{}",
            rows[2].reason
        );
        // A journaled disk the record shows bound is left alone: a row that says so.
        let mut journal = Journal::default();
        journal.cleaning.insert(
            "a".into(),
            Cleaning {
                host_path: "/d/a".into(),
                class: "fast".into(),
                entry: "a".into(),
                block: false,
                cleaned: false,
                last_error: None,
            },
        );
        let rows = local_disk_rows(&LocalDisks {
            node: "node-a",
            discovered: &discovered,
            journal: &journal,
            published: None,
            recorded: &recorded,
            claims: &claims,
            may_release: true,
        });
        assert_eq!(
            (rows[0].pod.as_str(), rows[0].state),
            ("shop/data", VolumeState::Failed)
        );
        assert!(
            rows[0].reason.contains("no longer Released"),
            "{}",
            rows[0].reason
        );
    }
}
