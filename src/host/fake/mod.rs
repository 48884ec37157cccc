//! The fake host for tests (compiled for unit tests and, with the `test-util` feature, for the
//! test binaries; never into the release binary): a `Mounter` that keeps its own mount table,
//! so whole reconcile runs can be tested without root (directories are real, in a temp dir;
//! only the mounts are make-believe), fake block devices (`devices`), and a scripted
//! `Formatter`.

mod devices;
mod disk;

pub use self::disk::FakeDisk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::format::Formatter;
use super::{ForceMode, HostError, MountPoint, Mounter, Source, Target};
use crate::model::mountinfo::MountEntry;
use crate::model::probe::{FsckResult, Probe};

#[derive(Default)]
pub struct FakeMounter {
    state: Mutex<FakeState>,
    /// Signalled when a hung call is released.
    released: Condvar,
}

#[derive(Default)]
struct FakeState {
    table: Vec<MountEntry>,
    next_id: i32,
    /// Mount or unmount at these paths fails with the given message.
    failures: BTreeMap<PathBuf, String>,
    /// Mount or unmount at these paths blocks until `release` is called.
    hangs: Vec<PathBuf>,
    /// A forced unmount at a hung path hangs too (the lazy detach never does).
    force_hangs: bool,
    /// Every mount and unmount, in order, as `mount <target>` / `umount <target>`.
    pub calls: Vec<String>,
    /// Fake block devices by the path of the file that stands in for their node.
    disks: BTreeMap<PathBuf, FakeDisk>,
}

impl FakeMounter {
    pub fn new() -> Arc<FakeMounter> {
        Arc::new(FakeMounter::default())
    }

    /// Adds a mount as if it had been there before volumed started (its directory too, as a
    /// real mount point would be).
    pub fn adopt(&self, target: &Path, fs_type: &str) {
        std::fs::create_dir_all(target).expect("create the adopted mount point");
        let mut state = self.lock();
        state.next_id += 1;
        let entry = MountEntry {
            mount_id: 1000 + state.next_id,
            parent_id: 1,
            device: format!("0:{}", 100 + state.next_id),
            root: "/".into(),
            mount_point: target.to_path_buf(),
            fs_type: fs_type.to_string(),
            source: Some(fs_type.to_string()),
            read_only: false,
            super_options: BTreeMap::new(),
            propagation: Default::default(),
        };
        state.table.push(entry);
    }

    pub fn fail_at(&self, target: &Path, message: &str) {
        self.lock()
            .failures
            .insert(target.to_path_buf(), message.to_string());
    }

    pub fn clear_failure(&self, target: &Path) {
        self.lock().failures.remove(target);
    }

    pub fn hang_at(&self, target: &Path) {
        self.lock().hangs.push(target.to_path_buf());
    }

    pub fn hang_forced_unmounts_too(&self) {
        self.lock().force_hangs = true;
    }

    pub fn release(&self, target: &Path) {
        self.lock().hangs.retain(|p| p != target);
        self.released.notify_all();
    }

    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn table(&self) -> Vec<MountEntry> {
        self.lock().table.clone()
    }

    /// The `major:minor` of the fake disk at `path`, as mountinfo names a device.
    fn disk_device(&self, path: &Path) -> Option<String> {
        let state = self.lock();
        let disk = state.disks.get(path)?;
        Some(format!("{}:{}", disk.major, disk.minor))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        crate::shared::lock(&self.state)
    }

    /// Records the call, then waits out a hang and applies an injected failure.
    fn enter(
        &self,
        verb: &str,
        target: &Path,
    ) -> Result<std::sync::MutexGuard<'_, FakeState>, std::io::Error> {
        let mut state = self.lock();
        state.calls.push(format!("{verb} {}", target.display()));
        while state.hangs.iter().any(|p| p == target) {
            state = crate::shared::wait(&self.released, state);
        }
        match state.failures.get(target) {
            Some(message) => Err(std::io::Error::other(message.clone())),
            None => Ok(state),
        }
    }

    fn add(
        &self,
        target: &Target,
        fs_type: &str,
        root: &str,
        options: BTreeMap<String, Option<String>>,
        read_only: bool,
        device: Option<String>,
    ) -> Result<(), std::io::Error> {
        let mut state = self.enter("mount", &target.path)?;
        state.next_id += 1;
        let entry = MountEntry {
            mount_id: 1000 + state.next_id,
            parent_id: 1,
            // A new filesystem gets a device of its own; a bind shares its source's.
            device: device.unwrap_or_else(|| format!("0:{}", 100 + state.next_id)),
            root: root.to_string(),
            mount_point: target.path.clone(),
            fs_type: fs_type.to_string(),
            source: Some(fs_type.to_string()),
            read_only,
            super_options: options,
            propagation: Default::default(),
        };
        state.table.push(entry);
        Ok(())
    }
}

impl Mounter for FakeMounter {
    fn mount_table(&self) -> Result<Vec<MountEntry>, HostError> {
        Ok(self.table())
    }

    fn change_file(&self) -> Option<PathBuf> {
        None
    }

    fn mount_tmpfs(&self, target: &Target, size_bytes: Option<u64>) -> Result<(), HostError> {
        let mut options = BTreeMap::from([("mode".to_string(), Some("777".to_string()))]);
        if let Some(size) = size_bytes {
            options.insert("size".into(), Some(format!("{}k", size.div_ceil(1024))));
        }
        self.add(target, "tmpfs", "/", options, false, None)
            .map_err(|source| HostError::Mount {
                what: "tmpfs".into(),
                target: target.path.clone(),
                source,
            })
    }

    fn bind(&self, source: &Source, target: &Target, read_only: bool) -> Result<(), HostError> {
        let root = source.path.to_string_lossy();
        let device = self
            .lock()
            .table
            .iter()
            .rfind(|m| m.mount_point == source.path)
            .map_or_else(|| "0:99".to_string(), |m| m.device.clone());
        self.add(
            target,
            "bind",
            &root,
            BTreeMap::new(),
            read_only,
            Some(device),
        )
        .map_err(|err| HostError::Mount {
            what: format!("bind of {}", source.path.display()),
            target: target.path.clone(),
            source: err,
        })
    }

    fn mount_device(
        &self,
        device: &Path,
        target: &Target,
        fs_type: &str,
        _options: &[String],
        read_only: bool,
    ) -> Result<(), HostError> {
        let number = self.disk_device(device);
        self.add(target, fs_type, "/", BTreeMap::new(), read_only, number)
            .map_err(|source| HostError::Mount {
                what: format!("{fs_type} on {}", device.display()),
                target: target.path.clone(),
                source,
            })
    }

    fn mount_nfs(
        &self,
        source: &str,
        target: &Target,
        options: &[String],
        read_only: bool,
        _deadline: Duration,
    ) -> Result<(), HostError> {
        let mut options: BTreeMap<String, Option<String>> =
            options.iter().map(|o| (o.clone(), None)).collect();
        options.insert("addr".into(), Some(source.to_string()));
        self.add(target, "nfs", "/", options, read_only, None)
            .map_err(|err| HostError::Mount {
                what: format!("nfs {source}"),
                target: target.path.clone(),
                source: err,
            })?;
        // mountinfo shows an NFS mount's source as server:/path.
        let mut state = self.lock();
        if let Some(entry) = state
            .table
            .iter_mut()
            .rfind(|m| m.mount_point == target.path)
        {
            entry.source = Some(source.to_string());
        }
        Ok(())
    }

    fn force_unmount(&self, target: &MountPoint, mode: ForceMode) -> Result<(), HostError> {
        let target = target.path.as_path();
        // A lazy unmount never waits for the server; a forced one waits only when told to.
        let mut state = self.lock();
        state.calls.push(format!(
            "umount-{} {}",
            format!("{mode:?}").to_lowercase(),
            target.display()
        ));
        while mode == ForceMode::Force
            && state.force_hangs
            && state.hangs.iter().any(|p| p == target)
        {
            state = crate::shared::wait(&self.released, state);
        }
        if let Some(index) = state.table.iter().rposition(|m| m.mount_point == target) {
            state.table.remove(index);
        }
        Ok(())
    }

    fn unmount(&self, target: &MountPoint) -> Result<(), HostError> {
        let target = target.path.as_path();
        let mut state = self
            .enter("umount", target)
            .map_err(|source| HostError::Unmount {
                target: target.to_path_buf(),
                source,
            })?;
        // The newest mount at a path is the one on top.
        if let Some(index) = state.table.iter().rposition(|m| m.mount_point == target) {
            state.table.remove(index);
        }
        Ok(())
    }

    fn is_mount_point(&self, target: &Target) -> Result<bool, HostError> {
        Ok(self
            .lock()
            .table
            .iter()
            .any(|m| m.mount_point == target.path))
    }
}

/// A scripted `Formatter` for tests: probes answer from a map, calls are recorded.
#[derive(Default)]
pub struct FakeFormatter {
    pub probes: Mutex<BTreeMap<std::path::PathBuf, Probe>>,
    /// What `fsck` says of a device; clean when not set.
    pub checks: Mutex<BTreeMap<std::path::PathBuf, FsckResult>>,
    pub calls: Mutex<Vec<String>>,
}

impl Formatter for FakeFormatter {
    fn probe(&self, device: &Path) -> Result<Probe, HostError> {
        self.calls
            .lock()
            .expect("fake lock")
            .push(format!("probe {}", device.display()));
        Ok(self
            .probes
            .lock()
            .expect("fake lock")
            .get(device)
            .cloned()
            .unwrap_or(Probe::Blank))
    }

    fn make_filesystem(&self, device: &Path, fs_type: &str) -> Result<(), HostError> {
        self.calls
            .lock()
            .expect("fake lock")
            .push(format!("mkfs.{fs_type} {}", device.display()));
        let made = Probe::Filesystem {
            fs_type: fs_type.into(),
            uuid: None,
        };
        self.probes
            .lock()
            .expect("fake lock")
            .insert(device.to_path_buf(), made);
        Ok(())
    }

    fn check(&self, device: &Path, fs_type: &str) -> Result<FsckResult, HostError> {
        self.calls
            .lock()
            .expect("fake lock")
            .push(format!("fsck.{fs_type} {}", device.display()));
        Ok(self
            .checks
            .lock()
            .expect("fake lock")
            .get(device)
            .cloned()
            .unwrap_or(FsckResult::Clean { exit_code: 0 }))
    }
}
