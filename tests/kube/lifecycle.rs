//! Pods through their life in the API: added, deleted, terminating, terminal, adopted; and
//! `plan`/`status` reading the API once.

use std::time::Duration;

use crate::apiserver::FakeApiServer;
use crate::{cluster, daemon, pod, settings_support, web_pod_mounted};

#[tokio::test]
async fn pods_from_the_api_get_their_volumes_and_lose_them_when_deleted() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    server.apply_yaml(&pod("web", "u1"));
    let (cache, data) = (
        node.volume("u1", "empty-dir", "cache"),
        node.volume("u1", "local-volume", "pv1"),
    );
    node.until("the pod's volumes are mounted", || {
        node.mounted() == [cache.clone(), data.clone()]
    })
    .await;
    server.delete("Pod", "shop", "web");
    node.until("the deleted pod's volumes are unmounted", || {
        node.mounted().is_empty()
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn a_terminating_pod_keeps_its_volumes_until_it_is_gone_or_terminal() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    let only_cache = |name: &str, uid: &str| {
        pod(name, uid).replace(
            "  - {name: data, persistentVolumeClaim: {claimName: data}}\n",
            "",
        )
    };
    server.apply_yaml(&only_cache("web", "u1"));
    server.apply_yaml(&only_cache("api", "u2"));
    node.until("mounted", || node.mounted().len() == 2).await;
    // Deleting: the API sets deletionTimestamp while containers may still run.
    let terminating = |name: &str, uid: &str| {
        only_cache(name, uid).replace(
            &format!("uid: {uid}}}"),
            &format!("uid: {uid}, deletionTimestamp: \"2026-11-22T00:00:00Z\"}}"),
        )
    };
    server.apply_yaml(&terminating("web", "u1"));
    server.apply_yaml(&terminating("api", "u2"));
    node.settled("the loop is idle on both pods terminating", |d| {
        d.terminating.contains("u1") && d.terminating.contains("u2")
    })
    .await;
    assert_eq!(
        node.mounted().len(),
        2,
        "a terminating pod lost its volumes"
    );
    // Terminal: its volumes go; the other still terminating pod keeps its own.
    server.apply_yaml(&(terminating("web", "u1") + "status: {phase: Succeeded}\n"));
    let api_cache = node.volume("u2", "empty-dir", "cache");
    node.until("a terminal pod's volumes are removed", || {
        node.mounted() == [api_cache.clone()]
    })
    .await;
    // Gone from the API: its volumes go too.
    server.delete("Pod", "shop", "api");
    node.until("a deleted pod's volumes are removed", || {
        node.mounted().is_empty()
    })
    .await;
    node.stop().await;
}

/// Mounts left by an earlier run for pods the API still lists are kept through startup.
#[tokio::test]
async fn mounts_of_listed_pods_are_adopted_not_redone() {
    let server = FakeApiServer::start().await;
    // Listed before volumed starts: its first complete list already has the pod.
    server.apply_yaml(&pod("web", "u1").replace(
        "{name: data, persistentVolumeClaim: {claimName: data}}",
        "{name: scratch, emptyDir: {}}",
    ));
    let node = daemon::start_adopting(&server, &["u1"]);
    node.until("the new volume is set up beside the adopted cache", || {
        node.mounted().len() == 2 || node.volume("u1", "empty-dir", "scratch").is_dir()
    })
    .await;
    node.settled("the loop is idle on the listed pod", |d| {
        d.pods.contains_key("u1")
    })
    .await;
    let calls = node.mounter.calls();
    assert_eq!(node.unmounts(), 0, "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.contains("empty-dir")),
        "the adopted cache was mounted again: {calls:?}"
    );
    node.stop().await;
}

/// `plan` and `status` without `--manifests` read one complete list from the API.
#[tokio::test]
async fn plan_and_status_read_the_api_once() {
    use volumed::model::op::Op;
    use volumed::reconcile::status::VolumeState;
    let server = FakeApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(base.join("disks/pv1")).unwrap();
    cluster(&server, &base);
    server.apply_yaml(&pod("web", "u1"));
    server.apply_yaml(&pod("api", "u2").replace("claimName: data", "claimName: none"));
    let settings = settings_support::test_settings(&base, None, Some(server.kubeconfig(&base)));
    let mounter = volumed::host::fake::FakeMounter::new();
    let report = volumed::app::inspect::plan_only(&settings, fake_host(&mounter))
        .await
        .unwrap();
    let desired = &report.desired;
    let mut set_up: Vec<_> = report
        .ops
        .iter()
        .filter_map(|planned| match &planned.op {
            Op::SetUp { volume } => Some(format!("{}:{}", volume.key.pod_uid, volume.volume_name)),
            _ => None,
        })
        .collect();
    set_up.sort();
    assert_eq!(set_up, ["u1:cache", "u1:data", "u2:cache"]);
    assert_eq!(desired.pods.len(), 2);
    let (_, rows) = volumed::app::inspect::status_only(
        &settings,
        &(mounter.clone() as std::sync::Arc<dyn volumed::host::Mounter>),
    )
    .await
    .unwrap();
    let pending: Vec<_> = rows
        .iter()
        .filter(|r| r.state == VolumeState::Pending)
        .map(|r| (r.pod.as_str(), r.volume.as_str()))
        .collect();
    assert_eq!(pending, [("shop/api", "data")], "{rows:?}");
    assert!(
        mounter.calls().is_empty(),
        "plan or status changed the host"
    );
    assert!(
        !base.join("root").exists(),
        "plan or status made the root dir"
    );

    // The API down: plan refuses, status still shows the host, with why the rest is unknown.
    let adopted = base.join("root/pods/gone/volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&adopted).unwrap();
    mounter.adopt(&adopted, "tmpfs");
    server.stop().await;
    let mut settings = settings;
    settings.first_list_timeout = Duration::from_secs(1);
    assert!(
        volumed::app::inspect::plan_only(&settings, fake_host(&mounter))
            .await
            .is_err()
    );
    let (desired, rows) = volumed::app::inspect::status_only(
        &settings,
        &(mounter.clone() as std::sync::Arc<dyn volumed::host::Mounter>),
    )
    .await
    .unwrap();
    assert!(
        desired.problems[0].contains("the desired state is unknown"),
        "{:?}",
        desired.problems
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].state, VolumeState::Kept, "{rows:?}");
}

/// A watch the API refuses (RBAC missing) is named in the error of a one-shot command, which
/// changes nothing.
#[tokio::test]
async fn a_refused_watch_is_named_when_the_first_list_never_completes() {
    let server = FakeApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    server.forbid("PersistentVolume");
    let mut settings = settings_support::test_settings(&base, None, Some(server.kubeconfig(&base)));
    settings.first_list_timeout = Duration::from_secs(4);
    let mounter = volumed::host::fake::FakeMounter::new();
    let err = volumed::app::inspect::plan_only(&settings, fake_host(&mounter))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no complete list within 4s"), "{err}");
    // A refusal that repeats backs off (800 ms doubling: 3 tries in 4 s, jitter aside), however well
    // the server answers otherwise.
    let tries = server.refusals("PersistentVolume");
    assert!(
        (2..=4).contains(&tries),
        "{tries} tries of a refused watch in 4 s"
    );
    assert!(
        err.contains("watch of PersistentVolume objects has been failing since")
            && err.contains("forbidden")
            && err.contains("deploy/rbac.yaml"),
        "{err}"
    );
    assert!(
        err.contains("still waiting for the first list of: PersistentVolume\n"),
        "{err}"
    );
    assert!(
        err.contains(&server.url()),
        "the message names the server: {err}"
    );
    assert!(!err.contains("Pod objects"), "{err}");
}

/// The fake mounter and formatter: `plan` through them touches nothing.
fn fake_host(mounter: &std::sync::Arc<volumed::host::fake::FakeMounter>) -> volumed::app::Host {
    volumed::app::Host {
        mounter: mounter.clone(),
        formatter: std::sync::Arc::new(volumed::host::fake::FakeFormatter::default()),
        devices: mounter.clone(),
        watch_devices: false,
        progress: None,
    }
}

/// Of the cluster's claims and volumes only this node's pods' are kept: one a pod comes to
/// need after its watch went by is read with a GET (once, when it answers). While it cannot
/// be read, the pod waits with the reason, the snapshot has a problem naming the fix, and
/// nothing is torn down (not known is not known to be gone).
#[tokio::test]
async fn a_claim_a_new_pod_needs_is_read_with_a_get_and_while_unreadable_nothing_is_torn_down() {
    let (server, node) = web_pod_mounted().await;
    let (claim_gets, volume_gets) = (
        server.gets("PersistentVolumeClaim"),
        server.gets("PersistentVolume"),
    );
    // Listed with the pod naming them, or before it came (passed by, then read once each).
    assert!(
        claim_gets <= 1 && volume_gets <= 1,
        "{claim_gets} claim and {volume_gets} volume GETs"
    );
    server.apply_yaml(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv2}}\nspec: {{capacity: {{storage: 1Gi}}, local: {{path: {}/disks/pv1}}, claimRef: {{namespace: shop, name: logs, uid: c2}}}}\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: logs, namespace: shop, uid: c2}}\nspec: {{volumeName: pv2}}\nstatus: {{phase: Bound}}\n",
        node.base.display()
    ));
    server.forbid_gets("PersistentVolumeClaim", true);
    server.apply_yaml(&pod("api", "u2").replace("claimName: data", "claimName: logs"));
    server.delete("Pod", "shop", "web");
    node.settled("the new pod waits for its unreadable claim", |d| {
        !d.pods.contains_key("u1")
            && d.waiting.iter().any(|w| {
                w.pod.uid == "u2"
                    && w.reason
                        .contains("PersistentVolumeClaim shop/logs could not be read from the API")
                    && w.reason.contains("forbidden")
            })
            && d.problems.iter().any(|p| {
                p.contains("shop/logs, which a pod here needs, could not be read")
                    && p.contains("deploy/rbac.yaml")
            })
    })
    .await;
    let web = [
        node.volume("u1", "empty-dir", "cache"),
        node.volume("u1", "local-volume", "pv1"),
    ];
    let mounted = node.mounted();
    assert!(
        web.iter().all(|v| mounted.contains(v)),
        "the deleted pod's volumes went while the other pod's claim was unknown: {mounted:?}"
    );
    server.forbid_gets("PersistentVolumeClaim", false);
    let (cache, logs) = (
        node.volume("u2", "empty-dir", "cache"),
        node.volume("u2", "local-volume", "pv2"),
    );
    node.until_within(
        "the claim is read: the new pod mounted, the deleted one's volumes gone",
        Duration::from_secs(30),
        || node.mounted() == [cache.clone(), logs.clone()],
    )
    .await;
    assert_eq!(server.gets("PersistentVolume"), volume_gets + 1);
    node.stop().await;
}
