//! Plain data shared by every stage of the data flow: which volume, where it lives under the
//! root dir, and what must be mounted there. No I/O happens here.

pub mod backoff;
pub mod host_paths;
pub mod local_disk;
pub mod mount_options;
pub mod mountinfo;
pub mod names;
pub mod notice;
pub mod on_disk;
pub mod op;
pub mod probe;
pub mod quantity;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The kubelet plugin a volume belongs to; it names the `kubernetes.io~<plugin>` directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub enum Plugin {
    EmptyDir,
    HostPath,
    LocalVolume,
    Nfs,
    /// A plugin directory found on disk that this version does not manage (e.g. kubelet's).
    Other(String),
}

impl Plugin {
    pub fn as_str(&self) -> &str {
        match self {
            Plugin::EmptyDir => "empty-dir",
            Plugin::HostPath => "host-path",
            Plugin::LocalVolume => "local-volume",
            Plugin::Nfs => "nfs",
            Plugin::Other(name) => name,
        }
    }

    /// The directory name under `<root>/pods/<uid>/volumes/`.
    pub fn dir_name(&self) -> String {
        format!("kubernetes.io~{}", self.as_str())
    }

    pub fn from_dir_name(dir: &str) -> Option<Plugin> {
        let name = dir.strip_prefix("kubernetes.io~")?;
        Some(match name {
            "empty-dir" => Plugin::EmptyDir,
            "host-path" => Plugin::HostPath,
            "local-volume" => Plugin::LocalVolume,
            "nfs" => Plugin::Nfs,
            other => Plugin::Other(other.to_string()),
        })
    }
}

impl From<Plugin> for String {
    fn from(plugin: Plugin) -> String {
        plugin.as_str().to_string()
    }
}

impl fmt::Display for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one pod volume: `<root>/pods/<pod_uid>/volumes/kubernetes.io~<plugin>/<name>`,
/// or for a raw block volume `<root>/pods/<pod_uid>/volumeDevices/kubernetes.io~<plugin>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct VolumeKey {
    pub pod_uid: String,
    pub plugin: Plugin,
    pub name: String,
    /// A raw block volume (volumeMode Block), kept under `volumeDevices/`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub block: bool,
}

impl VolumeKey {
    pub fn new(pod_uid: &str, plugin: Plugin, name: &str) -> VolumeKey {
        VolumeKey {
            pod_uid: pod_uid.into(),
            plugin,
            name: name.into(),
            block: false,
        }
    }

    /// `volumes` or `volumeDevices`: the directory under the pod dir that holds this kind.
    pub fn area(&self) -> &'static str {
        if self.block {
            "volumeDevices"
        } else {
            "volumes"
        }
    }

    pub fn path(&self, root: &Path) -> PathBuf {
        pod_dir(root, &self.pod_uid)
            .join(self.area())
            .join(self.plugin.dir_name())
            .join(&self.name)
    }
}

impl fmt::Display for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let block = if self.block { " (block)" } else { "" };
        write!(f, "{}/{}/{}{block}", self.pod_uid, self.plugin, self.name)
    }
}

/// `<root>/plugins/kubernetes.io/<plugin>/mounts/<pv-name>`: a device's global mount.
pub fn global_mount_path(root: &Path, plugin: &Plugin, pv_name: &str) -> PathBuf {
    root.join("plugins/kubernetes.io")
        .join(plugin.as_str())
        .join("mounts")
        .join(pv_name)
}

pub fn pod_dir(root: &Path, pod_uid: &str) -> PathBuf {
    root.join("pods").join(pod_uid)
}

/// The checks Kubernetes defines for `hostPath.type`; `Unchecked` is the empty type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PathType {
    Unchecked,
    Directory,
    DirectoryOrCreate,
    File,
    FileOrCreate,
    Socket,
    CharDevice,
    BlockDevice,
}

impl PathType {
    pub fn parse(value: &str) -> Option<PathType> {
        Some(match value {
            "" => PathType::Unchecked,
            "Directory" => PathType::Directory,
            "DirectoryOrCreate" => PathType::DirectoryOrCreate,
            "File" => PathType::File,
            "FileOrCreate" => PathType::FileOrCreate,
            "Socket" => PathType::Socket,
            "CharDevice" => PathType::CharDevice,
            "BlockDevice" => PathType::BlockDevice,
            _ => return None,
        })
    }
}

/// What decided the size of a memory-backed emptyDir's tmpfs (the smallest one wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TmpfsSize {
    /// The volume's `sizeLimit`.
    SizeLimit,
    /// The pod's memory limit (every container sets one).
    PodMemoryLimit,
    /// The node's allocatable memory (in file mode: MemTotal).
    NodeMemory,
    /// Nothing known: the kernel's default.
    KernelDefault,
}

impl TmpfsSize {
    pub fn describe(self) -> &'static str {
        match self {
            TmpfsSize::SizeLimit => "its sizeLimit",
            TmpfsSize::PodMemoryLimit => "the pod's memory limit",
            TmpfsSize::NodeMemory => "the node's memory",
            TmpfsSize::KernelDefault => "the kernel's default",
        }
    }
}

/// What the host must show at a volume's path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum MountSpec {
    /// `mount -t tmpfs -o size=<bytes> tmpfs <path>` (emptyDir, medium Memory).
    Tmpfs {
        size_bytes: Option<u64>,
        sized_by: TmpfsSize,
    },
    /// A plain directory that holds the pod's data (emptyDir, default medium).
    Directory,
    /// `mount --bind <source> <path>`, remounted read-only when asked.
    Bind {
        source: PathBuf,
        expect: PathType,
        read_only: bool,
    },
    /// A `local` PV: a directory is bound like a hostPath; a block device is safe-formatted,
    /// mounted once at its global mount, and that is bound into the pod.
    Local {
        path: PathBuf,
        fs_type: String,
        mount_options: Vec<String>,
        read_only: bool,
    },
    /// `mount -t nfs -o <options> <server>:<path> <target>` through the mount helper.
    Nfs {
        server: String,
        path: String,
        options: Vec<String>,
        read_only: bool,
    },
    /// A raw block volume: the device node bound onto a file in `volumeDevices/`.
    BlockDevice { path: PathBuf, read_only: bool },
}

impl MountSpec {
    pub fn is_mount(&self) -> bool {
        !matches!(self, MountSpec::Directory)
    }

    pub fn describe(&self) -> String {
        match self {
            MountSpec::Tmpfs {
                size_bytes: Some(size),
                sized_by,
            } => format!(
                "tmpfs size={} ({})",
                human_bytes(*size),
                sized_by.describe()
            ),
            MountSpec::Tmpfs {
                size_bytes: None, ..
            } => "tmpfs (no size known: the kernel's default, half of RAM)".to_string(),
            MountSpec::Directory => "directory".to_string(),
            MountSpec::Local {
                path,
                fs_type,
                read_only,
                ..
            } => format!(
                "local {} ({fs_type} if a device){}",
                path.display(),
                if *read_only { " (ro)" } else { "" }
            ),
            MountSpec::Nfs {
                server,
                path,
                read_only,
                ..
            } => format!(
                "nfs {server}:{path}{}",
                if *read_only { " (ro)" } else { "" }
            ),
            MountSpec::BlockDevice { path, read_only } => format!(
                "block device {}{}",
                path.display(),
                if *read_only { " (ro)" } else { "" }
            ),
            MountSpec::Bind {
                source, read_only, ..
            } => format!(
                "bind {}{}",
                source.display(),
                if *read_only { " (ro)" } else { "" }
            ),
        }
    }
}

/// Bytes in the largest binary unit that divides them exactly: 64Mi, 1536Ki, 1000.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"];
    for (index, unit) in units.iter().enumerate() {
        let scale = 1u64 << (10 * (units.len() - index));
        if bytes >= scale && bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// The pod a volume belongs to, for messages and status.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One volume the pods on this host need, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredVolume {
    pub key: VolumeKey,
    pub pod: PodRef,
    /// The volume's name in the pod spec.
    pub volume_name: String,
    /// The PersistentVolume behind it, for PVC-backed volumes.
    pub pv_name: Option<String>,
    /// The claim's name (in the pod's namespace), for PVC-backed volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    pub spec: MountSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_are_shown_in_the_largest_exact_unit() {
        assert_eq!(human_bytes(64 << 20), "64Mi");
        assert_eq!(human_bytes(1536 << 10), "1536Ki");
        assert_eq!(human_bytes(1000), "1000");
        assert_eq!(human_bytes(0), "0");
    }

    #[test]
    fn volume_paths_follow_the_kubelet_layout() {
        let key = VolumeKey::new("u1", Plugin::LocalVolume, "pv1");
        assert_eq!(
            key.path(Path::new("/var/lib/kubelet")),
            Path::new("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~local-volume/pv1")
        );
        assert_eq!(
            Plugin::from_dir_name("kubernetes.io~empty-dir"),
            Some(Plugin::EmptyDir)
        );
        assert_eq!(
            Plugin::from_dir_name("kubernetes.io~csi"),
            Some(Plugin::Other("csi".into()))
        );
        assert_eq!(Plugin::from_dir_name("other"), None);
    }
}
