//! The fake API server against kube-rs's real client: the protocol volumed's watchers meet.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::apiserver::FakeApiServer;

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
    // Deleting through the API works too.
    let shop: Api<Pod> = Api::namespaced(server.client(), "shop");
    shop.delete("far", &Default::default()).await.unwrap();
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
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

/// The parts of the protocol volumed's watchers meet on a real cluster: pages, conflicts,
/// missing objects, refused selectors, a closed port.
#[tokio::test]
async fn the_fake_api_server_answers_pages_conflicts_and_outages_as_a_real_one() {
    use kube::api::{Patch, PatchParams, PostParams};
    let server = FakeApiServer::start().await;
    for n in 0..3 {
        server.apply_yaml(
            &POD.replace("name: web", &format!("name: p{n}"))
                .replace("uid: u1", &format!("uid: u{n}")),
        );
    }
    let pods: Api<Pod> = Api::all(server.client());
    let page = pods.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("a continue token");
    // A change between pages does not show in the rest of the list (a consistent snapshot).
    server.delete("Pod", "shop", "p2");
    let rest = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    let names: Vec<_> = page
        .items
        .iter()
        .chain(&rest.items)
        .map(|p| p.name_any())
        .collect();
    assert_eq!(names, ["p0", "p1", "p2"]);
    assert!(rest.metadata.continue_.is_none());
    // Once compacted, the token has expired.
    server.compact();
    let expired = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&expired, kube::Error::Api(s) if s.code == 410),
        "{expired}"
    );
    // The watcher itself reads in pages and still sees every pod.
    let config = watcher::Config::default().page_size(1);
    let listed = watcher(pods.clone(), config)
        .take_while(|e| std::future::ready(!matches!(e, Ok(watcher::Event::InitDone))))
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::InitApply(pod)) => Some(pod.name_any()),
                _ => None,
            }
        })
        .collect::<Vec<_>>();
    let listed = tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .unwrap();
    assert_eq!(listed, ["p0", "p1"]);

    let shop: Api<Pod> = Api::namespaced(server.client(), "shop");
    let existing: Pod = serde_yaml::from_str(&POD.replace("name: web", "name: p0")).unwrap();
    let conflict = shop
        .create(&PostParams::default(), &existing)
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, kube::Error::Api(s) if s.code == 409),
        "{conflict}"
    );
    let patch = Patch::Merge(serde_json::json!({"metadata": {"labels": {"a": "b"}}}));
    let patched = shop
        .patch("p0", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(patched.labels()["a"], "b");
    assert_eq!(
        patched.uid().as_deref(),
        Some("u0"),
        "a merge patch keeps the rest"
    );
    for missing in [
        shop.patch("nope", &PatchParams::default(), &patch)
            .await
            .map(|_| ()),
        shop.delete("nope", &Default::default()).await.map(|_| ()),
        shop.get("nope").await.map(|_| ()),
    ] {
        assert!(
            matches!(&missing, Err(kube::Error::Api(s)) if s.code == 404),
            "{missing:?}"
        );
    }
    // A write based on an older version loses, as on a real server.
    let mut stale = patched.clone();
    stale.metadata.resource_version = Some("1".into());
    stale.metadata.managed_fields = None;
    let conflict = shop
        .replace("p0", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, kube::Error::Api(s) if s.code == 409),
        "{conflict}"
    );
    // A pod moving off the selected node is DELETED for a watch on that node.
    let on_node = watcher::Config::default().fields("spec.nodeName=node-a");
    let mut events = watcher(pods.clone(), on_node).boxed();
    let moved = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("watch events arrive")
            .unwrap()
            .unwrap();
        if matches!(event, watcher::Event::InitDone) {
            server.apply_yaml(
                &POD.replace("name: web", "name: p0")
                    .replace("uid: u1", "uid: u0")
                    .replace("node-a", "node-b"),
            );
        }
        if let watcher::Event::Delete(pod) = event {
            break pod.name_any();
        }
    };
    assert_eq!(moved, "p0");
    let refused = pods
        .list(&ListParams::default().fields("spec.hostname=x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 400),
        "{refused}"
    );

    // Down: the port is closed. Back: the same objects on the same port.
    server.stop().await;
    let connect = tokio::net::TcpStream::connect(server.addr).await;
    assert_eq!(
        connect.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(pods.list(&ListParams::default()).await.is_err());
    server.restart().await;
    let mut back = None;
    for _ in 0..50 {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            back = Some(list.items.len());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back, Some(2));
}
