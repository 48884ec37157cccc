//! Wiring: builds the source, the mount watcher, the executor and the sync loop from the
//! settings, runs them, and shuts down without aborting a side effect half-way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::actual::device_watch;
use crate::actual::watch::MountWatch;
use crate::config::Settings;
use crate::desired::binding_store::BindingStore;
use crate::desired::file::FileSource;
use crate::desired::kube::{publish_notices, KubeSource, SharedHealth};
use crate::desired::DesiredState;
use crate::executor::context::OpContext;
use crate::executor::preview::{preview, Preview};
use crate::executor::{Executor, ExecutorConfig};
use crate::host::format::{Formatter, RealFormatter};
use crate::host::fs::PodFs;
use crate::host::real::RealMounter;
use crate::host::run_lock::RunLock;
use crate::host::state_file::write_json;
use crate::host::Mounter;
use crate::model::backoff::BackoffPolicy;
use crate::model::mountinfo::PodMounts;
use crate::model::on_disk::OnDisk;
use crate::model::op::Op;
use crate::reconcile::plan::plan;
use crate::reconcile::status::{self, Failures, StatusRow};
use crate::sync_loop::{Report, SyncLoop};

/// The host seams a run works through.
pub struct Host {
    pub mounter: Arc<dyn Mounter>,
    pub formatter: Arc<dyn Formatter>,
    /// Watch block devices (udev/sysfs) and retry failed volumes when they change.
    pub watch_devices: bool,
}

impl Host {
    /// This machine: real syscalls, real blkid/mkfs/fsck, real device events.
    pub fn real(mounter_path: &std::path::Path) -> Host {
        Host {
            mounter: Arc::new(RealMounter::new(mounter_path.to_path_buf())),
            formatter: Arc::new(RealFormatter),
            watch_devices: true,
        }
    }
}

/// How long shutdown waits for in-flight ops before exiting anyway (a hung mount cannot be
/// waited out; it is never aborted half-way by us, the process exit ends it).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Notices waiting for the API at most; beyond that the newest are dropped.
const NOTICE_QUEUE: usize = 1024;

/// How long the last Events may take to reach the API at exit.
const EVENTS_GRACE: Duration = Duration::from_secs(5);

fn file_source(settings: &Settings, dir: &Path, record_bindings: bool) -> FileSource {
    FileSource {
        dir: dir.to_path_buf(),
        node: settings.node.clone(),
        store: BindingStore::new(&settings.root_dir),
        record_bindings,
        resync: settings.resync,
        root_dir: settings.root_dir.clone(),
        memory: Default::default(),
    }
}

fn pod_fs(settings: &Settings) -> PodFs {
    PodFs::new(
        settings.root_dir.clone(),
        settings.node.host_paths.roots.clone(),
    )
}

fn failures_path(root: &Path) -> PathBuf {
    root.join("state").join("failures.json")
}

/// Runs the reconciler until `cancel` fires, or (with `once`) until nothing is left to try.
/// `_held`: the root dir's run lock, which the caller keeps for as long as anything this
/// starts may still act (the binary: its whole life, past the runtime's shutdown).
pub async fn run(
    settings: &Settings,
    once: bool,
    host: Host,
    cancel: CancellationToken,
    _held: &RunLock,
) -> anyhow::Result<Report> {
    let Host {
        mounter,
        formatter,
        watch_devices,
    } = host;
    // A daemon pointed at a missing directory must fail (and be restarted), not idle.
    ensure_manifest_dir(settings)?;
    let fs = pod_fs(settings);
    let (on_disk, fs) = tokio::task::spawn_blocking(move || (fs.scan(), fs)).await?;
    let on_disk = on_disk.context("cannot scan the pod directories under the root dir")?;
    let mounts = MountWatch::spawn(mounter.clone(), settings.resync)?;
    // In once mode the snapshot is fixed; its sender lives until the loop ends.
    let (desired, _fixed_snapshot, notices, publisher) = match &settings.manifests {
        Some(dir) => {
            let (rx, fixed) =
                start_source(file_source(settings, dir, true), once, cancel.clone()).await?;
            (rx, fixed, None, None)
        }
        None => {
            let (rx, client) = start_api_source(settings, once, cancel.clone())
                .await
                .context("volumed changed nothing")?;
            let (tx, notices) = tokio::sync::mpsc::channel(NOTICE_QUEUE);
            let publisher = tokio::spawn(publish_notices(
                client,
                settings.node.name.clone(),
                crate::desired::kube::REPEAT_AFTER,
                notices,
            ));
            (rx, None, Some(tx), Some(publisher))
        }
    };
    let config = ExecutorConfig {
        max_concurrent: settings.max_concurrent_ops,
        deadline: settings.op_timeout,
        nfs_mount_deadline: settings.mount_timeout,
        max_per_server: settings.max_ops_per_server,
        slack: crate::executor::SLACK,
        backoff: BackoffPolicy::default(),
        retry: !once,
    };
    let devices = if once || !watch_devices {
        None
    } else {
        device_watch::spawn(formatter.clone(), mounter.clone(), settings.resync)
            .inspect_err(|err| tracing::warn!(%err, "cannot start the block-device watcher; device changes are seen at retries only"))
            .ok()
    };
    let mut context = OpContext::new(mounter, fs, formatter, settings.max_concurrent_formats);
    context.mount_timeout = settings.mount_timeout;
    context.unmount_timeout = settings.op_timeout;
    let (executor, events) = Executor::new(context, config);
    let (failures_tx, failures_rx) = watch::channel(Failures::new());
    let writer = tokio::spawn(write_failures(
        failures_path(&settings.root_dir),
        failures_rx,
    ));
    let sync = SyncLoop {
        root: settings.root_dir.clone(),
        desired,
        mounts,
        executor,
        events,
        on_disk,
        once,
        failures_out: Some(failures_tx),
        shutdown_grace: SHUTDOWN_GRACE,
        devices,
        notices,
    };
    let report = sync.run(cancel).await;
    // The notice sender is gone with the loop: the Events already queued (the last ones of a
    // --once run, say) get a moment to reach the API.
    if let Some(publisher) = publisher {
        if tokio::time::timeout(EVENTS_GRACE, publisher).await.is_err() {
            tracing::warn!(
                "the API did not take the last Events in time; the log has the same news"
            );
        }
    }
    // The sender is gone with the loop: the writer flushes the last list and ends.
    let _ = writer.await;
    Ok(report)
}

/// Once: one snapshot, fixed (its sender is returned so the channel stays open). Daemon: the
/// source runs on its own task and publishes snapshots until cancelled.
async fn start_source(
    source: FileSource,
    once: bool,
    cancel: CancellationToken,
) -> anyhow::Result<(
    watch::Receiver<Arc<DesiredState>>,
    Option<watch::Sender<Arc<DesiredState>>>,
)> {
    if once {
        let snapshot = tokio::task::spawn_blocking(move || source.snapshot()).await?;
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        return Ok((rx, Some(tx)));
    }
    let waiting = DesiredState {
        problems: vec!["waiting for the first read of the manifests".into()],
        ..Default::default()
    };
    let (tx, rx) = watch::channel(Arc::new(waiting));
    tokio::spawn(async move {
        if let Err(err) = source.run(tx, cancel).await {
            tracing::error!(%err, "manifest source stopped; keeping its last snapshot");
        }
    });
    Ok((rx, None))
}

/// The Kubernetes API source on its own task. In once mode this waits for its first
/// complete snapshot (every watch listed once).
async fn start_api_source(
    settings: &Settings,
    once: bool,
    cancel: CancellationToken,
) -> anyhow::Result<(watch::Receiver<Arc<DesiredState>>, kube::Client)> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no Kubernetes API configuration (in-cluster, $KUBECONFIG or ~/.kube/config); pass --kubeconfig or --manifests")?,
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)?;
    let waiting = DesiredState {
        problems: vec!["waiting for the first complete list from the Kubernetes API".into()],
        ..Default::default()
    };
    let (tx, mut rx) = watch::channel(Arc::new(waiting));
    let health = SharedHealth::default();
    let source = KubeSource {
        client: client.clone(),
        node: settings.node.clone(),
        health: health.clone(),
    };
    tokio::spawn(source.run(tx, cancel.clone()));
    if once {
        tokio::select! {
            _ = cancel.cancelled() => {}
            changed = tokio::time::timeout(settings.first_list_timeout, rx.changed()) => match changed {
                Ok(changed) => changed.context("the API source stopped before its first list")?,
                Err(_) => {
                    let health = crate::shared::lock(&health);
                    let mut why = vec![format!(
                        "still waiting for the first list of: {}",
                        health.unlisted().join(", ")
                    )];
                    why.extend(health.failing());
                    anyhow::bail!(
                        "the Kubernetes API at {server} gave no complete list within {}:\n  {}\nIs it reachable from this host? Check --kubeconfig (or the in-cluster config and $KUBECONFIG), or wait longer with --first-list-timeout",
                        humantime::format_duration(settings.first_list_timeout),
                        why.join("\n  ")
                    );
                }
            },
        }
    }
    Ok((rx, client))
}

/// Keeps `<root>/state/failures.json` current, for `volumed status` in another process.
async fn write_failures(path: PathBuf, mut failures: watch::Receiver<Failures>) {
    loop {
        let closed = failures.changed().await.is_err();
        let current = failures.borrow_and_update().clone();
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_json(&target, &current)).await;
        if let Ok(Err(err)) = written {
            tracing::warn!(path = %path.display(), %err, "cannot record volume failures for `volumed status`");
        }
        if closed {
            return;
        }
    }
}

/// What `run --once` would do now, changing nothing (bindings are not recorded): the ops,
/// each set-up with the checks it would make and the safe-format decision it would take.
pub async fn plan_only(settings: &Settings, host: Host) -> anyhow::Result<PlanReport> {
    let desired = desired_now(settings).await?;
    let (mounts, on_disk) = host_now(settings, host.mounter.as_ref())?;
    // As plan sees it: a pod whose uid names another pod's directory waits.
    let desired = crate::reconcile::pod_dirs::assign(&desired, &on_disk).into_owned();
    let ops = plan(&desired, &mounts, &on_disk);
    let context = OpContext::new(
        host.mounter,
        pod_fs(settings),
        host.formatter,
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
    mounter: &dyn Mounter,
) -> anyhow::Result<(DesiredState, Vec<StatusRow>)> {
    ensure_manifest_dir(settings)?;
    // The host is worth seeing exactly when the API is not answering.
    let desired = desired_now(settings)
        .await
        .unwrap_or_else(|err| DesiredState {
            problems: vec![format!("the desired state is unknown: {err:#}")],
            ..Default::default()
        });
    let (mounts, on_disk) = host_now(settings, mounter)?;
    let failures: Failures = std::fs::read(failures_path(&settings.root_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let rows = status::rows(&settings.root_dir, &desired, &mounts, &on_disk, &failures);
    Ok((desired, rows))
}

/// The desired state from the manifests, or from one complete list of the API (watches
/// started, listed once, stopped).
async fn desired_now(settings: &Settings) -> anyhow::Result<DesiredState> {
    ensure_manifest_dir(settings)?;
    Ok(match &settings.manifests {
        Some(dir) => file_source(settings, dir, false).snapshot(),
        None => {
            let cancel = CancellationToken::new();
            // The watches stop however this ends.
            let _stop = cancel.clone().drop_guard();
            let (snapshot, _client) = start_api_source(settings, true, cancel).await?;
            let desired = (**snapshot.borrow()).clone();
            desired
        }
    })
}

/// A `--manifests` that is not a directory is an error of the command line, not a state.
fn ensure_manifest_dir(settings: &Settings) -> anyhow::Result<()> {
    if let Some(dir) = &settings.manifests {
        anyhow::ensure!(
            dir.is_dir(),
            "manifest directory {} does not exist or is not a directory; create it or fix --manifests",
            dir.display()
        );
    }
    Ok(())
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
