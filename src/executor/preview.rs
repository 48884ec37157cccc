//! What a set-up would do, found without changing anything, for `volumed plan`: the checks a
//! set-up makes before it acts (the volume path, the host path and its type, the roots) and,
//! for a local PV's block device, the same safe-format decision a set-up makes.

use std::path::PathBuf;

use rustix::fs::{self as rfs, AtFlags, FileType};
use serde::Serialize;

use super::context::OpContext;
use super::device::gather;
use crate::host::HostError;
use crate::model::{global_mount_path, DesiredVolume, MountSpec, PathType, Plugin};
use crate::reconcile::safe_format::{decide, Decision};

/// What a set-up is expected to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Preview {
    /// It can be done as the spec says.
    Ready,
    /// It makes a filesystem first: the device is blank.
    Formats { device: PathBuf, fs_type: String },
    /// It will fail, and why.
    Fails { reason: String },
}

/// The preview of setting up `volume` on this host now.
pub fn preview(ctx: &OpContext, volume: &DesiredVolume) -> Preview {
    match check(ctx, volume) {
        Ok(preview) => preview,
        Err(err) => Preview::Fails {
            reason: err.to_string(),
        },
    }
}

fn check(ctx: &OpContext, volume: &DesiredVolume) -> Result<Preview, HostError> {
    check_target(ctx, volume)?;
    match &volume.spec {
        MountSpec::Bind {
            source,
            expect,
            read_only,
        } => ctx
            .fs
            .inspect_source(source, *expect, false, *read_only)
            .map(|_| Preview::Ready),
        MountSpec::BlockDevice { path, read_only } => ctx
            .fs
            .inspect_source(path, PathType::BlockDevice, true, *read_only)
            .map(|_| Preview::Ready),
        MountSpec::Local {
            path,
            fs_type,
            read_only,
            ..
        } => {
            let Some(source) =
                ctx.fs
                    .inspect_source(path, PathType::Unchecked, true, *read_only)?
            else {
                return Ok(Preview::Ready);
            };
            let Some(rdev) = ctx.devices.device_number(&source)? else {
                return Ok(Preview::Ready);
            };
            let global = global_mount_path(ctx.fs.root(), &Plugin::LocalVolume, &volume.key.name);
            let staged = ctx.mounter.mount_table()?;
            if staged.iter().any(|m| m.mount_point == global) {
                return Ok(Preview::Ready);
            }
            Ok(
                match decide(&gather(ctx, &source, rdev, false)?, fs_type, *read_only) {
                    Decision::Format => Preview::Formats {
                        device: source.resolved.clone(),
                        fs_type: fs_type.clone(),
                    },
                    Decision::CheckThenMount | Decision::MountReadOnly => Preview::Ready,
                    Decision::Refuse(why) => Preview::Fails {
                        reason: format!("refusing to use {}: {why}", source.resolved.display()),
                    },
                },
            )
        }
        MountSpec::Tmpfs { .. } | MountSpec::Directory | MountSpec::Nfs { .. } => {
            Ok(Preview::Ready)
        }
    }
}

/// The volume path: reached without following a link, and no link (or other wrong kind of
/// entry) where the mount target goes.
fn check_target(ctx: &OpContext, volume: &DesiredVolume) -> Result<(), HostError> {
    let path = volume.key.path(ctx.fs.root());
    let Some(target) = ctx.fs.mount_point(&path)? else {
        return Ok(()); // made by the set-up
    };
    match rfs::statat(&target.parent, &target.name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(found) if FileType::from_raw_mode(found.st_mode) == FileType::Symlink => {
            Err(HostError::Unsafe {
                path,
                why:
                    "a symlink is at the volume path; it is not followed or mounted over, remove it"
                        .into(),
            })
        }
        _ => Ok(()),
    }
}
