//! The pieces a run and the one-shot views share: the host seams, the sources as tasks, the
//! manifest directory check, where the failures file lives.

use super::supervise::Supervisor;
use crate::config::Settings;
use crate::desired::binding_store::BindingStore;
use crate::desired::file::FileSource;
use crate::desired::kube::{KubeSource, SharedHealth};
use crate::desired::local_disks::LocalDisks;
use crate::desired::DesiredState;
use crate::host::devices::{BlockDevices, RealBlockDevices};
use crate::host::format::{Formatter, RealFormatter};
use crate::host::fs::PodFs;
use crate::host::real::RealMounter;
use crate::host::Mounter;
use crate::localpv::cleaner::{Cleaner, Cluster};
use crate::localpv::config::LocalPvConfig;
use crate::sync_loop::Progress;
use anyhow::Context;
use k8s_openapi::api::core::v1::PersistentVolume;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

pub(super) fn file_source(
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

/// The cleaner of released local PVs; `cluster` in API mode. `running` is shared with the
/// run, which lets the cleanups under way finish before it exits.
pub(super) fn local_pv_cleaner(
    settings: &Settings,
    config: &LocalPvConfig,
    mounter: &Arc<dyn Mounter>,
    cluster: Option<Cluster>,
    running: &Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
) -> Cleaner {
    Cleaner {
        cluster,
        node_name: settings.node.name.clone(),
        config: config.clone(),
        mounter: mounter.clone(),
        root_dir: settings.root_dir.clone(),
        // Removing a big tree takes a while; past this it goes on, alone.
        timeout: settings.op_timeout * 10,
        running: running.clone(),
        stuck: Default::default(),
    }
}

pub(super) fn pod_fs(settings: &Settings) -> PodFs {
    PodFs::new(
        settings.root_dir.clone(),
        settings.node.host_paths.roots.clone(),
    )
}

pub(super) fn failures_path(root: &Path) -> PathBuf {
    root.join("state").join("failures.json")
}

/// Once: one snapshot, fixed (its sender is returned so the channel stays open), with the
/// Released volumes it found. Daemon: the source runs as a supervised task and publishes
/// snapshots until stopped.
pub(super) async fn start_source(
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
pub(super) async fn start_api_source(
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
                    let unlisted = health.unlisted();
                    let mut why = vec![if unlisted.is_empty() {
                        "every watch completed its first list; the claims and volumes the pods here need are still being read".to_string()
                    } else {
                        format!("still waiting for the first list of: {}", unlisted.join(", "))
                    }];
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

/// A `--manifests` that is not a directory is an error of the command line, not a state.
pub(super) fn ensure_manifest_dir(settings: &Settings) -> anyhow::Result<()> {
    if let Some(dir) = &settings.manifests {
        anyhow::ensure!(
            dir.is_dir(),
            "manifest directory {} does not exist or is not a directory; create it or fix --manifests",
            dir.display()
        );
    }
    Ok(())
}

/// The daemon's wait for a manifest directory that does not exist yet (a filesystem mounted
/// later, a config management run to come): told once, then looked for every second. False
/// when `cancel` fired first.
pub(super) async fn wait_for_manifest_dir(settings: &Settings, cancel: &CancellationToken) -> bool {
    let Some(dir) = &settings.manifests else {
        return true;
    };
    if dir.is_dir() {
        return true;
    }
    tracing::warn!(dir = %dir.display(), "the manifest directory does not exist; waiting for it to appear (nothing is set up or torn down meanwhile)");
    let waiting = format!("waiting for the manifest directory {}", dir.display());
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&waiting)]);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if dir.is_dir() {
            tracing::info!(dir = %dir.display(), "the manifest directory appeared");
            return true;
        }
    }
}
