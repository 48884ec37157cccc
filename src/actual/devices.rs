//! Block-device inventory, lsblk-style: sysfs for the facts, the udev database for stable
//! links and identity where a udev daemon keeps one, `blkid -p` for filesystems, and the
//! mount table for mount points. udev types are not `Send`: call `scan` from one thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::host::format::Formatter;
use crate::host::sysfs::{Sysfs, SysfsBlock};
use crate::model::mountinfo::MountEntry;
use crate::model::probe::Probe;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    /// Kernel name: `sdb`, `sdb1`, `loop3`.
    pub name: String,
    /// `major:minor`.
    pub dev: String,
    pub size_bytes: u64,
    /// `disk`, `part`, `loop`, `dm`, `raid` or `rom`, as lsblk's TYPE.
    pub kind: String,
    pub read_only: bool,
    pub rotational: bool,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub devnode: PathBuf,
    /// Stable links: `/dev/disk/by-id/...`, `by-path`, `by-uuid`, where present.
    pub links: Vec<PathBuf>,
    pub fs_type: Option<String>,
    pub uuid: Option<String>,
    pub pt_type: Option<String>,
    pub parent: Option<String>,
    pub partitions: Vec<String>,
    pub holders: Vec<String>,
    pub mount_points: Vec<PathBuf>,
}

/// Scans block devices; keeps blkid results for devices that did not change.
pub struct DeviceScanner {
    pub sysfs: Sysfs,
    pub dev_dir: PathBuf,
    pub formatter: Arc<dyn Formatter>,
    probes: BTreeMap<(String, String, u64), Probe>,
}

impl DeviceScanner {
    pub fn new(formatter: Arc<dyn Formatter>) -> DeviceScanner {
        DeviceScanner {
            sysfs: Sysfs::default(),
            dev_dir: PathBuf::from("/dev"),
            formatter,
            probes: BTreeMap::new(),
        }
    }

    /// Drops the remembered blkid results: the next scan probes every device again.
    pub fn forget_probes(&mut self) {
        self.probes.clear();
    }

    /// Every block device with a non-zero size (as lsblk shows them), in name order.
    pub fn scan(&mut self, mounts: &[MountEntry]) -> std::io::Result<Vec<BlockDevice>> {
        let links = stable_links(&self.dev_dir);
        let mut devices = Vec::new();
        let mut seen = BTreeMap::new();
        for name in self.sysfs.names()? {
            let Some(block) = self.sysfs.block(&name) else {
                continue;
            };
            if block.size_bytes == 0 {
                continue;
            }
            let devnode = self.dev_dir.join(&name);
            let key = (
                name.clone(),
                format!("{}:{}", block.major, block.minor),
                block.size_bytes,
            );
            let probe = match self.probes.get(&key) {
                Some(probe) => probe.clone(),
                None => self.formatter.probe(&devnode).unwrap_or_else(|e| {
                    tracing::debug!(device = %devnode.display(), %e, "blkid probe failed");
                    Probe::Other {
                        description: UNPROBED.into(),
                    }
                }),
            };
            seen.insert(key, probe.clone());
            devices.push(describe(block, devnode, &links, &probe, mounts));
        }
        self.probes = seen;
        Ok(devices)
    }
}

/// What a device that blkid could not probe is recorded as.
const UNPROBED: &str = "unknown (blkid could not probe it)";

fn describe(
    block: SysfsBlock,
    devnode: PathBuf,
    links: &BTreeMap<PathBuf, Vec<PathBuf>>,
    probe: &Probe,
    mounts: &[MountEntry],
) -> BlockDevice {
    let dev = format!("{}:{}", block.major, block.minor);
    let udev = udev_properties(&block.name);
    let (fs_type, uuid, pt_type) = match probe {
        Probe::Filesystem { fs_type, uuid } => (Some(fs_type.clone()), uuid.clone(), None),
        Probe::PartitionTable { pt_type } => (None, None, Some(pt_type.clone())),
        // blkid could not read it (the root disk, for one, when its partitions are in use):
        // the mount table still says what is mounted from it.
        Probe::Other { description } if description == UNPROBED => (
            Some(
                mounts
                    .iter()
                    .find(|m| m.device == dev)
                    .map_or_else(|| "unknown".to_string(), |m| m.fs_type.clone()),
            ),
            None,
            None,
        ),
        Probe::Other { description } => (
            Some(description.split(' ').next().unwrap_or("?").to_string()),
            None,
            None,
        ),
        Probe::Blank => (None, None, None),
    };
    BlockDevice {
        kind: kind_of(&block),
        read_only: block.read_only,
        rotational: block.rotational,
        model: udev.get("ID_MODEL").cloned().or(block.model),
        serial: udev.get("ID_SERIAL_SHORT").cloned().or(block.serial),
        wwn: udev.get("ID_WWN").cloned().or(block.wwn),
        links: match udev.get("DEVLINKS") {
            Some(list) => list.split_whitespace().map(PathBuf::from).collect(),
            None => links.get(&devnode).cloned().unwrap_or_default(),
        },
        mount_points: mounts
            .iter()
            .filter(|m| m.device == dev)
            .map(|m| m.mount_point.clone())
            .collect(),
        name: block.name,
        dev,
        size_bytes: block.size_bytes,
        devnode,
        fs_type,
        uuid,
        pt_type,
        parent: block.parent,
        partitions: block.partitions,
        holders: block.holders,
    }
}

fn kind_of(block: &SysfsBlock) -> String {
    let name = block.name.as_str();
    let kind = if block.is_partition {
        "part"
    } else if name.starts_with("loop") {
        "loop"
    } else if name.starts_with("dm-") {
        "dm"
    } else if name.starts_with("md") {
        "raid"
    } else if name.starts_with("sr") {
        "rom"
    } else {
        "disk"
    };
    kind.to_string()
}

/// The udev database's properties of a device; empty where no udev daemon fills it.
fn udev_properties(name: &str) -> BTreeMap<String, String> {
    let Ok(device) = udev::Device::from_subsystem_sysname("block".into(), name.into()) else {
        return BTreeMap::new();
    };
    device
        .properties()
        .map(|p| {
            (
                p.name().to_string_lossy().into_owned(),
                p.value().to_string_lossy().into_owned(),
            )
        })
        .collect()
}

/// `/dev/disk/by-*/*` links by the device node they point at (used without a udev database).
fn stable_links(dev_dir: &Path) -> BTreeMap<PathBuf, Vec<PathBuf>> {
    let mut links: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    let Ok(kinds) = std::fs::read_dir(dev_dir.join("disk")) else {
        return links;
    };
    for kind in kinds.flatten() {
        let Ok(entries) = std::fs::read_dir(kind.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::canonicalize(entry.path()) {
                links.entry(target).or_default().push(entry.path());
            }
        }
    }
    for list in links.values_mut() {
        list.sort();
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_blkid_cannot_read_shows_the_filesystem_it_is_mounted_with() {
        let block = SysfsBlock {
            name: "vda".into(),
            major: 254,
            minor: 0,
            size_bytes: 1 << 30,
            read_only: false,
            rotational: false,
            is_partition: false,
            parent: None,
            partitions: vec![],
            holders: vec![],
            model: None,
            serial: None,
            wwn: None,
        };
        let root = MountEntry {
            mount_id: 1,
            parent_id: 0,
            device: "254:0".into(),
            root: "/".into(),
            mount_point: "/".into(),
            fs_type: "ext4".into(),
            source: Some("/dev/vda".into()),
            read_only: false,
            super_options: Default::default(),
            propagation: Default::default(),
        };
        let unprobed = Probe::Other {
            description: UNPROBED.into(),
        };
        let links = BTreeMap::new();
        let seen = describe(block.clone(), "/dev/vda".into(), &links, &unprobed, &[root]);
        assert_eq!(seen.fs_type.as_deref(), Some("ext4"));
        let unmounted = describe(block, "/dev/vda".into(), &links, &unprobed, &[]);
        assert_eq!(unmounted.fs_type.as_deref(), Some("unknown"));
    }
}
