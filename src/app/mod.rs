//! Wiring: builds the source, the mount watcher, the executor and the sync loop from the
//! settings, runs them under supervision, and shuts down without aborting a side effect
//! half-way.

pub mod endpoint;
pub mod inspect;
mod notify;
mod volume_stats;
pub mod release;
mod wiring;

pub use self::wiring::Host;
use self::wiring::{
    ensure_manifest_dir, failures_path, file_source, local_pv_cleaner, pod_fs, start_api_source,
    start_source, wait_for_manifest_dir,
};
mod supervise;

use std::path::PathBuf;
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
use crate::desired::kube::publish_notices;
use crate::desired::reclaim::Reclaimer;
use crate::executor::context::OpContext;
use crate::executor::{Executor, ExecutorConfig};
use crate::host::run_lock::RunLock;
use crate::host::state_file::write_json;
use crate::localpv::cleaner::Cluster;
use crate::localpv::events::PvEvents;
use crate::localpv::publish::Publisher;
use crate::model::backoff::BackoffPolicy;
use crate::reconcile::status::Failures;
use crate::sync_loop::{Progress, Report, SyncLoop};

/// How long shutdown waits for in-flight ops before exiting anyway (a hung mount cannot be
/// waited out; it is never aborted half-way by us, the process exit ends it).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a stopped loop waits to learn from the supervisor why its input closed.
const REASON_WAIT: Duration = Duration::from_secs(1);

/// Notices waiting for the API at most; beyond that the newest are dropped.
const NOTICE_QUEUE: usize = 1024;

/// How long the last Events may take to reach the API at exit.
const EVENTS_GRACE: Duration = Duration::from_secs(5);

/// As much for a daemon that was told to stop: SIGTERM is answered within a second.
const STOP_EVENTS_GRACE: Duration = Duration::from_millis(300);

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
    // A one-shot run on a missing directory fails; a daemon waits for it (a restart loop
    // would change nothing).
    if once {
        ensure_manifest_dir(settings)?;
    } else if !wait_for_manifest_dir(settings, &cancel).await {
        return Ok(Report {
            desired: Default::default(),
            rows: Vec::new(),
            other_failures: Default::default(),
            stopped: None,
        });
    }
    // The pod directories, the mount table and the source's first read are each a walk of
    // their own: they run at once.
    let fs = pod_fs(settings);
    let scanning = tokio::task::spawn_blocking(move || (fs.scan(), fs));
    let watching = {
        let (mounter, root, resync) = (mounter.clone(), settings.root_dir.clone(), settings.resync);
        tokio::task::spawn_blocking(move || MountWatch::spawn(mounter, root, resync))
    };
    // The tasks stop with the loop: at a signal, or when a --once run is done.
    let stop_tasks = cancel.child_token();
    let mut tasks = Supervisor::new(stop_tasks.clone());
    // In file mode's once mode, the cleanup of released local disks after the loop.
    let mut once_reclaim = None;
    // The local-disk cleanups under way (both modes): a stop lets them finish.
    let cleaning: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>> = Default::default();
    // File mode's cleaner of released local disks, made once the mount table is read.
    let mut reclaims = None;
    // In once mode the snapshot is fixed; its sender lives until the loop ends.
    let (desired, _fixed_snapshot, notices, publisher, api_client) = match &settings.manifests {
        Some(dir) => {
            let mut source = file_source(settings, dir, true, &mounter);
            let (volumes_tx, volumes_rx) = watch::channel(Arc::new(Vec::new()));
            let cleans = settings
                .local_pv
                .as_ref()
                .filter(|config| !config.classes.is_empty());
            if cleans.is_some() {
                source.volumes_out = Some(volumes_tx);
            }
            let reread = source.reread.clone();
            let (rx, fixed, volumes) =
                start_source(source, once, &tasks, stop_tasks.clone()).await?;
            reclaims = cleans.map(|config| {
                let (mounter, cleaning) = (mounter.clone(), cleaning.clone());
                let reclaimer = move |mounts: &MountWatch| Reclaimer {
                    cleaner: local_pv_cleaner(settings, config, &mounter, None, &cleaning),
                    store: BindingStore::new(&settings.root_dir),
                    volumes: volumes_rx,
                    mounts: mounts.tables.clone(),
                    reread,
                    resync: settings.resync,
                };
                (reclaimer, volumes)
            });
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
    let mounts = watching.await??;
    match reclaims {
        Some((reclaimer, volumes)) if once => once_reclaim = Some((reclaimer(&mounts), volumes)),
        Some((reclaimer, _)) => {
            let reclaimer = reclaimer(&mounts);
            tasks.spawn("local-disk cleaner", reclaimer.run(stop_tasks.clone()));
        }
        None => {}
    }
    let (on_disk, fs) = scanning.await?;
    let on_disk = on_disk.context("cannot scan the pod directories under the root dir")?;
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
                    &cleaning,
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
        tasks.spawn_tied(
            "systemd notifier",
            notify::tell_systemd(progress_seen.clone(), stop_tasks.clone()),
        );
        let stats = volume_stats::StatsTask {
            progress: progress_seen.clone(),
            mounts: mounts.tables.clone(),
            root_dir: settings.root_dir.clone(),
            every: settings.resync,
            deadline: settings.op_timeout,
        };
        tasks.spawn_tied("volume stats", stats.run(stop_tasks.clone()));
        let listener = crate::host::http::bind(settings.http_addr).await?;
        let bound = listener.local_addr()?;
        let written = endpoint::address_file(&settings.root_dir);
        std::fs::write(&written, format!("{bound}\n"))
            .with_context(|| format!("cannot write {}", written.display()))?;
        tracing::info!(addr = %bound, "serving /healthz, /readyz, /metrics and /status");
        let routes = endpoint::Endpoint {
            reading: Default::default(),
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
    let stopping = context.stopping.clone();
    let told = cancel.clone();
    tokio::spawn(async move {
        told.cancelled().await;
        stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    });
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
    // A cleanup under way finishes (within its own deadline) rather than stop half done.
    let cleanups_due = tokio::time::Instant::now()
        + (settings.op_timeout * 10).min(crate::sync_loop::FORMAT_GRACE);
    while !crate::shared::lock(&cleaning).is_empty() && tokio::time::Instant::now() < cleanups_due {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A daemon's stop is prompt: its last Events get a moment, a --once run's more.
    let events_grace = if once {
        EVENTS_GRACE
    } else {
        STOP_EVENTS_GRACE
    };
    // The notice sender is gone with the loop: the Events already queued (the last ones of a
    // --once run, say) get a moment to reach the API.
    if let Some(publisher) = publisher {
        if tokio::time::timeout(events_grace, publisher).await.is_err() {
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
    tasks.wait(events_grace).await;
    if !once {
        // No daemon answers there any more.
        let _ = std::fs::remove_file(endpoint::address_file(&settings.root_dir));
    }
    match failed {
        Some(why) => anyhow::bail!(
            "{why}; volumed stopped so that its supervisor (systemd, the kubelet) restarts it"
        ),
        None => Ok(report),
    }
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
