//! Staging a local PV's block device: gather the facts safe-format needs, then format, check
//! or refuse, and mount it once at its global mount. Worker threads only.

use std::os::unix::fs::FileExt;

use rustix::fs as rfs;

use super::context::OpContext;
use crate::actual::signatures::{leftover_metadata, DeviceEnds};
use crate::host::sysfs::Sysfs;
use crate::host::{HostError, Source};
use crate::model::probe::FsckResult;
use crate::model::Plugin;
use crate::reconcile::safe_format::{decide, Decision, DeviceFacts};

const MIB: u64 = 1 << 20;

/// Makes sure the PV's device is mounted at its global mount (formatting it first when it is
/// safe to) and returns that mount as a bind source, checked to hold that very device.
pub fn stage(
    ctx: &OpContext,
    pv_name: &str,
    device: &Source,
    fs_type: &str,
    options: &[String],
    read_only: bool,
) -> Result<Source, HostError> {
    let dev = device.resolved.as_path();
    // stat <device>: its major:minor names it in sysfs, the mount table and its global mount.
    let rdev = rfs::fstat(&device.fd)
        .map_err(HostError::io("inspecting", dev))?
        .st_rdev;
    let pv_lock = ctx.staging.lock_for(&format!("pv/{pv_name}"));
    let _pv = crate::shared::lock(&pv_lock);
    let dev_lock = ctx.staging.lock_for(&format!("dev/{rdev}"));
    let _dev = crate::shared::lock(&dev_lock);
    let target = ctx.fs.prepare_global(&Plugin::LocalVolume, pv_name)?;
    if !ctx.mounter.is_mount_point(&target)? {
        let refuse = |action, why: String| HostError::Refused {
            action,
            device: dev.to_path_buf(),
            why,
        };
        let mount_read_only = match decide(&gather(ctx, device, rdev, true)?, fs_type, read_only) {
            Decision::Refuse(why) => return Err(refuse("use", why)),
            Decision::Format => {
                ctx.formats.run(|| {
                    // Waiting for a slot took time: decide again right before mkfs.
                    match decide(&gather(ctx, device, rdev, true)?, fs_type, read_only) {
                        Decision::Format => {}
                        Decision::Refuse(why) => return Err(refuse("format", why)),
                        _ => return Err(refuse("format", "it changed while waiting to be formatted; it is looked at again on the next try".into())),
                    }
                    tracing::warn!(device = %dev.display(), fs_type, pv = pv_name, "formatting a blank device");
                    ctx.formatter.make_filesystem(dev, fs_type)
                })?;
                false
            }
            Decision::CheckThenMount => {
                if let FsckResult::Failed { exit_code, output } =
                    ctx.formatter.check(dev, fs_type)?
                {
                    let why = format!("fsck.{fs_type} -p exited {exit_code}, so the filesystem has errors it will not fix alone: {output}; repair it by hand (fsck.{fs_type} {}) and volumed will mount it", dev.display());
                    return Err(refuse("mount", why));
                }
                false
            }
            Decision::MountReadOnly => true,
        };
        ctx.mounter
            .mount_device(dev, &target, fs_type, options, mount_read_only)?;
    }
    let global = ctx.fs.open_global(&Plugin::LocalVolume, pv_name)?;
    // The global mount must hold this device, not another one (a recreated PV, a race).
    let holds = rfs::fstat(&global.fd)
        .map_err(HostError::io("inspecting", &global.path))?
        .st_dev;
    if holds != rdev {
        return Err(HostError::Unsafe {
            path: global.path,
            why: format!(
                "it holds device {}:{}, not {} ({}:{}); unmount it by hand if that PV is gone",
                rfs::major(holds),
                rfs::minor(holds),
                dev.display(),
                rfs::major(rdev),
                rfs::minor(rdev)
            ),
        });
    }
    Ok(global)
}

/// What safe-format decides from: sysfs (the device and, for a partition, its disk), the
/// mount table (mounts and raw block volumes), an exclusive open, a test read, and blkid.
/// `claim`: make the exclusive open (a set-up does; `plan` does not, so that it never makes a
/// running daemon's own open fail).
pub(super) fn gather(
    ctx: &OpContext,
    device: &Source,
    rdev: u64,
    claim: bool,
) -> Result<DeviceFacts, HostError> {
    let dev = &device.resolved;
    let (major, minor) = (rfs::major(rdev), rfs::minor(rdev));
    let block = device_facts(&ctx.sysfs, major, minor).ok_or_else(|| HostError::Refused {
        action: "use",
        device: dev.clone(),
        why: format!("block device {major}:{minor} is not in sysfs; is it still attached?"),
    })?;
    // A partition shares fate with its disk: the disk's holders and mounts count too.
    let disk = block.parent.as_deref().and_then(|p| ctx.sysfs.block(p));
    let mut holders = block.holders.clone();
    let mut devs = vec![format!("{major}:{minor}")];
    for related in disk.iter().chain(
        block
            .partitions
            .iter()
            .filter_map(|p| ctx.sysfs.block(p))
            .collect::<Vec<_>>()
            .iter(),
    ) {
        devs.push(format!("{}:{}", related.major, related.minor));
        if disk.as_ref().is_some_and(|d| d.name == related.name) {
            holders.extend(related.holders.iter().cloned());
        }
    }
    let table = ctx.mounter.mount_table()?;
    let mut mounted_at: Vec<std::path::PathBuf> = table
        .iter()
        .filter(|m| devs.contains(&m.device))
        .map(|m| m.mount_point.clone())
        .collect();
    // Raw block volumes show devtmpfs in the mount table: compare the bound nodes themselves.
    let raw_area = ctx.fs.root().join("pods");
    mounted_at.extend(
        table
            .iter()
            .filter(|m| {
                m.mount_point.starts_with(&raw_area)
                    && m.mount_point
                        .components()
                        .any(|c| c.as_os_str() == "volumeDevices")
            })
            .filter(|m| rfs::stat(&m.mount_point).is_ok_and(|st| st.st_rdev == rdev))
            .map(|m| m.mount_point.clone()),
    );
    let probe = ctx.formatter.probe(dev)?;
    // blkid ran on the path: make sure the path still names the device we hold.
    if !rfs::stat(dev.as_path()).is_ok_and(|st| st.st_rdev == rdev) {
        return Err(HostError::Refused { action: "use", device: dev.clone(), why: "its device node changed while it was examined; it is looked at again on the next try".into() });
    }
    let ends = read_ends(device, block.size_bytes);
    let leftovers = ends.as_ref().map_or_else(
        |_| Vec::new(),
        |(head, tail)| {
            leftover_metadata(&DeviceEnds {
                head,
                tail,
                size: block.size_bytes,
            })
        },
    );
    Ok(DeviceFacts {
        device: dev.clone(),
        readable: ends.map(drop),
        leftovers,
        exclusive: if claim {
            open_exclusive(device)
        } else {
            Ok(())
        },
        probe,
        partitions: block.partitions,
        holders,
        mounted_at,
        device_read_only: block.read_only,
    })
}

fn device_facts(sysfs: &Sysfs, major: u32, minor: u32) -> Option<crate::host::sysfs::SysfsBlock> {
    sysfs.block(&sysfs.name_of(major, minor)?)
}

/// Re-opens the device we hold (not whatever its path names now) for reading.
fn reopen(device: &Source, exclusive: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    if exclusive {
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, nix::libc::O_EXCL);
    }
    options.open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&device.fd)
    ))
}

/// Reads the first and the last MiB: blkid's "nothing found" counts only if it could read,
/// and what survives at the ends is looked at too.
fn read_ends(device: &Source, size: u64) -> Result<(Vec<u8>, Vec<u8>), String> {
    let file = reopen(device, false).map_err(|e| format!("open: {e}"))?;
    let len = size.min(MIB);
    let read = |offset: u64| {
        let mut buf = vec![0u8; len as usize];
        // dd if=<device> bs=1M count=1 skip=<offset>
        file.read_exact_at(&mut buf, offset)
            .map(|()| buf)
            .map_err(|e| format!("read at byte {offset}: {e}"))
    };
    Ok((read(0)?, read(size.saturating_sub(len))?))
}

/// An exclusive open fails (EBUSY) while the device is mounted in any mount namespace or
/// claimed by device-mapper, md, bcache or a running mkfs.
fn open_exclusive(device: &Source) -> Result<(), String> {
    reopen(device, true).map(drop).map_err(|e| match e.raw_os_error() {
        Some(nix::libc::EBUSY) => "it is in use: mounted (perhaps in another mount namespace) or claimed by another driver".to_string(),
        _ => format!("an exclusive open failed: {e}"),
    })
}
