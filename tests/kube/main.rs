//! The Kubernetes API source against a fake API server on loopback, through kube-rs's real
//! client over a real socket.

#[path = "../support/apiserver/mod.rs"]
mod apiserver;
mod daemon;
mod events;
mod lifecycle;
mod localpv;
mod outages;
mod protocol;
#[path = "../support/settings.rs"]
mod settings_support;

use apiserver::FakeApiServer;

fn cluster(server: &FakeApiServer, base: &std::path::Path) {
    server.apply_yaml(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a, labels: {{disk: ssd}}}}\n---\n\
         apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv1}}\nspec: {{capacity: {{storage: 1Gi}}, local: {{path: {}/disks/pv1}}, claimRef: {{namespace: shop, name: data, uid: c1}}}}\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: shop, uid: c1}}\nspec: {{volumeName: pv1}}\nstatus: {{phase: Bound}}\n",
        base.display()
    ));
}

/// The fake cluster with pod `web` (uid u1, an emptyDir and a claim) on node-a, and volumed
/// once it has mounted both volumes.
async fn web_pod_mounted() -> (FakeApiServer, daemon::Node) {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    server.apply_yaml(&pod("web", "u1"));
    node.until("the pod's volumes are mounted", || {
        node.mounted().len() == 2
    })
    .await;
    (server, node)
}

fn pod(name: &str, uid: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {uid}}}\nspec:\n  nodeName: node-a\n  containers: []\n  volumes:\n  - {{name: cache, emptyDir: {{medium: Memory}}}}\n  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}\n")
}
