//! The real `Mounter`: mount(2)/umount2(2) through sys-mount and nix, and the mount table from
//! `/proc/self/mountinfo`. Mounts go to `/proc/self/fd/<n>` of a target opened without
//! following links, so the checked directory is the one mounted on.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, StatxAttributes, StatxFlags};
use sys_mount::{Mount, MountFlags};

use super::helper::HelperRuns;
use super::{ForceMode, HostError, MountPoint, Mounter, Source, Target};
use crate::model::mountinfo::{parse, MountEntry};

const MOUNTINFO: &str = "/proc/self/mountinfo";

pub struct RealMounter {
    /// The mount helper for NFS (`--mounter-path`), as kubelet's mounter path.
    pub mounter_path: PathBuf,
    helpers: HelperRuns,
}

impl RealMounter {
    pub fn new(mounter_path: PathBuf) -> RealMounter {
        RealMounter {
            mounter_path,
            helpers: HelperRuns::default(),
        }
    }
}

impl Default for RealMounter {
    fn default() -> Self {
        RealMounter::new(PathBuf::from("mount"))
    }
}

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Mounter for RealMounter {
    fn mount_table(&self) -> Result<Vec<MountEntry>, HostError> {
        crate::metrics::get().mount_table_reads.inc();
        let file = std::fs::File::open(MOUNTINFO)
            .map_err(|e| HostError::MountTable(format!("{MOUNTINFO}: {e}")))?;
        parse(std::io::BufReader::new(file), MOUNTINFO)
            .map_err(|e| HostError::MountTable(e.to_string()))
    }

    fn change_file(&self) -> Option<PathBuf> {
        Some(PathBuf::from(MOUNTINFO))
    }

    fn uses_host_mounts(&self) -> bool {
        true
    }

    /// None: `PodFs` compares mount ids, which shows every real mount, without a whole table.
    fn mounts_below(&self, _path: &Path) -> Result<Vec<MountEntry>, HostError> {
        Ok(Vec::new())
    }

    fn mount_tmpfs(&self, target: &Target, size_bytes: Option<u64>) -> Result<(), HostError> {
        let data = match size_bytes {
            Some(size) => format!("mode=0777,size={size}"),
            None => "mode=0777".to_string(),
        };
        // mount -t tmpfs -o <data> tmpfs <target>
        Mount::builder()
            .fstype("tmpfs")
            .data(&data)
            .mount("tmpfs", fd_path(&target.fd))
            .map(drop)
            .map_err(|source| HostError::Mount {
                what: format!("tmpfs ({data})"),
                target: target.path.clone(),
                source,
            })
    }

    fn bind(&self, source: &Source, target: &Target, read_only: bool) -> Result<(), HostError> {
        let what = format!("bind of {}", source.path.display());
        let fail = |what: &str| mount_error(what, &target.path);
        // mount --bind <source> <target>  ("none": mount(2) ignores the type of a bind)
        Mount::builder()
            .fstype("none")
            .flags(MountFlags::BIND)
            .mount(fd_path(&source.fd), fd_path(&target.fd))
            .map_err(fail(&what))?;
        // The target fd still names the covered directory; re-open the path through its parent
        // to reach the new mount for the follow-up changes.
        let name = target
            .path
            .file_name()
            .expect("volume paths have a final component");
        let mounted = rfs::openat(
            &target.parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(HostError::io("re-opening", &target.path));
        let follow_up = mounted.and_then(|mounted| {
            // mount --make-rslave <target>: host mounts under the source still show up in the
            // pod, but nothing mounted or unmounted in the pod's copy reaches the host.
            // (nix: sys-mount's builder has no way to pass propagation flags alone.)
            nix::mount::mount(
                None::<&str>,
                &fd_path(&mounted),
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|errno| fail(&format!("rslave propagation for {what}"))(errno.into()))?;
            if read_only {
                // mount -o remount,bind,ro <target>
                // A bind remount replaces the per-mount flags: keep the source's nosuid, nodev,
                // noexec and atime flags, only adding ro.
                let kept = kept_flags(&mounted).map_err(fail(&format!("statvfs of {what}")))?;
                Mount::builder()
                    .fstype("none")
                    .flags(MountFlags::BIND | MountFlags::REMOUNT | MountFlags::RDONLY | kept)
                    .mount("none", fd_path(&mounted))
                    .map_err(fail(&format!("read-only remount of {what}")))?;
            }
            Ok(())
        });
        if let Err(err) = follow_up {
            // Never leave a half-made mount (writable where read-only was asked) in place.
            if let Err(undo) = target.mount_point().and_then(|m| self.unmount(&m)) {
                tracing::error!(target = %target.path.display(), %undo, "cannot undo a half-made bind mount; status reports it as differing");
            }
            return Err(err);
        }
        Ok(())
    }

    fn mount_device(
        &self,
        device: &Path,
        target: &Target,
        fs_type: &str,
        options: &[String],
        read_only: bool,
    ) -> Result<(), HostError> {
        let (flags, data) = split_options(options, read_only);
        let what = format!("{fs_type} on {}", device.display());
        // mount -t <fs_type> -o <options> <device> <target>
        let builder = Mount::builder().fstype(fs_type).flags(flags);
        let builder = if data.is_empty() {
            builder
        } else {
            builder.data(&data)
        };
        builder
            .mount(device, fd_path(&target.fd))
            .map(drop)
            .map_err(mount_error(&what, &target.path))
    }

    fn mount_nfs(
        &self,
        source: &str,
        target: &Target,
        options: &[String],
        read_only: bool,
        deadline: Duration,
    ) -> Result<(), HostError> {
        let mut options: Vec<String> = options
            .iter()
            .filter(|o| !(read_only && *o == "rw"))
            .cloned()
            .collect();
        if read_only && !options.iter().any(|o| o == "ro") {
            options.push("ro".into());
        }
        // <mounter> -t nfs -o <options> <server:path> <target>: one argument per field, no
        // shell. The helper gets the target as a path (it cannot take our fd); it was just
        // created below the root dir without following links.
        let mut command = Command::new(&self.mounter_path);
        command.args(["-t", "nfs"]);
        if !options.is_empty() {
            command.arg("-o").arg(options.join(","));
        }
        command.arg(source).arg(&target.path);
        let what = format!("nfs {source} ({} -t nfs)", self.mounter_path.display());
        let fail = |message: String| HostError::Mount {
            what: what.clone(),
            target: target.path.clone(),
            source: std::io::Error::other(message),
        };
        match self.helpers.run(command, &target.path, deadline) {
            Ok((status, _)) if status.success() => Ok(()),
            Ok((status, output)) => Err(fail(format!("the mount helper {status}: {output}"))),
            Err(why) => Err(fail(format!("the mount helper: {why}"))),
        }
    }

    fn force_unmount(&self, target: &MountPoint, mode: ForceMode) -> Result<(), HostError> {
        // umount --force <target> / umount --lazy <target>, through the held parent
        let flags = match mode {
            ForceMode::Force => MntFlags::MNT_FORCE,
            ForceMode::Detach => MntFlags::MNT_DETACH,
        };
        match umount2(&target.proc_path(), flags | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => Ok(()),
            Err(errno) => Err(HostError::Unmount {
                target: target.path.clone(),
                source: errno.into(),
            }),
        }
    }

    fn unmount(&self, target: &MountPoint) -> Result<(), HostError> {
        // umount --no-follow <target>, through the held parent: no link on the path, not even
        // one swapped in after it was checked, can lead it out of the root dir. nix, not
        // sys-mount: sys-mount 3.1 defines UnmountFlags::NOFOLLOW as O_NOFOLLOW instead of
        // UMOUNT_NOFOLLOW, which umount2 refuses.
        match umount2(&target.proc_path(), MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EINVAL) if !is_mount_root_at(target)? => Ok(()),
            Err(errno) => Err(HostError::Unmount {
                target: target.path.clone(),
                source: errno.into(),
            }),
        }
    }

    fn is_mount_point(&self, target: &Target) -> Result<bool, HostError> {
        let name = target
            .path
            .file_name()
            .expect("volume paths have a final component");
        // Opening through the parent crosses into whatever is mounted on the target.
        let current = rfs::openat(
            &target.parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(HostError::io("re-opening", &target.path))?;
        mount_root(current.as_fd(), &target.path)
    }
}

/// Whether something is mounted on the mount point's name in its held parent.
fn is_mount_root_at(target: &MountPoint) -> Result<bool, HostError> {
    match rfs::openat(
        &target.parent,
        &target.name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => mount_root(fd.as_fd(), &target.path),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(HostError::io("opening", &target.path)(e)),
    }
}

/// statx(fd, "", AT_EMPTY_PATH) reports STATX_ATTR_MOUNT_ROOT for the root of a mount, bind mounts included.
fn mount_root(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> Result<bool, HostError> {
    let stat = rfs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(HostError::io("inspecting", path))?;
    if !stat
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
    {
        return Err(HostError::io("inspecting", path)(rustix::io::Errno::NOTSUP));
    }
    Ok(stat.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Splits mount options into the flags mount(2) takes and the filesystem's data string.
pub fn split_options(options: &[String], read_only: bool) -> (MountFlags, String) {
    let mut flags = if read_only {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" | "defaults" => {}
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "nodev" => flags |= MountFlags::NODEV,
            "nosuid" => flags |= MountFlags::NOSUID,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

fn mount_error(what: &str, target: &Path) -> impl FnOnce(std::io::Error) -> HostError {
    let (what, target) = (what.to_string(), target.to_path_buf());
    move |source| HostError::Mount {
        what,
        target,
        source,
    }
}

/// The per-mount flags of a mount, as remount flags (`statvfs` reports them).
fn kept_flags(mounted: &impl std::os::fd::AsFd) -> std::io::Result<MountFlags> {
    use nix::sys::statvfs::{fstatvfs, FsFlags};
    let flags = fstatvfs(mounted)?.flags();
    let map = [
        (FsFlags::ST_NOSUID, MountFlags::NOSUID),
        (FsFlags::ST_NODEV, MountFlags::NODEV),
        (FsFlags::ST_NOEXEC, MountFlags::NOEXEC),
        (FsFlags::ST_NOATIME, MountFlags::NOATIME),
        (FsFlags::ST_NODIRATIME, MountFlags::NODIRATIME),
        (FsFlags::ST_RELATIME, MountFlags::RELATIME),
    ];
    Ok(map
        .iter()
        .filter(|(st, _)| flags.contains(*st))
        .fold(MountFlags::empty(), |acc, (_, ms)| acc | *ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_into_flags_and_filesystem_data() {
        let options: Vec<String> = ["noatime", "nodev", "data=ordered", "discard"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = split_options(&options, true);
        assert_eq!(
            flags,
            MountFlags::RDONLY | MountFlags::NOATIME | MountFlags::NODEV
        );
        assert_eq!(data, "data=ordered,discard");
    }
}
