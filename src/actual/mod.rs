//! Actual state, observed through `host`'s traits (so the fake host feeds it too): the mount
//! table and its change watcher, the block-device inventory, and on-disk metadata signatures.

pub mod device_watch;
pub mod devices;
pub mod signatures;
pub mod watch;
