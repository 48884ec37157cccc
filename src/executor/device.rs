//! Staging a local PV's block device: gather the facts safe-format needs (through the host's
//! `BlockDevices`), then format, check or refuse, and mount it once at its global mount.
//! Worker threads only.

use super::context::OpContext;
use crate::actual::signatures::{leftover_metadata, DeviceEnds};
use crate::host::{HostError, Source};
use crate::model::probe::FsckResult;
use crate::model::Plugin;
use crate::reconcile::safe_format::{decide, Decision, DeviceFacts};

/// Makes sure the PV's device is mounted at its global mount (formatting it first when it is
/// safe to) and returns that mount as a bind source, checked to hold that very device.
/// `rdev`: the device's number, which names it in sysfs, the mount table and its global mount.
pub fn stage(
    ctx: &OpContext,
    pv_name: &str,
    device: &Source,
    rdev: u64,
    fs_type: &str,
    options: &[String],
    read_only: bool,
) -> Result<Source, HostError> {
    let dev = device.resolved.as_path();
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
                    if ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(refuse("format", "volumed is stopping; the device is formatted after it starts again".into()));
                    }
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
    let holds = ctx.devices.filesystem_of(&global)?;
    if holds != rdev {
        return Err(HostError::Unsafe {
            path: global.path,
            why: format!(
                "it holds device {}:{}, not {} ({}:{}); unmount it by hand if that PV is gone",
                major(holds),
                minor(holds),
                dev.display(),
                major(rdev),
                minor(rdev)
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
    let (major, minor) = (major(rdev), minor(rdev));
    let block = ctx.devices.block(rdev).ok_or_else(|| HostError::Refused {
        action: "use",
        device: dev.clone(),
        why: format!("block device {major}:{minor} is not in sysfs; is it still attached?"),
    })?;
    // A partition shares fate with its disk: the disk's holders and mounts count too.
    let disk = block
        .parent
        .as_deref()
        .and_then(|p| ctx.devices.block_named(p));
    let mut holders = block.holders.clone();
    let mut devs = vec![format!("{major}:{minor}")];
    for related in disk.iter().chain(
        block
            .partitions
            .iter()
            .filter_map(|p| ctx.devices.block_named(p))
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
            .filter(|m| ctx.devices.node_number(&m.mount_point) == Some(rdev))
            .map(|m| m.mount_point.clone()),
    );
    let probe = ctx.formatter.probe(dev)?;
    // blkid ran on the path: make sure the path still names the device we hold.
    if ctx.devices.node_number(dev) != Some(rdev) {
        return Err(HostError::Refused { action: "use", device: dev.clone(), why: "its device node changed while it was examined; it is looked at again on the next try".into() });
    }
    let ends = ctx.devices.read_ends(device, block.size_bytes);
    let leftovers = ends.as_ref().map_or_else(
        |_| Vec::new(),
        |bytes| {
            leftover_metadata(&DeviceEnds {
                head: &bytes.head,
                tail: &bytes.tail,
                size: block.size_bytes,
            })
        },
    );
    Ok(DeviceFacts {
        device: dev.clone(),
        readable: ends.map(drop),
        leftovers,
        exclusive: if claim {
            ctx.devices.open_exclusive(device)
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

/// The major number of a device number (as `stat -c %t` shows it, in decimal).
fn major(rdev: u64) -> u32 {
    rustix::fs::major(rdev)
}

fn minor(rdev: u64) -> u32 {
    rustix::fs::minor(rdev)
}
