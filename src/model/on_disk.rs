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
