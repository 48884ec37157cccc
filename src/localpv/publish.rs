//! API mode: the discovered PVs are created through the API. Runs as a supervised task beside
//! the sync loop: it looks again when the mount table or the block devices change, and on a
//! slow resync. It only ever creates: a PV that exists (ours, or anyone's of that name) is
//! left as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node as NodeObject, PersistentVolume};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cleanup::{releases, still_mounted, Journal};
use super::config::LocalPvConfig;
use super::discover::{discover, Node};
use crate::actual::devices::BlockDevice;
use crate::host::local_dirs::{empty_mount_point, scan_mount_dir, wipe_device};
use crate::host::state_file::write_json;
use crate::model::mountinfo::MountTable;

/// Why the publisher stopped before it was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the mount-table watcher the local-PV publisher follows stopped")]
    MountsGone,
}

/// A cleanup may take this many scan deadlines (removing a big tree takes a while).
const CLEAN_TIMEOUT_FACTOR: u32 = 10;

/// The first retry after an incomplete pass.
const RETRY_FIRST: Duration = Duration::from_secs(1);

pub struct Publisher {
    pub client: Client,
    pub node_name: String,
    pub config: LocalPvConfig,
    pub mounts: watch::Receiver<Arc<MountTable>>,
    /// Wakes the publisher when block devices change (hot-plug), when the daemon watches them.
    pub devices: Option<watch::Receiver<Arc<Vec<BlockDevice>>>>,
    pub resync: Duration,
    /// Each scan's deadline: a hung disk delays its class's PVs, never the others' or the loop.
    pub scan_timeout: Duration,
    /// Where the cleanup journal lives (`<root>/state`).
    pub root_dir: PathBuf,
}

impl Publisher {
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), PublishError> {
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        // Created (or found existing) by this process: not created again.
        let mut published = BTreeSet::new();
        // After a pass that left something undone (a create failed, the Node unreadable), the
        // next comes soon, doubling up to the resync.
        let mut retry = RETRY_FIRST;
        // Any PV change may be a release to clean (or a PV of ours deleted by hand).
        let mut pv_events = watcher(volumes.clone(), watcher::Config::default()).boxed();
        loop {
            let table = self.mounts.borrow_and_update().clone();
            let cleaned = self.clean_released(&volumes, &table, &mut published).await;
            let wait = if self.publish_once(&volumes, &table, &mut published).await && cleaned {
                retry = RETRY_FIRST;
                self.resync
            } else {
                let wait = retry.min(self.resync);
                retry = retry.saturating_mul(2);
                wait
            };
            let devices = async {
                match self.devices.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = self.mounts.changed() => changed.map_err(|_| PublishError::MountsGone)?,
                _ = devices => {}
                Some(_) = pv_events.next() => {
                    // A burst (a list at start) is one pass.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while pv_events.next().now_or_never().flatten().is_some() {}
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One look and the creates it calls for; false when something is left to retry.
    async fn publish_once(
        &self,
        volumes: &Api<PersistentVolume>,
        table: &MountTable,
        published: &mut BTreeSet<String>,
    ) -> bool {
        let mut done = true;
        let mut scans = Vec::new();
        for class in &self.config.classes {
            let (dir, entries) = (class.mount_dir().to_path_buf(), table.entries.clone());
            let scan = tokio::task::spawn_blocking(move || scan_mount_dir(&dir, &entries));
            match tokio::time::timeout(self.scan_timeout, scan).await {
                Ok(Ok(Ok(entries))) => scans.push(entries),
                Ok(Ok(Err(err))) => {
                    tracing::warn!(class = class.storage_class, %err, "cannot scan a local-PV mount_dir; it is looked at again soon");
                    scans.push(Vec::new());
                    done = false;
                }
                _ => {
                    tracing::warn!(class = class.storage_class, dir = %class.mount_dir().display(), "scanning a local-PV mount_dir took too long (a hung disk?); it is looked at again soon");
                    scans.push(Vec::new());
                    done = false;
                }
            }
        }
        let Some(labels) = self.node_labels().await else {
            // Published without them, a PV's affinity would be wrong for good (PVs are never
            // changed once made): wait for the Node.
            return false;
        };
        let reclaim = self.reclaim_policies().await;
        let node = Node {
            name: &self.node_name,
            labels: &labels,
        };
        let found = discover(&node, &self.config, &scans, &reclaim);
        let cleaning = self.load_journal().cleaning;
        for skipped in &found.skipped {
            tracing::debug!(path = %skipped.path.display(), class = skipped.storage_class, reason = skipped.reason, "local disk skipped");
        }
        for pv in found.volumes {
            let name = pv.metadata.name.clone().unwrap_or_default();
            // Being cleaned: published again once that is done.
            if published.contains(&name) || cleaning.contains_key(&name) {
                continue;
            }
            match volumes.create(&PostParams::default(), &pv).await {
                Ok(_) => {
                    let path = pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.local.as_ref())
                        .map(|l| l.path.clone());
                    tracing::info!(pv = name, path, "published a local PV");
                    published.insert(name);
                }
                // There already: ours from an earlier run, or someone else's; left alone.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    published.insert(name);
                }
                Err(err) => {
                    tracing::warn!(pv = name, %err, "cannot create a local PV; it is tried again soon");
                    done = false;
                }
            }
        }
        done
    }

    fn journal_path(&self) -> PathBuf {
        self.root_dir.join("state").join("localpv-cleanups.json")
    }

    fn load_journal(&self) -> Journal {
        match std::fs::read(self.journal_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::error!(path = %self.journal_path().display(), %err, "the local-PV cleanup journal is unreadable; Released PVs are looked at afresh");
                Journal::default()
            }),
            Err(_) => Journal::default(),
        }
    }

    fn save_journal(&self, journal: &Journal) -> bool {
        match write_json(&self.journal_path(), journal) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(path = %self.journal_path().display(), %err, "cannot record a local-PV cleanup; it waits until the journal can be written");
                false
            }
        }
    }

    /// Cleans the Released PVs volumed made with reclaim policy Delete, then deletes them so
    /// that their disks are published again, clean. False when something is left to retry.
    async fn clean_released(
        &self,
        volumes: &Api<PersistentVolume>,
        table: &MountTable,
        published: &mut BTreeSet<String>,
    ) -> bool {
        let list = match volumes.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(err) => {
                tracing::warn!(%err, "cannot list PVs to find released local PVs; tried again soon");
                return false;
            }
        };
        let mut journal = self.load_journal();
        // A journaled PV that is gone was cleaned: deletion comes only after the cleaning.
        let present: BTreeSet<String> = list
            .iter()
            .filter_map(|pv| pv.metadata.name.clone())
            .collect();
        let before = journal.cleaning.len();
        journal.cleaning.retain(|name, _| present.contains(name));
        if journal.cleaning.len() != before && !self.save_journal(&journal) {
            return false;
        }
        let (found, refused) = releases(&self.node_name, &self.config, &list);
        for why in refused {
            tracing::debug!(why, "a released local PV is not cleaned");
        }
        let mut done = true;
        for release in found {
            let class = &self.config.classes[release.class];
            let mount_dir = class.mount_dir().to_path_buf();
            let real = mount_dir
                .canonicalize()
                .unwrap_or_else(|_| mount_dir.clone());
            let mount_point = real.join(&release.entry);
            if !release.block {
                if !table.entries.iter().any(|m| m.mount_point == mount_point) {
                    // Cleaning an unmounted mount point would clean the parent filesystem.
                    tracing::warn!(pv = release.pv, path = %mount_point.display(), "a released local PV's disk is not mounted; it is cleaned once it is back");
                    done = false;
                    continue;
                }
                if let Some(user) = still_mounted(&mount_point, &table.entries) {
                    tracing::info!(pv = release.pv, user = %user.display(), "a released local PV is still mounted elsewhere; it is cleaned once that mount is gone");
                    done = false;
                    continue;
                }
            }
            journal
                .cleaning
                .insert(release.pv.clone(), class.host_dir.join(&release.entry));
            if !self.save_journal(&journal) {
                return false;
            }
            let (entry, cleaner, entries) = (
                release.entry.clone(),
                class.block_cleaner.clone(),
                table.entries.clone(),
            );
            let block = release.block;
            let work = tokio::task::spawn_blocking(move || {
                if block {
                    wipe_device(&mount_dir, &entry, cleaner.as_deref(), &entries)
                } else {
                    empty_mount_point(&mount_dir, &entry)
                }
            });
            let cleaned =
                match tokio::time::timeout(self.scan_timeout * CLEAN_TIMEOUT_FACTOR, work).await {
                    Ok(Ok(result)) => result.map_err(|e| e.to_string()),
                    Ok(Err(join)) => Err(format!("the cleaner died: {join}")),
                    Err(_) => Err("cleaning took too long (a hung disk?)".into()),
                };
            if let Err(why) = cleaned {
                tracing::warn!(
                    pv = release.pv,
                    why,
                    "cleaning a released local PV failed; it stays Released and is tried again"
                );
                done = false;
                continue;
            }
            match volumes.delete(&release.pv, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => {
                    tracing::warn!(pv = release.pv, %err, "a cleaned local PV cannot be deleted; tried again soon");
                    done = false;
                    continue;
                }
            }
            journal.cleaning.remove(&release.pv);
            self.save_journal(&journal);
            published.remove(&release.pv);
            tracing::info!(
                pv = release.pv,
                "cleaned a released local PV and deleted it; its disk is published again"
            );
        }
        done
    }

    /// This node's labels (for `node_labels_for_pv`); `None` when they are needed and the
    /// Node cannot be read.
    async fn node_labels(&self) -> Option<BTreeMap<String, String>> {
        if self.config.node_labels_for_pv.is_empty() {
            return Some(BTreeMap::new());
        }
        let nodes: Api<NodeObject> = Api::all(self.client.clone());
        match nodes.get(&self.node_name).await {
            Ok(node) => Some(node.metadata.labels.unwrap_or_default()),
            Err(err) => {
                tracing::warn!(node = self.node_name, %err, "cannot read this node's labels for its local PVs; publishing waits for them");
                None
            }
        }
    }

    /// The reclaim policy of each configured StorageClass that exists and names one.
    async fn reclaim_policies(&self) -> BTreeMap<String, String> {
        let classes: Api<StorageClass> = Api::all(self.client.clone());
        let mut policies = BTreeMap::new();
        for class in &self.config.classes {
            if let Ok(object) = classes.get(&class.storage_class).await {
                if let Some(policy) = object.reclaim_policy {
                    policies.insert(class.storage_class.clone(), policy);
                }
            }
        }
        policies
    }
}
