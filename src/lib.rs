//! volumed: makes this host's mounts match what the pods on it need.

pub mod actual;
pub mod app;
pub mod cli;
pub mod cli_table;
pub mod config;
pub mod desired;
pub mod executor;
pub mod host;
pub mod model;
pub mod output;
pub mod reconcile;
pub mod shared;
