//! The ops `plan` emits and the executor carries out: plain data, one op per key at a time.

use std::path::PathBuf;

use serde::Serialize;

use super::{DesiredVolume, MountSpec, PodRef, VolumeKey};

/// One step towards the desired state. Each is idempotent: running it on a host where it
/// already happened changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Create the volume's path and mount (or create) what the spec says.
    SetUp { volume: Box<DesiredVolume> },
    /// Unmount the top mount at an unwanted volume path, or first the innermost mount
    /// nested below it.
    Unmount {
        key: VolumeKey,
        nested: Option<PathBuf>,
        /// The NFS server behind the mount, for the per-server cap.
        server: Option<String>,
        /// What to do when the unmount does not answer.
        if_hung: IfHung,
    },
    /// Remove an unwanted, unmounted volume path.
    RemoveVolumeDir {
        key: VolumeKey,
        /// What may go with it: only an emptyDir's own data is ever deleted.
        contents: Contents,
    },
    /// Remove the directory of a pod that is gone, once its volumes are.
    RemovePodDir { pod_uid: String },
    /// Record a wanted pod as the owner of its uid's directory, which has no record yet.
    ClaimPodDir { pod: PodRef },
    /// Unmount a local PV's global mount once no pod mount refers to it.
    UnmountGlobal { pv_name: String },
    /// Remove an unmounted global mount point.
    RemoveGlobalDir { pv_name: String },
}

/// What an unmount does when the call does not return (a server that stopped answering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum IfHung {
    /// Wait for it, up to the op's deadline: a local filesystem answers.
    Wait,
    /// After the unmount deadline `umount --force`, and if that hangs too `umount --lazy`.
    ForceThenDetach,
}

/// What a volume directory's removal may delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Contents {
    /// Nothing: the directory is removed only when empty (it was a mount point, or holds
    /// data that is not ours to delete).
    KeepAny,
    /// Everything inside, never crossing into another filesystem or following a link.
    DeleteAll,
}

/// What an op is serialized on: at most one op per key runs at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKey {
    Volume(VolumeKey),
    Pod(String),
    /// A global mount, by PV name.
    Global(String),
}

impl Op {
    pub fn key(&self) -> OpKey {
        match self {
            Op::SetUp { volume } => OpKey::Volume(volume.key.clone()),
            Op::Unmount { key, .. } | Op::RemoveVolumeDir { key, .. } => OpKey::Volume(key.clone()),
            Op::RemovePodDir { pod_uid } => OpKey::Pod(pod_uid.clone()),
            Op::ClaimPodDir { pod } => OpKey::Pod(pod.uid.clone()),
            Op::UnmountGlobal { pv_name } | Op::RemoveGlobalDir { pv_name } => {
                OpKey::Global(pv_name.clone())
            }
        }
    }

    /// The NFS server an op talks to, if any: such ops count against its per-server cap.
    pub fn nfs_server(&self) -> Option<&str> {
        match self {
            Op::SetUp { volume } => match &volume.spec {
                MountSpec::Nfs { server, .. } => Some(server),
                _ => None,
            },
            Op::Unmount { server, .. } => server.as_deref(),
            _ => None,
        }
    }

    /// Whether the op may change the global mount point directories.
    pub fn touches_globals(&self) -> bool {
        match self {
            Op::SetUp { volume } => matches!(volume.spec, MountSpec::Local { .. }),
            Op::UnmountGlobal { .. } | Op::RemoveGlobalDir { .. } => true,
            _ => false,
        }
    }

    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            Op::SetUp { volume } => Some(&volume.key.pod_uid),
            Op::Unmount { key, .. } | Op::RemoveVolumeDir { key, .. } => Some(&key.pod_uid),
            Op::RemovePodDir { pod_uid } => Some(pod_uid),
            Op::ClaimPodDir { pod } => Some(&pod.uid),
            Op::UnmountGlobal { .. } | Op::RemoveGlobalDir { .. } => None,
        }
    }

    /// The volume plugin an op works for, as kubelet names plugins in its metrics
    /// (`kubernetes.io/empty-dir`); pod directories count as `pod-dir`.
    pub fn plugin_label(&self) -> String {
        match self {
            Op::SetUp { volume } => format!("kubernetes.io/{}", volume.key.plugin.as_str()),
            Op::Unmount { key, .. } | Op::RemoveVolumeDir { key, .. } => {
                format!("kubernetes.io/{}", key.plugin.as_str())
            }
            Op::RemovePodDir { .. } | Op::ClaimPodDir { .. } => "pod-dir".into(),
            Op::UnmountGlobal { .. } | Op::RemoveGlobalDir { .. } => {
                "kubernetes.io/local-volume".into()
            }
        }
    }

    /// Whether cutting the op short at shutdown could leave damage: a local PV's set-up may
    /// be formatting or checking a device (mkfs, fsck), which is let finish. Every other op
    /// is safe to abandon (a restart reads the host afresh).
    pub fn must_finish(&self) -> bool {
        matches!(self, Op::SetUp { volume } if matches!(volume.spec, MountSpec::Local { .. }))
    }

    pub fn verb(&self) -> &'static str {
        match self {
            Op::SetUp { .. } => "set-up",
            Op::Unmount { .. } => "unmount",
            Op::RemoveVolumeDir { .. } => "remove-volume-dir",
            Op::RemovePodDir { .. } => "remove-pod-dir",
            Op::ClaimPodDir { .. } => "claim-pod-dir",
            Op::UnmountGlobal { .. } => "unmount-global",
            Op::RemoveGlobalDir { .. } => "remove-global-dir",
        }
    }
}
