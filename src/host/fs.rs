//! Directory work below `<root>/pods`: creating mount targets, checking bind sources, removing
//! volume and pod directories, and scanning what is on disk. Every walk below the root dir
//! uses `openat(O_NOFOLLOW)`, so a symlink planted in a pod directory is refused, never followed.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::fs_util::{kind_name, list, list_typed, mount_id_of, remove_tree, rmdir};
use super::{HostError, Source, Target};
use crate::actual::mountinfo::MountEntry;
use crate::actual::OnDisk;
use crate::model::host_paths::HostPathPolicy;
use crate::model::{PathType, Plugin, VolumeKey};

/// The two areas of a pod directory that hold volumes.
const AREAS: [&str; 2] = ["volumes", "volumeDevices"];

pub struct PodFs {
    root: PathBuf,
    host_paths: HostPathPolicy,
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
    /// empty file for file binds) and opens the target without following links.
    pub fn prepare_target(
        &self,
        key: &VolumeKey,
        as_file: bool,
        mode: u32,
    ) -> Result<Target, HostError> {
        let path = key.path(&self.root);
        let plugin_dir = key.plugin.dir_name();
        let parent = self
            .walk(&["pods", &key.pod_uid, key.area(), &plugin_dir], true)?
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

    /// Opens a host path for binding after the checks its `hostPath.type` asks for, creating
    /// it for the `*OrCreate` types. Links in the host path are followed, as Kubernetes does,
    /// but the resolved path must stay inside the allowed host path roots.
    /// `local_device`: a local PV's path, which may be a device node under /dev outside the
    /// host path roots; anything else must resolve inside them.
    pub fn open_source(
        &self,
        path: &Path,
        expect: PathType,
        local_device: bool,
    ) -> Result<Source, HostError> {
        // lstat <path>
        if matches!(rfs::lstat(path), Err(Errno::NOENT)) {
            self.create_missing(path, expect)?;
        }
        // O_PATH open: the object checked below is the object later bound.
        let fd = rfs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(
            |e| match e {
                Errno::NOENT => HostError::PathCheck {
                    path: path.to_path_buf(),
                    expected: super::describe_path_type(expect),
                    found: "nothing".into(),
                },
                e => HostError::io("opening", path)(e),
            },
        )?;
        let kind = FileType::from_raw_mode(
            rfs::fstat(&fd)
                .map_err(HostError::io("inspecting", path))?
                .st_mode,
        );
        if !fits(kind, expect) {
            return Err(HostError::PathCheck {
                path: path.to_path_buf(),
                expected: super::describe_path_type(expect),
                found: format!("a {}", kind_name(kind)),
            });
        }
        // readlink /proc/self/fd/<n>: where the links led.
        let resolved = rfs::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()), Vec::new())
            .map_err(HostError::io("resolving", path))?;
        let resolved = PathBuf::from(&*resolved.to_string_lossy());
        // Device nodes live in /dev, outside any host path root; only block devices get in.
        let is_block = kind == FileType::BlockDevice;
        if !(local_device && is_block && resolved.starts_with("/dev/")) {
            self.check_within_roots(path, &resolved)?;
        }
        Ok(Source {
            path: path.to_path_buf(),
            fd,
            is_dir: kind == FileType::Directory,
            is_block,
            resolved,
        })
    }

    /// Creates a missing `*OrCreate` host path, after checking that where it would land (its
    /// deepest existing ancestor, links resolved) lies inside the allowed roots.
    fn create_missing(&self, path: &Path, expect: PathType) -> Result<(), HostError> {
        if !matches!(expect, PathType::DirectoryOrCreate | PathType::FileOrCreate) {
            return Ok(());
        }
        let existing = path
            .ancestors()
            .find(|a| a.symlink_metadata().is_ok())
            .unwrap_or(Path::new("/"));
        let resolved = existing.canonicalize().map_err(|source| HostError::Io {
            op: "resolving",
            path: existing.to_path_buf(),
            source,
        })?;
        let landing = resolved.join(path.strip_prefix(existing).unwrap_or(path));
        self.check_within_roots(path, &landing)?;
        if expect == PathType::DirectoryOrCreate {
            // mkdir -p -m 0755 <path>
            return std::fs::create_dir_all(path).map_err(|source| HostError::Io {
                op: "creating",
                path: path.to_path_buf(),
                source,
            });
        }
        // touch <path> (its parent must exist, as in Kubernetes)
        rfs::open(
            path,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
        .map_err(HostError::io("creating", path))
    }

    fn check_within_roots(&self, path: &Path, resolved: &Path) -> Result<(), HostError> {
        self.host_paths
            .admits(resolved)
            .map_err(|why| HostError::Unsafe {
                path: path.to_path_buf(),
                why: format!("it resolves to {}: {why}", resolved.display()),
            })
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
        if recursive {
            let mount_id = mount_id_of(&parent, &path)?;
            return remove_tree(&parent, &key.name, &path, mount_id, 0);
        }
        rmdir(&parent, &key.name, &path)
    }

    /// Removes `<root>/pods/<uid>` and its empty `volumes/<plugin>` directories, rmdir-style.
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
        rmdir(&pods, pod_uid, &pod_path)
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
                Ok(Some(volumes)) => {
                    on_disk.pods.insert(uid, volumes);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(pod_uid = %uid, %err, "skipping a pod directory that cannot be scanned safely")
                }
            }
        }
        Ok(on_disk)
    }

    /// One pod's volume directories; `None` when the pod directory does not exist.
    pub fn scan_pod(&self, pod_uid: &str) -> Result<Option<BTreeSet<VolumeKey>>, HostError> {
        if self.walk(&["pods", pod_uid], false)?.is_none() {
            return Ok(None);
        }
        let mut keys = BTreeSet::new();
        for (area, block) in AREAS.iter().zip([false, true]) {
            self.scan_area(pod_uid, area, block, &mut keys)?;
        }
        Ok(Some(keys))
    }

    /// The volumes of one area (`volumes` or `volumeDevices`) of a pod.
    fn scan_area(
        &self,
        pod_uid: &str,
        area: &str,
        block: bool,
        keys: &mut BTreeSet<VolumeKey>,
    ) -> Result<(), HostError> {
        let area_path = self.root.join("pods").join(pod_uid).join(area);
        let Some(dir) = self.walk(&["pods", pod_uid, area], false)? else {
            return Ok(());
        };
        for plugin_dir in list(&dir, &area_path)? {
            let Some(plugin) = Plugin::from_dir_name(&plugin_dir) else {
                continue;
            };
            // An odd entry (a file or link named like a plugin) is skipped, not fatal: it keeps
            // the pod directory from being removed, and that removal reports it.
            let Ok(Some(plugin_fd)) = self.walk(&["pods", pod_uid, area, &plugin_dir], false)
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

    /// Opens `<root>/<components...>` as directories, creating them when asked; refuses a
    /// symlink or non-directory anywhere on the way. `None` when one is missing.
    pub(super) fn walk(
        &self,
        components: &[&str],
        create: bool,
    ) -> Result<Option<OwnedFd>, HostError> {
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rfs::open(&self.root, dir_flags, Mode::empty())
            .map_err(HostError::io("opening root dir", &self.root))?;
        let mut path = self.root.clone();
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

/// Kubernetes' hostPath type check.
fn fits(kind: FileType, expect: PathType) -> bool {
    match expect {
        PathType::Unchecked => true,
        PathType::Directory | PathType::DirectoryOrCreate => kind == FileType::Directory,
        PathType::File | PathType::FileOrCreate => kind == FileType::RegularFile,
        PathType::Socket => kind == FileType::Socket,
        PathType::CharDevice => kind == FileType::CharacterDevice,
        PathType::BlockDevice => kind == FileType::BlockDevice,
    }
}

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
