//! Wiring: builds the source, the mount watcher, the executor and the sync loop from the
//! settings, runs them under supervision, and shuts down without aborting a side effect
//! half-way.

pub mod endpoint;
pub mod inspect;
pub mod release;
mod supervise;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::supervise::Supervisor;
use crate::actual::device_watch;
use crate::actual::watch::MountWatch;
use crate::config::Settings;
use crate::desired::binding_store::BindingStore;
use crate::desired::file::FileSource;
use crate::desired::kube::{publish_notices, KubeSource, SharedHealth};
use crate::desired::local_disks::LocalDisks;
use crate::desired::reclaim::Reclaimer;
use crate::desired::DesiredState;
use crate::executor::context::OpContext;
use crate::executor::{Executor, ExecutorConfig};
use crate::host::devices::{BlockDevices, RealBlockDevices};
use crate::host::format::{Formatter, RealFormatter};
use crate::host::fs::PodFs;
use crate::host::real::RealMounter;
use crate::host::run_lock::RunLock;
use crate::host::state_file::write_json;
use crate::host::Mounter;
use crate::localpv::cleaner::{Cleaner, Cluster};
use crate::localpv::config::LocalPvConfig;
use crate::localpv::events::PvEvents;
use crate::localpv::publish::Publisher;
use crate::model::backoff::BackoffPolicy;
use crate::reconcile::status::Failures;
use crate::sync_loop::{Progress, Report, SyncLoop};
use k8s_openapi::api::core::v1::PersistentVolume;

/// The host seams a run works through.
pub struct Host {
    pub mounter: Arc<dyn Mounter>,
    pub formatter: Arc<dyn Formatter>,
    pub devices: Arc<dyn BlockDevices>,
    /// Watch block devices (udev/sysfs) and retry failed volumes when they change.
    pub watch_devices: bool,
    /// Where the sync loop reports its progress (tests wait on it); `None` in production.
    pub progress: Option<watch::Sender<Progress>>,
}

impl Host {
    /// This machine: real syscalls, real blkid/mkfs/fsck, real device events.
    pub fn real(mounter_path: &std::path::Path) -> Host {
        Host {
            mounter: Arc::new(RealMounter::new(mounter_path.to_path_buf())),
            formatter: Arc::new(RealFormatter),
            devices: Arc::new(RealBlockDevices::default()),
            watch_devices: true,
            progress: None,
        }
    }
}

/// How long shutdown waits for in-flight ops before exiting anyway (a hung mount cannot be
/// waited out; it is never aborted half-way by us, the process exit ends it).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a stopped loop waits to learn from the supervisor why its input closed.
const REASON_WAIT: Duration = Duration::from_secs(1);

/// Notices waiting for the API at most; beyond that the newest are dropped.
const NOTICE_QUEUE: usize = 1024;

/// How long the last Events may take to reach the API at exit.
const EVENTS_GRACE: Duration = Duration::from_secs(5);

fn file_source(
    settings: &Settings,
    dir: &Path,
    record_bindings: bool,
    mounter: &Arc<dyn Mounter>,
) -> FileSource {
    FileSource {
        dir: dir.to_path_buf(),
        node: settings.node.clone(),
        store: BindingStore::new(&settings.root_dir),
        record_bindings,
        resync: settings.resync,
        root_dir: settings.root_dir.clone(),
        memory: Default::default(),
        local_disks: settings.local_pv.clone().map(|config| LocalDisks {
            config,
            mounter: mounter.clone(),
        }),
        volumes_out: None,
        reread: Default::default(),
    }
}

/// The cleaner of released local PVs; `cluster` in API mode.
fn local_pv_cleaner(
    settings: &Settings,
    config: &LocalPvConfig,
    mounter: &Arc<dyn Mounter>,
    cluster: Option<Cluster>,
) -> Cleaner {
    Cleaner {
        cluster,
        node_name: settings.node.name.clone(),
        config: config.clone(),
        mounter: mounter.clone(),
        root_dir: settings.root_dir.clone(),
        // Removing a big tree takes a while; past this it goes on, alone.
        timeout: settings.op_timeout * 10,
        running: Default::default(),
        stuck: Default::default(),
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
/// A long-lived task (a source, a watcher) that ends before that ends the run with an error
/// naming it. `_held`: the root dir's run lock, which the caller keeps for as long as
/// anything this starts may still act (the binary: its whole life, past the runtime's end).
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
        devices: block_devices,
        watch_devices,
        progress,
    } = host;
    // A daemon pointed at a missing directory must fail (and be restarted), not idle.
    ensure_manifest_dir(settings)?;
    let fs = pod_fs(settings);
    let (on_disk, fs) = tokio::task::spawn_blocking(move || (fs.scan(), fs)).await?;
    let on_disk = on_disk.context("cannot scan the pod directories under the root dir")?;
    let mounts = MountWatch::spawn(mounter.clone(), settings.resync)?;
    // The tasks stop with the loop: at a signal, or when a --once run is done.
    let stop_tasks = cancel.child_token();
    let mut tasks = Supervisor::new(stop_tasks.clone());
    // In file mode's once mode, the cleanup of released local disks after the loop.
    let mut once_reclaim = None;
    // In once mode the snapshot is fixed; its sender lives until the loop ends.
    let (desired, _fixed_snapshot, notices, publisher, api_client) = match &settings.manifests {
        Some(dir) => {
            let mut source = file_source(settings, dir, true, &mounter);
            let (volumes_tx, volumes_rx) = watch::channel(Arc::new(Vec::new()));
            let reclaimer = settings
                .local_pv
                .as_ref()
                .filter(|config| !config.classes.is_empty())
                .map(|config| Reclaimer {
                    cleaner: local_pv_cleaner(settings, config, &mounter, None),
                    store: BindingStore::new(&settings.root_dir),
                    volumes: volumes_rx,
                    mounts: mounts.tables.clone(),
                    reread: source.reread.clone(),
                    resync: settings.resync,
                });
            if reclaimer.is_some() {
                source.volumes_out = Some(volumes_tx);
            }
            let (rx, fixed, volumes) =
                start_source(source, once, &tasks, stop_tasks.clone()).await?;
            match reclaimer {
                Some(reclaimer) if once => once_reclaim = Some((reclaimer, volumes)),
                Some(reclaimer) => {
                    tasks.spawn("local-disk cleaner", reclaimer.run(stop_tasks.clone()));
                }
                None => {}
            }
            (rx, fixed, None, None, None)
        }
        None => {
            let (rx, client) = start_api_source(settings, once, &tasks, stop_tasks.clone())
                .await
                .context("volumed changed nothing")?;
            let (tx, notices) = tokio::sync::mpsc::channel(NOTICE_QUEUE);
            // Lives as long as the loop: it ends when the loop's sender is gone.
            let publisher = tasks.spawn_tied(
                "Event publisher",
                publish_notices(
                    client.clone(),
                    settings.node.name.clone(),
                    crate::desired::kube::REPEAT_AFTER,
                    notices,
                ),
            );
            (rx, None, Some(tx), Some(publisher), Some(client))
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
    if let (Some(client), Some(config), false) = (&api_client, &settings.local_pv, once) {
        if !config.classes.is_empty() {
            let events = Arc::new(PvEvents::new(client.clone(), &settings.node.name));
            let publisher = Publisher {
                client: client.clone(),
                node_name: settings.node.name.clone(),
                config: config.clone(),
                mounts: mounts.tables.clone(),
                devices: devices.clone(),
                resync: settings.resync,
                scan_timeout: settings.op_timeout,
                cleaner: local_pv_cleaner(
                    settings,
                    config,
                    &mounter,
                    Some(Cluster {
                        volumes: kube::Api::all(client.clone()),
                        events: events.clone(),
                    }),
                ),
                events,
                vanished: Default::default(),
            };
            tasks.spawn("local-PV publisher", publisher.run(stop_tasks.clone()));
        }
    }
    // The loop always reports its progress: the endpoint judges health and readiness by it.
    let (progress, progress_seen) = match progress {
        Some(tx) => {
            let rx = tx.subscribe();
            (tx, rx)
        }
        None => watch::channel(Progress::default()),
    };
    if !once {
        let listener = crate::host::http::bind(settings.http_addr).await?;
        let bound = listener.local_addr()?;
        let written = endpoint::address_file(&settings.root_dir);
        std::fs::write(&written, format!("{bound}\n"))
            .with_context(|| format!("cannot write {}", written.display()))?;
        tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics and /status");
        let routes = endpoint::Endpoint {
            progress: progress_seen,
            settings: settings.clone(),
            mounter: mounter.clone(),
            client: api_client.clone(),
        }
        .routes();
        tasks.spawn(
            "health and metrics endpoint",
            crate::host::http::serve(listener, routes, stop_tasks.clone()),
        );
    }
    let mut context = OpContext::new(
        mounter,
        fs,
        formatter,
        block_devices,
        settings.max_concurrent_formats,
    );
    context.mount_timeout = settings.mount_timeout;
    context.unmount_timeout = settings.op_timeout;
    let (executor, events) = Executor::new(context, config);
    let (failures_tx, failures_rx) = watch::channel(Failures::new());
    // Lives as long as the loop, as the publisher does.
    let writer = tasks.spawn_tied(
        "failure recorder",
        write_failures(failures_path(&settings.root_dir), failures_rx),
    );
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
        progress: Some(progress),
    };
    let looping = sync.run(stop_tasks.clone());
    tokio::pin!(looping);
    let (report, failed) = tokio::select! {
        report = &mut looping => {
            // A loop that stopped because an input closed: the task behind it says why (its
            // supervisor hears of its end just after the loop does).
            let failed = match report.stopped.clone() {
                Some(why) => Some(
                    tokio::time::timeout(REASON_WAIT, tasks.first_failure())
                        .await
                        .unwrap_or(why),
                ),
                None => None,
            };
            (report, failed)
        }
        why = tasks.first_failure() => {
            // Not logged here: the error returned names it, and the command prints it once.
            // The loop stops intake and lets its in-flight ops finish, as at a signal.
            stop_tasks.cancel();
            (looping.await, Some(why))
        }
    };
    stop_tasks.cancel();
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
    // The loop has torn down what it had to: released local disks are no longer in use.
    if let (Some((reclaimer, volumes)), None) = (once_reclaim, &failed) {
        if !reclaimer.pass(&volumes).await {
            tracing::warn!("a released local disk is not clean yet (`volumed status` shows why); the next run tries again");
        }
    }
    tasks.wait(EVENTS_GRACE).await;
    match failed {
        Some(why) => anyhow::bail!(
            "{why}; volumed stopped so that its supervisor (systemd, the kubelet) restarts it"
        ),
        None => Ok(report),
    }
}

/// Once: one snapshot, fixed (its sender is returned so the channel stays open), with the
/// Released volumes it found. Daemon: the source runs as a supervised task and publishes
/// snapshots until stopped.
async fn start_source(
    source: FileSource,
    once: bool,
    tasks: &Supervisor,
    stop: CancellationToken,
) -> anyhow::Result<(
    watch::Receiver<Arc<DesiredState>>,
    Option<watch::Sender<Arc<DesiredState>>>,
    Vec<PersistentVolume>,
)> {
    if once {
        let read = tokio::task::spawn_blocking(move || source.settled(None, true)).await?;
        let (tx, rx) = watch::channel(Arc::new(read.state));
        return Ok((rx, Some(tx), read.volumes));
    }
    let waiting = DesiredState {
        problems: vec!["waiting for the first read of the manifests".into()],
        ..Default::default()
    };
    let (tx, rx) = watch::channel(Arc::new(waiting));
    tasks.spawn("manifest source", source.run(tx, stop));
    Ok((rx, None, Vec::new()))
}

/// The Kubernetes API source as a supervised task. In once mode this waits for its first
/// complete snapshot (every watch listed once).
async fn start_api_source(
    settings: &Settings,
    once: bool,
    tasks: &Supervisor,
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
    let cancel_source = cancel.clone();
    let source = KubeSource {
        client: client.clone(),
        node: settings.node.clone(),
        health: health.clone(),
    };
    tasks.spawn("Kubernetes API source", source.run(tx, cancel_source));
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
