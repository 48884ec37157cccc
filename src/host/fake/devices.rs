//! The fake host's block devices: regular files in the test's temp dir stand in for device
//! nodes, and each carries the facts a real disk would show (sysfs entry, bytes at its ends,
//! whether something claims it), so staging and every safe-format refusal run without root.

use std::path::{Path, PathBuf};

use rustix::fs as rfs;

use super::disk::FakeDisk;
use super::FakeMounter;
use crate::host::devices::{BlockDevices, DeviceBytes, END_BYTES};
use crate::host::sysfs::SysfsBlock;
use crate::host::{HostError, Source};

impl FakeMounter {
    /// Puts `disk` at `path` (a regular file is made there to stand in for the node).
    pub fn add_disk(&self, path: &Path, disk: FakeDisk) {
        std::fs::write(path, b"").expect("create the fake device node");
        self.lock().disks.insert(path.to_path_buf(), disk);
    }

    /// Changes a fake disk in place.
    pub fn change_disk(&self, path: &Path, change: impl FnOnce(&mut FakeDisk)) {
        change(
            self.lock()
                .disks
                .get_mut(path)
                .expect("a fake disk at that path"),
        );
    }

    /// Mounts the fake disk at `path` on `target`, as something other than volumed did.
    pub fn adopt_disk_mount(&self, path: &Path, target: &Path) {
        let device = self.disk_device(path).expect("a fake disk at that path");
        self.adopt(target, "ext4");
        let mut state = self.lock();
        let entry = state.table.last_mut().expect("just adopted");
        entry.device = device;
        entry.source = Some(path.display().to_string());
    }

    fn disk_where(&self, found: impl Fn(&PathBuf, &FakeDisk) -> bool) -> Option<FakeDisk> {
        let state = self.lock();
        let disk = state.disks.iter().find(|(path, disk)| found(path, disk))?;
        Some(disk.1.clone())
    }
}

impl BlockDevices for FakeMounter {
    fn device_number(&self, source: &Source) -> Result<Option<u64>, HostError> {
        Ok(self
            .disk_where(|path, _| *path == source.resolved)
            .map(|d| d.rdev()))
    }

    fn block(&self, rdev: u64) -> Option<SysfsBlock> {
        self.disk_where(|_, d| d.rdev() == rdev && !d.missing_from_sysfs)
            .map(|d| d.sysfs())
    }

    fn block_named(&self, name: &str) -> Option<SysfsBlock> {
        self.disk_where(|_, d| d.name == name && !d.missing_from_sysfs)
            .map(|d| d.sysfs())
    }

    fn read_ends(&self, source: &Source, size: u64) -> Result<DeviceBytes, String> {
        let disk = self
            .disk_where(|path, _| *path == source.resolved)
            .ok_or("open: no such fake disk")?;
        if let Some(why) = disk.unreadable {
            return Err(why);
        }
        let len = size.min(END_BYTES);
        Ok(DeviceBytes {
            head: disk.read(0, len),
            tail: disk.read(size - len, len),
        })
    }

    fn open_exclusive(&self, source: &Source) -> Result<(), String> {
        let disk = self.disk_where(|path, _| *path == source.resolved);
        // As the kernel answers: EBUSY while claimed, and while mounted anywhere.
        let mounted = disk.as_ref().is_some_and(|d| {
            let device = format!("{}:{}", d.major, d.minor);
            self.table().iter().any(|m| m.device == device)
        });
        match disk {
            Some(disk) if disk.claimed || mounted => Err("it is in use: mounted (perhaps in another mount namespace) or claimed by another driver".into()),
            Some(_) => Ok(()),
            None => Err("an exclusive open failed: no such fake disk".into()),
        }
    }

    fn node_number(&self, path: &Path) -> Option<u64> {
        let disk = self.disk_where(|at, _| at == path)?;
        Some(if disk.node_replaced {
            disk.rdev() + 1
        } else {
            disk.rdev()
        })
    }

    fn filesystem_of(&self, dir: &Source) -> Result<u64, HostError> {
        let table = self.table();
        let Some(mount) = table.iter().rfind(|m| m.mount_point == dir.path) else {
            // Not a fake mount: whatever the temp dir is on.
            let stat = rfs::fstat(&dir.fd).map_err(HostError::io("inspecting", &dir.path))?;
            return Ok(stat.st_dev);
        };
        let (major, minor) = mount.device.split_once(':').unwrap_or(("0", "0"));
        Ok(rfs::makedev(
            major.parse().unwrap_or(0),
            minor.parse().unwrap_or(0),
        ))
    }
}
