//! What tells one version of a file from the next (inode, size, change times): the file
//! source's parse cache and the binding record's cache compare it instead of reading.

use std::path::Path;

/// A file's device, inode, size, mtime and ctime (seconds and nanoseconds).
pub type Identity = (u64, u64, u64, i64, i64, i64, i64);

/// `None` when the file cannot be looked at (gone, unreadable).
pub fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ))
}
