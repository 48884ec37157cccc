//! Discovery (pure): what the first level of each class's `mount_dir` holds becomes the
//! PersistentVolumes this node offers, named so that a restart finds the same names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    LocalVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolume,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use super::config::{ClassConfig, LocalPvConfig, VolumeMode};
pub use crate::model::local_disk::{Entry, EntryKind};

/// The annotation upstream's provisioner sets; volumed deletes only PVs that carry its own.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// This node, as its PVs' affinity and labels need it.
pub struct Node<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// What discovery found: the PVs, and the entries it skipped with why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Discovered {
    pub volumes: Vec<PersistentVolume>,
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub storage_class: String,
    pub path: PathBuf,
    pub reason: String,
}

/// The PVs of every class from its scanned entries (`scans[i]` belongs to `config.classes[i]`);
/// `reclaim`: each StorageClass's reclaim policy, where it is known (default Delete).
pub fn discover(
    node: &Node<'_>,
    config: &LocalPvConfig,
    scans: &[Vec<Entry>],
    reclaim: &BTreeMap<String, String>,
) -> Discovered {
    let mut found = Discovered::default();
    for (class, entries) in config.classes.iter().zip(scans) {
        for entry in entries.iter().filter(|e| class.matches(&e.name)) {
            let host_path = class.host_dir.join(&entry.name);
            let skip = |reason: String| Skipped {
                storage_class: class.storage_class.clone(),
                path: host_path.clone(),
                reason,
            };
            let (capacity, block) = match &entry.kind {
                EntryKind::MountPoint { capacity_bytes } => (*capacity_bytes, false),
                EntryKind::BlockDevice { size_bytes } => (*size_bytes, true),
                EntryKind::NotMounted => {
                    found.skipped.push(skip("a directory that is not a mount point: its space would be the parent filesystem's; mount a disk there (or bind-mount the directory onto itself)".into()));
                    continue;
                }
                EntryKind::Other(what) => {
                    found.skipped.push(skip(format!(
                        "{what}, neither a mount point nor a block device"
                    )));
                    continue;
                }
            };
            if !block && class.volume_mode == VolumeMode::Block {
                found.skipped.push(skip(
                    "a mounted filesystem in a Block class: only block devices become Block PVs"
                        .into(),
                ));
                continue;
            }
            let Some(storage) = round_capacity(capacity) else {
                found.skipped.push(skip(format!(
                    "its capacity ({capacity} bytes) is below 1Mi"
                )));
                continue;
            };
            let reclaim = reclaim
                .get(&class.storage_class)
                .cloned()
                .unwrap_or_else(|| "Delete".into());
            found.volumes.push(volume(
                node, config, class, &host_path, block, storage, reclaim,
            ));
        }
    }
    found
        .volumes
        .sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    found
}

/// The PV's name: the same for the same node, host path and class, on every run; another
/// node's disk at the same path gets another name.
pub fn pv_name(node: &str, host_path: &Path, storage_class: &str) -> String {
    let key = format!("{node}\0{}\0{storage_class}", host_path.display());
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
    format!("local-pv-{}", &id.simple().to_string()[..12])
}

/// Whether `name` has the form `pv_name` gives (`local-pv-<12 hex digits>`).
pub fn is_local_pv_name(name: &str) -> bool {
    name.strip_prefix("local-pv-")
        .is_some_and(|hex| hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A capacity as upstream's provisioner states it: rounded down to whole GiB from 1 GiB on,
/// to whole MiB below; `None` below 1 MiB (too small to offer).
pub fn round_capacity(bytes: u64) -> Option<String> {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        b if b >= GIB => Some(format!("{}Gi", b / GIB)),
        b if b >= MIB => Some(format!("{}Mi", b / MIB)),
        _ => None,
    }
}

fn volume(
    node: &Node<'_>,
    config: &LocalPvConfig,
    class: &ClassConfig,
    host_path: &Path,
    block: bool,
    storage: String,
    reclaim: String,
) -> PersistentVolume {
    let copied: BTreeMap<String, String> = config
        .node_labels_for_pv
        .iter()
        .filter_map(|key| Some((key.clone(), node.labels.get(key)?.clone())))
        .collect();
    let mut labels = config.pv_labels.clone();
    labels.extend(copied.clone());
    let mut requirements = vec![NodeSelectorRequirement {
        key: HOSTNAME_LABEL.into(),
        operator: "In".into(),
        values: Some(vec![node.name.to_string()]),
    }];
    requirements.extend(
        copied
            .into_iter()
            .map(|(key, value)| NodeSelectorRequirement {
                key,
                operator: "In".into(),
                values: Some(vec![value]),
            }),
    );
    let filesystem_on_block = block && class.volume_mode == VolumeMode::Filesystem;
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(node.name, host_path, &class.storage_class)),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                format!("volumed-{}", node.name),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), Quantity(storage))])),
            access_modes: Some(class.access_modes.clone()),
            persistent_volume_reclaim_policy: Some(reclaim),
            storage_class_name: Some(class.storage_class.clone()),
            volume_mode: Some(
                if block && class.volume_mode == VolumeMode::Block {
                    "Block"
                } else {
                    "Filesystem"
                }
                .into(),
            ),
            local: Some(LocalVolumeSource {
                path: host_path.display().to_string(),
                fs_type: filesystem_on_block
                    .then(|| class.fs_type.clone().unwrap_or_else(|| "ext4".into())),
            }),
            node_affinity: Some(k8s_openapi::api::core::v1::VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(requirements),
                        ..NodeSelectorTerm::default()
                    }],
                }),
            }),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localpv::config::ConfigFile;

    fn config(text: &str) -> LocalPvConfig {
        ConfigFile::parse(text).unwrap().local_pv.unwrap()
    }

    const TWO_CLASSES: &str = r#"
[local_pv]
pv_labels = { team = "storage" }
node_labels_for_pv = ["zone", "missing"]
[[local_pv.classes]]
storage_class = "fast"
host_dir = "/mnt/disks"
mount_dir = "/host/mnt/disks"
name_pattern = "vol*, ssd*"
[[local_pv.classes]]
storage_class = "raw"
host_dir = "/mnt/raw"
volume_mode = "Block"
"#;

    #[test]
    fn capacities_round_down_as_upstream_states_them() {
        for (bytes, want) in [
            (1 << 30, Some("1Gi")),
            ((1 << 30) * 3 / 2, Some("1Gi")),
            ((1 << 30) - 1, Some("1023Mi")),
            (64 << 20, Some("64Mi")),
            ((1 << 20) - 1, None),
            (0, None),
        ] {
            assert_eq!(round_capacity(bytes).as_deref(), want, "{bytes}");
        }
    }

    #[test]
    fn names_are_stable_and_differ_by_node_path_and_class() {
        let name = pv_name("node-a", Path::new("/mnt/disks/vol1"), "fast");
        assert_eq!(
            name,
            pv_name("node-a", Path::new("/mnt/disks/vol1"), "fast")
        );
        assert!(name.starts_with("local-pv-") && name.len() == "local-pv-".len() + 12);
        assert!(is_local_pv_name(&name));
        assert!(!is_local_pv_name("local-pv-data") && !is_local_pv_name("pv-1"));
        for other in [
            pv_name("node-b", Path::new("/mnt/disks/vol1"), "fast"),
            pv_name("node-a", Path::new("/mnt/disks/vol2"), "fast"),
            pv_name("node-a", Path::new("/mnt/disks/vol1"), "slow"),
        ] {
            assert_ne!(name, other);
        }
        crate::model::names::check_object_name("pv", &name, false).unwrap();
    }

    #[test]
    fn entries_become_pvs_of_their_class_or_are_skipped_with_a_reason() {
        let config = config(TWO_CLASSES);
        let labels = BTreeMap::from([("zone".to_string(), "b".to_string())]);
        let node = Node {
            name: "node-a",
            labels: &labels,
        };
        let entry = |name: &str, kind| Entry {
            name: name.into(),
            kind,
        };
        let scans = vec![
            vec![
                entry(
                    "vol1",
                    EntryKind::MountPoint {
                        capacity_bytes: 10 << 30,
                    },
                ),
                entry(
                    "ssd0",
                    EntryKind::BlockDevice {
                        size_bytes: 100 << 30,
                    },
                ),
                entry("vol2", EntryKind::NotMounted),
                entry("vol3", EntryKind::Other("a regular file".into())),
                entry(
                    "other",
                    EntryKind::MountPoint {
                        capacity_bytes: 1 << 30,
                    },
                ),
            ],
            vec![
                entry(
                    "nvme0",
                    EntryKind::BlockDevice {
                        size_bytes: 2 << 30,
                    },
                ),
                entry(
                    "fs",
                    EntryKind::MountPoint {
                        capacity_bytes: 2 << 30,
                    },
                ),
            ],
        ];
        let reclaim = BTreeMap::from([("raw".to_string(), "Retain".to_string())]);
        let found = discover(&node, &config, &scans, &reclaim);
        let summary: BTreeMap<String, (String, String, String, String, Option<String>)> = found
            .volumes
            .iter()
            .map(|pv| {
                let spec = pv.spec.as_ref().unwrap();
                let local = spec.local.as_ref().unwrap();
                (
                    local.path.clone(),
                    (
                        spec.capacity.as_ref().unwrap()["storage"].0.clone(),
                        spec.volume_mode.clone().unwrap(),
                        spec.persistent_volume_reclaim_policy.clone().unwrap(),
                        spec.storage_class_name.clone().unwrap(),
                        local.fs_type.clone(),
                    ),
                )
            })
            .collect();
        let row = |c: &str, m: &str, r: &str, s: &str, f: Option<&str>| {
            (
                c.to_string(),
                m.to_string(),
                r.to_string(),
                s.to_string(),
                f.map(String::from),
            )
        };
        assert_eq!(
            summary,
            BTreeMap::from([
                (
                    "/mnt/disks/vol1".to_string(),
                    row("10Gi", "Filesystem", "Delete", "fast", None)
                ),
                (
                    "/mnt/disks/ssd0".to_string(),
                    row("100Gi", "Filesystem", "Delete", "fast", Some("ext4"))
                ),
                (
                    "/mnt/raw/nvme0".to_string(),
                    row("2Gi", "Block", "Retain", "raw", None)
                ),
            ])
        );
        let skipped: Vec<(String, &str)> = found
            .skipped
            .iter()
            .map(|s| {
                (
                    s.path.display().to_string(),
                    s.reason.split(':').next().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            skipped,
            [
                (
                    "/mnt/disks/vol2".to_string(),
                    "a directory that is not a mount point"
                ),
                (
                    "/mnt/disks/vol3".to_string(),
                    "a regular file, neither a mount point nor a block device"
                ),
                (
                    "/mnt/raw/fs".to_string(),
                    "a mounted filesystem in a Block class"
                ),
            ]
        );
        let pv = &found.volumes[0];
        let labels = pv.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("storage"));
        assert_eq!(labels.get("zone").map(String::as_str), Some("b"));
        assert!(
            !labels.contains_key("missing"),
            "a label the node lacks is not invented"
        );
        assert_eq!(
            pv.metadata.annotations.as_ref().unwrap()[PROVISIONED_BY],
            "volumed-node-a"
        );
        let terms = &pv
            .spec
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required
            .as_ref()
            .unwrap()
            .node_selector_terms;
        let keys: Vec<(&str, &[String])> = terms[0]
            .match_expressions
            .as_ref()
            .unwrap()
            .iter()
            .map(|r| (r.key.as_str(), r.values.as_deref().unwrap()))
            .collect();
        assert_eq!(
            keys,
            [
                (HOSTNAME_LABEL, &["node-a".to_string()][..]),
                ("zone", &["b".to_string()][..])
            ]
        );
    }
}
