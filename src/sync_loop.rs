//! The sync loop: waits for a new desired snapshot, a mount-table change, an op result or a
//! retry time; then calls `plan` and hands the ops to the executor. It does no I/O itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::actual::devices::BlockDevice;
use crate::actual::watch::MountWatch;
use crate::desired::DesiredState;
use crate::executor::{describe_key, Executor, OpEvent};
use crate::model::mountinfo::{MountTable, PodMounts};
use crate::model::notice::Notice;
use crate::model::on_disk::OnDisk;
use crate::model::op::{Op, OpKey};
use crate::reconcile::notices;
use crate::reconcile::plan::plan_assigned;
use crate::reconcile::pod_dirs;
use crate::reconcile::status::{self, Failures, StatusRow, VolumeState};

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
    /// Where to tell pods about their volumes (Kubernetes Events in API mode).
    /// Where notices go (bounded: when the API is slow, the newest are dropped, not queued
    /// without end; the log has the same news).
    pub notices: Option<mpsc::Sender<Notice>>,
    /// The block-device inventory: a device coming or going retries failed volumes at once.
    pub devices: Option<watch::Receiver<Arc<Vec<BlockDevice>>>>,
    /// Where each pass and each finished op is counted, for whoever waits on the loop's
    /// progress (tests: "the loop has planned from this snapshot and is idle").
    pub progress: Option<watch::Sender<Progress>>,
}

/// How far the loop has got.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Passes planned (each over the newest snapshot and a table showing every op's effect).
    pub passes: u64,
    /// Op results recorded: finished (succeeded or failed) or reported stuck.
    pub op_results: u64,
    /// The snapshot the last pass planned from.
    pub planned_from: Arc<DesiredState>,
    /// The last pass started nothing and nothing is in flight: until an input changes or a
    /// retry comes due, the loop does nothing more.
    pub idle: bool,
    /// When the loop last went round (at least every `HEARTBEAT`): `/healthz` and the
    /// systemd watchdog judge it by this.
    pub ticked: Option<tokio::time::Instant>,
    /// A complete snapshot has been reconciled: some pass planned from one and then found
    /// nothing to start and nothing in flight (`/readyz`).
    pub reconciled: bool,
    /// Since when passes have been put off for want of a mount table showing the last op.
    pub blocked_since: Option<tokio::time::Instant>,
}

/// Whether the loop is alive at `now`, for `/healthz` and the systemd watchdog: it went round
/// within three heartbeats, and has not waited that long for a mount table it can plan on.
pub fn alive(progress: &Progress, now: tokio::time::Instant) -> Result<(), String> {
    let limit = HEARTBEAT * 3;
    let Some(ticked) = progress.ticked else {
        return Err("the sync loop has not started yet".into());
    };
    let since = now.saturating_duration_since(ticked);
    if since > limit {
        return Err(format!(
            "the sync loop has not gone round for {since:?} (it should every {HEARTBEAT:?})"
        ));
    }
    if let Some(blocked) = progress.blocked_since {
        let waited = now.saturating_duration_since(blocked);
        if waited > limit {
            return Err(format!("the sync loop has waited {waited:?} for a mount table that shows its last op (are mount-table reads failing? see the log)"));
        }
    }
    Ok(())
}

/// How long a stopping daemon waits for a format or check under way.
pub const FORMAT_GRACE: std::time::Duration = std::time::Duration::from_secs(80);

/// The loop goes round at least this often, even when nothing happens.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the loop left the host.
#[derive(Debug)]
pub struct Report {
    pub desired: Arc<DesiredState>,
    pub rows: Vec<StatusRow>,
    /// Failures of ops that are not about one volume (pod directories, global mounts), by
    /// what they are about.
    pub other_failures: BTreeMap<String, String>,
    /// Why a daemon loop stopped before it was cancelled: an input it needs closed.
    pub stopped: Option<String>,
}

impl Report {
    /// True when the snapshot was complete and every wanted volume is in place and nothing
    /// failed.
    pub fn converged(&self) -> bool {
        self.desired.complete
            && self.other_failures.is_empty()
            && self
                .rows
                .iter()
                .all(|r| matches!(r.state, VolumeState::Mounted | VolumeState::Unmanaged))
    }
}

/// What the loop keeps between passes.
#[derive(Default)]
struct Books {
    /// Volume failures by key, as last reported.
    failures: Failures,
    /// Failures of pod-directory and global-mount ops, by what they are about.
    other_failures: BTreeMap<String, String>,
    /// The newest mount table and its pod-mount index.
    indexed: Option<(Arc<MountTable>, PodMounts)>,
    /// Whether the last pass found the host matching a complete snapshot.
    matched: bool,
    /// Every pod seen in a snapshot, until its directory is gone: teardown news is told to it.
    known_pods: BTreeMap<String, crate::model::PodRef>,
    /// Blocking waits already told to their pods.
    pending_told: std::collections::BTreeSet<(String, String, String)>,
    /// What `progress` last said.
    progress: Progress,
    /// The label sets `volume_manager_total_volumes` has now.
    volume_counts: std::collections::BTreeSet<(String, &'static str)>,
}

impl SyncLoop {
    pub async fn run(mut self, cancel: CancellationToken) -> Report {
        let mut books = Books::default();
        // A plan is made only from a mount table read after our last op finished.
        let mut need_covers = 0;
        let mut source_open = true;
        let mut watcher_open = true;
        let mut stopped = None;
        let mut devices = self.devices.take();
        if let Some(devices) = devices.as_mut() {
            devices.borrow_and_update();
        }
        // A wake for the heartbeat alone plans nothing: a pass costs what changed.
        let mut heartbeat_only = false;
        // Set by a result or a table that came while the executor still has ops queued for a
        // worker: a pass then would find nothing to start that is not queued already, and a
        // pass plans everything, so one per result of a big change would cost its square.
        // The pass comes once the queue runs short, or with a new snapshot.
        let mut plan_later = false;
        loop {
            if !heartbeat_only && !plan_later {
                let started = self.pass(&mut books, need_covers);
                match started {
                    // Waiting for a table that shows the last op: fine for a moment, not for
                    // long (mount-table reads failing would leave the loop going round idle).
                    None => {
                        books
                            .progress
                            .blocked_since
                            .get_or_insert_with(tokio::time::Instant::now);
                    }
                    Some(_) => books.progress.blocked_since = None,
                }
                // Once mode does not wait for a stuck op: it is reported, and exit ends it.
                if self.once && started == Some(0) && self.executor.in_flight_on_time() == 0 {
                    break;
                }
            }
            heartbeat_only = false;
            plan_later = false;
            books.progress.ticked = Some(tokio::time::Instant::now());
            self.tell_progress(&books);
            let retry_at = self.executor.next_retry();
            tokio::select! {
                // Cancellation first: after it, no new snapshot may lead to an op.
                biased;
                _ = cancel.cancelled() => break,
                // A daemon without its inputs would idle on a stale picture: it stops, and its
                // supervisor restarts it. A --once run finishes on what it has.
                changed = self.desired.changed(), if source_open => {
                    if changed.is_err() {
                        source_open = false;
                        if !self.once {
                            stopped = Some("the desired-state source stopped".to_string());
                            break;
                        }
                        tracing::warn!("the desired-state source stopped; keeping its last snapshot");
                    }
                }
                changed = self.mounts.tables.changed(), if watcher_open => {
                    if changed.is_err() {
                        watcher_open = false;
                        if !self.once {
                            stopped = Some("the mount-table watcher stopped".to_string());
                            break;
                        }
                        tracing::error!("the mount-table watcher stopped; planning on the last table, refreshed only by op results");
                    }
                    plan_later = self.executor.has_queue();
                }
                Some(event) = self.events.recv() => {
                    // Every result that is in, then one pass: a pass plans everything, so
                    // one per result would cost the square of a big change.
                    let mut touched = Vec::new();
                    let mut touches = false;
                    let mut next = Some(event);
                    while let Some(event) = next {
                        self.executor.complete(&event);
                        if let OpEvent::Finished { op, .. } = &event {
                            // Only an op that mounts or unmounts needs a table showing it.
                            if let Some(paths) = mounts_touched(op, &self.root) {
                                touches = true;
                                touched.extend(paths);
                            }
                        }
                        self.record(event, &mut books);
                        next = self.events.try_recv().ok();
                    }
                    if touches {
                        need_covers = self.mounts.refresh(touched);
                    }
                    plan_later = self.executor.has_queue();
                }
                changed = changed_devices(&mut devices) => {
                    if changed {
                        if self.executor.has_failures() {
                            tracing::info!("block devices changed; retrying failed volumes now");
                            self.executor.forget_failures();
                        }
                    } else {
                        stopped = Some("the block-device watcher stopped".to_string());
                        break;
                    }
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => {}
                _ = tokio::time::sleep(HEARTBEAT), if !self.once => heartbeat_only = true,
            }
        }
        if cancel.is_cancelled() || stopped.is_some() {
            self.drain(&mut books).await;
        }
        let table = self.mounts.tables.borrow().clone();
        let desired = self.desired.borrow().clone();
        let pod_mounts = PodMounts::index(&table.entries, &self.root);
        let rows = status::rows(
            &self.root,
            &desired,
            &pod_mounts,
            &self.on_disk,
            &books.failures,
        );
        Report {
            desired,
            rows,
            other_failures: books.other_failures,
            stopped,
        }
    }

    /// Plans from the newest snapshot and mount table and starts what it can. `None` when the
    /// table does not yet show the effect of our last op (planning then would redo it).
    fn pass(&mut self, books: &mut Books, need_covers: u64) -> Option<usize> {
        let table = self.mounts.tables.borrow_and_update().clone();
        let desired = self.desired.borrow_and_update().clone();
        if table.covers < need_covers {
            return None;
        }
        let began = std::time::Instant::now();
        let metrics = crate::metrics::get();
        let new_snapshot = !Arc::ptr_eq(&desired, &books.progress.planned_from);
        if new_snapshot {
            metrics.source_ready.set(i64::from(desired.complete));
            if desired.complete {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics.last_complete_snapshot.set(now.as_secs_f64());
            }
        }
        // The pod-mount index is rebuilt only when a new table arrives, not on every pass.
        if !books
            .indexed
            .as_ref()
            .is_some_and(|(seen, _)| Arc::ptr_eq(seen, &table))
        {
            let index = PodMounts::index(&table.entries, &self.root);
            books.indexed = Some((table, index));
        }
        // Once per snapshot, not per pass: a pass follows every op result and table too.
        if new_snapshot {
            books.known_pods.extend(
                desired
                    .pods
                    .iter()
                    .map(|(uid, pod)| (uid.clone(), pod.clone())),
            );
        }
        let assigned = pod_dirs::assign(&desired, &self.on_disk);
        if let Some(out) = &self.notices {
            for notice in notices::pending(&assigned, &mut books.pending_told) {
                if out.try_send(notice).is_err() {
                    tracing::warn!("the Event queue is full; pending volumes will be told again at the next change");
                    // Told again next pass rather than never.
                    books.pending_told.clear();
                    break;
                }
            }
        }
        let pod_mounts = &books.indexed.as_ref().expect("indexed above").1;
        let ops = plan_assigned(&assigned, pod_mounts, &self.on_disk);
        // "Matches" only when nothing is left to want: no op, nothing failed, nothing waiting,
        // every volume as its spec says (what `converged` asks of the final report).
        let matched = desired.complete
            && ops.is_empty()
            && self.executor.in_flight() == 0
            && books.failures.is_empty()
            && books.other_failures.is_empty()
            && !assigned.waiting.iter().any(|w| w.blocking)
            && status::rows(
                &self.root,
                &desired,
                pod_mounts,
                &self.on_disk,
                &books.failures,
            )
            .iter()
            .all(|r| matches!(r.state, VolumeState::Mounted | VolumeState::Unmanaged));
        if matched && !books.matched {
            tracing::info!(
                pods = desired.pods.len(),
                volumes = desired.volumes.len(),
                "host matches the desired state"
            );
        }
        books.matched = matched;
        let _span = tracing::debug_span!("pass", ops = ops.len()).entered();
        books.volume_counts =
            count_volumes(&desired, pod_mounts, &self.on_disk, &books.volume_counts);
        let started = self.executor.submit(ops);
        metrics.sync_passes.inc();
        metrics
            .sync_pass_duration
            .observe(began.elapsed().as_secs_f64());
        books.progress.passes += 1;
        books.progress.planned_from = desired;
        books.progress.idle = started == 0 && self.executor.in_flight() == 0;
        // Stuck ops do not count against readiness: a hung mount must not keep a node unready
        // (and systemd waiting for READY=1) for ever.
        let settled = started == 0 && self.executor.in_flight_on_time() == 0;
        books.progress.reconciled |= settled && books.progress.planned_from.complete;
        self.tell_progress(books);
        Some(started)
    }

    fn tell_progress(&self, books: &Books) {
        if let Some(out) = &self.progress {
            out.send_replace(books.progress.clone());
        }
    }

    /// Stops intake and lets in-flight ops finish (never aborting one half-way), then waits
    /// for a mount table that shows their effect, so the report is true.
    async fn drain(&mut self, books: &mut Books) {
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        // Stuck ops are not waited for: they may never return. A daemon waits only for what
        // must not be cut short (a format, a check), however long that takes within its own
        // deadline: nothing else is harmed by an exit, and no one reads its report. A --once
        // run waits for every op, up to the grace, so that its report is true.
        let stop_began = tokio::time::Instant::now();
        let waiting = |executor: &Executor, once: bool| {
            if once {
                executor.in_flight_on_time()
            } else {
                executor.must_finish()
            }
        };
        if !self.once && self.executor.in_flight() > waiting(&self.executor, false) {
            tracing::info!(
                abandoned = self.executor.in_flight() - waiting(&self.executor, false),
                "ops that are safe to cut short are left to end with the process"
            );
        }
        while waiting(&self.executor, self.once) > 0 {
            // A format or check is waited for past its op deadline (mkfs has none of its own:
            // cut short, it would leave a half-written filesystem), up to FORMAT_GRACE, which
            // stays below the unit's and the DaemonSet's 90 s stop timeouts.
            let until = if self.once {
                deadline
            } else {
                stop_began + FORMAT_GRACE
            };
            let next = tokio::time::timeout_at(until, self.events.recv()).await;
            match next {
                Ok(Some(event)) => {
                    self.executor.complete(&event);
                    self.record(event, books);
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
        // The report is made from a table read after the last op: a daemon gives that a
        // moment only, a --once run its grace.
        let seq = self.mounts.refresh([]);
        let fresh = self.mounts.tables.wait_for(|t| t.covers >= seq);
        let until = if self.once {
            deadline.max(tokio::time::Instant::now() + Duration::from_secs(1))
        } else {
            tokio::time::Instant::now() + Duration::from_millis(250)
        };
        let _ = tokio::time::timeout_at(until, fresh).await;
    }

    fn record(&mut self, event: OpEvent, books: &mut Books) {
        let (op, error) = match event {
            OpEvent::Overdue { op, after } => {
                let stuck = format!(
                    "stuck: {} has run for more than {}s (the host may be hung on this path)",
                    op.verb(),
                    after.as_secs()
                );
                (op, Some(stuck))
            }
            OpEvent::Finished { op, outcome, .. } => {
                self.on_disk.apply(outcome.pod_dir);
                if let Some(globals) = outcome.globals {
                    self.on_disk.globals = globals;
                }
                let error = outcome
                    .did
                    .err()
                    .map(|e| format!("{} failed: {e}", op.verb()));
                (op, error)
            }
        };
        if let Some(out) = &self.notices {
            if let Some(notice) = notices::for_op(&op, error.as_deref(), &books.known_pods) {
                if out.try_send(notice).is_err() {
                    tracing::warn!(
                        op = op.verb(),
                        "the Event queue is full; this outcome is only in the log"
                    );
                }
            }
        }
        if let (Op::RemovePodDir { pod_uid }, None) = (&op, &error) {
            books.known_pods.remove(pod_uid);
        }
        let (map, key) = match op.key() {
            OpKey::Volume(key) => (&mut books.failures, key.to_string()),
            other => (&mut books.other_failures, describe_key(&other)),
        };
        match error {
            Some(error) => map.insert(key, error),
            None => map.remove(&key),
        };
        self.publish(&books.failures);
        books.progress.op_results += 1;
        books.progress.idle = false;
        self.tell_progress(books);
    }

    fn publish(&self, failures: &Failures) {
        if let Some(out) = &self.failures_out {
            crate::shared::publish(out, failures.clone());
        }
    }
}

/// The paths whose mounts `op` may have changed in place (a set-up's read-only remount and
/// propagation raise no mount event); `None` for an op that mounts and unmounts nothing.
fn mounts_touched(op: &Op, root: &std::path::Path) -> Option<Vec<PathBuf>> {
    match op {
        Op::SetUp { volume } => {
            let mut paths = vec![volume.key.path(root)];
            if op.touches_globals() {
                paths.push(crate::model::global_mount_path(
                    root,
                    &crate::model::Plugin::LocalVolume,
                    &volume.key.name,
                ));
            }
            Some(paths)
        }
        Op::Unmount { .. } | Op::UnmountGlobal { .. } => Some(Vec::new()),
        Op::RemoveVolumeDir { .. }
        | Op::RemovePodDir { .. }
        | Op::ClaimPodDir { .. }
        | Op::RemoveGlobalDir { .. } => None,
    }
}

/// Waits for a new device inventory: true when one came, false when the watcher is gone;
/// never resolves without a watcher.
async fn changed_devices(devices: &mut Option<watch::Receiver<Arc<Vec<BlockDevice>>>>) -> bool {
    match devices {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sets `volume_manager_total_volumes`: the volumes wanted (desired) and those in place
/// (actual: a wanted volume set up, or a mount not wanted any more), by plugin; label sets no
/// longer counted (`before`) are removed. Returns the label sets now. Counting is
/// proportional to the volumes, as the plan is.
fn count_volumes(
    desired: &DesiredState,
    mounts: &PodMounts,
    on_disk: &crate::model::on_disk::OnDisk,
    before: &std::collections::BTreeSet<(String, &'static str)>,
) -> std::collections::BTreeSet<(String, &'static str)> {
    let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    let label = |plugin: &crate::model::Plugin| format!("kubernetes.io/{}", plugin.as_str());
    for (key, volume) in &desired.volumes {
        *counts
            .entry((label(&key.plugin), "desired_state_of_world"))
            .or_default() += 1;
        if crate::reconcile::plan::in_place(volume, mounts, on_disk) {
            *counts
                .entry((label(&key.plugin), "actual_state_of_world"))
                .or_default() += 1;
        }
    }
    for key in mounts
        .volumes
        .keys()
        .filter(|k| !desired.volumes.contains_key(*k))
    {
        *counts
            .entry((label(&key.plugin), "actual_state_of_world"))
            .or_default() += 1;
    }
    let family = &crate::metrics::get().total_volumes;
    let labels = |(plugin_name, state): &(String, &'static str)| crate::metrics::VolumeCount {
        plugin_name: plugin_name.clone(),
        state,
    };
    for gone in before.iter().filter(|k| !counts.contains_key(*k)) {
        family.remove(&labels(gone));
    }
    for (key, count) in &counts {
        family.get_or_create(&labels(key)).set(*count);
    }
    counts.into_keys().collect()
}

#[cfg(test)]
mod alive_tests {
    use super::*;

    #[test]
    fn alive_means_gone_round_lately_and_not_stuck_waiting_for_a_table() {
        let now = tokio::time::Instant::now() + Duration::from_secs(100);
        let at = |ago: u64| Some(now - Duration::from_secs(ago));
        let progress = |ticked, blocked_since| Progress {
            ticked,
            blocked_since,
            ..Progress::default()
        };
        assert!(alive(&progress(at(1), None), now).is_ok());
        assert!(
            alive(&progress(at(1), at(5)), now).is_ok(),
            "a moment's wait is fine"
        );
        let stale = alive(&progress(at(16), None), now).unwrap_err();
        assert!(stale.contains("not gone round"), "{stale}");
        let blocked = alive(&progress(at(1), at(16)), now).unwrap_err();
        assert!(blocked.contains("mount table"), "{blocked}");
        assert!(alive(&progress(None, None), now).is_err());
    }
}
