//! Durable record of file-mode PVC→PV bindings under `<root>/state/bindings.json` (rule 6:
//! once made, a binding survives restarts, so a claim never moves to another volume), and of
//! the volumes released from deleted claims, which no claim gets until they are made available.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::state_file::{locked, write_json};

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
    #[error("cannot lock binding record {path}: {source}; check the root dir's permissions")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the record holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Claim `namespace/name` → PersistentVolume name.
    pub bindings: BTreeMap<String, String>,
    /// PersistentVolume name → the claim it was bound to, whose manifest was deleted: the
    /// volume is Released. A claim of that name made again does not get it back (as in
    /// Kubernetes); it is made available by its cleanup or by `volumed release`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub released: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    version: u32,
    #[serde(flatten)]
    recorded: Recorded,
}

#[derive(Clone)]
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

    /// The recorded bindings and releases; a missing record means none were made yet.
    pub fn load(&self) -> Result<Recorded, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::default()),
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
        Ok(record.recorded)
    }

    /// Changes the record: reads it, lets `change` edit it (its answer says whether it did),
    /// and replaces it atomically (temp file, fsync, rename, fsync of the directory), all
    /// under the record's lock, so that the daemon and `volumed release` never lose each
    /// other's change. Returns `change`'s answer.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Recorded) -> (bool, T),
    ) -> Result<T, StoreError> {
        let lock = self.path.with_extension("lock");
        let fail = |source| StoreError::Lock {
            path: self.path.clone(),
            source,
        };
        locked(&lock, || {
            let mut recorded = self.load()?;
            let (changed, answer) = change(&mut recorded);
            if changed {
                let record = Record {
                    version: 1,
                    recorded,
                };
                write_json(&self.path, &record).map_err(|source| StoreError::Write {
                    path: self.path.clone(),
                    source,
                })?;
            }
            Ok(answer)
        })
        .map_err(fail)?
    }
}

/// Why `volumed release` refused a volume.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("PersistentVolume {pv} is bound to claim {claim}, which the manifests still have (or a pod there still names): it is released when the claim's manifest is deleted")]
    Bound { pv: String, claim: String },
    #[error("PersistentVolume {pv} is neither released nor bound in the binding record: there is nothing to release")]
    NotReleased { pv: String },
    #[error("PersistentVolume {pv} is being cleaned (see `volumed status`): it is available again as soon as its cleanup is done")]
    Cleaning { pv: String },
    #[error("PersistentVolume {pv} has reclaim policy Delete and a local disk volumed cleans: `volumed run` cleans it and makes it available by itself (see `volumed status`); released by hand it would be offered with its old data")]
    CleanedByVolumed { pv: String },
    #[error(
        "PersistentVolume {pv} is still mounted at {at}: release it once the pod using it is gone"
    )]
    InUse { pv: String, at: PathBuf },
}

/// What `volumed release` knows of a volume besides the record.
pub struct ReleaseCheck<'a> {
    /// Claims the manifests have, and claims a pod there names.
    pub claims: &'a std::collections::BTreeSet<String>,
    /// Its cleanup is journaled.
    pub cleaning: bool,
    /// It is a local disk `volumed run` cleans itself.
    pub cleaned_by_volumed: bool,
    /// A pod volume mount of it, if any.
    pub mounted_at: Option<PathBuf>,
}

/// Makes `pv` available: takes it out of the record's releases (or, when the daemon has not
/// released it yet, drops the binding of its claim whose manifest is gone). Returns the claim
/// it was bound to. Pure: the caller reads and writes the record.
pub fn release(
    recorded: &mut Recorded,
    pv: &str,
    check: &ReleaseCheck,
) -> Result<String, ReleaseError> {
    let pv_owned = || pv.to_string();
    let bound = recorded
        .bindings
        .iter()
        .find(|(_, v)| *v == pv)
        .map(|(c, _)| c.clone());
    let claim = match (recorded.released.get(pv), bound) {
        (Some(claim), _) => claim.clone(),
        (None, Some(claim)) if check.claims.contains(&claim) => {
            return Err(ReleaseError::Bound {
                pv: pv_owned(),
                claim,
            })
        }
        (None, Some(claim)) => claim,
        (None, None) => return Err(ReleaseError::NotReleased { pv: pv_owned() }),
    };
    if check.cleaning {
        return Err(ReleaseError::Cleaning { pv: pv_owned() });
    }
    if check.cleaned_by_volumed {
        return Err(ReleaseError::CleanedByVolumed { pv: pv_owned() });
    }
    if let Some(at) = &check.mounted_at {
        return Err(ReleaseError::InUse {
            pv: pv_owned(),
            at: at.clone(),
        });
    }
    recorded.released.remove(pv);
    recorded.bindings.retain(|_, v| v != pv);
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = BindingStore::new(dir.path());
        assert_eq!(
            store.load().unwrap(),
            Recorded::default(),
            "no record yet means no bindings"
        );
        let recorded = Recorded {
            bindings: BTreeMap::from([("default/data".to_string(), "pv-small".to_string())]),
            released: BTreeMap::from([("pv-old".to_string(), "default/gone".to_string())]),
        };
        let copy = recorded.clone();
        store.update(|r| (true, *r = copy)).unwrap();
        assert_eq!(BindingStore::new(dir.path()).load().unwrap(), recorded);
    }

    #[test]
    fn a_volume_is_released_by_hand_only_when_nothing_holds_it() {
        let record = Recorded {
            bindings: BTreeMap::from([
                ("shop/live".to_string(), "pv-live".to_string()),
                ("shop/gone".to_string(), "pv-unreleased".to_string()),
            ]),
            released: BTreeMap::from([("pv-old".to_string(), "shop/old".to_string())]),
        };
        let claims = std::collections::BTreeSet::from(["shop/live".to_string()]);
        let free = ReleaseCheck {
            claims: &claims,
            cleaning: false,
            cleaned_by_volumed: false,
            mounted_at: None,
        };
        let try_release = |pv: &str, check: &ReleaseCheck| {
            let mut r = record.clone();
            release(&mut r, pv, check).map(|claim| (claim, r))
        };
        let (claim, after) = try_release("pv-old", &free).unwrap();
        assert_eq!(claim, "shop/old");
        assert!(after.released.is_empty() && after.bindings.len() == 2);
        let (claim, after) = try_release("pv-unreleased", &free).unwrap();
        assert_eq!(claim, "shop/gone");
        assert!(!after.bindings.contains_key("shop/gone"));
        assert!(matches!(
            try_release("pv-live", &free),
            Err(ReleaseError::Bound { .. })
        ));
        assert!(matches!(
            try_release("pv-none", &free),
            Err(ReleaseError::NotReleased { .. })
        ));
        let held = [
            ReleaseCheck {
                cleaning: true,
                mounted_at: None,
                ..free
            },
            ReleaseCheck {
                cleaned_by_volumed: true,
                mounted_at: None,
                ..free
            },
            ReleaseCheck {
                mounted_at: Some("/r/pods/u/volumes/x/pv-old".into()),
                ..free
            },
        ];
        for check in &held {
            let err = try_release("pv-old", check).unwrap_err();
            assert!(err.to_string().contains("pv-old"), "{err}");
        }
    }

    #[test]
    fn a_record_without_releases_reads_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = BindingStore::new(dir.path());
        std::fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        std::fs::write(
            store.path(),
            r#"{"version": 1, "bindings": {"default/data": "pv-a"}}"#,
        )
        .unwrap();
        let recorded = store.load().unwrap();
        assert_eq!(recorded.bindings["default/data"], "pv-a");
        assert!(recorded.released.is_empty());
    }

    #[test]
    fn updates_from_many_threads_lose_none() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let root = root.clone();
                std::thread::spawn(move || {
                    BindingStore::new(&root)
                        .update(|r| {
                            (
                                r.bindings
                                    .insert(format!("ns/c{i}"), format!("pv{i}"))
                                    .is_none(),
                                (),
                            )
                        })
                        .unwrap()
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert_eq!(BindingStore::new(&root).load().unwrap().bindings.len(), 8);
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
