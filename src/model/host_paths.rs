//! Where a hostPath or local volume may point (rule 5), decided on a path: the resolver asks
//! it of the path an object names, `PodFs` of the path its links resolved to. Pure.

use std::path::{Path, PathBuf};

/// The host path roots (`--host-path-root`) and volumed's own root dir, which is no ordinary
/// host directory: its state dir is never given to a pod, and the rest of it (other pods'
/// volumes) counts as outside the roots unless a root inside it is listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPathPolicy {
    pub roots: Vec<PathBuf>,
    pub root_dir: PathBuf,
}

impl HostPathPolicy {
    pub fn new(roots: Vec<PathBuf>, root_dir: PathBuf) -> HostPathPolicy {
        HostPathPolicy { roots, root_dir }
    }

    /// `Err` says why a pod may not have `path` (bound read-only or not); `path` has no
    /// `.`/`..` (checked before).
    pub fn admits(&self, path: &Path, read_only: bool) -> Result<(), String> {
        let state = self.root_dir.join("state");
        if path.starts_with(&state) {
            return Err(format!("it is volumed's own state ({}); no pod is given that, whatever --host-path-root says", state.display()));
        }
        if path.starts_with(&self.root_dir) {
            // Only an explicitly listed root inside the root dir lets a pod in there.
            if self
                .roots
                .iter()
                .any(|r| r.starts_with(&self.root_dir) && path.starts_with(r))
            {
                return Ok(());
            }
            return Err(format!("it lies inside volumed's root dir {} (other pods' volumes), which counts as outside the host path roots unless a --host-path-root inside it is listed", self.root_dir.display()));
        }
        if !self.roots.iter().any(|r| path.starts_with(r)) {
            return Err(format!(
                "it lies outside the allowed host path roots ({}); see --host-path-root",
                self.describe_roots()
            ));
        }
        // A path above the root dir shows all of it, the state included: only a host that
        // grants `/` (the whole host) grants that, and only to read (as node agents mount `/`).
        if self.root_dir.starts_with(path) {
            if !self.roots.iter().any(|r| r == Path::new("/")) {
                return Err(format!("it contains volumed's root dir {}, which counts as outside the host path roots (--host-path-root) unless the whole host (/) is granted", self.root_dir.display()));
            }
            if !read_only {
                return Err(format!("it contains volumed's root dir {} and its state, which no pod may write: mount it readOnly in every container, or use a path that does not contain the root dir", self.root_dir.display()));
            }
        }
        Ok(())
    }

    pub fn describe_roots(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_is_never_admitted_and_the_root_dir_only_where_listed() {
        let policy = |roots: &[&str]| {
            HostPathPolicy::new(
                roots.iter().map(PathBuf::from).collect(),
                "/var/lib/volumed".into(),
            )
        };
        let pod_volume = "/var/lib/volumed/pods/u/volumes/kubernetes.io~empty-dir/x";
        let cases: &[(&[&str], &str, Option<&str>)] = &[
            (&["/"], "/srv/data", None),
            (&["/"], "/", Some("which no pod may write")),
            (&["/"], "/var/lib", Some("which no pod may write")),
            (&["/"], "/var/lib/volumed/state", Some("own state")),
            (
                &["/"],
                "/var/lib/volumed/state/bindings.json",
                Some("own state"),
            ),
            (
                &["/", "/var/lib/volumed"],
                "/var/lib/volumed/state",
                Some("own state"),
            ),
            (&["/"], pod_volume, Some("inside volumed's root dir")),
            (
                &["/"],
                "/var/lib/volumed",
                Some("inside volumed's root dir"),
            ),
            (&["/", "/var/lib/volumed/pods"], pod_volume, None),
            (&["/var/lib"], "/var/lib/docker", None),
            (
                &["/var/lib"],
                "/var/lib",
                Some("contains volumed's root dir"),
            ),
            (&["/var"], "/var/lib", Some("contains volumed's root dir")),
            (
                &["/srv"],
                "/etc/shadow",
                Some("outside the allowed host path roots"),
            ),
            (&["/srv"], "/var/lib/volumed/state", Some("own state")),
        ];
        for (roots, path, want) in cases {
            let got = policy(roots).admits(Path::new(path), false);
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(fragment), Err(why)) if why.contains(fragment) => {}
                _ => panic!("roots {roots:?}, path {path}: got {got:?}, want {want:?}"),
            }
        }
        // Read-only, the whole host may be shown (node agents mount `/`), never the state
        // dir itself, and never past narrowed roots.
        let read_only = |roots: &[&str], path: &str| policy(roots).admits(Path::new(path), true);
        assert!(read_only(&["/"], "/").is_ok());
        assert!(read_only(&["/"], "/var/lib").is_ok());
        assert!(read_only(&["/"], "/var/lib/volumed/state").is_err());
        assert!(read_only(&["/"], "/var/lib/volumed/pods").is_err());
        assert!(read_only(&["/var"], "/var/lib").is_err());
    }
}
