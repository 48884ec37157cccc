//! API outages, relists and unknown nodes: nothing is unmounted on the way.

use std::time::Duration;

use crate::apiserver::FakeApiServer;
use crate::{cluster, daemon, pod, web_pod_mounted};
use volumed::desired::DesiredState;

/// The API watches volumed keeps: pods, claims, volumes, classes, and its Node.
const WATCHES: u64 = 5;

fn every_watch_failing(desired: &DesiredState) -> bool {
    let failing = desired
        .warnings
        .iter()
        .filter(|w| w.contains("has been failing"));
    failing.count() as u64 == WATCHES
}

#[tokio::test]
async fn an_api_outage_or_a_relist_unmounts_nothing() {
    let (server, node) = web_pod_mounted().await;
    // The API stalls (answers nothing), then goes away: watches fail and retry; nothing is
    // unmounted.
    server.stall(true);
    server.drop_watches();
    // Every watch has asked again and hangs: from here the source can publish nothing new,
    // so the loop idle on the complete snapshot is all that can happen during the stall.
    server.until_hanging(WATCHES).await;
    node.settled("the loop is idle during the stall", |d| d.complete)
        .await;
    assert_eq!(node.unmounts(), 0, "a stalled API unmounted something");
    server.stall(false);
    server.stop().await;
    node.settled(
        "the loop planned from a snapshot with every watch failing",
        every_watch_failing,
    )
    .await;
    assert_eq!(node.unmounts(), 0, "an outage unmounted something");
    // Meanwhile the cluster moved on and compacted its history: the watchers get 410 Gone
    // when they resume, and relist.
    server.apply_yaml(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {disk: ssd, zone: b}}\n",
    );
    server.compact();
    let lists_before = server.lists("Pod");
    server.restart().await;
    server.apply_yaml(&pod("api", "u2"));
    node.until_within(
        "the watches relist and a pod added after the outage is set up",
        daemon::AFTER_AN_OUTAGE,
        || server.lists("Pod") > lists_before && node.mounted().len() == 4,
    )
    .await;
    assert_eq!(node.unmounts(), 0, "the relist unmounted something");
    node.stop().await;
}

#[tokio::test]
async fn starting_while_the_api_is_down_unmounts_nothing_until_the_first_list() {
    let server = FakeApiServer::start().await;
    server.stop().await;
    // A mount left by an earlier run, of a pod the API will not list any more.
    let node = daemon::start_adopting(&server, &["gone-uid"]);
    assert_eq!(node.mounted().len(), 1);
    // Until a first list completes the snapshot cannot change: the loop's first pass, on the
    // incomplete one, is all it does.
    node.settled("the loop is idle on the incomplete first snapshot", |d| {
        !d.complete
    })
    .await;
    assert_eq!(node.unmounts(), 0, "unmounted while the API was down");
    server.restart().await;
    the_gone_pod_goes_once_the_cluster_is_listed(&server, node).await;
}

/// With the cluster's objects (this Node included) in the API, the adopted mount of the pod
/// the API does not list is torn down.
async fn the_gone_pod_goes_once_the_cluster_is_listed(server: &FakeApiServer, node: daemon::Node) {
    cluster(server, &node.base);
    node.until_within(
        "a complete list tears the gone pod down",
        daemon::AFTER_AN_OUTAGE,
        || node.mounted().is_empty(),
    )
    .await;
    node.stop().await;
}

/// A pod deleted while the API was away goes once the API is back; the others stay.
#[tokio::test]
async fn a_pod_deleted_during_an_outage_is_torn_down_after_it_and_only_it() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    server.apply_yaml(&pod("web", "u1"));
    server.apply_yaml(&pod("api", "u2").replace("claimName: data", "claimName: none"));
    node.until("both pods are set up", || node.mounted().len() == 3)
        .await;
    server.stop().await;
    server.delete("Pod", "shop", "web");
    server.compact();
    node.settled(
        "the loop planned from a snapshot with every watch failing",
        every_watch_failing,
    )
    .await;
    assert_eq!(node.unmounts(), 0, "unmounted during the outage");
    server.restart().await;
    node.until_within(
        "the deleted pod is torn down after the outage",
        daemon::AFTER_AN_OUTAGE,
        || node.mounted() == [node.volume("u2", "empty-dir", "cache")],
    )
    .await;
    node.stop().await;
}

/// A watch ended with 410 Gone while the server stays up: the watcher relists, nothing is
/// unmounted on the way, and changes made meanwhile are seen.
#[tokio::test]
async fn a_watch_expired_with_410_relists_without_unmounting() {
    let (server, node) = web_pod_mounted().await;
    let lists_before = server.lists("Pod");
    // The server's watch cache falls behind: every open watch ends with 410 Gone.
    server.apply_yaml(&pod("api", "u2"));
    server.compact();
    server.expire_watches();
    node.until("the pod watch relists and the new pod is set up", || {
        server.lists("Pod") > lists_before && node.mounted().len() == 4
    })
    .await;
    assert_eq!(node.unmounts(), 0, "the relist unmounted something");
    node.stop().await;
}

/// A node name the API does not know lists no pods: that is not "every pod is gone". Nothing
/// is torn down until the Node exists.
#[tokio::test]
async fn an_unknown_node_name_tears_nothing_down() {
    let server = FakeApiServer::start().await;
    // A mount left by an earlier run, for a pod the API does not list.
    let node = daemon::start_adopting(&server, &["gone-uid"]);
    node.until("the first list is read", || server.lists("Node") > 0)
        .await;
    node.settled("the loop planned from the list without the Node", |d| {
        d.problems
            .iter()
            .any(|p| p.contains("there is no Node named"))
    })
    .await;
    assert_eq!(
        node.unmounts(),
        0,
        "torn down for a Node the API does not have"
    );
    the_gone_pod_goes_once_the_cluster_is_listed(&server, node).await;
}

/// A relist read in pages and caught half-way (the server stops answering for the next page)
/// is never taken for the whole: pods on the later pages keep their volumes.
#[tokio::test]
async fn a_relist_caught_between_pages_tears_nothing_down() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    // More pods than kube-rs's page of 500.
    const PODS: usize = 520;
    for n in 0..PODS {
        server.apply_yaml(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{n:04}, namespace: shop, uid: u{n:04}}}\nspec: {{nodeName: node-a, containers: []}}\n"
        ));
    }
    server.apply_yaml(&pod("zz-last", "u-last"));
    let last = node.volume("u-last", "empty-dir", "cache");
    node.until("the last pod's volumes are mounted", || {
        node.mounted().contains(&last)
    })
    .await;
    let lists_before = server.lists("Pod");
    server.stall_continues(true);
    server.compact();
    server.expire_watches();
    node.until("the relist has read its first page", || {
        server.lists("Pod") > lists_before
    })
    .await;
    // The next page hangs; until it comes the stores (and so the snapshot) stay as they were:
    // the loop idle on the complete snapshot is all that can happen meanwhile.
    server.until_hanging(1).await;
    node.settled("the loop is idle while the relist hangs", |d| d.complete)
        .await;
    assert_eq!(node.unmounts(), 0, "a half-read list tore something down");
    server.stall_continues(false);
    server.delete("Pod", "shop", "zz-last");
    node.until("the whole relist is applied", || {
        !node.mounted().contains(&last)
    })
    .await;
    node.stop().await;
}

/// An outage long enough for the watches' retries to grow seconds apart, and the API back
/// with its history compacted (as a real apiserver's watch cache answers: 410 Expired): the
/// watches do not wait out their backoff, and a pod deleted as the API returns loses its
/// mounts within 2 s of the restart (waiting out even one grown retry takes longer).
#[tokio::test]
async fn after_an_outage_a_pod_deleted_as_the_api_returns_goes_at_once() {
    let (server, node) = web_pod_mounted().await;
    server.stop().await;
    // The outage itself (not a wait for progress): retries are ~6 s apart by its end.
    tokio::time::sleep(Duration::from_secs(8)).await;
    server.compact();
    server.restart().await;
    let back = std::time::Instant::now();
    server.delete("Pod", "shop", "web");
    node.until_within(
        "the pod deleted after the outage is torn down",
        daemon::AFTER_AN_OUTAGE,
        || node.mounted().is_empty(),
    )
    .await;
    let took = back.elapsed();
    eprintln!("a pod deleted as the API returned lost its mounts {took:?} after the restart");
    assert!(
        took < Duration::from_secs(2),
        "the watches waited out their backoff: {took:?}"
    );
    node.stop().await;
}
