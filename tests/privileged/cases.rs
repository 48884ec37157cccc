//! The privileged scenarios. Each returns Err with what it saw when a check fails.

use std::time::Duration;

use crate::sandbox::{check, eventually, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![
        (
            "converge_then_noop_then_teardown_of_one_pod",
            converge_then_noop_then_teardown_of_one_pod,
        ),
        (
            "restart_adopts_existing_mounts_without_remounting",
            restart_adopts_existing_mounts_without_remounting,
        ),
        (
            "daemon_follows_manifest_changes",
            daemon_follows_manifest_changes,
        ),
        (
            "malformed_manifest_fails_and_unmounts_nothing",
            malformed_manifest_fails_and_unmounts_nothing,
        ),
        (
            "symlink_at_volume_path_is_never_mounted_over",
            symlink_at_volume_path_is_never_mounted_over,
        ),
        (
            "read_only_claim_gives_a_read_only_bind",
            read_only_claim_gives_a_read_only_bind,
        ),
        ("a_failing_volume_fails_alone", a_failing_volume_fails_alone),
        (
            "teardown_unmounts_propagated_submounts_without_touching_the_host",
            teardown_unmounts_propagated_submounts_without_touching_the_host,
        ),
    ]
}

const STORAGE: &str = r#"
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: local}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-large}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: local
  local: {path: BASE/disks/large}
  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-a]}]}]}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-small}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: local
  local: {path: BASE/disks/small}
  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-a]}]}]}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], storageClassName: local, resources: {requests: {storage: 500Mi}}}
"#;

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, uid: web-uid}
spec:
  nodeName: node-a
  containers: [{name: c, image: busybox}]
  volumes:
  - {name: cache, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
  - {name: logs, hostPath: {path: BASE/host/logs, type: Directory}}
  - {name: data, persistentVolumeClaim: {claimName: data}}
"#;

const KEEP_AND_OTHER_NODE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: keep, uid: keep-uid}
spec: {nodeName: node-a, containers: [], volumes: [{name: tmp, emptyDir: {medium: Memory, sizeLimit: 1Mi}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, uid: remote-uid}
spec: {nodeName: node-b, containers: [], volumes: [{name: tmp, emptyDir: {medium: Memory}}]}
"#;

fn standard() -> Sandbox {
    let sb = Sandbox::new(&format!("{:x}", fastrand::u64(..)));
    sb.write("disks/small/marker", "small volume");
    sb.write("disks/large/marker", "large volume");
    sb.write("host/logs/app.log", "host data");
    sb.manifest("storage.yaml", STORAGE);
    sb.manifest("web.yaml", WEB);
    sb.manifest("keep.yaml", KEEP_AND_OTHER_NODE);
    sb
}

fn read(path: std::path::PathBuf) -> Result<String, String> {
    std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))
}

fn converge_then_noop_then_teardown_of_one_pod() -> TestResult {
    let sb = standard();
    sb.converge()?;
    let mounts = sb.mounts();
    let points: Vec<_> = mounts.iter().map(|m| m.mount_point.clone()).collect();
    let want = vec![
        sb.volume("keep-uid", "empty-dir", "tmp"),
        sb.volume("web-uid", "empty-dir", "cache"),
        sb.volume("web-uid", "host-path", "logs"),
        sb.volume("web-uid", "local-volume", "pv-small"),
    ];
    check(points == want, || {
        format!("mounts {points:#?}, want {want:#?}")
    })?;
    let cache = &mounts[1];
    let size = cache.super_options.get("size").cloned().flatten();
    check(
        cache.fs_type == "tmpfs" && size.as_deref() == Some("65536k"),
        || format!("cache mount {cache:?}"),
    )?;
    check(
        read(sb.volume("web-uid", "host-path", "logs").join("app.log"))? == "host data",
        || "hostPath bind shows other data".into(),
    )?;
    check(
        read(
            sb.volume("web-uid", "local-volume", "pv-small")
                .join("marker"),
        )? == "small volume",
        || "the claim did not get the smallest fitting PV".into(),
    )?;

    sb.converge()?;
    let again = sb.mounts();
    check(again == mounts, || {
        format!("a second run changed the mount table:\nbefore {mounts:#?}\nafter {again:#?}")
    })?;

    std::fs::write(
        sb.volume("web-uid", "local-volume", "pv-small")
            .join("written-by-pod"),
        "pod data",
    )
    .unwrap();
    std::fs::remove_file(sb.manifests.join("web.yaml")).unwrap();
    sb.converge()?;
    let after = sb.mounts();
    check(after.len() == 1 && after[0] == mounts[0], || {
        format!("after removing web: {after:#?}")
    })?;
    check(!sb.root.join("pods/web-uid").exists(), || {
        "web's pod directory is still there".into()
    })?;
    check(
        read(sb.path("disks/small/written-by-pod"))? == "pod data",
        || "local volume data lost".into(),
    )?;
    check(read(sb.path("host/logs/app.log"))? == "host data", || {
        "hostPath data lost".into()
    })
}

fn restart_adopts_existing_mounts_without_remounting() -> TestResult {
    let sb = standard();
    sb.converge()?;
    let before = sb.mounts();
    let daemon = sb.daemon();
    let log_path = sb.path("daemon.log");
    let matched = eventually(
        Duration::from_secs(10),
        "the daemon reports the host matches",
        || {
            std::fs::read_to_string(&log_path)
                .is_ok_and(|log| log.contains("host matches the desired state"))
        },
    );
    let during = sb.mounts();
    let log = sb.stop(daemon)?;
    matched.map_err(|e| format!("{e}\n{log}"))?;
    check(during == before, || {
        format!("the daemon remounted adopted volumes:\nbefore {before:#?}\nduring {during:#?}")
    })?;
    check(!log.contains("op done"), || {
        format!("the daemon ran ops on a converged host:\n{log}")
    })?;
    check(!log.contains("block devices changed"), || {
        format!("nothing had failed, so no retry is announced:\n{log}")
    })?;
    check(sb.mounts() == before, || {
        "stopping the daemon changed the mounts".into()
    })
}

fn daemon_follows_manifest_changes() -> TestResult {
    let sb = standard();
    std::fs::remove_file(sb.manifests.join("web.yaml")).unwrap();
    let daemon = sb.daemon();
    let cache = sb.volume("web-uid", "empty-dir", "cache");
    let result = (|| {
        eventually(Duration::from_secs(10), "keep's volume mounted", || {
            sb.mounts().len() == 1
        })?;
        sb.manifest("web.yaml", WEB);
        eventually(
            Duration::from_secs(10),
            "web's volumes mounted after its manifest appeared",
            || sb.mounts().len() == 4,
        )?;
        std::fs::remove_file(sb.manifests.join("web.yaml")).unwrap();
        eventually(
            Duration::from_secs(10),
            "web's pod dir removed after its manifest went",
            || !cache.exists() && !sb.root.join("pods/web-uid").exists(),
        )
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))?;
    check(sb.mounts().len() == 1, || {
        "SIGTERM unmounted something".into()
    })
}

fn malformed_manifest_fails_and_unmounts_nothing() -> TestResult {
    let sb = standard();
    sb.converge()?;
    let before = sb.mounts();
    sb.manifest(
        "web.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [web\n",
    );
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    check(!out.status.success(), || {
        "a malformed manifest must fail the run".into()
    })?;
    check(stderr.contains("web.yaml:"), || {
        format!("the error must name the file and line:\n{stderr}")
    })?;
    check(sb.mounts() == before, || {
        "a malformed manifest unmounted something".into()
    })
}

fn symlink_at_volume_path_is_never_mounted_over() -> TestResult {
    let sb = standard();
    let victim = sb.path("victim");
    std::fs::create_dir_all(&victim).unwrap();
    let cache = sb.volume("web-uid", "empty-dir", "cache");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&victim, &cache).unwrap();
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    check(!out.status.success(), || {
        "the run must report the refused volume".into()
    })?;
    check(stderr.contains("symlink"), || {
        format!("the refusal must say why:\n{stderr}")
    })?;
    check(crate::sandbox::mounts_under(&victim).is_empty(), || {
        "something was mounted through the symlink".into()
    })?;
    check(sb.mounts().len() == 3, || {
        format!("the other volumes must still converge: {:#?}", sb.mounts())
    })
}

fn read_only_claim_gives_a_read_only_bind() -> TestResult {
    let sb = standard();
    sb.manifest(
        "web.yaml",
        &WEB.replace("claimName: data}", "claimName: data, readOnly: true}"),
    );
    // The volume's source is a nosuid,nodev filesystem: the read-only bind must stay so.
    let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
    let source = sb.path("disks/small");
    nix::mount::mount(Some("tmpfs"), &source, Some("tmpfs"), flags, None::<&str>).unwrap();
    sb.converge()?;
    let data = sb.volume("web-uid", "local-volume", "pv-small");
    use nix::sys::statvfs::FsFlags;
    let kept = nix::sys::statvfs::statvfs(&data).unwrap().flags();
    check(
        kept.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV),
        || format!("the read-only bind lost nosuid/nodev: {kept:?}"),
    )?;
    let entry = sb
        .mounts()
        .into_iter()
        .find(|m| m.mount_point == data)
        .ok_or("data not mounted")?;
    check(entry.read_only, || {
        format!("mount is not read-only: {entry:?}")
    })?;
    let write = std::fs::write(data.join("x"), "x");
    check(
        write.as_ref().err().and_then(|e| e.raw_os_error()) == Some(nix::libc::EROFS),
        || format!("write through a read-only bind: {write:?}"),
    )?;
    check(
        std::fs::write(sb.path("disks/small/y"), "y").is_ok(),
        || "the source itself must stay writable".into(),
    )
}

fn a_failing_volume_fails_alone() -> TestResult {
    let sb = standard();
    // The host path is a directory, but the pod asks for a File: Kubernetes' type check fails.
    sb.manifest("web.yaml", &WEB.replace("type: Directory", "type: File"));
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    check(!out.status.success(), || {
        "a failed volume must fail the run".into()
    })?;
    check(
        stderr.contains("logs") && stderr.contains("not a regular file"),
        || format!("the summary must name the volume and why:\n{stderr}"),
    )?;
    check(sb.mounts().len() == 3, || {
        format!("the other volumes must converge: {:#?}", sb.mounts())
    })
}

fn teardown_unmounts_propagated_submounts_without_touching_the_host() -> TestResult {
    let sb = standard();
    // mount --make-shared <base>: the hostPath source now sits in a peer group, as on a
    // systemd host, so host mounts under it propagate into the pod's (rslave) bind.
    nix::mount::mount(
        None::<&str>,
        &sb.base,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    sb.converge()?;
    let host_sub = sb.path("host/logs/sub");
    std::fs::create_dir_all(&host_sub).unwrap();
    // mount -t tmpfs tmpfs <source>/sub, on the "host" side after the pod's bind exists.
    nix::mount::mount(
        Some("tmpfs"),
        &host_sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(host_sub.join("f"), "host submount").unwrap();
    let in_pod = sb.volume("web-uid", "host-path", "logs").join("sub/f");
    check(read(in_pod)? == "host submount", || {
        "the host submount did not propagate into the pod (is the bind rslave?)".into()
    })?;
    std::fs::remove_file(sb.manifests.join("web.yaml")).unwrap();
    sb.converge()?;
    check(!sb.root.join("pods/web-uid").exists(), || {
        format!("web's pod dir remains: {:#?}", sb.mounts())
    })?;
    let host_mounts = crate::sandbox::mounts_under(&host_sub);
    check(host_mounts.len() == 1, || {
        format!("the host's own submount must survive the teardown: {host_mounts:#?}")
    })?;
    check(read(host_sub.join("f"))? == "host submount", || {
        "host submount data lost".into()
    })
}
