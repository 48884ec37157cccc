//! Wire-level helpers of the fake API server: paths, query strings, field selectors, merge
//! patches, continue tokens and Status responses.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::Resource;

pub(super) fn key_of(resource: Resource, object: &Value) -> (Resource, String, String) {
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
pub(super) fn route(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
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

pub(super) fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

pub(super) fn percent_decode(text: &str) -> String {
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
pub(super) fn field_labels(resource: Resource) -> &'static [&'static str] {
    match resource {
        Resource::Pods => &["metadata.name", "metadata.namespace", "spec.nodeName"],
        Resource::Volumes | Resource::Classes | Resource::Nodes => &["metadata.name"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

pub(super) fn selector_terms(query: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
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
pub(super) fn check_selector(
    resource: Resource,
    query: &BTreeMap<String, String>,
) -> Result<(), String> {
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

pub(super) fn selected(object: &Value, query: &BTreeMap<String, String>) -> bool {
    selector_terms(query).into_iter().all(|(field, wanted)| {
        let value = field.split('.').fold(object, |value, part| &value[part]);
        value.as_str().unwrap_or("") == wanted
    })
}

/// JSON merge patch (RFC 7386): objects merge, null deletes, anything else replaces.
pub(super) fn merge_patch(target: &mut Value, patch: Value) {
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
pub(super) fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let mut parts = token.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, (parts.next()?.to_string(), parts.next()?.to_string())))
}

pub(super) fn not_found(resource: Resource, name: &str) -> Response<BoxBody<Bytes, Infallible>> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", resource.plural()),
    )
}

pub(super) fn failure(
    code: StatusCode,
    reason: &str,
    message: &str,
) -> Response<BoxBody<Bytes, Infallible>> {
    respond(code, status(code.as_u16(), reason, message))
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code})
}

pub(super) fn status_ok() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Success"})
}

pub(super) fn respond(code: StatusCode, body: Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}
