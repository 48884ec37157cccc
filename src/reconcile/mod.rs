//! Reconciliation: the pure `plan` and the sync loop that feeds it and records results.

pub mod notices;
pub mod plan;
pub mod pod_dirs;
pub mod safe_format;
pub mod status;
pub mod sync;
