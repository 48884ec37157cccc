//! The host seams an op works through, and the limits ops share (format slots, staging locks).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::host::devices::BlockDevices;
use crate::host::format::Formatter;
use crate::host::fs::PodFs;
use crate::host::Mounter;

/// The host seams an op works through.
pub struct OpContext {
    pub mounter: Arc<dyn Mounter>,
    pub fs: PodFs,
    pub formatter: Arc<dyn Formatter>,
    pub devices: Arc<dyn BlockDevices>,
    pub formats: FormatSlots,
    pub staging: StagingLocks,
    /// Deadline of an NFS mount helper.
    pub mount_timeout: Duration,
    /// How long a plain unmount may hang before an NFS unmount is forced.
    pub unmount_timeout: Duration,
    /// Volume paths with an unmount call still hanging on a thread of its own.
    pub lingering: Arc<Mutex<HashSet<PathBuf>>>,
    /// Set when the daemon is stopping: a format not begun yet is not begun (one under way
    /// finishes; the stop waits for it).
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl OpContext {
    pub fn new(
        mounter: Arc<dyn Mounter>,
        fs: PodFs,
        formatter: Arc<dyn Formatter>,
        devices: Arc<dyn BlockDevices>,
        max_formats: usize,
    ) -> OpContext {
        OpContext {
            mounter,
            fs,
            formatter,
            devices,
            formats: FormatSlots::new(max_formats),
            staging: StagingLocks::default(),
            mount_timeout: Duration::from_secs(120),
            unmount_timeout: Duration::from_secs(30),
            lingering: Arc::default(),
            stopping: Arc::default(),
        }
    }
}

/// A cap on formats running at once (mkfs saturates a disk; several at once help nobody).
pub struct FormatSlots {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl FormatSlots {
    pub fn new(max: usize) -> FormatSlots {
        FormatSlots {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    pub(super) fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        let mut used = crate::shared::lock(&self.used);
        while *used >= self.max {
            used = crate::shared::wait(&self.freed, used);
        }
        *used += 1;
        drop(used);
        let result = work();
        *crate::shared::lock(&self.used) -= 1;
        self.freed.notify_one();
        result
    }
}

/// Serializes staging: one per PV (its global mount point) and one per device (two PVs may
/// name the same disk through different links).
#[derive(Default)]
pub struct StagingLocks(Mutex<HashMap<String, Arc<Mutex<()>>>>);

impl StagingLocks {
    pub(super) fn lock_for(&self, key: &str) -> Arc<Mutex<()>> {
        let mut locks = crate::shared::lock(&self.0);
        locks.entry(key.to_string()).or_default().clone()
    }
}
