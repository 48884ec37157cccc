//! The only place with side effects on the host: the `Mounter` trait (real syscalls or a fake
//! mount table) and `PodFs`, the symlink-safe directory work under the root dir.

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod devices;
pub mod format;
pub mod fs;
mod fs_util;
mod global;
mod helper;
pub use helper::kill_running_helpers;
pub mod http;
pub mod local_dirs;
pub mod mount_events;
pub mod pod_owner;
pub mod real;
pub mod run_lock;
mod sources;
pub mod state_file;
pub mod stats;
pub mod sysfs;
pub mod write_lease;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::mountinfo::MountEntry;
use crate::model::PathType;

/// Why a host operation failed. Each variant names its subject and, where there is one, what
/// the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("mounting {what} at {target} failed: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("unmounting {target} failed: {source}; find what still uses it (fuser -vm {target})")]
    Unmount {
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing {path}: {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("host path {path} is not {expected}: found {found}; create it or fix the volume's path/type")]
    PathCheck {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    #[error("{path} still holds {entries:?}; it was left in place (volumed never deletes data it did not create), remove it by hand if it is not needed")]
    NotEmpty { path: PathBuf, entries: Vec<String> },
    #[error("cannot read the mount table: {0}")]
    MountTable(String),
    #[error("{command} {device} failed: {message}")]
    Tool {
        command: String,
        device: PathBuf,
        message: String,
    },
    #[error("refusing to {action} {device}: {why}")]
    Refused {
        action: &'static str,
        device: PathBuf,
        why: String,
    },
}

impl HostError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(rustix::io::Errno) -> HostError + 'a {
        move |errno| HostError::Io {
            op,
            path: path.to_path_buf(),
            source: errno.into(),
        }
    }
}

/// A mount target reached without following any symlink below the root dir.
pub struct Target {
    pub path: PathBuf,
    /// The target itself, opened `O_PATH | O_NOFOLLOW`.
    pub fd: OwnedFd,
    /// Its parent directory, for re-opening the target after something is mounted on it.
    pub parent: OwnedFd,
}

impl Target {
    /// The target as a mount point, for undoing a mount made on it.
    pub fn mount_point(&self) -> Result<MountPoint, HostError> {
        Ok(MountPoint {
            path: self.path.clone(),
            parent: self.parent.try_clone().map_err(|source| HostError::Io {
                op: "holding the parent of",
                path: self.path.clone(),
                source,
            })?,
            name: self
                .path
                .file_name()
                .expect("volume paths have a final component")
                .to_os_string(),
        })
    }
}

/// A mount point below the root dir whose parent directory was reached without following any
/// link and is held open: unmounting through it acts on the directory checked, whatever is
/// renamed or swapped on the path meanwhile.
pub struct MountPoint {
    pub path: PathBuf,
    /// The directory that holds the mount point, opened `O_PATH`.
    pub parent: OwnedFd,
    pub name: OsString,
}

impl MountPoint {
    /// `/proc/self/fd/<parent>/<name>`: the magic link pins the parent directory, and
    /// `UMOUNT_NOFOLLOW` keeps the last component from being followed.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.parent.as_raw_fd())).join(&self.name)
    }
}

/// A bind source, opened once so the object checked is the object mounted.
pub struct Source {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub is_dir: bool,
    pub is_block: bool,
    /// Where the path's links led (e.g. `/dev/disk/by-id/x` → `/dev/sdb`).
    pub resolved: PathBuf,
}

/// Mount-table access and the mount syscalls. Calls may block (a hung NFS server), so they
/// run only on executor worker threads.
pub trait Mounter: Send + Sync + 'static {
    /// The whole mount table, freshly read.
    fn mount_table(&self) -> Result<Vec<MountEntry>, HostError>;
    /// A file whose poll(POLLPRI) reports mount-table changes, when there is one.
    fn change_file(&self) -> Option<PathBuf>;
    /// Mounts at or below `path` that the directory code (`PodFs`) cannot see for itself; it
    /// asks the kernel about real mounts directly (mount ids), so a real host answers none.
    fn mounts_below(&self, path: &Path) -> Result<Vec<MountEntry>, HostError> {
        let table = self.mount_table()?;
        Ok(table
            .into_iter()
            .filter(|m| m.mount_point.starts_with(path))
            .collect())
    }
    /// True when its mounts are the kernel's, in this process's mount namespace: then the
    /// kernel's mount events (`mount_events`) tell of them.
    fn uses_host_mounts(&self) -> bool {
        false
    }
    /// `mount -t tmpfs -o mode=0777[,size=<bytes>] tmpfs <target>`
    fn mount_tmpfs(&self, target: &Target, size_bytes: Option<u64>) -> Result<(), HostError>;
    /// `mount --bind <source> <target>` and, when read-only, `mount -o remount,bind,ro <target>`
    fn bind(&self, source: &Source, target: &Target, read_only: bool) -> Result<(), HostError>;
    /// `mount -t <fs_type> -o <options> <device> <target>`
    fn mount_device(
        &self,
        device: &Path,
        target: &Target,
        fs_type: &str,
        options: &[String],
        read_only: bool,
    ) -> Result<(), HostError>;
    /// `<mounter> -t nfs [-o <options>] <server:path> <target>`: the mount helper, killed
    /// when it has not finished within `deadline`.
    fn mount_nfs(
        &self,
        source: &str,
        target: &Target,
        options: &[String],
        read_only: bool,
        deadline: Duration,
    ) -> Result<(), HostError>;
    /// `umount --force` or `umount --lazy`: only once a plain unmount hung past its deadline.
    fn force_unmount(&self, target: &MountPoint, mode: ForceMode) -> Result<(), HostError>;
    /// `umount --no-follow <target>` (one layer); Ok when nothing is mounted there.
    fn unmount(&self, target: &MountPoint) -> Result<(), HostError>;
    /// True when something is mounted exactly at the target.
    fn is_mount_point(&self, target: &Target) -> Result<bool, HostError>;
}

/// How hard to push an unmount that did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForceMode {
    /// MNT_FORCE: abort in-flight requests to the server (NFS).
    Force,
    /// MNT_DETACH: take it out of the mount table now, finish when no longer busy.
    Detach,
}

/// What the executor needs of a host path before binding it.
pub fn describe_path_type(expect: PathType) -> &'static str {
    match expect {
        PathType::Unchecked => "anything",
        PathType::Directory | PathType::DirectoryOrCreate => "a directory",
        PathType::File | PathType::FileOrCreate => "a regular file",
        PathType::Socket => "a UNIX socket",
        PathType::CharDevice => "a character device",
        PathType::BlockDevice => "a block device",
    }
}
