//! The Kubernetes API source: kube-rs watchers and reflectors for this node's pods and the
//! claims, volumes, classes and Node they need. A snapshot is published only once every store
//! has completed its first list; relists swap a store whole (kube-rs buffers them), so a
//! partial view is never published, and an outage publishes nothing: the last complete
//! snapshot stays in force.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
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

/// Coalesces a burst of watch events into one snapshot.
const DEBOUNCE: Duration = Duration::from_millis(20);

pub struct KubeSource {
    pub client: Client,
    pub node: NodeConfig,
    /// The last error of each watch that is failing now, by kind; shared with whoever reports
    /// on the source (a timed-out first list says why).
    pub failing: WatchErrors,
}

/// The last error of each failing watch, by kind (`Pod`, `Node`, ...).
pub type WatchErrors = Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

/// One line per failing watch, for a message to the operator.
pub fn describe_failing(failing: &WatchErrors) -> Vec<String> {
    failing
        .lock()
        .expect("watch errors are only ever inserted and removed")
        .iter()
        .map(|(kind, err)| format!("the API watch of {kind} objects is failing: {err}"))
        .collect()
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
            failing: self.failing.clone(),
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
            // Shown by `status` and the --once report; the snapshot itself stays in force.
            state.warnings.extend(
                describe_failing(&self.failing)
                    .into_iter()
                    .map(|w| w + "; the last complete view stays in force while it retries"),
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

/// What every watch task shares: the publisher's wake-up, the failing-watch record, the
/// shutdown signal.
struct Watching {
    changed: mpsc::UnboundedSender<()>,
    failing: WatchErrors,
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
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let (changed, failing, cancel) = (
            self.changed.clone(),
            self.failing.clone(),
            self.cancel.clone(),
        );
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let item = tokio::select! {
                    _ = cancel.cancelled() => return,
                    item = stream.next() => item,
                };
                let mut failing = failing
                    .lock()
                    .expect("watch errors are only ever inserted and removed");
                match item {
                    Some(Ok(_)) => {
                        if failing.remove(&kind).is_some() {
                            tracing::info!(kind, "API watch delivers again");
                        }
                    }
                    Some(Err(err)) => {
                        tracing::warn!(%err, kind, "API watch failed; retrying with backoff, the last complete view stays in force");
                        failing.insert(kind.clone(), for_operator(&err));
                    }
                    None => return,
                }
                let _ = changed.send(());
            }
        });
        reader
    }
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
    if let Some(this) = stores.nodes.state().first() {
        node.labels.extend(this.labels().clone());
    }
    let mut labels = node.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    let bindings = bindings_from_api(&objects, &node.name, &labels);
    let mut state = resolve(&objects, &bindings, &node);
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
    mut notices: mpsc::UnboundedReceiver<crate::reconcile::notices::Notice>,
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

/// The same notice is not sent again within this time.
pub const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// How long a notice's Event series is continued (kube-rs keeps its own for 6 minutes).
const SERIES_KEPT: Duration = Duration::from_secs(6 * 60);
