//! The Kubernetes API source: kube-rs watchers and reflectors for this node's pods and the
//! claims, volumes, classes and Node they need. A snapshot is published only once every store
//! has completed its first list; relists swap a store whole (kube-rs buffers them), so a
//! partial view is never published, and an outage publishes nothing: the last complete
//! snapshot stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::api_bindings::bindings_from_api;
use super::manifest::Manifests;
use super::resolve::resolve;
use super::{DesiredState, NodeConfig};
use crate::executor::backoff::BackoffPolicy;

/// Coalesces a burst of watch events into one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// The kinds watched, as their watches are named to the operator.
const KINDS: [&str; 5] = [
    "Pod",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "Node",
];

pub struct KubeSource {
    pub client: Client,
    pub node: NodeConfig,
    /// How the watches stand; shared with whoever reports on the source.
    pub health: SharedHealth,
}

/// How the watches stand: which completed a first list, which are failing and why.
#[derive(Debug, Default)]
pub struct WatchHealth {
    listed: BTreeSet<String>,
    failing: BTreeMap<String, Failing>,
}

#[derive(Debug)]
struct Failing {
    /// The first error of this run of errors (stable across retries).
    since: SystemTime,
    last_error: String,
}

pub type SharedHealth = Arc<Mutex<WatchHealth>>;

impl WatchHealth {
    /// One line per failing watch.
    pub fn failing(&self) -> Vec<String> {
        self.failing
            .iter()
            .map(|(kind, f)| {
                format!(
                    "the API watch of {kind} objects has been failing since {}: {}",
                    humantime::format_rfc3339_seconds(f.since),
                    f.last_error
                )
            })
            .collect()
    }

    /// The kinds whose first list has not completed.
    pub fn unlisted(&self) -> Vec<&'static str> {
        KINDS
            .into_iter()
            .filter(|kind| !self.listed.contains(*kind))
            .collect()
    }

    fn failed(&mut self, kind: &str, error: String) {
        self.failing
            .entry(kind.to_string())
            .and_modify(|f| f.last_error.clone_from(&error))
            .or_insert_with(|| Failing {
                since: SystemTime::now(),
                last_error: error,
            });
    }

    /// True when this changed what is reported.
    fn delivered(&mut self, kind: &str, first_list_done: bool) -> bool {
        let listed = first_list_done && self.listed.insert(kind.to_string());
        self.failing.remove(kind).is_some() || listed
    }
}

fn lock(health: &SharedHealth) -> std::sync::MutexGuard<'_, WatchHealth> {
    // Only plain inserts and removals happen under the lock; a poisoned one is still sound.
    health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Stores {
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
}

impl KubeSource {
    /// Publishes snapshots until `cancel` fires.
    pub async fn run(self, tx: watch::Sender<Arc<DesiredState>>, cancel: CancellationToken) {
        let (changed_tx, mut changed) = mpsc::unbounded_channel();
        let on_node =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node.name));
        let this_node =
            watcher::Config::default().fields(&format!("metadata.name={}", self.node.name));
        let all = watcher::Config::default;
        let watching = Watching {
            changed: changed_tx,
            health: self.health.clone(),
            cancel: cancel.clone(),
        };
        let client = &self.client;
        let stores = Stores {
            pods: watching.reflect(Api::all(client.clone()), on_node),
            claims: watching.reflect(Api::all(client.clone()), all()),
            volumes: watching.reflect(Api::all(client.clone()), all()),
            classes: watching.reflect(Api::all(client.clone()), all()),
            nodes: watching.reflect(Api::all(client.clone()), this_node),
        };
        // Ok only when every store really completed a list: a store whose writer went away
        // (shutdown, a dead task) must never pass for an empty, complete one.
        let first_lists = async {
            stores.pods.wait_until_ready().await?;
            stores.claims.wait_until_ready().await?;
            stores.volumes.wait_until_ready().await?;
            stores.classes.wait_until_ready().await?;
            stores.nodes.wait_until_ready().await
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            ready = first_lists => match ready {
                Ok(()) => tracing::info!("every API watch completed its first list"),
                Err(err) => {
                    tracing::error!(%err, "an API watch stopped before its first list; publishing nothing");
                    return;
                }
            },
        }
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let mut state = snapshot(&stores, &self.node);
            // In the --once report and `plan`; the daemon logs each failure as it happens.
            state.warnings.extend(
                lock(&self.health)
                    .failing()
                    .into_iter()
                    .map(|w| w + " (the last complete view stays in force while it retries)"),
            );
            let previous = tx.borrow().clone();
            if state.problems != previous.problems {
                for problem in &state.problems {
                    tracing::error!(%problem, "problem in the API objects; nothing is torn down until it is fixed");
                }
            }
            tx.send_if_modified(|current| {
                let changed = **current != state;
                if changed {
                    *current = Arc::new(state);
                }
                changed
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(()) = changed.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while changed.try_recv().is_ok() {}
                }
            }
        }
    }
}

/// What every watch task shares: the publisher's wake-up, the watch health record, the
/// shutdown signal.
struct Watching {
    changed: mpsc::UnboundedSender<()>,
    health: SharedHealth,
    cancel: CancellationToken,
}

impl Watching {
    /// Runs a watcher into a reflector store on its own task; every event wakes the
    /// publisher. Errors (an outage, a 410 Gone, a refusal) are retried with backoff, keeping
    /// the store as it was, and recorded as failing until the watch delivers again.
    fn reflect<K>(&self, api: Api<K>, config: watcher::Config) -> Store<K>
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (reader, writer) = reflector::store();
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let events = watcher(api, config)
            // Never read here; on a big cluster they are most of an object's size.
            .modify(|object| object.managed_fields_mut().clear())
            .backoff(WatchBackoff::default());
        let stream = reflector::reflector(writer, events);
        let (changed, health, cancel) = (
            self.changed.clone(),
            self.health.clone(),
            self.cancel.clone(),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let item = tokio::select! {
                    _ = cancel.cancelled() => return,
                    item = stream.next() => item,
                };
                match item {
                    // `Init` comes before every list attempt and `InitApply` before the list
                    // is whole: neither shows that the watch works again.
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Some(Ok(event)) => {
                        let done = matches!(event, watcher::Event::InitDone);
                        if lock(&health).delivered(&kind, done) && !done {
                            tracing::info!(kind, "API watch delivers again");
                        }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(%err, kind, "API watch failed; retrying with backoff, the last complete view stays in force");
                        lock(&health).failed(&kind, for_operator(&err));
                    }
                    None => return,
                }
                let _ = changed.send(());
            }
        });
        reader
    }
}

/// Retry timing of a failing watch: 800 ms doubling to 30 s, jittered (kube-rs's default
/// curve). Unlike kube-rs's default it ignores `reset()`, which its stream wrapper calls on
/// every item, `Init` included, so a list failing over and over would retry at the first
/// step forever; it starts afresh after two minutes without an error instead.
#[derive(Default)]
struct WatchBackoff {
    failures: u32,
    last_error: Option<std::time::Instant>,
}

impl WatchBackoff {
    const POLICY: BackoffPolicy = BackoffPolicy {
        initial: Duration::from_millis(800),
        max: Duration::from_secs(30),
    };
    const QUIET_RESET: Duration = Duration::from_secs(120);
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        if self
            .last_error
            .is_some_and(|at| now.duration_since(at) > Self::QUIET_RESET)
        {
            self.failures = 0;
        }
        self.last_error = Some(now);
        self.failures += 1;
        Some(Self::POLICY.delay(self.failures))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {}
}

/// A watch error in a line: the API's own message and code, and for a refusal, the fix.
fn for_operator(err: &watcher::Error) -> String {
    let status = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.as_ref(),
        watcher::Error::WatchError(status) => status.as_ref(),
        other => return other.to_string(),
    };
    let hint = match status.code {
        401 | 403 => "; check volumed's credentials and that deploy/rbac.yaml is applied",
        _ => "",
    };
    format!(
        "{} (HTTP {} {}){hint}",
        status.message, status.code, status.reason
    )
}

/// The desired state from the stores: objects as the file source would read them, bindings
/// as the cluster made them.
fn snapshot(stores: &Stores, node: &NodeConfig) -> DesiredState {
    let mut objects = Manifests::default();
    let key = |meta: &kube::api::ObjectMeta| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        )
    };
    objects.pods = stores
        .pods
        .state()
        .iter()
        .map(|p| (key(&p.metadata), (**p).clone()))
        .collect();
    objects.claims = stores
        .claims
        .state()
        .iter()
        .map(|c| (key(&c.metadata), (**c).clone()))
        .collect();
    objects.volumes = stores
        .volumes
        .state()
        .iter()
        .map(|v| (v.name_any(), (**v).clone()))
        .collect();
    objects.classes = stores
        .classes
        .state()
        .iter()
        .map(|c| (c.name_any(), (**c).clone()))
        .collect();
    let mut node = node.clone();
    let this_node = stores.nodes.state().first().cloned();
    if let Some(this) = &this_node {
        node.labels.extend(this.labels().clone());
    }
    let mut labels = node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    let bindings = bindings_from_api(&objects, &node.name, &labels);
    let mut state = resolve(&objects, &bindings, &node);
    // A node name the API does not know (--node-name defaults to the host name, which need not
    // be the registered name) lists no pods: that must not read as "no pods, tear all down".
    if this_node.is_none() {
        state.problems.push(format!(
            "there is no Node named {} in the Kubernetes API, so no pod can be on it; nothing is torn down until there is. Set --node-name to this host's NAME in `kubectl get nodes`",
            node.name
        ));
    }
    state.complete = state.problems.is_empty();
    state
}

/// Records notices as Events on their pods with the kube-rs recorder. Each distinct notice
/// (pod, reason, message) keeps its own recorder, so a repeat is a PATCH to the same Event's
/// series (its count and last time) rather than a new Event; a notice repeated within
/// `repeat_after` is not sent at all.
pub async fn publish_notices(
    client: Client,
    node_name: String,
    repeat_after: Duration,
    mut notices: mpsc::Receiver<crate::reconcile::notices::Notice>,
) {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let reporter = Reporter {
        controller: "volumed".into(),
        instance: Some(node_name),
    };
    struct Told {
        recorder: Recorder,
        /// When it was last sent (never, for a recorder just made).
        at: Option<tokio::time::Instant>,
    }
    let mut told: std::collections::HashMap<(String, &'static str, String), Told> =
        Default::default();
    let mut budget = EventBudget::new();
    while let Some(notice) = notices.recv().await {
        let now = tokio::time::Instant::now();
        // kube-rs forgets a series after a few minutes; so do we, to stay small.
        told.retain(|_, t| t.at.is_some_and(|at| now.duration_since(at) < SERIES_KEPT));
        let key = (
            notice.pod.uid.clone(),
            notice.reason,
            notice.message.clone(),
        );
        let told = told.entry(key).or_insert_with(|| Told {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            at: None,
        });
        if told
            .at
            .is_some_and(|at| now.duration_since(at) < repeat_after)
        {
            continue;
        }
        if !budget.take(now) {
            tracing::debug!(pod = %notice.pod, reason = notice.reason, "over the Event rate; dropped (the log has the same news)");
            continue;
        }
        told.at = Some(now);
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(notice.pod.name.clone()),
            namespace: Some(notice.pod.namespace.clone()),
            uid: Some(notice.pod.uid.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.into(),
            note: Some(notice.message),
            action: if notice.reason == "FailedUnmount" {
                "Unmount"
            } else {
                "Mount"
            }
            .into(),
            secondary: None,
        };
        if let Err(err) = told.recorder.publish(&event, &reference).await {
            tracing::warn!(%err, pod = %notice.pod, reason = notice.reason, "cannot record an Event; the log has the same news");
        }
    }
}

/// A token bucket over all Events of this node, as kubelet's (--event-qps 50, --event-burst
/// 100): a storm of failures cannot flood the API.
struct EventBudget {
    tokens: f64,
    at: tokio::time::Instant,
}

impl EventBudget {
    const PER_SECOND: f64 = 50.0;
    const BURST: f64 = 100.0;

    fn new() -> EventBudget {
        EventBudget {
            tokens: Self::BURST,
            at: tokio::time::Instant::now(),
        }
    }

    fn take(&mut self, now: tokio::time::Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * Self::PER_SECOND;
        self.tokens = (self.tokens + refill).min(Self::BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The same notice is not sent again within this time.
pub const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// How long a notice's Event series is continued (kube-rs keeps its own for 6 minutes).
const SERIES_KEPT: Duration = Duration::from_secs(6 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_grows_through_resets_and_caps() {
        let mut backoff = WatchBackoff::default();
        let mut delays = Vec::new();
        for _ in 0..8 {
            // kube-rs's stream wrapper resets on every item, Init included.
            backoff.reset();
            delays.push(backoff.next().unwrap());
        }
        assert!(delays[0] <= Duration::from_millis(960), "{delays:?}");
        assert!(delays[3] >= Duration::from_millis(5000), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(36)),
            "{delays:?}"
        );
        assert!(delays[7] >= Duration::from_secs(24), "{delays:?}");
    }

    #[test]
    fn the_event_budget_allows_a_burst_then_the_rate() {
        let start = tokio::time::Instant::now();
        let mut budget = EventBudget::new();
        let burst = (0..150).filter(|_| budget.take(start)).count();
        assert_eq!(burst, 100);
        let later = start + Duration::from_secs(1);
        let refilled = (0..150).filter(|_| budget.take(later)).count();
        assert_eq!(refilled, 50);
    }
}
