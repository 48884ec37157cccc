//! API mode's claim → volume resolution (pure), as kubelet's desired-state populator does it:
//! the cluster's controllers bind; volumed only checks that a claim is bound, consistently,
//! and leaves a volume pending with the reason otherwise.

use super::binder::Bindings;
use super::manifest::Manifests;
use super::selector::{node_affinity_matches, Labels};

/// Bindings read from the objects themselves: a claim must exist, not be terminating, be
/// `Bound` to `spec.volumeName`, and that volume's `claimRef` must name this very claim.
pub fn bindings_from_api(objects: &Manifests, node_name: &str, node_labels: &Labels) -> Bindings {
    let mut out = Bindings::default();
    for (key, claim) in &objects.claims {
        match check(objects, key, claim, node_name, node_labels) {
            Ok(pv_name) => {
                out.bound.insert(key.clone(), pv_name);
            }
            Err(why) => {
                out.pending.insert(key.clone(), why);
            }
        }
    }
    out
}

fn check(
    objects: &Manifests,
    key: &str,
    claim: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
    node_name: &str,
    node_labels: &Labels,
) -> Result<String, String> {
    if claim.metadata.deletion_timestamp.is_some() {
        return Err("the claim is being deleted".into());
    }
    let phase = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    let pv_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if phase != "Bound" || pv_name.is_empty() {
        return Err(format!("the claim is {phase}, not bound to a volume yet"));
    }
    let pv = objects.volumes.get(&pv_name).ok_or_else(|| {
        objects
            .unread_note("PersistentVolume", &pv_name)
            .unwrap_or_else(|| {
                format!("the claim is bound to PersistentVolume {pv_name}, which does not exist")
            })
    })?;
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let Some(claim_ref) = claim_ref else {
        return Err(format!(
            "PersistentVolume {pv_name} has no claimRef back to the claim"
        ));
    };
    let ref_key = format!(
        "{}/{}",
        claim_ref.namespace.as_deref().unwrap_or("default"),
        claim_ref.name.as_deref().unwrap_or("")
    );
    if ref_key != key {
        return Err(format!(
            "PersistentVolume {pv_name} is bound to {ref_key}, not to this claim"
        ));
    }
    // As kubelet: the volume must name this very claim, uid included.
    match (claim_ref.uid.as_deref(), claim.metadata.uid.as_deref()) {
        (Some(ref_uid), Some(uid)) if ref_uid == uid => {}
        (ref_uid, uid) => {
            return Err(format!(
                "PersistentVolume {pv_name} is bound to a claim of this name with uid {}, this claim has uid {}",
                ref_uid.unwrap_or("(none)"),
                uid.unwrap_or("(none)")
            ))
        }
    }
    // A pod placed on this node by hand never gets a volume pinned to another node.
    let affinity = pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref());
    if !node_affinity_matches(affinity, node_name, node_labels) {
        return Err(format!(
            "PersistentVolume {pv_name}'s node affinity excludes node {node_name}"
        ));
    }
    Ok(pv_name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const OBJECTS: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: good, uid: c1}
spec: {volumeName: pv-good}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: waiting, uid: c2}
spec: {}
status: {phase: Pending}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: stale, uid: c3-new}
spec: {volumeName: pv-stale}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: dying, uid: c4, deletionTimestamp: "2026-11-22T00:00:00Z"}
spec: {volumeName: pv-good}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: orphan, uid: c5}
spec: {volumeName: pv-missing}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: thief, uid: c6}
spec: {volumeName: pv-good}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-good}
spec: {claimRef: {namespace: default, name: good, uid: c1}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: elsewhere, uid: c7}
spec: {volumeName: pv-remote}
status: {phase: Bound}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-remote}
spec:
  claimRef: {namespace: default, name: elsewhere, uid: c7}
  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-b]}]}]}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-stale}
spec: {claimRef: {namespace: default, name: stale, uid: c3-old}}
"#;

    #[test]
    fn only_consistently_bound_claims_resolve_to_their_volume() {
        let mut objects = Manifests::default();
        objects.add_file(Path::new("api.yaml"), OBJECTS);
        assert!(objects.errors.is_empty(), "{:?}", objects.errors);
        let labels = Labels::from([("kubernetes.io/hostname".to_string(), "node-a".to_string())]);
        let bindings = bindings_from_api(&objects, "node-a", &labels);
        assert_eq!(bindings.bound.len(), 1);
        assert_eq!(bindings.bound["default/good"], "pv-good");
        let reason = |claim: &str| bindings.pending[&format!("default/{claim}")].clone();
        assert!(reason("waiting").contains("Pending"));
        assert!(reason("stale").contains("uid c3-old"));
        assert!(reason("dying").contains("being deleted"));
        assert!(reason("orphan").contains("does not exist"));
        assert!(reason("thief").contains("bound to default/good"));
        assert!(reason("elsewhere").contains("excludes node node-a"));
    }
}
