//! A fake block device's facts: what sysfs, its bytes and its users would show.

use std::collections::BTreeMap;

use rustix::fs as rfs;

use crate::host::sysfs::SysfsBlock;

/// A make-believe disk (or partition).
#[derive(Clone, Debug)]
pub struct FakeDisk {
    /// Its sysfs name (`sdb`, `sdb1`).
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    pub read_only: bool,
    pub partitions: Vec<String>,
    pub holders: Vec<String>,
    /// The disk a partition belongs to.
    pub parent: Option<String>,
    /// Bytes written at offsets; everything else reads as zeros.
    pub bytes_at: BTreeMap<u64, Vec<u8>>,
    /// Reading it fails with this (a dying disk).
    pub unreadable: Option<String>,
    /// Something holds it open exclusively (a mount in another namespace, a driver).
    pub claimed: bool,
    /// Gone from sysfs (detached) while its node is still open.
    pub missing_from_sysfs: bool,
    /// Its path names another device now (the node was replaced after it was opened).
    pub node_replaced: bool,
}

impl FakeDisk {
    /// A blank, free, writable disk of `size_bytes`.
    pub fn blank(name: &str, minor: u32, size_bytes: u64) -> FakeDisk {
        FakeDisk {
            name: name.to_string(),
            major: 8,
            minor,
            size_bytes,
            read_only: false,
            partitions: vec![],
            holders: vec![],
            parent: None,
            bytes_at: BTreeMap::new(),
            unreadable: None,
            claimed: false,
            missing_from_sysfs: false,
            node_replaced: false,
        }
    }

    pub(super) fn rdev(&self) -> u64 {
        rfs::makedev(self.major, self.minor)
    }

    pub(super) fn sysfs(&self) -> SysfsBlock {
        SysfsBlock {
            name: self.name.clone(),
            major: self.major,
            minor: self.minor,
            size_bytes: self.size_bytes,
            read_only: self.read_only,
            is_partition: self.parent.is_some(),
            parent: self.parent.clone(),
            partitions: self.partitions.clone(),
            holders: self.holders.clone(),
            ..SysfsBlock::default()
        }
    }

    /// `len` bytes from `offset`, zeros where nothing was written.
    pub(super) fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        for (at, bytes) in &self.bytes_at {
            for (i, byte) in bytes.iter().enumerate() {
                let pos = at + i as u64;
                if (offset..offset + len).contains(&pos) {
                    buf[(pos - offset) as usize] = *byte;
                }
            }
        }
        buf
    }
}
