//! The start-up propagation check (pure): what volumed mounts under its root dir must reach
//! the host and the container runtime (the root dir on a shared mount), and the disks the
//! host mounts under a local-PV `mount_dir` must reach volumed (a shared or slave mount).

use std::path::Path;

use crate::model::mountinfo::MountEntry;

/// The mount `path` lies on: the one with the longest mount point above it (the top one of a
/// stack, the newest, being last in the table).
pub fn mount_of<'a>(path: &Path, table: &'a [MountEntry]) -> Option<&'a MountEntry> {
    table
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .and_then(|deepest| {
            table
                .iter()
                .rev()
                .find(|m| m.mount_point == deepest.mount_point)
        })
}

/// What is wrong with the propagation of the root dir and the local-PV mount dirs (class
/// name, directory), one message each saying which mount and what to change; empty when
/// nothing is.
pub fn problems(
    root_dir: &Path,
    mount_dirs: &[(&str, &Path)],
    table: &[MountEntry],
) -> Vec<String> {
    let mut out = Vec::new();
    match mount_of(root_dir, table) {
        None => out.push(format!(
            "no mount in the mount table holds the root dir {}",
            root_dir.display()
        )),
        Some(mount) if !mount.propagation.shared => out.push(format!(
            "the root dir {} is on mount {} (id {}), which is not shared: what volumed mounts there would not reach the host's or the container runtime's mount namespaces. Make it shared: on the host `mount --make-rshared {}`; in the DaemonSet, `mountPropagation: Bidirectional` on the root dir's volume",
            root_dir.display(),
            mount.mount_point.display(),
            mount.mount_id,
            mount.mount_point.display()
        )),
        Some(_) => {}
    }
    for (class, dir) in mount_dirs {
        match mount_of(dir, table) {
            Some(mount) if !mount.propagation.shared && !mount.propagation.receives => {
                out.push(format!(
                    "the mount_dir {} of local-PV class {class} is on mount {} (id {}), which receives no mounts from the host: a disk mounted there on the host would never be seen. In the DaemonSet, `mountPropagation: HostToContainer` on its volume; on the host, `mount --make-rshared {}`",
                    dir.display(),
                    mount.mount_point.display(),
                    mount.mount_id,
                    mount.mount_point.display()
                ));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mountinfo::Propagation;

    fn mount(id: i32, point: &str, shared: bool, receives: bool) -> MountEntry {
        MountEntry {
            mount_id: id,
            parent_id: 1,
            device: "0:1".into(),
            root: "/".into(),
            mount_point: point.into(),
            fs_type: "ext4".into(),
            source: None,
            read_only: false,
            super_options: Default::default(),
            propagation: Propagation { shared, receives },
        }
    }

    #[test]
    fn the_root_dir_must_be_on_a_shared_mount_and_mount_dirs_must_receive() {
        let table = [
            mount(1, "/", true, false),
            mount(2, "/var/lib/volumed", false, false),
            mount(3, "/mnt/disks", false, true),
            mount(4, "/mnt/private", false, false),
            mount(5, "/srv", false, false),
            mount(6, "/srv", true, false),
        ];
        let fine = problems(
            Path::new("/var/lib/other"),
            &[("fast", Path::new("/mnt/disks"))],
            &table,
        );
        assert!(fine.is_empty(), "{fine:?}");
        // The top of a stack decides.
        assert!(problems(Path::new("/srv/root"), &[], &table).is_empty());
        let bad = problems(
            Path::new("/var/lib/volumed"),
            &[
                ("fast", Path::new("/mnt/disks/x")),
                ("slow", Path::new("/mnt/private")),
            ],
            &table,
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].contains("/var/lib/volumed (id 2), which is not shared")
                && bad[0].contains("Bidirectional"),
            "{}",
            bad[0]
        );
        assert!(
            bad[1].contains("class slow") && bad[1].contains("HostToContainer"),
            "{}",
            bad[1]
        );
    }
}
