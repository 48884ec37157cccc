//! Tests of PodFs on a temp dir: targets, symlink refusal, removal rules, host path checks.

use std::os::unix::fs::symlink;

use super::*;
use crate::model::PathType;

fn setup() -> (tempfile::TempDir, PodFs) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let fs = PodFs::new(root.clone(), vec![root]);
    (dir, fs)
}

fn key(uid: &str, plugin: Plugin, name: &str) -> VolumeKey {
    VolumeKey::new(uid, plugin, name)
}

fn pod(uid: &str, name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

/// `prepare_target` for pod `default/pod-<uid>`.
fn prepare(fs: &PodFs, key: &VolumeKey, as_file: bool, mode: u32) -> Result<Target, HostError> {
    fs.prepare_target(
        key,
        &pod(&key.pod_uid, &format!("pod-{}", key.pod_uid)),
        as_file,
        mode,
    )
}

#[test]
fn targets_are_created_and_found_again_by_a_scan() {
    let (_dir, fs) = setup();
    let cache = key("u1", Plugin::EmptyDir, "cache");
    prepare(&fs, &cache, false, 0o777).unwrap();
    let file = key("u1", Plugin::HostPath, "sock");
    prepare(&fs, &file, true, 0o640).unwrap();
    assert!(cache.path(fs.root()).is_dir());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cache.path(fs.root()))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o777,
        "an emptyDir is world-writable whatever the umask"
    );
    assert!(file.path(fs.root()).is_file());
    let scanned = fs.scan().unwrap();
    assert_eq!(scanned.pods["u1"], BTreeSet::from([cache, file]));
    assert_eq!(
        scanned.owner("u1"),
        Some(&crate::model::on_disk::DirOwner::Pod(
            "default/pod-u1".into()
        ))
    );
    assert_eq!(fs.scan_pod("nobody").unwrap(), None);
}

#[test]
fn a_symlink_at_a_volume_path_is_refused_not_followed() {
    let (dir, fs) = setup();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let k = key("u1", Plugin::EmptyDir, "cache");
    std::fs::create_dir_all(k.path(fs.root()).parent().unwrap()).unwrap();
    symlink(&outside, k.path(fs.root())).unwrap();
    let err = prepare(&fs, &k, false, 0o777)
        .err()
        .expect("a symlink must be refused");
    assert!(err.to_string().contains("symlink"), "{err}");
    // Removal takes the link away without touching what it points to.
    std::fs::write(outside.join("keep"), "data").unwrap();
    fs.remove_volume_dir(&k, true, &[]).unwrap();
    assert!(outside.join("keep").exists());
}

#[test]
fn a_symlinked_pod_directory_is_refused() {
    let (dir, fs) = setup();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("volumes")).unwrap();
    std::fs::create_dir_all(fs.root().join("pods")).unwrap();
    symlink(&elsewhere, fs.root().join("pods/u1")).unwrap();
    let err = prepare(&fs, &key("u1", Plugin::EmptyDir, "x"), false, 0o777)
        .err()
        .unwrap();
    assert!(matches!(err, HostError::Unsafe { .. }), "{err}");
    assert!(!elsewhere.join("volumes/kubernetes.io~empty-dir").exists());
}

#[test]
fn empty_dir_contents_are_removed_but_other_volume_dirs_only_when_empty() {
    let (_dir, fs) = setup();
    let scratch = key("u1", Plugin::EmptyDir, "scratch");
    prepare(&fs, &scratch, false, 0o777).unwrap();
    let nested = scratch.path(fs.root()).join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(nested.join("f"), "x").unwrap();
    fs.remove_volume_dir(&scratch, true, &[]).unwrap();
    assert!(!scratch.path(fs.root()).exists());

    let local = key("u1", Plugin::LocalVolume, "pv1");
    prepare(&fs, &local, false, 0o750).unwrap();
    std::fs::write(local.path(fs.root()).join("precious"), "x").unwrap();
    let err = fs.remove_volume_dir(&local, false, &[]).unwrap_err();
    assert!(
        matches!(&err, HostError::NotEmpty { entries, .. } if entries == &["precious"]),
        "{err}"
    );
    assert!(local.path(fs.root()).join("precious").exists());
}

#[test]
fn nothing_is_removed_while_a_mount_is_at_or_below_the_volume() {
    let (_dir, fs) = setup();
    let scratch = key("u1", Plugin::EmptyDir, "scratch");
    prepare(&fs, &scratch, false, 0o777).unwrap();
    let mount = MountEntry {
        mount_id: 1,
        parent_id: 0,
        device: "0:1".into(),
        root: "/".into(),
        mount_point: scratch.path(fs.root()).join("inner"),
        fs_type: "tmpfs".into(),
        source: None,
        read_only: false,
        super_options: Default::default(),
        propagation: Default::default(),
    };
    let err = fs.remove_volume_dir(&scratch, true, &[mount]).unwrap_err();
    assert!(err.to_string().contains("still mounted"), "{err}");
    assert!(scratch.path(fs.root()).exists());
}

#[test]
fn a_pod_dir_is_removed_rmdir_style_and_unknown_content_is_reported() {
    let (_dir, fs) = setup();
    let k = key("u1", Plugin::HostPath, "logs");
    prepare(&fs, &k, false, 0o750).unwrap();
    fs.remove_volume_dir(&k, false, &[]).unwrap();
    std::fs::write(fs.root().join("pods/u1/etc-hosts"), "x").unwrap();
    let err = fs.remove_pod_dir("u1").unwrap_err();
    assert!(err.to_string().contains("etc-hosts"), "{err}");
    std::fs::remove_file(fs.root().join("pods/u1/etc-hosts")).unwrap();
    fs.remove_pod_dir("u1").unwrap();
    assert!(!fs.root().join("pods/u1").exists());
    fs.remove_pod_dir("u1").unwrap();
}

#[test]
fn host_paths_are_checked_by_type_and_created_when_asked() {
    let (dir, fs) = setup();
    let base = fs.root().to_path_buf();
    let made = base.join("made/deep");
    let source = fs
        .open_source(&made, PathType::DirectoryOrCreate, false, false)
        .unwrap();
    assert!(source.is_dir && made.is_dir());
    let file = base.join("made/file");
    assert!(
        !fs.open_source(&file, PathType::FileOrCreate, false, false)
            .unwrap()
            .is_dir
    );
    let wrong = fs
        .open_source(&file, PathType::Directory, false, false)
        .err()
        .unwrap();
    assert!(
        wrong
            .to_string()
            .contains("not a directory: found a regular file"),
        "{wrong}"
    );
    let missing = fs
        .open_source(&base.join("nope"), PathType::Directory, false, false)
        .err()
        .unwrap();
    assert!(missing.to_string().contains("found nothing"), "{missing}");
    assert!(fs
        .open_source(&base.join("nope"), PathType::Socket, false, false)
        .is_err());
    drop(dir);
}

#[test]
fn a_host_path_linking_outside_the_allowed_roots_is_refused() {
    let (_dir, fs) = setup();
    let link = fs.root().join("escape");
    symlink("/etc", &link).unwrap();
    let err = fs
        .open_source(&link, PathType::Directory, false, false)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("outside the allowed host path roots"),
        "{err}"
    );
}

#[test]
fn a_device_node_is_only_allowed_for_a_local_volume_outside_the_roots() {
    let (_dir, fs) = setup();
    // /dev/null is a character device: never a bind source outside the roots, whether or not
    // it is a local volume's path (only block devices get that exception).
    for local_device in [false, true] {
        let err = fs
            .open_source(
                Path::new("/dev/null"),
                PathType::Unchecked,
                local_device,
                false,
            )
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("outside the allowed host path roots"),
            "{local_device}: {err}"
        );
    }
}

#[test]
fn a_pod_dir_serves_only_the_pod_it_was_made_for_until_it_is_removed() {
    let (_dir, fs) = setup();
    let k = key("u1", Plugin::EmptyDir, "scratch");
    prepare(&fs, &k, false, 0o777).unwrap();
    let err = fs
        .prepare_target(&k, &pod("u1", "taker"), false, 0o777)
        .err()
        .expect("another pod with the same uid is refused");
    assert!(
        err.to_string().contains("belongs to pod default/pod-u1"),
        "{err}"
    );
    fs.remove_volume_dir(&k, true, &[]).unwrap();
    fs.remove_pod_dir("u1").unwrap();
    assert!(
        !fs.root().join("pods/u1").exists(),
        "the record goes with the directory"
    );
    fs.prepare_target(&k, &pod("u1", "taker"), false, 0o777)
        .expect("a fresh directory for the newcomer");
    // A directory from before owners were recorded is claimed by the pod that uses it.
    std::fs::remove_file(fs.root().join("pods/u1/volumed-owner")).unwrap();
    assert_eq!(
        fs.scan().unwrap().owner("u1"),
        Some(&crate::model::on_disk::DirOwner::Unrecorded)
    );
    fs.claim_pod_dir(&pod("u1", "taker")).unwrap();
    assert_eq!(
        std::fs::read_to_string(fs.root().join("pods/u1/volumed-owner")).unwrap(),
        "default/taker\n"
    );
}

#[test]
fn an_empty_owner_record_is_written_again_and_a_fifo_in_its_place_never_hangs() {
    let (_dir, fs) = setup();
    let k = key("u1", Plugin::EmptyDir, "scratch");
    let record = fs.root().join("pods/u1/volumed-owner");
    std::fs::create_dir_all(record.parent().unwrap()).unwrap();
    std::fs::write(&record, "").unwrap();
    prepare(&fs, &k, false, 0o777).expect("an empty record counts as none");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "default/pod-u1\n"
    );
    std::fs::remove_file(&record).unwrap();
    nix::unistd::mkfifo(&record, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let scanned = fs.scan().unwrap();
    assert!(
        matches!(scanned.owner("u1"), Some(crate::model::on_disk::DirOwner::Unreadable(why)) if why.contains("fifo")),
        "{:?}",
        scanned.owner("u1")
    );
}
