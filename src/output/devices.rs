//! The block-device inventory as `volumed devices` prints it: lsblk's columns and sizes.

use std::collections::BTreeMap;

use super::table::render;
use crate::actual::devices::BlockDevice;

/// Bytes as lsblk prints them: 1024-based, one decimal below 10 (`512M`, `1.5G`, `20G`).
pub fn lsblk_size(bytes: u64) -> String {
    let units = ["B", "K", "M", "G", "T", "P", "E"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = if value < 10.0 && value.fract() != 0.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    };
    format!("{}{}", text.trim_end_matches(".0"), units[unit])
}

/// The inventory as `lsblk -o NAME,MAJ:MIN,SIZE,TYPE,FSTYPE,UUID,MOUNTPOINTS` shows it, with
/// partitions under their disk.
pub fn lsblk_table(devices: &[BlockDevice]) -> String {
    let by_name: BTreeMap<&str, &BlockDevice> =
        devices.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut rows = Vec::new();
    for device in devices
        .iter()
        .filter(|d| d.parent.as_deref().is_none_or(|p| !by_name.contains_key(p)))
    {
        rows.push(row(device, ""));
        let children: Vec<&&BlockDevice> = device
            .partitions
            .iter()
            .filter_map(|p| by_name.get(p.as_str()))
            .collect();
        for (index, child) in children.iter().enumerate() {
            rows.push(row(
                child,
                if index + 1 == children.len() {
                    "└─"
                } else {
                    "├─"
                },
            ));
        }
    }
    render(
        &[
            "NAME",
            "MAJ:MIN",
            "SIZE",
            "RO",
            "TYPE",
            "FSTYPE",
            "UUID",
            "MOUNTPOINTS",
        ],
        &rows,
    )
}

fn row(device: &BlockDevice, prefix: &str) -> [String; 8] {
    let mounts: Vec<String> = device
        .mount_points
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    [
        format!("{prefix}{}", device.name),
        device.dev.clone(),
        lsblk_size(device.size_bytes),
        if device.read_only { "1" } else { "0" }.into(),
        device.kind.clone(),
        device
            .fs_type
            .clone()
            .or_else(|| device.pt_type.clone())
            .unwrap_or_default(),
        device.uuid.clone().unwrap_or_default(),
        mounts.join(","),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_lsblk_prints_them() {
        for (bytes, want) in [
            (512 << 20, "512M"),
            (3 << 29, "1.5G"),
            (20 << 30, "20G"),
            (1000, "1000B"),
            (64 << 20, "64M"),
        ] {
            assert_eq!(lsblk_size(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn partitions_are_listed_under_their_disk() {
        let device = |name: &str, parent: Option<&str>, partitions: &[&str]| BlockDevice {
            name: name.into(),
            dev: "8:0".into(),
            size_bytes: 1 << 30,
            kind: "disk".into(),
            read_only: false,
            rotational: false,
            model: None,
            serial: None,
            wwn: None,
            devnode: format!("/dev/{name}").into(),
            links: vec![],
            fs_type: None,
            uuid: None,
            pt_type: None,
            parent: parent.map(Into::into),
            partitions: partitions.iter().map(|p| p.to_string()).collect(),
            holders: vec![],
            mount_points: vec![],
        };
        let table = lsblk_table(&[
            device("sda", None, &["sda1", "sda2"]),
            device("sda1", Some("sda"), &[]),
            device("sda2", Some("sda"), &[]),
        ]);
        let names: Vec<&str> = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(names, ["sda", "├─sda1", "└─sda2"]);
    }
}
