//! The owner record of a pod directory, `<root>/pods/<uid>/volumed-owner`: the pod
//! (`namespace/name`) the directory was made for. Written once, before the first volume goes
//! in, and removed only with the directory, so a pod that arrives with a departed pod's uid is
//! told apart from it and never set up in its directory.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::fs_util::kind_name;
use super::HostError;
use crate::model::names::check_object_name;
use crate::model::on_disk::DirOwner;
use crate::model::PodRef;

/// The record's name in the pod directory.
pub const OWNER_FILE: &str = "volumed-owner";

/// Longer than any `namespace/name` (63 + 1 + 253): anything bigger is not a record.
const MAX_RECORD: usize = 512;

/// Makes the pod directory `dir` (at `path`) belong to `pod`: records it when it has no record
/// yet, refuses when it belongs to another pod.
pub(super) fn claim(dir: &OwnedFd, path: &Path, pod: &PodRef) -> Result<(), HostError> {
    let owner = pod.to_string();
    let refuse = |why: String| HostError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    if parse_record(&owner, false) != DirOwner::Pod(owner.clone()) {
        return Err(refuse(format!(
            "pod {owner} has no valid namespace/name to record as its owner"
        )));
    }
    // Twice at most: a record that is there but empty (a crash while writing it) is
    // removed and written again; one that another op of this pod wrote is read back.
    for _ in 0..2 {
        match read_owner(dir, path)? {
            DirOwner::Pod(found) if found == owner => return Ok(()),
            DirOwner::Pod(found) => return Err(refuse(format!("it belongs to pod {found}, which had uid {} before {owner}; it is set up for {owner} only once that pod's volumes are torn down and the directory is gone", pod.uid))),
            DirOwner::Unreadable(why) => return Err(refuse(format!("its owner record {OWNER_FILE} is unreadable ({why}); check whose directory it is, then fix or remove that file"))),
            DirOwner::Unrecorded => {}
        }
        match write_record(dir, &owner) {
            Ok(()) => return Ok(()),
            Err(Errno::EXIST) => {
                if read_owner(dir, path)? == DirOwner::Unrecorded {
                    // rm <pod dir>/volumed-owner (empty)
                    match rfs::unlinkat(dir, OWNER_FILE, AtFlags::empty()) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => {
                            return Err(HostError::io("removing the empty owner record of", path)(
                                e,
                            ))
                        }
                    }
                }
            }
            Err(e) => return Err(HostError::io("recording the owner of", path)(e)),
        }
    }
    Err(refuse(
        "its owner record keeps changing under volumed; it is looked at again".into(),
    ))
}

/// Reads a pod directory's owner record; a missing or empty one is `Unrecorded`. An error
/// that says nothing about the record (out of descriptors, EIO) is an error, not a verdict.
pub(super) fn read_owner(pod_dir: &impl AsFd, path: &Path) -> Result<DirOwner, HostError> {
    let record = path.join(OWNER_FILE);
    // O_NONBLOCK: a FIFO planted in its place must not hang the scan.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rfs::openat(pod_dir, OWNER_FILE, flags, Mode::empty()) {
        Ok(file) => file,
        Err(Errno::NOENT) => return Ok(DirOwner::Unrecorded),
        Err(Errno::LOOP) => return Ok(DirOwner::Unreadable("it is a symlink".into())),
        Err(e) => return Err(HostError::io("reading", &record)(e)),
    };
    let kind = FileType::from_raw_mode(
        rfs::fstat(&file)
            .map_err(HostError::io("inspecting", &record))?
            .st_mode,
    );
    if kind != FileType::RegularFile {
        return Ok(DirOwner::Unreadable(format!(
            "it is a {}, not a file",
            kind_name(kind)
        )));
    }
    let mut text = vec![0u8; MAX_RECORD + 1];
    let read =
        std::io::Read::read(&mut std::fs::File::from(file), &mut text).map_err(|source| {
            HostError::Io {
                op: "reading",
                path: record.clone(),
                source,
            }
        })?;
    let text = String::from_utf8_lossy(&text[..read]);
    Ok(parse_record(
        text.strip_suffix('\n').unwrap_or(&text),
        read > MAX_RECORD,
    ))
}

fn parse_record(text: &str, too_long: bool) -> DirOwner {
    if text.is_empty() {
        // Only a crash between create and write leaves it empty (see `write_record`).
        return DirOwner::Unrecorded;
    }
    let well_formed = !too_long
        && text.split_once('/').is_some_and(|(namespace, name)| {
            check_object_name("namespace", namespace, true).is_ok()
                && check_object_name("name", name, false).is_ok()
        });
    if well_formed {
        DirOwner::Pod(text.to_string())
    } else {
        DirOwner::Unreadable(format!("{text:?} is not namespace/name"))
    }
}

/// Writes the record so it appears whole or not at all, and never replaces one: an unnamed
/// file is written and synced, then linked in (fails with EEXIST if a record is there).
pub(super) fn write_record(pod_dir: &OwnedFd, owner: &str) -> Result<(), Errno> {
    let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
    let mut file = match rfs::openat(pod_dir, ".", flags, Mode::from_raw_mode(0o640)) {
        Ok(file) => std::fs::File::from(file),
        // A filesystem without O_TMPFILE: create it in place (a crash can leave it empty,
        // which reads as no record).
        Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW;
            let file = rfs::openat(pod_dir, OWNER_FILE, flags, Mode::from_raw_mode(0o640))?;
            return write_synced(&mut std::fs::File::from(file), owner)
                .and_then(|()| sync_dir(pod_dir));
        }
        Err(e) => return Err(e),
    };
    write_synced(&mut file, owner)?;
    // ln /proc/self/fd/<n> <pod dir>/volumed-owner (following the magic link names the file)
    let unnamed = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    rfs::linkat(
        rfs::CWD,
        &unnamed,
        pod_dir,
        OWNER_FILE,
        AtFlags::SYMLINK_FOLLOW,
    )?;
    sync_dir(pod_dir)
}

fn write_synced(file: &mut std::fs::File, owner: &str) -> Result<(), Errno> {
    file.write_all(format!("{owner}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
}

/// fsync of the directory itself, so a new entry survives a crash (O_PATH fds cannot sync).
fn sync_dir(dir: &impl AsFd) -> Result<(), Errno> {
    let readable = rfs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rfs::fsync(readable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_a_pod_or_is_unreadable() {
        assert_eq!(
            parse_record("shop/web", false),
            DirOwner::Pod("shop/web".into())
        );
        assert_eq!(parse_record("", false), DirOwner::Unrecorded);
        for bad in [
            "web",
            "a/b/c",
            "../x",
            "shop/",
            "/web",
            "shop/web\n",
            "Shop/web",
        ] {
            assert!(
                matches!(parse_record(bad, false), DirOwner::Unreadable(_)),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_record("shop/web", true),
            DirOwner::Unreadable(_)
        ));
    }
}
