//! volumed: makes this host's mounts match what the pods on it need.

pub mod model;
pub mod desired;
