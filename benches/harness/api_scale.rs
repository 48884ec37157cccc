//! The API-scale row: volumed in API mode against the test API server (from `tests/support/`),
//! once with few PersistentVolumes and claims in the cluster and once with many, the same 50
//! pods on this node either way. A node agent should pay for its own pods' volumes, not for
//! the cluster's: RSS and CPU per change must not grow with the objects on other nodes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::apiserver::FakeApiServer;
use crate::measure::{self, MountEvents};
use crate::workload::{self, Workload};
use crate::Daemon;

/// Pods on other nodes, each with its claim and volume, change this often one at a time:
/// more than the API source's 20 ms debounce, so each change is a snapshot of its own.
const CHANGE_EVERY: Duration = Duration::from_millis(30);

/// What one cluster size cost the daemon.
pub struct Cost {
    /// Peak RSS over the whole run, first list included.
    pub peak_rss: u64,
    /// RSS after the changes.
    pub rss: u64,
    /// Daemon CPU seconds per object changed on the server.
    pub cpu_per_change: f64,
}

pub struct ApiScale<'a> {
    pub volumed: &'a Path,
    pub config: &'a Path,
    pub host_path_root: &'a Path,
    /// This node's pods (each with one claim and one volume).
    pub pods: usize,
    /// Objects changed on the server while the daemon runs.
    pub changes: usize,
}

impl ApiScale<'_> {
    /// Runs the daemon against a cluster of `objects` PVs and as many claims, `self.pods` of
    /// each for this node, the rest bound on other nodes; changes `self.changes` of the others
    /// one at a time, then adds one pod of this node and waits for its mounts.
    pub fn measure(&self, base: &Path, objects: usize) -> Cost {
        assert!(
            objects > self.pods,
            "the cluster holds this node's objects and more"
        );
        let w = Workload::new(base);
        std::fs::create_dir_all(&w.root).expect("root dir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the test API server");
        let server = runtime.block_on(FakeApiServer::start());
        // As often as a real server's: every 500 ms (the test default) would keep the daemon
        // from ever being idle.
        server.bookmark_every(Duration::from_secs(60));
        server.apply(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": workload::NODE, "labels": {"kubernetes.io/hostname": workload::NODE}},
            "status": {"allocatable": {"memory": "16Gi"}},
        }));
        server.apply(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "local-bench"},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        }));
        for i in 0..self.pods {
            apply_pod(&server, &w, i);
        }
        for j in 0..objects - self.pods {
            server.apply(elsewhere_claim(j, 0));
            server.apply(elsewhere_volume(j, 0));
        }
        let kubeconfig = server.kubeconfig(base);
        let events = MountEvents::open();
        let log = std::fs::File::create(base.join("daemon.log")).expect("log");
        let daemon = Daemon(
            Command::new(self.volumed)
                .args(["--log", "warn", "run", "--config"])
                .arg(self.config)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--root-dir")
                .arg(&w.root)
                .args(["--node-name", workload::NODE, "--http-addr", "127.0.0.1:0"])
                .arg("--host-path-root")
                .arg(self.host_path_root)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("volumed run"),
        );
        let pid = daemon.0.id();
        let mounted = |pods: usize| measure::mounts_under(&w.root) == 2 * pods;
        events
            .until(Duration::from_secs(120), || mounted(self.pods))
            .unwrap_or_else(|| panic!("{}", failure(base, "did not mount this node's pods")));
        measure::wait_quiet(pid, Duration::from_millis(500), Duration::from_secs(60));

        let meter = measure::CpuMeter::start(pid);
        for c in 0..self.changes {
            let j = c / 2 % (objects - self.pods);
            // A relabel, as controllers and operators make all day on a big cluster.
            server.apply(if c % 2 == 0 {
                elsewhere_claim(j, c + 1)
            } else {
                elsewhere_volume(j, c + 1)
            });
            std::thread::sleep(CHANGE_EVERY);
        }
        // The new pod's volume comes last on the volume watch, after every change above:
        // once it is mounted, the daemon has seen them all.
        apply_pod(&server, &w, self.pods);
        events
            .until(Duration::from_secs(60), || mounted(self.pods + 1))
            .unwrap_or_else(|| panic!("{}", failure(base, "did not mount the added pod")));
        measure::wait_quiet(pid, Duration::from_millis(500), Duration::from_secs(60));
        let cpu = measure::secs(meter.used());
        let cost = Cost {
            peak_rss: measure::peak_rss(pid),
            rss: measure::rss(pid),
            cpu_per_change: cpu / (self.changes + 3) as f64,
        };
        drop(daemon);
        crate::clear(&w, self.pods + 1);
        drop(runtime);
        cost
    }
}

fn failure(base: &Path, what: &str) -> String {
    let log = std::fs::read_to_string(base.join("daemon.log")).unwrap_or_default();
    format!("volumed in API mode {what} within the limit; its log:\n{log}")
}

fn claim_uid(prefix: &str, i: usize) -> String {
    format!("{prefix}-claim-{i:08}-0000-4000-8000-000000000000")
}

/// Pod `i` of this node with its claim and volume, as `Workload::manifest` writes them for
/// file mode but bound as the cluster's controllers bind (phases, uids); the volume last.
fn apply_pod(server: &FakeApiServer, w: &Workload, i: usize) {
    std::fs::create_dir_all(w.disk(i)).expect("disk dir");
    let (pv, claim, uid) = (Workload::pv(i), format!("data-{i}"), claim_uid("bench", i));
    server.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": "bench", "uid": Workload::uid(i)},
        "spec": {
            "nodeName": workload::NODE,
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [
                {"name": "cache", "emptyDir": {"medium": "Memory"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
            ],
        },
        "status": {"phase": "Pending"},
    }));
    server.apply(claim_object("bench", &claim, &uid, &pv, 0));
    server.apply(volume_object(
        &pv,
        ("bench", &claim, &uid),
        &w.disk(i),
        workload::NODE,
        0,
    ));
}

/// Claim `j` of some other node's pod, with `generation` in a label.
fn elsewhere_claim(j: usize, generation: usize) -> Value {
    claim_object(
        "elsewhere",
        &format!("other-{j}"),
        &claim_uid("other", j),
        &format!("other-pv-{j}"),
        generation,
    )
}

/// The volume of `elsewhere_claim(j)`, on one of 500 other nodes.
fn elsewhere_volume(j: usize, generation: usize) -> Value {
    volume_object(
        &format!("other-pv-{j}"),
        ("elsewhere", &format!("other-{j}"), &claim_uid("other", j)),
        &PathBuf::from(format!("/mnt/disks/vol{j}")),
        &format!("node-{}", j % 500),
        generation,
    )
}

fn claim_object(namespace: &str, name: &str, uid: &str, pv: &str, generation: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "labels": {"app": "bench", "bench/generation": generation.to_string()},
            "annotations": {
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes",
            },
            "finalizers": ["kubernetes.io/pvc-protection"],
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-bench",
            "volumeName": pv,
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "1Gi"}},
        },
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}},
    })
}

fn volume_object(
    name: &str,
    (namespace, claim, claim_uid): (&str, &str, &str),
    path: &Path,
    node: &str,
    generation: usize,
) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "uid": format!("{name}-uid"),
            "labels": {"bench/generation": generation.to_string()},
            "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"},
            "finalizers": ["kubernetes.io/pv-protection"],
        },
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "local-bench",
            "volumeMode": "Filesystem",
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": namespace, "name": claim, "uid": claim_uid,
            },
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]},
            ]}]}},
        },
        "status": {"phase": "Bound"},
    })
}
