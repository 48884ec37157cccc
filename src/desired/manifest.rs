//! Reads a manifest directory (YAML or JSON, several documents per file) into typed
//! Kubernetes objects for the file source. Pure apart from reading the files themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::de::DeserializeOwned;

use crate::model::names::check_object_name;

/// A problem with one manifest file; any of these makes the file source incomplete.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "cannot list manifest directory {dir}: {source}; check that it exists and is readable"
    )]
    ReadDir {
        dir: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("cannot read manifest {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("{path}:{line}: malformed {format}: {message}; fix the file, nothing is unmounted until it parses")]
    Syntax {
        path: PathBuf,
        line: usize,
        format: &'static str,
        message: String,
    },
    #[error("{path}:{line}: {kind} is invalid: {message}; fix the file, nothing is unmounted until it parses")]
    Invalid {
        path: PathBuf,
        line: usize,
        kind: String,
        message: String,
    },
    #[error("{path} is being written (open for writing, or changed and not closed yet) and has no complete version volumed has read; nothing is torn down until it is closed")]
    BeingWritten { path: PathBuf },
    #[error("{kind} {name} is defined twice, in {first} and {second}; keep one of them")]
    Duplicate {
        kind: &'static str,
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// The objects of a manifest directory, keyed by `namespace/name` (or `name` when
/// cluster-scoped), plus what went wrong reading them.
#[derive(Debug, Default)]
pub struct Manifests {
    // Shared, not owned: a file's parse is kept between reads, and each read's manifests
    // take its objects without copying them.
    pub pods: BTreeMap<String, Arc<Pod>>,
    pub claims: BTreeMap<String, Arc<PersistentVolumeClaim>>,
    pub volumes: BTreeMap<String, Arc<PersistentVolume>>,
    pub classes: BTreeMap<String, Arc<StorageClass>>,
    pub errors: Vec<ManifestError>,
    /// Pods refused as the API server would refuse them (a name, a volume list): each makes
    /// the snapshot incomplete, but none hides a claim or a volume, so binding goes on.
    pub refused: Vec<ManifestError>,
    /// Documents skipped on purpose (unknown kinds), one message each.
    pub warnings: Vec<String>,
    /// Which file each object came from, to name both files of a duplicate.
    origins: BTreeMap<(&'static str, String), (PathBuf, usize)>,
    /// Objects a pod needs that the API source is still reading, by kind and key, with the
    /// last read's failure (never in file mode).
    pub unread: BTreeMap<(&'static str, String), Option<String>>,
}

/// Loads every `*.yaml`, `*.yml` and `*.json` file directly in `dir`, in name order. An entry
/// that cannot be read is an error, never a silent omission: a missing file would look like
/// deleted pods.
pub fn load_dir(dir: &Path) -> Manifests {
    let (files, mut manifests) = manifest_files(dir);
    for path in files {
        match std::fs::read_to_string(&path) {
            Ok(text) => manifests.add_file(&path, &text),
            Err(source) => manifests.errors.push(ManifestError::ReadFile {
                path,
                source: source.into(),
            }),
        }
    }
    manifests
}

/// The manifest files directly in `dir`, in name order, and the (so far empty) manifests
/// with the errors met listing them.
pub fn manifest_files(dir: &Path) -> (Vec<PathBuf>, Manifests) {
    let mut manifests = Manifests::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            manifests.errors.push(ManifestError::ReadDir {
                dir: dir.to_path_buf(),
                source: source.into(),
            });
            return (Vec::new(), manifests);
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(source) => {
                manifests.errors.push(ManifestError::ReadDir {
                    dir: dir.to_path_buf(),
                    source: source.into(),
                });
                continue;
            }
        };
        if !has_manifest_name(&path) {
            continue;
        }
        // stat follows links: a dangling link is an error, a directory named x.yaml is skipped.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(_) => {}
            Err(source) => manifests.errors.push(ManifestError::ReadFile {
                path,
                source: source.into(),
            }),
        }
    }
    files.sort();
    (files, manifests)
}

/// Whether the directory's reader takes this file: hidden files (an editor's or a copier's
/// temporary files) and other extensions are skipped.
pub fn has_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

impl Manifests {
    /// Why `kind` `key` is missing when the API source is still reading it: the pod waits for
    /// that, not for the object to be created.
    pub fn unread_note(&self, kind: &'static str, key: &str) -> Option<String> {
        let failed = self.unread.get(&(kind, key.to_string()))?;
        Some(match failed {
            None => format!("{kind} {key} is being read from the API"),
            Some(why) => format!("{kind} {key} could not be read from the API ({why}); retrying"),
        })
    }

    /// Parses one file's text; `path` is only used in messages.
    pub fn add_file(&mut self, path: &Path, text: &str) {
        let is_json = path.extension().is_some_and(|e| e == "json");
        if is_json {
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value) => self.add_value(path, 1, value),
                Err(err) => self.errors.push(ManifestError::Syntax {
                    path: path.to_path_buf(),
                    line: err.line(),
                    format: "JSON",
                    message: err.to_string(),
                }),
            }
            return;
        }
        for (start_line, doc) in split_yaml_documents(text) {
            match serde_yaml::from_str::<Option<serde_json::Value>>(doc) {
                Ok(Some(value)) => {
                    // An object's line is that of its document's first line with content.
                    let blank = doc.lines().take_while(|l| l.trim().is_empty()).count();
                    self.add_value(path, start_line + blank, value)
                }
                Ok(None) => {}
                Err(err) => self.errors.push(ManifestError::Syntax {
                    path: path.to_path_buf(),
                    line: start_line + err.location().map_or(0, |l| l.line().saturating_sub(1)),
                    format: "YAML",
                    message: err.to_string(),
                }),
            }
        }
    }

    /// Adds what one file parsed alone holds (`part`: a parse kept from an earlier read), as
    /// `add_file` of its text would: its objects, each checked against those already here
    /// for a second definition, and its problems and warnings.
    pub fn absorb(&mut self, part: &Manifests) {
        self.errors.extend(part.errors.iter().cloned());
        self.refused.extend(part.refused.iter().cloned());
        self.warnings.extend(part.warnings.iter().cloned());
        self.absorb_kind(part, Kind::Pod, |m| &m.pods, |m| &mut m.pods);
        self.absorb_kind(part, Kind::Claim, |m| &m.claims, |m| &mut m.claims);
        self.absorb_kind(part, Kind::Volume, |m| &m.volumes, |m| &mut m.volumes);
        self.absorb_kind(part, Kind::Class, |m| &m.classes, |m| &mut m.classes);
    }

    fn absorb_kind<
        T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    >(
        &mut self,
        part: &Manifests,
        kind: Kind,
        from: impl Fn(&Manifests) -> &BTreeMap<String, Arc<T>>,
        to: impl Fn(&mut Self) -> &mut BTreeMap<String, Arc<T>>,
    ) {
        for (key, object) in from(part) {
            let (path, line) = part
                .origins
                .get(&(kind.name(), key.clone()))
                .cloned()
                .expect("every object has its origin");
            if let Err(error) = self.put(&path, line, kind, object.clone(), &to) {
                match kind {
                    Kind::Pod => self.refused.push(error),
                    _ => self.errors.push(error),
                }
            }
        }
    }

    fn add_value(&mut self, path: &Path, line: usize, value: serde_json::Value) {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let invalid = |kind: &str, message: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            line,
            kind: if kind.is_empty() {
                "document".into()
            } else {
                kind.into()
            },
            message,
        };
        match kind {
            "Pod" => self.insert(path, line, value, Kind::Pod),
            "PersistentVolumeClaim" => self.insert(path, line, value, Kind::Claim),
            "PersistentVolume" => self.insert(path, line, value, Kind::Volume),
            "StorageClass" => self.insert(path, line, value, Kind::Class),
            "List" => match value.get("items").and_then(|i| i.as_array()) {
                Some(items) => {
                    for item in items.clone() {
                        self.add_value(path, line, item);
                    }
                }
                None => self.errors.push(invalid(kind, "a List needs an items array".into())),
            },
            "" => self.errors.push(invalid(kind, "the document has no kind".into())),
            other => self.warnings.push(format!(
                "{}:{line}: skipping kind {other}: volumed reads only Pod, PersistentVolumeClaim, PersistentVolume and StorageClass",
                path.display()
            )),
        }
    }

    fn insert(&mut self, path: &Path, line: usize, value: serde_json::Value, kind: Kind) {
        let result =
            match kind {
                Kind::Pod => typed(value)
                    .and_then(|pod: Pod| validate_pod(&pod).map(|()| pod))
                    .map(|o| self.put(path, line, kind, Arc::new(o), |m| &mut m.pods)),
                Kind::Claim => {
                    typed(value).map(|o| self.put(path, line, kind, Arc::new(o), |m| &mut m.claims))
                }
                Kind::Volume => typed(value)
                    .map(|o| self.put(path, line, kind, Arc::new(o), |m| &mut m.volumes)),
                Kind::Class => typed(value)
                    .map(|o| self.put(path, line, kind, Arc::new(o), |m| &mut m.classes)),
            };
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(message) => ManifestError::Invalid {
                path: path.to_path_buf(),
                line,
                kind: kind.name().into(),
                message,
            },
        };
        match kind {
            Kind::Pod => self.refused.push(error),
            _ => self.errors.push(error),
        }
    }

    /// Where an object (`kind`, `namespace/name` or `name`) was defined: `file:line`.
    pub fn origin(&self, kind: &'static str, key: &str) -> Option<String> {
        self.origins
            .get(&(kind, key.to_string()))
            .map(|(path, line)| format!("{}:{line}", path.display()))
    }

    /// Files an object under its key, refusing a second definition of the same object.
    fn put<
        T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    >(
        &mut self,
        path: &Path,
        line: usize,
        kind: Kind,
        object: Arc<T>,
        map: impl Fn(&mut Self) -> &mut BTreeMap<String, Arc<T>>,
    ) -> Result<(), ManifestError> {
        let meta = object.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let key = if kind.namespaced() {
            format!("{}/{name}", meta.namespace.as_deref().unwrap_or("default"))
        } else {
            name
        };
        if let Some(first) = self.origins.get(&(kind.name(), key.clone())) {
            return Err(ManifestError::Duplicate {
                kind: kind.name(),
                name: key,
                first: first.0.clone(),
                second: path.to_path_buf(),
            });
        }
        self.origins
            .insert((kind.name(), key.clone()), (path.to_path_buf(), line));
        map(self).insert(key, object);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Pod,
    Claim,
    Volume,
    Class,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Claim => "PersistentVolumeClaim",
            Kind::Volume => "PersistentVolume",
            Kind::Class => "StorageClass",
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::Claim)
    }
}

/// Converts a parsed document into a k8s-openapi type, naming the field that is wrong, and
/// requires `metadata.name`.
fn typed<
    T: DeserializeOwned
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    value: serde_json::Value,
) -> Result<T, String> {
    let object: T = serde_path_to_error::deserialize(value).map_err(|err| {
        let field = err.path().to_string();
        format!("field {field}: {}", err.inner())
    })?;
    let meta = object.metadata();
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => check_object_name("metadata.name", name, false)?,
        _ => return Err("metadata.name is missing".to_string()),
    }
    if let Some(namespace) = meta.namespace.as_deref() {
        check_object_name("metadata.namespace", namespace, true)?;
    }
    Ok(object)
}

/// What the API server checks of a pod's volumes: each name a DNS-1123 label, none twice.
fn validate_pod(pod: &Pod) -> Result<(), String> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for volume in volumes {
        check_object_name("spec.volumes[].name", &volume.name, true)?;
        if !seen.insert(volume.name.as_str()) {
            return Err(format!(
                "volume name {:?} appears twice in spec.volumes",
                volume.name
            ));
        }
    }
    Ok(())
}

/// Splits YAML text at `---` lines, returning each document with its 1-based first line.
fn split_yaml_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(|c| c.is_whitespace());
        if is_marker {
            docs.push((start_line, &text[start_byte..offset]));
            // The marker line itself belongs to the next document (it may carry content).
            start_byte = offset + 3;
            start_line = index + 1;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start_byte..]));
    docs.into_iter()
        .filter(|(_, doc)| !doc.trim().is_empty())
        .collect()
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
