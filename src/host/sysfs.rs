//! Block-device facts from sysfs (`/sys/class/block/<name>/...`): size, read-only and
//! rotational flags, holders, partitions and identity strings. Works without a udev daemon.

use std::path::{Path, PathBuf};

/// A sysfs tree; `/sys` on a host, a temp dir in tests.
#[derive(Clone, Debug)]
pub struct Sysfs {
    pub root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            root: PathBuf::from("/sys"),
        }
    }
}

/// What sysfs says about one block device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SysfsBlock {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub size_bytes: u64,
    pub read_only: bool,
    pub rotational: bool,
    pub is_partition: bool,
    /// The whole disk a partition belongs to.
    pub parent: Option<String>,
    pub partitions: Vec<String>,
    pub holders: Vec<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
}

impl Sysfs {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join("class/block").join(name)
    }

    /// Every block device name under `class/block`.
    pub fn names(&self) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("class/block"))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The device's facts; `None` when it is gone.
    pub fn block(&self, name: &str) -> Option<SysfsBlock> {
        let dir = self.dir(name);
        let (major, minor) = parse_dev(&read(&dir.join("dev"))?)?;
        // A partition's own directory has a `partition` file; its disk is the parent dir.
        let is_partition = dir.join("partition").exists();
        let real = std::fs::canonicalize(&dir).ok();
        let parent = is_partition
            .then(|| {
                real.as_ref()?
                    .parent()?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .flatten();
        let disk_dir = parent.as_ref().map_or(dir.clone(), |p| self.dir(p));
        let sectors: u64 = read(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Some(SysfsBlock {
            name: name.to_string(),
            major,
            minor,
            // The kernel counts sizes in 512-byte sectors whatever the device's block size.
            size_bytes: sectors * 512,
            read_only: read(&dir.join("ro")).as_deref() == Some("1"),
            rotational: read(&disk_dir.join("queue/rotational")).as_deref() == Some("1"),
            is_partition,
            parent,
            partitions: if is_partition {
                vec![]
            } else {
                children_with(&dir, "partition")
            },
            holders: entries(&dir.join("holders")),
            model: read(&disk_dir.join("device/model")),
            serial: read(&disk_dir.join("device/serial")),
            wwn: read(&disk_dir.join("device/wwid")).or_else(|| read(&disk_dir.join("wwid"))),
        })
    }

    /// The device name for a `major:minor`, through `/sys/dev/block`.
    pub fn name_of(&self, major: u32, minor: u32) -> Option<String> {
        let link =
            std::fs::canonicalize(self.root.join(format!("dev/block/{major}:{minor}"))).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }
}

fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Subdirectories of `dir` that contain a file named `marker`.
fn children_with(dir: &Path, marker: &str) -> Vec<String> {
    entries(dir)
        .into_iter()
        .filter(|name| dir.join(name).join(marker).exists())
        .collect()
}

fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn disks_partitions_and_holders_are_read_from_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Real sysfs: class/block/<name> are links into devices/...; partitions nest in disks.
        let disk = "devices/virtual/block/sdb";
        write(root, &format!("{disk}/dev"), "8:16\n");
        write(root, &format!("{disk}/size"), "2097152\n");
        write(root, &format!("{disk}/ro"), "0\n");
        write(root, &format!("{disk}/queue/rotational"), "1\n");
        write(root, &format!("{disk}/device/model"), "QEMU HARDDISK   \n");
        write(root, &format!("{disk}/sdb1/dev"), "8:17\n");
        write(root, &format!("{disk}/sdb1/size"), "2048\n");
        write(root, &format!("{disk}/sdb1/partition"), "1\n");
        write(root, &format!("{disk}/sdb1/ro"), "1\n");
        std::fs::create_dir_all(root.join(format!("{disk}/sdb1/holders/dm-0"))).unwrap();
        std::fs::create_dir_all(root.join("class/block")).unwrap();
        std::os::unix::fs::symlink(root.join(disk), root.join("class/block/sdb")).unwrap();
        std::os::unix::fs::symlink(
            root.join(format!("{disk}/sdb1")),
            root.join("class/block/sdb1"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(
            root.join(format!("{disk}/sdb1")),
            root.join("dev/block/8:17"),
        )
        .unwrap();

        let sysfs = Sysfs {
            root: root.to_path_buf(),
        };
        assert_eq!(sysfs.names().unwrap(), ["sdb", "sdb1"]);
        let sdb = sysfs.block("sdb").unwrap();
        assert_eq!((sdb.major, sdb.minor, sdb.size_bytes), (8, 16, 1 << 30));
        assert!(sdb.rotational && !sdb.read_only && !sdb.is_partition);
        assert_eq!(sdb.partitions, ["sdb1"]);
        assert_eq!(sdb.model.as_deref(), Some("QEMU HARDDISK"));
        let part = sysfs.block("sdb1").unwrap();
        assert!(
            part.is_partition && part.read_only && part.rotational,
            "{part:?}"
        );
        assert_eq!(part.parent.as_deref(), Some("sdb"));
        assert_eq!(part.holders, ["dm-0"]);
        assert_eq!(sysfs.name_of(8, 17).as_deref(), Some("sdb1"));
        assert_eq!(sysfs.block("gone"), None);
    }
}
