//! The real binary with the Kubernetes API as its source, making real mounts: a pod created
//! through the API gets its volumes, and loses them when deleted. Against the fake API server
//! on loopback by default; against a real cluster when `VOLUMED_TEST_KUBECONFIG` names a
//! kubeconfig (the pod goes to namespace `default`, bound to a node name no kubelet runs,
//! `VOLUMED_TEST_NODE` or `volumed-e2e-<pid>`; that Node is created if missing, and what the
//! test created is deleted at the end).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};

use crate::apiserver::FakeApiServer;
use crate::sandbox::{check, eventually, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![(
        "a_pod_created_through_the_api_gets_real_mounts_and_loses_them_when_deleted",
        a_pod_created_through_the_api_gets_real_mounts_and_loses_them_when_deleted,
    )]
}

/// The API the test talks to: a real cluster's kubeconfig, or the fake server's.
struct Cluster {
    kubeconfig: PathBuf,
    node: String,
    /// Kept alive for the fake server's tasks (and the client's).
    runtime: tokio::runtime::Runtime,
    _fake: Option<FakeApiServer>,
}

impl Cluster {
    fn new(sandbox: &Sandbox) -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let node = std::env::var("VOLUMED_TEST_NODE")
            .unwrap_or_else(|_| format!("volumed-e2e-{}", std::process::id()));
        if let Ok(path) = std::env::var("VOLUMED_TEST_KUBECONFIG") {
            eprintln!("against the cluster in {path}, node {node}");
            return Cluster {
                kubeconfig: path.into(),
                node,
                runtime,
                _fake: None,
            };
        }
        let fake = runtime.block_on(FakeApiServer::start());
        let kubeconfig = fake.kubeconfig(&sandbox.base);
        Cluster {
            kubeconfig,
            node,
            runtime,
            _fake: Some(fake),
        }
    }

    fn client(&self) -> kube::Client {
        self.runtime.block_on(async {
            let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(config).unwrap()
        })
    }

    /// Makes this node's Node object unless it exists; true when this test made it.
    fn ensure_node(&self, nodes: &Api<Node>) -> Result<bool, String> {
        self.runtime.block_on(async {
            if nodes
                .get_opt(&self.node)
                .await
                .map_err(|e| format!("cannot read Node {}: {e}", self.node))?
                .is_some()
            {
                return Ok(false);
            }
            let node: Node = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": self.node, "labels": {"volumed-e2e": "true"}},
            }))
            .unwrap();
            nodes
                .create(&PostParams::default(), &node)
                .await
                .map_err(|e| format!("cannot create Node {}: {e}", self.node))?;
            Ok(true)
        })
    }
}

fn a_pod_created_through_the_api_gets_real_mounts_and_loses_them_when_deleted() -> TestResult {
    let sandbox = Sandbox::new("api");
    let cluster = Cluster::new(&sandbox);
    let client = cluster.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client);
    let made_node = cluster.ensure_node(&nodes)?;
    let name = format!("volumed-e2e-{}", std::process::id());
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": cluster.node,
            "containers": [{
                "name": "pause",
                "image": "registry.k8s.io/pause:3.9",
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            }],
            "volumes": [{"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
        },
    }))
    .unwrap();
    let daemon = sandbox.api_daemon(&cluster.kubeconfig, &cluster.node);
    let log = sandbox.path("daemon.log");
    let listed = eventually(Duration::from_secs(30), "the daemon's first list", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("every API watch completed its first list")
    });
    let result = listed.and_then(|()| {
        let created = Instant::now();
        let pod = cluster
            .runtime
            .block_on(pods.create(&PostParams::default(), &pod))
            .map_err(|e| format!("cannot create pod {name}: {e}"))?;
        let uid = pod
            .metadata
            .uid
            .clone()
            .ok_or("the API gave the pod no uid")?;
        let cache = sandbox.volume(&uid, "empty-dir", "cache");
        let mounted = || {
            sandbox
                .mounts()
                .iter()
                .any(|m| m.mount_point == cache && m.fs_type == "tmpfs")
        };
        eventually(
            Duration::from_secs(10),
            "the pod's tmpfs is mounted",
            || {
                std::thread::sleep(Duration::from_millis(2));
                mounted()
            },
        )?;
        let mount_latency = created.elapsed();
        let size = sandbox
            .mounts()
            .into_iter()
            .find(|m| m.mount_point == cache)
            .and_then(|m| m.super_options.get("size").cloned().flatten());
        check(size.as_deref() == Some("1024k"), || {
            format!("sizeLimit 1Mi did not reach the tmpfs: size={size:?}")
        })?;
        let deleted = Instant::now();
        cluster
            .runtime
            .block_on(pods.delete(&name, &DeleteParams::default().grace_period(0)))
            .map_err(|e| format!("cannot delete pod {name}: {e}"))?;
        eventually(
            Duration::from_secs(10),
            "the deleted pod's tmpfs is gone",
            || {
                std::thread::sleep(Duration::from_millis(2));
                !mounted() && !cache.exists()
            },
        )?;
        eprintln!(
            "pod {name}: mounted {mount_latency:?} after create, unmounted {:?} after delete",
            deleted.elapsed()
        );
        Ok(())
    });
    // Whatever happened, what the test made does not outlive it.
    let _ = cluster
        .runtime
        .block_on(pods.delete(&name, &DeleteParams::default().grace_period(0)));
    if made_node {
        let _ = cluster
            .runtime
            .block_on(nodes.delete(&cluster.node, &DeleteParams::default()));
    }
    let log = sandbox.stop(daemon);
    result.map_err(|e| format!("{e}\n{}", log.unwrap_or_else(|e| e)))
}
