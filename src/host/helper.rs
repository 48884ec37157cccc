//! Running the NFS mount helper under a deadline. The helper gets a process group of its own
//! (so the `mount.nfs` it starts dies with it when killed), writes its output to an unlinked
//! temp file (so no pipe keeps a waiter alive), and each volume has at most one helper group
//! alive: a retry never piles a second one on a stuck first.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a killed helper group gets to disappear.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// How much of the helper's output is kept for the error message.
const OUTPUT_LIMIT: u64 = 16 * 1024;

/// Helper process groups by the target they mount, while they may still be alive.
#[derive(Default)]
pub struct HelperRuns(Mutex<HashMap<PathBuf, Pid>>);

/// Every helper group of this process that may still be alive, whichever mounter ran it: a
/// daemon that stops kills them (`kill_running_helpers`), or they would outlive it.
static RUNNING: Mutex<Vec<Pid>> = Mutex::new(Vec::new());

/// Kills every helper group still running (at shutdown: a stopped daemon leaves no
/// `mount.nfs` behind; the volume's next start mounts it again). Returns how many.
pub fn kill_running_helpers() -> usize {
    let running = std::mem::take(&mut *crate::shared::lock(&RUNNING));
    running
        .iter()
        .filter(|pgid| killpg(**pgid, Signal::SIGKILL).is_ok())
        .count()
}

/// True while a process of the group is alive; zombies waiting to be reaped do not count.
fn group_alive(pgid: Pid) -> bool {
    // kill -0 -<pgid> first: cheap, and final when it says the group is gone.
    if killpg(pgid, None).is_err() {
        return false;
    }
    let Ok(processes) = procfs::process::all_processes() else {
        return true;
    };
    processes
        .filter_map(|p| p.ok()?.stat().ok())
        .any(|stat| stat.pgrp == pgid.as_raw() && stat.state != 'Z')
}

impl HelperRuns {
    /// Runs `command` for `target`; `Err` says why it did not finish (with its output).
    pub fn run(
        &self,
        mut command: Command,
        target: &Path,
        deadline: Duration,
    ) -> Result<(ExitStatus, String), String> {
        let mut runs = crate::shared::lock(&self.0);
        if let Some(pgid) = runs.get(target).copied() {
            if group_alive(pgid) {
                return Err(format!("the mount helper of an earlier try (process group {pgid}) is still running; no second one is started"));
            }
            runs.remove(target);
        }
        let mut output = tempfile::tempfile()
            .map_err(|e| format!("cannot create a temp file for its output: {e}"))?;
        let sink = |f: &std::fs::File| f.try_clone().map(Stdio::from).map_err(|e| e.to_string());
        command
            .stdin(Stdio::null())
            .stdout(sink(&output)?)
            .stderr(sink(&output)?)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start it: {e}"))?;
        let pgid = Pid::from_raw(child.id() as i32);
        runs.insert(target.to_path_buf(), pgid);
        crate::shared::lock(&RUNNING).push(pgid);
        drop(runs);

        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break None,
            }
        };
        // Whatever happened, nothing of the group may outlive this call if it can be helped.
        let _ = killpg(pgid, Signal::SIGKILL);
        let reap_started = Instant::now();
        while (group_alive(pgid) || matches!(child.try_wait(), Ok(None)))
            && reap_started.elapsed() < REAP_WAIT
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let gone = !group_alive(pgid);
        if gone {
            crate::shared::lock(&self.0).remove(target);
            crate::shared::lock(&RUNNING).retain(|p| *p != pgid);
        }
        let mut text = String::new();
        let _ = output.rewind();
        let _ = (&mut output).take(OUTPUT_LIMIT).read_to_string(&mut text);
        match status {
            Some(status) => Ok((status, text.trim().to_string())),
            None => Err(format!(
                "it did not finish within {}s; its process group was killed{}",
                deadline.as_secs(),
                if gone {
                    ""
                } else {
                    " but has not exited yet (no new helper starts for this volume until it does)"
                }
            )),
        }
    }
}
