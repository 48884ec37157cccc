//! A notice for a pod about its volumes, worded as a Kubernetes Event (`FailedMount`, …):
//! `reconcile::notices` decides them, a source that can record Events publishes them.

use super::PodRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub pod: PodRef,
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}
