//! API mode: the discovered PVs are created through the API. Runs as a supervised task beside
//! the sync loop: it looks again when the mount table or the block devices change, and on a
//! slow resync. It only ever creates: a PV that exists (ours, or anyone's of that name) is
//! left as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node as NodeObject, PersistentVolume};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cleaner::Cleaner;
use super::cleanup::vanished;
use super::config::LocalPvConfig;
use super::discover::{discover, Node};
use super::events::{DISK_BACK, DISK_GONE};
use crate::actual::devices::BlockDevice;
use crate::host::local_dirs::scan_mount_dir;
use crate::model::mountinfo::MountTable;
use crate::shared::lock;

/// Why the publisher stopped before it was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the mount-table watcher the local-PV publisher follows stopped")]
    MountsGone,
}

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
    /// Carries out the cleanups of released PVs.
    pub cleaner: Cleaner,
    /// Where a vanished or returned disk is told, on its PV.
    pub events: Arc<super::events::PvEvents>,
    /// PVs of ours whose disk is gone, as last reported.
    pub vanished: std::sync::Mutex<BTreeSet<String>>,
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
            // The watch only wakes the publisher: each pass reads the table afresh, so a
            // change the watch has not delivered yet is not missed.
            self.mounts.borrow_and_update();
            let done = match volumes.list(&ListParams::default()).await {
                Ok(list) => {
                    let cleaned = self.cleaner.pass(&list.items).await;
                    // A PV just deleted may linger (its finalizer) in the list taken before:
                    // it is published again from the next pass's list, a moment later.
                    let mut held = cleaned.cleaning.clone();
                    for name in &cleaned.deleted {
                        published.remove(name);
                        held.insert(name.clone());
                    }
                    let made = !cleaned.hold_publishing
                        && self
                            .publish_once(&volumes, &list.items, &held, &mut published)
                            .await;
                    made && cleaned.done && cleaned.deleted.is_empty()
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot list PVs; local PVs are looked at again soon");
                    false
                }
            };
            let wait = if done {
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
        listed: &[PersistentVolume],
        held: &BTreeSet<String>,
        published: &mut BTreeSet<String>,
    ) -> bool {
        let mut done = true;
        let mut scans = Vec::new();
        let mounter = self.cleaner.mounter.clone();
        let read = tokio::task::spawn_blocking(move || mounter.mount_table());
        let table = match tokio::time::timeout(self.scan_timeout, read).await {
            Ok(Ok(Ok(table))) => table,
            Ok(Ok(Err(err))) => {
                tracing::warn!(%err, "cannot read the mount table for local PVs; they are looked at again soon");
                return false;
            }
            _ => {
                tracing::warn!("reading the mount table for local PVs took too long; they are looked at again soon");
                return false;
            }
        };
        for class in &self.config.classes {
            let (dir, entries) = (class.mount_dir().to_path_buf(), table.clone());
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
        super::count_discovery(&self.config, &found);
        let local_path =
            |pv: &PersistentVolume| pv.spec.as_ref()?.local.as_ref().map(|l| l.path.clone());
        self.report_vanished(listed, &found.volumes).await;
        for skipped in &found.skipped {
            tracing::debug!(path = %skipped.path.display(), class = skipped.storage_class, reason = skipped.reason, "local disk skipped");
        }
        for pv in found.volumes {
            let name = pv.metadata.name.clone().unwrap_or_default();
            // Being cleaned, or just deleted: published again once that is over.
            if published.contains(&name) || held.contains(&name) {
                continue;
            }
            // Another PV (anyone's) already offers this disk: one disk, one PV.
            let path = local_path(&pv);
            if listed.iter().any(|other| {
                other.metadata.name.as_deref() != Some(name.as_str()) && local_path(other) == path
            }) {
                tracing::debug!(
                    pv = name,
                    "another PV already offers this disk; not published"
                );
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
                // There already: ours from an earlier run, or someone else's; left alone. One
                // still being deleted is created again once it is gone.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    let terminating = listed.iter().any(|p| {
                        p.metadata.name.as_deref() == Some(name.as_str())
                            && p.metadata.deletion_timestamp.is_some()
                    });
                    if terminating {
                        done = false;
                    } else {
                        published.insert(name);
                    }
                }
                Err(err) => {
                    tracing::warn!(pv = name, %err, "cannot create a local PV; it is tried again soon");
                    done = false;
                }
            }
        }
        done
    }

    /// Tells once (log and an Event on the PV) of each PV of ours whose disk discovery no
    /// longer finds, and once of its return.
    async fn report_vanished(&self, listed: &[PersistentVolume], found: &[PersistentVolume]) {
        let paths: BTreeSet<String> = found
            .iter()
            .filter_map(|pv| Some(pv.spec.as_ref()?.local.as_ref()?.path.clone()))
            .collect();
        let now = vanished(&self.node_name, listed, &paths);
        let told = std::mem::replace(&mut *lock(&self.vanished), now.clone());
        let events = &self.events;
        let by_name = |name: &String| {
            listed
                .iter()
                .find(|pv| pv.metadata.name.as_ref() == Some(name))
        };
        for name in now.difference(&told) {
            tracing::warn!(pv = name, "the disk of a local PV is gone (unmounted or removed); the PV is kept, and its pods wait until the disk is back");
            if let Some(pv) = by_name(name) {
                events.forget(name, DISK_BACK);
                let message = "its disk is gone (unmounted or removed); the PV is kept, never deleted for this, and is used again when the disk is back".to_string();
                events.tell(pv, DISK_GONE, message).await;
            }
        }
        for name in told.difference(&now) {
            tracing::info!(pv = name, "the disk of a local PV is back");
            if let Some(pv) = by_name(name) {
                events.forget(name, DISK_GONE);
                events
                    .tell(pv, DISK_BACK, "its disk is back".to_string())
                    .await;
            }
        }
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
