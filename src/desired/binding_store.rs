//! Durable record of file-mode PVC→PV bindings under `<root>/state/bindings.json` (rule 6:
//! once made, a binding survives restarts, so a claim never moves to another volume), and of
//! the volumes released from deleted claims, which no claim gets until they are made available.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::file_identity::{identity, Identity};
use crate::host::state_file::{locked, write_json};
use crate::shared::lock;

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
    pub released: BTreeMap<String, ReleasedVolume>,
    /// PersistentVolume name → the reclaim policy it had when it was bound: the policy it is
    /// released with (as Kubernetes fixes a PV's policy when it is made), whatever its
    /// StorageClass manifest says by then.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub policies: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedVolume {
    /// The claim it was bound to, `namespace/name`.
    pub claim: String,
    /// Its reclaim policy when it was released. Only a volume released with Delete is ever
    /// cleaned: a StorageClass manifest that goes missing later cannot turn a Retain disk into
    /// one to wipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
}

impl ReleasedVolume {
    pub fn deletes(&self) -> bool {
        self.reclaim_policy.as_deref() == Some("Delete")
    }
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
    /// The record as this process last wrote it, by the file's identity then: a load that
    /// finds that same file takes it from here instead of parsing it again, and a change event
    /// for it is this process's own write. Any other writer replaces the file (a new inode)
    /// or changes its size or times, so it is never mistaken for this version.
    written: Arc<Mutex<Option<Written>>>,
}

struct Written {
    identity: Identity,
    recorded: Recorded,
    /// It was made from a version this process did not write (`volumed release`'s, say):
    /// its change event brings that news, so it is not only this process's own write.
    news: bool,
}

impl BindingStore {
    pub fn new(root: &Path) -> Self {
        BindingStore {
            path: root.join("state").join("bindings.json"),
            written: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded bindings and releases; a missing record means none were made yet.
    pub fn load(&self) -> Result<Recorded, StoreError> {
        if let Some(recorded) = self.as_written() {
            return Ok(recorded);
        }
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

    /// Whether the record is the version this process wrote last: a change event for it is
    /// then this process's own write, with nothing new in it.
    pub fn is_own_write(&self) -> bool {
        let now = identity(&self.path);
        lock(&self.written)
            .as_ref()
            .is_some_and(|written| Some(written.identity) == now && !written.news)
    }

    fn as_written(&self) -> Option<Recorded> {
        let now = identity(&self.path)?;
        let written = lock(&self.written);
        let written = written.as_ref().filter(|w| w.identity == now)?;
        Some(written.recorded.clone())
    }

    /// Changes the record: reads it, lets `change` edit it (its answer says whether it did),
    /// and replaces it atomically (temp file, fsync, rename, fsync of the directory), all
    /// under the record's lock, so that the daemon and `volumed release` never lose each
    /// other's change. Returns `change`'s answer.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Recorded) -> (bool, T),
    ) -> Result<T, StoreError> {
        let lock_file = self.path.with_extension("lock");
        let fail = |source| StoreError::Lock {
            path: self.path.clone(),
            source,
        };
        locked(&lock_file, || {
            let news = self.as_written().is_none();
            let mut recorded = self.load()?;
            let (changed, answer) = change(&mut recorded);
            if changed {
                let record = Record {
                    version: 1,
                    recorded,
                };
                *lock(&self.written) = None;
                write_json(&self.path, &record).map_err(|source| StoreError::Write {
                    path: self.path.clone(),
                    source,
                })?;
                // Looked at under the lock: no other writer can have replaced it yet.
                if let Some(identity) = identity(&self.path) {
                    *lock(&self.written) = Some(Written {
                        identity,
                        recorded: record.recorded,
                        news,
                    });
                }
            }
            Ok(answer)
        })
        .map_err(fail)?
    }
}

/// Why `volumed release` refused a volume.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    #[error("PersistentVolume {pv} is bound to claim {claim}, which the manifests still have: it is released when the claim's manifest is deleted")]
    Bound { pv: String, claim: String },
    #[error("PersistentVolume {pv} is bound to claim {claim}, whose manifest is gone but which a pod in the manifests still names: delete that pod's manifest, and the claim's volume is released")]
    NamedByPod { pv: String, claim: String },
    #[error("PersistentVolume {pv} is bound to claim {claim}, whose manifest is gone, and the daemon has not released it yet: wait for `volumed run` to release it (`volumed status` shows it), or run `volumed run --once`")]
    NotYetReleased { pv: String, claim: String },
    #[error("PersistentVolume {pv} is neither released nor bound in the binding record: there is nothing to release")]
    NotReleased { pv: String },
    #[error("PersistentVolume {pv} is being cleaned (see `volumed status`): it is available again as soon as its cleanup is done")]
    Cleaning { pv: String },
    #[error("PersistentVolume {pv} was released with reclaim policy Delete and is a local disk volumed cleans: `volumed run` cleans it and makes it available by itself (see `volumed status`); released by hand it would be offered with its old data")]
    CleanedByVolumed { pv: String },
    #[error(
        "PersistentVolume {pv} is still mounted at {at}: release it once the pod using it is gone"
    )]
    InUse { pv: String, at: PathBuf },
}

/// What `volumed release` knows of a volume besides the record.
pub struct ReleaseCheck<'a> {
    /// Claims the manifests have.
    pub claims: &'a std::collections::BTreeSet<String>,
    /// Claims a pod in the manifests names.
    pub named_by_pods: &'a std::collections::BTreeSet<String>,
    /// Its cleanup is journaled.
    pub cleaning: bool,
    /// It is a local disk volumed discovered, which `volumed run` cleans when it was released
    /// with reclaim policy Delete.
    pub local_disk: bool,
    /// A pod volume mount of it, if any.
    pub mounted_at: Option<PathBuf>,
}

/// Makes `pv`, released from a deleted claim, available: takes it out of the record's
/// releases. Returns the claim it was bound to. Pure: the caller reads and writes the record.
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
    let released = match (recorded.released.get(pv), bound) {
        (Some(released), _) => released.clone(),
        (None, Some(claim)) if check.claims.contains(&claim) => {
            return Err(ReleaseError::Bound {
                pv: pv_owned(),
                claim,
            })
        }
        (None, Some(claim)) if check.named_by_pods.contains(&claim) => {
            return Err(ReleaseError::NamedByPod {
                pv: pv_owned(),
                claim,
            })
        }
        (None, Some(claim)) => {
            return Err(ReleaseError::NotYetReleased {
                pv: pv_owned(),
                claim,
            })
        }
        (None, None) => return Err(ReleaseError::NotReleased { pv: pv_owned() }),
    };
    if check.cleaning {
        return Err(ReleaseError::Cleaning { pv: pv_owned() });
    }
    if check.local_disk && released.deletes() {
        return Err(ReleaseError::CleanedByVolumed { pv: pv_owned() });
    }
    if let Some(at) = &check.mounted_at {
        return Err(ReleaseError::InUse {
            pv: pv_owned(),
            at: at.clone(),
        });
    }
    recorded.released.remove(pv);
    Ok(released.claim)
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
            policies: Default::default(),
            bindings: BTreeMap::from([("default/data".to_string(), "pv-small".to_string())]),
            released: BTreeMap::from([("pv-old".to_string(), released("default/gone", "Retain"))]),
        };
        let copy = recorded.clone();
        store.update(|r| (true, *r = copy)).unwrap();
        assert_eq!(BindingStore::new(dir.path()).load().unwrap(), recorded);
    }

    #[test]
    fn its_own_write_is_known_and_another_writers_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = BindingStore::new(dir.path());
        let bind = |claim: &'static str| {
            move |r: &mut Recorded| {
                r.bindings.insert(claim.into(), "pv".into());
                (true, ())
            }
        };
        daemon.update(bind("ns/a")).unwrap();
        daemon.update(bind("ns/a2")).unwrap();
        assert!(daemon.is_own_write(), "the daemon's write is its own");
        // `volumed release` is another process: another store, the same file.
        let other = BindingStore::new(dir.path());
        other.update(bind("ns/b")).unwrap();
        assert!(!daemon.is_own_write(), "a write by another is news");
        let seen = daemon.load().unwrap();
        assert_eq!(
            seen.bindings.keys().collect::<Vec<_>>(),
            ["ns/a", "ns/a2", "ns/b"]
        );
        // The daemon writes again before it saw that event: its write carries the news.
        daemon.update(bind("ns/a3")).unwrap();
        assert!(
            !daemon.is_own_write(),
            "made from another's version: still news"
        );
        daemon.update(bind("ns/a4")).unwrap();
        assert!(daemon.is_own_write());
        // Written in place by hand (no new inode): its size and times differ.
        let text = std::fs::read_to_string(daemon.path()).unwrap();
        daemon.update(bind("ns/c")).unwrap();
        std::fs::write(daemon.path(), text).unwrap();
        assert!(!daemon.is_own_write());
        assert!(!daemon.load().unwrap().bindings.contains_key("ns/c"));
    }

    fn released(claim: &str, policy: &str) -> ReleasedVolume {
        ReleasedVolume {
            claim: claim.into(),
            reclaim_policy: Some(policy.into()),
        }
    }

    #[test]
    fn a_volume_is_released_by_hand_only_when_nothing_holds_it() {
        let record = Recorded {
            policies: Default::default(),
            bindings: BTreeMap::from([
                ("shop/live".to_string(), "pv-live".to_string()),
                ("shop/named".to_string(), "pv-named".to_string()),
                ("shop/gone".to_string(), "pv-unreleased".to_string()),
            ]),
            released: BTreeMap::from([
                ("pv-old".to_string(), released("shop/old", "Retain")),
                ("pv-wiped".to_string(), released("shop/wiped", "Delete")),
            ]),
        };
        let claims = std::collections::BTreeSet::from(["shop/live".to_string()]);
        let named = std::collections::BTreeSet::from(["shop/named".to_string()]);
        let check = |cleaning, local_disk, mounted_at: Option<&str>| ReleaseCheck {
            claims: &claims,
            named_by_pods: &named,
            cleaning,
            local_disk,
            mounted_at: mounted_at.map(PathBuf::from),
        };
        let try_release = |pv: &str, check: &ReleaseCheck| {
            let mut r = record.clone();
            release(&mut r, pv, check).map(|claim| (claim, r))
        };
        let free = check(false, true, None);
        let (claim, after) = try_release("pv-old", &free).unwrap();
        assert_eq!(claim, "shop/old");
        assert!(!after.released.contains_key("pv-old") && after.bindings == record.bindings);
        // A Delete volume that is no local disk of volumed's is not cleaned: released by hand.
        assert!(try_release("pv-wiped", &check(false, false, None)).is_ok());
        let refusals = [
            ("pv-live", &free, "Bound"),
            ("pv-named", &free, "NamedByPod"),
            ("pv-unreleased", &free, "NotYetReleased"),
            ("pv-none", &free, "NotReleased"),
            ("pv-old", &check(true, false, None), "Cleaning"),
            ("pv-wiped", &free, "CleanedByVolumed"),
            (
                "pv-old",
                &check(false, false, Some("/r/pods/u/v/pv-old")),
                "InUse",
            ),
        ];
        for (pv, check, want) in refusals {
            let err = try_release(pv, check).unwrap_err();
            let got = format!("{err:?}");
            assert!(got.starts_with(want), "{pv}: {got}, not {want}");
            assert!(err.to_string().contains(pv), "{err}");
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
