//! Local PVs on block devices against the fake host's disks: staging (format, check, mount
//! once, bind) and every refusal of the safe-format policy, without root. The same paths run
//! on real loop devices in the privileged suite.

use volumed::app::inspect::plan_only;
use volumed::executor::preview::Preview;
use volumed::host::fake::FakeDisk;
use volumed::model::probe::{FsckResult, Probe};
use volumed::reconcile::status::VolumeState;

use crate::{fake_host, World};

const GIB: u64 = 1 << 30;

/// A world whose only pod mounts a claim bound to a local PV on the fake disk `dev/sdb`.
fn disk_world(disk: FakeDisk, read_only_volume: bool) -> World {
    let world = World::new();
    for name in ["storage.yaml", "web.yaml", "other.yaml"] {
        world.remove(name);
    }
    std::fs::create_dir_all(world.base.join("dev")).unwrap();
    world.mounter.add_disk(&world.disk(), disk);
    let read_only = if read_only_volume {
        ", readOnly: true"
    } else {
        ""
    };
    world.write(
        "disk.yaml",
        &format!(
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv-disk}}
spec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], local: {{path: BASE/dev/sdb}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db, uid: db-uid}}
spec:
  nodeName: node-a
  containers: [{{name: c, image: x, volumeMounts: [{{name: data, mountPath: /data{read_only}}}]}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data{read_only}}}}}]
"#
        ),
    );
    world
}

impl World {
    fn disk(&self) -> std::path::PathBuf {
        self.base.join("dev/sdb")
    }

    fn probe_answers(&self, probe: Probe) {
        self.formatter
            .probes
            .lock()
            .unwrap()
            .insert(self.disk(), probe);
    }

    fn formatter_calls(&self) -> Vec<String> {
        self.formatter.calls.lock().unwrap().clone()
    }
}

fn ext4() -> Probe {
    Probe::Filesystem {
        fs_type: "ext4".into(),
        uuid: Some("u".into()),
    }
}

/// Runs once; returns the volume's state and reason.
async fn outcome(world: &World) -> (VolumeState, String) {
    let report = world.run_once().await;
    let row = report
        .rows
        .iter()
        .find(|r| r.volume == "data")
        .unwrap_or_else(|| panic!("a row for the volume: {:#?}", report.rows));
    (row.state, row.reason.clone())
}

#[tokio::test]
async fn a_blank_disk_is_formatted_mounted_once_and_bound_into_the_pod() {
    let world = disk_world(FakeDisk::blank("sdb", 16, GIB), false);
    let (state, reason) = outcome(&world).await;
    assert_eq!(state, VolumeState::Mounted, "{reason}");
    let disk = world.disk().display().to_string();
    assert_eq!(
        world.formatter_calls(),
        [
            format!("probe {disk}"),
            format!("probe {disk}"),
            format!("mkfs.ext4 {disk}")
        ],
        "decided twice (before and after waiting for a format slot), formatted once"
    );
    let global = world
        .settings
        .root_dir
        .join("plugins/kubernetes.io/local-volume/mounts/pv-disk");
    let table = world.mounter.table();
    let staged = table
        .iter()
        .find(|m| m.mount_point == global)
        .expect("the global mount");
    assert_eq!(
        (staged.device.as_str(), staged.fs_type.as_str()),
        ("8:16", "ext4")
    );
    let bound = world.volume("db-uid", "local-volume", "pv-disk");
    assert!(
        table
            .iter()
            .any(|m| m.mount_point == bound && m.device == "8:16"),
        "the pod's volume is a bind of the staged disk: {table:#?}"
    );
    // A second run finds it in place: no probe, no format.
    let calls = world.formatter_calls().len();
    assert_eq!(outcome(&world).await.0, VolumeState::Mounted);
    assert_eq!(world.formatter_calls().len(), calls);
}

#[tokio::test]
async fn a_disk_with_the_wanted_filesystem_is_checked_then_mounted_never_formatted() {
    let world = disk_world(FakeDisk::blank("sdb", 16, GIB), false);
    world.probe_answers(ext4());
    assert_eq!(outcome(&world).await.0, VolumeState::Mounted);
    let calls = world.formatter_calls();
    assert!(
        calls.iter().any(|c| c.starts_with("fsck.ext4")),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.starts_with("mkfs")), "{calls:?}");
}

#[tokio::test]
async fn a_read_only_disk_with_a_filesystem_is_mounted_read_only_without_fsck() {
    let mut disk = FakeDisk::blank("sdb", 16, GIB);
    disk.read_only = true;
    let world = disk_world(disk, false);
    world.probe_answers(ext4());
    assert_eq!(outcome(&world).await.0, VolumeState::Mounted);
    let global = world
        .settings
        .root_dir
        .join("plugins/kubernetes.io/local-volume/mounts/pv-disk");
    assert!(world
        .mounter
        .table()
        .iter()
        .any(|m| m.mount_point == global && m.read_only));
    assert!(!world
        .formatter_calls()
        .iter()
        .any(|c| c.starts_with("fsck") || c.starts_with("mkfs")));
}

/// Every way staging and safe-format refuse: the volume fails with the reason, nothing is
/// formatted or mounted.
#[tokio::test]
async fn every_refusal_of_safe_format_leaves_the_disk_alone_and_says_why() {
    let blank = || FakeDisk::blank("sdb", 16, GIB);
    let with = |change: fn(&mut FakeDisk)| {
        let mut disk = blank();
        change(&mut disk);
        disk
    };
    // A backup GPT header in the last 512-byte sector, its primary copy wiped.
    let mut backup_gpt = vec![0u8; 32];
    backup_gpt[..8].copy_from_slice(b"EFI PART");
    backup_gpt[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    backup_gpt[12..16].copy_from_slice(&92u32.to_le_bytes());
    backup_gpt[24..32].copy_from_slice(&(GIB / 512 - 1).to_le_bytes());
    let mut gpt_disk = blank();
    gpt_disk.bytes_at.insert(GIB - 512, backup_gpt);
    type Setup = fn(&World);
    let nothing: Setup = |_| {};
    let cases: Vec<(&str, FakeDisk, bool, Setup, &str)> = vec![
        (
            "unreadable",
            with(|d| d.unreadable = Some("EIO at byte 0".into())),
            false,
            nothing,
            "reading its first and last MiB failed (EIO at byte 0)",
        ),
        (
            "mounted elsewhere",
            blank(),
            false,
            |w| {
                w.mounter
                    .adopt_disk_mount(&w.disk(), &w.base.join("elsewhere"))
            },
            "it is mounted at",
        ),
        (
            "held by device-mapper",
            with(|d| d.holders = vec!["dm-0".into()]),
            false,
            nothing,
            "it is in use by dm-0 (sysfs holders)",
        ),
        (
            "claimed in another namespace",
            with(|d| d.claimed = true),
            false,
            nothing,
            "it is in use: mounted (perhaps in another mount namespace)",
        ),
        (
            "partitioned",
            with(|d| d.partitions = vec!["sdb1".into()]),
            false,
            nothing,
            "it holds partitions (sdb1)",
        ),
        (
            "a partition table",
            blank(),
            false,
            |w| {
                w.probe_answers(Probe::PartitionTable {
                    pt_type: "gpt".into(),
                })
            },
            "it holds a gpt partition table",
        ),
        (
            "another filesystem",
            blank(),
            false,
            |w| {
                w.probe_answers(Probe::Filesystem {
                    fs_type: "xfs".into(),
                    uuid: None,
                })
            },
            "it holds a xfs filesystem but the PV asks for ext4",
        ),
        (
            "another signature",
            blank(),
            false,
            |w| {
                w.probe_answers(Probe::Other {
                    description: "swap (other)".into(),
                })
            },
            "it holds a swap (other) signature",
        ),
        (
            "leftover metadata",
            gpt_disk,
            false,
            nothing,
            "a backup GPT header in its last sector",
        ),
        (
            "a read-only blank disk",
            with(|d| d.read_only = true),
            false,
            nothing,
            "the device is read-only and holds no filesystem",
        ),
        (
            "a read-only volume on a blank disk",
            blank(),
            true,
            nothing,
            "the volume is read-only and the device holds no filesystem",
        ),
        (
            "a filesystem fsck cannot fix",
            blank(),
            false,
            |w| {
                w.probe_answers(ext4());
                w.formatter.checks.lock().unwrap().insert(
                    w.disk(),
                    FsckResult::Failed {
                        exit_code: 4,
                        output: "errors left".into(),
                    },
                );
            },
            "fsck.ext4 -p exited 4",
        ),
        (
            "detached from sysfs",
            with(|d| d.missing_from_sysfs = true),
            false,
            nothing,
            "is not in sysfs; is it still attached?",
        ),
        (
            "its node replaced while examined",
            with(|d| d.node_replaced = true),
            false,
            nothing,
            "its device node changed while it was examined",
        ),
        (
            "a partition whose disk is held",
            with(|d| {
                d.name = "sdb1".into();
                d.parent = Some("sdb".into());
            }),
            false,
            |w| {
                let mut disk = FakeDisk::blank("sdb", 0, 2 * GIB);
                disk.partitions = vec!["sdb1".into()];
                disk.holders = vec!["md127".into()];
                w.mounter.add_disk(&w.base.join("dev/sdb-whole"), disk);
            },
            "it is in use by md127 (sysfs holders)",
        ),
        (
            "a global mount holding another device",
            blank(),
            false,
            |w| {
                w.mounter.adopt(
                    &w.settings
                        .root_dir
                        .join("plugins/kubernetes.io/local-volume/mounts/pv-disk"),
                    "ext4",
                )
            },
            "it holds device 0:",
        ),
    ];
    // The worlds are independent: run them at once (each run's reads wait out the settle).
    let worlds: Vec<(&str, World, &str)> = cases
        .into_iter()
        .map(|(what, disk, read_only_volume, setup, want)| {
            let world = disk_world(disk, read_only_volume);
            setup(&world);
            (what, world, want)
        })
        .collect();
    let outcomes = futures::future::join_all(worlds.iter().map(|(_, w, _)| outcome(w))).await;
    for ((what, world, want), (state, reason)) in worlds.iter().zip(outcomes) {
        assert_eq!(state, VolumeState::Failed, "{what}: {reason}");
        assert!(
            reason.contains(want),
            "{what}: the reason says {want:?}: {reason}"
        );
        let calls = world.formatter_calls();
        assert!(
            !calls.iter().any(|c| c.starts_with("mkfs")),
            "{what}: formatted: {calls:?}"
        );
        let bound = world.volume("db-uid", "local-volume", "pv-disk");
        assert!(
            !world.mounter.table().iter().any(|m| m.mount_point == bound),
            "{what}: bound into the pod anyway"
        );
    }
}

#[tokio::test]
async fn plan_previews_the_format_of_a_blank_disk_and_a_refusal_without_acting() {
    let world = disk_world(FakeDisk::blank("sdb", 16, GIB), false);
    let host = fake_host(world.mounter.clone(), &world.formatter, &world.progress);
    let report = plan_only(&world.settings, host).await.unwrap();
    let previews: Vec<&Preview> = report
        .ops
        .iter()
        .filter_map(|o| o.preview.as_ref())
        .collect();
    assert_eq!(
        previews,
        [&Preview::Formats {
            device: world.disk(),
            fs_type: "ext4".into()
        }]
    );
    world
        .mounter
        .change_disk(&world.disk(), |d| d.holders = vec!["md0".into()]);
    let host = fake_host(world.mounter.clone(), &world.formatter, &world.progress);
    let report = plan_only(&world.settings, host).await.unwrap();
    assert!(
        matches!(report.ops.iter().find_map(|o| o.preview.as_ref()), Some(Preview::Fails { reason }) if reason.contains("md0")),
        "{:?}",
        report.ops
    );
    assert!(world.mounter.table().is_empty(), "plan mounted something");
    assert!(!world
        .formatter_calls()
        .iter()
        .any(|c| c.starts_with("mkfs")));
}
