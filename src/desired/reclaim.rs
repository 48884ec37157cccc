//! File mode's cleanup of released local disks: the file source sends the Released volumes,
//! the local-PV cleaner (API mode's, without a cluster) cleans the local disks among them, and
//! each disk cleaned has its release dropped from the binding record, so the next read of the
//! manifests offers it to claims again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::binding_store::BindingStore;
use crate::localpv::cleaner::Cleaner;
use crate::model::mountinfo::MountTable;

/// Why the reclaimer stopped before it was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error("the manifest source the local-disk cleaner follows stopped")]
    SourceGone,
    #[error("the mount-table watcher the local-disk cleaner follows stopped")]
    MountsGone,
}

/// The first retry after a pass that left something undone; it doubles up to the resync.
const RETRY_FIRST: Duration = Duration::from_secs(1);

pub struct Reclaimer {
    pub cleaner: Cleaner,
    pub store: BindingStore,
    /// The Released volumes, from the file source's last complete read.
    pub released: watch::Receiver<Arc<Vec<PersistentVolume>>>,
    /// Wakes it when the mount table changes (a pod's mount of a released disk went away).
    pub mounts: watch::Receiver<Arc<MountTable>>,
    /// Asks the file source for a read at once, after a disk was made available.
    pub reread: Arc<Notify>,
    pub resync: Duration,
}

impl Reclaimer {
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), ReclaimError> {
        let mut retry = RETRY_FIRST;
        loop {
            let listed = self.released.borrow_and_update().clone();
            self.mounts.borrow_and_update();
            let wait = if self.pass(&listed).await {
                retry = RETRY_FIRST;
                self.resync
            } else {
                let wait = retry.min(self.resync);
                retry = retry.saturating_mul(2);
                wait
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = self.released.changed() => changed.map_err(|_| ReclaimError::SourceGone)?,
                changed = self.mounts.changed() => changed.map_err(|_| ReclaimError::MountsGone)?,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: cleans what may be cleaned, then drops the releases of the disks cleaned.
    /// True when nothing is left to retry.
    pub async fn pass(&self, listed: &[PersistentVolume]) -> bool {
        let cleaned = self.cleaner.pass(listed).await;
        if cleaned.deleted.is_empty() {
            return cleaned.done;
        }
        let (store, names) = (self.store.clone(), cleaned.deleted);
        let dropped = tokio::task::spawn_blocking(move || {
            store.update(|recorded| {
                let before = recorded.released.len();
                recorded.released.retain(|pv, _| !names.contains(pv));
                (recorded.released.len() != before, ())
            })
        })
        .await
        .expect("the binding record's update does not panic");
        match dropped {
            Ok(()) => {
                self.reread.notify_one();
                cleaned.done
            }
            Err(err) => {
                // The disks stay Released: the next pass cleans them again (they are clean
                // already) and tries this again.
                tracing::warn!(%err, "cleaned local disks cannot be made available yet; tried again soon");
                false
            }
        }
    }
}
