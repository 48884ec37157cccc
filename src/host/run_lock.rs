//! The root dir's run lock (`<root>/state/run.lock`): before a `run` changes anything, it
//! takes this exclusive lock and holds it for its whole life, so two reconcilers never act on
//! one root dir (one would tear down what the other set up). `plan` and `status` only read
//! and take no lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    #[error("another volumed ({holder}) is running on root dir {root}: it holds {lock}; stop it first, or give this one another --root-dir")]
    Held {
        root: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("cannot take the run lock {lock}: {source}; check the root dir's permissions")]
    Io {
        lock: PathBuf,
        source: std::io::Error,
    },
}

/// Held while it lives; the kernel releases it when the process ends, however it ends.
pub struct RunLock {
    _lock: Flock<File>,
}

impl RunLock {
    /// Takes the lock at once or fails, naming the holder's pid.
    pub fn acquire(root: &Path) -> Result<RunLock, RunLockError> {
        let lock = root.join("state").join("run.lock");
        let io = |source| RunLockError::Io {
            lock: lock.clone(),
            source,
        };
        // mkdir -p -m 0750 <root>/state
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o750)
            .create(lock.parent().expect("the lock lives in the state dir"))
            .map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock)
            .map_err(io)?;
        // flock --exclusive --nonblock <lock>
        let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "its pid is not recorded yet".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(RunLockError::Held {
                    root: root.to_path_buf(),
                    lock,
                    holder,
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        // The holder's pid, for the next one's message.
        held.set_len(0).map_err(io)?;
        held.rewind().map_err(io)?;
        writeln!(held, "{}", std::process::id()).map_err(io)?;
        Ok(RunLock { _lock: held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_root_dir_is_refused_with_the_holders_pid_until_released() {
        let root = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(root.path()).unwrap();
        let err = RunLock::acquire(root.path())
            .err()
            .expect("the lock is held");
        let message = err.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(first);
        RunLock::acquire(root.path()).expect("free again once released");
    }
}
