//! In file mode the discovered local PVs join the manifests' PVs before binding, so a claim
//! can bind to a disk the discoverer found in the same read.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolume;

use super::manifest::Manifests;
use super::NodeConfig;
use crate::host::local_dirs::scan_mount_dir;
use crate::host::Mounter;
use crate::localpv::config::LocalPvConfig;
use crate::localpv::discover::{discover, Node};

/// The configured local-PV classes and the mount table to tell mount points by.
#[derive(Clone)]
pub struct LocalDisks {
    pub config: LocalPvConfig,
    pub mounter: Arc<dyn Mounter>,
}

/// Adds the PVs discovered now to `manifests`; returns problems that make the read incomplete
/// (a scan that failed: its disks' PVs would look gone), and the PVs held back. A PV the
/// manifests define by name or by path wins over a discovered one, with a warning. The PVs in
/// `cleaning` (their disks' cleanups are journaled) are held back until they are clean.
/// Blocking: scans touch the disks.
pub fn add_discovered(
    manifests: &mut Manifests,
    disks: &LocalDisks,
    node: &NodeConfig,
    cleaning: &std::collections::BTreeSet<String>,
) -> (Vec<String>, Vec<PersistentVolume>) {
    let table = match disks.mounter.mount_table() {
        Ok(table) => table,
        Err(err) => {
            return (
                vec![format!("local PVs cannot be discovered: {err}")],
                vec![],
            )
        }
    };
    let mut problems = Vec::new();
    let scans: Vec<_> = disks
        .config
        .classes
        .iter()
        .map(|class| {
            scan_mount_dir(class.mount_dir(), &table).unwrap_or_else(|err| {
                problems.push(format!(
                    "local PVs of class {} cannot be discovered: {err}",
                    class.storage_class
                ));
                Vec::new()
            })
        })
        .collect();
    let reclaim = manifests
        .classes
        .values()
        .filter_map(|c| Some((c.metadata.name.clone()?, c.reclaim_policy.clone()?)))
        .collect();
    let found = discover(
        &Node {
            name: &node.name,
            labels: &node.labels,
        },
        &disks.config,
        &scans,
        &reclaim,
    );
    crate::localpv::count_discovery(&disks.config, &found);
    let local_path =
        |pv: &PersistentVolume| pv.spec.as_ref()?.local.as_ref().map(|l| l.path.clone());
    let mut held = Vec::new();
    for pv in found.volumes {
        let name = pv.metadata.name.clone().unwrap_or_default();
        if cleaning.contains(&name) {
            held.push(pv);
            continue;
        }
        let path = local_path(&pv).unwrap_or_default();
        let defined = manifests.volumes.contains_key(&name)
            || manifests
                .volumes
                .values()
                .any(|m| local_path(m).as_deref() == Some(path.as_str()));
        if defined {
            manifests.warnings.push(format!("the disk at {path} is also a PersistentVolume in the manifests; that one is used, the discovered {name} is not"));
            continue;
        }
        manifests.volumes.insert(name, std::sync::Arc::new(pv));
    }
    manifests
        .warnings
        .extend(found.skipped.into_iter().map(|s| {
            format!(
                "local disk {} (class {}) skipped: {}",
                s.path.display(),
                s.storage_class,
                s.reason
            )
        }));
    (problems, held)
}
