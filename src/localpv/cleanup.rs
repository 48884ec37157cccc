//! Release and cleanup (pure decisions): which Released PVs volumed may clean, and whether a
//! volume is still in use. The cleaning itself is `host::local_dirs`; the publisher runs it.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::PersistentVolume;
use serde::{Deserialize, Serialize};

use super::config::{LocalPvConfig, VolumeMode};
use super::discover::{pv_name, PROVISIONED_BY};
#[cfg(test)]
use crate::model::mountinfo::{other_mount_of, MountEntry};

/// A released PV to clean: which class's `mount_dir` entry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub pv: String,
    pub class: usize,
    /// The entry's name in the class's `mount_dir`.
    pub entry: String,
    pub block: bool,
}

/// Cleanups begun and not yet finished (`<root>/state/localpv-cleanups.json`): a restart
/// resumes them (whether or not the PV still exists), and a disk being cleaned is not
/// published again meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// By PV name.
    pub cleaning: BTreeMap<String, Cleaning>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleaning {
    pub host_path: PathBuf,
    pub class: String,
    pub entry: String,
    pub block: bool,
    /// The disk is clean; only the PV's deletion is left.
    pub cleaned: bool,
    /// Why the last try to clean it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The Released PVs this node's volumed made whose reclaim policy is Delete and whose path is
/// an entry of a configured class's `host_dir`; and, for the others volumed made, why not.
pub fn releases(
    node: &str,
    config: &LocalPvConfig,
    volumes: &[PersistentVolume],
) -> (Vec<Release>, Vec<String>) {
    let ours = format!("volumed-{node}");
    let (mut found, mut refused) = (Vec::new(), Vec::new());
    for pv in volumes {
        let annotations = pv.metadata.annotations.as_ref();
        if annotations.and_then(|a| a.get(PROVISIONED_BY)) != Some(&ours) {
            continue;
        }
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let spec = pv.spec.as_ref();
        let delete =
            spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        if !released || !delete || pv.metadata.deletion_timestamp.is_some() {
            continue; // Retain: left alone; being deleted: done already.
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        let Some(path) = spec
            .and_then(|s| s.local.as_ref())
            .map(|l| PathBuf::from(&l.path))
        else {
            refused.push(format!("{name} has no local path; it is not cleaned"));
            continue;
        };
        let class = spec
            .and_then(|s| s.storage_class_name.as_deref())
            .unwrap_or("");
        let place = config.classes.iter().enumerate().find_map(|(index, c)| {
            (c.storage_class == class)
                .then(|| Some((index, c, entry_of(&c.host_dir, &path)?)))
                .flatten()
        });
        let Some((index, class_config, entry)) = place else {
            refused.push(format!("{name}: {} is not directly in the host_dir of a configured class {class}; it is not cleaned", path.display()));
            continue;
        };
        if name != pv_name(node, &path, class) {
            refused.push(format!(
                "{name} is not the name volumed gives {}; it is not cleaned",
                path.display()
            ));
            continue;
        }
        let block = spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block")
            || (class_config.volume_mode == VolumeMode::Block);
        if !block
            && spec
                .and_then(|s| s.local.as_ref())
                .is_some_and(|l| l.fs_type.is_some())
        {
            refused.push(format!("{name} is a filesystem volumed made on the block device {}: wiping such a device is not built yet, so it stays Released", path.display()));
            continue;
        }
        found.push(Release {
            pv: name,
            class: index,
            entry,
            block,
        });
    }
    (found, refused)
}

/// The PVs this node's volumed made whose disk discovery no longer finds (unmounted, removed):
/// never deleted for it, only reported, and in use again when the disk returns.
pub fn vanished(
    node: &str,
    volumes: &[PersistentVolume],
    found_paths: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    let ours = format!("volumed-{node}");
    volumes
        .iter()
        .filter(|pv| {
            pv.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PROVISIONED_BY))
                == Some(&ours)
                && pv.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|pv| {
            let path = &pv.spec.as_ref()?.local.as_ref()?.path;
            (!found_paths.contains(path))
                .then(|| pv.metadata.name.clone())
                .flatten()
        })
        .collect()
}

/// The single normal component of `path` below `dir`, if `path` is `dir/<name>`.
fn entry_of(dir: &Path, path: &Path) -> Option<String> {
    let rest = path.strip_prefix(dir).ok()?;
    let mut components = rest.components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None) => Some(name.to_str()?.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localpv::config::ConfigFile;

    /// A PV named as volumed names it on node-a, unless the name is `x`.
    fn pv(name: &str, by: &str, phase: &str, policy: &str, path: &str) -> PersistentVolume {
        let name = if name == "x" {
            name.to_string()
        } else {
            pv_name("node-a", Path::new(path), "fast")
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {PROVISIONED_BY: by}},
            "spec": {"persistentVolumeReclaimPolicy": policy, "storageClassName": "fast",
                     "local": {"path": path}, "volumeMode": "Filesystem"},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn only_our_released_delete_pvs_directly_in_a_host_dir_are_cleaned() {
        let config = ConfigFile::parse(
            "[[local_pv.classes]]\nstorage_class = \"fast\"\nhost_dir = \"/mnt/disks\"\n",
        )
        .unwrap()
        .local_pv
        .unwrap();
        let volumes = [
            pv(
                "a",
                "volumed-node-a",
                "Released",
                "Delete",
                "/mnt/disks/vol1",
            ),
            pv(
                "b",
                "volumed-node-a",
                "Released",
                "Retain",
                "/mnt/disks/vol2",
            ),
            pv("c", "volumed-node-a", "Bound", "Delete", "/mnt/disks/vol3"),
            pv(
                "d",
                "volumed-node-b",
                "Released",
                "Delete",
                "/mnt/disks/vol4",
            ),
            pv("e", "someone-else", "Released", "Delete", "/mnt/disks/vol5"),
            pv(
                "f",
                "volumed-node-a",
                "Released",
                "Delete",
                "/mnt/disks/a/b",
            ),
            pv(
                "g",
                "volumed-node-a",
                "Released",
                "Delete",
                "/srv/elsewhere",
            ),
            pv(
                "h",
                "volumed-node-a",
                "Released",
                "Delete",
                "/mnt/disks/../etc",
            ),
        ];
        let (found, refused) = releases("node-a", &config, &volumes);
        assert_eq!(
            found,
            [Release {
                pv: volumes[0].metadata.name.clone().unwrap(),
                class: 0,
                entry: "vol1".into(),
                block: false
            }]
        );
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(
            refused
                .iter()
                .all(|r| r.contains("not directly in the host_dir")),
            "{refused:?}"
        );
        // Ours by annotation but not by name, or made on a block device: refused.
        let renamed = pv(
            "x",
            "volumed-node-a",
            "Released",
            "Delete",
            "/mnt/disks/vol1",
        );
        let mut on_block = volumes[0].clone();
        on_block
            .spec
            .as_mut()
            .unwrap()
            .local
            .as_mut()
            .unwrap()
            .fs_type = Some("ext4".into());
        let (found, refused) = releases("node-a", &config, &[renamed, on_block]);
        assert!(found.is_empty(), "{found:?}");
        assert!(
            refused[0].contains("not the name volumed gives")
                && refused[1].contains("not built yet"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_pv_of_ours_whose_disk_is_not_found_is_vanished() {
        let volumes = [
            pv("a", "volumed-node-a", "Bound", "Delete", "/mnt/disks/vol1"),
            pv(
                "b",
                "volumed-node-a",
                "Available",
                "Delete",
                "/mnt/disks/vol2",
            ),
            pv("c", "someone-else", "Bound", "Delete", "/mnt/disks/vol3"),
        ];
        let found = std::collections::BTreeSet::from(["/mnt/disks/vol1".to_string()]);
        let gone = vanished("node-a", &volumes, &found);
        assert_eq!(
            gone,
            std::collections::BTreeSet::from([volumes[1].metadata.name.clone().unwrap()])
        );
    }

    #[test]
    fn a_volume_is_in_use_while_another_mount_shows_its_filesystem() {
        let entry = |point: &str, device: &str| MountEntry {
            mount_id: 1,
            parent_id: 0,
            device: device.into(),
            root: "/".into(),
            mount_point: point.into(),
            fs_type: "ext4".into(),
            source: None,
            read_only: false,
            super_options: Default::default(),
            propagation: Default::default(),
        };
        let disk = Path::new("/mnt/disks/vol1");
        let table = [
            entry("/mnt/disks/vol1", "8:1"),
            entry("/var/lib/volumed/pods/u/volumes/x", "8:1"),
        ];
        assert_eq!(
            other_mount_of(disk, &table),
            Some("/var/lib/volumed/pods/u/volumes/x".into())
        );
        assert_eq!(other_mount_of(disk, &table[..1]), None);
        assert_eq!(
            other_mount_of(disk, &[]),
            None,
            "not mounted at all: nothing shows it"
        );
    }
}
