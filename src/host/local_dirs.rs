//! Scans the first level of a local-PV `mount_dir`: mount points (capacity from statvfs),
//! block devices and links to them (size from the device), and whatever else is there. Each
//! call may block on a dead disk: worker threads only, under a deadline.

use std::io::{Seek, SeekFrom};
use std::path::Path;

use rustix::fs::{self as rfs, FileType};

use super::fs_util::kind_name;
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
