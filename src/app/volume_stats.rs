//! Volume stats for `/metrics` (`kubelet_volume_stats_*` per claim): on a slow timer (the
//! resync), statvfs of each claim's mounted volume on a worker thread under `--op-timeout`. A
//! scrape only reads the gauges, so a hung NFS volume never stalls it; a path whose statvfs
//! still hangs is not asked again until it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::host::stats::{volume_stats, VolumeStats};
use crate::metrics::ClaimLabels;
use crate::shared::lock;
use crate::sync_loop::Progress;

pub struct StatsTask {
    pub progress: watch::Receiver<Progress>,
    /// Only a volume mounted now is looked at: the path of one that is not would show the
    /// root dir's filesystem.
    pub mounts: watch::Receiver<Arc<crate::model::mountinfo::MountTable>>,
    pub root_dir: PathBuf,
    pub every: Duration,
    pub deadline: Duration,
}

impl StatsTask {
    pub async fn run(self, cancel: CancellationToken) {
        let hanging: Arc<Mutex<BTreeSet<PathBuf>>> = Arc::default();
        let mut shown: BTreeSet<ClaimLabels> = BTreeSet::new();
        loop {
            let claims = self.claims();
            let mut now = BTreeMap::new();
            for (labels, path) in claims {
                if let Some(stats) = self.look(&path, &hanging).await {
                    now.insert(labels, stats);
                }
            }
            shown = publish(&now, &shown);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// Each claim of a volume mounted now, with the path of one pod's mount of it.
    fn claims(&self) -> BTreeMap<ClaimLabels, PathBuf> {
        let table = self.mounts.borrow().clone();
        let mounted = crate::model::mountinfo::PodMounts::index(&table.entries, &self.root_dir);
        let progress = self.progress.borrow();
        progress
            .planned_from
            .volumes
            .values()
            .filter(|v| !v.key.block && mounted.is_mounted(&v.key))
            .filter_map(|v| {
                let labels = ClaimLabels {
                    namespace: v.pod.namespace.clone(),
                    persistentvolumeclaim: v.claim.clone()?,
                };
                Some((labels, v.key.path(&self.root_dir)))
            })
            .collect()
    }

    async fn look(
        &self,
        path: &std::path::Path,
        hanging: &Arc<Mutex<BTreeSet<PathBuf>>>,
    ) -> Option<VolumeStats> {
        if !lock(hanging).insert(path.to_path_buf()) {
            return None; // Its last statvfs has not returned.
        }
        let (asked, still) = (path.to_path_buf(), hanging.clone());
        let job = tokio::task::spawn_blocking(move || {
            let stats = volume_stats(&asked);
            lock(&still).remove(&asked);
            stats
        });
        match tokio::time::timeout(self.deadline, job).await {
            Ok(Ok(Ok(stats))) => Some(stats),
            Ok(Ok(Err(err))) => {
                tracing::debug!(path = %path.display(), %err, "no volume stats");
                None
            }
            Ok(Err(_)) => None,
            Err(_) => {
                tracing::warn!(path = %path.display(), "statvfs of a volume hangs; its stats are left out until it returns");
                None
            }
        }
    }
}

/// Sets the gauges of the claims in `now`, and removes those of the claims `before` had that
/// `now` lacks. Returns the claims shown.
fn publish(
    now: &BTreeMap<ClaimLabels, VolumeStats>,
    before: &BTreeSet<ClaimLabels>,
) -> BTreeSet<ClaimLabels> {
    let metrics = crate::metrics::get();
    let families = [
        &metrics.capacity_bytes,
        &metrics.available_bytes,
        &metrics.used_bytes,
        &metrics.inodes,
        &metrics.inodes_free,
        &metrics.inodes_used,
    ];
    for gone in before.iter().filter(|c| !now.contains_key(*c)) {
        for family in families {
            family.remove(gone);
        }
    }
    let as_gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (claim, stats) in now {
        let values = [
            stats.capacity_bytes,
            stats.available_bytes,
            stats.used_bytes,
            stats.inodes,
            stats.inodes_free,
            stats.inodes_used,
        ];
        for (family, value) in families.iter().zip(values) {
            family.get_or_create(claim).set(as_gauge(value));
        }
    }
    now.keys().cloned().collect()
}
