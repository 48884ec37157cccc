//! File mode's cleanup of released local disks: the file source sends the volumes it knows,
//! each pass gives them their phases from the binding record as it is now, the local-PV
//! cleaner (API mode's, without a cluster) cleans the Released local disks among them, and
//! each disk cleaned has its release dropped from the record, so the next read of the
//! manifests offers it to claims again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolume;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::binding_store::{BindingStore, Recorded};
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
    /// The volumes the file source's last complete read knows.
    pub volumes: watch::Receiver<Arc<Vec<PersistentVolume>>>,
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
            let listed = self.volumes.borrow_and_update().clone();
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
                changed = self.volumes.changed() => changed.map_err(|_| ReclaimError::SourceGone)?,
                changed = self.mounts.changed() => changed.map_err(|_| ReclaimError::MountsGone)?,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: cleans what may be cleaned, then drops the releases of the disks cleaned.
    /// True when nothing is left to retry.
    pub async fn pass(&self, volumes: &[PersistentVolume]) -> bool {
        // The record now, not as the source last read it: a disk this task made available a
        // moment ago may be bound already, and must not be taken for Released.
        let store = self.store.clone();
        let recorded = tokio::task::spawn_blocking(move || store.load())
            .await
            .expect("reading the binding record does not panic");
        let recorded = match recorded {
            Ok(recorded) => recorded,
            Err(err) => {
                tracing::warn!(%err, "released local disks are not cleaned while the binding record is unreadable");
                return false;
            }
        };
        let listed = with_phases(volumes, &recorded);
        let cleaned = self.cleaner.pass(&listed).await;
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

/// The volumes with the phases the record gives them: Released (with the reclaim policy it
/// was released with; unknown counts as Retain), Bound, or Available.
pub fn with_phases(volumes: &[PersistentVolume], recorded: &Recorded) -> Vec<PersistentVolume> {
    let bound: std::collections::BTreeSet<&String> = recorded.bindings.values().collect();
    volumes
        .iter()
        .map(|pv| {
            let mut pv = pv.clone();
            let name = pv.metadata.name.clone().unwrap_or_default();
            let phase = match recorded.released.get(&name) {
                Some(released) => {
                    let policy = released.reclaim_policy.as_deref().unwrap_or("Retain");
                    pv.spec
                        .get_or_insert_with(Default::default)
                        .persistent_volume_reclaim_policy = Some(policy.to_string());
                    "Released"
                }
                None if bound.contains(&name) => "Bound",
                None => "Available",
            };
            pv.status.get_or_insert_with(Default::default).phase = Some(phase.into());
            pv
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::binding_store::ReleasedVolume;
    use std::collections::BTreeMap;

    fn pv(name: &str, policy: &str) -> PersistentVolume {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"persistentVolumeReclaimPolicy": policy},
        }))
        .unwrap()
    }

    #[test]
    fn phases_and_policies_come_from_the_record_as_it_is_now() {
        let recorded = Recorded {
            policies: Default::default(),
            bindings: BTreeMap::from([("shop/new".to_string(), "again".to_string())]),
            released: BTreeMap::from([
                (
                    "kept".to_string(),
                    ReleasedVolume {
                        claim: "shop/logs".into(),
                        reclaim_policy: Some("Retain".into()),
                    },
                ),
                (
                    "unknown".to_string(),
                    ReleasedVolume {
                        claim: "shop/old".into(),
                        reclaim_policy: None,
                    },
                ),
            ]),
        };
        // As read now, a missing StorageClass has made every discovered disk Delete.
        let volumes = [
            pv("kept", "Delete"),
            pv("unknown", "Delete"),
            pv("again", "Delete"),
            pv("free", "Delete"),
        ];
        let got: Vec<(String, String)> = with_phases(&volumes, &recorded)
            .iter()
            .map(|pv| {
                let phase = pv
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                let policy = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.persistent_volume_reclaim_policy.clone())
                    .unwrap_or_default();
                (phase, policy)
            })
            .collect();
        let want = [
            ("Released", "Retain"),
            ("Released", "Retain"),
            ("Bound", "Delete"),
            ("Available", "Delete"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
