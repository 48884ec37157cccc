//! volumed on the fake host, watching the fake API server through a kubeconfig on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use volumed::app;
use volumed::desired::DesiredState;
use volumed::host::fake::FakeFormatter;
use volumed::host::fake::FakeMounter;
use volumed::host::run_lock::RunLock;
use volumed::sync_loop::Progress;

use crate::apiserver::FakeApiServer;

pub struct Node {
    pub _tmp: tempfile::TempDir,
    pub base: PathBuf,
    pub mounter: Arc<FakeMounter>,
    pub cancel: CancellationToken,
    pub daemon: tokio::task::JoinHandle<()>,
    /// The sync loop's passes and finished ops.
    pub progress: watch::Receiver<Progress>,
    /// The fake API server's answers.
    pub activity: watch::Receiver<u64>,
}

/// volumed (fake host) watching the fake API server through a kubeconfig on disk.
pub fn start(server: &FakeApiServer) -> Node {
    start_adopting(server, &[])
}

/// As `start`, with an emptyDir `cache` of each given pod uid already mounted (left by an
/// earlier run) before volumed starts.
pub fn start_adopting(server: &FakeApiServer, adopted: &[&str]) -> Node {
    start_configured(server, adopted, |_, _, _| {})
}

/// As `start_adopting`, with `configure` given the settings, the base dir and the fake
/// mounter before volumed starts.
pub fn start_configured(
    server: &FakeApiServer,
    adopted: &[&str],
    configure: impl FnOnce(&mut volumed::config::Settings, &std::path::Path, &FakeMounter),
) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let kubeconfig = server.kubeconfig(&base);
    std::fs::create_dir_all(base.join("disks/pv1")).unwrap();
    let mut settings = crate::settings_support::test_settings(&base, None, Some(kubeconfig));
    std::fs::create_dir_all(&settings.root_dir).unwrap();
    let mounter = FakeMounter::new();
    for uid in adopted {
        let path = base.join(format!(
            "root/pods/{uid}/volumes/kubernetes.io~empty-dir/cache"
        ));
        std::fs::create_dir_all(&path).unwrap();
        mounter.adopt(&path, "tmpfs");
    }
    configure(&mut settings, &base, &mounter);
    let cancel = CancellationToken::new();
    let (progress_tx, progress) = watch::channel(Progress::default());
    let host = app::Host {
        mounter: mounter.clone(),
        formatter: Arc::new(FakeFormatter::default()),
        devices: mounter.clone(),
        watch_devices: false,
        progress: Some(progress_tx),
    };
    let stop = cancel.clone();
    let daemon = tokio::spawn(async move {
        let lock = RunLock::acquire(&settings.root_dir).unwrap();
        app::run(&settings, false, host, stop, &lock).await.unwrap();
    });
    Node {
        _tmp: tmp,
        base,
        mounter,
        cancel,
        daemon,
        progress,
        activity: server.activity(),
    }
}

impl Node {
    pub async fn stop(self) {
        self.cancel.cancel();
        self.daemon.await.unwrap();
    }

    pub fn mounted(&self) -> Vec<PathBuf> {
        let mut points: Vec<PathBuf> = self
            .mounter
            .table()
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        points.sort();
        points
    }

    pub fn volume(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.base.join(format!(
            "root/pods/{uid}/volumes/kubernetes.io~{plugin}/{name}"
        ))
    }

    pub fn unmounts(&self) -> usize {
        self.mounter
            .calls()
            .iter()
            .filter(|c| c.starts_with("umount"))
            .count()
    }
}

/// After an outage the watches retry on a backoff that grew while the API was away (up to
/// 30 s between tries): recovery gets this long.
pub const AFTER_AN_OUTAGE: Duration = Duration::from_secs(15);

impl Node {
    /// Waits (at most 10 s) until `done` holds, checking it whenever the daemon makes progress
    /// or the API server answers a request: never on a timer.
    pub async fn until(&self, what: &str, done: impl FnMut() -> bool) {
        self.until_within(what, Duration::from_secs(10), done).await
    }

    pub async fn until_within(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let (mut progress, mut activity) = (self.progress.clone(), self.activity.clone());
        let deadline = tokio::time::Instant::now() + limit;
        while !done() {
            let woken = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    changed = progress.changed() => changed.is_ok(),
                    changed = activity.changed() => changed.is_ok(),
                }
            });
            match woken.await {
                Ok(true) => {}
                Ok(false) => panic!("{what}: the daemon or the API server is gone"),
                Err(_) => panic!("{what}: not reached within {limit:?}"),
            }
        }
    }

    /// Waits until the loop has planned from a snapshot `seen` accepts and has nothing left
    /// to do on it: what it would do about that snapshot is done. The way to show that
    /// something did *not* happen.
    pub async fn settled(&self, what: &str, seen: impl Fn(&DesiredState) -> bool) {
        let mut progress = self.progress.clone();
        let settled = progress.wait_for(|p| p.idle && seen(&p.planned_from));
        let settled = tokio::time::timeout(Duration::from_secs(10), settled)
            .await
            .map(|r| r.map(drop));
        match settled {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => panic!("{what}: the daemon is gone"),
            Err(_) => {
                let last = self.progress.borrow();
                panic!(
                    "{what}: the loop did not settle within 10 s (passes {}, ops {}, idle {}, last planned from: complete {}, pods {:?}, problems {:?})",
                    last.passes,
                    last.op_results,
                    last.idle,
                    last.planned_from.complete,
                    last.planned_from.pods.keys().collect::<Vec<_>>(),
                    last.planned_from.problems
                )
            }
        }
    }
}
