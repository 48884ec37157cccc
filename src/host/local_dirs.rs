//! Scans the first level of a local-PV `mount_dir`: mount points (capacity from statvfs),
//! block devices and links to them (size from the device), and whatever else is there. Each
//! call may block on a dead disk: worker threads only, under a deadline.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use rustix::fs::{self as rfs, FileType};

use super::fs_util::{kind_name, list, mount_id_of, remove_tree};
use super::HostError;
use crate::model::local_disk::{Entry, EntryKind};
use crate::model::mountinfo::MountEntry;

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

fn errno(err: &std::io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(err).unwrap_or(rustix::io::Errno::IO)
}

/// Empties a released Filesystem PV's mount point `<mount_dir>/<name>`, keeping the mount
/// point itself: `rm -r --one-file-system <mount point>/*` without following a link, and
/// never into a mount below it. The caller has checked that no other mount shows the volume.
pub fn empty_mount_point(mount_dir: &Path, name: &str) -> Result<(), HostError> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let path = mount_dir.join(name);
    let open = |at: &dyn std::os::fd::AsFd, name: &str, path: &Path| {
        rfs::openat(
            at.as_fd(),
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(HostError::io("opening", path))
    };
    let parent = rfs::open(
        mount_dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(HostError::io("opening", mount_dir))?;
    let dir = open(&parent, name, &path)?;
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

/// Wipes a released Block PV's device `<mount_dir>/<name>` (or the device it links to) with
/// `cleaner` (default `wipefs --all <device>`; `LOCAL_PV_BLKDEVICE` names the device, as the
/// upstream provisioner sets it). Refused while the mount table shows the device anywhere.
pub fn wipe_device(
    mount_dir: &Path,
    name: &str,
    cleaner: Option<&[String]>,
    mounts: &[MountEntry],
) -> Result<(), HostError> {
    let path = mount_dir.join(name);
    let device = path
        .canonicalize()
        .map_err(|e| HostError::io("resolving", &path)(errno(&e)))?;
    let stat = rfs::stat(&device).map_err(HostError::io("inspecting", &device))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::BlockDevice {
        return Err(HostError::Unsafe {
            path,
            why: "it is no longer a block device; it is not wiped".into(),
        });
    }
    let number = format!("{}:{}", rfs::major(stat.st_rdev), rfs::minor(stat.st_rdev));
    if let Some(user) = mounts.iter().find(|m| m.device == number) {
        return Err(HostError::Unsafe {
            path,
            why: format!(
                "it is mounted at {}; it is wiped once nothing mounts it",
                user.mount_point.display()
            ),
        });
    }
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
