//! What the first level of a local-PV `mount_dir` holds, as `host` scans it and the
//! discoverer decides on it.

/// One entry of a `mount_dir`, as the host scan found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A mount point, with the capacity statfs reports.
    MountPoint { capacity_bytes: u64 },
    /// A block device (or a link to one), with its size.
    BlockDevice { size_bytes: u64 },
    /// A plain directory that is not a mount point: its space is the parent filesystem's.
    NotMounted,
    /// Anything else (a file, a link to nothing), with what it is.
    Other(String),
}
