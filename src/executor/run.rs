//! How each op is carried out on the host. Runs only on executor worker threads: every call
//! here may block (mounts, stats of volume paths, directory removal).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::context::OpContext;
use super::device::stage;
use crate::host::{ForceMode, HostError, MountPoint};
use crate::model::on_disk::PodDirChange;
use crate::model::op::{Contents, IfHung, Op};
use crate::model::{DesiredVolume, MountSpec, PathType, Plugin};

/// What an op left behind, for the sync loop's picture of the host.
#[derive(Debug)]
pub struct OpOutcome {
    /// What the op did, for the log ("mounted", "already mounted", "removed", ...), or why
    /// it failed.
    pub did: Result<&'static str, String>,
    /// What the op did to its pod's directory.
    pub pod_dir: PodDirChange,
    /// The global mount point directories after the op, when it may have changed them.
    pub globals: Option<BTreeSet<String>>,
}

pub fn run_op(ctx: &OpContext, op: &Op) -> OpOutcome {
    // What the op did to its pod directory when it succeeded; `None`: ask the disk.
    let (did, change) = match op {
        Op::SetUp { volume } => {
            let did = set_up(ctx, volume);
            let change = did.is_ok().then(|| PodDirChange::Added {
                key: volume.key.clone(),
                owner: volume.pod.to_string(),
            });
            (did, change)
        }
        Op::Unmount {
            key,
            nested,
            if_hung,
            ..
        } => {
            let target = nested.clone().unwrap_or_else(|| key.path(ctx.fs.root()));
            // Resolved below the root dir without following links (rule 4).
            match ctx.fs.mount_point(&target) {
                Ok(None) => (Ok("already unmounted: its directory is gone"), None),
                // An unmount, done or not, makes and removes no directory.
                Ok(Some(target)) if *if_hung == IfHung::ForceThenDetach => (
                    unmount_escalating(ctx, target),
                    Some(PodDirChange::Unchanged),
                ),
                Ok(Some(target)) => (
                    ctx.mounter.unmount(&target).map(|()| "unmounted"),
                    Some(PodDirChange::Unchanged),
                ),
                Err(err) => (Err(err), None),
            }
        }
        Op::RemoveVolumeDir { key, contents } => {
            // Checked against the host as it is now, not our records (rule 2).
            let recursive = *contents == Contents::DeleteAll;
            let did = ctx
                .mounter
                .mounts_below(&key.path(ctx.fs.root()))
                .and_then(|mounts| ctx.fs.remove_volume_dir(key, recursive, &mounts))
                .map(|()| "removed");
            let change = did.is_ok().then(|| PodDirChange::Removed(key.clone()));
            (did, change)
        }
        Op::RemovePodDir { pod_uid } => {
            let did = ctx.fs.remove_pod_dir(pod_uid).map(|()| "removed");
            let change = did.is_ok().then(|| PodDirChange::Scanned {
                pod_uid: pod_uid.clone(),
                dir: None,
            });
            (did, change)
        }
        Op::ClaimPodDir { pod } => {
            let did = ctx.fs.claim_pod_dir(pod).map(|_| "recorded its owner");
            let change = did.is_ok().then(|| PodDirChange::Claimed {
                pod_uid: pod.uid.clone(),
                owner: pod.to_string(),
            });
            (did, change)
        }
        Op::UnmountGlobal { pv_name } => (unmount_global(ctx, pv_name), None),
        Op::RemoveGlobalDir { pv_name } => (
            ctx.fs
                .remove_global_dir(&Plugin::LocalVolume, pv_name)
                .map(|()| "removed"),
            None,
        ),
    };
    // A failure is followed by a rescan: a half-done set-up may have created directories.
    let pod_dir = change.unwrap_or_else(|| match op.pod_uid() {
        None => PodDirChange::Unchanged,
        Some(uid) => match ctx.fs.scan_pod(uid) {
            Ok(dir) => PodDirChange::Scanned {
                pod_uid: uid.to_string(),
                dir,
            },
            Err(err) => {
                tracing::warn!(%err, "cannot rescan the pod directory after the op");
                PodDirChange::Unchanged
            }
        },
    });
    let globals = op
        .touches_globals()
        .then(|| ctx.fs.scan_globals(&Plugin::LocalVolume).ok())
        .flatten();
    OpOutcome {
        did: did.map_err(|e| e.to_string()),
        pod_dir,
        globals,
    }
}

/// An NFS unmount that cannot hang the op: a plain umount first; if the server does not
/// answer within the deadline, umount --force, and if even that hangs, a lazy detach. The
/// stuck calls are left behind on their threads (one per volume at most) and reported.
fn unmount_escalating(ctx: &OpContext, target: MountPoint) -> Result<&'static str, HostError> {
    let target = Arc::new(target);
    let path = target.path.clone();
    // An earlier try left a call hanging on this volume: add none, go straight to the detach.
    if crate::shared::lock(&ctx.lingering).contains(&path) {
        ctx.mounter.force_unmount(&target, ForceMode::Detach)?;
        return Ok("detached lazily (umount -l): an earlier unmount of it still hangs");
    }
    let attempt = |mode: Option<ForceMode>, wait: Duration| {
        let (tx, rx) = std::sync::mpsc::channel();
        let (mounter, held) = (ctx.mounter.clone(), target.clone());
        let lingering = ctx.lingering.clone();
        std::thread::spawn(move || {
            let result = match mode {
                None => mounter.unmount(&held),
                Some(mode) => mounter.force_unmount(&held, mode),
            };
            crate::shared::lock(&lingering).remove(&held.path);
            let _ = tx.send(result);
        });
        let answer = rx.recv_timeout(wait).ok();
        if answer.is_none() {
            crate::shared::lock(&ctx.lingering).insert(path.clone());
        }
        answer
    };
    if let Some(result) = attempt(None, ctx.unmount_timeout) {
        return result.map(|()| "unmounted");
    }
    tracing::warn!(target = %path.display(), after_s = ctx.unmount_timeout.as_secs(), "unmount did not answer; forcing it (umount -f)");
    if let Some(Ok(())) = attempt(Some(ForceMode::Force), FORCE_WAIT) {
        return Ok("unmounted with umount -f after the server stopped answering");
    }
    tracing::warn!(target = %path.display(), "forced unmount did not finish either; detaching lazily (umount -l)");
    ctx.mounter.force_unmount(&target, ForceMode::Detach)?;
    Ok("detached lazily (umount -l) after the server stopped answering")
}

/// How long a forced NFS unmount may take before the lazy detach.
const FORCE_WAIT: Duration = Duration::from_secs(5);

/// umount of a global mount, after checking the live mount table (rule 2): no pod mount may
/// still show the same filesystem.
fn unmount_global(ctx: &OpContext, pv_name: &str) -> Result<&'static str, HostError> {
    // Not while a set-up of this PV is staging it.
    let lock = ctx.staging.lock_for(&format!("pv/{pv_name}"));
    let _staging = crate::shared::lock(&lock);
    let path = crate::model::global_mount_path(ctx.fs.root(), &Plugin::LocalVolume, pv_name);
    let table = ctx.mounter.mount_table()?;
    let Some(global) = table.iter().rfind(|m| m.mount_point == path) else {
        return Ok("already unmounted");
    };
    let pods = ctx.fs.root().join("pods");
    if let Some(user) = table
        .iter()
        .find(|m| m.device == global.device && m.mount_point.starts_with(&pods))
    {
        return Err(HostError::Unsafe {
            path,
            why: format!(
                "{} still uses it; it is unmounted once no pod mount refers to it",
                user.mount_point.display()
            ),
        });
    }
    match ctx.fs.mount_point(&path)? {
        Some(target) => ctx.mounter.unmount(&target).map(|()| "unmounted"),
        None => Ok("already unmounted"),
    }
}

fn set_up(ctx: &OpContext, volume: &DesiredVolume) -> Result<&'static str, HostError> {
    match &volume.spec {
        MountSpec::Local {
            path,
            fs_type,
            mount_options,
            read_only,
        } => {
            let source = ctx
                .fs
                .open_source(path, PathType::Unchecked, true, *read_only)?;
            let source = if let Some(rdev) = ctx.devices.device_number(&source)? {
                stage(
                    ctx,
                    &volume.key.name,
                    &source,
                    rdev,
                    fs_type,
                    mount_options,
                    *read_only,
                )?
            } else if source.is_dir {
                source
            } else {
                return Err(HostError::PathCheck {
                    path: path.clone(),
                    expected: "a directory or a block device",
                    found: "something else".into(),
                });
            };
            bind_into(ctx, volume, &source, *read_only)
        }
        MountSpec::Nfs {
            server,
            path,
            options,
            read_only,
        } => {
            let target = ctx
                .fs
                .prepare_target(&volume.key, &volume.pod, false, 0o750)?;
            if ctx.mounter.is_mount_point(&target)? {
                return Ok("already mounted");
            }
            let source = format!("{server}:{path}");
            ctx.mounter
                .mount_nfs(&source, &target, options, *read_only, ctx.mount_timeout)?;
            Ok("mounted")
        }
        MountSpec::BlockDevice { path, read_only } => {
            let source = ctx
                .fs
                .open_source(path, PathType::BlockDevice, true, *read_only)?;
            bind_into(ctx, volume, &source, *read_only)
        }
        MountSpec::Directory => {
            ctx.fs
                .prepare_target(&volume.key, &volume.pod, false, 0o777)?;
            Ok("created")
        }
        MountSpec::Tmpfs { size_bytes, .. } => {
            let target = ctx
                .fs
                .prepare_target(&volume.key, &volume.pod, false, 0o750)?;
            if ctx.mounter.is_mount_point(&target)? {
                return Ok("already mounted");
            }
            ctx.mounter.mount_tmpfs(&target, *size_bytes)?;
            Ok("mounted")
        }
        MountSpec::Bind {
            source,
            expect,
            read_only,
        } => {
            let source = ctx.fs.open_source(source, *expect, false, *read_only)?;
            bind_into(ctx, volume, &source, *read_only)
        }
    }
}

/// `mount --bind <source> <pod volume path>` unless something is mounted there already.
fn bind_into(
    ctx: &OpContext,
    volume: &DesiredVolume,
    source: &crate::host::Source,
    read_only: bool,
) -> Result<&'static str, HostError> {
    let target = ctx
        .fs
        .prepare_target(&volume.key, &volume.pod, !source.is_dir, 0o750)?;
    if ctx.mounter.is_mount_point(&target)? {
        return Ok("already mounted");
    }
    ctx.mounter.bind(source, &target, read_only)?;
    Ok("mounted")
}
