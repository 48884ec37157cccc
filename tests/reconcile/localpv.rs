//! File mode with the local-PV discoverer: a disk mounted under a class's mount_dir becomes a
//! PV the binder uses in the same read.

use volumed::localpv::config::ConfigFile;
use volumed::reconcile::status::VolumeState;

use crate::World;

#[tokio::test]
async fn a_claim_binds_to_a_discovered_disk_and_its_pod_is_mounted_in_the_same_run() {
    let mut world = World::new();
    for name in ["storage.yaml", "web.yaml", "other.yaml"] {
        world.remove(name);
    }
    let disks = world.base.join("mnt/disks");
    let config = format!(
        "[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"{}\"\n",
        disks.display()
    );
    world.settings.local_pv = ConfigFile::parse(&config).unwrap().local_pv;
    // A disk mounted there (the fake mount table says so), and a directory that is not one.
    world.mounter.adopt(&disks.join("vol1"), "ext4");
    std::fs::create_dir_all(disks.join("plain")).unwrap();
    world.write(
        "db.yaml",
        r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast-disks}
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {storageClassName: fast-disks, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Mi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: db, uid: db-uid}
spec:
  nodeName: node-a
  containers: []
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
"#,
    );
    let report = world.run_once().await;
    assert!(
        report.converged(),
        "{:#?}\n{:#?}",
        report.rows,
        report.desired.problems
    );
    let pv = volumed::localpv::discover::pv_name("node-a", &disks.join("vol1"), "fast-disks");
    let row = report
        .rows
        .iter()
        .find(|r| r.volume == "data")
        .expect("a row for the claim");
    assert_eq!(row.state, VolumeState::Mounted);
    let target = world.volume("db-uid", "local-volume", &pv);
    let table = world.mounter.table();
    let bind = table
        .iter()
        .find(|m| m.mount_point == target)
        .unwrap_or_else(|| panic!("the discovered PV {pv} is bound into the pod: {table:#?}"));
    assert_eq!(bind.root, disks.join("vol1").display().to_string());
    assert!(
        report
            .desired
            .warnings
            .iter()
            .any(|w| w.contains("plain") && w.contains("not a mount point")),
        "the skipped directory is reported: {:?}",
        report.desired.warnings
    );
    let record =
        std::fs::read_to_string(world.settings.root_dir.join("state/bindings.json")).unwrap();
    assert!(record.contains(&pv), "the binding is recorded: {record}");
}
