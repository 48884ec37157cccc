//! The fake API server's request handling: routing, lists in pages, writes, watch streams.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::wire::*;
use super::{Change, FakeApiServer, Resource};

impl FakeApiServer {
    pub(super) async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let response = self.respond(req).await;
        // After the answer is made, so that what it changed (list counts) is visible.
        self.served.send_modify(|n| *n += 1);
        response
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query().unwrap_or(""));
        let next_page = query.get("continue").is_some_and(|c| !c.is_empty());
        let (mut stalled, mut continues) =
            (self.stalled.subscribe(), self.continues_stalled.subscribe());
        if *stalled.borrow() || (next_page && *continues.borrow()) {
            // Counted while it hangs, so a test can wait until the client is stuck here.
            self.hanging.send_modify(|n| *n += 1);
            let _ = stalled.wait_for(|s| !*s).await;
            if next_page {
                let _ = continues.wait_for(|s| !*s).await;
            }
            self.hanging.send_modify(|n| *n -= 1);
        }
        let Some((resource, namespace, name)) = route(&path) else {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {path}"),
            );
        };
        let refused = {
            let mut state = self.state.lock().unwrap();
            let refused = state.forbidden.contains(&resource);
            if refused {
                *state.refusals.entry(resource).or_default() += 1;
            }
            refused
        };
        if refused {
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
                let mut state = self.state.lock().unwrap();
                *state.gets.entry(resource).or_default() += 1;
                if state.gets_forbidden.contains(&resource) {
                    return failure(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        &format!(
                            "{} \"{name}\" is forbidden: User \"system:anonymous\" cannot get resource \"{}\"",
                            resource.plural(),
                            resource.plural()
                        ),
                    );
                }
                match state.objects.get(&key) {
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
        // Before anything else: a drop or expiry from here on reaches this stream.
        let mut drops = self.drops.subscribe();
        // Subscribed under the lock that changes are made and sent under: nothing is missed
        // between the backlog and the live feed, and nothing is in both.
        let (mut live, backlog, sent, gone, bookmark_every) = {
            let state = self.state.lock().unwrap();
            let bookmark_every = state.bookmark_every.unwrap_or(Duration::from_millis(500));
            let live = self.changes.subscribe();
            match from {
                Some(from) if from < state.oldest => (live, Vec::new(), from, true, bookmark_every),
                Some(from) => {
                    let backlog: Vec<Value> = state
                        .history
                        .iter()
                        .filter(|c| c.rv > from)
                        .filter_map(|c| scope.event(c))
                        .collect();
                    (live, backlog, state.rv, false, bookmark_every)
                }
                // From "now": the current objects as ADDED, then what follows.
                None => {
                    let backlog = state
                        .objects
                        .iter()
                        .filter(|((r, ..), v)| *r == resource && scope.matches(v))
                        .map(|(_, v)| json!({"type": "ADDED", "object": v}))
                        .collect();
                    (live, backlog, state.rv, false, bookmark_every)
                }
            }
        };
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
            let mut ticker = tokio::time::interval(bookmark_every);
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
            ("MODIFIED", true, false) => {
                // The object as this stream last saw it, at the new version.
                let mut gone = change.previous.clone().expect("matched before");
                gone["metadata"]["resourceVersion"] =
                    change.object["metadata"]["resourceVersion"].clone();
                return Some(json!({"type": "DELETED", "object": gone}));
            }
            _ => return None,
        };
        Some(json!({"type": kind, "object": change.object}))
    }
}
