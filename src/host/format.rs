//! Filesystem tools behind the `Formatter` trait: `blkid -p` probes, `mkfs.ext4`, `fsck`.
//! The real one runs the e2fsprogs/util-linux binaries; a fake records calls for tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::HostError;

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

/// Probing, formatting and checking filesystems. Every call may take long: worker threads only.
pub trait Formatter: Send + Sync + 'static {
    fn probe(&self, device: &Path) -> Result<Probe, HostError>;
    /// `mkfs.<fs_type> ...` on a device that safe-format has cleared.
    fn make_filesystem(&self, device: &Path, fs_type: &str) -> Result<(), HostError>;
    fn check(&self, device: &Path, fs_type: &str) -> Result<FsckResult, HostError>;
}

/// The system's blkid, mkfs and fsck.
#[derive(Default)]
pub struct RealFormatter;

fn run(program: &str, args: &[&str], device: &Path) -> Result<std::process::Output, HostError> {
    Command::new(program)
        .args(args)
        .arg(device)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| HostError::Tool {
            command: format!("{program} {}", args.join(" ")),
            device: device.to_path_buf(),
            message: format!("cannot run it: {source}; is it installed (e2fsprogs, util-linux)?"),
        })
}

impl Formatter for RealFormatter {
    fn probe(&self, device: &Path) -> Result<Probe, HostError> {
        // blkid -p -o export <device>: a low-level probe that ignores the blkid cache.
        let out = run("blkid", &["-p", "-o", "export"], device)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => Ok(Probe::parse_export(&String::from_utf8_lossy(&out.stdout))),
            // Exit 2 is "nothing found", but blkid also exits 2 when it could not open the
            // device; only a silent exit 2 means blank.
            Some(2) if stderr.trim().is_empty() => Ok(Probe::Blank),
            code => Err(HostError::Tool {
                command: "blkid -p -o export".into(),
                device: device.to_path_buf(),
                message: format!(
                    "exit {code:?}: {}{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    if code == Some(8) {
                        " (ambivalent probe: several signatures)"
                    } else {
                        ""
                    }
                ),
            }),
        }
    }

    fn make_filesystem(&self, device: &Path, fs_type: &str) -> Result<(), HostError> {
        // mkfs.ext4 -F -m0 -E lazy_itable_init=1,lazy_journal_init=1 <device>
        let (program, args): (String, Vec<&str>) = match fs_type {
            "ext4" | "ext3" | "ext2" => (
                format!("mkfs.{fs_type}"),
                vec![
                    "-F",
                    "-q",
                    "-m0",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                ],
            ),
            other => (format!("mkfs.{other}"), vec![]),
        };
        let out = run(&program, &args, device)?;
        if out.status.success() {
            return Ok(());
        }
        Err(HostError::Tool {
            command: format!("{program} {}", args.join(" ")),
            device: device.to_path_buf(),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }

    fn check(&self, device: &Path, fs_type: &str) -> Result<FsckResult, HostError> {
        // fsck.<type> -p <device>: fix what is safe to fix without asking.
        let program = format!("fsck.{fs_type}");
        let out = run(&program, &["-p"], device)?;
        let exit_code = out.status.code().unwrap_or(-1);
        if (0..=2).contains(&exit_code) {
            return Ok(FsckResult::Clean { exit_code });
        }
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(FsckResult::Failed {
            exit_code,
            output: output.trim().to_string(),
        })
    }
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
