//! Data-safety attacks against the fake host: a pod taking over another pod's uid, and host
//! paths into volumed's own state or other pods' volumes.

use volumed::reconcile::status::{StatusRow, VolumeState};
use volumed::sync_loop::Report;

use super::World;

/// Pod `default/owner` with a disk emptyDir and a tmpfs, under a uid another pod will claim.
const OWNER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: owner, uid: shared-uid}
spec:
  nodeName: node-a
  containers: []
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: cache, emptyDir: {medium: Memory}}
"#;

/// The same volumes in another namespace, with the owner's uid.
const TAKER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: taker, namespace: other, uid: shared-uid}
spec:
  nodeName: node-a
  containers: []
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: cache, emptyDir: {medium: Memory}}
"#;

fn rows_of<'a>(report: &'a Report, pod: &str) -> Vec<&'a StatusRow> {
    report.rows.iter().filter(|r| r.pod == pod).collect()
}

#[tokio::test]
async fn a_pod_arriving_with_a_departed_pods_uid_gets_fresh_volumes_not_its_data() {
    let world = World::new();
    world.write("owner.yaml", OWNER);
    assert!(world.run_once().await.converged());
    let scratch = world.volume("shared-uid", "empty-dir", "scratch");
    std::fs::write(scratch.join("secret"), "the owner's data").unwrap();
    // In one change: the owner leaves and another pod arrives with its uid.
    world.remove("owner.yaml");
    world.write("taker.yaml", TAKER);
    let report = world.run_once().await;
    assert!(report.converged(), "{:#?}", report.rows);
    assert!(scratch.is_dir(), "the newcomer gets its own scratch dir");
    assert!(
        !scratch.join("secret").exists(),
        "the newcomer got the departed pod's emptyDir data"
    );
    let calls = world.mounter.calls();
    let cache = world.volume("shared-uid", "empty-dir", "cache");
    let unmounted = calls
        .iter()
        .position(|c| c == &format!("umount {}", cache.display()));
    let mounted = calls
        .iter()
        .rposition(|c| c == &format!("mount {}", cache.display()));
    assert!(
        unmounted.is_some() && mounted > unmounted,
        "the owner's tmpfs goes before the newcomer's comes: {calls:?}"
    );
}

#[tokio::test]
async fn two_pods_with_one_uid_are_both_refused_and_the_rest_of_the_node_goes_on() {
    let world = World::new();
    world.write("owner.yaml", OWNER);
    assert!(world.run_once().await.converged());
    let scratch = world.volume("shared-uid", "empty-dir", "scratch");
    std::fs::write(scratch.join("secret"), "the owner's data").unwrap();
    world.write("taker.yaml", TAKER);
    // Pod api leaves at the same time: its teardown must not wait for the uid dispute.
    world.remove("other.yaml");
    let report = world.run_once().await;
    assert!(!report.converged());
    for pod in ["default/owner", "other/taker"] {
        let rows = rows_of(&report, pod);
        assert!(
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| r.state == VolumeState::Pending && r.reason.contains("uid shared-uid")),
            "{pod} must be refused with the reason: {rows:#?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(scratch.join("secret")).unwrap(),
        "the owner's data",
        "what the uid's directory holds is kept while the dispute lasts"
    );
    assert!(world
        .mounts()
        .iter()
        .any(|(p, ..)| p == &world.volume("shared-uid", "empty-dir", "cache")));
    assert!(
        !world.settings.root_dir.join("pods/api-uid").exists(),
        "the departed pod api was torn down all the same"
    );
}

fn thief(paths: &[&str]) -> String {
    let volumes: String = paths
        .iter()
        .enumerate()
        .map(|(i, path)| format!("  - {{name: v{i}, hostPath: {{path: {path}}}}}\n"))
        .collect();
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: thief, uid: thief-uid}}\nspec:\n  nodeName: node-a\n  containers: []\n  volumes:\n{volumes}")
}

#[tokio::test]
async fn host_paths_into_volumeds_state_or_other_pods_volumes_are_refused() {
    let mut world = World::new();
    assert!(world.run_once().await.converged());
    let root = world.settings.root_dir.clone();
    let scratch = world.volume("web-uid", "empty-dir", "scratch");
    std::os::unix::fs::symlink(root.join("state"), world.base.join("state-link")).unwrap();
    world.write(
        "thief.yaml",
        &thief(&[
            "BASE/root/state",
            "BASE/root/state/bindings.json",
            &scratch.display().to_string(),
            "BASE/state-link",
        ]),
    );
    let report = world.run_once().await;
    assert!(!report.converged());
    let rows = rows_of(&report, "default/thief");
    assert_eq!(rows.len(), 4, "{rows:#?}");
    for row in &rows {
        assert!(
            matches!(row.state, VolumeState::Pending | VolumeState::Failed)
                && (row.reason.contains("state") || row.reason.contains("root dir")),
            "{row:#?}"
        );
    }
    let thief_mounts: Vec<_> = world
        .mounts()
        .into_iter()
        .filter(|(p, ..)| p.starts_with(root.join("pods/thief-uid")))
        .collect();
    assert!(thief_mounts.is_empty(), "{thief_mounts:#?}");

    // Listing the root dir itself as a host path root lets a pod reach another pod's volume;
    // the state dir stays out of reach whatever is listed.
    world.settings.node.host_paths.roots.push(root.clone());
    let report = world.run_once().await;
    let rows = rows_of(&report, "default/thief");
    let mounted: Vec<_> = rows
        .iter()
        .filter(|r| r.state == VolumeState::Mounted)
        .map(|r| r.volume.as_str())
        .collect();
    assert_eq!(mounted, ["v2"], "{rows:#?}");
}

#[tokio::test]
async fn removing_the_last_pod_of_this_node_tears_it_down_beside_other_nodes_pods() {
    let world = World::new();
    assert!(world.run_once().await.converged());
    // Only pod `elsewhere` (node-b) is left, and it has never had a directory here.
    world.remove("web.yaml");
    world.write("other.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: elsewhere, uid: far-uid}\nspec: {nodeName: node-b, containers: []}\n");
    let report = world.run_once().await;
    assert!(report.converged(), "{:#?}", report.desired.problems);
    assert!(world.mounts().is_empty(), "{:#?}", world.mounts());
    assert!(!world.settings.root_dir.join("pods/web-uid").exists());
}
