//! The sync loop: waits for a new desired snapshot, a mount-table change, an op result or a
//! retry time; then calls `plan` and hands the ops to the executor. It does no I/O itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::plan::{plan, Op, OpKey};
use super::status::{self, Failures, StatusRow, VolumeState};
use crate::actual::mountinfo::{MountTable, PodMounts};
use crate::actual::watch::MountWatch;
use crate::actual::OnDisk;
use crate::desired::DesiredState;
use crate::executor::{Executor, OpEvent};

pub struct SyncLoop {
    pub root: PathBuf,
    pub desired: watch::Receiver<Arc<DesiredState>>,
    pub mounts: MountWatch,
    pub executor: Executor,
    pub events: mpsc::UnboundedReceiver<OpEvent>,
    /// Pod directories as last scanned; kept current from op results.
    pub on_disk: OnDisk,
    /// Stop once nothing is left to try (`run --once`) instead of running until cancelled.
    pub once: bool,
    /// Receives the failure list whenever it changes (for `volumed status`).
    pub failures_out: Option<watch::Sender<Failures>>,
    /// On cancel, how long to wait for in-flight ops before reporting without them.
    pub shutdown_grace: Duration,
}

/// Where the loop left the host.
#[derive(Debug)]
pub struct Report {
    pub desired: Arc<DesiredState>,
    pub rows: Vec<StatusRow>,
    /// Teardown failures of whole pods (their directories), by pod uid.
    pub pod_failures: BTreeMap<String, String>,
}

impl Report {
    /// True when the snapshot was complete and every wanted volume is in place and nothing
    /// failed.
    pub fn converged(&self) -> bool {
        self.desired.complete
            && self.pod_failures.is_empty()
            && self
                .rows
                .iter()
                .all(|r| matches!(r.state, VolumeState::Mounted | VolumeState::Unmanaged))
    }
}

impl SyncLoop {
    pub async fn run(mut self, cancel: CancellationToken) -> Report {
        let mut failures = Failures::new();
        let mut pod_failures = BTreeMap::new();
        // A plan is made only from a mount table read after our last op finished.
        let mut need_covers = 0;
        let mut source_open = true;
        // The pod-mount index is rebuilt only when a new table arrives, not on every pass.
        let mut indexed: Option<(Arc<MountTable>, PodMounts)> = None;
        loop {
            let table = self.mounts.tables.borrow_and_update().clone();
            let desired = self.desired.borrow_and_update().clone();
            if table.covers >= need_covers {
                if !indexed
                    .as_ref()
                    .is_some_and(|(seen, _)| Arc::ptr_eq(seen, &table))
                {
                    let index = PodMounts::index(&table.entries, &self.root);
                    indexed = Some((table.clone(), index));
                }
                let pod_mounts = &indexed.as_ref().expect("indexed above").1;
                let ops = plan(&desired, pod_mounts, &self.on_disk);
                let _span = tracing::debug_span!("pass", ops = ops.len()).entered();
                let started = self.executor.submit(ops);
                // Once mode does not wait for a stuck op: it is reported, and exit ends it.
                if self.once && started == 0 && self.executor.in_flight_on_time() == 0 {
                    break;
                }
            }
            let retry_at = self.executor.next_retry();
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = self.desired.changed(), if source_open => {
                    if changed.is_err() {
                        tracing::warn!("the desired-state source stopped; keeping its last snapshot");
                        source_open = false;
                    }
                }
                _ = self.mounts.tables.changed() => {}
                Some(event) = self.events.recv() => {
                    self.executor.complete(&event);
                    self.record(event, &mut failures, &mut pod_failures);
                    need_covers = self.mounts.refresh();
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => {}
            }
        }
        if cancel.is_cancelled() {
            self.drain(&mut failures, &mut pod_failures).await;
        }
        let table = self.mounts.tables.borrow().clone();
        let desired = self.desired.borrow().clone();
        let pod_mounts = PodMounts::index(&table.entries, &self.root);
        let rows = status::rows(&self.root, &desired, &pod_mounts, &self.on_disk, &failures);
        Report {
            desired,
            rows,
            pod_failures,
        }
    }

    /// Stops intake and lets in-flight ops finish (never aborting one half-way), then waits
    /// for a mount table that shows their effect, so the report is true.
    async fn drain(
        &mut self,
        failures: &mut Failures,
        pod_failures: &mut BTreeMap<String, String>,
    ) {
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        while self.executor.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.executor.complete(&event);
                    self.record(event, failures, pod_failures);
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.executor.in_flight(),
                        grace_s = self.shutdown_grace.as_secs(),
                        "ops still running at shutdown; exiting without waiting for them"
                    );
                    break;
                }
            }
        }
        let seq = self.mounts.refresh();
        let fresh = self.mounts.tables.wait_for(|t| t.covers >= seq);
        let _ = tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + Duration::from_secs(1)),
            fresh,
        )
        .await;
    }

    fn record(
        &mut self,
        event: OpEvent,
        failures: &mut Failures,
        pod_failures: &mut BTreeMap<String, String>,
    ) {
        let (op, outcome) = match event {
            OpEvent::Overdue { op, after } => {
                let stuck = format!(
                    "stuck: {} has run for more than {}s (the host may be hung on this path)",
                    op.verb(),
                    after.as_secs()
                );
                note(failures, pod_failures, &op, Some(stuck));
                self.publish(failures);
                return;
            }
            OpEvent::Finished { op, outcome, .. } => (op, outcome),
        };
        if let Some(pod_dirs) = outcome.pod_dirs {
            self.on_disk.set_pod(op.pod_uid(), pod_dirs);
        }
        match outcome.did {
            Ok(_) => note(failures, pod_failures, &op, None),
            Err(error) => note(
                failures,
                pod_failures,
                &op,
                Some(format!("{} failed: {error}", op.verb())),
            ),
        }
        self.publish(failures);
    }

    fn publish(&self, failures: &Failures) {
        if let Some(out) = &self.failures_out {
            out.send_if_modified(|current| {
                let changed = current != failures;
                if changed {
                    current.clone_from(failures);
                }
                changed
            });
        }
    }
}

fn note(
    failures: &mut Failures,
    pod_failures: &mut BTreeMap<String, String>,
    op: &Op,
    error: Option<String>,
) {
    let (map, key) = match op.key() {
        OpKey::Volume(key) => (failures, key.to_string()),
        OpKey::Pod(uid) => (pod_failures, uid),
    };
    match error {
        Some(error) => map.insert(key, error),
        None => map.remove(&key),
    };
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
