//! Facts about block devices that staging and safe-format decide on: which device an opened
//! source is, what sysfs says about it, its first and last bytes, whether it can be opened
//! exclusively, and which device a path or a mounted directory stands on. Behind a trait so
//! that whole reconciles with block devices run against the fake host too.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs as rfs;

use super::sysfs::{Sysfs, SysfsBlock};
use super::{HostError, Source};

/// How much of each end of a device is read for leftover metadata.
pub const END_BYTES: u64 = 1 << 20;

/// The first and the last `END_BYTES` of a device (less for a smaller one).
pub struct DeviceBytes {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

/// Block-device facts. Calls may block on a slow disk: worker threads only.
pub trait BlockDevices: Send + Sync + 'static {
    /// The device number (`st_rdev`) of an opened source, or `None` when it is no block
    /// device.
    fn device_number(&self, source: &Source) -> Result<Option<u64>, HostError>;
    /// What sysfs says about a device, by number; `None` when it is not there.
    fn block(&self, rdev: u64) -> Option<SysfsBlock>;
    /// What sysfs says about a device, by name (a partition, a disk).
    fn block_named(&self, name: &str) -> Option<SysfsBlock>;
    /// The first and last MiB of the device held open (never what its path names now).
    fn read_ends(&self, source: &Source, size: u64) -> Result<DeviceBytes, String>;
    /// Opens the held device exclusively and closes it again: it fails (EBUSY) while anything
    /// in any namespace has it mounted or claimed.
    fn open_exclusive(&self, source: &Source) -> Result<(), String>;
    /// The device a path names now (`stat` of a device node), if it names one.
    fn node_number(&self, path: &Path) -> Option<u64>;
    /// The device whose filesystem an opened directory is on (`st_dev`).
    fn filesystem_of(&self, dir: &Source) -> Result<u64, HostError>;
}

/// This host's devices: fstat, sysfs, and reads through `/proc/self/fd`.
#[derive(Clone, Debug, Default)]
pub struct RealBlockDevices {
    pub sysfs: Sysfs,
}

impl BlockDevices for RealBlockDevices {
    fn device_number(&self, source: &Source) -> Result<Option<u64>, HostError> {
        if !source.is_block {
            return Ok(None);
        }
        // stat <device>
        let stat = rfs::fstat(&source.fd).map_err(HostError::io("inspecting", &source.resolved))?;
        Ok(Some(stat.st_rdev))
    }

    fn block(&self, rdev: u64) -> Option<SysfsBlock> {
        let name = self.sysfs.name_of(rfs::major(rdev), rfs::minor(rdev))?;
        self.sysfs.block(&name)
    }

    fn block_named(&self, name: &str) -> Option<SysfsBlock> {
        self.sysfs.block(name)
    }

    fn read_ends(&self, source: &Source, size: u64) -> Result<DeviceBytes, String> {
        let file = reopen(source, false).map_err(|e| format!("open: {e}"))?;
        let len = size.min(END_BYTES);
        let read = |offset: u64| {
            let mut buf = vec![0u8; len as usize];
            // dd if=<device> bs=1M count=1 skip=<offset>
            file.read_exact_at(&mut buf, offset)
                .map(|()| buf)
                .map_err(|e| format!("read at byte {offset}: {e}"))
        };
        Ok(DeviceBytes {
            head: read(0)?,
            tail: read(size.saturating_sub(len))?,
        })
    }

    fn open_exclusive(&self, source: &Source) -> Result<(), String> {
        reopen(source, true).map(drop).map_err(|e| match e.raw_os_error() {
            Some(nix::libc::EBUSY) => "it is in use: mounted (perhaps in another mount namespace) or claimed by another driver".to_string(),
            _ => format!("an exclusive open failed: {e}"),
        })
    }

    fn node_number(&self, path: &Path) -> Option<u64> {
        // stat <path>
        rfs::stat(path).ok().map(|st| st.st_rdev)
    }

    fn filesystem_of(&self, dir: &Source) -> Result<u64, HostError> {
        // stat -c %d <dir>
        let stat = rfs::fstat(&dir.fd).map_err(HostError::io("inspecting", &dir.path))?;
        Ok(stat.st_dev)
    }
}

/// Re-opens the device we hold (not whatever its path names now) for reading.
fn reopen(device: &Source, exclusive: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if exclusive {
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, nix::libc::O_EXCL);
    }
    options.open(format!("/proc/self/fd/{}", device.fd.as_raw_fd()))
}
