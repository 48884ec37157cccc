//! A mounted volume's usage, as kubelet's volume stats give it: statvfs(2) on its path. It
//! blocks (a hung NFS server hangs it): callers run it on a worker thread under a deadline.

use std::path::Path;

/// Bytes and inodes, total, free to users and used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeStats {
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    pub inodes_used: u64,
}

/// statvfs <path>
pub fn volume_stats(path: &Path) -> std::io::Result<VolumeStats> {
    let fs = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let block = fs.fragment_size();
    let (blocks, free, available) = (fs.blocks(), fs.blocks_free(), fs.blocks_available());
    Ok(VolumeStats {
        capacity_bytes: blocks * block,
        available_bytes: available * block,
        used_bytes: blocks.saturating_sub(free) * block,
        inodes: fs.files(),
        inodes_free: fs.files_free(),
        inodes_used: fs.files().saturating_sub(fs.files_free()),
    })
}
