//! Safe-format policy (pure, rule 3): given what is known about a device, decide whether to
//! format it, check and mount it, mount it as it is, or refuse, and say why.

use std::path::PathBuf;

use crate::model::probe::Probe;

/// Everything safe-format decides from, gathered on a worker thread.
#[derive(Clone, Debug)]
pub struct DeviceFacts {
    pub device: PathBuf,
    pub probe: Probe,
    /// Reading the first and last MiB worked (`Err` says what failed).
    pub readable: Result<(), String>,
    /// Metadata those MiBs still hold that blkid does not report (a backup GPT, RAID or ZFS
    /// labels at the end), one description each.
    pub leftovers: Vec<String>,
    /// An exclusive open worked: nothing in any namespace has it mounted or claimed.
    pub exclusive: Result<(), String>,
    /// Partitions of the device (sysfs).
    pub partitions: Vec<String>,
    /// Devices stacked on it (sysfs holders: device-mapper, md, bcache...).
    pub holders: Vec<String>,
    /// Where the device or one of its partitions is mounted now.
    pub mounted_at: Vec<PathBuf>,
    pub device_read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Blank and free: make a filesystem of the wanted type.
    Format,
    /// Holds the wanted filesystem: `fsck -p`, then mount.
    CheckThenMount,
    /// Holds the wanted filesystem on a read-only device: mount it read-only, repair nothing.
    MountReadOnly,
    /// Anything else: leave the device alone.
    Refuse(String),
}

pub fn decide(facts: &DeviceFacts, fs_type: &str, volume_read_only: bool) -> Decision {
    let dev = facts.device.display();
    if let Err(why) = &facts.readable {
        return Decision::Refuse(format!("reading its first and last MiB failed ({why}); a device that cannot be read is never formatted or mounted, check the disk (dmesg)"));
    }
    if !facts.mounted_at.is_empty() {
        let places: Vec<String> = facts
            .mounted_at
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Decision::Refuse(format!(
            "it is mounted at {}; unmount it there or give the PV another device",
            places.join(", ")
        ));
    }
    if !facts.holders.is_empty() {
        return Decision::Refuse(format!("it is in use by {} (sysfs holders); free it (e.g. dmsetup remove, mdadm --stop) or give the PV another device", facts.holders.join(", ")));
    }
    // Checked after the mounts and holders we can name: this catches the ones we cannot see.
    if let Err(why) = &facts.exclusive {
        return Decision::Refuse(format!("{why}; free it or give the PV another device"));
    }
    if !facts.partitions.is_empty() || matches!(facts.probe, Probe::PartitionTable { .. }) {
        let what = match &facts.probe {
            Probe::PartitionTable { pt_type } => format!("a {pt_type} partition table"),
            _ => format!("partitions ({})", facts.partitions.join(", ")),
        };
        return Decision::Refuse(format!("it holds {what}; volumed uses whole blank devices or existing filesystems only: point the PV at a partition, or wipe the table (wipefs -a {dev}) if its data is not needed"));
    }
    match &facts.probe {
        Probe::Filesystem { fs_type: found, .. } if found == fs_type => {
            // The global mount is shared by every pod of the PV, so only the device decides
            // whether it is read-only; a read-only volume is a read-only bind of it.
            if facts.device_read_only {
                Decision::MountReadOnly
            } else {
                Decision::CheckThenMount
            }
        }
        Probe::Filesystem { fs_type: found, .. } => Decision::Refuse(format!("it holds a {found} filesystem but the PV asks for {fs_type}; set spec.local.fsType: {found} to use it as it is, or wipe it (wipefs -a {dev}) if its data is not needed")),
        Probe::Other { .. } | Probe::PartitionTable { .. } => Decision::Refuse(format!("it holds {}; only a device with no signature is formatted: wipe it (wipefs -a {dev}) if its data is not needed", facts.probe.describe())),
        // blkid saw nothing, but the ends say the disk held data: its first sectors were
        // wiped, the rest (partitions, a pool) may still be recoverable.
        Probe::Blank if !facts.leftovers.is_empty() => Decision::Refuse(format!("blkid finds no signature, but it still holds {}: its data may be recoverable, so it is not formatted; if it is not needed, clear every copy with wipefs -a {dev}", facts.leftovers.join(" and "))),
        Probe::Blank if facts.device_read_only => Decision::Refuse("the device is read-only and holds no filesystem, so it cannot be formatted; make it writable (blockdev --setrw) or give the PV a formatted device".into()),
        Probe::Blank if volume_read_only => Decision::Refuse("the volume is read-only and the device holds no filesystem: there is nothing to mount; format it once with a writable volume".into()),
        Probe::Blank => Decision::Format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> DeviceFacts {
        DeviceFacts {
            device: "/dev/loop7".into(),
            probe: Probe::Blank,
            readable: Ok(()),
            leftovers: vec![],
            exclusive: Ok(()),
            partitions: vec![],
            holders: vec![],
            mounted_at: vec![],
            device_read_only: false,
        }
    }

    #[test]
    fn only_a_blank_readable_free_writable_device_is_formatted() {
        let ext4 = Probe::Filesystem {
            fs_type: "ext4".into(),
            uuid: None,
        };
        let cases: Vec<(&str, DeviceFacts, bool, &str)> = vec![
            ("blank and free", blank(), false, "format"),
            (
                "unreadable",
                DeviceFacts {
                    readable: Err("EIO at 0".into()),
                    ..blank()
                },
                false,
                "cannot be read",
            ),
            (
                "in use in another namespace",
                DeviceFacts {
                    exclusive: Err("it is in use".into()),
                    ..blank()
                },
                false,
                "in use",
            ),
            (
                "mounted elsewhere",
                DeviceFacts {
                    mounted_at: vec!["/mnt/x".into()],
                    ..blank()
                },
                false,
                "mounted at /mnt/x",
            ),
            (
                "held by device-mapper",
                DeviceFacts {
                    holders: vec!["dm-0".into()],
                    ..blank()
                },
                false,
                "in use by dm-0",
            ),
            (
                "partition table",
                DeviceFacts {
                    probe: Probe::PartitionTable {
                        pt_type: "gpt".into(),
                    },
                    ..blank()
                },
                false,
                "gpt partition table",
            ),
            (
                "partitions without a table signature",
                DeviceFacts {
                    partitions: vec!["loop7p1".into()],
                    ..blank()
                },
                false,
                "partitions (loop7p1)",
            ),
            (
                "another filesystem",
                DeviceFacts {
                    probe: Probe::Filesystem {
                        fs_type: "xfs".into(),
                        uuid: None,
                    },
                    ..blank()
                },
                false,
                "holds a xfs filesystem but the PV asks for ext4",
            ),
            (
                "a swap signature",
                DeviceFacts {
                    probe: Probe::Other {
                        description: "swap (other)".into(),
                    },
                    ..blank()
                },
                false,
                "swap (other) signature",
            ),
            (
                "read-only device, blank",
                DeviceFacts {
                    device_read_only: true,
                    ..blank()
                },
                false,
                "read-only",
            ),
            ("read-only volume, blank", blank(), true, "nothing to mount"),
            (
                "blank to blkid, a backup GPT at its end",
                DeviceFacts {
                    leftovers: vec!["a backup GPT header".into()],
                    ..blank()
                },
                false,
                "still holds a backup GPT header",
            ),
            (
                "an ext4 filesystem over an old backup GPT",
                DeviceFacts {
                    probe: Probe::Filesystem {
                        fs_type: "ext4".into(),
                        uuid: None,
                    },
                    leftovers: vec!["a backup GPT header".into()],
                    ..blank()
                },
                false,
                "check",
            ),
            (
                "existing ext4",
                DeviceFacts {
                    probe: ext4.clone(),
                    ..blank()
                },
                false,
                "check",
            ),
            (
                "existing ext4, read-only volume",
                DeviceFacts {
                    probe: ext4.clone(),
                    ..blank()
                },
                true,
                "check",
            ),
            (
                "existing ext4, read-only device",
                DeviceFacts {
                    probe: ext4,
                    device_read_only: true,
                    ..blank()
                },
                false,
                "mount-ro",
            ),
        ];
        for (name, facts, read_only, want) in cases {
            let got = decide(&facts, "ext4", read_only);
            let ok = match (&got, want) {
                (Decision::Format, "format")
                | (Decision::CheckThenMount, "check")
                | (Decision::MountReadOnly, "mount-ro") => true,
                (Decision::Refuse(why), fragment) => why.contains(fragment),
                _ => false,
            };
            assert!(ok, "{name}: got {got:?}, want {want}");
        }
    }
}
