//! Staging a local PV's block device: gather the facts safe-format needs, then format, check
//! or refuse, and mount it once at its global mount. Worker threads only.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs as rfs;

use super::run::OpContext;
use crate::actual::sysfs::Sysfs;
use crate::host::format::FsckResult;
use crate::host::{HostError, Source};
use crate::model::Plugin;
use crate::reconcile::safe_format::{decide, Decision, DeviceFacts};

const MIB: u64 = 1 << 20;

/// A cap on formats running at once (mkfs saturates a disk; several at once help nobody).
pub struct FormatSlots {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl FormatSlots {
    pub fn new(max: usize) -> FormatSlots {
        FormatSlots {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= self.max {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
        drop(used);
        let result = work();
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.freed.notify_one();
        result
    }
}

/// One staging per PV at a time: two pods sharing a PV must not both format or mount it.
#[derive(Default)]
pub struct StagingLocks(Mutex<HashMap<String, Arc<Mutex<()>>>>);

impl StagingLocks {
    fn lock_for(&self, pv_name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(pv_name.to_string()).or_default().clone()
    }
}

/// Makes sure the PV's device is mounted at its global mount (formatting it first when it is
/// safe to) and returns that mount as a bind source.
pub fn stage(
    ctx: &OpContext,
    pv_name: &str,
    device: &Source,
    fs_type: &str,
    options: &[String],
    read_only: bool,
) -> Result<Source, HostError> {
    let lock = ctx.staging.lock_for(pv_name);
    let _staging = lock.lock().unwrap_or_else(|p| p.into_inner());
    let target = ctx.fs.prepare_global(&Plugin::LocalVolume, pv_name)?;
    if ctx.mounter.is_mount_point(&target)? {
        return ctx.fs.open_global(&Plugin::LocalVolume, pv_name);
    }
    let dev = device.resolved.as_path();
    let facts = gather(ctx, device)?;
    let refuse = |action, why: String| HostError::Refused {
        action,
        device: dev.to_path_buf(),
        why,
    };
    let mount_read_only = match decide(&facts, fs_type, read_only) {
        Decision::Refuse(why) => return Err(refuse("use", why)),
        Decision::Format => {
            tracing::warn!(device = %dev.display(), fs_type, pv = pv_name, "formatting a blank device");
            ctx.formats
                .run(|| ctx.formatter.make_filesystem(dev, fs_type))?;
            false
        }
        Decision::CheckThenMount => {
            if let FsckResult::Failed { exit_code, output } = ctx.formatter.check(dev, fs_type)? {
                let why = format!("fsck.{fs_type} -p exited {exit_code}, so the filesystem has errors it will not fix alone: {output}; repair it by hand (fsck.{fs_type} {}) and volumed will mount it", dev.display());
                return Err(refuse("mount", why));
            }
            false
        }
        Decision::MountReadOnly => true,
    };
    ctx.mounter
        .mount_device(dev, &target, fs_type, options, mount_read_only)?;
    ctx.fs.open_global(&Plugin::LocalVolume, pv_name)
}

/// What safe-format decides from: the probe, sysfs, the mount table and a test read.
fn gather(ctx: &OpContext, device: &Source) -> Result<DeviceFacts, HostError> {
    let dev = &device.resolved;
    // stat <device>: its major:minor names it in sysfs and in the mount table.
    let rdev = rfs::fstat(&device.fd)
        .map_err(HostError::io("inspecting", dev))?
        .st_rdev;
    let (major, minor) = (rfs::major(rdev), rfs::minor(rdev));
    let block = device_facts(&ctx.sysfs, major, minor).ok_or_else(|| HostError::Refused {
        action: "use",
        device: dev.clone(),
        why: format!("block device {major}:{minor} is not in sysfs; is it still attached?"),
    })?;
    let mut devs = vec![format!("{major}:{minor}")];
    devs.extend(
        block
            .partitions
            .iter()
            .filter_map(|p| ctx.sysfs.block(p))
            .map(|p| format!("{}:{}", p.major, p.minor)),
    );
    let mounted_at = ctx
        .mounter
        .mount_table()?
        .into_iter()
        .filter(|m| devs.contains(&m.device))
        .map(|m| m.mount_point)
        .collect();
    Ok(DeviceFacts {
        device: dev.clone(),
        readable: read_ends(dev, block.size_bytes),
        probe: ctx.formatter.probe(dev)?,
        partitions: block.partitions,
        holders: block.holders,
        mounted_at,
        device_read_only: block.read_only,
    })
}

fn device_facts(sysfs: &Sysfs, major: u32, minor: u32) -> Option<crate::actual::sysfs::SysfsBlock> {
    sysfs.block(&sysfs.name_of(major, minor)?)
}

/// Reads the first and the last MiB: blkid's "nothing found" counts only if it could read.
fn read_ends(device: &Path, size: u64) -> Result<(), String> {
    let file = std::fs::File::open(device).map_err(|e| format!("open: {e}"))?;
    let len = size.min(MIB);
    let mut buf = vec![0u8; len as usize];
    // dd if=<device> bs=1M count=1; and the same at the end
    for offset in [0, size.saturating_sub(len)] {
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| format!("read at byte {offset}: {e}"))?;
    }
    Ok(())
}
