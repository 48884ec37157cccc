//! The static local-PV discoverer: the disks under each class's `mount_dir` become
//! PersistentVolumes (published to the API, or added to the file mode's PV set).

pub mod cleaner;
pub mod cleanup;
pub mod config;
pub mod discover;
pub mod events;
pub mod publish;
