//! What lies on disk under the root dir's pod directories, as `host::fs` scans it: plain data
//! that `plan` compares with what the pods need.

use std::collections::{BTreeMap, BTreeSet};

use super::VolumeKey;

/// Pod directories and their volume directories found under `<root>/pods`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnDisk {
    pub pods: BTreeMap<String, BTreeSet<VolumeKey>>,
    /// Who each pod directory was made for; a directory without an entry has no record.
    pub owners: BTreeMap<String, DirOwner>,
    /// PV names with a local-volume global mount point directory.
    pub globals: BTreeSet<String>,
}

/// One pod directory as scanned: its volume directories and its owner record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDir {
    pub volumes: BTreeSet<VolumeKey>,
    pub owner: DirOwner,
}

/// What an op did to its pod's directory, for the loop's picture of the disk: an op that
/// succeeded knows exactly what it made or removed, so only a failed one (which may have left
/// anything half-done) costs a rescan of the pod directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodDirChange {
    /// Nothing the picture holds: an unmount, an op without a pod, a rescan that failed.
    Unchanged,
    /// The volume's directory (or file) is there, in a pod directory owned by `owner`.
    Added { key: VolumeKey, owner: String },
    /// The volume's directory is gone.
    Removed(VolumeKey),
    /// The pod directory is there and owned by `owner`.
    Claimed { pod_uid: String, owner: String },
    /// The pod directory as scanned after the op (`None`: it is gone).
    Scanned {
        pod_uid: String,
        dir: Option<PodDir>,
    },
}

/// The pod a pod directory belongs to, from `<root>/pods/<uid>/volumed-owner`: a uid is only
/// a name, and a pod arriving with a departed pod's uid must not inherit its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirOwner {
    /// No record: made before owners were recorded; the pod with this uid claims it.
    Unrecorded,
    /// The pod (`namespace/name`) the directory was made for.
    Pod(String),
    /// A record that does not name a pod, with why.
    Unreadable(String),
}

impl OnDisk {
    pub fn has_volume(&self, key: &VolumeKey) -> bool {
        self.pods.get(&key.pod_uid).is_some_and(|v| v.contains(key))
    }

    /// The owner record of a pod directory; `None` when there is no such directory.
    pub fn owner(&self, pod_uid: &str) -> Option<&DirOwner> {
        self.pods
            .contains_key(pod_uid)
            .then(|| self.owners.get(pod_uid).unwrap_or(&DirOwner::Unrecorded))
    }

    /// Takes in what an op did (see `PodDirChange`).
    pub fn apply(&mut self, change: PodDirChange) {
        match change {
            PodDirChange::Unchanged => {}
            PodDirChange::Added { key, owner } => {
                self.owners
                    .insert(key.pod_uid.clone(), DirOwner::Pod(owner));
                self.pods
                    .entry(key.pod_uid.clone())
                    .or_default()
                    .insert(key);
            }
            PodDirChange::Removed(key) => {
                if let Some(volumes) = self.pods.get_mut(&key.pod_uid) {
                    volumes.remove(&key);
                }
            }
            PodDirChange::Claimed { pod_uid, owner } => {
                self.pods.entry(pod_uid.clone()).or_default();
                self.owners.insert(pod_uid, DirOwner::Pod(owner));
            }
            PodDirChange::Scanned { pod_uid, dir } => self.set_pod(&pod_uid, dir),
        }
    }

    /// Replaces what is known about one pod (`None`: its directory is gone).
    pub fn set_pod(&mut self, pod_uid: &str, dir: Option<PodDir>) {
        match dir {
            Some(PodDir { volumes, owner }) => {
                self.pods.insert(pod_uid.to_string(), volumes);
                match owner {
                    DirOwner::Unrecorded => self.owners.remove(pod_uid),
                    owner => self.owners.insert(pod_uid.to_string(), owner),
                };
            }
            None => {
                self.pods.remove(pod_uid);
                self.owners.remove(pod_uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Plugin;

    fn key(uid: &str, name: &str) -> VolumeKey {
        VolumeKey {
            pod_uid: uid.into(),
            plugin: Plugin::EmptyDir,
            name: name.into(),
            block: false,
        }
    }

    #[test]
    fn each_change_an_op_reports_is_what_a_rescan_of_its_pod_directory_would_find() {
        let mut on_disk = OnDisk::default();
        on_disk.apply(PodDirChange::Claimed {
            pod_uid: "u1".into(),
            owner: "ns/a".into(),
        });
        assert_eq!(on_disk.owner("u1"), Some(&DirOwner::Pod("ns/a".into())));
        assert!(on_disk.pods["u1"].is_empty());
        on_disk.apply(PodDirChange::Added {
            key: key("u1", "cache"),
            owner: "ns/a".into(),
        });
        on_disk.apply(PodDirChange::Added {
            key: key("u2", "data"),
            owner: "ns/b".into(),
        });
        assert!(on_disk.has_volume(&key("u1", "cache")));
        assert_eq!(on_disk.owner("u2"), Some(&DirOwner::Pod("ns/b".into())));
        on_disk.apply(PodDirChange::Unchanged);
        on_disk.apply(PodDirChange::Removed(key("u1", "cache")));
        assert!(!on_disk.has_volume(&key("u1", "cache")));
        assert!(on_disk.owner("u1").is_some(), "the pod directory stays");
        // Removing what is not known leaves the rest alone.
        on_disk.apply(PodDirChange::Removed(key("u3", "x")));
        assert!(!on_disk.pods.contains_key("u3"));
        on_disk.apply(PodDirChange::Scanned {
            pod_uid: "u1".into(),
            dir: None,
        });
        assert_eq!(on_disk.owner("u1"), None);
        assert_eq!(on_disk.pods.keys().collect::<Vec<_>>(), ["u2"]);
    }
}
