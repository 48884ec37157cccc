//! Desired state: what the pods on this host need, published as complete snapshots.

pub mod binder;
pub mod manifest;
pub mod selector;
