//! volumed on the fake host, watching the fake API server through a kubeconfig on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use volumed::app;
use volumed::host::fake::FakeFormatter;
use volumed::host::fake::FakeMounter;
use volumed::host::run_lock::RunLock;

use crate::apiserver::FakeApiServer;

pub struct Node {
    pub _tmp: tempfile::TempDir,
    pub base: PathBuf,
    pub mounter: Arc<FakeMounter>,
    pub cancel: CancellationToken,
    pub daemon: tokio::task::JoinHandle<()>,
}

/// volumed (fake host) watching the fake API server through a kubeconfig on disk.
pub fn start(server: &FakeApiServer) -> Node {
    start_adopting(server, &[])
}

/// As `start`, with an emptyDir `cache` of each given pod uid already mounted (left by an
/// earlier run) before volumed starts.
pub fn start_adopting(server: &FakeApiServer, adopted: &[&str]) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let kubeconfig = server.kubeconfig(&base);
    std::fs::create_dir_all(base.join("disks/pv1")).unwrap();
    let settings = crate::settings_support::test_settings(&base, None, Some(kubeconfig));
    std::fs::create_dir_all(&settings.root_dir).unwrap();
    let mounter = FakeMounter::new();
    for uid in adopted {
        let path = base.join(format!(
            "root/pods/{uid}/volumes/kubernetes.io~empty-dir/cache"
        ));
        std::fs::create_dir_all(&path).unwrap();
        mounter.adopt(&path, "tmpfs");
    }
    let cancel = CancellationToken::new();
    let host = app::Host {
        mounter: mounter.clone(),
        formatter: Arc::new(FakeFormatter::default()),
        watch_devices: false,
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

pub async fn until(what: &str, done: impl FnMut() -> bool) {
    until_within(what, Duration::from_secs(10), done).await
}

/// After an outage the watches retry on a backoff that grew while the API was away (up to
/// 30 s between tries): recovery gets this long.
pub const AFTER_AN_OUTAGE: Duration = Duration::from_secs(45);

pub async fn until_within(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached within {limit:?}");
}
