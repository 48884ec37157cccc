//! Durable record of file-mode PVC→PV bindings under `<root>/state/bindings.json` (rule 6:
//! once made, a binding survives restarts, so a claim never moves to another volume).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::state_file::write_json;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read binding record {path}: {source}; new bindings are held back until it is readable")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding record {path} is corrupt ({source}); restore it from backup or remove the damaged entries by hand")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write binding record {path}: {source}; new bindings are not used until they are recorded")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Record {
    version: u32,
    /// Claim `namespace/name` → PersistentVolume name.
    bindings: BTreeMap<String, String>,
}

pub struct BindingStore {
    path: PathBuf,
}

impl BindingStore {
    pub fn new(root: &Path) -> Self {
        BindingStore {
            path: root.join("state").join("bindings.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded bindings; a missing record means none were made yet.
    pub fn load(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let record: Record = serde_json::from_str(&text).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        Ok(record.bindings)
    }

    /// Replaces the record atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, bindings: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let fail = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let record = Record {
            version: 1,
            bindings: bindings.clone(),
        };
        write_json(&self.path, &record).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = BindingStore::new(dir.path());
        assert!(
            store.load().unwrap().is_empty(),
            "no record yet means no bindings"
        );
        let bindings = BTreeMap::from([("default/data".to_string(), "pv-small".to_string())]);
        store.save(&bindings).unwrap();
        assert_eq!(BindingStore::new(dir.path()).load().unwrap(), bindings);
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_an_empty_map() {
        let dir = tempfile::tempdir().unwrap();
        let store = BindingStore::new(dir.path());
        std::fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        std::fs::write(store.path(), "{not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("bindings.json"), "{err}");
    }
}
