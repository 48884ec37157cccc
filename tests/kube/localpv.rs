//! API mode with the local-PV discoverer: discovered disks are created as PVs through the API,
//! and a PV that exists already (anyone's) is left as it is.

use volumed::localpv::config::ConfigFile;
use volumed::localpv::discover::pv_name;

use crate::apiserver::FakeApiServer;
use crate::{cluster, daemon};

#[tokio::test]
async fn discovered_disks_are_created_as_pvs_and_existing_ones_are_left_alone() {
    let server = FakeApiServer::start().await;
    server.apply_yaml("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: fast-disks}\nprovisioner: kubernetes.io/no-provisioner\nreclaimPolicy: Retain\n");
    let node = daemon::start_configured(&server, &[], |settings, base, mounter| {
        let disks = base.join("mnt/disks");
        let config = format!(
            "[local_pv]\nnode_labels_for_pv = [\"disk\"]\n[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"{}\"\n",
            disks.display()
        );
        settings.local_pv = ConfigFile::parse(&config).unwrap().local_pv;
        mounter.adopt(&disks.join("vol1"), "ext4");
        mounter.adopt(&disks.join("vol2"), "ext4");
    });
    let disks = node.base.join("mnt/disks");
    let ours = pv_name("node-a", &disks.join("vol1"), "fast-disks");
    let taken = pv_name("node-a", &disks.join("vol2"), "fast-disks");
    // Someone's PV already has vol2's name: it must stay exactly as it is.
    server.apply_yaml(&format!("apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {taken}, labels: {{owner: someone}}}}\nspec: {{capacity: {{storage: 1Gi}}, hostPath: {{path: /srv/x}}}}\n"));
    let before = server.objects("PersistentVolume");
    cluster(&server, &node.base);
    let find = |name: &str| {
        server
            .objects("PersistentVolume")
            .into_iter()
            .find(|pv| pv["metadata"]["name"] == name)
    };
    node.until("the discovered disk's PV is created", || {
        find(&ours).is_some()
    })
    .await;
    let pv = find(&ours).unwrap();
    let spec = &pv["spec"];
    assert_eq!(
        spec["local"]["path"],
        disks.join("vol1").display().to_string()
    );
    assert_eq!(spec["storageClassName"], "fast-disks");
    assert_eq!(
        spec["persistentVolumeReclaimPolicy"], "Retain",
        "from the StorageClass"
    );
    assert!(
        spec["capacity"]["storage"]
            .as_str()
            .is_some_and(|c| c.ends_with("Gi") || c.ends_with("Mi")),
        "{spec}"
    );
    let terms = &spec["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"];
    assert_eq!(terms[0]["key"], "kubernetes.io/hostname");
    assert_eq!(terms[0]["values"][0], "node-a");
    assert_eq!(
        (&terms[1]["key"], &terms[1]["values"][0]),
        (&"disk".into(), &"ssd".into()),
        "the Node's label is copied"
    );
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "volumed-node-a"
    );
    let foreign = find(&taken).unwrap();
    let was = before
        .iter()
        .find(|pv| pv["metadata"]["name"] == taken.as_str())
        .unwrap();
    assert_eq!(
        foreign["spec"], was["spec"],
        "a PV volumed did not create is never changed"
    );
    assert_eq!(foreign["metadata"]["labels"], was["metadata"]["labels"]);
    node.stop().await;
}

#[tokio::test]
async fn a_released_delete_pv_is_cleaned_deleted_and_published_again_and_retain_is_left_alone() {
    let server = FakeApiServer::start().await;
    server.apply_yaml("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: keep-disks}\nprovisioner: kubernetes.io/no-provisioner\nreclaimPolicy: Retain\n");
    let node = daemon::start_configured(&server, &[], |settings, base, mounter| {
        let config = format!(
            "[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"{0}/mnt/disks\"\n[[local_pv.classes]]\nstorage_class = \"keep-disks\"\nhost_dir = \"{0}/mnt/keep\"\n",
            base.display()
        );
        settings.local_pv = ConfigFile::parse(&config).unwrap().local_pv;
        mounter.adopt(&base.join("mnt/disks/vol1"), "ext4");
        mounter.adopt(&base.join("mnt/keep/vol1"), "ext4");
    });
    cluster(&server, &node.base);
    let disk = node.base.join("mnt/disks/vol1");
    let kept = node.base.join("mnt/keep/vol1");
    let (fast, keep) = (
        pv_name("node-a", &disk, "fast-disks"),
        pv_name("node-a", &kept, "keep-disks"),
    );
    let find = |name: &str| {
        server
            .objects("PersistentVolume")
            .into_iter()
            .find(|pv| pv["metadata"]["name"] == name)
    };
    node.until("both disks are published", || {
        find(&fast).is_some() && find(&keep).is_some()
    })
    .await;
    // A pod used both and left data; a link points out of the disk.
    let outside = node.base.join("outside.txt");
    std::fs::write(&outside, "not on the disk").unwrap();
    for dir in [&disk, &kept] {
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::fs::write(dir.join("sub/deeper/data"), "pod data").unwrap();
        std::fs::write(dir.join("top"), "pod data").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
    }
    // Their claims are deleted: the PV controller marks both Released.
    for name in [&fast, &keep] {
        let mut pv = find(name).unwrap();
        pv["status"] = serde_json::json!({"phase": "Released"});
        pv["spec"]["claimRef"] =
            serde_json::json!({"namespace": "shop", "name": "gone", "uid": "c-gone"});
        server.apply(pv);
    }
    node.until("the Delete PV is cleaned and published again", || {
        find(&fast).is_some_and(|pv| pv["status"]["phase"] != "Released")
    })
    .await;
    let left: Vec<_> = std::fs::read_dir(&disk)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the disk is empty again: {left:?}");
    assert!(disk.is_dir(), "the mount point itself stays");
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "not on the disk",
        "a link is removed, not followed"
    );
    assert!(
        find(&fast).unwrap()["spec"]["claimRef"].is_null(),
        "published afresh, unclaimed"
    );
    // Retain: still Released, its data untouched.
    assert_eq!(find(&keep).unwrap()["status"]["phase"], "Released");
    assert_eq!(
        std::fs::read_to_string(kept.join("sub/deeper/data")).unwrap(),
        "pod data"
    );
    let journal = node.base.join("root/state/localpv-cleanups.json");
    let journal = std::fs::read_to_string(journal).unwrap_or_default();
    assert!(
        !journal.contains(&fast),
        "the finished cleanup left the journal: {journal}"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_released_pv_whose_disk_is_not_mounted_is_not_cleaned() {
    use volumed::host::{MountPoint, Mounter};
    let server = FakeApiServer::start().await;
    let node = daemon::start_configured(&server, &[], |settings, base, mounter| {
        let config = format!(
            "[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"{}/mnt/disks\"\n",
            base.display()
        );
        settings.local_pv = ConfigFile::parse(&config).unwrap().local_pv;
        mounter.adopt(&base.join("mnt/disks/vol1"), "ext4");
    });
    cluster(&server, &node.base);
    let disks = node.base.join("mnt/disks");
    let name = pv_name("node-a", &disks.join("vol1"), "fast-disks");
    let find = || {
        server
            .objects("PersistentVolume")
            .into_iter()
            .find(|pv| pv["metadata"]["name"] == name.as_str())
    };
    node.until("the disk is published", || find().is_some())
        .await;
    // The disk goes away; what is left at its mount point belongs to the filesystem below.
    let mount_point = MountPoint {
        path: disks.join("vol1"),
        parent: std::fs::File::open(&disks).unwrap().into(),
        name: "vol1".into(),
    };
    node.mounter.unmount(&mount_point).unwrap();
    std::fs::write(disks.join("vol1/below"), "the parent filesystem's").unwrap();
    let lists = server.lists("PersistentVolume");
    let mut pv = find().unwrap();
    pv["status"] = serde_json::json!({"phase": "Released"});
    server.apply(pv);
    // Two passes of the publisher (each lists the PVs) since the release.
    node.until("the publisher has looked at the release twice", || {
        server.lists("PersistentVolume") >= lists + 2
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(disks.join("vol1/below")).unwrap(),
        "the parent filesystem's",
        "an unmounted mount point was cleaned"
    );
    assert_eq!(
        find().unwrap()["status"]["phase"],
        "Released",
        "deleted without cleaning"
    );
    // Both are told on the PV: its disk is gone, and its cleanup failed (and why).
    let told = |reason: &str| {
        server
            .events()
            .into_iter()
            .filter(|e| e["reason"] == reason && e["regarding"]["name"] == name.as_str())
            .map(|e| e["note"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    node.until("the Events on the PV", || {
        !told("LocalDiskGone").is_empty() && !told("VolumeCleanupFailed").is_empty()
    })
    .await;
    let failed = told("VolumeCleanupFailed");
    assert!(
        failed.len() == 1 && failed[0].contains("vol1") && failed[0].contains("not"),
        "one Event saying why: {failed:?}"
    );
    assert_eq!(told("LocalDiskGone").len(), 1, "told once");
    let journal = std::fs::read_to_string(node.base.join("root/state/localpv-cleanups.json"))
        .unwrap_or_default();
    assert!(
        journal.contains("last_error"),
        "the journal keeps why, for status: {journal}"
    );
    // The disk comes back: told once more, and the cleanup goes through.
    node.mounter.adopt(&disks.join("vol1"), "ext4");
    node.until("the disk is back and the PV published afresh", || {
        !told("LocalDiskBack").is_empty()
            && find().is_some_and(|pv| pv["status"]["phase"] != "Released")
    })
    .await;
    node.stop().await;
}
