//! Whole reconcile runs against the fake mounter: real directories in a temp dir, a
//! make-believe mount table. No root needed. The world and its helpers live here; the runs
//! in `runs`, the data-safety attacks in `safety`.

mod blockdev;
mod localpv;
mod runs;
mod safety;
#[path = "../support/settings.rs"]
mod settings_support;
mod usability;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use volumed::app;
use volumed::config::Settings;
use volumed::desired::DesiredState;
use volumed::host::fake::FakeFormatter;
use volumed::host::fake::FakeMounter;
use volumed::host::run_lock::RunLock;
use volumed::sync_loop::{Progress, Report};

/// A temp dir with manifests, a root dir and host dirs, and the fake mounter over it.
pub struct World {
    _tmp: tempfile::TempDir,
    pub base: PathBuf,
    pub settings: Settings,
    pub mounter: Arc<FakeMounter>,
    /// The fake blkid, mkfs and fsck: scripted answers, recorded calls.
    pub formatter: Arc<FakeFormatter>,
    /// What the sync loop of this world's runs reports as it goes.
    pub progress: watch::Sender<Progress>,
}

pub const STORAGE: &str = r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-big}
spec: {capacity: {storage: 10Gi}, accessModes: [ReadWriteOnce], local: {path: BASE/disks/big}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-small}
spec: {capacity: {storage: 2Gi}, accessModes: [ReadWriteOnce], local: {path: BASE/disks/small}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

pub const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, uid: web-uid}
spec:
  nodeName: node-a
  containers: []
  volumes:
  - {name: cache, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
  - {name: scratch, emptyDir: {}}
  - {name: logs, hostPath: {path: BASE/logs, type: DirectoryOrCreate}}
  - {name: data, persistentVolumeClaim: {claimName: data}}
"#;

pub const OTHER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api, uid: api-uid}
spec: {nodeName: node-a, containers: [], volumes: [{name: tmp, emptyDir: {medium: Memory}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, uid: far-uid}
spec: {nodeName: node-b, containers: [], volumes: [{name: tmp, emptyDir: {medium: Memory}}]}
"#;

#[allow(clippy::new_without_default)] // a fresh temp dir per call, not a default value
impl World {
    pub fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        for dir in ["manifests", "root", "disks/big", "disks/small"] {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
        std::fs::write(base.join("disks/small/marker"), "small").unwrap();
        let settings = settings_support::test_settings(&base, Some(base.join("manifests")), None);
        let world = World {
            _tmp: tmp,
            base,
            settings,
            mounter: FakeMounter::new(),
            formatter: Arc::default(),
            progress: watch::channel(Progress::default()).0,
        };
        world.write("storage.yaml", STORAGE);
        world.write("web.yaml", WEB);
        world.write("other.yaml", OTHER);
        world
    }

    pub fn write(&self, name: &str, text: &str) {
        let text = text.replace("BASE", &self.base.display().to_string());
        std::fs::write(self.base.join("manifests").join(name), text).unwrap();
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.base.join("manifests").join(name)).unwrap();
    }

    pub async fn run_once(&self) -> Report {
        let lock = RunLock::acquire(&self.settings.root_dir).unwrap();
        app::run(
            &self.settings,
            true,
            fake_host(self.mounter.clone(), &self.formatter, &self.progress),
            CancellationToken::new(),
            &lock,
        )
        .await
        .unwrap()
    }

    /// Waits (at most 10 s) until `done` holds, checking it each time the daemon's loop makes
    /// progress (a pass, an op's result): never on a timer.
    pub async fn until(&self, mut done: impl FnMut() -> bool) {
        let mut progress = self.progress.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        progress.borrow_and_update();
        while !done() {
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("the world's progress channel closed"),
                Err(_) => panic!("condition not reached within 10 s"),
            }
        }
    }

    /// Waits (at most 10 s) until the file at `path` reads as `done` wants, woken by inotify:
    /// for what a task of the daemon writes after the loop has moved on.
    pub async fn until_file(
        &self,
        path: &std::path::Path,
        done: impl Fn(&str) -> bool + Send + 'static,
    ) {
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .expect("an inotify watcher");
        let dir = path.parent().expect("a file in a directory");
        std::fs::create_dir_all(dir).unwrap();
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .expect("watch the file's directory");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let path = path.to_path_buf();
        let reached = tokio::task::spawn_blocking(move || loop {
            if std::fs::read_to_string(&path).is_ok_and(|text| done(&text)) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if rx.recv_timeout(left).is_err() {
                return false;
            }
        });
        assert!(
            reached.await.unwrap(),
            "the file never read as wanted within 10 s"
        );
        drop(watcher);
    }

    /// Waits until the running daemon's loop has planned from a snapshot `seen` accepts and
    /// has nothing left to do on it: the way to show that something did *not* happen.
    pub async fn settled(&self, what: &str, seen: impl Fn(&DesiredState) -> bool) {
        let mut progress = self.progress.subscribe();
        let settled = progress.wait_for(|p| p.idle && seen(&p.planned_from));
        let settled = tokio::time::timeout(Duration::from_secs(10), settled)
            .await
            .map(|r| r.map(drop));
        assert!(
            matches!(settled, Ok(Ok(()))),
            "{what}: the loop did not settle within 10 s"
        );
    }

    pub fn volume(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.settings
            .root_dir
            .join(format!("pods/{uid}/volumes/kubernetes.io~{plugin}/{name}"))
    }

    pub fn mounts(&self) -> Vec<(PathBuf, String, String)> {
        let mut mounts: Vec<_> = self
            .mounter
            .table()
            .into_iter()
            .map(|m| (m.mount_point, m.fs_type, m.root))
            .collect();
        mounts.sort();
        mounts
    }
}

/// Runs the daemon on the world until the returned token is cancelled.
pub fn start_daemon(world: &World) -> (CancellationToken, tokio::task::JoinHandle<Report>) {
    let cancel = CancellationToken::new();
    let (settings, mounter, stop) = (
        world.settings.clone(),
        world.mounter.clone(),
        cancel.clone(),
    );
    // A fresh start: an earlier run's last progress must not pass for this daemon's.
    world.progress.send_replace(Progress::default());
    let progress = world.progress.clone();
    let formatter = world.formatter.clone();
    let daemon = tokio::spawn(async move {
        let lock = RunLock::acquire(&settings.root_dir).unwrap();
        app::run(
            &settings,
            false,
            fake_host(mounter, &formatter, &progress),
            stop,
            &lock,
        )
        .await
        .unwrap()
    });
    (cancel, daemon)
}

/// The fake mounter (and its fake disks), the world's fake formatter, and no device
/// watching: nothing touches the host.
pub fn fake_host(
    mounter: Arc<FakeMounter>,
    formatter: &Arc<FakeFormatter>,
    progress: &watch::Sender<Progress>,
) -> app::Host {
    app::Host {
        mounter: mounter.clone(),
        formatter: formatter.clone(),
        devices: mounter,
        watch_devices: false,
        progress: Some(progress.clone()),
    }
}
