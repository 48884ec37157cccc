//! The one-shot views of `plan` and `status`: the desired state read once and the host as it
//! stands, compared without changing anything.

use tokio_util::sync::CancellationToken;

use super::supervise::Supervisor;
use super::wiring::{
    ensure_manifest_dir, failures_path, file_source, pod_fs, start_api_source, Host,
};
use std::sync::Arc;

use anyhow::Context;

use k8s_openapi::api::core::v1::PersistentVolume;

use crate::config::{Settings, DEFAULT_CONFIG};
use crate::desired::binding_store::BindingStore;
use crate::desired::resolve::{consumed_claims, our_pods};
use crate::desired::DesiredState;
use crate::executor::context::OpContext;
use crate::executor::preview::{preview, Preview};
use crate::host::local_dirs::scan_mount_dir;
use crate::host::Mounter;
use crate::localpv::cleaner::read_journal;
use crate::localpv::discover::{discover, Discovered, Node};
use crate::model::mountinfo::PodMounts;
use crate::model::on_disk::OnDisk;
use crate::model::op::Op;
use crate::reconcile::plan::plan;
use crate::reconcile::status::{self, Failures, StatusRow};

/// What `run --once` would do now, changing nothing (bindings are not recorded): the ops,
/// each set-up with the checks it would make and the safe-format decision it would take.
pub async fn plan_only(settings: &Settings, host: Host) -> anyhow::Result<PlanReport> {
    let (desired, _) = desired_now(settings, &host.mounter).await?;
    let (mounts, on_disk) = host_now(settings, host.mounter.as_ref())?;
    // As plan sees it: a pod whose uid names another pod's directory waits.
    let desired = crate::reconcile::pod_dirs::assign(&desired, &on_disk).into_owned();
    let ops = plan(&desired, &mounts, &on_disk);
    let context = OpContext::new(
        host.mounter,
        pod_fs(settings),
        host.formatter,
        host.devices,
        settings.max_concurrent_formats,
    );
    let ops = tokio::task::spawn_blocking(move || {
        ops.into_iter()
            .map(|op| {
                let preview = match &op {
                    Op::SetUp { volume } => Some(preview(&context, volume)),
                    _ => None,
                };
                PlannedOp { op, preview }
            })
            .collect()
    })
    .await?;
    Ok(PlanReport { desired, ops })
}

/// `volumed plan`'s answer.
#[derive(Debug, serde::Serialize)]
pub struct PlanReport {
    pub desired: DesiredState,
    pub ops: Vec<PlannedOp>,
}

#[derive(Debug, serde::Serialize)]
pub struct PlannedOp {
    #[serde(flatten)]
    pub op: Op,
    /// For a set-up: what it is expected to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
}

/// A volume that cannot be set up now, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cannot {
    pub pod: String,
    pub volume: String,
    pub reason: String,
    /// Where the pod was defined (`file:line`), in file mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl PlanReport {
    /// Every volume that cannot be set up: those waiting for something, and the set-ups
    /// whose checks fail.
    pub fn cannot(&self) -> Vec<Cannot> {
        let waiting = self
            .desired
            .waiting
            .iter()
            .filter(|w| w.blocking)
            .map(|w| Cannot {
                pod: w.pod.to_string(),
                volume: w.volume_name.clone(),
                reason: w.reason.clone(),
                origin: w.origin.clone(),
            });
        let failing = self
            .ops
            .iter()
            .filter_map(|planned| match (&planned.op, &planned.preview) {
                (Op::SetUp { volume }, Some(Preview::Fails { reason })) => Some(Cannot {
                    pod: volume.pod.to_string(),
                    volume: volume.volume_name.clone(),
                    reason: reason.clone(),
                    origin: self.desired.pod_origins.get(&volume.pod.uid).cloned(),
                }),
                _ => None,
            });
        waiting.chain(failing).collect()
    }

    /// True when `run --once` can do everything: a complete desired state and no volume that
    /// cannot be set up.
    pub fn can_do_everything(&self) -> bool {
        self.desired.complete && self.cannot().is_empty()
    }
}

/// The status rows as the host stands, with the failures a running daemon last recorded.
pub async fn status_only(
    settings: &Settings,
    mounter: &Arc<dyn Mounter>,
) -> anyhow::Result<(DesiredState, Vec<StatusRow>)> {
    ensure_manifest_dir(settings)?;
    // The host is worth seeing exactly when the API is not answering.
    let (mut desired, client) = desired_now(settings, mounter).await.unwrap_or_else(|err| {
        let unknown = DesiredState {
            problems: vec![format!("the desired state is unknown: {err:#}")],
            ..Default::default()
        };
        (unknown, None)
    });
    let rows = rows_now(settings, &mut desired, mounter, client).await?;
    Ok((desired, rows))
}

/// The status rows of `desired` against the host as it stands (the mount table, the pod
/// directories, the failures the daemon recorded, the local disks), under `--op-timeout`: a
/// scan stuck on a hung disk fails instead of hanging. A local-disk view that fails is a
/// warning on `desired`.
pub async fn rows_now(
    settings: &Settings,
    desired: &mut DesiredState,
    mounter: &Arc<dyn Mounter>,
    client: Option<kube::Client>,
) -> anyhow::Result<Vec<StatusRow>> {
    let (looking, in_thread) = (settings.clone(), mounter.clone());
    let look = tokio::task::spawn_blocking(move || host_now(&looking, in_thread.as_ref()));
    let (mounts, on_disk) = tokio::time::timeout(settings.op_timeout, look)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "reading the mount table and the pod directories took longer than --op-timeout"
            )
        })???;
    let failures: Failures = std::fs::read(failures_path(&settings.root_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut rows = status::rows(&settings.root_dir, desired, &mounts, &on_disk, &failures);
    if settings
        .local_pv
        .as_ref()
        .is_some_and(|c| !c.classes.is_empty())
    {
        match local_disks_now(settings, mounter.as_ref(), client).await {
            Ok(local) => rows.extend(local),
            Err(err) => desired
                .warnings
                .push(format!("the local disks are not shown: {err:#}")),
        }
    }
    Ok(rows)
}

/// A row per local disk: what discovery finds now, the cleanups journaled, and the PVs as the
/// API has them (API mode) or the recorded bindings (file mode).
async fn local_disks_now(
    settings: &Settings,
    mounter: &dyn Mounter,
    client: Option<kube::Client>,
) -> anyhow::Result<Vec<StatusRow>> {
    let discovered = discover_now(settings, mounter).await?;
    let journal = read_journal(&settings.root_dir).map_err(anyhow::Error::msg)?;
    let published = match client {
        Some(client) => {
            let volumes: kube::Api<PersistentVolume> = kube::Api::all(client);
            let list = volumes
                .list(&Default::default())
                .await
                .context("cannot list the PersistentVolumes")?;
            Some(list.items)
        }
        None => None,
    };
    let store = BindingStore::new(&settings.root_dir);
    let recorded = match settings.manifests {
        Some(_) => store.load()?,
        None => Default::default(),
    };
    // The claims that keep their volumes: those the manifests have, and those a pod names.
    let (claims, may_release) = match &settings.manifests {
        Some(dir) => {
            let manifests = crate::desired::manifest::load_dir(dir);
            let named = consumed_claims(&our_pods(&manifests, &settings.node));
            let may_release = manifests.errors.is_empty()
                && manifests.refused.is_empty()
                && !crate::desired::manifest::manifest_files(dir).0.is_empty();
            (
                manifests.claims.into_keys().chain(named).collect(),
                may_release,
            )
        }
        None => (Default::default(), false),
    };
    Ok(status::local_disk_rows(&status::LocalDisks {
        node: &settings.node.name,
        discovered: &discovered,
        journal: &journal,
        published: published.as_deref(),
        recorded: &recorded,
        claims: &claims,
        may_release,
    }))
}

/// The desired state from the manifests, or from one complete list of the API (watches
/// started, listed once, stopped) with the client that listed it.
async fn desired_now(
    settings: &Settings,
    mounter: &Arc<dyn Mounter>,
) -> anyhow::Result<(DesiredState, Option<kube::Client>)> {
    ensure_manifest_dir(settings)?;
    Ok(match &settings.manifests {
        Some(dir) => (file_source(settings, dir, false, mounter).snapshot(), None),
        None => {
            let cancel = CancellationToken::new();
            // The watches stop however this ends.
            let _stop = cancel.clone().drop_guard();
            let tasks = Supervisor::new(cancel.clone());
            let (snapshot, client) = start_api_source(settings, true, &tasks, cancel).await?;
            let desired = (**snapshot.borrow()).clone();
            (desired, Some(client))
        }
    })
}

/// The mounts and pod directories as they stand.
fn host_now(settings: &Settings, mounter: &dyn Mounter) -> anyhow::Result<(PodMounts, OnDisk)> {
    let table = mounter.mount_table()?;
    let mounts = PodMounts::index(&table, &settings.root_dir);
    let on_disk = if settings.root_dir.exists() {
        pod_fs(settings).scan()?
    } else {
        OnDisk::default()
    };
    Ok((mounts, on_disk))
}

/// What the local-PV discoverer finds now under each configured class's `mount_dir`,
/// changing nothing. Each scan runs on a worker thread under `--op-timeout`: a hung disk
/// makes this fail with its directory named, never hang.
pub async fn discover_now(
    settings: &Settings,
    mounter: &dyn Mounter,
) -> anyhow::Result<Discovered> {
    let Some(config) = settings.local_pv.clone().filter(|c| !c.classes.is_empty()) else {
        anyhow::bail!("no local-PV classes are configured: add [[local_pv.classes]] tables to the config file (--config FILE, default {DEFAULT_CONFIG})");
    };
    let mounts = mounter.mount_table()?;
    let mut scans = Vec::new();
    for class in &config.classes {
        let (dir, table) = (class.mount_dir().to_path_buf(), mounts.clone());
        let scan = tokio::task::spawn_blocking(move || scan_mount_dir(&dir, &table));
        let entries = tokio::time::timeout(settings.op_timeout, scan)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "scanning {} took longer than --op-timeout ({}): a disk there may hang; check dmesg",
                    class.mount_dir().display(),
                    humantime::format_duration(settings.op_timeout)
                )
            })??
            .with_context(|| format!("cannot scan {}", class.mount_dir().display()))?;
        scans.push(entries);
    }
    // Each StorageClass's reclaim policy, where the manifests have it (the API's: later).
    let reclaim = match &settings.manifests {
        Some(dir) => crate::desired::manifest::load_dir(dir)
            .classes
            .into_values()
            .filter_map(|c| Some((c.metadata.name.clone()?, c.reclaim_policy.clone()?)))
            .collect(),
        None => Default::default(),
    };
    let node = Node {
        name: &settings.node.name,
        labels: &settings.node.labels,
    };
    Ok(discover(&node, &config, &scans, &reclaim))
}
