//! Validation of names taken from objects before they become path components (rule 5:
//! every path from an object is untrusted).

use std::path::{Component, Path};

/// Why a name or path from an object was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{what} {name:?} cannot be used as a directory name: {why}")]
    BadComponent {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("{what} {path:?} must be an absolute path without '.' or '..' components")]
    BadPath { what: &'static str, path: String },
}

/// Accepts a name that is safe as exactly one path component below the root dir.
pub fn check_component(what: &'static str, name: &str) -> Result<(), NameError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it names a directory above or at its parent"
    } else if name.contains('/') {
        "it contains '/'"
    } else if name.contains('\0') {
        "it contains a NUL byte"
    } else if name.len() > 253 {
        "it is longer than 253 bytes"
    } else {
        return Ok(());
    };
    Err(NameError::BadComponent {
        what,
        name: name.to_string(),
        why,
    })
}

/// Accepts an absolute, already-normal host path (no `.`/`..`, no empty components).
pub fn check_host_path(what: &'static str, path: &str) -> Result<(), NameError> {
    let parsed = Path::new(path);
    let normal = parsed.is_absolute()
        && !path.contains('\0')
        && parsed
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.contains("/./")
        && !path.ends_with("/.");
    if normal {
        Ok(())
    } else {
        Err(NameError::BadPath {
            what,
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_that_could_escape_their_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "x\0y"] {
            assert!(check_component("volume", bad).is_err(), "{bad:?}");
        }
        assert!(check_component("volume", &"a".repeat(254)).is_err());
        for good in ["data", "cache-1", "my.vol", "..hidden"] {
            assert_eq!(check_component("volume", good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn host_paths_must_be_absolute_and_normal() {
        for bad in ["relative/x", "/a/../b", "/a/./b", "/a/.", "/..", ""] {
            assert!(check_host_path("hostPath", bad).is_err(), "{bad:?}");
        }
        for good in ["/", "/srv/data", "/mnt/disks/vol1", "/a//b"] {
            assert_eq!(check_host_path("hostPath", good), Ok(()), "{good:?}");
        }
    }
}
