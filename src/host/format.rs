//! Filesystem tools behind the `Formatter` trait: `blkid -p` probes, `mkfs.ext4`, `fsck`.
//! The real one runs the e2fsprogs/util-linux binaries; a fake records calls for tests.

use std::path::Path;
use std::process::Command;

use super::HostError;
use crate::model::probe::{FsckResult, Probe};

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
