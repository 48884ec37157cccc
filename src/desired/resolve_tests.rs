//! Tests of pod-volume resolution: which pods are ours and what each volume needs.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::model::host_paths::HostPathPolicy;

fn node() -> NodeConfig {
    NodeConfig {
        name: "node-a".into(),
        labels: BTreeMap::new(),
        memory_bytes: None,
        host_paths: HostPathPolicy::new(
            vec![PathBuf::from("/srv"), PathBuf::from("/mnt/disks")],
            PathBuf::from("/var/lib/volumed"),
        ),
    }
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, uid: 11111111-2222-3333-4444-555555555555}
spec:
  nodeName: node-a
  containers: [{name: c, image: busybox}]
  volumes:
  - {name: cache, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
  - {name: scratch, emptyDir: {}}
  - {name: logs, hostPath: {path: /srv/logs, type: DirectoryOrCreate}}
  - {name: data, persistentVolumeClaim: {claimName: data, readOnly: true}}
  - {name: config, configMap: {name: settings}}
  - {name: missing, persistentVolumeClaim: {claimName: nope}}
  - {name: escape, hostPath: {path: /etc/shadow}}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere}
spec: {nodeName: node-b, containers: [], volumes: [{name: x, emptyDir: {}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: done}
spec: {containers: [], volumes: [{name: x, emptyDir: {}}]}
status: {phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata: {name: unscheduled}
spec: {containers: [], volumes: [{name: y, emptyDir: {}}]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: shop}
spec: {resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-1}
spec: {capacity: {storage: 2Gi}, local: {path: /mnt/disks/pv-1}}
"#;

fn resolved() -> DesiredState {
    let mut manifests = Manifests::default();
    manifests.add_file(Path::new("pods.yaml"), PODS);
    assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
    let bindings = Bindings {
        bound: BTreeMap::from([("shop/data".to_string(), "pv-1".to_string())]),
        pending: BTreeMap::new(),
        ..Bindings::default()
    };
    resolve(&manifests, &bindings, &node())
}

/// Why volume `name` waits ("" when it does not).
fn wait_reason(state: &DesiredState, name: &str) -> String {
    state
        .waiting
        .iter()
        .find(|w| w.volume_name == name)
        .map(|w| w.reason.clone())
        .unwrap_or_default()
}

fn spec_of(state: &DesiredState, volume: &str) -> MountSpec {
    let found = state.volumes.values().find(|v| v.volume_name == volume);
    found
        .unwrap_or_else(|| panic!("{volume} not desired: {state:#?}"))
        .spec
        .clone()
}

#[test]
fn only_non_terminal_pods_of_this_node_or_no_node_are_ours() {
    let state = resolved();
    let mut names: Vec<_> = state.pods.values().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["unscheduled", "web"]);
    assert!(state.pods.values().any(|p| p.name == "unscheduled"));
    assert!(!state
        .pods
        .values()
        .any(|p| p.name == "elsewhere" || p.name == "done"));
}

#[test]
fn each_supported_volume_kind_resolves_to_its_mount() {
    let state = resolved();
    assert_eq!(
        spec_of(&state, "cache"),
        MountSpec::Tmpfs {
            size_bytes: Some(64 << 20),
            sized_by: crate::model::TmpfsSize::SizeLimit,
        }
    );
    assert_eq!(spec_of(&state, "scratch"), MountSpec::Directory);
    assert_eq!(
        spec_of(&state, "logs"),
        MountSpec::Bind {
            source: "/srv/logs".into(),
            expect: PathType::DirectoryOrCreate,
            read_only: false
        }
    );
    assert_eq!(
        spec_of(&state, "data"),
        MountSpec::Local {
            path: "/mnt/disks/pv-1".into(),
            fs_type: "ext4".into(),
            mount_options: vec![],
            read_only: true
        }
    );
    let data = state
        .volumes
        .values()
        .find(|v| v.volume_name == "data")
        .unwrap();
    assert_eq!(data.key.plugin, Plugin::LocalVolume);
    assert_eq!(
        data.key.name, "pv-1",
        "a claim's volume is named after its PV"
    );
    assert_eq!(data.key.pod_uid, "11111111-2222-3333-4444-555555555555");
}

#[test]
fn volumes_that_cannot_be_set_up_wait_with_a_reason() {
    let state = resolved();
    let reason = |name: &str| {
        let w = state.waiting.iter().find(|w| w.volume_name == name);
        w.unwrap_or_else(|| panic!("{name} not waiting")).clone()
    };
    assert!(
        !reason("config").blocking,
        "configMap is not ours and does not block"
    );
    assert!(reason("missing")
        .reason
        .contains("shop/nope does not exist"));
    assert!(reason("escape")
        .reason
        .contains("outside the allowed host path roots"));
}

#[test]
fn a_pod_without_uid_gets_a_stable_derived_uid() {
    let first = resolved();
    let second = resolved();
    let uid = |s: &DesiredState| {
        s.pods
            .values()
            .find(|p| p.name == "unscheduled")
            .unwrap()
            .uid
            .clone()
    };
    assert_eq!(uid(&first), uid(&second));
    assert_eq!(uid(&first).len(), 36);
}

#[test]
fn nfs_volumes_resolve_with_checked_fields_or_wait_with_the_reason() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: files, uid: f-uid}
spec:
  containers: []
  volumes:
  - {name: ok, nfs: {server: nfs1.example.com, path: /exports/a, readOnly: true}}
  - {name: sneaky, nfs: {server: "-oexec", path: /exports/a}}
  - {name: spaced, nfs: {server: nfs1, path: "/a b"}}
  - {name: claim, persistentVolumeClaim: {claimName: shared}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: shared}
spec: {resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-nfs}
spec: {capacity: {storage: 1Gi}, mountOptions: [hard, "nfsvers=4.1,exec"], nfs: {server: nfs2, path: /exports/b}}
"#;
    let mut manifests = Manifests::default();
    manifests.add_file(Path::new("nfs.yaml"), text);
    assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
    let bindings = Bindings {
        bound: BTreeMap::from([("default/shared".to_string(), "pv-nfs".to_string())]),
        pending: BTreeMap::new(),
        ..Bindings::default()
    };
    let state = resolve(&manifests, &bindings, &node());
    assert_eq!(
        spec_of(&state, "ok"),
        MountSpec::Nfs {
            server: "nfs1.example.com".into(),
            path: "/exports/a".into(),
            options: vec![],
            read_only: true
        }
    );
    let reason = |name: &str| wait_reason(&state, name);
    assert!(
        reason("sneaky").contains("NFS server"),
        "{}",
        reason("sneaky")
    );
    assert!(
        reason("spaced").contains("NFS export path"),
        "{}",
        reason("spaced")
    );
    assert!(
        reason("claim").contains("pv-nfs") && reason("claim").contains("contains ','"),
        "{}",
        reason("claim")
    );
}

#[test]
fn a_claim_used_against_its_volume_mode_waits_with_the_reason() {
    let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: db, uid: db-uid}
spec:
  containers:
  - name: c
    image: x
    volumeMounts: [{name: raw, mountPath: /raw}]
    volumeDevices: [{name: files, devicePath: /dev/xvda}]
  volumes:
  - {name: raw, persistentVolumeClaim: {claimName: raw}}
  - {name: files, persistentVolumeClaim: {claimName: files}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: raw}
spec: {volumeMode: Block}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: files}
spec: {}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-raw}
spec: {volumeMode: Block, local: {path: /dev/sdb}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-files}
spec: {local: {path: /mnt/disks/files}}
"#;
    let mut manifests = Manifests::default();
    manifests.add_file(Path::new("modes.yaml"), text);
    assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
    let bindings = Bindings {
        bound: BTreeMap::from([
            ("default/raw".to_string(), "pv-raw".to_string()),
            ("default/files".to_string(), "pv-files".to_string()),
        ]),
        pending: BTreeMap::new(),
        ..Bindings::default()
    };
    let state = resolve(&manifests, &bindings, &node());
    assert!(state.volumes.is_empty(), "{:#?}", state.volumes);
    let reason = |name: &str| wait_reason(&state, name);
    assert!(
        reason("raw").contains("use volumeDevices"),
        "{}",
        reason("raw")
    );
    assert!(
        reason("files").contains("use volumeMounts"),
        "{}",
        reason("files")
    );
}

#[test]
fn a_node_name_no_pod_uses_is_doubted_when_pods_named_elsewhere_live_here() {
    let mut manifests = Manifests::default();
    manifests.add_file(Path::new("pods.yaml"), PODS);
    let web_uid = "11111111-2222-3333-4444-555555555555";
    let here = |uid: &str| uid == web_uid;
    assert_eq!(
        unknown_node_name(&manifests, &node(), here),
        None,
        "node-a is named"
    );
    let elsewhere = NodeConfig {
        name: "host-1".into(),
        ..node()
    };
    let doubt = unknown_node_name(&manifests, &elsewhere, here).expect("no pod names host-1");
    assert!(
        doubt.contains("host-1") && doubt.contains("node-a, node-b") && doubt.contains("shop/web"),
        "{doubt}"
    );
    // Pods named for other nodes with no directory here were deleted, not misnamed.
    assert_eq!(unknown_node_name(&manifests, &elsewhere, |_| false), None);
    let mut unpinned = Manifests::default();
    unpinned.add_file(
        Path::new("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
    );
    assert_eq!(unknown_node_name(&unpinned, &elsewhere, |_| true), None);
}

#[test]
fn a_host_path_every_container_mounts_read_only_is_bound_read_only() {
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: agent, uid: agent-uid}
spec:
  nodeName: node-a
  containers:
  - {name: a, image: x, volumeMounts: [{name: ro, mountPath: /ro, readOnly: true}, {name: mixed, mountPath: /m, readOnly: true}]}
  - {name: b, image: x, volumeMounts: [{name: mixed, mountPath: /m}]}
  volumes:
  - {name: ro, hostPath: {path: /srv/ro}}
  - {name: mixed, hostPath: {path: /srv/mixed}}
  - {name: unused, hostPath: {path: /srv/unused}}
"#;
    let mut manifests = Manifests::default();
    manifests.add_file(Path::new("agent.yaml"), pods);
    let state = resolve(&manifests, &Bindings::default(), &node());
    let read_only = |volume: &str| match spec_of(&state, volume) {
        MountSpec::Bind { read_only, .. } => read_only,
        other => panic!("{other:?}"),
    };
    assert!(read_only("ro"));
    assert!(!read_only("mixed"), "one container writes it");
    assert!(!read_only("unused"));
}

#[test]
fn a_read_write_once_pod_claim_used_by_two_pods_is_given_to_neither() {
    let text = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: solo, namespace: shop}
spec: {accessModes: [ReadWriteOncePod], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: one, namespace: shop}
spec: {nodeName: node-a, containers: [], volumes: [{name: d, persistentVolumeClaim: {claimName: solo}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: two, namespace: shop}
spec: {nodeName: node-a, containers: [], volumes: [{name: d, persistentVolumeClaim: {claimName: solo}}]}
"#;
    let mut manifests = Manifests::default();
    manifests.add_file(
        Path::new("rwop.yaml"),
        &(text.to_string() + &PODS[PODS.rfind("---").unwrap()..]),
    );
    let bindings = Bindings {
        bound: BTreeMap::from([("shop/solo".to_string(), "pv-1".to_string())]),
        pending: BTreeMap::new(),
        ..Bindings::default()
    };
    let state = resolve(&manifests, &bindings, &node());
    let waits: Vec<&WaitingVolume> = state
        .waiting
        .iter()
        .filter(|w| w.volume_name == "d")
        .collect();
    assert_eq!(waits.len(), 2, "{:#?}", state.waiting);
    for wait in waits {
        assert!(
            wait.reason.contains("ReadWriteOncePod")
                && wait.reason.contains("shop/one and shop/two"),
            "{}",
            wait.reason
        );
        assert!(
            wait.origin
                .as_deref()
                .is_some_and(|o| o.starts_with("rwop.yaml:")),
            "{wait:?}"
        );
    }
}
