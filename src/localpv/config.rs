//! The local-PV part of the config file (`[local_pv]`, one `[[local_pv.classes]]` per local
//! storage class), parsed and checked at start: an unknown key or a bad value is an error that
//! names the key, never a default taken silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::names::check_object_name;

/// The access modes a PV may have.
const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The config file as a whole; sections other issues add sit beside `local_pv`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub local_pv: Option<LocalPvConfig>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalPvConfig {
    #[serde(default)]
    pub classes: Vec<ClassConfig>,
    /// Labels put on every PV volumed publishes.
    #[serde(default)]
    pub pv_labels: BTreeMap<String, String>,
    /// Node label keys whose values are copied onto each PV (and into its node affinity).
    #[serde(default)]
    pub node_labels_for_pv: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum VolumeMode {
    #[default]
    Filesystem,
    Block,
}

/// One local storage class: which directory holds its disks and how they become PVs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub storage_class: String,
    /// Where the disks are on the host (what `spec.local.path` names).
    pub host_dir: PathBuf,
    /// Where volumed sees `host_dir` (differs in a container); default `host_dir`.
    pub mount_dir: Option<PathBuf>,
    #[serde(default)]
    pub volume_mode: VolumeMode,
    /// For a block device published as a Filesystem PV: the filesystem safe-format makes.
    pub fs_type: Option<String>,
    /// Comma-separated globs an entry's name must match; default `*`.
    #[serde(default = "any_name")]
    pub name_pattern: String,
    #[serde(default = "read_write_once")]
    pub access_modes: Vec<String>,
    /// The command that wipes a released Block PV's device (`LOCAL_PV_BLKDEVICE` names it).
    pub block_cleaner: Option<Vec<String>>,
}

fn any_name() -> String {
    "*".into()
}

fn read_write_once() -> Vec<String> {
    vec!["ReadWriteOnce".into()]
}

impl ClassConfig {
    pub fn mount_dir(&self) -> &Path {
        self.mount_dir.as_deref().unwrap_or(&self.host_dir)
    }

    /// Whether an entry of `mount_dir` named `name` belongs to this class.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns().iter().any(|p| p.matches(name))
    }

    fn patterns(&self) -> Vec<glob::Pattern> {
        self.name_pattern
            .split(',')
            .filter_map(|p| glob::Pattern::new(p.trim()).ok())
            .collect()
    }
}

impl ConfigFile {
    /// Reads and checks `path`; the top-level keys `beside` accepts belong to others (the
    /// command line's settings) and are left to them.
    pub fn load(path: &Path, beside: &dyn Fn(&str) -> bool) -> Result<ConfigFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ConfigFile::parse_beside(&text, beside).map_err(|(key, message)| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        })
    }

    /// As `parse`, with the top-level keys `beside` accepts taken out first.
    pub fn parse_beside(
        text: &str,
        beside: &dyn Fn(&str) -> bool,
    ) -> Result<ConfigFile, (String, String)> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ("(syntax)".to_string(), e.message().to_string()))?;
        table.retain(|key, _| !beside(key));
        let rest = toml::to_string(&table).map_err(|e| ("(syntax)".to_string(), e.to_string()))?;
        ConfigFile::parse(&rest)
    }

    /// Parses and checks a config text; an error is the key it is about and what is wrong.
    pub fn parse(text: &str) -> Result<ConfigFile, (String, String)> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ("(syntax)".to_string(), e.message().to_string()))?;
        let config: ConfigFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            (key, e.inner().message().to_string())
        })?;
        if let Some(local_pv) = &config.local_pv {
            local_pv.check()?;
        }
        Ok(config)
    }
}

impl LocalPvConfig {
    fn check(&self) -> Result<(), (String, String)> {
        for (index, class) in self.classes.iter().enumerate() {
            let key = |field: &str| format!("local_pv.classes[{index}].{field}");
            check_object_name("storage_class", &class.storage_class, false)
                .map_err(|e| (key("storage_class"), e))?;
            for (field, dir) in [
                ("host_dir", Some(&class.host_dir)),
                ("mount_dir", class.mount_dir.as_ref()),
            ] {
                if let Some(dir) = dir {
                    if !dir.is_absolute()
                        || dir.components().any(|c| {
                            matches!(
                                c,
                                std::path::Component::ParentDir | std::path::Component::CurDir
                            )
                        })
                    {
                        return Err((
                            key(field),
                            format!("{} is not an absolute, normal path", dir.display()),
                        ));
                    }
                }
            }
            let patterns: Vec<&str> = class.name_pattern.split(',').map(str::trim).collect();
            for pattern in &patterns {
                if pattern.is_empty() {
                    return Err((
                        key("name_pattern"),
                        format!("{:?} has an empty pattern", class.name_pattern),
                    ));
                }
                glob::Pattern::new(pattern).map_err(|e| {
                    (
                        key("name_pattern"),
                        format!("{pattern:?} is not a glob: {e}"),
                    )
                })?;
            }
            if class.access_modes.is_empty() {
                return Err((key("access_modes"), "needs at least one access mode".into()));
            }
            if let Some(bad) = class
                .access_modes
                .iter()
                .find(|m| !ACCESS_MODES.contains(&m.as_str()))
            {
                return Err((
                    key("access_modes"),
                    format!(
                        "{bad:?} is not an access mode ({})",
                        ACCESS_MODES.join(", ")
                    ),
                ));
            }
            if let Some(fs_type) = &class.fs_type {
                if class.volume_mode == VolumeMode::Block {
                    return Err((key("fs_type"), "a Block class has no filesystem; drop fs_type or use volume_mode = \"Filesystem\"".into()));
                }
                if fs_type.is_empty() || !fs_type.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err((
                        key("fs_type"),
                        format!("{fs_type:?} is not a filesystem type (e.g. ext4, xfs)"),
                    ));
                }
            }
            if let Some(argv) = &class.block_cleaner {
                if argv.first().is_none_or(|program| program.is_empty()) {
                    return Err((
                        key("block_cleaner"),
                        "needs a program to run, as [\"program\", \"arg\", ...]".into(),
                    ));
                }
            }
            let taken = self.classes[..index]
                .iter()
                .position(|other| other.mount_dir() == class.mount_dir());
            if let Some(other) = taken {
                return Err((key("mount_dir"), format!("{} is already local_pv.classes[{other}]'s; a directory holds the disks of one class", class.mount_dir().display())));
            }
        }
        for label in self.pv_labels.keys() {
            check_label_key(label).map_err(|e| (format!("local_pv.pv_labels.{label}"), e))?;
        }
        for (index, label) in self.node_labels_for_pv.iter().enumerate() {
            check_label_key(label)
                .map_err(|e| (format!("local_pv.node_labels_for_pv[{index}]"), e))?;
        }
        Ok(())
    }
}

/// A label key as Kubernetes accepts it: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_object_name("label prefix", prefix, false)?;
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || "-_.".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!("{key:?} is not a label key: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional prefix/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[local_pv]
pv_labels = { team = "storage" }
node_labels_for_pv = ["topology.kubernetes.io/zone"]

[[local_pv.classes]]
storage_class = "fast-disks"
host_dir = "/mnt/disks"

[[local_pv.classes]]
storage_class = "raw"
host_dir = "/mnt/raw"
mount_dir = "/host/mnt/raw"
volume_mode = "Block"
name_pattern = "nvme*, sd?"
access_modes = ["ReadWriteOnce", "ReadWriteOncePod"]
block_cleaner = ["/usr/sbin/blkdiscard", "-f"]
"#;

    #[test]
    fn a_good_config_gets_its_defaults() {
        let config = ConfigFile::parse(GOOD).unwrap().local_pv.unwrap();
        let (fast, raw) = (&config.classes[0], &config.classes[1]);
        assert_eq!(fast.mount_dir(), Path::new("/mnt/disks"));
        assert_eq!(fast.volume_mode, VolumeMode::Filesystem);
        assert_eq!(fast.access_modes, ["ReadWriteOnce"]);
        assert!(fast.matches("anything"));
        assert_eq!(raw.mount_dir(), Path::new("/host/mnt/raw"));
        assert_eq!(raw.volume_mode, VolumeMode::Block);
        assert!(raw.matches("nvme0n1") && raw.matches("sdb") && !raw.matches("sdb1"));
        assert_eq!(config.pv_labels["team"], "storage");
    }

    #[test]
    fn the_example_in_deploy_is_valid() {
        let text = include_str!("../../deploy/config.toml");
        let config = ConfigFile::parse(text).unwrap().local_pv.unwrap();
        assert_eq!(config.classes.len(), 2);
    }

    #[test]
    fn every_bad_value_is_an_error_that_names_its_key() {
        let class = |extra: &str| {
            format!("[[local_pv.classes]]\nstorage_class = \"fast\"\nhost_dir = \"/mnt/disks\"\n{extra}\n")
        };
        let cases = [
            (
                class("colour = \"red\""),
                "local_pv.classes[0].colour",
                "unknown field `colour`",
            ),
            (
                "[local_pv]\nclasess = []\n".to_string(),
                "local_pv.clasess",
                "unknown field `clasess`",
            ),
            (
                class("volume_mode = \"Raw\""),
                "local_pv.classes[0].volume_mode",
                "unknown variant `Raw`",
            ),
            (
                class("access_modes = [\"ReadWriteSometimes\"]"),
                "local_pv.classes[0].access_modes",
                "is not an access mode",
            ),
            (
                class("access_modes = []"),
                "local_pv.classes[0].access_modes",
                "at least one",
            ),
            (
                class("name_pattern = \"a,,b\""),
                "local_pv.classes[0].name_pattern",
                "empty pattern",
            ),
            (
                class("name_pattern = \"[\""),
                "local_pv.classes[0].name_pattern",
                "is not a glob",
            ),
            (
                class("mount_dir = \"disks\""),
                "local_pv.classes[0].mount_dir",
                "not an absolute",
            ),
            (
                class("volume_mode = \"Block\"\nfs_type = \"ext4\""),
                "local_pv.classes[0].fs_type",
                "Block class has no filesystem",
            ),
            (
                class("fs_type = \"ext4;rm\""),
                "local_pv.classes[0].fs_type",
                "not a filesystem type",
            ),
            (
                class("block_cleaner = []"),
                "local_pv.classes[0].block_cleaner",
                "needs a program",
            ),
            (
                "[[local_pv.classes]]\nstorage_class = \"Fast_Disks\"\nhost_dir = \"/mnt/disks\"\n"
                    .to_string(),
                "local_pv.classes[0].storage_class",
                "not a valid Kubernetes name",
            ),
            (
                "[[local_pv.classes]]\nhost_dir = \"/mnt/disks\"\n".to_string(),
                "local_pv.classes[0]",
                "missing field `storage_class`",
            ),
            (
                class("") + &class("").replace("fast", "other"),
                "local_pv.classes[1].mount_dir",
                "already local_pv.classes[0]'s",
            ),
            (
                "[local_pv]\npv_labels = { \"-bad\" = \"x\" }\n".to_string(),
                "local_pv.pv_labels.-bad",
                "not a label key",
            ),
            (
                "[local_pv]\nnode_labels_for_pv = [\"a/b/c\"]\n".to_string(),
                "local_pv.node_labels_for_pv[0]",
                "not a valid Kubernetes name",
            ),
            ("[nope]\n".to_string(), "nope", "unknown field `nope`"),
        ];
        for (text, want_key, want_message) in cases {
            match ConfigFile::parse(&text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err((key, message)) => {
                    assert_eq!(key, want_key, "{text}\n{message}");
                    assert!(message.contains(want_message), "{text}\n{key}: {message}");
                }
            }
        }
    }
}
