//! Tests of the file source's guard against half-written manifests: each of its two signs
//! (inotify's "modified, not closed" and the kernel's "open for writing") on its own.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::desired::binding_store::BindingStore;
use crate::model::host_paths::HostPathPolicy;

fn pod(name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{nodeName: n1, containers: []}}\n")
}

fn source(dir: &Path) -> FileSource {
    FileSource {
        dir: dir.join("manifests"),
        node: NodeConfig {
            name: "n1".into(),
            labels: Default::default(),
            memory_bytes: None,
            host_paths: HostPathPolicy::new(vec![dir.to_path_buf()], dir.join("root")),
        },
        store: BindingStore::new(&dir.join("root")),
        record_bindings: false,
        resync: Duration::from_secs(60),
        root_dir: dir.join("root"),
        memory: Default::default(),
        local_disks: None,
        volumes_out: None,
        reread: Default::default(),
    }
}

fn pod_names(source: &FileSource) -> (Vec<String>, bool) {
    let state = source.read_once(None, false).state;
    let mut names: Vec<String> = state.pods.values().map(|p| p.name.clone()).collect();
    names.sort();
    (names, state.complete)
}

fn setup() -> (tempfile::TempDir, FileSource, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    std::fs::create_dir_all(&source.dir).unwrap();
    std::fs::write(source.dir.join("a.yaml"), pod("a")).unwrap();
    std::fs::write(source.dir.join("b.yaml"), pod("b")).unwrap();
    let b = source.dir.join("b.yaml");
    assert_eq!(pod_names(&source), (vec!["a".into(), "b".into()], true));
    (dir, source, b)
}

#[test]
fn a_file_held_open_for_writing_keeps_its_last_complete_content_until_closed() {
    let (_dir, source, b) = setup();
    // ( exec > b.yaml; ... ): truncated and held open.
    let mut writer = std::fs::File::create(&b).unwrap();
    assert_eq!(pod_names(&source), (vec!["a".into(), "b".into()], true));
    std::io::Write::write_all(&mut writer, pod("c").as_bytes()).unwrap();
    assert_eq!(
        pod_names(&source).0,
        ["a", "b"],
        "not even new content counts before the close"
    );
    drop(writer);
    assert_eq!(pod_names(&source), (vec!["a".into(), "c".into()], true));
    // Emptied and closed: acted on.
    std::fs::File::create(&b).unwrap();
    assert_eq!(pod_names(&source), (vec!["a".into()], true));
}

#[test]
fn where_the_kernel_cannot_tell_a_file_modified_and_not_closed_keeps_its_last_content() {
    let (_dir, mut source, b) = setup();
    source.memory.open_for_writing = |_| None;
    // inotify saw a modify and no close-write yet.
    std::fs::write(&b, "").unwrap();
    lock(&source.memory.writing).insert(b.clone());
    assert_eq!(pod_names(&source), (vec!["a".into(), "b".into()], true));
    lock(&source.memory.writing).remove(&b);
    assert_eq!(pod_names(&source), (vec!["a".into()], true));
}

#[test]
fn the_kernels_answer_wins_over_a_stale_modify_that_no_close_followed() {
    let (_dir, source, b) = setup();
    // truncate -s 0 b.yaml: a modify, and no open or close to follow it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(0)
        .unwrap();
    lock(&source.memory.writing).insert(b.clone());
    assert_eq!(pod_names(&source), (vec!["a".into()], true));
    assert!(
        lock(&source.memory.writing).is_empty(),
        "the stale entry is dropped"
    );
}

#[test]
fn a_file_being_written_with_no_complete_version_makes_the_read_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    std::fs::create_dir_all(&source.dir).unwrap();
    let _writer = std::fs::File::create(source.dir.join("new.yaml")).unwrap();
    let state = source.read_once(None, false).state;
    assert!(!state.complete);
    assert!(
        state.problems[0].contains("new.yaml is being written"),
        "{:?}",
        state.problems
    );
}

#[tokio::test]
async fn a_directory_replaced_by_an_empty_one_tears_nothing_down_until_files_come() {
    let (dir, source, _) = setup();
    let manifests = source.dir.clone();
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(DesiredState::default()));
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(source.run(tx, cancel.clone()));
    let until = |rx: &mut tokio::sync::watch::Receiver<Arc<DesiredState>>,
                 what: &'static str,
                 done: fn(&DesiredState) -> bool| {
        let mut rx = rx.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| done(s)))
                .await
                .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
                .map(|s| (**s).clone())
                .unwrap()
        }
    };
    until(&mut rx, "a and b listed", |s| {
        s.complete && s.pods.len() == 2
    })
    .await;
    // rm -rf manifests && mkdir manifests ... and the copy has not begun.
    std::fs::remove_dir_all(&manifests).unwrap();
    std::fs::create_dir(&manifests).unwrap();
    let held = until(&mut rx, "the empty replacement is doubted", |s| {
        s.problems
            .iter()
            .any(|p| p.contains("replaced by one with no manifests"))
    })
    .await;
    assert!(!held.complete);
    std::fs::write(manifests.join("a.yaml"), pod("a")).unwrap();
    let back = until(&mut rx, "the copied file is read", |s| s.complete).await;
    assert_eq!(back.pods.len(), 1);
    cancel.cancel();
    running.await.unwrap().unwrap();
    drop(dir);
}

#[test]
fn a_pod_the_api_server_would_refuse_does_not_hold_back_other_pods_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    std::fs::create_dir_all(&source.dir).unwrap();
    std::fs::create_dir_all(dir.path().join("disk")).unwrap();
    let storage = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv1}}\nspec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], local: {{path: {}/disk}}}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec: {{nodeName: n1, containers: [], volumes: [{{name: d, persistentVolumeClaim: {{claimName: data}}}}]}}\n",
        dir.path().display()
    );
    std::fs::write(source.dir.join("app.yaml"), storage).unwrap();
    std::fs::write(source.dir.join("bad.yaml"), pod("Bad")).unwrap();
    let state = source.read_once(None, false).state;
    assert!(
        !state.complete,
        "the refused pod is a problem: {:?}",
        state.problems
    );
    assert!(
        state.problems.iter().any(|p| p.contains("bad.yaml:1")),
        "{:?}",
        state.problems
    );
    assert!(
        state
            .volumes
            .values()
            .any(|v| v.pv_name.as_deref() == Some("pv1")),
        "the other pod's claim is bound all the same: {:#?}",
        state.waiting
    );
}

fn claim(name: &str) -> String {
    format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec: {{accessModes: [ReadWriteOnce], storageClassName: local, resources: {{requests: {{storage: 1Gi}}}}}}\n")
}

fn volume(name: &str, path: &Path) -> String {
    format!("apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], storageClassName: local, local: {{path: {}}}}}\n", path.display())
}

fn pod_using(name: &str, claim: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: u-{name}}}\nspec: {{nodeName: n1, containers: [], volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]}}\n")
}

#[test]
fn a_deleted_claims_volume_is_released_only_from_a_complete_read_that_may_release() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = source(dir.path());
    source.record_bindings = true;
    // A cleaner listens: each read hands on the volumes it knows.
    let (volumes_out, _volumes) = tokio::sync::watch::channel(Default::default());
    source.volumes_out = Some(volumes_out);
    std::fs::create_dir_all(&source.dir).unwrap();
    std::fs::create_dir_all(dir.path().join("disk")).unwrap();
    std::fs::write(
        source.dir.join("pv.yaml"),
        volume("pv-a", &dir.path().join("disk")),
    )
    .unwrap();
    std::fs::write(source.dir.join("claim.yaml"), claim("data")).unwrap();
    std::fs::write(source.dir.join("pod.yaml"), pod_using("app", "data")).unwrap();
    let first = source.settled(None, true);
    assert!(first.state.complete, "{:?}", first.state.problems);
    assert_eq!(
        source.store.load().unwrap().bindings["default/data"],
        "pv-a"
    );

    // The claim's manifest goes while a pod still uses it: nothing released.
    std::fs::remove_file(source.dir.join("claim.yaml")).unwrap();
    let read = source.settled(Some(&first.state), true);
    assert!(read.state.complete, "{:?}", read.state.problems);
    assert!(read.gone.is_empty());
    assert!(source.store.load().unwrap().released.is_empty());

    // The pod goes too, but the directory may still be filling (it was replaced): kept.
    std::fs::remove_file(source.dir.join("pod.yaml")).unwrap();
    let read = source.settled(Some(&first.state), false);
    assert!(read.state.complete, "{:?}", read.state.problems);
    assert!(read.gone.is_empty());
    assert_eq!(
        source.store.load().unwrap().bindings["default/data"],
        "pv-a"
    );

    // The directory is empty for a moment (a filesystem not mounted yet): complete, but it
    // releases nothing.
    let parked = dir.path().join("parked");
    std::fs::rename(&source.dir, &parked).unwrap();
    std::fs::create_dir_all(&source.dir).unwrap();
    let read = source.settled(None, true);
    assert!(read.state.complete, "{:?}", read.state.problems);
    assert!(read.gone.is_empty());
    assert!(source.store.load().unwrap().released.is_empty());
    std::fs::remove_dir(&source.dir).unwrap();
    std::fs::rename(&parked, &source.dir).unwrap();

    // Read as the real thing: released, and the Released volume is handed on.
    let read = source.settled(Some(&first.state), true);
    let recorded = source.store.load().unwrap();
    assert!(recorded.bindings.is_empty(), "{recorded:?}");
    assert_eq!(recorded.released["pv-a"].claim, "default/data");
    assert_eq!(
        recorded.released["pv-a"].reclaim_policy, None,
        "released with the policy its manifest gives (none)"
    );
    assert_eq!(read.gone.len(), 1);
    assert_eq!(read.volumes.len(), 1);

    // A claim of the same name made again does not get the old data back.
    std::fs::write(source.dir.join("claim.yaml"), claim("data")).unwrap();
    let read = source.settled(Some(&first.state), true);
    assert!(
        read.state.waiting.is_empty() && read.state.problems.is_empty(),
        "{:?}",
        read.state
    );
    let recorded = source.store.load().unwrap();
    assert!(
        !recorded.bindings.contains_key("default/data"),
        "{recorded:?}"
    );
    assert_eq!(recorded.released["pv-a"].claim, "default/data");
}

#[test]
fn a_volume_is_released_with_the_policy_it_was_bound_with() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = source(dir.path());
    source.record_bindings = true;
    std::fs::create_dir_all(&source.dir).unwrap();
    std::fs::create_dir_all(dir.path().join("disk")).unwrap();
    // As discovery makes it from its StorageClass: Retain while the class says so, Delete
    // (the default) once the class's manifest is gone.
    let as_discovered = |policy: &str| {
        volume("pv-d", &dir.path().join("disk")).replace(
            "storageClassName: local,",
            &format!("storageClassName: local, persistentVolumeReclaimPolicy: {policy},"),
        )
    };
    std::fs::write(source.dir.join("pv.yaml"), as_discovered("Retain")).unwrap();
    let class = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: local}\nprovisioner: kubernetes.io/no-provisioner\nreclaimPolicy: Retain\n";
    std::fs::write(
        source.dir.join("app.yaml"),
        format!("{}---\n{class}", claim("data")),
    )
    .unwrap();
    assert!(source.settled(None, true).state.complete);
    let recorded = source.store.load().unwrap();
    assert_eq!(recorded.bindings["default/data"], "pv-d");
    assert_eq!(recorded.policies["pv-d"], "Retain");
    // The claim goes, and its Retain StorageClass with it: the disk now reads as Delete.
    std::fs::remove_file(source.dir.join("app.yaml")).unwrap();
    std::fs::write(source.dir.join("pv.yaml"), as_discovered("Delete")).unwrap();
    source.settled(None, true);
    let recorded = source.store.load().unwrap();
    let released = &recorded.released["pv-d"];
    assert_eq!(released.claim, "default/data");
    assert_eq!(released.reclaim_policy.as_deref(), Some("Retain"));
    assert!(!released.deletes() && recorded.policies.is_empty());
}

/// A local PV on n1 of 1Gi; `claim_ref` reserves it for claim `default/<claim_ref>`.
fn local_pv(name: &str, dir: &Path, claim_ref: Option<&str>) -> String {
    let claim_ref = claim_ref.map_or(String::new(), |c| {
        format!("  claimRef: {{namespace: default, name: {c}}}\n")
    });
    format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n{claim_ref}  local: {{path: {}}}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions:\n        - {{key: kubernetes.io/hostname, operator: In, values: [n1]}}\n",
        dir.display()
    )
}

fn claim_naming(name: &str, volume_name: Option<&str>) -> String {
    let volume_name = volume_name.map_or(String::new(), |v| format!("  volumeName: {v}\n"));
    format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n{volume_name}  resources: {{requests: {{storage: 1Gi}}}}\n")
}

#[test]
fn a_binding_the_manifests_name_is_recorded_from_one_read_and_a_chosen_one_waits_for_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = source(dir.path());
    source.record_bindings = true;
    std::fs::create_dir_all(&source.dir).unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let docs = [
        local_pv("pv-named", &disk, None),
        claim_naming("named", Some("pv-named")),
        local_pv("pv-reserved", &disk, Some("reserved")),
        claim_naming("reserved", None),
    ];
    std::fs::write(source.dir.join("bound.yaml"), docs.join("---\n")).unwrap();
    let read = source.read_once(None, true);
    assert!(read.state.complete, "{:?}", read.state.problems);
    assert!(!read.records, "nothing is left to record after this read");
    let recorded = source.store.load().unwrap().bindings;
    assert_eq!(
        recorded.get("default/named").map(String::as_str),
        Some("pv-named")
    );
    assert_eq!(
        recorded.get("default/reserved").map(String::as_str),
        Some("pv-reserved")
    );

    let docs = [local_pv("pv-free", &disk, None), claim_naming("free", None)];
    std::fs::write(source.dir.join("free.yaml"), docs.join("---\n")).unwrap();
    let read = source.read_once(None, true);
    assert!(
        read.records,
        "the binder chose pv-free: a second read must agree first"
    );
    assert!(!source
        .store
        .load()
        .unwrap()
        .bindings
        .contains_key("default/free"));
    source.read_once(Some(&read.gone), true);
    assert_eq!(
        source.store.load().unwrap().bindings["default/free"],
        "pv-free",
        "recorded once agreed"
    );
}

#[test]
fn at_start_a_read_loses_something_only_when_a_pod_directory_has_no_pod() {
    let (dir, source, b) = setup();
    let state = source.read_once(None, false).state;
    assert!(!source.loses_pod_dirs(&state), "no pod directories yet");
    let uid = &state.pods.values().find(|p| p.name == "b").unwrap().uid;
    std::fs::create_dir_all(dir.path().join("root/pods").join(uid)).unwrap();
    assert!(!source.loses_pod_dirs(&state));
    std::fs::remove_file(&b).unwrap();
    let state = source.read_once(None, false).state;
    assert!(
        source.loses_pod_dirs(&state),
        "pod b's directory has no pod now"
    );
}

#[test]
fn a_file_rewritten_at_once_with_the_same_size_is_read_again_not_taken_from_the_cache() {
    let (_dir, source, b) = setup();
    // Same length, within the same timestamp tick as the read before: only the content
    // tells the versions apart, so the cache must not vouch for it.
    for name in ["c", "d", "e"] {
        std::fs::write(&b, pod(name)).unwrap();
        assert_eq!(pod_names(&source), (vec!["a".into(), name.into()], true));
    }
}

thread_local! {
    /// The waits `settled` asked for on this thread (see `counting_pause`).
    static PAUSES: std::cell::RefCell<Vec<Duration>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn counting_pause(wait: Duration) {
    PAUSES.with(|p| p.borrow_mut().push(wait));
}

/// A start-up read that would lose pod b, whose directory is under the root dir.
fn losing_pod_b() -> (tempfile::TempDir, FileSource) {
    let (dir, mut source, b) = setup();
    let state = source.read_once(None, false).state;
    let uid = &state.pods.values().find(|p| p.name == "b").unwrap().uid;
    std::fs::create_dir_all(dir.path().join("root/pods").join(uid)).unwrap();
    std::fs::remove_file(&b).unwrap();
    source.memory.pause = counting_pause;
    PAUSES.with(|p| p.borrow_mut().clear());
    (dir, source)
}

#[test]
fn a_read_that_loses_a_pod_right_after_a_change_waits_for_a_second_read() {
    let (_dir, source) = losing_pod_b();
    let before = reads(&source);
    let read = source.settled(None, true);
    assert!(!source.quiet(read.began), "b.yaml was removed just now");
    assert_eq!(
        PAUSES.with(|p| p.borrow().clone()),
        [SETTLE],
        "one wait, then the second read agreed"
    );
    // a.yaml changed within a timestamp tick of the first read: only a read can vouch for it.
    assert_eq!(reads(&source) - before, 2, "no second read");
    assert_eq!(read.state.pods.len(), 1);
}

#[test]
fn a_read_that_loses_a_pod_whose_inputs_were_still_for_the_settle_window_needs_no_second_read() {
    let (_dir, mut source) = losing_pod_b();
    // Every file time now lies more than SETTLE in the past.
    source.memory.clock = || SystemTime::now() + SETTLE + RACY_WINDOW + Duration::from_secs(1);
    let read = source.settled(None, true);
    assert!(source.quiet(read.began));
    assert!(PAUSES.with(|p| p.borrow().is_empty()), "no wait");
    assert!(read.state.complete);
    assert_eq!(read.state.pods.len(), 1);
    // A file being written (inotify's sign) is not still, whatever its times say.
    lock(&source.memory.writing).insert(source.dir.join("a.yaml"));
    assert!(!source.quiet(SystemTime::now() + Duration::from_secs(10)));
    lock(&source.memory.writing).clear();
    assert!(source.quiet(SystemTime::now() + Duration::from_secs(10)));
}

thread_local! {
    /// How far `advancing_clock` runs ahead of the wall clock; each `advancing_pause` adds
    /// its wait, as if it had slept.
    static AHEAD: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
    /// A file and what the first `advancing_pause` writes into it (`None`: removes it): a
    /// change during the wait.
    static DURING_THE_PAUSE: std::cell::RefCell<Option<(PathBuf, Option<String>)>> = const { std::cell::RefCell::new(None) };
}

fn advancing_clock() -> SystemTime {
    SystemTime::now() + AHEAD.get()
}

fn advancing_pause(wait: Duration) {
    counting_pause(wait);
    AHEAD.set(AHEAD.get() + wait);
    match DURING_THE_PAUSE.take() {
        Some((path, Some(text))) => std::fs::write(path, text).unwrap(),
        Some((path, None)) => std::fs::remove_file(path).unwrap(),
        None => {}
    }
}

/// `losing_pod_b`, read at a time when a.yaml's last change lies well in the past but the
/// removal of b.yaml (the directory's change) lies within the settle window.
fn losing_pod_b_soon_after() -> (tempfile::TempDir, FileSource) {
    let (dir, mut source) = losing_pod_b();
    AHEAD.set(RACY_WINDOW + Duration::from_millis(50));
    source.memory.clock = advancing_clock;
    source.memory.pause = advancing_pause;
    (dir, source)
}

fn reads(source: &FileSource) -> u64 {
    source
        .memory
        .reads
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn inputs_still_as_the_first_read_found_them_after_the_wait_need_no_second_read() {
    let (_dir, source) = losing_pod_b_soon_after();
    let before = reads(&source);
    let read = source.settled(None, true);
    assert!(
        !source.quiet(read.began),
        "b.yaml was removed within the window"
    );
    assert_eq!(PAUSES.with(|p| p.borrow().clone()), [SETTLE], "one wait");
    assert_eq!(reads(&source) - before, 1, "and no second read");
    assert!(read.state.complete);
    assert_eq!(read.state.pods.len(), 1);
}

#[test]
fn a_file_changed_during_the_wait_is_read_again_and_the_change_counts() {
    let (_dir, source) = losing_pod_b_soon_after();
    // A new length: told apart even where file times are coarse.
    DURING_THE_PAUSE.set(Some((source.dir.join("a.yaml"), Some(pod("cc")))));
    let before = reads(&source);
    let read = source.settled(None, true);
    let names: Vec<&str> = read.state.pods.values().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["cc"], "the first read's a.yaml was acted on");
    assert_eq!(reads(&source) - before, 2, "read again after the wait");
}

#[test]
fn a_file_added_during_the_wait_is_read_again() {
    let (_dir, source) = losing_pod_b_soon_after();
    DURING_THE_PAUSE.set(Some((source.dir.join("d.yaml"), Some(pod("d")))));
    let read = source.settled(None, true);
    let mut names: Vec<&str> = read.state.pods.values().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "d"]);
}

#[test]
fn a_binding_record_removed_during_the_wait_is_read_again() {
    let (_dir, source) = losing_pod_b_soon_after();
    std::fs::create_dir_all(source.store.path().parent().unwrap()).unwrap();
    source.store.update(|_| (true, ())).unwrap();
    DURING_THE_PAUSE.set(Some((source.store.path().to_path_buf(), None)));
    let before = reads(&source);
    source.settled(None, true);
    assert_eq!(
        reads(&source) - before,
        2,
        "the record's removal went unseen"
    );
}

#[test]
fn a_file_removed_during_the_wait_is_read_again() {
    let (_dir, source) = losing_pod_b_soon_after();
    DURING_THE_PAUSE.set(Some((source.dir.join("a.yaml"), None)));
    let before = reads(&source);
    let read = source.settled(None, true);
    assert!(reads(&source) - before >= 2, "not read again");
    assert!(read.state.pods.is_empty(), "{:?}", read.state.pods);
}

#[test]
fn a_read_of_many_files_parsed_on_several_threads_keeps_the_directory_order() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(dir.path());
    std::fs::create_dir_all(&source.dir).unwrap();
    let files = PARSE_IN_PARALLEL_FROM * 2;
    for i in 0..files {
        std::fs::write(
            source.dir.join(format!("{i:04}.yaml")),
            pod(&format!("p{i}")),
        )
        .unwrap();
    }
    // The same pod defined again in the last file: the second definition is the one reported.
    std::fs::write(source.dir.join("9999.yaml"), pod("p0")).unwrap();
    let state = source.read_once(None, false).state;
    assert_eq!(state.pods.len(), files);
    assert_eq!(state.problems.len(), 1, "{:?}", state.problems);
    assert!(
        state.problems[0].contains("9999.yaml"),
        "{:?}",
        state.problems
    );
    let squares = map_maybe_in_parallel((0..1000).collect(), true, |i: u64| i * i);
    assert_eq!(squares, (0..1000).map(|i| i * i).collect::<Vec<_>>());
}
