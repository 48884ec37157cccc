//! How each op is carried out on the host. Runs only on executor worker threads: every call
//! here may block (mounts, stats of volume paths, directory removal).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::host::fs::PodFs;
use crate::host::{HostError, Mounter};
use crate::model::{DesiredVolume, MountSpec, Plugin, VolumeKey};
use crate::reconcile::plan::Op;

/// The host seams an op works through.
pub struct OpContext {
    pub mounter: Arc<dyn Mounter>,
    pub fs: PodFs,
}

/// What an op left behind, for the sync loop's picture of the host.
#[derive(Debug)]
pub struct OpOutcome {
    /// What the op did, for the log ("mounted", "already mounted", "removed", ...), or why
    /// it failed.
    pub did: Result<&'static str, String>,
    /// The pod's volume directories after the op (`Some(None)`: the pod directory is gone;
    /// `None`: the rescan failed and the loop keeps what it knew).
    pub pod_dirs: Option<Option<BTreeSet<VolumeKey>>>,
}

pub fn run_op(ctx: &OpContext, op: &Op) -> OpOutcome {
    let did = match op {
        Op::SetUp { volume } => set_up(ctx, volume),
        Op::Unmount { key, nested } => {
            let target = nested.clone().unwrap_or_else(|| key.path(ctx.fs.root()));
            ctx.mounter.unmount(&target).map(|()| "unmounted")
        }
        Op::RemoveVolumeDir { key } => {
            // Checked against a fresh mount table, not our records (rule 2).
            let recursive = key.plugin == Plugin::EmptyDir;
            ctx.mounter
                .mount_table()
                .and_then(|mounts| ctx.fs.remove_volume_dir(key, recursive, &mounts))
                .map(|()| "removed")
        }
        Op::RemovePodDir { pod_uid } => ctx.fs.remove_pod_dir(pod_uid).map(|()| "removed"),
    };
    // Rescan even after a failure: a half-done set-up may have created directories.
    let pod_dirs = match ctx.fs.scan_pod(op.pod_uid()) {
        Ok(dirs) => Some(dirs),
        Err(err) => {
            tracing::warn!(%err, "cannot rescan the pod directory after the op");
            None
        }
    };
    OpOutcome {
        did: did.map_err(|e| e.to_string()),
        pod_dirs,
    }
}

fn set_up(ctx: &OpContext, volume: &DesiredVolume) -> Result<&'static str, HostError> {
    match &volume.spec {
        MountSpec::Directory => {
            ctx.fs.prepare_target(&volume.key, false, 0o777)?;
            Ok("created")
        }
        MountSpec::Tmpfs { size_bytes } => {
            let target = ctx.fs.prepare_target(&volume.key, false, 0o750)?;
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
            let source = ctx.fs.open_source(source, *expect)?;
            let target = ctx.fs.prepare_target(&volume.key, !source.is_dir, 0o750)?;
            if ctx.mounter.is_mount_point(&target)? {
                return Ok("already mounted");
            }
            ctx.mounter.bind(&source, &target, *read_only)?;
            Ok("mounted")
        }
    }
}
