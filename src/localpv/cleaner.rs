//! Carries out the cleanups `cleanup` allows: journal first, clean on a worker thread (one
//! job per PV at a time, even past its deadline), then (API mode) delete the PV, guarded by
//! its uid and resource version, so that its disk is published again, clean. In file mode the
//! caller makes the cleaned disks available again (it drops their releases).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DeleteParams, Preconditions};

use super::cleanup::{releases, Cleaning, Journal};
use super::config::LocalPvConfig;
use super::events::{PvEvents, CLEANUP_FAILED};
use crate::host::local_dirs::{empty_mount_point, wipe_device};
use crate::host::state_file::write_json;
use crate::host::Mounter;
use crate::shared::lock;

/// Where the cleanups under way are journaled.
pub fn journal_path(root_dir: &Path) -> PathBuf {
    root_dir.join("state").join("localpv-cleanups.json")
}

/// The cleanup journal under `root_dir` (none yet: empty), or why it cannot be read.
pub fn read_journal(root_dir: &Path) -> Result<Journal, String> {
    let path = journal_path(root_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
            format!(
                "the local-PV cleanup journal {} is unreadable: {err}",
                path.display()
            )
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(err) => Err(format!(
            "cannot read the local-PV cleanup journal {}: {err}",
            path.display()
        )),
    }
}

pub struct Cleaner {
    /// API mode: where cleaned PVs are deleted and failed cleanups told. File mode: none.
    pub cluster: Option<Cluster>,
    pub node_name: String,
    pub config: LocalPvConfig,
    pub mounter: Arc<dyn Mounter>,
    pub root_dir: PathBuf,
    /// How long one cleanup is waited for (it goes on past that; nothing else starts on it).
    pub timeout: Duration,
    /// PVs whose cleanup job is running (it may outlive a pass, and its deadline).
    pub running: Arc<Mutex<BTreeSet<String>>>,
    /// Journaled PVs found no longer Released, as already told (told once, not every pass).
    pub stuck: Mutex<BTreeSet<String>>,
}

pub struct Cluster {
    pub volumes: Api<PersistentVolume>,
    /// Where a failed cleanup is told, on the PV.
    pub events: Arc<PvEvents>,
}

/// What a pass left: whether all is done, and which PVs were deleted (their disks are
/// published again) or are being cleaned (not published meanwhile).
#[derive(Default)]
pub struct Cleaned {
    pub done: bool,
    pub deleted: Vec<String>,
    pub cleaning: BTreeSet<String>,
    /// The journal is unreadable: no disk is published, as any may be half clean.
    pub hold_publishing: bool,
}

impl Cleaner {
    fn journal_path(&self) -> PathBuf {
        journal_path(&self.root_dir)
    }

    /// The journal; `None` when it exists and cannot be read (nothing is cleaned or published
    /// from a journal that may hold unfinished cleanups).
    fn load_journal(&self) -> Option<Journal> {
        read_journal(&self.root_dir)
            .inspect_err(|err| tracing::error!(err, "no local PV is cleaned or published until the cleanup journal is fixed or removed"))
            .ok()
    }

    fn save_journal(&self, journal: &Journal) -> bool {
        write_json(&self.journal_path(), journal)
            .inspect_err(|err| tracing::error!(path = %self.journal_path().display(), %err, "cannot write the local-PV cleanup journal; cleanups wait"))
            .is_ok()
    }

    /// One pass over the PVs as just listed.
    pub async fn pass(&self, listed: &[PersistentVolume]) -> Cleaned {
        let mut out = Cleaned {
            done: true,
            ..Cleaned::default()
        };
        let Some(loaded) = self.load_journal() else {
            out.done = false;
            out.hold_publishing = true;
            return out;
        };
        let mut journal = loaded.clone();
        let (found, refused) = releases(&self.node_name, &self.config, listed);
        for why in refused {
            tracing::debug!(why, "a released local PV is not cleaned");
        }
        let releasable: BTreeSet<String> = found.iter().map(|r| r.pv.clone()).collect();
        for release in found {
            let class = &self.config.classes[release.class];
            journal
                .cleaning
                .entry(release.pv.clone())
                .or_insert(Cleaning {
                    host_path: class.host_dir.join(&release.entry),
                    class: class.storage_class.clone(),
                    entry: release.entry.clone(),
                    block: release.block,
                    cleaned: false,
                    last_error: None,
                });
        }
        out.cleaning = journal.cleaning.keys().cloned().collect();
        // Nothing is cleaned before the journal says so (a pass with nothing new writes
        // nothing: passes come at every mount-table change).
        if journal != loaded && !self.save_journal(&journal) {
            out.done = false;
            return out;
        }
        let present: BTreeSet<&str> = listed
            .iter()
            .filter_map(|pv| pv.metadata.name.as_deref())
            .collect();
        for (name, entry) in journal.cleaning.clone() {
            if present.contains(name.as_str()) && !releasable.contains(&name) {
                // Journaled, but no longer a Released PV of ours: someone changed it. Its disk
                // may be half clean: it is neither cleaned further nor published.
                if lock(&self.stuck).insert(name.clone()) {
                    tracing::warn!(pv = name, journal = %self.journal_path().display(), "a local PV whose cleanup began is no longer Released; its disk is left alone and not published: check it, then remove its entry from the cleanup journal");
                }
                out.done = false;
                continue;
            }
            lock(&self.stuck).remove(&name);
            if !entry.cleaned {
                let result = self.clean(&name, &entry).await;
                if let Some(e) = journal.cleaning.get_mut(&name) {
                    e.cleaned = result.is_ok();
                    e.last_error = result.clone().err();
                }
                let result_label = if result.is_ok() { "done" } else { "failed" };
                crate::metrics::get()
                    .local_cleanups
                    .get_or_create(&crate::metrics::CleanupLabels {
                        result: result_label,
                    })
                    .inc();
                if let Err(why) = result {
                    // Kept in the journal, where `volumed status` shows it.
                    self.save_journal(&journal);
                    if journal.cleaning[&name].last_error != entry.last_error {
                        tracing::warn!(pv = name, why, "a released local PV is not cleaned yet; it stays Released and is tried again");
                    }
                    let pv = listed
                        .iter()
                        .find(|pv| pv.metadata.name.as_deref() == Some(name.as_str()));
                    if let (Some(pv), Some(cluster)) = (pv, &self.cluster) {
                        let message = format!("the cleanup of its disk {} failed, so it stays Released and is tried again: {why}", entry.host_path.display());
                        cluster.events.tell(pv, CLEANUP_FAILED, message).await;
                    }
                    out.done = false;
                    continue;
                }
                if let Some(cluster) = &self.cluster {
                    cluster.events.forget(&name, CLEANUP_FAILED);
                }
                if !self.save_journal(&journal) {
                    out.done = false;
                    continue;
                }
            }
            if present.contains(name.as_str()) && !self.delete(&name, listed).await {
                out.done = false;
                continue;
            }
            journal.cleaning.remove(&name);
            if self.save_journal(&journal) {
                out.cleaning.remove(&name);
                out.deleted.push(name.clone());
                if self.cluster.is_some() {
                    tracing::info!(
                        pv = name,
                        "cleaned a released local PV and deleted it; its disk is published again"
                    );
                } else {
                    tracing::info!(
                        pv = name,
                        "cleaned a released local PV; it is available again"
                    );
                }
            } else {
                out.done = false;
            }
        }
        out
    }

    /// Runs the cleanup job of one PV, unless one is still running (past its deadline).
    async fn clean(&self, name: &str, entry: &Cleaning) -> Result<(), String> {
        let Some(class) = self
            .config
            .classes
            .iter()
            .find(|c| c.storage_class == entry.class)
        else {
            return Err(format!("class {} is no longer configured", entry.class));
        };
        if !lock(&self.running).insert(name.to_string()) {
            return Err("its cleanup from an earlier pass is still running".into());
        }
        let (mounter, mount_dir, dir_entry) = (
            self.mounter.clone(),
            class.mount_dir().to_path_buf(),
            entry.entry.clone(),
        );
        let (cleaner, root, block) = (
            class.block_cleaner.clone(),
            self.root_dir.clone(),
            entry.block,
        );
        let (running, pv) = (self.running.clone(), name.to_string());
        let job = tokio::task::spawn_blocking(move || {
            let result = if block {
                wipe_device(
                    mounter.as_ref(),
                    &mount_dir,
                    &dir_entry,
                    cleaner.as_deref(),
                    &root,
                )
            } else {
                empty_mount_point(mounter.as_ref(), &mount_dir, &dir_entry)
            };
            lock(&running).remove(&pv);
            result
        });
        match tokio::time::timeout(self.timeout, job).await {
            Ok(Ok(result)) => result.map_err(|e| e.to_string()),
            Ok(Err(join)) => Err(format!("the cleanup died: {join}")),
            Err(_) => Err("the cleanup takes longer than its deadline (a hung disk?); it goes on, and nothing else starts on this disk until it ends".into()),
        }
    }

    /// Deletes a cleaned PV if it is still the Released one that was cleaned (same uid and
    /// resource version as listed). True when it is gone (in file mode: at once).
    async fn delete(&self, name: &str, listed: &[PersistentVolume]) -> bool {
        let Some(cluster) = &self.cluster else {
            return true;
        };
        let Some(pv) = listed
            .iter()
            .find(|pv| pv.metadata.name.as_deref() == Some(name))
        else {
            return true;
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pv.metadata.uid.clone(),
                resource_version: pv.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match cluster.volumes.delete(name, &params).await {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 404 => true,
            Err(err) => {
                tracing::warn!(pv = name, %err, "a cleaned local PV cannot be deleted (changed meanwhile?); tried again");
                false
            }
        }
    }
}
