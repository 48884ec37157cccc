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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

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
        let state = self.state.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|((r, ..), _)| *r == Resource::Events)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Refuses every request for `kind` with 403 Forbidden, as a missing RBAC rule does.
    pub fn forbid(&self, kind: &str) {
        let resource = Resource::of_kind(kind).unwrap();
        self.state.lock().unwrap().forbidden.push(resource);
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
    pub fn stall_continues(&self, stalled: bool) {
        self.continues_stalled.send_replace(stalled);
    }

    /// While stalled, requests get no answer.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let mut stalled = self.stalled.subscribe();
        let _ = stalled.wait_for(|s| !*s).await;
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query().unwrap_or(""));
        if query.get("continue").is_some_and(|c| !c.is_empty()) {
            let mut stalled = self.continues_stalled.subscribe();
            let _ = stalled.wait_for(|s| !*s).await;
        }
        let Some((resource, namespace, name)) = route(&path) else {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {path}"),
            );
        };
        if self.state.lock().unwrap().forbidden.contains(&resource) {
            return failure(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "{} is forbidden: User \"system:anonymous\" cannot list resource \"{}\" at the cluster scope",
                    resource.plural(),
                    resource.plural()
                ),
            );
        }
        if let Err(message) = check_selector(resource, &query) {
            return failure(StatusCode::BAD_REQUEST, "BadRequest", &message);
        }
        let method = req.method().clone();
        match (method, &name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(resource, namespace, &query)
            }
            (Method::GET, None) => self.list(resource, namespace.as_deref(), &query),
            (Method::GET, Some(name)) => {
                let key = (resource, namespace.unwrap_or_default(), name.clone());
                match self.state.lock().unwrap().objects.get(&key) {
                    Some(object) => respond(StatusCode::OK, object.clone()),
                    None => not_found(resource, name),
                }
            }
            (method @ (Method::POST | Method::PATCH | Method::PUT), _) => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if !body.is_object() {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is not a JSON object",
                    );
                }
                self.write(method, resource, namespace, name.clone(), body)
            }
            (Method::DELETE, Some(name)) => {
                let key = (resource, namespace.unwrap_or_default(), name.clone());
                let mut state = self.state.lock().unwrap();
                if !state.objects.contains_key(&key) {
                    return not_found(resource, name);
                }
                self.record(&mut state, resource, "DELETED", key, None);
                respond(StatusCode::OK, status_ok())
            }
            _ => failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not served by the fake API server",
            ),
        }
    }

    /// POST creates (409 if it exists), PUT replaces and PATCH merges (RFC 7386) into an
    /// existing object (404 if missing).
    fn write(
        &self,
        method: Method,
        resource: Resource,
        namespace: Option<String>,
        name: Option<String>,
        mut body: Value,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        if let Some(ns) = &namespace {
            body["metadata"]["namespace"] = json!(ns);
        }
        if let Some(name) = &name {
            body["metadata"]["name"] = json!(name);
        }
        let Some(name) = body["metadata"]["name"].as_str().map(str::to_string) else {
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required",
            );
        };
        let key = key_of(resource, &body);
        let mut state = self.state.lock().unwrap();
        let existing = state.objects.get(&key).cloned();
        let object = match (method, existing) {
            (Method::POST, Some(_)) => {
                return failure(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", resource.plural()),
                )
            }
            (Method::POST, None) => {
                // As the real server: a new object gets its identity.
                let mut body = body;
                if body["metadata"]["uid"].is_null() {
                    body["metadata"]["uid"] =
                        json!(uuid::Uuid::from_u128(fastrand::u128(..)).to_string());
                }
                body
            }
            (_, None) => return not_found(resource, &name),
            // Optimistic concurrency: a write based on an older version loses.
            (_, Some(current))
                if body["metadata"]["resourceVersion"]
                    .as_str()
                    .is_some_and(|rv| current["metadata"]["resourceVersion"] != rv) =>
            {
                return failure(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", resource.plural()),
                )
            }
            (Method::PATCH, Some(mut current)) => {
                merge_patch(&mut current, body);
                current
            }
            (_, Some(_)) => body,
        };
        let mut object = object;
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind());
        let created = !state.objects.contains_key(&key);
        let stored = self.store(&mut state, resource, object);
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        respond(code, stored)
    }

    /// A list at the current version, or read in pages (`limit`, `continue`) from a snapshot
    /// taken when the first page was served.
    fn list(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        query: &BTreeMap<String, String>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let mut state = self.state.lock().unwrap();
        *state.lists.entry(resource).or_default() += 1;
        let (rv, after, objects) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let Some((rv, after)) = parse_continue(token) else {
                    return failure(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "malformed continue token",
                    );
                };
                match state.snapshots.get(&rv) {
                    Some(objects) => (rv, Some(after), objects.clone()),
                    None => {
                        return failure(
                            StatusCode::GONE,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                        )
                    }
                }
            }
            None => {
                if let Some(asked) = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    let exact = query
                        .get("resourceVersionMatch")
                        .is_some_and(|m| m == "Exact");
                    if asked > state.rv {
                        return failure(
                            StatusCode::GATEWAY_TIMEOUT,
                            "Timeout",
                            "Too large resource version",
                        );
                    }
                    if exact && asked != state.rv {
                        return failure(StatusCode::GONE, "Expired", "too old resource version");
                    }
                }
                (state.rv, None, Arc::new(state.objects.clone()))
            }
        };
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut matching = objects.iter().filter(|((r, ns, name), v)| {
            *r == resource
                && namespace.is_none_or(|n| n == ns)
                && after.as_ref().is_none_or(|a| (ns, name) > (&a.0, &a.1))
                && selected(v, query)
        });
        let items: Vec<Value> = matching
            .by_ref()
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect();
        let remaining = matching.count();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if remaining > 0 {
            let last = key_of(resource, items.last().expect("a page before the rest"));
            metadata["continue"] = json!(format!("{rv}/{}/{}", last.1, last.2));
            metadata["remainingItemCount"] = json!(remaining);
            state.snapshots.insert(rv, objects);
        }
        let list = json!({
            "apiVersion": resource.api_version(),
            "kind": format!("{}List", resource.kind()),
            "metadata": metadata,
            "items": items,
        });
        respond(StatusCode::OK, list)
    }

    fn watch(
        &self,
        resource: Resource,
        namespace: Option<String>,
        query: &BTreeMap<String, String>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        if query.get("sendInitialEvents").is_some_and(|v| v == "true") {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "sendInitialEvents (streaming lists) is not served by the fake API server",
            );
        }
        let from: Option<u64> = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .filter(|v| *v != 0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        // The server ends a watch after `timeoutSeconds`, as the real one does.
        let lifetime = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        let scope = Scope {
            resource,
            namespace,
            query: query.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        // Subscribed under the lock that changes are made and sent under: nothing is missed
        // between the backlog and the live feed, and nothing is in both.
        let (mut live, backlog, sent, gone) = {
            let state = self.state.lock().unwrap();
            let live = self.changes.subscribe();
            match from {
                Some(from) if from < state.oldest => (live, Vec::new(), from, true),
                Some(from) => {
                    let backlog: Vec<Value> = state
                        .history
                        .iter()
                        .filter(|c| c.rv > from)
                        .filter_map(|c| scope.event(c))
                        .collect();
                    (live, backlog, state.rv, false)
                }
                // From "now": the current objects as ADDED, then what follows.
                None => {
                    let backlog = state
                        .objects
                        .iter()
                        .filter(|((r, ..), v)| *r == resource && scope.matches(v))
                        .map(|(_, v)| json!({"type": "ADDED", "object": v}))
                        .collect();
                    (live, backlog, state.rv, false)
                }
            }
        };
        let mut drops = self.drops.subscribe();
        drops.borrow_and_update();
        tokio::spawn(async move {
            let line = |value: Value| Bytes::from(format!("{value}\n"));
            let expired = || {
                line(
                    json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}),
                )
            };
            if gone {
                let _ = tx.send(expired()).await;
                return;
            }
            for event in backlog {
                if tx.send(line(event)).await.is_err() {
                    return;
                }
            }
            // Bookmarks carry the last version this stream has covered, never one ahead.
            let mut sent = sent;
            let mut ticker = tokio::time::interval(Duration::from_millis(500));
            let ends = tokio::time::sleep(lifetime);
            tokio::pin!(ends);
            loop {
                tokio::select! {
                    change = live.recv() => match change {
                        Ok(change) if change.rv <= sent => {}
                        Ok(change) => {
                            sent = change.rv;
                            if let Some(event) = scope.event(&change) {
                                if tx.send(line(event)).await.is_err() { return; }
                            }
                        }
                        Err(_) => return,
                    },
                    _ = ticker.tick(), if bookmarks => {
                        let mark = json!({"type": "BOOKMARK", "object": {"apiVersion": resource.api_version(), "kind": resource.kind(), "metadata": {"resourceVersion": sent.to_string()}}});
                        if tx.send(line(mark)).await.is_err() { return; }
                    }
                    _ = drops.changed() => {
                        if drops.borrow().1 {
                            let _ = tx.send(expired()).await;
                        }
                        return;
                    }
                    _ = &mut ends => return,
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }
}

/// What one watch stream covers: a resource, maybe a namespace, maybe a field selector.
struct Scope {
    resource: Resource,
    namespace: Option<String>,
    query: BTreeMap<String, String>,
}

impl Scope {
    fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|n| object["metadata"]["namespace"] == n)
            && selected(object, &self.query)
    }

    /// The event this stream sees for a change: an object leaving the selection is DELETED
    /// for it, one entering is ADDED, as the real server does.
    fn event(&self, change: &Change) -> Option<Value> {
        if change.resource != self.resource {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        let kind = match (change.kind, before, now) {
            ("DELETED", _, true) => "DELETED",
            ("ADDED", _, true) => "ADDED",
            ("MODIFIED", true, true) => "MODIFIED",
            ("MODIFIED", false, true) => "ADDED",
            ("MODIFIED", true, false) => "DELETED",
            _ => return None,
        };
        Some(json!({"type": kind, "object": change.object}))
    }
}

fn key_of(resource: Resource, object: &Value) -> (Resource, String, String) {
    let meta = &object["metadata"];
    let namespaced = !matches!(
        resource,
        Resource::Volumes | Resource::Classes | Resource::Nodes
    );
    let namespace = if namespaced {
        meta["namespace"].as_str().unwrap_or("default").to_string()
    } else {
        String::new()
    };
    (
        resource,
        namespace,
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// `/api/v1/[namespaces/<ns>/]<plural>[/<name>]` or `/apis/<group>/<version>/...`.
fn route(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    let resource = Resource::all()
        .into_iter()
        .find(|r| Some(&r.plural()) == rest.first())?;
    Some((resource, namespace, rest.get(1).map(|n| n.to_string())))
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The field labels the server can select on (as the real one: a few per kind).
fn field_labels(resource: Resource) -> &'static [&'static str] {
    match resource {
        Resource::Pods => &["metadata.name", "metadata.namespace", "spec.nodeName"],
        Resource::Volumes | Resource::Classes | Resource::Nodes => &["metadata.name"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

fn selector_terms(query: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    let Some(selector) = query.get("fieldSelector") else {
        return Vec::new();
    };
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|term| {
            term.split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap_or((term, ""))
        })
        .collect()
}

/// 400 for a field the real server would refuse (and for `!=`, which this fake lacks).
fn check_selector(resource: Resource, query: &BTreeMap<String, String>) -> Result<(), String> {
    for (field, _) in selector_terms(query) {
        if !field_labels(resource).contains(&field) {
            return Err(format!(
                "field label not supported: {field} for {}",
                resource.plural()
            ));
        }
    }
    Ok(())
}

fn selected(object: &Value, query: &BTreeMap<String, String>) -> bool {
    selector_terms(query).into_iter().all(|(field, wanted)| {
        let value = field.split('.').fold(object, |value, part| &value[part]);
        value.as_str().unwrap_or("") == wanted
    })
}

/// JSON merge patch (RFC 7386): objects merge, null deletes, anything else replaces.
fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let target = target.as_object_mut().expect("made an object above");
            for (name, value) in fields {
                if value.is_null() {
                    target.remove(&name);
                } else {
                    merge_patch(target.entry(name).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other,
    }
}

/// `<rv>/<namespace>/<name>` of the last item served.
fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let mut parts = token.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, (parts.next()?.to_string(), parts.next()?.to_string())))
}

fn not_found(resource: Resource, name: &str) -> Response<BoxBody<Bytes, Infallible>> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", resource.plural()),
    )
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    respond(code, status(code.as_u16(), reason, message))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn status_ok() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Success"})
}

fn respond(code: StatusCode, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}
