//! volumed's own state files under `<root>/state`: written whole or not at all (a temp file,
//! fsync, rename, fsync of the directory), so a crash never leaves half a record.

use std::io::Write;
use std::path::Path;

/// Writes `value` as pretty JSON to `path` atomically, making its directory if needed.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let mut file = atomic_write_file::AtomicWriteFile::open(path)?;
    file.write_all(&text)?;
    file.commit()
}

/// Runs `update` holding an exclusive `flock` on `lock` (made if missing), waiting for any
/// other holder: a read-modify-write of a state file that another thread or process (the
/// daemon, `volumed release`) may also change loses neither's change.
pub fn locked<T>(lock: &Path, update: impl FnOnce() -> T) -> std::io::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = lock.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(lock)?;
    // flock --exclusive <lock>
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))?;
    let out = update();
    drop(held);
    Ok(out)
}
