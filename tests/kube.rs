//! The Kubernetes API source against a fake API server on loopback, through kube-rs's real
//! client over a real socket.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/settings.rs"]
mod settings_support;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use kube::ResourceExt;

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

mod daemon {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use volumed::app;
    use volumed::host::fake::FakeMounter;
    use volumed::host::format::FakeFormatter;

    use super::apiserver::FakeApiServer;

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
        let kubeconfig = kubeconfig(server, &base);
        std::fs::create_dir_all(base.join("disks/pv1")).unwrap();
        let settings = super::settings_support::test_settings(&base, None, Some(kubeconfig));
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
            app::run(&settings, false, host, stop).await.unwrap();
        });
        Node {
            _tmp: tmp,
            base,
            mounter,
            cancel,
            daemon,
        }
    }

    /// A kubeconfig in `dir` for the fake server.
    pub fn kubeconfig(server: &FakeApiServer, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            server.url()
        )).unwrap();
        path
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

    pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not reached within 10 s");
    }
}

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
    daemon::until("the pod's volumes are mounted", || {
        node.mounted().len() == 2
    })
    .await;
    (server, node)
}

fn pod(name: &str, uid: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {uid}}}\nspec:\n  nodeName: node-a\n  containers: []\n  volumes:\n  - {{name: cache, emptyDir: {{medium: Memory}}}}\n  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}\n")
}

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
    daemon::until("the pod's volumes are mounted", || {
        node.mounted() == [cache.clone(), data.clone()]
    })
    .await;
    server.delete("Pod", "shop", "web");
    daemon::until("the deleted pod's volumes are unmounted", || {
        node.mounted().is_empty()
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn an_api_outage_or_a_relist_unmounts_nothing() {
    let (server, node) = web_pod_mounted().await;
    // The API stalls (answers nothing), then goes away: watches fail and retry; nothing is
    // unmounted.
    server.stall(true);
    server.drop_watches();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.unmounts(), 0, "a stalled API unmounted something");
    server.stall(false);
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    daemon::until(
        "the watches relist and a pod added after the outage is set up",
        || server.lists("Pod") > lists_before && node.mounted().len() == 4,
    )
    .await;
    assert_eq!(node.unmounts(), 0, "the relist unmounted something");
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
    daemon::until("mounted", || node.mounted().len() == 2).await;
    // Deleting: the API sets deletionTimestamp while containers may still run.
    let terminating = |name: &str, uid: &str| {
        only_cache(name, uid).replace(
            &format!("uid: {uid}}}"),
            &format!("uid: {uid}, deletionTimestamp: \"2026-11-22T00:00:00Z\"}}"),
        )
    };
    server.apply_yaml(&terminating("web", "u1"));
    server.apply_yaml(&terminating("api", "u2"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        node.mounted().len(),
        2,
        "a terminating pod lost its volumes"
    );
    // Terminal: its volumes go; the other still terminating pod keeps its own.
    server.apply_yaml(&(terminating("web", "u1") + "status: {phase: Succeeded}\n"));
    let api_cache = node.volume("u2", "empty-dir", "cache");
    daemon::until("a terminal pod's volumes are removed", || {
        node.mounted() == [api_cache.clone()]
    })
    .await;
    // Gone from the API: its volumes go too.
    server.delete("Pod", "shop", "api");
    daemon::until("a deleted pod's volumes are removed", || {
        node.mounted().is_empty()
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn an_unbound_claim_leaves_the_volume_pending_and_the_rest_converges() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    server.apply_yaml("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: later, namespace: shop, uid: c9}\nspec: {}\nstatus: {phase: Pending}\n");
    server.apply_yaml(&pod("web", "u1").replace("claimName: data", "claimName: later"));
    let cache = node.volume("u1", "empty-dir", "cache");
    daemon::until("the other volume converges", || {
        node.mounted() == [cache.clone()]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        node.mounted(),
        vec![cache],
        "an unbound claim must not be mounted"
    );
    node.stop().await;
}

#[tokio::test]
async fn starting_while_the_api_is_down_unmounts_nothing_until_the_first_list() {
    let server = FakeApiServer::start().await;
    server.stop().await;
    // A mount left by an earlier run, of a pod the API will not list any more.
    let node = daemon::start_adopting(&server, &["gone-uid"]);
    assert_eq!(node.mounted().len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.unmounts(), 0, "unmounted while the API was down");
    server.restart().await;
    the_gone_pod_goes_once_the_cluster_is_listed(&server, node).await;
}

/// With the cluster's objects (this Node included) in the API, the adopted mount of the pod
/// the API does not list is torn down.
async fn the_gone_pod_goes_once_the_cluster_is_listed(server: &FakeApiServer, node: daemon::Node) {
    cluster(server, &node.base);
    daemon::until("a complete list tears the gone pod down", || {
        node.mounted().is_empty()
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn failures_and_pending_volumes_are_recorded_as_events_on_the_pod() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    node.mounter
        .fail_at(&node.volume("u1", "empty-dir", "cache"), "simulated ENOSPC");
    server.apply_yaml("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: later, namespace: shop, uid: c9}\nspec: {}\nstatus: {phase: Pending}\n");
    server.apply_yaml(&pod("web", "u1").replace("claimName: data", "claimName: later"));
    let reasons = || -> Vec<String> {
        server
            .events()
            .iter()
            .filter(|e| e["regarding"]["uid"] == "u1")
            .map(|e| e["reason"].as_str().unwrap_or("").to_string())
            .collect()
    };
    daemon::until("FailedMount and VolumePending events on the pod", || {
        let reasons = reasons();
        reasons.iter().any(|r| r == "FailedMount") && reasons.iter().any(|r| r == "VolumePending")
    })
    .await;
    let event = server
        .events()
        .into_iter()
        .find(|e| e["reason"] == "FailedMount")
        .unwrap();
    assert!(
        event["note"]
            .as_str()
            .unwrap_or("")
            .contains("simulated ENOSPC"),
        "{event}"
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["action"], "Mount");
    assert_eq!(event["reportingController"], "volumed");
    assert_eq!(event["reportingInstance"], "node-a");
    assert_eq!(event["metadata"]["namespace"], "shop");
    let regarding = &event["regarding"];
    assert_eq!(
        (
            &regarding["kind"],
            &regarding["namespace"],
            &regarding["name"]
        ),
        (&"Pod".into(), &"shop".into(), &"web".into())
    );
    let pending = server
        .events()
        .into_iter()
        .find(|e| e["reason"] == "VolumePending")
        .unwrap();
    assert!(
        pending["note"].as_str().unwrap_or("").contains("later"),
        "the pending Event names the claim: {pending}"
    );
    node.stop().await;
}

/// Each distinct message is its own Event; the same one again continues that Event's series
/// (kube-rs's recorder), and within the repeat window it is not sent at all.
#[tokio::test]
async fn repeated_notices_become_one_event_series_and_distinct_ones_stand_alone() {
    use volumed::model::PodRef;
    use volumed::reconcile::notices::Notice;
    let server = FakeApiServer::start().await;
    let notice = |message: &str| Notice {
        pod: PodRef {
            namespace: "shop".into(),
            name: "web".into(),
            uid: "u1".into(),
        },
        reason: "FailedMount",
        message: message.into(),
        warning: true,
    };
    let publish = |repeat_after: Duration, notices: Vec<Notice>| {
        let client = server.client();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            for n in notices {
                tx.try_send(n).unwrap();
            }
            drop(tx);
            volumed::desired::kube::publish_notices(client, "node-a".into(), repeat_after, rx)
                .await;
        }
    };
    let series = |server: &FakeApiServer| -> Vec<(String, i64)> {
        let mut seen: Vec<_> = server
            .events()
            .iter()
            .map(|e| {
                (
                    e["note"].as_str().unwrap_or("").to_string(),
                    e["series"]["count"].as_i64().unwrap_or(1),
                )
            })
            .collect();
        seen.sort();
        seen
    };
    publish(
        Duration::ZERO,
        vec![
            notice("volume a: ENOSPC"),
            notice("volume b: EIO"),
            notice("volume a: ENOSPC"),
        ],
    )
    .await;
    assert_eq!(
        series(&server),
        [("volume a: ENOSPC".into(), 2), ("volume b: EIO".into(), 1)]
    );
    publish(
        Duration::from_secs(3600),
        vec![
            notice("volume c: EIO"),
            notice("volume c: EIO"),
            notice("volume c: EIO"),
        ],
    )
    .await;
    assert_eq!(series(&server).len(), 3);
    assert!(
        series(&server).contains(&("volume c: EIO".into(), 1)),
        "a repeat within the window was sent"
    );
}

/// Claims the cluster has not (or not consistently) bound: the volume waits with the reason,
/// told to the pod as a `VolumePending` Event, and the pod's other volumes converge.
#[tokio::test]
async fn missing_mismatched_or_wrong_mode_claims_wait_with_the_reason_as_an_event() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    // pv2 names claim `stale` with the uid of an earlier claim of that name.
    server.apply_yaml(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv2}}\nspec: {{capacity: {{storage: 1Gi}}, local: {{path: {base}/disks/pv1}}, claimRef: {{namespace: shop, name: stale, uid: old-uid}}}}\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: stale, namespace: shop, uid: new-uid}}\nspec: {{volumeName: pv2}}\nstatus: {{phase: Bound}}\n---\n\
         apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv3}}\nspec: {{capacity: {{storage: 1Gi}}, volumeMode: Block, local: {{path: {base}/disks/pv1}}, claimRef: {{namespace: shop, name: raw, uid: c3}}}}\n---\n\
         apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: raw, namespace: shop, uid: c3}}\nspec: {{volumeName: pv3, volumeMode: Block}}\nstatus: {{phase: Bound}}\n",
        base = node.base.display()
    ));
    let cases = [
        ("u1", "absent", "absent"),
        ("u2", "stale", "uid old-uid"),
        ("u3", "raw", "volumeMode Block"),
    ];
    for (uid, claim, _) in cases {
        server.apply_yaml(
            &pod(&format!("p-{uid}"), uid)
                .replace("claimName: data", &format!("claimName: {claim}"))
                .replace(
                    "containers: []",
                    "containers: [{name: c, volumeMounts: [{name: data, mountPath: /data}]}]",
                ),
        );
    }
    let caches: Vec<_> = cases
        .iter()
        .map(|(uid, ..)| node.volume(uid, "empty-dir", "cache"))
        .collect();
    let told = |uid: &str, phrase: &str| {
        server.events().iter().any(|e| {
            e["regarding"]["uid"] == uid
                && e["reason"] == "VolumePending"
                && e["note"].as_str().unwrap_or("").contains(phrase)
        })
    };
    daemon::until("every cache is mounted and every wait is told", || {
        node.mounted() == caches && cases.iter().all(|(uid, _, why)| told(uid, why))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.mounted(),
        caches,
        "a claim that is not soundly bound was mounted"
    );
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
    daemon::until("both pods are set up", || node.mounted().len() == 3).await;
    server.stop().await;
    server.delete("Pod", "shop", "web");
    server.compact();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node.unmounts(), 0, "unmounted during the outage");
    server.restart().await;
    daemon::until("the deleted pod is torn down after the outage", || {
        node.mounted() == [node.volume("u2", "empty-dir", "cache")]
    })
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
    daemon::until("the pod watch relists and the new pod is set up", || {
        server.lists("Pod") > lists_before && node.mounted().len() == 4
    })
    .await;
    assert_eq!(node.unmounts(), 0, "the relist unmounted something");
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
    daemon::until("the new volume is set up beside the adopted cache", || {
        node.mounted().len() == 2 || node.volume("u1", "empty-dir", "scratch").is_dir()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    use volumed::reconcile::plan::Op;
    use volumed::reconcile::status::VolumeState;
    let server = FakeApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(base.join("disks/pv1")).unwrap();
    cluster(&server, &base);
    server.apply_yaml(&pod("web", "u1"));
    server.apply_yaml(&pod("api", "u2").replace("claimName: data", "claimName: none"));
    let settings =
        settings_support::test_settings(&base, None, Some(daemon::kubeconfig(&server, &base)));
    let mounter = volumed::host::fake::FakeMounter::new();
    let (desired, ops) = volumed::app::plan_only(&settings, mounter.as_ref())
        .await
        .unwrap();
    let mut set_up: Vec<_> = ops
        .iter()
        .filter_map(|op| match op {
            Op::SetUp { volume } => Some(format!("{}:{}", volume.key.pod_uid, volume.volume_name)),
            _ => None,
        })
        .collect();
    set_up.sort();
    assert_eq!(set_up, ["u1:cache", "u1:data", "u2:cache"]);
    assert_eq!(desired.pods.len(), 2);
    let (_, rows) = volumed::app::status_only(&settings, mounter.as_ref())
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
    assert!(volumed::app::plan_only(&settings, mounter.as_ref())
        .await
        .is_err());
    let (desired, rows) = volumed::app::status_only(&settings, mounter.as_ref())
        .await
        .unwrap();
    assert!(
        desired.problems[0].contains("the desired state is unknown"),
        "{:?}",
        desired.problems
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].reason.starts_with("kept"), "{rows:?}");
}

/// A watch the API refuses (RBAC missing) is named in the error of a one-shot command, which
/// changes nothing.
#[tokio::test]
async fn a_refused_watch_is_named_when_the_first_list_never_completes() {
    let server = FakeApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    server.forbid("PersistentVolume");
    let mut settings =
        settings_support::test_settings(&base, None, Some(daemon::kubeconfig(&server, &base)));
    settings.first_list_timeout = Duration::from_secs(2);
    let mounter = volumed::host::fake::FakeMounter::new();
    let err = volumed::app::plan_only(&settings, mounter.as_ref())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no complete list within 2s"), "{err}");
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

/// A node name the API does not know lists no pods: that is not "every pod is gone". Nothing
/// is torn down until the Node exists.
#[tokio::test]
async fn an_unknown_node_name_tears_nothing_down() {
    let server = FakeApiServer::start().await;
    // A mount left by an earlier run, for a pod the API does not list.
    let node = daemon::start_adopting(&server, &["gone-uid"]);
    daemon::until("the first list is read", || server.lists("Node") > 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    daemon::until("the last pod's volumes are mounted", || {
        node.mounted().contains(&last)
    })
    .await;
    let lists_before = server.lists("Pod");
    server.stall_continues(true);
    server.compact();
    server.expire_watches();
    daemon::until("the relist has read its first page", || {
        server.lists("Pod") > lists_before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(node.unmounts(), 0, "a half-read list tore something down");
    server.stall_continues(false);
    server.delete("Pod", "shop", "zz-last");
    daemon::until("the whole relist is applied", || {
        !node.mounted().contains(&last)
    })
    .await;
    node.stop().await;
}
