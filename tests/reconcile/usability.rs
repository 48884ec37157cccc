//! What a new user meets, against the fake host: the daemon follows a manifest directory
//! that config tools replace instead of editing.

use std::path::Path;

use super::{start_daemon, World, OTHER, STORAGE, WEB};

fn late_pod(name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: {name}-uid}}\nspec: {{nodeName: node-a, containers: [], volumes: [{{name: t, emptyDir: {{medium: Memory}}}}]}}\n")
}

/// Writes the world's manifests, and `extra` pods, into `dir`.
fn fill(world: &World, dir: &Path, extra: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [
        ("storage.yaml", STORAGE),
        ("web.yaml", WEB),
        ("other.yaml", OTHER),
    ] {
        let text = text.replace("BASE", &world.base.display().to_string());
        std::fs::write(dir.join(name), text).unwrap();
    }
    for pod in extra {
        std::fs::write(dir.join(format!("{pod}.yaml")), late_pod(pod)).unwrap();
    }
}

#[tokio::test]
async fn the_daemon_follows_a_manifest_directory_that_is_replaced() {
    let mut world = World::new();
    let deploy = world.base.join("deploy");
    let manifests = deploy.join("manifests");
    fill(&world, &manifests, &[]);
    world.settings.manifests = Some(manifests.clone());
    let (cancel, daemon) = start_daemon(&world);
    world.until(|| world.mounts().len() == 4).await;
    let mounted = |pod: &str| {
        let path = world.volume(&format!("{pod}-uid"), "empty-dir", "t");
        world.mounts().iter().any(|(p, ..)| p == &path)
    };

    // rm -rf manifests && mkdir manifests && cp *.yaml manifests/
    std::fs::remove_dir_all(&manifests).unwrap();
    fill(&world, &manifests, &["late1"]);
    world.until(|| mounted("late1")).await;

    // A parent renamed into place: mv deploy deploy.old && mv deploy.new deploy
    fill(
        &world,
        &world.base.join("deploy.new/manifests"),
        &["late1", "late2"],
    );
    std::fs::rename(&deploy, world.base.join("deploy.old")).unwrap();
    std::fs::rename(world.base.join("deploy.new"), &deploy).unwrap();
    world.until(|| mounted("late2")).await;
    // ...and the new directory is followed, not only read once.
    std::fs::write(manifests.join("late3.yaml"), late_pod("late3")).unwrap();
    world.until(|| mounted("late3")).await;

    cancel.cancel();
    daemon.await.unwrap();
    assert_eq!(
        world.mounts().len(),
        7,
        "nothing went while directories were swapped"
    );
}

#[tokio::test]
async fn the_daemon_follows_a_symlink_swapped_to_a_new_manifest_directory() {
    let mut world = World::new();
    let (v1, v2, live) = (
        world.base.join("v1"),
        world.base.join("v2"),
        world.base.join("live"),
    );
    fill(&world, &v1, &[]);
    fill(&world, &v2, &["late1"]);
    std::os::unix::fs::symlink(&v1, &live).unwrap();
    world.settings.manifests = Some(live.clone());
    let (cancel, daemon) = start_daemon(&world);
    world.until(|| world.mounts().len() == 4).await;
    // ln -sfn v2 live: a new link renamed over the old one.
    std::os::unix::fs::symlink(&v2, world.base.join("live.tmp")).unwrap();
    std::fs::rename(world.base.join("live.tmp"), &live).unwrap();
    let late = |pod: &str| world.volume(&format!("{pod}-uid"), "empty-dir", "t");
    world
        .until(|| world.mounts().iter().any(|(p, ..)| p == &late("late1")))
        .await;
    // Files written into the new target later are seen too.
    std::fs::write(v2.join("late2.yaml"), late_pod("late2")).unwrap();
    world
        .until(|| world.mounts().iter().any(|(p, ..)| p == &late("late2")))
        .await;
    cancel.cancel();
    daemon.await.unwrap();
}
