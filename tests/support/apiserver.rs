//! A fake Kubernetes API server for tests, speaking the real wire protocol over HTTP on
//! loopback: lists with `resourceVersion`, chunked watch streams (with bookmarks, and
//! `410 Gone` for versions it has compacted away), field selectors for pods and nodes, and
//! create/patch for Events. A test can add, change and delete objects, drop every watch,
//! stall, or take the server down and bring it back.

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
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(Resource, String, String), Value>,
    history: Vec<Change>,
    /// Watches from a version older than this get 410 Gone.
    oldest: u64,
}

/// Handle on a running fake API server.
#[derive(Clone)]
pub struct FakeApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream.
    drops: watch::Sender<u64>,
    /// While true, requests hang (a stalled server); while `down`, connections are refused.
    stalled: watch::Sender<bool>,
    down: Arc<Mutex<bool>>,
}

impl FakeApiServer {
    /// Starts on 127.0.0.1 on a free port.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = FakeApiServer {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            changes: broadcast::channel(1024).0,
            drops: watch::channel(0).0,
            stalled: watch::channel(false).0,
            down: Arc::default(),
        };
        let accept = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if *accept.down.lock().unwrap() {
                    drop(stream);
                    continue;
                }
                let handler = accept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler.handle(req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        server
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
        let key = key_of(resource, &object);
        let kind = if state.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(&mut state, resource, kind, key, Some(object));
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
        if kind != "DELETED" {
            state.objects.insert(key, object.clone());
        }
        let change = Change {
            rv,
            resource,
            kind,
            object,
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

    /// Forgets history: any watch resuming from an older version gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.oldest = state.rv + 1;
        state.history.clear();
    }

    /// Ends every open watch stream (clients reconnect).
    pub fn drop_watches(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Takes the server down: open watches end, new connections are refused.
    pub fn stop(&self) {
        *self.down.lock().unwrap() = true;
        self.drop_watches();
    }

    pub fn restart(&self) {
        *self.down.lock().unwrap() = false;
    }

    /// While stalled, requests get no answer.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let mut stalled = self.stalled.subscribe();
        let _ = stalled.wait_for(|s| !*s).await;
        if *self.down.lock().unwrap() {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                status(503, "ServiceUnavailable", "down"),
            );
        }
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query().unwrap_or(""));
        let Some((resource, namespace, name)) = route(&path) else {
            return respond(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", &format!("no route {path}")),
            );
        };
        match *req.method() {
            Method::GET if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(resource, namespace, &query)
            }
            Method::GET => self.list(resource, namespace.as_deref(), &query),
            Method::POST | Method::PATCH | Method::PUT => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if object.is_null() {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        status(400, "BadRequest", "no body"),
                    );
                }
                object["apiVersion"] = json!(resource.api_version());
                object["kind"] = json!(resource.kind());
                if let (Some(ns), true) = (&namespace, object["metadata"]["namespace"].is_null()) {
                    object["metadata"]["namespace"] = json!(ns);
                }
                if let (Some(name), true) = (&name, object["metadata"]["name"].is_null()) {
                    object["metadata"]["name"] = json!(name);
                }
                self.apply(object.clone());
                respond(StatusCode::CREATED, object)
            }
            Method::DELETE => match (namespace, name) {
                (namespace, Some(name)) => {
                    self.delete(resource.kind(), namespace.as_deref().unwrap_or(""), &name);
                    respond(StatusCode::OK, status_ok())
                }
                _ => respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    status(405, "MethodNotAllowed", "collection delete"),
                ),
            },
            _ => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                status(405, "MethodNotAllowed", ""),
            ),
        }
    }

    fn list(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        query: &BTreeMap<String, String>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let state = self.state.lock().unwrap();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((r, ns, _), v)| {
                *r == resource && namespace.is_none_or(|n| n == ns) && selected(v, query)
            })
            .map(|(_, v)| v.clone())
            .collect();
        let list = json!({
            "apiVersion": resource.api_version(),
            "kind": format!("{}List", resource.kind()),
            "metadata": {"resourceVersion": state.rv.to_string()},
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
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let mut live = self.changes.subscribe();
        let (backlog, gone) = {
            let state = self.state.lock().unwrap();
            let gone = from != 0 && from < state.oldest;
            (
                state
                    .history
                    .iter()
                    .filter(|c| c.rv > from)
                    .cloned()
                    .collect::<Vec<_>>(),
                gone,
            )
        };
        let mut drops = self.drops.subscribe();
        drops.borrow_and_update();
        let query = query.clone();
        tokio::spawn(async move {
            let line = |value: Value| Bytes::from(format!("{value}\n"));
            if gone {
                let _ = tx.send(line(json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}))).await;
                return;
            }
            let wanted = |c: &Change| {
                c.resource == resource
                    && namespace
                        .as_deref()
                        .is_none_or(|n| c.object["metadata"]["namespace"] == n)
                    && selected(&c.object, &query)
            };
            for change in backlog.iter().filter(|c| wanted(c)) {
                if tx
                    .send(line(json!({"type": change.kind, "object": change.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Bookmarks carry the last version this stream sent, never one ahead of it.
            let mut sent = backlog.iter().map(|c| c.rv).max().unwrap_or(from);
            let mut ticker = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    change = live.recv() => match change {
                        Ok(change) if wanted(&change) => {
                            sent = sent.max(change.rv);
                            if tx.send(line(json!({"type": change.kind, "object": change.object}))).await.is_err() { return; }
                        }
                        // Not for this stream, but processed in order: safe to bookmark past.
                        Ok(change) => sent = sent.max(change.rv),
                        Err(_) => return,
                    },
                    _ = ticker.tick(), if bookmarks => {
                        let rv = sent;
                        let mark = json!({"type": "BOOKMARK", "object": {"apiVersion": resource.api_version(), "kind": resource.kind(), "metadata": {"resourceVersion": rv.to_string()}}});
                        if tx.send(line(mark)).await.is_err() { return; }
                    }
                    _ = drops.changed() => return,
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

/// Field selectors the server supports: `spec.nodeName=<n>` and `metadata.name=<n>`.
fn selected(object: &Value, query: &BTreeMap<String, String>) -> bool {
    let Some(selector) = query.get("fieldSelector") else {
        return true;
    };
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some(("spec.nodeName", node)) => {
                object["spec"]["nodeName"].as_str().unwrap_or("") == node
            }
            Some(("metadata.name", name)) => {
                object["metadata"]["name"].as_str().unwrap_or("") == name
            }
            _ => true,
        })
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
