//! What the host's filesystem tools report about a device (`blkid -p`, `fsck -p`): plain
//! data that the device inventory shows and the safe-format policy decides on.

use std::collections::BTreeMap;

/// What `blkid -p` found on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// No signature at all (blkid exit code 2).
    Blank,
    /// A filesystem (`TYPE=`), with its UUID when it has one.
    Filesystem {
        fs_type: String,
        uuid: Option<String>,
    },
    /// A partition table (`PTTYPE=`).
    PartitionTable { pt_type: String },
    /// Some other signature (swap, RAID member, LVM, crypto, ...): `USAGE` and `TYPE`.
    Other { description: String },
}

impl Probe {
    /// Parses `blkid -p -o export` output (exit code 0).
    pub fn parse_export(text: &str) -> Probe {
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let get = |key| fields.get(key).map(|v| v.to_string());
        if let Some(pt_type) = get("PTTYPE") {
            return Probe::PartitionTable { pt_type };
        }
        // A partition's entry in its table (PART_ENTRY_*) is not a signature on the partition.
        if !fields
            .keys()
            .any(|k| !k.starts_with("PART_ENTRY_") && *k != "DEVNAME")
        {
            return Probe::Blank;
        }
        match (get("TYPE"), fields.get("USAGE").copied()) {
            (Some(fs_type), Some("filesystem") | None) => Probe::Filesystem {
                fs_type,
                uuid: get("UUID"),
            },
            (fs_type, usage) => Probe::Other {
                description: format!(
                    "{} ({})",
                    fs_type.as_deref().unwrap_or("unknown type"),
                    usage.unwrap_or("unknown usage")
                ),
            },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Probe::Blank => "no signature".into(),
            Probe::Filesystem { fs_type, .. } => format!("a {fs_type} filesystem"),
            Probe::PartitionTable { pt_type } => format!("a {pt_type} partition table"),
            Probe::Other { description } => format!("a {description} signature"),
        }
    }
}

/// How an `fsck -p` run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsckResult {
    /// Exit 0, 1 or 2: clean, or errors fixed.
    Clean { exit_code: i32 },
    /// Exit 4 or more: errors left, or fsck itself failed; the output says which.
    Failed { exit_code: i32, output: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_output_is_classified() {
        let cases = [
            (
                "DEVNAME=/dev/loop0\nUUID=abc\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n",
                Probe::Filesystem {
                    fs_type: "ext4".into(),
                    uuid: Some("abc".into()),
                },
            ),
            (
                "DEVNAME=/dev/loop0\nPTUUID=1234\nPTTYPE=gpt\n",
                Probe::PartitionTable {
                    pt_type: "gpt".into(),
                },
            ),
            (
                "DEVNAME=/dev/loop0\nVERSION=1\nUUID=x\nTYPE=swap\nUSAGE=other\n",
                Probe::Other {
                    description: "swap (other)".into(),
                },
            ),
            (
                "DEVNAME=/dev/sdb\nTYPE=LVM2_member\nUSAGE=raid\n",
                Probe::Other {
                    description: "LVM2_member (raid)".into(),
                },
            ),
            (
                "DEVNAME=/dev/sdc\nTYPE=xfs\n",
                Probe::Filesystem {
                    fs_type: "xfs".into(),
                    uuid: None,
                },
            ),
            (
                "DEVNAME=/dev/sdb1\nPART_ENTRY_SCHEME=gpt\nPART_ENTRY_NUMBER=1\n",
                Probe::Blank,
            ),
            (
                "DEVNAME=/dev/sdb1\nPART_ENTRY_SCHEME=dos\nVERSION=1\n",
                Probe::Other {
                    description: "unknown type (unknown usage)".into(),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Probe::parse_export(text), want, "{text}");
        }
    }
}
