//! What `volumed discover` prints: the PersistentVolumes as YAML documents or a JSON List on
//! stdout, and each skipped entry with its reason on stderr.

use super::Printed;
use crate::localpv::discover::Discovered;

/// YAML: one document per PV, as `kubectl apply -f` takes them.
pub fn discovered_yaml(found: &Discovered) -> Result<Printed, serde_yaml::Error> {
    let mut stdout = String::new();
    for volume in &found.volumes {
        stdout.push_str("---\n");
        stdout.push_str(&serde_yaml::to_string(volume)?);
    }
    Ok(Printed {
        stdout,
        stderr: skipped(found),
    })
}

/// JSON: a `v1` `List` of the PVs.
pub fn discovered_json(found: &Discovered) -> serde_json::Result<Printed> {
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": found.volumes});
    Ok(Printed {
        stdout: serde_json::to_string_pretty(&list)? + "\n",
        stderr: skipped(found),
    })
}

fn skipped(found: &Discovered) -> String {
    found
        .skipped
        .iter()
        .map(|s| {
            format!(
                "skipped {} (class {}): {}\n",
                s.path.display(),
                s.storage_class,
                s.reason
            )
        })
        .collect()
}
