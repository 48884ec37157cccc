//! The executor: runs the ops `plan` asks for on worker threads, at most one per key, under a
//! deadline and a concurrency cap, with jittered backoff between failed attempts. It never
//! blocks the sync loop: results come back as events on a channel.

pub mod context;
pub mod device;
pub mod preview;
pub mod run;

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use self::context::OpContext;
use self::run::{run_op, OpOutcome};
use crate::model::backoff::{may_start, Backoff, BackoffPolicy};
use crate::model::op::{IfHung, Op, OpKey};

#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Ops running at once, across all volumes.
    pub max_concurrent: usize,
    /// How long an op may run before its volume is reported as stuck.
    pub deadline: Duration,
    /// The NFS mount helper's own deadline; an NFS set-up gets a little more.
    pub nfs_mount_deadline: Duration,
    /// Ops in flight per NFS server, stuck ones included.
    pub max_per_server: usize,
    /// Added to the deadline of ops that enforce their own inner deadline (`SLACK`).
    pub slack: Duration,
    pub backoff: BackoffPolicy,
    /// False for `run --once`: a failed op is reported, not retried.
    pub retry: bool,
}

/// What the executor tells the sync loop.
#[derive(Debug)]
pub enum OpEvent {
    /// The op outlived its deadline and still runs; its key stays busy until it returns.
    Overdue { op: Op, after: Duration },
    Finished {
        op: Op,
        outcome: OpOutcome,
        elapsed: Duration,
    },
}

pub struct Executor {
    ctx: Arc<OpContext>,
    config: ExecutorConfig,
    permits: Arc<Semaphore>,
    /// Ops that wait for a worker only (past their NFS server's slot, if any).
    waiting: Arc<AtomicUsize>,
    events: mpsc::UnboundedSender<OpEvent>,
    in_flight: HashMap<OpKey, Instant>,
    /// In-flight keys whose op outlived its deadline.
    overdue: HashSet<OpKey>,
    /// In-flight keys whose op must not be cut short at shutdown (`Op::must_finish`).
    finishing: HashSet<OpKey>,
    /// How many ops ever outlived their deadline.
    stuck_total: u64,
    backoff: HashMap<OpKey, Backoff>,
    /// Ops that succeeded, by key. The same op asked for again right after succeeding made
    /// no visible progress; from the third time it waits like a failure, so a no-op can
    /// never spin the loop.
    repeats: HashMap<OpKey, Backoff>,
    /// Per-NFS-server slots.
    servers: HashMap<String, Arc<Semaphore>>,
}

impl Executor {
    pub fn new(
        ctx: OpContext,
        config: ExecutorConfig,
    ) -> (Executor, mpsc::UnboundedReceiver<OpEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let executor = Executor {
            ctx: Arc::new(ctx),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            waiting: Arc::default(),
            config,
            events,
            in_flight: HashMap::new(),
            overdue: HashSet::new(),
            finishing: HashSet::new(),
            stuck_total: 0,
            backoff: HashMap::new(),
            repeats: HashMap::new(),
            servers: HashMap::new(),
        };
        (executor, rx)
    }

    /// Starts every op whose key is idle and not backing off; returns how many started.
    pub fn submit(&mut self, ops: Vec<Op>) -> usize {
        let now = Instant::now();
        if self.config.retry {
            // Forget failures of keys the plan no longer asks about.
            let wanted: HashSet<OpKey> = ops.iter().map(Op::key).collect();
            self.backoff.retain(|key, _| wanted.contains(key));
            self.repeats.retain(|key, _| wanted.contains(key));
        }
        let mut started = 0;
        for op in ops {
            let key = op.key();
            if self.in_flight.contains_key(&key) {
                continue;
            }
            let (failure, repeat) = (self.backoff.get(&key), self.repeats.get(&key));
            if !may_start(failure, repeat, fingerprint(&op), now, self.config.retry) {
                continue;
            }
            if op.must_finish() {
                self.finishing.insert(key.clone());
            }
            self.in_flight.insert(key, now);
            self.spawn(op);
            started += 1;
        }
        started
    }

    /// How long this op may run before it is reported stuck: ops that bound their own blocking
    /// calls (the NFS helper, the escalating unmount) get their inner deadline plus slack.
    fn deadline_for(&self, op: &Op) -> Duration {
        match op {
            Op::SetUp { volume } if matches!(volume.spec, crate::model::MountSpec::Nfs { .. }) => {
                self.config.nfs_mount_deadline + self.config.slack
            }
            Op::Unmount {
                if_hung: IfHung::ForceThenDetach,
                ..
            } => self.config.deadline + self.config.slack,
            _ => self.config.deadline,
        }
    }

    fn spawn(&mut self, op: Op) {
        let deadline = self.deadline_for(&op);
        let server = op
            .nfs_server()
            .map(|server| server.to_ascii_lowercase())
            .map(|server| {
                let cap = self.config.max_per_server.max(1);
                self.servers
                    .entry(server.to_string())
                    .or_insert_with(|| Arc::new(Semaphore::new(cap)))
                    .clone()
            });
        let (ctx, permits, events) = (self.ctx.clone(), self.permits.clone(), self.events.clone());
        // Counted from now when the op needs no server slot, else once it has one.
        let waiting = self.waiting.clone();
        let mut queued = server.is_none().then(|| Waiting::count(&waiting));
        let span = op_span(&op);
        let started = Instant::now();
        let worker_op = op.clone();
        // Set when the op outlives its deadline, waiting for a slot included.
        let (overdue_tx, mut overdue_rx) = tokio::sync::oneshot::channel::<()>();
        let work = async move {
            // The server's slot is held until the work really ends, stuck or not: a dead
            // server can tie up at most its cap of threads.
            let _server_slot = match server {
                Some(slots) => Some(
                    slots
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                ),
                None => None,
            };
            let in_queue = queued.take().unwrap_or_else(|| Waiting::count(&waiting));
            let permit = permits
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            drop(in_queue);
            let worker_span = tracing::Span::current();
            let mut handle = tokio::task::spawn_blocking(move || {
                worker_span.in_scope(|| run_op(&ctx, &worker_op))
            });
            let joined = tokio::select! {
                joined = &mut handle => joined,
                _ = &mut overdue_rx => {
                    // A stuck call gives its global slot back, so hung volumes cannot starve
                    // the others; the key stays busy, so each volume has at most one.
                    drop(permit);
                    handle.await
                }
            };
            joined.unwrap_or_else(|join| OpOutcome {
                did: Err(format!("the worker running this op died: {join}")),
                pod_dir: crate::model::on_disk::PodDirChange::Unchanged,
                globals: None,
            })
        };
        tokio::spawn(
            async move {
                tokio::pin!(work);
                let outcome = tokio::select! {
                    outcome = &mut work => outcome,
                    _ = tokio::time::sleep(deadline) => {
                        let _ = events.send(OpEvent::Overdue { op: op.clone(), after: deadline });
                        let _ = overdue_tx.send(());
                        work.await
                    }
                };
                let _ = events.send(OpEvent::Finished {
                    op,
                    outcome,
                    elapsed: started.elapsed(),
                });
            }
            .instrument(span),
        );
    }

    /// Books a finished op: frees its key and records or clears its backoff. Logs the
    /// outcome, the one place where it is decided.
    pub fn complete(&mut self, event: &OpEvent) {
        let op = match event {
            OpEvent::Overdue { op, .. } | OpEvent::Finished { op, .. } => op,
        };
        // Its outcome is told in the op's span, as what it logged while it ran.
        let _span = op_span(op).entered();
        match event {
            OpEvent::Overdue { op, after } => {
                self.overdue.insert(op.key());
                self.stuck_total += 1;
                let metrics = crate::metrics::get();
                metrics.stuck_operations.set(self.overdue.len() as i64);
                let stuck = crate::metrics::OpResult {
                    op: op.verb(),
                    result: "stuck",
                };
                metrics.operations.get_or_create(&stuck).inc();
                tracing::warn!(after_s = after.as_secs(), stuck_now = self.overdue.len(), stuck_total = self.stuck_total, "op is stuck past its deadline; its volume is uncertain and other volumes go on")
            }
            OpEvent::Finished {
                op,
                outcome,
                elapsed,
            } => {
                let key = op.key();
                self.in_flight.remove(&key);
                self.overdue.remove(&key);
                self.finishing.remove(&key);
                let metrics = crate::metrics::get();
                metrics.stuck_operations.set(self.overdue.len() as i64);
                metrics.op_finished(
                    op.verb(),
                    op.plugin_label(),
                    outcome.did.is_ok(),
                    elapsed.as_secs_f64(),
                );
                match &outcome.did {
                    Ok(did) => {
                        self.backoff.remove(&key);
                        let repeat = self.config.backoff.record_repeat(
                            self.repeats.get(&key),
                            fingerprint(op),
                            Instant::now(),
                        );
                        if repeat.slows_down() {
                            tracing::warn!(
                                times = repeat.failures,
                                "op succeeded but the host did not change as planned; slowing down"
                            );
                        }
                        self.repeats.insert(key.clone(), repeat);
                        tracing::info!(did, elapsed_ms = elapsed.as_millis() as u64, "op done");
                    }
                    Err(error) => {
                        let backoff = self.config.backoff.record_failure(
                            self.backoff.get(&key),
                            fingerprint(op),
                            Instant::now(),
                        );
                        let retry_in_ms = backoff
                            .not_before
                            .saturating_duration_since(Instant::now())
                            .as_millis() as u64;
                        let retry_in_ms = if self.config.retry {
                            Some(retry_in_ms)
                        } else {
                            None
                        };
                        tracing::warn!(%error, failures = backoff.failures, retry_in_ms, "op failed");
                        self.backoff.insert(key, backoff);
                    }
                }
            }
        }
    }

    /// True when some op failed and waits for its retry.
    pub fn has_failures(&self) -> bool {
        !self.backoff.is_empty()
    }

    /// Lets every backed-off op run at its next chance (something on the host changed that
    /// may make it succeed, such as a device appearing).
    pub fn forget_failures(&mut self) {
        self.backoff.clear();
        self.repeats.clear();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Some op waits for a worker (ops waiting for their NFS server's slot do not count:
    /// they leave workers idle).
    pub fn has_queue(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// When the earliest backed-off op may run again.
    pub fn next_retry(&self) -> Option<Instant> {
        if !self.config.retry {
            return None;
        }
        let now = Instant::now();
        self.backoff
            .iter()
            .chain(&self.repeats)
            .filter(|(key, b)| !self.in_flight.contains_key(*key) && b.not_before > now)
            .map(|(_, b)| b.not_before)
            .min()
    }

    /// Ops still running that are not past their deadline; `run --once` waits only for these.
    pub fn in_flight_on_time(&self) -> usize {
        self.in_flight.len() - self.overdue.len()
    }

    /// In-flight ops that must finish before a daemon exits (formats, checks), past their
    /// deadline included: a format has no deadline of its own.
    pub fn must_finish(&self) -> usize {
        self.finishing.len()
    }
}

/// The span of one op: its verb, the pod (uid) and the volume it is about, and its key.
fn op_span(op: &Op) -> tracing::Span {
    let volume = match op.key() {
        OpKey::Volume(key) => key.name,
        OpKey::Global(pv) => pv,
        OpKey::Pod(_) => "-".into(),
    };
    tracing::info_span!(
        "op",
        op = op.verb(),
        pod = op.pod_uid().unwrap_or("-"),
        volume,
        key = %describe_key(&op.key())
    )
}

/// Extra time for ops that enforce their own deadline, so they report rather than go stuck.
pub const SLACK: Duration = Duration::from_secs(15);

pub fn describe_key(key: &OpKey) -> String {
    match key {
        OpKey::Volume(key) => key.to_string(),
        OpKey::Pod(uid) => format!("pod {uid}"),
        OpKey::Global(pv_name) => format!("global mount of {pv_name}"),
    }
}

/// Identifies what an op would do, so a changed spec resets its backoff.
fn fingerprint(op: &Op) -> u64 {
    let mut hasher = DefaultHasher::new();
    op.verb().hash(&mut hasher);
    if let Op::SetUp { volume } = op {
        volume.spec.hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests;

/// One op counted among those waiting for a worker, until dropped.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn count(waiting: &Arc<AtomicUsize>) -> Waiting {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
