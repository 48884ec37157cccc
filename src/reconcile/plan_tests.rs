//! Table-driven tests of `plan`: each case is a desired state, a mount table and the pod
//! directories, and the exact ops expected.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::*;
use crate::model::mountinfo::{MountEntry, PodMounts};
use crate::model::on_disk::DirOwner;
use crate::model::{MountSpec, Plugin, PodRef};

const ROOT: &str = "/var/lib/volumed";

fn key(uid: &str, plugin: Plugin, name: &str) -> VolumeKey {
    VolumeKey::new(uid, plugin, name)
}

fn desired(complete: bool, volumes: &[(VolumeKey, MountSpec)]) -> DesiredState {
    let mut state = DesiredState {
        complete,
        ..Default::default()
    };
    for (key, spec) in volumes {
        let pod = PodRef {
            namespace: "default".into(),
            name: key.pod_uid.clone(),
            uid: key.pod_uid.clone(),
        };
        state.pods.insert(key.pod_uid.clone(), pod.clone());
        state.volumes.insert(
            key.clone(),
            DesiredVolume {
                key: key.clone(),
                pod,
                volume_name: key.name.clone(),
                pv_name: None,
                claim: None,
                spec: spec.clone(),
            },
        );
    }
    state
}

fn mounted(keys: &[&VolumeKey], stray: &[&str]) -> PodMounts {
    let mut entries: Vec<MountEntry> = keys
        .iter()
        .map(|k| entry(k.path(Path::new(ROOT))))
        .collect();
    entries.extend(stray.iter().map(|p| entry(Path::new(ROOT).join(p))));
    PodMounts::index(&entries, Path::new(ROOT))
}

fn entry(mount_point: std::path::PathBuf) -> MountEntry {
    MountEntry {
        mount_id: 1,
        parent_id: 0,
        device: "0:1".into(),
        root: "/".into(),
        mount_point,
        fs_type: "tmpfs".into(),
        source: None,
        read_only: false,
        super_options: BTreeMap::new(),
        propagation: Default::default(),
    }
}

fn disk(keys: &[&VolumeKey], empty_pods: &[&str]) -> OnDisk {
    let mut on_disk = OnDisk::default();
    for k in keys {
        on_disk
            .pods
            .entry(k.pod_uid.clone())
            .or_default()
            .insert((*k).clone());
    }
    for uid in empty_pods {
        on_disk.pods.insert(uid.to_string(), BTreeSet::new());
    }
    // Each directory was made for the pod `desired` names after its uid.
    let uids: Vec<String> = on_disk.pods.keys().cloned().collect();
    for uid in uids {
        let owner = DirOwner::Pod(format!("default/{uid}"));
        on_disk.owners.insert(uid, owner);
    }
    on_disk
}

fn verbs(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .map(|op| format!("{} {}", op.verb(), describe(op)))
        .collect()
}

fn describe(op: &Op) -> String {
    match op {
        Op::SetUp { volume } => volume.key.to_string(),
        Op::Unmount {
            key,
            nested: Some(path),
            ..
        } => format!("{key} {}", path.display()),
        Op::Unmount {
            key, nested: None, ..
        }
        | Op::RemoveVolumeDir { key, .. } => key.to_string(),
        Op::RemovePodDir { pod_uid } => pod_uid.clone(),
        Op::ClaimPodDir { pod } => pod.to_string(),
        Op::UnmountGlobal { pv_name } | Op::RemoveGlobalDir { pv_name } => pv_name.clone(),
    }
}

#[test]
fn plan_closes_the_gap_and_nothing_more() {
    let tmp = key("p1", Plugin::EmptyDir, "cache");
    let dir = key("p1", Plugin::EmptyDir, "scratch");
    let bind = key("p1", Plugin::HostPath, "logs");
    let old = key("p0", Plugin::LocalVolume, "pv1");
    let tmpfs = MountSpec::Tmpfs {
        size_bytes: Some(1 << 20),
        sized_by: crate::model::TmpfsSize::SizeLimit,
    };
    let bind_spec = MountSpec::Bind {
        source: "/srv".into(),
        expect: crate::model::PathType::Directory,
        read_only: false,
    };
    let want = desired(
        true,
        &[
            (tmp.clone(), tmpfs.clone()),
            (dir.clone(), MountSpec::Directory),
            (bind.clone(), bind_spec),
        ],
    );
    let want_incomplete = DesiredState {
        complete: false,
        ..want.clone()
    };
    let only_tmp = desired(true, &[(tmp.clone(), tmpfs)]);
    let cases: Vec<(&str, &DesiredState, PodMounts, OnDisk, Vec<&str>)> = vec![
        (
            "a fresh host gets every volume set up",
            &want,
            mounted(&[], &[]),
            disk(&[], &[]),
            vec![
                "set-up p1/empty-dir/cache",
                "set-up p1/empty-dir/scratch",
                "set-up p1/host-path/logs",
            ],
        ),
        (
            "a converged host needs nothing",
            &want,
            mounted(&[&tmp, &bind], &[]),
            disk(&[&tmp, &dir, &bind], &[]),
            vec![],
        ),
        (
            "a mount point without its mount is set up again",
            &want,
            mounted(&[&bind], &[]),
            disk(&[&tmp, &dir, &bind], &[]),
            vec!["set-up p1/empty-dir/cache"],
        ),
        (
            "an unwanted mount is unmounted before its directory goes",
            &want,
            mounted(&[&tmp, &bind, &old], &[]),
            disk(&[&tmp, &dir, &bind, &old], &[]),
            vec!["unmount p0/local-volume/pv1"],
        ),
        (
            "an unmounted unwanted directory is removed",
            &want,
            mounted(&[&tmp, &bind], &[]),
            disk(&[&tmp, &dir, &bind, &old], &[]),
            vec!["remove-volume-dir p0/local-volume/pv1"],
        ),
        (
            "an empty pod directory of a gone pod is removed",
            &want,
            mounted(&[&tmp, &bind], &[]),
            disk(&[&tmp, &dir, &bind], &["p0"]),
            vec!["remove-pod-dir p0"],
        ),
        (
            "a stray mount keeps a gone pod's directory",
            &want,
            mounted(&[&tmp, &bind], &["pods/p0/other"]),
            disk(&[&tmp, &dir, &bind], &["p0"]),
            vec![],
        ),
        (
            "an incomplete snapshot sets up but never tears down",
            &want_incomplete,
            mounted(&[&old], &[]),
            disk(&[&old], &["p9"]),
            vec![
                "set-up p1/empty-dir/cache",
                "set-up p1/empty-dir/scratch",
                "set-up p1/host-path/logs",
            ],
        ),
        (
            "a desired pod's empty directory stays",
            &only_tmp,
            mounted(&[&tmp], &[]),
            disk(&[&tmp], &[]),
            vec![],
        ),
    ];
    for (name, want, mounts, on_disk, expected) in cases {
        assert_eq!(verbs(&plan(want, &mounts, &on_disk)), expected, "{name}");
    }
}

#[test]
fn a_running_pod_with_an_unresolvable_volume_keeps_every_volume() {
    let cache = key("p1", Plugin::EmptyDir, "cache");
    let scratch = key("p1", Plugin::EmptyDir, "scratch");
    // The pod's cache volume no longer resolves (say its sizeLimit became a typo) ...
    let mut want = desired(true, &[(scratch.clone(), MountSpec::Directory)]);
    want.waiting.push(crate::desired::WaitingVolume {
        pod: want.pods["p1"].clone(),
        volume_name: "cache".into(),
        reason: "emptyDir.sizeLimit: quantity \"64MB\" is not valid".into(),
        blocking: true,
        origin: None,
    });
    let ops = plan(
        &want,
        &mounted(&[&cache], &[]),
        &disk(&[&cache, &scratch], &[]),
    );
    // ... so nothing of the pod is torn down: not its tmpfs, not its emptyDir data.
    assert_eq!(verbs(&ops), Vec::<String>::new());
}

#[test]
fn volumes_of_plugins_volumed_does_not_manage_are_never_torn_down() {
    let secret = key("gone", Plugin::Other("secret".into()), "token");
    let ops = plan(
        &desired(true, &[]),
        &mounted(&[&secret], &[]),
        &disk(&[&secret], &[]),
    );
    assert_eq!(
        verbs(&ops),
        Vec::<String>::new(),
        "no unmount, no rmdir, and the pod dir stays"
    );
}

#[test]
fn mounts_nested_in_an_unwanted_volume_go_first_innermost_first() {
    let logs = key("gone", Plugin::HostPath, "logs");
    let base = logs.path(Path::new(ROOT));
    let outer = base.join("a");
    let inner = base.join("a/b");
    let linked = |path: &std::path::PathBuf, mount_id, parent_id| MountEntry {
        mount_id,
        parent_id,
        ..entry(path.clone())
    };
    let plan_for = |entries: &[MountEntry]| {
        let mounts = PodMounts::index(entries, Path::new(ROOT));
        verbs(&plan(&desired(true, &[]), &mounts, &disk(&[&logs], &[])))
    };
    let unmount = |path: &std::path::PathBuf| format!("unmount {logs} {}", path.display());
    // A tree volume → a → a/b: the leaf first.
    let tree = [
        linked(&base, 10, 1),
        linked(&inner, 12, 11),
        linked(&outer, 11, 10),
    ];
    assert_eq!(plan_for(&tree), vec![unmount(&inner)]);
    // A later mount over `a` hides the older `a/b`: the newest leaf, the reachable one, first.
    let hidden = [
        linked(&base, 10, 1),
        linked(&inner, 12, 10),
        linked(&outer, 13, 10),
    ];
    assert_eq!(plan_for(&hidden), vec![unmount(&outer)]);
    // Nothing nested: the volume's own mount.
    assert_eq!(plan_for(&tree[..1]), vec![format!("unmount {logs}")]);
}

#[test]
fn a_global_mount_goes_only_after_every_pod_mount_of_it() {
    let global_path = crate::model::global_mount_path(Path::new(ROOT), &Plugin::LocalVolume, "pv1");
    let global = MountEntry {
        device: "7:3".into(),
        ..entry(global_path)
    };
    let user = key("p1", Plugin::LocalVolume, "pv1");
    let bind = MountEntry {
        device: "7:3".into(),
        ..entry(user.path(Path::new(ROOT)))
    };
    let local = MountSpec::Local {
        path: "/dev/loop3".into(),
        fs_type: "ext4".into(),
        mount_options: vec![],
        read_only: false,
    };
    let mut wanted = desired(true, &[(user.clone(), local)]);
    wanted.volumes.get_mut(&user).unwrap().pv_name = Some("pv1".into());
    let with_globals = |globals: &[&str]| OnDisk {
        globals: globals.iter().map(|g| g.to_string()).collect(),
        ..disk(&[&user], &[])
    };
    let index = |entries: &[MountEntry]| PodMounts::index(entries, Path::new(ROOT));
    let both = [global.clone(), bind.clone()];

    // Wanted by a pod: nothing to do.
    assert_eq!(
        verbs(&plan(&wanted, &index(&both), &with_globals(&["pv1"]))),
        Vec::<String>::new()
    );
    // The pod is gone but its bind is still mounted: the bind goes first, the global stays.
    let gone = desired(true, &[]);
    assert_eq!(
        verbs(&plan(&gone, &index(&both), &with_globals(&["pv1"]))),
        vec![format!("unmount {user}")]
    );
    // A running pod whose claim went pending keeps its bind, and so the global.
    let mut held = desired(true, &[]);
    let pod = PodRef {
        namespace: "default".into(),
        name: "p1".into(),
        uid: "p1".into(),
    };
    held.pods.insert("p1".into(), pod.clone());
    held.waiting.push(crate::desired::WaitingVolume {
        pod,
        volume_name: "d".into(),
        reason: "pending".into(),
        blocking: true,
        origin: None,
    });
    assert_eq!(
        verbs(&plan(&held, &index(&both), &with_globals(&["pv1"]))),
        Vec::<String>::new()
    );
    // Nothing shows it any more: unmount, then remove its directory.
    let no_pods = OnDisk {
        globals: ["pv1".to_string()].into(),
        ..OnDisk::default()
    };
    assert_eq!(
        verbs(&plan(&gone, &index(&[global]), &no_pods)),
        vec!["unmount-global pv1"]
    );
    assert_eq!(
        verbs(&plan(&gone, &index(&[]), &no_pods)),
        vec!["remove-global-dir pv1"]
    );
}

#[test]
fn a_pod_being_deleted_keeps_its_volumes_and_gets_no_new_ones() {
    let cache = key("p1", Plugin::EmptyDir, "cache");
    let logs = key("p1", Plugin::HostPath, "logs");
    let bind = MountSpec::Bind {
        source: "/srv".into(),
        expect: crate::model::PathType::Directory,
        read_only: false,
    };
    let mut want = desired(
        true,
        &[
            (
                cache.clone(),
                MountSpec::Tmpfs {
                    size_bytes: None,
                    sized_by: crate::model::TmpfsSize::KernelDefault,
                },
            ),
            (logs.clone(), bind),
        ],
    );
    want.terminating.insert("p1".into());
    let ops = plan(&want, &mounted(&[&cache], &[]), &disk(&[&cache], &[]));
    assert_eq!(
        verbs(&ops),
        Vec::<String>::new(),
        "the mounted volume stays, the missing one is not set up"
    );
}

#[test]
fn a_pod_with_a_departed_pods_uid_waits_while_that_pods_volumes_go_first() {
    let scratch = key("u", Plugin::EmptyDir, "scratch");
    let mut want = desired(true, &[(scratch.clone(), MountSpec::Directory)]);
    want.pods.get_mut("u").unwrap().namespace = "other".into();
    for volume in want.volumes.values_mut() {
        volume.pod.namespace = "other".into();
    }
    let on_disk = disk(&[&scratch], &[]);
    let ops = plan(&want, &mounted(&[], &[]), &on_disk);
    assert_eq!(verbs(&ops), ["remove-volume-dir u/empty-dir/scratch"]);
    let gone = disk(&[], &["u"]);
    let ops = plan(&want, &mounted(&[], &[]), &gone);
    assert_eq!(verbs(&ops), ["remove-pod-dir u"]);
    let ops = plan(&want, &mounted(&[], &[]), &OnDisk::default());
    assert_eq!(verbs(&ops), ["set-up u/empty-dir/scratch"]);
    // A directory without a record is claimed by the pod of its uid.
    let mut unrecorded = disk(&[&scratch], &[]);
    unrecorded.owners.clear();
    let ops = plan(&want, &mounted(&[], &[]), &unrecorded);
    assert_eq!(verbs(&ops), ["claim-pod-dir other/u"]);
}

#[test]
fn teardown_deletes_data_only_of_an_empty_dir_and_escalates_only_nfs_unmounts() {
    use crate::model::op::{Contents, IfHung};
    let cases = [
        (Plugin::EmptyDir, IfHung::Wait, Contents::DeleteAll),
        (Plugin::HostPath, IfHung::Wait, Contents::KeepAny),
        (Plugin::LocalVolume, IfHung::Wait, Contents::KeepAny),
        (Plugin::Nfs, IfHung::ForceThenDetach, Contents::KeepAny),
    ];
    let nothing = desired(true, &[]);
    for (plugin, want_if_hung, want_contents) in cases {
        let gone = key("p0", plugin.clone(), "data");
        // Mounted: the unmount says what to do if it hangs.
        let ops = plan(&nothing, &mounted(&[&gone], &[]), &disk(&[&gone], &[]));
        let if_hung: Vec<IfHung> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Unmount { if_hung, .. } => Some(*if_hung),
                _ => None,
            })
            .collect();
        assert_eq!(if_hung, [want_if_hung], "{plugin}: {ops:?}");
        // Unmounted: the removal says what may go with the directory.
        let ops = plan(&nothing, &mounted(&[], &[]), &disk(&[&gone], &[]));
        let contents: Vec<Contents> = ops
            .iter()
            .filter_map(|op| match op {
                Op::RemoveVolumeDir { contents, .. } => Some(*contents),
                _ => None,
            })
            .collect();
        assert_eq!(contents, [want_contents], "{plugin}: {ops:?}");
    }
}
