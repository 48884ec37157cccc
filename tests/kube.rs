//! The Kubernetes API source against a fake API server on loopback, through kube-rs's real
//! client over a real socket.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;

use apiserver::FakeApiServer;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, uid: u1}\nspec: {nodeName: node-a, containers: []}\n";
const OTHER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: far, namespace: shop, uid: u2}\nspec: {nodeName: node-b, containers: []}\n";

#[tokio::test]
async fn the_fake_api_server_lists_and_watches_through_the_real_client() {
    let server = FakeApiServer::start().await;
    server.apply_yaml(POD);
    server.apply_yaml(OTHER);
    let pods: Api<Pod> = Api::all(server.client());
    let mine = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 1);
    assert_eq!(mine.items[0].metadata.name.as_deref(), Some("web"));

    let config = watcher::Config::default().fields("spec.nodeName=node-a");
    let mut events = watcher(pods, config).boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    server.apply_yaml(
        &POD.replace("name: web", "name: api")
            .replace("uid: u1", "uid: u3"),
    );
    while seen.len() < 2 {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("watch events arrive")
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                seen.push(pod.metadata.name.unwrap_or_default())
            }
            _ => {}
        }
    }
    seen.sort();
    assert_eq!(seen, ["api", "web"]);
}
