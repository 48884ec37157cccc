//! Low-level directory helpers for `PodFs`: rmdir with a listing, a one-filesystem
//! recursive delete that never follows links, and directory listing from `O_PATH` fds.

use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::HostError;

/// Deepest emptyDir tree volumed removes; deeper trees are reported instead.
const MAX_DEPTH: usize = 64;

/// `rmdir <path>`, with the contents named when it is not empty.
pub(crate) fn rmdir(parent: &impl AsFd, name: &str, path: &Path) -> Result<(), HostError> {
    match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::NOTEMPTY | Errno::EXIST) => {
            let dir = rfs::openat(
                parent,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(HostError::io("opening", path))?;
            let mut entries = list(&dir, path)?;
            entries.truncate(8);
            Err(HostError::NotEmpty {
                path: path.to_path_buf(),
                entries,
            })
        }
        Err(Errno::BUSY) => Err(HostError::Unsafe {
            path: path.to_path_buf(),
            why: "it is still a mount point".into(),
        }),
        Err(e) => Err(HostError::io("removing", path)(e)),
    }
}

/// `rm -r --one-file-system <path>` without following links.
pub(super) fn remove_tree(
    parent: &impl AsFd,
    name: &str,
    path: &Path,
    mount_id: u64,
    depth: usize,
) -> Result<(), HostError> {
    if depth > MAX_DEPTH {
        return Err(HostError::Unsafe {
            path: path.to_path_buf(),
            why: format!("it is nested deeper than {MAX_DEPTH} levels; remove it by hand"),
        });
    }
    let dir = rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(HostError::io("opening", path))?;
    // The mount id, not the device number: a bind mount of the same filesystem shares the
    // device but not the mount, and must not be descended into either.
    if mount_id_of(&dir, path)? != mount_id {
        return Err(HostError::Unsafe {
            path: path.to_path_buf(),
            why: "something is mounted there; volumed does not delete across mounts".into(),
        });
    }
    for entry in list(&dir, path)? {
        let child = path.join(&entry);
        let stat = rfs::statat(&dir, entry.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(HostError::io("inspecting", &child))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            remove_tree(&dir, &entry, &child, mount_id, depth + 1)?;
        } else {
            // rm <child> (a link is removed, never followed)
            rfs::unlinkat(&dir, entry.as_str(), AtFlags::empty())
                .map_err(HostError::io("removing", &child))?;
        }
    }
    rmdir(parent, name, path)
}

/// The names in a directory, without `.` and `..`.
pub(crate) fn list(dir: &impl AsFd, path: &Path) -> Result<Vec<String>, HostError> {
    Ok(list_typed(dir, path)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// The names in a directory with their types as readdir reports them (`d_type`). Unlike a
/// stat, this never reaches into a filesystem mounted on an entry, so a dead NFS server
/// cannot hang it.
pub(crate) fn list_typed(
    dir: &impl AsFd,
    path: &Path,
) -> Result<Vec<(String, FileType)>, HostError> {
    // O_PATH descriptors cannot be read: open the directory itself for reading.
    let readable = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(HostError::io("listing", path))?;
    let entries = rfs::Dir::new(readable).map_err(HostError::io("listing", path))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(HostError::io("listing", path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push((name, entry.file_type()));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

pub(super) fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "directory",
        FileType::RegularFile => "regular file",
        FileType::Symlink => "symlink",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Fifo => "fifo",
        FileType::Unknown => "file of unknown type",
    }
}

/// The id of the mount a descriptor lives on (`stat --format=%m` gives its mount point).
pub(super) fn mount_id_of(fd: &impl AsFd, path: &Path) -> Result<u64, HostError> {
    // statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID)
    let stat = rfs::statx(fd, "", AtFlags::EMPTY_PATH, rfs::StatxFlags::MNT_ID)
        .map_err(HostError::io("inspecting", path))?;
    // Kernels before 5.8 leave the id out (and zero): refuse rather than compare zeros.
    if stat.stx_mask & rfs::StatxFlags::MNT_ID.bits() == 0 {
        return Err(HostError::io(
            "inspecting (this kernel reports no mount ids; 5.8+ is needed)",
            path,
        )(Errno::NOTSUP));
    }
    Ok(stat.stx_mnt_id)
}
