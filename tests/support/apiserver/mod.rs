//! A fake Kubernetes API server for tests, speaking the real wire protocol over HTTP on
//! loopback: lists with `resourceVersion` and `limit`/`continue` pages (served from a snapshot,
//! `410 Gone` once compacted), chunked watch streams (the current objects first when started
//! from "now", bookmarks, `timeoutSeconds`, `410 Gone` for versions compacted away, DELETED
//! for an object leaving the selection), field selectors (`400` for unsupported ones), and
//! create (`409` if it exists), merge-patch, replace (`409` for a stale resourceVersion) and
//! delete (`404` if missing). A test can add, change and delete objects, drop or expire every
//! watch, stall all requests or only next pages, refuse a resource (403), or take the server
//! down (its port closed, so connections are refused) and bring it back on the same port.

#![allow(dead_code)]

mod handlers;
mod wire;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use wire::key_of;

/// A resource the server serves: its path prefix and list kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Pods,
    Claims,
    Volumes,
    Classes,
    Nodes,
    Events,
}

impl Resource {
    fn all() -> [Resource; 6] {
        [
            Resource::Pods,
            Resource::Claims,
            Resource::Volumes,
            Resource::Classes,
            Resource::Nodes,
            Resource::Events,
        ]
    }
    fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Claims => "persistentvolumeclaims",
            Resource::Volumes => "persistentvolumes",
            Resource::Classes => "storageclasses",
            Resource::Nodes => "nodes",
            Resource::Events => "events",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Resource::Classes => "storage.k8s.io/v1",
            Resource::Events => "events.k8s.io/v1",
            _ => "v1",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Claims => "PersistentVolumeClaim",
            Resource::Volumes => "PersistentVolume",
            Resource::Classes => "StorageClass",
            Resource::Nodes => "Node",
            Resource::Events => "Event",
        }
    }
    fn of_kind(kind: &str) -> Option<Resource> {
        Resource::all().into_iter().find(|r| r.kind() == kind)
    }
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
    /// The object before a MODIFIED change.
    previous: Option<Value>,
}

type Key = (Resource, String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches from a version older than this get 410 Gone.
    oldest: u64,
    /// The objects as they were at a version, kept for lists being read in pages.
    snapshots: BTreeMap<u64, Arc<BTreeMap<Key, Value>>>,
    /// How many list requests each resource has served (relists show up here).
    lists: BTreeMap<Resource, usize>,
    /// Resources the client may not read (403, as with missing RBAC rules).
    forbidden: Vec<Resource>,
    /// How many requests for each forbidden resource were refused.
    refusals: BTreeMap<Resource, usize>,
    /// GETs of single objects served (or refused), by resource.
    gets: BTreeMap<Resource, usize>,
    /// Resources whose single objects the client may not GET (it may still list and watch).
    gets_forbidden: Vec<Resource>,
    /// Between bookmarks on a watch that asked for them; `None`: every 500 ms (a real
    /// server sends one about every minute).
    bookmark_every: Option<Duration>,
}

/// Handle on a running fake API server.
#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream; with `true`, each first gets a 410 Gone.
    drops: watch::Sender<(u64, bool)>,
    /// While true, requests hang (a stalled server).
    stalled: watch::Sender<bool>,
    /// While true, requests for the next page of a list hang.
    continues_stalled: watch::Sender<bool>,
    /// While true the port is closed: connections are refused and open ones are cut.
    down: watch::Sender<bool>,
    /// Whether the port is open now (follows `down` once the accept task has acted on it).
    listening: watch::Sender<bool>,
    /// Requests answered so far (a watch stream counts when it starts).
    served: watch::Sender<u64>,
    /// Requests hanging in a stall now.
    hanging: watch::Sender<u64>,
}

impl FakeApiServer {
    /// Starts on 127.0.0.1 on a free port.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = FakeApiServer {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            changes: broadcast::channel(1024).0,
            drops: watch::channel((0, false)).0,
            stalled: watch::channel(false).0,
            continues_stalled: watch::channel(false).0,
            down: watch::channel(false).0,
            listening: watch::channel(true).0,
            served: watch::channel(0).0,
            hanging: watch::channel(0).0,
        };
        tokio::spawn(server.clone().serve(listener));
        server
    }

    /// Accepts connections until taken down; then closes the port until brought back.
    async fn serve(self, mut listener: tokio::net::TcpListener) {
        let mut down = self.down.subscribe();
        loop {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(self.clone().connection(stream));
                        }
                    }
                    _ = down.wait_for(|d| *d) => break,
                }
            }
            drop(listener);
            self.listening.send_replace(false);
            if down.wait_for(|d| !*d).await.is_err() {
                return;
            }
            listener = self.rebind().await;
            self.listening.send_replace(true);
        }
    }

    /// The same port again (SO_REUSEADDR is set by tokio), retried briefly.
    async fn rebind(&self) -> tokio::net::TcpListener {
        for _ in 0..100 {
            if let Ok(listener) = tokio::net::TcpListener::bind(self.addr).await {
                return listener;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the fake API server cannot listen on {} again", self.addr);
    }

    async fn connection(self, stream: tokio::net::TcpStream) {
        let mut down = self.down.subscribe();
        let handler = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(req).await) }
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        // Taking the server down cuts open connections, as a dead apiserver would.
        tokio::select! {
            _ = connection => {}
            _ = down.wait_for(|d| *d) => {}
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir`; returns its path.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            self.url()
        )).unwrap();
        path
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object given as YAML/JSON with apiVersion, kind and metadata.
    pub fn apply(&self, object: Value) {
        let resource =
            Resource::of_kind(object["kind"].as_str().unwrap()).expect("a kind the server serves");
        let mut state = self.state.lock().unwrap();
        self.store(&mut state, resource, object);
    }

    /// Returns the object as stored (with its resourceVersion).
    fn store(&self, state: &mut State, resource: Resource, object: Value) -> Value {
        let key = key_of(resource, &object);
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(state, resource, kind, key.clone(), Some(object));
        state.objects[&key].clone()
    }

    pub fn apply_yaml(&self, text: &str) {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !value.is_null() {
                self.apply(value);
            }
        }
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let resource = Resource::of_kind(kind).unwrap();
        let mut state = self.state.lock().unwrap();
        let key = (resource, namespace.to_string(), name.to_string());
        self.record(&mut state, resource, "DELETED", key, None);
    }

    fn record(
        &self,
        state: &mut State,
        resource: Resource,
        kind: &'static str,
        key: (Resource, String, String),
        object: Option<Value>,
    ) {
        state.rv += 1;
        let rv = state.rv;
        let mut object = match object {
            Some(object) => object,
            None => match state.objects.remove(&key) {
                Some(object) => object,
                None => return,
            },
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let previous = if kind != "DELETED" {
            state.objects.insert(key, object.clone())
        } else {
            None
        };
        let change = Change {
            rv,
            resource,
            kind,
            object,
            previous,
        };
        state.history.push(change.clone());
        let _ = self.changes.send(change);
    }

    /// Events volumed posted, as objects.
    pub fn events(&self) -> Vec<Value> {
        self.objects_of(Resource::Events)
    }

    /// Every object of `kind` the server holds.
    #[allow(dead_code)] // Not every test binary that includes the server reads objects.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        self.objects_of(Resource::of_kind(kind).unwrap())
    }

    fn objects_of(&self, resource: Resource) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((r, ..), _)| *r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Refuses every request for `kind` with 403 Forbidden, as a missing RBAC rule does.
    pub fn forbid(&self, kind: &str) {
        let resource = Resource::of_kind(kind).unwrap();
        self.state.lock().unwrap().forbidden.push(resource);
    }

    /// Refuses (403) or allows again GETs of single `kind` objects; lists and watches go on.
    pub fn forbid_gets(&self, kind: &str, forbidden: bool) {
        let resource = Resource::of_kind(kind).unwrap();
        let mut state = self.state.lock().unwrap();
        state.gets_forbidden.retain(|r| *r != resource);
        if forbidden {
            state.gets_forbidden.push(resource);
        }
    }

    /// How many GETs of single `kind` objects the server was asked for.
    pub fn gets(&self, kind: &str) -> usize {
        let resource = Resource::of_kind(kind).unwrap();
        let state = self.state.lock().unwrap();
        state.gets.get(&resource).copied().unwrap_or(0)
    }

    /// How many requests for `kind` the server refused (see `forbid`).
    pub fn refusals(&self, kind: &str) -> usize {
        let resource = Resource::of_kind(kind).unwrap();
        let state = self.state.lock().unwrap();
        state.refusals.get(&resource).copied().unwrap_or(0)
    }

    /// Changes each time the server answers a request: something to wait on besides the
    /// daemon's own progress.
    pub fn activity(&self) -> watch::Receiver<u64> {
        self.served.subscribe()
    }

    /// Waits (at most 10 s) until at least `count` requests hang in a stall.
    pub async fn until_hanging(&self, count: u64) {
        let mut hanging = self.hanging.subscribe();
        let reached =
            tokio::time::timeout(Duration::from_secs(10), hanging.wait_for(|n| *n >= count))
                .await
                .map(|r| r.map(drop));
        assert!(
            matches!(reached, Ok(Ok(()))),
            "{count} requests never hung in the stall (now {})",
            *self.hanging.borrow()
        );
    }

    /// How many lists of `kind` the server has answered.
    pub fn lists(&self, kind: &str) -> usize {
        let resource = Resource::of_kind(kind).unwrap();
        let state = self.state.lock().unwrap();
        state.lists.get(&resource).copied().unwrap_or(0)
    }

    /// Forgets history before the current version: a watch resuming from an older version,
    /// and a list being read in pages, gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.oldest = state.rv;
        state.history.clear();
        state.snapshots.clear();
    }

    /// Ends every open watch with a 410 Gone error event, as a server whose watch cache fell
    /// behind does; clients must list again.
    pub fn expire_watches(&self) {
        self.drops.send_modify(|(n, expire)| {
            *n += 1;
            *expire = true;
        });
    }

    /// Ends every open watch stream (clients reconnect).
    pub fn drop_watches(&self) {
        self.drops.send_modify(|(n, expire)| {
            *n += 1;
            *expire = false;
        });
    }

    /// Takes the server down: its port closes (new connections are refused) and open
    /// connections, watches included, are cut.
    pub async fn stop(&self) {
        self.down.send_replace(true);
        self.drop_watches();
        let _ = self.listening.subscribe().wait_for(|l| !*l).await;
    }

    /// Brings the server back on the same port, with its objects and history.
    pub async fn restart(&self) {
        self.down.send_replace(false);
        let _ = self.listening.subscribe().wait_for(|l| *l).await;
    }

    /// While stalled, requests for a list's next page get no answer (a list caught half-read).
    /// Sets the time between bookmarks on watches started from now on.
    pub fn bookmark_every(&self, every: Duration) {
        self.state.lock().unwrap().bookmark_every = Some(every);
    }

    pub fn stall_continues(&self, stalled: bool) {
        self.continues_stalled.send_replace(stalled);
    }

    /// While stalled, requests get no answer.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}
