//! The Kubernetes API source: kube-rs watchers and reflectors for this node's pods and the
//! claims, volumes, classes and Node they need. Of the claims and volumes, watched cluster-wide,
//! only those this node's pods reference are kept (`kept`); one a pod comes to need later is
//! read with a GET, as kubelet reads them. A snapshot is published only once every store has
//! completed its first list and every object a pod needs has been read; relists swap a store
//! whole, so a partial view is never published, and an outage publishes nothing: the last
//! complete snapshot stays in force.

mod events;
mod health;
mod kept;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::api_bindings::bindings_from_api;
use super::manifest::Manifests;
use super::resolve::resolve;
use super::{DesiredState, NodeConfig};
pub use events::{publish_notices, REPEAT_AFTER};
use health::{
    answered, for_operator, lock, probe_while_failing, request_for_operator, WatchBackoff,
};
pub use health::{SharedHealth, WatchHealth};
use kept::Kept;

/// After a retry, this long without an error means the watch works again.
const RECOVERY_QUIET: Duration = Duration::from_secs(10);

/// A watch answered 410 Gone relists at once, but not twice within this.
const RELIST_AT_ONCE_EVERY: Duration = Duration::from_secs(10);

/// Coalesces a burst of watch events into one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// GETs of claims and volumes in flight at once (a node given many pods at once reads their
/// claims a few at a time, as a client should).
const READS_AT_ONCE: usize = 8;

/// Why the API source stopped before it was cancelled.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("an API watch stopped before its first list ({0}); nothing was published")]
    FirstList(String),
    #[error("the {task} ended ({how}); the API source cannot stay current without it")]
    TaskEnded { task: String, how: String },
}

pub struct KubeSource {
    pub client: Client,
    pub node: NodeConfig,
    /// How the watches stand; shared with whoever reports on the source.
    pub health: SharedHealth,
}

type Shared<T> = Arc<std::sync::Mutex<T>>;

struct Stores {
    pods: Store<Pod>,
    claims: Shared<Kept<PersistentVolumeClaim>>,
    volumes: Shared<Kept<PersistentVolume>>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
}

impl KubeSource {
    /// Publishes snapshots until `cancel` fires. A watch task or the health probe that ends
    /// before that ends the source (its store would go stale while looking complete).
    pub async fn run(
        self,
        tx: watch::Sender<Arc<DesiredState>>,
        cancel: CancellationToken,
    ) -> Result<(), KubeSourceError> {
        let (changed_tx, mut changed) = mpsc::unbounded_channel();
        let on_node =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node.name));
        let this_node =
            watcher::Config::default().fields(&format!("metadata.name={}", self.node.name));
        let all = watcher::Config::default;
        let server_back = Arc::new(tokio::sync::Notify::new());
        let watching = Watching {
            changed: changed_tx,
            health: self.health.clone(),
            cancel: cancel.clone(),
            server_back: server_back.clone(),
            tasks: std::sync::Mutex::default(),
        };
        let probe = probe_while_failing(
            self.client.clone(),
            self.health.clone(),
            server_back,
            cancel.clone(),
        );
        lock(&watching.tasks).spawn(async move {
            probe.await;
            "API health probe".to_string()
        });
        let client = &self.client;
        let stores = Stores {
            pods: watching.reflect(Api::all(client.clone()), on_node),
            claims: Arc::new(std::sync::Mutex::new(Kept::new(namespaced))),
            volumes: Arc::new(std::sync::Mutex::new(Kept::new(ResourceExt::name_any))),
            classes: watching.reflect(Api::all(client.clone()), all()),
            nodes: watching.reflect(Api::all(client.clone()), this_node),
        };
        // Ok only when every store really completed a list: a store whose writer went away
        // (shutdown, a dead task) must never pass for an empty, complete one. The claims are
        // listed once the pods are known and the volumes once the claims are, so that each
        // list keeps what the node needs and no GET is due at start.
        let first_lists = async {
            stores
                .pods
                .wait_until_ready()
                .await
                .map_err(|e| e.to_string())?;
            lock(&stores.claims).want(claims_named(&stores.pods.state()));
            let claims_listed = watching.keep(Api::all(client.clone()), all(), &stores.claims);
            listed(claims_listed).await.map_err(|e| e.to_string())?;
            let claims = lock(&stores.claims).held();
            lock(&stores.volumes).want(volumes_named(claims.values()));
            let volumes_listed = watching.keep(Api::all(client.clone()), all(), &stores.volumes);
            listed(volumes_listed).await.map_err(|e| e.to_string())?;
            stores
                .classes
                .wait_until_ready()
                .await
                .map_err(|e| e.to_string())?;
            stores
                .nodes
                .wait_until_ready()
                .await
                .map_err(|e| e.to_string())
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            ready = first_lists => match ready {
                Ok(()) => tracing::info!("every API watch completed its first list"),
                Err(err) => return Err(KubeSourceError::FirstList(err)),
            },
        }
        let mut tasks = std::mem::take(&mut *lock(&watching.tasks));
        let reader = Reader {
            client: self.client.clone(),
            changed: watching.changed.clone(),
            cancel: cancel.clone(),
            at_once: Arc::new(tokio::sync::Semaphore::new(READS_AT_ONCE)),
        };
        let mut published = false;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let (mut state, due) = snapshot(&stores, &self.node);
            let (unread, failed) = (due.unread, due.failed);
            reader.read(&stores, due);
            // The first snapshot waits for the reads it needs (`run --once` acts on it), unless
            // one fails: then it is published incomplete, saying why.
            if published || !unread || failed {
                published = true;
                self.publish(&tx, &mut state);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                Some(ended) = tasks.join_next() => {
                    if cancel.is_cancelled() {
                        return Ok(());
                    }
                    let (task, how) = match ended {
                        Ok(task) => (task, "it returned".to_string()),
                        Err(join) => ("an API watch task".to_string(), join.to_string()),
                    };
                    return Err(KubeSourceError::TaskEnded { task, how });
                }
                Some(()) = changed.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while changed.try_recv().is_ok() {}
                }
            }
        }
    }
}

impl KubeSource {
    fn publish(&self, tx: &watch::Sender<Arc<DesiredState>>, state: &mut DesiredState) {
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
        crate::shared::publish(tx, Arc::new(std::mem::take(state)));
    }
}

/// Waits for a kept store's first complete list; an error when its watch ended first.
async fn listed(mut listed: watch::Receiver<bool>) -> Result<(), watch::error::RecvError> {
    listed.wait_for(|done| *done).await.map(|_| ())
}

/// Reads with a GET the claims and volumes a pod came to need after their watch passed them
/// by (or that a relist did not find), a few at a time, retrying one that fails while a pod
/// still wants it.
struct Reader {
    client: Client,
    changed: mpsc::UnboundedSender<()>,
    cancel: CancellationToken,
    at_once: Arc<tokio::sync::Semaphore>,
}

/// A snapshot's due reads: claim keys (`namespace/name`) and volume names, each with the token
/// its answer must bring back.
#[derive(Default)]
struct Due {
    claims: Vec<(String, u64)>,
    volumes: Vec<(String, u64)>,
    /// Whether some object a pod needs is not known yet (these reads, or ones in flight).
    unread: bool,
    /// Whether a read of one failed (it is being retried).
    failed: bool,
}

impl Reader {
    fn read(&self, stores: &Stores, due: Due) {
        for (key, token) in due.claims {
            let (namespace, name) = key.split_once('/').unwrap_or(("default", &key));
            let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
            let name = name.to_string();
            self.spawn(api, name, (key, token), stores.claims.clone());
        }
        for (name, token) in due.volumes {
            let api: Api<PersistentVolume> = Api::all(self.client.clone());
            self.spawn(api, name.clone(), (name, token), stores.volumes.clone());
        }
    }

    fn spawn<K>(
        &self,
        api: Api<K>,
        name: String,
        (key, token): (String, u64),
        kept: Shared<Kept<K>>,
    ) where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let (changed, cancel, at_once) = (
            self.changed.clone(),
            self.cancel.clone(),
            self.at_once.clone(),
        );
        tokio::spawn(async move {
            let mut backoff = WatchBackoff::default();
            loop {
                let answer = tokio::select! {
                    _ = cancel.cancelled() => return,
                    answer = async {
                        let _permit = at_once.acquire().await;
                        api.get_opt(&name).await
                    } => answer,
                };
                let answer = answer
                    .map(|object| {
                        object.map(|mut object| {
                            object.managed_fields_mut().clear();
                            object
                        })
                    })
                    .map_err(|err| request_for_operator(&err));
                // A failure is logged once, where the snapshot makes a problem of it.
                let again = lock(&kept).read(&key, token, answer);
                let _ = changed.send(());
                if !again {
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.failed()) => {}
                }
            }
        });
    }
}

/// What every watch task shares: the publisher's wake-up, the watch health record, the
/// shutdown signal.
struct Watching {
    changed: mpsc::UnboundedSender<()>,
    /// Woken when the server answers again (a probe, or any watch's error from it): waiting
    /// watches retry at once with their backoff reset.
    server_back: Arc<tokio::sync::Notify>,
    health: SharedHealth,
    cancel: CancellationToken,
    /// The watch tasks and the probe; each returns what it was when it ends.
    tasks: std::sync::Mutex<tokio::task::JoinSet<String>>,
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
        let (reader, mut writer) = reflector::store();
        self.watch(api, config, move |event| writer.apply_watcher_event(event));
        reader
    }

    /// As `reflect`, into a store that keeps only the objects this node's pods want; the
    /// receiver turns true once its first list is complete.
    fn keep<K>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        kept: &Shared<Kept<K>>,
    ) -> watch::Receiver<bool>
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (listed, first_list) = watch::channel(false);
        let kept = kept.clone();
        self.watch(api, config, move |event| {
            let mut kept = lock(&kept);
            kept.watch_event(event);
            listed.send_if_modified(|done| !std::mem::replace(done, kept.listed()) && *done);
        });
        first_list
    }

    fn watch<K>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        mut apply: impl FnMut(&watcher::Event<K>) + Send + 'static,
    ) where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        // No kube-rs backoff wrapper: the task below waits after each error itself.
        let stream = watcher(api, config)
            // Never read here; on a big cluster they are most of an object's size.
            .modify(|object| object.managed_fields_mut().clear())
            .inspect_ok(move |event| apply(event));
        let (changed, health, cancel, server_back) = (
            self.changed.clone(),
            self.health.clone(),
            self.cancel.clone(),
            self.server_back.clone(),
        );
        let task = format!("API watch of {kind} objects");
        let body = async move {
            let mut stream = std::pin::pin!(stream);
            let mut backoff = WatchBackoff::default();
            // A watch that resumes from its last version after an error emits nothing when it
            // works again: no error this long after a retry is taken as recovery.
            let mut recovered_at: Option<tokio::time::Instant> = None;
            let mut last_expired: Option<tokio::time::Instant> = None;
            // The last error was a failure to reach the server (not an answer from it).
            let mut unreachable = false;
            loop {
                let quiet = async {
                    match recovered_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let item = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = quiet => {
                        recovered_at = None;
                        if lock(&health).delivered(&kind, false) {
                            tracing::info!(kind, "API watch retried without error; taking it as working again");
                            let _ = changed.send(());
                        }
                        continue;
                    }
                    item = stream.next() => item,
                };
                match item {
                    // `Init` comes before every list attempt and `InitApply` before the list
                    // is whole: neither shows that the watch works again.
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Some(Ok(event)) => {
                        backoff.delivered();
                        unreachable = false;
                        recovered_at = None;
                        let done = matches!(event, watcher::Event::InitDone);
                        let mut health = lock(&health);
                        let was_failing = health.is_failing(&kind);
                        health.delivered(&kind, done);
                        if was_failing {
                            tracing::info!(kind, "API watch delivers again");
                        }
                    }
                    Some(Err(err)) => {
                        // An answer after this watch could not reach the server proves the
                        // outage is over: for this watch's grown backoff, and for the other
                        // watches still waiting one out. (A refusal that repeats is no news:
                        // it backs off as usual.)
                        let code = answered(&err);
                        if code.is_some() && unreachable {
                            backoff.delivered();
                            server_back.notify_waiters();
                        }
                        unreachable = code.is_none();
                        let now = tokio::time::Instant::now();
                        let expired_lately =
                            last_expired.is_some_and(|at| now - at < RELIST_AT_ONCE_EVERY);
                        if code == Some(410) && !expired_lately {
                            // Its history moved past this watch: the watcher relists at once
                            // (a second 410 soon after waits its backoff, so none loops).
                            last_expired = Some(now);
                            tracing::info!(kind, "API watch expired (410 Gone); relisting now");
                            continue;
                        }
                        let delay = backoff.failed();
                        tracing::warn!(%err, kind, retry_in = ?delay, "API watch failed; the last complete view stays in force");
                        lock(&health).failed(&kind, for_operator(&err));
                        let _ = changed.send(());
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                            // Only a watch that cannot reach the server waits for word that it
                            // is back; one the server answered (403, 500) waits its backoff.
                            _ = server_back.notified(), if unreachable => {
                                backoff.delivered();
                                tracing::info!(kind, "the API server answers again; retrying the watch now");
                            }
                        }
                        recovered_at = Some(tokio::time::Instant::now() + RECOVERY_QUIET);
                        continue;
                    }
                    None => return,
                }
                let _ = changed.send(());
            }
        };
        lock(&self.tasks).spawn(async move {
            body.await;
            task
        });
    }
}

/// A store's objects by the key the file source uses for them (shared with the store, not
/// copied).
fn by_key<K>(store: &Store<K>, key: impl Fn(&K) -> String) -> BTreeMap<String, Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| (key(o), o.clone())).collect()
}

/// `namespace/name`, as manifests key namespaced objects.
fn namespaced<K: Resource>(object: &K) -> String {
    let meta = object.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

/// The claims this node's pods name, by `namespace/name`.
fn claims_named<'a>(pods: impl IntoIterator<Item = &'a Arc<Pod>>) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for pod in pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
        for claim in volumes.filter_map(|v| v.persistent_volume_claim.as_ref()) {
            keys.insert(format!("{namespace}/{}", claim.claim_name));
        }
    }
    keys
}

/// The volumes these claims are bound to.
fn volumes_named<'a>(
    claims: impl IntoIterator<Item = &'a Arc<PersistentVolumeClaim>>,
) -> BTreeSet<String> {
    claims
        .into_iter()
        .filter_map(|c| c.spec.as_ref()?.volume_name.clone())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The desired state from the stores: objects as the file source would read them, bindings
/// as the cluster made them; and the reads this node's pods now need.
fn snapshot(stores: &Stores, node: &NodeConfig) -> (DesiredState, Due) {
    let mut objects = Manifests::default();
    objects.pods = by_key(&stores.pods, namespaced);
    let mut due = Due::default();
    {
        let mut claims = lock(&stores.claims);
        due.claims = claims.want(claims_named(objects.pods.values()));
        objects.claims = claims.held();
        for (key, failed) in claims.unread() {
            objects
                .unread
                .insert(("PersistentVolumeClaim", key), failed);
        }
    }
    {
        let mut volumes = lock(&stores.volumes);
        due.volumes = volumes.want(volumes_named(objects.claims.values()));
        objects.volumes = volumes.held();
        for (key, failed) in volumes.unread() {
            objects.unread.insert(("PersistentVolume", key), failed);
        }
    }
    objects.classes = by_key(&stores.classes, ResourceExt::name_any);
    let mut node = node.clone();
    let this_node = stores.nodes.state().first().cloned();
    if let Some(this) = &this_node {
        node.labels.extend(this.labels().clone());
        let allocatable = this.status.as_ref().and_then(|s| s.allocatable.as_ref());
        if let Some(Ok(memory)) = allocatable
            .and_then(|a| a.get("memory"))
            .map(|q| crate::model::quantity::parse_bytes(&q.0))
        {
            node.memory_bytes = Some(memory);
        }
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
    // Not known yet is not known to be gone: nothing is torn down until every object a pod
    // needs has been read.
    for ((kind, key), failed) in &objects.unread {
        match failed {
            None => state.warnings.push(format!(
                "reading {kind} {key} from the API; nothing is torn down until it is read"
            )),
            Some(why) => state.problems.push(format!(
                "{kind} {key}, which a pod here needs, could not be read from the API ({why}); retrying, and nothing is torn down until it is read"
            )),
        }
    }
    due.unread = !objects.unread.is_empty();
    due.failed = objects.unread.values().any(Option::is_some);
    state.complete = state.problems.is_empty() && !due.unread;
    (state, due)
}
