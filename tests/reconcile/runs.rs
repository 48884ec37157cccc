//! The reconcile runs: convergence, teardown, failures, retries, bindings, hangs.

use std::time::Duration;

use volumed::reconcile::status::VolumeState;

use super::{start_daemon, World, WEB};

#[tokio::test]
async fn a_run_mounts_exactly_what_our_pods_need_and_a_second_run_changes_nothing() {
    let world = World::new();
    let report = world.run_once().await;
    assert!(report.converged(), "{:#?}", report.rows);
    let base = world.base.display().to_string();
    assert_eq!(
        world.mounts(),
        vec![
            (
                world.volume("api-uid", "empty-dir", "tmp"),
                "tmpfs".into(),
                "/".into()
            ),
            (
                world.volume("web-uid", "empty-dir", "cache"),
                "tmpfs".into(),
                "/".into()
            ),
            (
                world.volume("web-uid", "host-path", "logs"),
                "bind".into(),
                format!("{base}/logs")
            ),
            (
                world.volume("web-uid", "local-volume", "pv-small"),
                "bind".into(),
                format!("{base}/disks/small")
            ),
        ]
    );
    let cache = world
        .mounter
        .table()
        .into_iter()
        .find(|m| m.mount_point.ends_with("cache"))
        .unwrap();
    assert_eq!(
        cache.super_options.get("size"),
        Some(&Some("65536k".to_string()))
    );
    assert!(world.volume("web-uid", "empty-dir", "scratch").is_dir());
    assert!(
        world.base.join("logs").is_dir(),
        "DirectoryOrCreate made the host path"
    );

    let calls = world.mounter.calls().len();
    let again = world.run_once().await;
    assert!(again.converged());
    assert_eq!(
        world.mounter.calls().len(),
        calls,
        "a converged host gets no mount calls"
    );
}

#[tokio::test]
async fn removing_a_pod_tears_down_exactly_its_mounts_and_directory_and_keeps_volume_data() {
    let world = World::new();
    assert!(world.run_once().await.converged());
    std::fs::write(
        world
            .volume("web-uid", "empty-dir", "scratch")
            .join("tmpdata"),
        "x",
    )
    .unwrap();
    world.remove("web.yaml");
    let report = world.run_once().await;
    assert!(report.converged(), "{:#?}", report.rows);
    assert_eq!(
        world.mounts(),
        vec![(
            world.volume("api-uid", "empty-dir", "tmp"),
            "tmpfs".into(),
            "/".into()
        )]
    );
    assert!(
        !world.settings.root_dir.join("pods/web-uid").exists(),
        "the pod directory is gone"
    );
    assert!(
        world.settings.root_dir.join("pods/api-uid").exists(),
        "the other pod is untouched"
    );
    assert_eq!(
        std::fs::read_to_string(world.base.join("disks/small/marker")).unwrap(),
        "small"
    );
}

#[tokio::test]
async fn a_malformed_manifest_fails_the_run_and_unmounts_nothing() {
    let world = World::new();
    assert!(world.run_once().await.converged());
    let before = world.mounts();
    world.write("web.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [broken\n");
    let report = world.run_once().await;
    assert!(!report.converged());
    assert!(
        report.desired.problems[0].contains("web.yaml:"),
        "{:?}",
        report.desired.problems
    );
    assert_eq!(
        world.mounts(),
        before,
        "nothing is unmounted while the manifests are broken"
    );
}

#[tokio::test]
async fn a_volume_that_fails_fails_alone_and_is_reported() {
    let world = World::new();
    world.mounter.fail_at(
        &world.volume("web-uid", "empty-dir", "cache"),
        "simulated ENOSPC",
    );
    let report = world.run_once().await;
    assert!(!report.converged());
    let cache = report.rows.iter().find(|r| r.volume == "cache").unwrap();
    assert_eq!(cache.state, VolumeState::Failed);
    assert!(
        cache.reason.contains("simulated ENOSPC"),
        "{}",
        cache.reason
    );
    let mounted = report
        .rows
        .iter()
        .filter(|r| r.state == VolumeState::Mounted)
        .count();
    assert_eq!(
        mounted, 4,
        "every other volume converged: {:#?}",
        report.rows
    );
}

#[tokio::test]
async fn a_symlink_at_a_volume_path_is_not_mounted_over() {
    let world = World::new();
    let target = world.volume("web-uid", "empty-dir", "cache");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(world.base.join("disks/big"), &target).unwrap();
    let report = world.run_once().await;
    let cache = report.rows.iter().find(|r| r.volume == "cache").unwrap();
    assert_eq!(cache.state, VolumeState::Failed);
    assert!(cache.reason.contains("symlink"), "{}", cache.reason);
    assert!(!world
        .mounts()
        .iter()
        .any(|(p, ..)| p == &target || p.starts_with(world.base.join("disks"))));
}

#[tokio::test]
async fn the_daemon_retries_a_failed_volume_with_backoff_until_it_works() {
    let world = World::new();
    let cache = world.volume("web-uid", "empty-dir", "cache");
    world.mounter.fail_at(&cache, "simulated transient failure");
    let (cancel, daemon) = start_daemon(&world);
    world
        .until(|| {
            world
                .mounter
                .calls()
                .iter()
                .filter(|c| c.ends_with("cache"))
                .count()
                >= 2
        })
        .await;
    world.mounter.clear_failure(&cache);
    world
        .until(|| world.mounts().iter().any(|(p, ..)| p == &cache))
        .await;
    cancel.cancel();
    let report = daemon.await.unwrap();
    assert!(report.converged(), "{:#?}", report.rows);
    assert!(
        !world.mounts().is_empty(),
        "stopping the daemon unmounts nothing"
    );
}

#[tokio::test]
async fn the_daemon_follows_manifest_changes() {
    let world = World::new();
    world.remove("web.yaml");
    let (cancel, daemon) = start_daemon(&world);
    let cache = world.volume("web-uid", "empty-dir", "cache");
    world.until(|| world.mounts().len() == 1).await;
    world.write("web.yaml", WEB);
    world
        .until(|| world.mounts().iter().any(|(p, ..)| p == &cache))
        .await;
    world.remove("web.yaml");
    world
        .until(|| !world.settings.root_dir.join("pods/web-uid").exists())
        .await;
    cancel.cancel();
    daemon.await.unwrap();
}

#[tokio::test]
async fn a_recorded_binding_survives_a_restart_even_when_a_better_fit_appears() {
    let world = World::new();
    assert!(world.run_once().await.converged());
    let tiny = "---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv-tiny}\n\
        spec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], local: {path: BASE/disks/tiny}}\n";
    std::fs::create_dir_all(world.base.join("disks/tiny")).unwrap();
    world.write("tiny.yaml", tiny);
    let report = world.run_once().await;
    assert!(report.converged(), "{:#?}", report.rows);
    let data = report.rows.iter().find(|r| r.volume == "data").unwrap();
    assert!(data.path.ends_with("pv-small"), "the claim moved: {data:?}");
    let record =
        std::fs::read_to_string(world.settings.root_dir.join("state/bindings.json")).unwrap();
    assert!(
        record.contains("\"default/data\": \"pv-small\""),
        "{record}"
    );
}

#[tokio::test]
async fn a_hung_volume_never_stalls_the_others_and_is_reported_stuck() {
    let mut world = World::new();
    world.settings.op_timeout = Duration::from_millis(200);
    let cache = world.volume("web-uid", "empty-dir", "cache");
    world.mounter.hang_at(&cache);
    let (cancel, daemon) = start_daemon(&world);
    // Every other volume converges while the cache mount hangs.
    world.until(|| world.mounts().len() == 3).await;
    let failures = world.settings.root_dir.join("state/failures.json");
    world.until_file(&failures, |f| f.contains("stuck")).await;
    let attempts = world
        .mounter
        .calls()
        .iter()
        .filter(|c| c.ends_with("/cache"))
        .count();
    assert_eq!(
        attempts, 1,
        "a hung volume gets no second call while the first is stuck"
    );
    world.mounter.release(&cache);
    world
        .until(|| world.mounts().iter().any(|(p, ..)| p == &cache))
        .await;
    cancel.cancel();
    let report = daemon.await.unwrap();
    assert!(report.converged(), "{:#?}", report.rows);
}

#[tokio::test]
async fn a_manifest_caught_half_written_never_tears_anything_down() {
    let world = World::new();
    let (cancel, daemon) = start_daemon(&world);
    world.until(|| world.mounts().len() == 4).await;
    // A writer that truncates and rewrites in two steps: the first step still parses, as a
    // pod with fewer volumes.
    let half: String = WEB.lines().take(9).collect::<Vec<_>>().join("\n");
    assert!(half.contains("cache") && !half.contains("logs"), "{half}");
    world.write("web.yaml", &half);
    // The writer's pause between its two steps (its timing, not a wait for the daemon).
    tokio::time::sleep(Duration::from_millis(60)).await;
    world.write("web.yaml", WEB);
    // A pod written after both steps: once the loop is idle on a snapshot with it, it has
    // acted on everything the directory showed before.
    world.write("marker.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: marker, uid: marker-uid}\nspec: {nodeName: node-a, containers: [], volumes: [{name: tmp, emptyDir: {}}]}\n");
    world
        .settled(
            "the loop is idle on a snapshot written after the rewrite",
            |d| d.pods.contains_key("marker-uid"),
        )
        .await;
    cancel.cancel();
    daemon.await.unwrap();
    let unmounts: Vec<_> = world
        .mounter
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("umount"))
        .collect();
    assert!(
        unmounts.is_empty(),
        "a half-written file tore volumes down: {unmounts:?}"
    );
    assert_eq!(world.mounts().len(), 4);
}

/// Runs a daemon with an NFS pod, hangs its server, removes the pod, and returns the calls
/// made while a new pod converged during the hang.
async fn hung_nfs_teardown(force_hangs_too: bool) -> (World, Vec<String>) {
    let mut world = World::new();
    world.settings.op_timeout = Duration::from_secs(1);
    world.write("nfs.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: share, uid: share-uid}\nspec: {nodeName: node-a, containers: [], volumes: [{name: files, nfs: {server: nfs1, path: /exports/files}}]}\n");
    let (cancel, daemon) = start_daemon(&world);
    let target = world.volume("share-uid", "nfs", "files");
    world
        .until(|| {
            world
                .mounts()
                .iter()
                .any(|(p, fs, _)| p == &target && fs == "nfs")
        })
        .await;
    // The server dies: a plain unmount now hangs (and, if asked, a forced one too).
    world.mounter.hang_at(&target);
    if force_hangs_too {
        world.mounter.hang_forced_unmounts_too();
    }
    world.remove("nfs.yaml");
    // A pod that arrives during the hang converges all the same.
    world.write("late.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: late, uid: late-uid}\nspec: {nodeName: node-a, containers: [], volumes: [{name: t, emptyDir: {medium: Memory}}]}\n");
    let late = world.volume("late-uid", "empty-dir", "t");
    world
        .until(|| world.mounts().iter().any(|(p, ..)| p == &late))
        .await;
    world
        .until(|| !world.settings.root_dir.join("pods/share-uid").exists())
        .await;
    cancel.cancel();
    daemon.await.unwrap();
    world.mounter.release(&target);
    let calls = world.mounter.calls();
    (world, calls)
}

#[tokio::test]
async fn an_nfs_unmount_that_hangs_is_forced_after_its_deadline() {
    let (world, calls) = hung_nfs_teardown(false).await;
    let target = world
        .volume("share-uid", "nfs", "files")
        .display()
        .to_string();
    let position = |call: &str| calls.iter().position(|c| c == &format!("{call} {target}"));
    let (plain, forced) = (position("umount"), position("umount-force"));
    assert!(
        plain.is_some() && forced > plain,
        "a plain unmount first, then the forced one: {calls:?}"
    );
    assert_eq!(
        position("umount-detach"),
        None,
        "no detach when the forced unmount works"
    );
}

#[tokio::test]
async fn an_nfs_unmount_whose_force_hangs_too_is_detached_lazily() {
    let (world, calls) = hung_nfs_teardown(true).await;
    let target = world
        .volume("share-uid", "nfs", "files")
        .display()
        .to_string();
    assert!(
        calls.contains(&format!("umount-detach {target}")),
        "{calls:?}"
    );
}
