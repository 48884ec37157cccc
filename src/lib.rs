//! volumed: makes this host's mounts match what the pods on it need.
//!
//! ```text
//!  desired  manifest dir | API watch ──► DesiredState ──┐
//!  actual   mount table, block devices ─► MountTable ───┼──► reconcile::plan ──► [Op]
//!  host::fs scan of <root>/pods ────────► OnDisk ───────┘                         │
//!  sync_loop: every change → plan → executor (workers, backoff, deadlines) ──► host
//! ```
//!
//! Modules are listed bottom to top; each imports only those above it in this list
//! (`tests/layering.rs` checks that, and that nothing imports in a cycle).

pub mod shared;
pub mod metrics;
pub mod model;
pub mod host;
pub mod actual;
pub mod localpv;
pub mod desired;
pub mod reconcile;
pub mod executor;
pub mod sync_loop;
pub mod cli;
pub mod config;
pub mod app;
pub mod output;
pub mod commands;
