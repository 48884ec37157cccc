//! Reconcile policy, all pure: `plan` (what to do), pod-directory ownership, safe-format
//! decisions, notices and status rows. The sync loop (`sync_loop`) drives it.

pub mod notices;
pub mod plan;
pub mod propagation;
pub mod pod_dirs;
pub mod safe_format;
pub mod status;
