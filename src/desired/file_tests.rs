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
    }
}

fn pod_names(source: &FileSource) -> (Vec<String>, bool) {
    let state = source.read_once(false).0;
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
    let state = source.read_once(false).0;
    assert!(!state.complete);
    assert!(
        state.problems[0].contains("new.yaml is being written"),
        "{:?}",
        state.problems
    );
}
