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

/// Accepts an object name as Kubernetes does: a DNS-1123 subdomain (lowercase letters,
/// digits, `-` and `.`, starting and ending with a letter or digit, at most 253 bytes), or for
/// a namespace a DNS-1123 label (no `.`, at most 63 bytes).
pub fn check_object_name(what: &'static str, name: &str, namespace: bool) -> Result<(), String> {
    let max = if namespace { 63 } else { 253 };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !name.is_empty()
        && name.len() <= max
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || c == '-' || (c == '.' && !namespace));
    if valid {
        return Ok(());
    }
    let allowed = if namespace {
        "lowercase letters, digits and '-'"
    } else {
        "lowercase letters, digits, '-' and '.'"
    };
    Err(format!("{what} {name:?} is not a valid Kubernetes name: at most {max} bytes of {allowed}, starting and ending with a letter or digit"))
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

/// Accepts an NFS server as the mount helper reads it: a host name, an IPv4 address, or an
/// IPv6 address in brackets; nothing that could be read as a flag or a second argument.
pub fn check_nfs_server(server: &str) -> Result<(), NameError> {
    let host_ok = |h: &str| {
        !h.is_empty()
            && !h.starts_with('-')
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    let ipv6_ok = |h: &str| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|a| {
                !a.is_empty()
                    && a.chars()
                        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            })
    };
    if host_ok(server) || ipv6_ok(server) {
        Ok(())
    } else {
        Err(NameError::BadComponent {
            what: "NFS server",
            name: server.to_string(),
            why: "it must be a host name, an IPv4 address or a bracketed IPv6 address",
        })
    }
}

/// Accepts an NFS export path: absolute, without spaces, commas or control characters.
pub fn check_nfs_path(path: &str) -> Result<(), NameError> {
    let ok = path.starts_with('/')
        && path.chars().all(|c| c.is_ascii_graphic() && c != ',')
        && !path.split('/').any(|p| p == "..");
    if ok {
        Ok(())
    } else {
        Err(NameError::BadPath {
            what: "NFS export path",
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
    fn nfs_servers_and_paths_cannot_smuggle_arguments() {
        for good in ["nfs1", "nfs.example.com", "10.0.0.5", "[fd00::5]"] {
            assert_eq!(check_nfs_server(good), Ok(()), "{good}");
        }
        for bad in ["", "-oexec", "a b", "srv:/x", "fd00::5", "[]", "srv,x"] {
            assert!(check_nfs_server(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_nfs_path("/exports/data"), Ok(()));
        for bad in ["exports", "/a b", "/a,b", "/a/../b", ""] {
            assert!(check_nfs_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn object_names_are_checked_as_kubernetes_checks_them() {
        for good in ["web", "web-1", "a.b", "0x"] {
            assert_eq!(check_object_name("name", good, false), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Web",
            "web\n",
            "-web",
            "web.",
            "a/b",
            "a_b",
            &"x".repeat(254),
        ] {
            assert!(check_object_name("name", bad, false).is_err(), "{bad:?}");
        }
        assert!(check_object_name("namespace", "a.b", true).is_err());
        assert!(check_object_name("namespace", &"x".repeat(64), true).is_err());
        assert_eq!(check_object_name("namespace", "kube-system", true), Ok(()));
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
