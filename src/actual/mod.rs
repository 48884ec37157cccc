//! Actual state: the mount table (and its change watcher) and what lies on disk under the
//! root dir's pod directories.

pub mod device_watch;
pub mod devices;
pub mod mountinfo;
pub mod signatures;
pub mod sysfs;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};

use crate::model::VolumeKey;

/// Pod directories and their volume directories found under `<root>/pods`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OnDisk {
    pub pods: BTreeMap<String, BTreeSet<VolumeKey>>,
    /// PV names with a local-volume global mount point directory.
    pub globals: BTreeSet<String>,
}

impl OnDisk {
    pub fn has_volume(&self, key: &VolumeKey) -> bool {
        self.pods.get(&key.pod_uid).is_some_and(|v| v.contains(key))
    }

    /// Replaces what is known about one pod (`None`: its directory is gone).
    pub fn set_pod(&mut self, pod_uid: &str, volumes: Option<BTreeSet<VolumeKey>>) {
        match volumes {
            Some(volumes) => self.pods.insert(pod_uid.to_string(), volumes),
            None => self.pods.remove(pod_uid),
        };
    }
}
