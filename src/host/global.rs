//! Global (device) mounts under `<root>/plugins/kubernetes.io/<plugin>/mounts/<pv-name>`: where
//! a local PV's block device is mounted once, to be bound into each pod that uses it.

use std::collections::BTreeSet;

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use super::fs::PodFs;
use super::fs_util::{list, rmdir};
use super::{HostError, Source, Target};
use crate::model::{global_mount_path, Plugin};

fn components(plugin: &Plugin) -> [&str; 4] {
    ["plugins", "kubernetes.io", plugin.as_str(), "mounts"]
}

impl PodFs {
    /// Creates (mkdir -p) and opens the global mount point of a PV, refusing links.
    pub fn prepare_global(&self, plugin: &Plugin, pv_name: &str) -> Result<Target, HostError> {
        let path = global_mount_path(self.root(), plugin, pv_name);
        let parent = self
            .walk(&components(plugin), true)?
            .expect("walk with create returns a directory");
        // mkdir -m 0750 <path>
        match rfs::mkdirat(&parent, pv_name, Mode::from_raw_mode(0o750)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(HostError::io("creating", &path)(e)),
        }
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rfs::openat(&parent, pv_name, flags, Mode::empty()).map_err(|e| match e {
            Errno::NOTDIR | Errno::LOOP => HostError::Unsafe {
                path: path.clone(),
                why: "it is a symlink or not a directory; remove it".into(),
            },
            e => HostError::io("opening", &path)(e),
        })?;
        Ok(Target { path, fd, parent })
    }

    /// The global mount, opened through whatever is mounted there, as a bind source.
    pub fn open_global(&self, plugin: &Plugin, pv_name: &str) -> Result<Source, HostError> {
        let path = global_mount_path(self.root(), plugin, pv_name);
        let mut parts = components(plugin).to_vec();
        parts.push(pv_name);
        let fd = self.walk(&parts, false)?.ok_or_else(|| HostError::Unsafe {
            path: path.clone(),
            why: "the global mount point vanished".into(),
        })?;
        Ok(Source {
            path: path.clone(),
            fd,
            is_dir: true,
            is_block: false,
            resolved: path,
        })
    }

    /// rmdir of an unmounted global mount point.
    pub fn remove_global_dir(&self, plugin: &Plugin, pv_name: &str) -> Result<(), HostError> {
        let Some(parent) = self.walk(&components(plugin), false)? else {
            return Ok(());
        };
        rmdir(
            &parent,
            pv_name,
            &global_mount_path(self.root(), plugin, pv_name),
        )
    }

    /// The PV names with a global mount point directory.
    pub fn scan_globals(&self, plugin: &Plugin) -> Result<BTreeSet<String>, HostError> {
        let Some(dir) = self.walk(&components(plugin), false)? else {
            return Ok(BTreeSet::new());
        };
        let path = self
            .root()
            .join("plugins/kubernetes.io")
            .join(plugin.as_str())
            .join("mounts");
        Ok(list(&dir, &path)?.into_iter().collect())
    }
}
