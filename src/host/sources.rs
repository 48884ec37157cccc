//! Bind sources for hostPath volumes and local PVs: the `hostPath.type` checks, creation of
//! the `*OrCreate` types through descriptors, and where each source may resolve to.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::fs::PodFs;
use super::fs_util::kind_name;
use super::{HostError, Source};
use crate::model::PathType;

/// A missing `*OrCreate` path: the deepest existing directory, held, and the names to make.
struct Missing {
    dir: OwnedFd,
    names: Vec<std::ffi::OsString>,
}

/// How far up `refuse_state_alias` walks; deeper host paths are not real.
const MAX_DEPTH: usize = 256;

/// A directory handle that is never reached through a link.
const DIR_HANDLE: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl PodFs {
    /// Opens a host path for binding after the checks its `hostPath.type` asks for, creating
    /// it for the `*OrCreate` types. Links in the host path are followed, as Kubernetes does,
    /// but the resolved path must stay inside the allowed host path roots.
    /// `local_device`: a local PV's path, which may be a device node under /dev outside the
    /// host path roots; anything else must resolve inside them. `read_only`: the bind will
    /// be read-only (which a path containing the root dir needs).
    pub fn open_source(
        &self,
        path: &Path,
        expect: PathType,
        local_device: bool,
        read_only: bool,
    ) -> Result<Source, HostError> {
        // lstat <path>
        if matches!(rfs::lstat(path), Err(Errno::NOENT)) {
            self.create_missing(path, expect)?;
        }
        self.checked_source(path, expect, local_device, read_only)
    }

    /// What `open_source` would find, changing nothing: the source, or `None` when it is a
    /// missing `*OrCreate` path that would be created (where it would land is checked).
    pub fn inspect_source(
        &self,
        path: &Path,
        expect: PathType,
        local_device: bool,
        read_only: bool,
    ) -> Result<Option<Source>, HostError> {
        let or_create = matches!(expect, PathType::DirectoryOrCreate | PathType::FileOrCreate);
        if or_create && matches!(rfs::lstat(path), Err(Errno::NOENT)) {
            self.locate_missing(path, expect)?;
            return Ok(None);
        }
        self.checked_source(path, expect, local_device, read_only)
            .map(Some)
    }

    /// Opens an existing host path and runs the checks on the object opened.
    fn checked_source(
        &self,
        path: &Path,
        expect: PathType,
        local_device: bool,
        read_only: bool,
    ) -> Result<Source, HostError> {
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
        let resolved = fd_path(&fd, path)?;
        // Device nodes live in /dev, outside any host path root; only block devices get in.
        let is_block = kind == FileType::BlockDevice;
        if !(local_device && is_block && resolved.starts_with("/dev/")) {
            self.check_within_roots(path, &resolved, read_only)?;
        }
        if kind == FileType::Directory {
            self.refuse_state_alias(&fd, path)?;
        }
        Ok(Source {
            path: path.to_path_buf(),
            fd,
            is_dir: kind == FileType::Directory,
            is_block,
            resolved,
        })
    }

    /// Creates a missing `*OrCreate` host path. The existing part is walked from `/` (links
    /// followed, as Kubernetes does) to a descriptor of its deepest directory; where the new
    /// part would land is checked against the roots, and it is made through that descriptor
    /// without following any link, so a link swapped in after the check cannot redirect it.
    fn create_missing(&self, path: &Path, expect: PathType) -> Result<(), HostError> {
        let Some(Missing { mut dir, names }) = self.locate_missing(path, expect)? else {
            return Ok(()); // not an *OrCreate type, or it appeared meanwhile
        };
        let (last, _) = names.split_last().expect("something is missing");
        if expect == PathType::FileOrCreate {
            // touch <path>, in the directory held
            let flags =
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC;
            return match rfs::openat(&dir, last, flags, Mode::from_raw_mode(0o644)) {
                Ok(_) | Err(Errno::EXIST) => Ok(()),
                Err(e) => Err(HostError::io("creating", path)(e)),
            };
        }
        for name in &names {
            // mkdir -m 0755 <name>, then step into it without following a link
            match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(HostError::io("creating", path)(e)),
            }
            dir = rfs::openat(&dir, name, DIR_HANDLE, Mode::empty()).map_err(|e| match e {
                Errno::NOTDIR | Errno::LOOP => HostError::Unsafe { path: path.to_path_buf(), why: "a link or file appeared where volumed was creating a directory; it is not followed".into() },
                e => HostError::io("creating", path)(e),
            })?;
        }
        Ok(())
    }

    /// The deepest existing directory of a missing `*OrCreate` path (walked from `/`, links
    /// followed) and the names still to make in it, once where they would land is checked
    /// against the roots; `None` when there is nothing to create.
    fn locate_missing(&self, path: &Path, expect: PathType) -> Result<Option<Missing>, HostError> {
        if !matches!(expect, PathType::DirectoryOrCreate | PathType::FileOrCreate) {
            return Ok(None);
        }
        let mut names: Vec<&OsStr> = Vec::new();
        for component in path.components() {
            match component {
                Component::RootDir => {}
                Component::Normal(name) => names.push(name),
                _ => {
                    return Err(HostError::Unsafe {
                        path: path.to_path_buf(),
                        why: "it is not an absolute path without '.' or '..'".into(),
                    })
                }
            }
        }
        let mut dir = rfs::open("/", DIR_HANDLE, Mode::empty())
            .map_err(HostError::io("opening", Path::new("/")))?;
        let mut existing = 0;
        for name in &names {
            match rfs::openat(
                &dir,
                *name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(next) => dir = next,
                Err(Errno::NOENT | Errno::NOTDIR) => break,
                Err(e) => return Err(HostError::io("resolving", path)(e)),
            }
            existing += 1;
        }
        let missing = &names[existing..];
        if missing.is_empty() {
            return Ok(None); // it appeared meanwhile; the type check that follows decides
        }
        let landing = fd_path(&dir, path)?.join(missing.iter().collect::<PathBuf>());
        self.check_within_roots(path, &landing, false)?;
        if expect == PathType::FileOrCreate && missing.len() > 1 {
            return Err(HostError::PathCheck {
                path: path.to_path_buf(),
                expected:
                    "a regular file (FileOrCreate creates the file, not its parent directory)",
                found: "no parent directory".into(),
            });
        }
        Ok(Some(Missing {
            dir,
            names: missing.iter().map(|n| n.to_os_string()).collect(),
        }))
    }

    /// Refuses a directory that is volumed's state dir, or lies inside it, under another name
    /// (a second mount of its filesystem, a bind elsewhere), which no path check can see: the
    /// walk up from it by `..` compares each directory's inode with the state dir's.
    fn refuse_state_alias(&self, source: &impl AsFd, path: &Path) -> Result<(), HostError> {
        let state_path = self.root().join("state");
        let Ok(state) = rfs::stat(&state_path) else {
            return Ok(()); // no state dir yet: nothing to reach
        };
        let id = |fd: &OwnedFd| rfs::fstat(fd).map(|s| (s.st_dev, s.st_ino));
        let io = HostError::io("walking up from", path);
        let mut dir = rfs::openat(source, ".", DIR_HANDLE, Mode::empty()).map_err(io)?;
        for _ in 0..MAX_DEPTH {
            let here = id(&dir).map_err(HostError::io("inspecting", path))?;
            if here == (state.st_dev, state.st_ino) {
                return Err(HostError::Unsafe {
                    path: path.to_path_buf(),
                    why: format!(
                        "it is volumed's own state ({}) under another name; no pod is given that",
                        state_path.display()
                    ),
                });
            }
            let parent = rfs::openat(&dir, "..", DIR_HANDLE, Mode::empty())
                .map_err(HostError::io("walking up from", path))?;
            if id(&parent).map_err(HostError::io("inspecting", path))? == here {
                return Ok(()); // the top: `..` of / is / itself
            }
            dir = parent;
        }
        Err(HostError::Unsafe {
            path: path.to_path_buf(),
            why: format!(
                "it is nested deeper than {MAX_DEPTH} directories; volumed cannot check it"
            ),
        })
    }

    fn check_within_roots(
        &self,
        path: &Path,
        resolved: &Path,
        read_only: bool,
    ) -> Result<(), HostError> {
        self.host_paths
            .admits(resolved, read_only)
            .map_err(|why| HostError::Unsafe {
                path: path.to_path_buf(),
                why: format!("it resolves to {}: {why}", resolved.display()),
            })
    }
}

/// Where a descriptor's object is now: `readlink /proc/self/fd/<n>` (where the links led).
fn fd_path(fd: &impl AsFd, path: &Path) -> Result<PathBuf, HostError> {
    let resolved = rfs::readlink(
        format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()),
        Vec::new(),
    )
    .map_err(HostError::io("resolving", path))?;
    Ok(PathBuf::from(&*resolved.to_string_lossy()))
}

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
