//! Scans the first level of a local-PV `mount_dir`: mount points (capacity from statvfs),
//! block devices and links to them (size from the device), and whatever else is there. Each
//! call may block on a dead disk: worker threads only, under a deadline.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use rustix::fs::{self as rfs, FileType};

use std::os::fd::OwnedFd;

use super::fs_util::{kind_name, list, mount_id_of, remove_tree};
use super::sysfs::Sysfs;
use super::HostError;
use super::{Mounter, Target};
use crate::model::local_disk::{Entry, EntryKind};
use crate::model::mountinfo::{other_mount_of, MountEntry};

/// The entries of `dir` in name order; a missing `dir` has none.
pub fn scan_mount_dir(dir: &Path, mounts: &[MountEntry]) -> Result<Vec<Entry>, HostError> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io("listing", dir)(errno(&e))),
    };
    // The mount table names mount points by their real path.
    let real_dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut entries = Vec::new();
    for item in listing {
        let item = item.map_err(|e| HostError::io("listing", dir)(errno(&e)))?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = dir.join(&name);
        let kind = inspect(&path, &real_dir.join(&name), mounts)?;
        entries.push(Entry { name, kind });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn inspect(path: &Path, real: &Path, mounts: &[MountEntry]) -> Result<EntryKind, HostError> {
    // stat -L <path> (a link to a device, as /dev/disk/by-id/... is, counts as the device)
    let followed = match rfs::stat(path) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(EntryKind::Other("a link to nothing".into())),
        Err(e) => return Err(HostError::io("inspecting", path)(e)),
    };
    match FileType::from_raw_mode(followed.st_mode) {
        FileType::BlockDevice => Ok(EntryKind::BlockDevice {
            size_bytes: device_size(path)?,
        }),
        FileType::Directory if mounts.iter().any(|m| m.mount_point == real) => {
            // stat -f <path>
            let fs = rfs::statvfs(path).map_err(HostError::io("measuring", path))?;
            Ok(EntryKind::MountPoint {
                capacity_bytes: fs.f_blocks.saturating_mul(fs.f_frsize),
            })
        }
        FileType::Directory => Ok(EntryKind::NotMounted),
        other => Ok(EntryKind::Other(format!("a {}", kind_name(other)))),
    }
}

/// A block device's size: where a read-only open of it ends (`blockdev --getsize64`).
fn device_size(path: &Path) -> Result<u64, HostError> {
    let mut device =
        std::fs::File::open(path).map_err(|e| HostError::io("opening", path)(errno(&e)))?;
    device
        .seek(SeekFrom::End(0))
        .map_err(|e| HostError::io("measuring", path)(errno(&e)))
}

/// Opens `mount_dir` without following any link on the way (`openat2 RESOLVE_NO_SYMLINKS`):
/// what is cleaned below it is what the checks looked at.
fn open_mount_dir(mount_dir: &Path) -> Result<OwnedFd, HostError> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    openat2(
        CWD,
        mount_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS,
    )
    .map_err(HostError::io(
        "opening (no links allowed on the way)",
        mount_dir,
    ))
}

/// Empties a released Filesystem PV's mount point `<mount_dir>/<name>`, keeping the mount
/// point itself: `rm -r --one-file-system <mount point>/*` without following a link, and
/// never into a mount below it. Checked right before, through the held parent: something is
/// mounted there (an unmounted mount point would be the parent filesystem's directory) and no
/// other mount in a fresh mount table shows that filesystem (a pod's bind).
pub fn empty_mount_point(
    mounter: &dyn Mounter,
    mount_dir: &Path,
    name: &str,
) -> Result<(), HostError> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let path = mount_dir.join(name);
    let parent = open_mount_dir(mount_dir)?;
    let target = Target {
        path: path.clone(),
        fd: rfs::openat(
            &parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(HostError::io("opening", &path))?,
        parent: parent
            .try_clone()
            .map_err(|e| HostError::io("holding", mount_dir)(errno(&e)))?,
    };
    if !mounter.is_mount_point(&target)? {
        return Err(HostError::Unsafe {
            path,
            why: "nothing is mounted there (the disk is gone?): cleaning it would clean the filesystem below; it is cleaned once the disk is back".into(),
        });
    }
    let real = mount_dir
        .canonicalize()
        .map_err(|e| HostError::io("resolving", mount_dir)(errno(&e)))?;
    if let Some(user) = other_mount_of(&real.join(name), &mounter.mount_table()?) {
        return Err(HostError::Unsafe {
            path,
            why: format!(
                "{} still shows it; it is cleaned once that mount is gone",
                user.display()
            ),
        });
    }
    let dir = rfs::openat(
        &parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(HostError::io("opening", &path))?;
    let mount_id = mount_id_of(&dir, &path)?;
    for entry in list(&dir, &path)? {
        let child = path.join(&entry);
        let stat = rfs::statat(&dir, entry.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(HostError::io("inspecting", &child))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            remove_tree(&dir, &entry, &child, mount_id, 1)?;
        } else {
            // rm <child> (a link is removed, never followed)
            rfs::unlinkat(&dir, entry.as_str(), AtFlags::empty())
                .map_err(HostError::io("removing", &child))?;
        }
    }
    Ok(())
}

/// Wipes a released Block PV's device `<mount_dir>/<name>` (the device it links to) with
/// `cleaner` (default `wipefs --all <device>`; `LOCAL_PV_BLKDEVICE` names the device, as the
/// upstream provisioner sets it). Refused, from a fresh look right before, while the device
/// or one of its partitions is mounted, bound as a pod's raw block volume under `root_dir`,
/// held (sysfs holders: dm, md, bcache), partitioned, or cannot be opened exclusively.
pub fn wipe_device(
    mounter: &dyn Mounter,
    mount_dir: &Path,
    name: &str,
    cleaner: Option<&[String]>,
    root_dir: &Path,
) -> Result<(), HostError> {
    let path = mount_dir.join(name);
    open_mount_dir(mount_dir)?;
    let device = path
        .canonicalize()
        .map_err(|e| HostError::io("resolving", &path)(errno(&e)))?;
    let stat = rfs::stat(&device).map_err(HostError::io("inspecting", &device))?;
    let refuse = |why: String| HostError::Unsafe {
        path: device.clone(),
        why,
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::BlockDevice {
        return Err(refuse(
            "it is no longer a block device; it is not wiped".into(),
        ));
    }
    let (major, minor) = (rfs::major(stat.st_rdev), rfs::minor(stat.st_rdev));
    let sysfs = Sysfs::default();
    let block = sysfs
        .name_of(major, minor)
        .and_then(|name| sysfs.block(&name))
        .ok_or_else(|| refuse(format!("device {major}:{minor} is not in sysfs")))?;
    if !block.holders.is_empty() || !block.partitions.is_empty() {
        return Err(refuse(format!(
            "it has holders ({}) or partitions ({}); it is wiped only as a whole, unused disk",
            block.holders.join(", "),
            block.partitions.join(", ")
        )));
    }
    let numbers = format!("{major}:{minor}");
    let table = mounter.mount_table()?;
    let raw_area = root_dir.join("pods");
    for mount in &table {
        let raw_bind = mount.mount_point.starts_with(&raw_area)
            && mount
                .mount_point
                .components()
                .any(|c| c.as_os_str() == "volumeDevices")
            && rfs::stat(&mount.mount_point).is_ok_and(|st| st.st_rdev == stat.st_rdev);
        if mount.device == numbers || raw_bind {
            return Err(refuse(format!(
                "{} still uses it; it is wiped once nothing does",
                mount.mount_point.display()
            )));
        }
    }
    // An exclusive open fails while anything in any namespace has it mounted or claimed.
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, nix::libc::O_EXCL);
    drop(
        options
            .open(&device)
            .map_err(|e| refuse(format!("an exclusive open failed ({e}): something uses it")))?,
    );
    let default = ["wipefs".to_string(), "--all".to_string()];
    let argv: Vec<String> = match cleaner {
        Some(argv) => argv.to_vec(),
        None => default.to_vec(),
    };
    let mut command = std::process::Command::new(&argv[0]);
    command.args(&argv[1..]).env("LOCAL_PV_BLKDEVICE", &device);
    if cleaner.is_none() {
        command.arg(&device);
    }
    // A cleaner must not outlive a daemon killed mid-cleanup: the restarted daemon resumes the
    // cleanup from its journal, and two cleaners on one disk would race.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let shown = argv.join(" ");
    let out = command.output().map_err(|e| HostError::Tool {
        command: shown.clone(),
        device: device.clone(),
        message: format!("cannot run it: {e}"),
    })?;
    if !out.status.success() {
        return Err(HostError::Tool {
            command: shown,
            device,
            message: format!(
                "it exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

fn errno(err: &std::io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(err).unwrap_or(rustix::io::Errno::IO)
}
