//! The mount table as volumed sees it: `/proc/self/mountinfo` parsed with the procfs crate's
//! parser from any `BufRead`, plus an index of the mounts below `<root>/pods`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use procfs::FromBufRead;
use serde::Serialize;

use crate::model::{global_mount_path, Plugin, VolumeKey};

#[derive(Debug, thiserror::Error)]
#[error("cannot parse mount table {source_name}: {message}")]
pub struct MountInfoError {
    pub source_name: String,
    pub message: String,
}

/// One line of mountinfo, reduced to what volumed decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MountEntry {
    pub mount_id: i32,
    pub parent_id: i32,
    /// `major:minor` of the filesystem's device.
    pub device: String,
    /// The path inside the filesystem that is mounted (not `/` for bind mounts).
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: Option<String>,
    pub read_only: bool,
    /// Filesystem options, e.g. `size=65536k` for tmpfs.
    pub super_options: BTreeMap<String, Option<String>>,
    /// How mounts below it travel between mount namespaces.
    pub propagation: Propagation,
}

/// A mount's propagation, from mountinfo's optional fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Propagation {
    /// `shared:N`: mounts made below it reach its peers (the host, the container runtime).
    pub shared: bool,
    /// `master:N`: it receives the mounts its master's peers make (a slave).
    pub receives: bool,
}

/// A whole mount table, tagged with the newest refresh request it reflects.
#[derive(Clone, Debug, Default)]
pub struct MountTable {
    /// Shared with the tables before and after it and with their indexes: a new table costs
    /// a pointer per mount, not a copy of each.
    pub entries: Vec<Arc<MountEntry>>,
    /// The refresh sequence number this read started after (see `actual::watch`).
    pub covers: u64,
}

/// Parses mountinfo text; `source_name` is only used in the error.
pub fn parse(reader: impl BufRead, source_name: &str) -> Result<Vec<MountEntry>, MountInfoError> {
    let infos = procfs::process::MountInfos::from_buf_read(reader).map_err(|e| MountInfoError {
        source_name: source_name.to_string(),
        message: e.to_string(),
    })?;
    Ok(infos
        .into_iter()
        .map(|info| MountEntry {
            mount_id: info.mnt_id,
            parent_id: info.pid,
            device: info.majmin,
            root: unescape(&info.root),
            mount_point: PathBuf::from(unescape(&info.mount_point.to_string_lossy())),
            fs_type: info.fs_type,
            source: info.mount_source,
            read_only: info.mount_options.contains_key("ro"),
            super_options: info.super_options.into_iter().collect(),
            propagation: Propagation {
                shared: info
                    .opt_fields
                    .iter()
                    .any(|f| matches!(f, procfs::process::MountOptFields::Shared(_))),
                receives: info
                    .opt_fields
                    .iter()
                    .any(|f| matches!(f, procfs::process::MountOptFields::Master(_))),
            },
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts below `<root>/pods`, sorted by what they are to volumed.
#[derive(Clone, Debug, Default)]
pub struct PodMounts {
    /// Mounts exactly at a pod volume path, innermost (newest) last.
    pub volumes: BTreeMap<VolumeKey, Vec<Arc<MountEntry>>>,
    /// Mounts strictly below a volume path (e.g. propagated from the source of a bind, or
    /// made inside an emptyDir).
    pub nested: BTreeMap<VolumeKey, Vec<Arc<MountEntry>>>,
    /// Any other mount under a pod's directory: it keeps that directory from being removed.
    pub stray: BTreeMap<String, Vec<PathBuf>>,
    /// Local-volume global mounts, by PV name.
    pub globals: BTreeMap<String, Vec<Arc<MountEntry>>>,
}

impl PodMounts {
    /// From a table's shared entries (then the index shares them too) or from plain ones.
    pub fn index<E>(entries: &[E], root: &Path) -> PodMounts
    where
        E: Clone + Into<Arc<MountEntry>> + std::borrow::Borrow<MountEntry>,
    {
        let pods = root.join("pods");
        let mut index = PodMounts::default();
        let globals = global_mount_path(root, &Plugin::LocalVolume, "");
        for shared in entries {
            let entry: &MountEntry = shared.borrow();
            if let Some(pv_name) = entry
                .mount_point
                .strip_prefix(&globals)
                .ok()
                .and_then(single_name)
            {
                index
                    .globals
                    .entry(pv_name)
                    .or_default()
                    .push(shared.clone().into());
                continue;
            }
            let Ok(rel) = entry.mount_point.strip_prefix(&pods) else {
                continue;
            };
            let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
            match parts.as_slice() {
                [uid, area @ ("volumes" | "volumeDevices"), plugin, name, rest @ ..]
                    if Plugin::from_dir_name(plugin).is_some() =>
                {
                    let key = VolumeKey {
                        pod_uid: uid.to_string(),
                        plugin: Plugin::from_dir_name(plugin).expect("checked above"),
                        name: name.to_string(),
                        block: *area == "volumeDevices",
                    };
                    if rest.is_empty() {
                        index
                            .volumes
                            .entry(key)
                            .or_default()
                            .push(shared.clone().into());
                    } else {
                        index
                            .nested
                            .entry(key)
                            .or_default()
                            .push(shared.clone().into());
                    }
                }
                [uid, ..] => index
                    .stray
                    .entry(uid.to_string())
                    .or_default()
                    .push(entry.mount_point.clone()),
                [] => {}
            }
        }
        index
    }

    /// The nested mount to unmount next: a leaf of the mount tree (nothing is mounted on or
    /// under it), the newest such, since an older one may be hidden under a newer mount.
    pub fn next_nested(&self, key: &VolumeKey) -> Option<PathBuf> {
        let nested = self.nested.get(key)?;
        nested
            .iter()
            .filter(|m| !nested.iter().any(|other| other.parent_id == m.mount_id))
            .max_by_key(|m| m.mount_id)
            .map(|m| m.mount_point.clone())
    }

    /// True when a pod mount shows the same filesystem as the PV's global mount (rule 2:
    /// decided from the mount table, not from volumed's records).
    pub fn global_in_use(&self, pv_name: &str) -> bool {
        let Some(global) = self.globals.get(pv_name) else {
            return false;
        };
        self.volumes
            .values()
            .chain(self.nested.values())
            .flatten()
            .any(|m| global.iter().any(|g| g.device == m.device))
    }

    /// The server of the NFS mount on top of a volume path (`server:/path` in mountinfo).
    pub fn nfs_server(&self, key: &VolumeKey) -> Option<String> {
        nfs_server_of(self.volumes.get(key)?.last()?.source.as_deref()?)
    }

    pub fn is_mounted(&self, key: &VolumeKey) -> bool {
        self.volumes.contains_key(key)
    }

    /// True when something is mounted anywhere under the pod's directory.
    pub fn pod_has_mounts(&self, pod_uid: &str) -> bool {
        self.stray.contains_key(pod_uid)
            || self
                .volumes
                .keys()
                .chain(self.nested.keys())
                .any(|k| k.pod_uid == pod_uid)
    }
}

/// The server part of an NFS source, as the per-server cap keys it: up to the first `:/`
/// (after a bracketed IPv6 address), lowercased.
/// A mount other than `mount_point` itself that shows the filesystem mounted there (a pod's
/// bind of a disk, say); `None` also when nothing is mounted there.
pub fn other_mount_of(mount_point: &Path, mounts: &[MountEntry]) -> Option<PathBuf> {
    let own = mounts.iter().rfind(|m| m.mount_point == mount_point)?;
    mounts
        .iter()
        .find(|m| m.device == own.device && m.mount_point != mount_point)
        .map(|m| m.mount_point.clone())
}

pub fn nfs_server_of(source: &str) -> Option<String> {
    let split_from = if source.starts_with('[') {
        source.find(']')?
    } else {
        0
    };
    let at = split_from + source[split_from..].find(":/")?;
    Some(source[..at].to_ascii_lowercase())
}

/// The one path component of `rel`, if it has exactly one.
fn single_name(rel: &Path) -> Option<String> {
    let mut parts = rel.iter();
    let name = parts.next()?.to_str()?.to_string();
    parts.next().is_none().then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:39 / /var/lib/volumed/pods/u1/volumes/kubernetes.io~empty-dir/cache rw,relatime - tmpfs tmpfs rw,size=65536k
41 22 8:1 /srv/data /var/lib/volumed/pods/u1/volumes/kubernetes.io~host-path/my\\040logs ro,relatime shared:1 - ext4 /dev/vda rw
42 22 8:1 /srv/x /var/lib/volumed/pods/u2/volumes/kubernetes.io~empty-dir/scratch/nested rw - ext4 /dev/vda rw
43 22 8:1 /srv/y /var/lib/volumed/pods/u1/volumes/kubernetes.io~empty-dir/cache rw - ext4 /dev/vda rw
";

    #[test]
    fn mountinfo_lines_are_parsed_with_escapes_and_read_only_flag() {
        let entries = parse(SAMPLE.as_bytes(), "sample").unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1].fs_type, "tmpfs");
        assert_eq!(
            entries[1].super_options.get("size"),
            Some(&Some("65536k".to_string()))
        );
        assert!(entries[2].read_only && !entries[1].read_only);
        assert!(entries[2].mount_point.ends_with("my logs"));
        assert_eq!(entries[2].root, "/srv/data");
    }

    #[test]
    fn nfs_servers_are_keyed_case_insensitively_up_to_the_first_colon_slash() {
        assert_eq!(nfs_server_of("NFS1:/exports/a:/b").as_deref(), Some("nfs1"));
        assert_eq!(nfs_server_of("[fd00::5]:/x").as_deref(), Some("[fd00::5]"));
        assert_eq!(nfs_server_of("tmpfs"), None);
    }

    #[test]
    fn a_truncated_line_is_an_error_naming_the_source() {
        let err = parse("22 1 8:1 /\n".as_bytes(), "broken-table").unwrap_err();
        assert!(err.to_string().contains("broken-table"));
    }

    #[test]
    fn mounts_below_pods_are_indexed_by_volume_and_stacks_are_kept() {
        let entries = parse(SAMPLE.as_bytes(), "sample").unwrap();
        let index = PodMounts::index(&entries, Path::new("/var/lib/volumed"));
        assert_eq!(index.volumes.len(), 2);
        let cache = VolumeKey {
            pod_uid: "u1".into(),
            plugin: Plugin::EmptyDir,
            name: "cache".into(),
            block: false,
        };
        assert_eq!(
            index.volumes[&cache].len(),
            2,
            "two stacked mounts at one path"
        );
        let scratch = VolumeKey {
            pod_uid: "u2".into(),
            plugin: Plugin::EmptyDir,
            name: "scratch".into(),
            block: false,
        };
        assert_eq!(
            index.nested[&scratch].len(),
            1,
            "a mount inside a volume is nested"
        );
        assert!(!index.is_mounted(&scratch));
        assert!(index.pod_has_mounts("u2") && index.pod_has_mounts("u1"));
        assert!(!index.pod_has_mounts("u3"));
    }
}
