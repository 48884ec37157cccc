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
