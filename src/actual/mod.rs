//! Actual state: the mount table's watcher (reading through `host::Mounter`, so the fake host
//! feeds it), the block-device inventory (blkid through `host::Formatter`; sysfs, `/dev`
//! links and udev read directly: observation only, not on the fake host), and on-disk
//! metadata signatures.

pub mod device_watch;
pub mod devices;
pub mod signatures;
pub mod watch;
