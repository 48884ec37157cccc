//! The DaemonSet and everything it needs (`deploy/`): every document the kustomization lists
//! parses as its Kubernetes type, with no field the type does not know, and the documents
//! reference each other: the ServiceAccount, the ClusterRole and its binding, the ConfigMap
//! (equal to `deploy/config.toml`), the volumes and their mounts, the probes' port, the
//! propagation of the root dir and of each local-PV host dir.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every document of the files the kustomization lists, as JSON, by kind.
fn documents() -> BTreeMap<String, Vec<serde_json::Value>> {
    let kustomization: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut by_kind: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let resources = kustomization["resources"].as_sequence().expect("resources");
    for file in resources {
        let file = file.as_str().unwrap();
        let text = std::fs::read_to_string(deploy().join(file))
            .unwrap_or_else(|e| format!("the kustomization lists {file}: {e}"));
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(document).unwrap_or_else(|e| panic!("{file}: {e}"));
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a document without kind"))
                .to_string();
            by_kind.entry(kind).or_default().push(value);
        }
    }
    by_kind
}

/// The one document of `kind`, parsed as its type; a field the type does not know (a typo)
/// is lost on the way and found missing when it is written back.
fn the<T: DeserializeOwned + serde::Serialize>(
    docs: &BTreeMap<String, Vec<serde_json::Value>>,
    kind: &str,
) -> T {
    let found = docs
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"));
    assert_eq!(found.len(), 1, "one {kind} expected");
    let typed: T =
        serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        strip_nulls(back),
        strip_nulls(found[0].clone()),
        "{kind} has fields its type does not know"
    );
    typed
}

fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

#[test]
fn the_daemonset_manifests_parse_and_reference_each_other() {
    let docs = documents();
    let account: ServiceAccount = the(&docs, "ServiceAccount");
    let role: ClusterRole = the(&docs, "ClusterRole");
    let binding: ClusterRoleBinding = the(&docs, "ClusterRoleBinding");
    let config: ConfigMap = the(&docs, "ConfigMap");
    let daemonset: DaemonSet = the(&docs, "DaemonSet");
    let namespace = daemonset.metadata.namespace.clone().expect("a namespace");

    // RBAC: the binding gives the role to the account the pods run as.
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name.clone()), role.metadata.name);
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(subject.name.clone()), account.metadata.name);
    assert_eq!(subject.namespace, account.metadata.namespace);
    assert_eq!(account.metadata.namespace.as_ref(), Some(&namespace));
    let spec = daemonset.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, account.metadata.name);

    // The selector selects the pods it makes.
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (key, value) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.get(key), Some(value), "the selector's {key}");
    }

    // The config: the ConfigMap the pods mount, equal to deploy/config.toml, which parses.
    assert_eq!(config.metadata.namespace.as_ref(), Some(&namespace));
    let shipped = std::fs::read_to_string(deploy().join("config.toml")).unwrap();
    let data = config.data.as_ref().unwrap();
    assert_eq!(
        data["config.toml"], shipped,
        "configmap.yaml and config.toml differ"
    );
    let parsed = volumed::localpv::config::ConfigFile::parse(&shipped).expect("config.toml parses");

    // Every mount has its volume, every volume is mounted, and the config volume is that map.
    let volumes: BTreeMap<String, _> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), v))
        .collect();
    let container = &pod.containers[0];
    let mounts = container.volume_mounts.clone().unwrap();
    for mount in &mounts {
        assert!(
            volumes.contains_key(&mount.name),
            "mount {} has no volume",
            mount.name
        );
    }
    for name in volumes.keys() {
        assert!(
            mounts.iter().any(|m| &m.name == name),
            "volume {name} is not mounted"
        );
    }
    let config_volume = volumes
        .values()
        .find(|v| v.config_map.is_some())
        .expect("the config volume");
    assert_eq!(
        Some(config_volume.config_map.as_ref().unwrap().name.clone()),
        config.metadata.name
    );
    let mounted_at = |path: &str| {
        mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("nothing is mounted at {path}"))
    };
    let config_mount = mounts
        .iter()
        .find(|m| m.name == config_volume.name)
        .unwrap();
    let config_arg = container.args.as_ref().unwrap().join(" ");
    assert!(
        config_arg.contains(&format!("{}/config.toml", config_mount.mount_path)),
        "run is not given the mounted config: {config_arg}"
    );

    // Propagation: the root dir back to the host, the host's disks into the pod.
    let env: BTreeMap<String, _> = container
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e))
        .collect();
    let root = env["VOLUMED_ROOT_DIR"].value.clone().unwrap();
    assert_eq!(
        mounted_at(&root).mount_propagation.as_deref(),
        Some("Bidirectional")
    );
    let host_path_of = |mount_name: &str| {
        volumes[mount_name]
            .host_path
            .as_ref()
            .map(|h| h.path.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        host_path_of(&mounted_at(&root).name),
        root,
        "the root dir is the host's"
    );
    for class in &parsed.local_pv.expect("[local_pv]").classes {
        let dir = class.mount_dir().display().to_string();
        let mount = mounted_at(&dir);
        assert_eq!(
            mount.mount_propagation.as_deref(),
            Some("HostToContainer"),
            "{dir}"
        );
        assert_eq!(
            host_path_of(&mount.name),
            class.host_dir.display().to_string()
        );
    }
    assert!(mounts.iter().any(|m| m.mount_path == "/dev"));
    assert!(mounts.iter().any(|m| m.mount_path == "/run/udev"));

    // The node's name from the downward API; the probes on the endpoint's port.
    let node = env["VOLUMED_NODE_NAME"].value_from.as_ref().unwrap();
    assert_eq!(node.field_ref.as_ref().unwrap().field_path, "spec.nodeName");
    let port = &container.ports.as_ref().unwrap()[0];
    let addr = env["VOLUMED_HTTP_ADDR"].value.clone().unwrap();
    assert!(
        addr.ends_with(&format!(":{}", port.container_port)),
        "{addr}"
    );
    for (probe, path) in [
        (container.liveness_probe.as_ref(), "/healthz"),
        (container.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                port.name.clone().unwrap()
            )
        );
    }
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|s| s.privileged),
        Some(true)
    );
    assert!(container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .is_some());
}
