//! Directory work below `<root>/pods`: creating mount targets, checking bind sources, removing
//! volume and pod directories, and scanning what is on disk. Every walk below the root dir
//! uses `openat(O_NOFOLLOW)`, so a symlink planted in a pod directory is refused, never followed.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::fs_util::{kind_name, list, list_typed, mount_id_of, remove_tree, rmdir};
use super::pod_owner::{claim, read_owner, write_record, OWNER_FILE};
use super::{HostError, MountPoint, Target};
use crate::model::host_paths::HostPathPolicy;
use crate::model::mountinfo::MountEntry;
use crate::model::on_disk::{DirOwner, OnDisk, PodDir};
use crate::model::{Plugin, PodRef, VolumeKey};

/// How every directory below the root dir is opened: a handle only, never through a link.
const DIR_FLAGS: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The two areas of a pod directory that hold volumes.
const AREAS: [&str; 2] = ["volumes", "volumeDevices"];

pub struct PodFs {
    root: PathBuf,
    pub(super) host_paths: HostPathPolicy,
}

impl PodFs {
    /// `root` must be canonical (no symlinks); it is trusted, everything below it is not.
    /// Bind sources must resolve to where `host_path_roots` (and the root dir's rules) allow.
    pub fn new(root: PathBuf, host_path_roots: Vec<PathBuf>) -> PodFs {
        PodFs {
            host_paths: HostPathPolicy::new(host_path_roots, root.clone()),
            root,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `<root>/pods/<uid>/volumes/<plugin>/` and the target in it (a directory, or an
    /// empty file for file binds) and opens the target without following links. The pod
    /// directory must be `owner`'s (or new, then it is recorded as `owner`'s).
    pub fn prepare_target(
        &self,
        key: &VolumeKey,
        owner: &PodRef,
        as_file: bool,
        mode: u32,
    ) -> Result<Target, HostError> {
        debug_assert_eq!(key.pod_uid, owner.uid);
        let path = key.path(&self.root);
        let plugin_dir = key.plugin.dir_name();
        let pod_dir = self.claim_pod_dir(owner)?;
        let pod_path = self.root.join("pods").join(&key.pod_uid);
        let parent = self
            .walk_at(pod_dir, pod_path, &[key.area(), &plugin_dir], true)?
            .expect("walk with create returns a directory");
        let created = create_entry(&parent, &key.name, as_file, mode)
            .map_err(HostError::io("creating", &path))?;
        let fd = rfs::openat(
            &parent,
            &key.name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(HostError::io("opening", &path))?;
        let found = rfs::fstat(&fd).map_err(HostError::io("inspecting", &path))?;
        let kind = FileType::from_raw_mode(found.st_mode);
        let expected = if as_file {
            FileType::RegularFile
        } else {
            FileType::Directory
        };
        if kind != expected {
            return Err(HostError::Unsafe {
                path,
                why: format!("a {} is at the volume path where volumed expects a {}; it is not followed or mounted over, remove it", kind_name(kind), kind_name(expected)),
            });
        }
        if created && !as_file {
            // chmod <mode> <path> (mkdir honours the umask; an emptyDir must be world-writable).
            // Through /proc/self/fd: the checked directory is the one changed.
            rfs::chmod(
                format!("/proc/self/fd/{}", fd.as_raw_fd()),
                Mode::from_raw_mode(mode),
            )
            .map_err(HostError::io("chmod", &path))?;
        }
        Ok(Target { path, fd, parent })
    }

    /// Removes a volume's directory (or file) once nothing is mounted at or below it.
    /// `recursive` (emptyDir only) deletes its contents without crossing into another
    /// filesystem or following links; otherwise only an empty directory is removed.
    pub fn remove_volume_dir(
        &self,
        key: &VolumeKey,
        recursive: bool,
        mounts: &[MountEntry],
    ) -> Result<(), HostError> {
        let path = key.path(&self.root);
        if let Some(mount) = mounts.iter().find(|m| m.mount_point.starts_with(&path)) {
            return Err(HostError::Unsafe {
                path,
                why: format!(
                    "{} is still mounted; unmount it first",
                    mount.mount_point.display()
                ),
            });
        }
        let Some(parent) = self.walk(
            &["pods", &key.pod_uid, key.area(), &key.plugin.dir_name()],
            false,
        )?
        else {
            return Ok(());
        };
        let found = match rfs::statat(&parent, &key.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(found) => found,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(HostError::io("inspecting", &path)(e)),
        };
        if FileType::from_raw_mode(found.st_mode) != FileType::Directory {
            if found.st_size > 0 && !recursive {
                return Err(HostError::NotEmpty {
                    path,
                    entries: vec![format!("{} bytes", found.st_size)],
                });
            }
            // rm <path> (an empty bind-target file, or a link, which is removed, not followed)
            return rfs::unlinkat(&parent, &key.name, AtFlags::empty())
                .map_err(HostError::io("removing", &path));
        }
        // Asked of the kernel, not of a table: is something mounted at the path itself (its
        // mount differs from its parent's)? One below it keeps rmdir from succeeding
        // (ENOTEMPTY), and the recursive delete stops at it.
        let mount_id = mount_id_of(&parent, &path)?;
        let here = rfs::openat(
            &parent,
            &key.name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(HostError::io("opening", &path))?;
        if mount_id_of(&here, &path)? != mount_id {
            return Err(HostError::Unsafe {
                path: path.clone(),
                why: format!("{} is still mounted; unmount it first", path.display()),
            });
        }
        if recursive {
            return remove_tree(&parent, &key.name, &path, mount_id, 0);
        }
        rmdir(&parent, &key.name, &path)
    }

    /// Removes `<root>/pods/<uid>` and its empty `volumes/<plugin>` directories, rmdir-style;
    /// its owner record goes last, once nothing else is in it.
    pub fn remove_pod_dir(&self, pod_uid: &str) -> Result<(), HostError> {
        let Some(pods) = self.walk(&["pods"], false)? else {
            return Ok(());
        };
        let pod_path = self.root.join("pods").join(pod_uid);
        let Some(pod) = self.walk(&["pods", pod_uid], false)? else {
            return Ok(());
        };
        for area in AREAS {
            let area_path = pod_path.join(area);
            if let Some(dir) = self.walk(&["pods", pod_uid, area], false)? {
                for plugin in list(&dir, &area_path)? {
                    rmdir(&dir, &plugin, &area_path.join(&plugin))?;
                }
                rmdir(&pod, area, &area_path)?;
            }
        }
        let others: Vec<String> = list(&pod, &pod_path)?
            .into_iter()
            .filter(|name| name != OWNER_FILE)
            .collect();
        if !others.is_empty() {
            return Err(HostError::NotEmpty {
                path: pod_path,
                entries: others,
            });
        }
        let owner = read_owner(&pod, &pod_path)?;
        // rm <pod dir>/volumed-owner
        match rfs::unlinkat(&pod, OWNER_FILE, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(HostError::io("removing", &pod_path.join(OWNER_FILE))(e)),
        }
        let removed = rmdir(&pods, pod_uid, &pod_path);
        if let (Err(_), DirOwner::Pod(owner)) = (&removed, &owner) {
            // Something came in meanwhile: the directory stays, and so must its owner.
            if let Err(errno) = write_record(&pod, owner) {
                tracing::error!(path = %pod_path.display(), %errno, "cannot restore the owner record of a pod directory that could not be removed; restore it by hand");
            }
        }
        removed
    }

    /// Makes sure `<root>/pods/<uid>` exists and belongs to `pod` (see `pod_owner::claim`).
    /// Returns the pod directory.
    pub fn claim_pod_dir(&self, pod: &PodRef) -> Result<OwnedFd, HostError> {
        let path = self.root.join("pods").join(&pod.uid);
        let dir = self
            .walk(&["pods", &pod.uid], true)?
            .expect("walk with create returns a directory");
        claim(&dir, &path, pod)?;
        Ok(dir)
    }

    /// Every pod directory and its volume directories.
    pub fn scan(&self) -> Result<OnDisk, HostError> {
        let mut on_disk = OnDisk {
            globals: self.scan_globals(&Plugin::LocalVolume)?,
            ..OnDisk::default()
        };
        let Some(pods) = self.walk(&["pods"], false)? else {
            return Ok(on_disk);
        };
        for uid in list(&pods, &self.root.join("pods"))? {
            // One odd entry (say a planted symlink) must not keep the rest from being managed.
            match self.scan_pod(&uid) {
                Ok(Some(dir)) => on_disk.set_pod(&uid, Some(dir)),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(pod_uid = %uid, %err, "skipping a pod directory that cannot be scanned safely")
                }
            }
        }
        Ok(on_disk)
    }

    /// One pod's volume directories and owner; `None` when the pod directory does not exist.
    pub fn scan_pod(&self, pod_uid: &str) -> Result<Option<PodDir>, HostError> {
        let Some(dir) = self.walk(&["pods", pod_uid], false)? else {
            return Ok(None);
        };
        let pod_path = self.root.join("pods").join(pod_uid);
        let owner = read_owner(&dir, &pod_path)?;
        let mut volumes = BTreeSet::new();
        for (area, block) in AREAS.iter().zip([false, true]) {
            self.scan_area(&dir, &pod_path, pod_uid, area, block, &mut volumes)?;
        }
        Ok(Some(PodDir { volumes, owner }))
    }

    /// The volumes of one area (`volumes` or `volumeDevices`) of a pod.
    /// Walks on from the pod directory (`pod`, at `pod_path`) already reached: a walk from
    /// the root for each directory would cost a path resolution apiece.
    fn scan_area(
        &self,
        pod: &OwnedFd,
        pod_path: &Path,
        pod_uid: &str,
        area: &str,
        block: bool,
        keys: &mut BTreeSet<VolumeKey>,
    ) -> Result<(), HostError> {
        let area_path = pod_path.join(area);
        let from_pod = rustix::io::dup(pod).map_err(HostError::io("duplicating", pod_path))?;
        let Some(dir) = self.walk_at(from_pod, pod_path.to_path_buf(), &[area], false)? else {
            return Ok(());
        };
        for plugin_dir in list(&dir, &area_path)? {
            let Some(plugin) = Plugin::from_dir_name(&plugin_dir) else {
                continue;
            };
            // An odd entry (a file or link named like a plugin) is skipped, not fatal: it keeps
            // the pod directory from being removed, and that removal reports it.
            let Ok(from_area) = rustix::io::dup(&dir) else {
                continue;
            };
            let Ok(Some(plugin_fd)) =
                self.walk_at(from_area, area_path.clone(), &[&plugin_dir], false)
            else {
                continue;
            };
            for (name, kind) in list_typed(&plugin_fd, &area_path.join(&plugin_dir))? {
                // volumed never makes links here; a planted one is not taken for a volume (it
                // would look like a set-up emptyDir) and keeps its pod directory, reported.
                if kind != FileType::Symlink {
                    keys.insert(VolumeKey {
                        pod_uid: pod_uid.to_string(),
                        plugin: plugin.clone(),
                        name,
                        block,
                    });
                }
            }
        }
        Ok(())
    }

    /// The mount point at `path` (below the root dir), its parent reached without following a
    /// link; `None` when that parent does not exist (then nothing can be mounted there).
    pub fn mount_point(&self, path: &Path) -> Result<Option<MountPoint>, HostError> {
        let unsafe_path = |why: &str| HostError::Unsafe {
            path: path.to_path_buf(),
            why: why.into(),
        };
        let names = path
            .strip_prefix(&self.root)
            .map_err(|_| {
                unsafe_path("it is not below the root dir; volumed unmounts nothing else")
            })?
            .components()
            .map(|c| match c {
                std::path::Component::Normal(name) => name.to_str(),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()
            .ok_or_else(|| unsafe_path("it is not a plain path below the root dir"))?;
        let Some((name, parents)) = names.split_last() else {
            return Err(unsafe_path("it is the root dir itself"));
        };
        Ok(self.walk(parents, false)?.map(|parent| MountPoint {
            path: path.to_path_buf(),
            parent,
            name: name.into(),
        }))
    }

    /// Opens `<root>/<components...>` as directories, creating them when asked; refuses a
    /// symlink or non-directory anywhere on the way. `None` when one is missing.
    pub(super) fn walk(
        &self,
        components: &[&str],
        create: bool,
    ) -> Result<Option<OwnedFd>, HostError> {
        let root = match rfs::open(&self.root, DIR_FLAGS, Mode::empty()) {
            Ok(root) => root,
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(e) => return Err(HostError::io("opening root dir", &self.root)(e)),
        };
        self.walk_at(root, self.root.clone(), components, create)
    }

    /// `walk`, from a directory already reached (`fd`, at `path`).
    pub(super) fn walk_at(
        &self,
        mut fd: OwnedFd,
        mut path: PathBuf,
        components: &[&str],
        create: bool,
    ) -> Result<Option<OwnedFd>, HostError> {
        let dir_flags = DIR_FLAGS;
        for component in components {
            path.push(component);
            if create {
                // mkdir -m 0750 <path>
                match rfs::mkdirat(&fd, *component, Mode::from_raw_mode(0o750)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(HostError::io("creating", &path)(e)),
                }
            }
            fd = match rfs::openat(&fd, *component, dir_flags, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::NOENT) if !create => return Ok(None),
                Err(Errno::NOTDIR | Errno::LOOP) => {
                    return Err(HostError::Unsafe { path, why: "it is a symlink or not a directory; volumed does not follow links below its root dir, remove it".into() })
                }
                Err(e) => return Err(HostError::io("opening", &path)(e)),
            };
        }
        Ok(Some(fd))
    }
}

#[cfg(test)]
#[path = "fs_tests.rs"]
mod tests;

/// Creates a mount target (an empty file or a directory) in `parent`; false if it existed.
fn create_entry(parent: &OwnedFd, name: &str, as_file: bool, mode: u32) -> Result<bool, Errno> {
    let created = if as_file {
        // touch <path>
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rfs::openat(parent, name, flags, Mode::from_raw_mode(mode)).map(drop)
    } else {
        // mkdir <path>
        rfs::mkdirat(parent, name, Mode::from_raw_mode(mode))
    };
    match created {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(e),
    }
}
