//! File-mode PVC→PV binding with the Kubernetes rules (pure): recorded bindings stay, pre-bound
//! claims and claimRef'd volumes are honoured, otherwise the fitting volume Kubernetes would
//! pick wins (fewest access modes, then smallest; for WaitForFirstConsumer, the smallest).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use super::binding_store::ReleasedVolume;
use super::selector::{node_affinity_matches, selector_matches, Labels};
use crate::localpv::discover::PROVISIONED_BY;
use crate::model::quantity::parse_bytes;

/// Everything the binder decides from.
pub struct BindInput<'a> {
    /// Claims by `namespace/name`.
    pub claims: &'a BTreeMap<String, Arc<PersistentVolumeClaim>>,
    /// Volumes by name.
    pub volumes: &'a BTreeMap<String, Arc<PersistentVolume>>,
    pub classes: &'a BTreeMap<String, Arc<StorageClass>>,
    /// Bindings recorded by earlier runs: claim key → PV name. These never move.
    pub recorded: &'a BTreeMap<String, String>,
    /// Volumes released from deleted claims: PV name → that claim's key. No claim gets them.
    pub released: &'a BTreeMap<String, ReleasedVolume>,
    /// Claims used by a pod of this node (WaitForFirstConsumer binds only these).
    pub consumed: &'a BTreeSet<String>,
    pub node_name: &'a str,
    pub node_labels: &'a Labels,
}

/// The binder's answer: claim key → PV name, or claim key → why it waits.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    pub bound: BTreeMap<String, String>,
    pub pending: BTreeMap<String, String>,
    /// The claims of `bound` whose volume the binder chose among several that fit; the others
    /// were named by the claim's `volumeName`, a volume's `claimRef` or the record.
    pub chosen: BTreeSet<String>,
}

pub fn bind(input: &BindInput) -> Bindings {
    let mut binder = Binder {
        input,
        out: Bindings::default(),
        taken: BTreeMap::new(),
    };
    binder.keep_recorded();
    binder.honour_volume_names();
    binder.honour_claim_refs();
    binder.bind_smallest_fits();
    binder.out
}

/// The binder's working state, filled in the order Kubernetes gives precedence.
struct Binder<'a> {
    input: &'a BindInput<'a>,
    out: Bindings,
    /// PV name → claim key, for every volume already spoken for.
    taken: BTreeMap<String, String>,
}

impl Binder<'_> {
    fn open(&self, claim_key: &str) -> bool {
        !self.out.bound.contains_key(claim_key) && !self.out.pending.contains_key(claim_key)
    }

    fn settle(&mut self, claim_key: &str, pv_name: &str, verdict: Result<(), String>) {
        match verdict {
            Ok(()) => {
                self.taken
                    .insert(pv_name.to_string(), claim_key.to_string());
                self.out
                    .bound
                    .insert(claim_key.to_string(), pv_name.to_string());
            }
            Err(why) => {
                self.out.pending.insert(claim_key.to_string(), why);
            }
        }
    }

    /// Recorded bindings never move; a volume recorded for a deleted claim stays reserved,
    /// as a Released PV does in Kubernetes, and so does one whose release is recorded.
    fn keep_recorded(&mut self) {
        for (pv_name, released) in self.input.released {
            let discovered = self
                .input
                .volumes
                .get(pv_name)
                .and_then(|pv| pv.metadata.annotations.as_ref())
                .is_some_and(|a| a.contains_key(PROVISIONED_BY));
            let after = if released.deletes() && discovered {
                "it is made available once it is cleaned"
            } else {
                "`volumed release` makes it available"
            };
            let claim = &released.claim;
            let why = format!("{claim}, which was deleted (Released: {after})");
            self.taken.insert(pv_name.clone(), why);
        }
        for (claim_key, pv_name) in self.input.recorded {
            if !self.input.claims.contains_key(claim_key) {
                self.taken.insert(pv_name.clone(), claim_key.clone());
            } else if self.input.volumes.contains_key(pv_name) {
                self.settle(claim_key, pv_name, Ok(()));
            } else {
                let why = format!("claim was bound to PersistentVolume {pv_name}, which is gone; restore its manifest (a claim never moves to another volume)");
                self.out.pending.insert(claim_key.clone(), why);
            }
        }
    }

    /// Claims that name their volume in `spec.volumeName` get exactly that one, or wait.
    fn honour_volume_names(&mut self) {
        for (key, claim) in self.input.claims {
            let Some(pv_name) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
                continue;
            };
            if !self.open(key) {
                continue;
            }
            let verdict = match self.input.volumes.get(&pv_name) {
                None => Err(format!("claim names PersistentVolume {pv_name}, which does not exist")),
                Some(_) if self.taken.contains_key(&pv_name) => Err(format!(
                    "claim names PersistentVolume {pv_name}, which is bound to claim {}",
                    self.taken[&pv_name]
                )),
                Some(pv) => match reserved_for(pv) {
                    Some(owner) if owner != *key => Err(format!(
                        "claim names PersistentVolume {pv_name}, whose claimRef reserves it for {owner}"
                    )),
                    _ => check_fit(self.input, claim, pv).map_err(|why| {
                        format!("claim names PersistentVolume {pv_name}, which does not fit: {why}")
                    }),
                },
            };
            self.settle(key, &pv_name, verdict);
        }
    }

    /// Volumes whose `claimRef` names a claim go to that claim if it fits.
    fn honour_claim_refs(&mut self) {
        for (pv_name, pv) in self.input.volumes {
            let Some(owner) = reserved_for(pv) else {
                continue;
            };
            let Some(claim) = self.input.claims.get(&owner) else {
                continue;
            };
            if self.taken.contains_key(pv_name) || !self.open(&owner) {
                continue;
            }
            let verdict = check_fit(self.input, claim, pv).map_err(|why| {
                format!(
                    "PersistentVolume {pv_name} is reserved for this claim but does not fit: {why}"
                )
            });
            self.settle(&owner, pv_name, verdict);
        }
    }

    /// Every other claim gets the fitting free volume Kubernetes would pick (see
    /// `smallest_fit`), WaitForFirstConsumer claims only once a pod of this node uses them.
    fn bind_smallest_fits(&mut self) {
        for (key, claim) in self.input.claims {
            if !self.open(key) {
                continue;
            }
            if waits_for_consumer(self.input, claim) && !self.input.consumed.contains(key) {
                let why = "waiting for first consumer: no pod on this node uses the claim yet";
                self.out.pending.insert(key.clone(), why.into());
                continue;
            }
            match smallest_fit(self.input, claim, &self.taken) {
                Ok(pv_name) => {
                    self.settle(key, &pv_name, Ok(()));
                    self.out.chosen.insert(key.clone());
                }
                Err(why) => {
                    self.out.pending.insert(key.clone(), why);
                }
            }
        }
    }
}

/// The fitting free volume Kubernetes would choose. For an Immediate claim, the PV
/// controller's: among those with the fewest access modes (it tries access-mode sets smallest
/// first, `allPossibleMatchingAccessModes`), the smallest. For a WaitForFirstConsumer claim,
/// the scheduler's (`FindMatchingVolume` over all volumes): the smallest. Ties go to the first
/// name.
fn smallest_fit(
    input: &BindInput,
    claim: &PersistentVolumeClaim,
    taken: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut rejections = Vec::new();
    let mut best: Option<((usize, u64), &String)> = None;
    for (pv_name, pv) in input.volumes {
        let verdict = if taken.contains_key(pv_name) {
            Err(format!("bound to {}", taken[pv_name]))
        } else if let Some(owner) = reserved_for(pv) {
            Err(format!("reserved for {owner}"))
        } else {
            check_fit(input, claim, pv)
        };
        match verdict {
            Ok(()) => {
                let modes = if waits_for_consumer(input, claim) {
                    0
                } else {
                    access_mode_count(pv)
                };
                let rank = (modes, capacity(pv).unwrap_or(0));
                if best.is_none_or(|(best_rank, _)| rank < best_rank) {
                    best = Some((rank, pv_name));
                }
            }
            Err(why) => rejections.push(format!("{pv_name}: {why}")),
        }
    }
    match best {
        Some((_, name)) => Ok(name.clone()),
        None if rejections.is_empty() => Err("no PersistentVolume is defined".into()),
        None => Err(format!(
            "no PersistentVolume fits ({}); add a matching volume or change the claim",
            rejections.join("; ")
        )),
    }
}

fn access_mode_count(pv: &PersistentVolume) -> usize {
    let modes = pv.spec.as_ref().and_then(|s| s.access_modes.as_ref());
    modes
        .map(|m| m.iter().collect::<BTreeSet<_>>().len())
        .unwrap_or(0)
}

/// Kubernetes' checkVolumeSatisfyClaim plus the node-affinity check of a local binder.
fn check_fit(
    input: &BindInput,
    claim: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), String> {
    let claim_spec = claim.spec.clone().unwrap_or_default();
    let pv_spec = pv.spec.clone().unwrap_or_default();
    if pv.metadata.deletion_timestamp.is_some() {
        return Err("being deleted".into());
    }
    let (want_class, have_class) = (claim_class(claim), pv_class(pv));
    if want_class != have_class {
        return Err(format!(
            "storageClassName {have_class:?} differs from the claim's {want_class:?}"
        ));
    }
    let want_mode = claim_spec.volume_mode.as_deref().unwrap_or("Filesystem");
    let have_mode = pv_spec.volume_mode.as_deref().unwrap_or("Filesystem");
    if want_mode != have_mode {
        return Err(format!(
            "volumeMode {have_mode} differs from the claim's {want_mode}"
        ));
    }
    let have_modes = pv_spec.access_modes.unwrap_or_default();
    if let Some(missing) = claim_spec
        .access_modes
        .iter()
        .flatten()
        .find(|m| !have_modes.contains(m))
    {
        return Err(format!("lacks access mode {missing}"));
    }
    let request = claim_request(claim)?;
    let size = capacity(pv)?;
    if size < request {
        return Err(format!(
            "capacity {size} bytes is below the request of {request}"
        ));
    }
    if let Some(selector) = &claim_spec.selector {
        if !selector_matches(
            selector,
            pv.metadata.labels.as_ref().unwrap_or(&Labels::new()),
        ) {
            return Err("labels do not match the claim's selector".into());
        }
    }
    if !node_affinity_matches(
        pv_spec.node_affinity.as_ref(),
        input.node_name,
        input.node_labels,
    ) {
        return Err(format!("node affinity excludes node {}", input.node_name));
    }
    Ok(())
}

fn capacity(pv: &PersistentVolume) -> Result<u64, String> {
    let quantity = pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .ok_or("has no capacity.storage")?;
    parse_bytes(&quantity.0).map_err(|e| e.to_string())
}

fn claim_request(claim: &PersistentVolumeClaim) -> Result<u64, String> {
    let request = claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    match request {
        None => Ok(0),
        Some(q) => parse_bytes(&q.0).map_err(|e| format!("the claim's request: {e}")),
    }
}

const BETA_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

fn claim_class(claim: &PersistentVolumeClaim) -> String {
    let spec_class = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref());
    storage_class(&claim.metadata, spec_class)
}

fn pv_class(pv: &PersistentVolume) -> String {
    let spec_class = pv
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref());
    storage_class(&pv.metadata, spec_class)
}

/// The beta annotation wins over the spec field, as in Kubernetes; none means "".
fn storage_class(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec_class: Option<&str>,
) -> String {
    let annotation = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(BETA_CLASS_ANNOTATION));
    annotation
        .map(String::as_str)
        .or(spec_class)
        .unwrap_or_default()
        .to_string()
}

fn waits_for_consumer(input: &BindInput, claim: &PersistentVolumeClaim) -> bool {
    input
        .classes
        .get(&claim_class(claim))
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer")
}

/// The claim key a PV's claimRef reserves it for, if any.
fn reserved_for(pv: &PersistentVolume) -> Option<String> {
    let claim_ref = pv.spec.as_ref()?.claim_ref.as_ref()?;
    let name = claim_ref.name.as_deref()?;
    Some(format!(
        "{}/{name}",
        claim_ref.namespace.as_deref().unwrap_or("default")
    ))
}

#[cfg(test)]
#[path = "binder_tests.rs"]
mod tests;
