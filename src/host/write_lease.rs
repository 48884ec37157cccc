//! Whether a file is open for writing right now, as the kernel knows it: a read lease
//! (`fcntl(F_SETLEASE, F_RDLCK)`) can be taken only while no one has the file open for
//! writing. The file source asks this of a manifest whose content changed, so a file caught
//! between a writer's truncate and its last write is never taken for its final content.

use std::os::fd::AsRawFd;
use std::path::Path;

/// `F_SETSIG` from <fcntl.h> (Linux's value; the libc crate does not export it).
const F_SETSIG: nix::libc::c_int = 10;

/// `Some(true)` while someone has `path` open for writing, `Some(false)` when no one has;
/// `None` when the kernel cannot tell (a filesystem without leases, leases disabled).
pub fn open_for_writing(path: &Path) -> Option<bool> {
    use nix::libc::{fcntl, EAGAIN, F_RDLCK, F_SETLEASE, F_UNLCK, SIGURG};
    let file = std::fs::File::open(path).ok()?;
    let fd = file.as_raw_fd();
    // A writer opening the file while the lease is held breaks it, and the kernel signals
    // the holder (SIGIO by default, which would end the process): ask for SIGURG instead,
    // which is ignored unless handled. The lease is let go at once either way.
    // SAFETY: fcntl on a descriptor this function owns, with integer arguments only.
    if unsafe { fcntl(fd, F_SETSIG, SIGURG) } == -1 {
        return None;
    }
    // fcntl(fd, F_SETLEASE, F_RDLCK): refused with EAGAIN while the file is open for writing.
    // SAFETY: as above.
    if unsafe { fcntl(fd, F_SETLEASE, F_RDLCK) } == 0 {
        // SAFETY: as above; this releases the lease just taken.
        unsafe { fcntl(fd, F_SETLEASE, F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(EAGAIN) => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_held_open_for_writing_is_seen_until_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        let writer = std::fs::File::create(&path).unwrap();
        let reader = std::fs::File::open(&path).unwrap();
        // tmpfs and ext4 have leases; where a filesystem has none, the answer is "unknown".
        let Some(open) = open_for_writing(&path) else {
            panic!(
                "{} has no lease support; this test needs a filesystem with leases",
                dir.path().display()
            );
        };
        assert!(open, "the writer's descriptor is open");
        drop(writer);
        assert_eq!(
            open_for_writing(&path),
            Some(false),
            "only a reader is left"
        );
        drop(reader);
    }
}
