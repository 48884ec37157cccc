//! The static local-PV discoverer: the disks under each class's `mount_dir` become
//! PersistentVolumes (published to the API, or added to the file mode's PV set).

pub mod cleaner;
pub mod cleanup;
pub mod config;
pub mod discover;
pub mod events;
pub mod publish;

/// Sets `volumed_local_pv_disks`: what the last discovery found per class, disks and skipped
/// entries. Every configured class is shown, with zero where it found nothing.
pub fn count_discovery(config: &config::LocalPvConfig, found: &discover::Discovered) {
    let family = &crate::metrics::get().local_disks;
    for class in &config.classes {
        let name = &class.storage_class;
        let disks = found
            .volumes
            .iter()
            .filter(|pv| pv.spec.as_ref().and_then(|s| s.storage_class_name.as_ref()) == Some(name))
            .count();
        let skipped = found
            .skipped
            .iter()
            .filter(|s| &s.storage_class == name)
            .count();
        for (state, count) in [("discovered", disks), ("skipped", skipped)] {
            let labels = crate::metrics::LocalDiskLabels {
                storage_class: name.clone(),
                state,
            };
            family.get_or_create(&labels).set(count as i64);
        }
    }
}
