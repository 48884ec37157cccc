//! Events on pods, and volumes waiting for claims the cluster has not soundly bound.

use std::time::Duration;

use crate::apiserver::FakeApiServer;
use crate::{cluster, daemon, pod};

#[tokio::test]
async fn an_unbound_claim_leaves_the_volume_pending_and_the_rest_converges() {
    let server = FakeApiServer::start().await;
    let node = daemon::start(&server);
    cluster(&server, &node.base);
    server.apply_yaml("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: later, namespace: shop, uid: c9}\nspec: {}\nstatus: {phase: Pending}\n");
    server.apply_yaml(&pod("web", "u1").replace("claimName: data", "claimName: later"));
    let cache = node.volume("u1", "empty-dir", "cache");
    node.until("the other volume converges", || {
        node.mounted() == [cache.clone()]
    })
    .await;
    node.settled("the loop is idle on the pod with the unbound claim", |d| {
        d.pods.contains_key("u1")
    })
    .await;
    assert_eq!(
        node.mounted(),
        vec![cache],
        "an unbound claim must not be mounted"
    );
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
    node.until("FailedMount and VolumePending events on the pod", || {
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
    use volumed::model::notice::Notice;
    use volumed::model::PodRef;
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
    node.until("every cache is mounted and every wait is told", || {
        node.mounted() == caches && cases.iter().all(|(uid, _, why)| told(uid, why))
    })
    .await;
    node.settled("the loop is idle on every pod", |d| {
        cases.iter().all(|(uid, _, _)| d.pods.contains_key(*uid))
    })
    .await;
    assert_eq!(
        node.mounted(),
        caches,
        "a claim that is not soundly bound was mounted"
    );
    node.stop().await;
}
