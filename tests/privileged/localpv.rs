//! The local-PV discoverer on real mounts and a real loop device under a test `mount_dir`.

use std::collections::BTreeMap;

use nix::mount::{mount, MsFlags};

use crate::apiserver::FakeApiServer;
use crate::blockdev::Loop;
use crate::sandbox::{check, eventually, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![
        (
            "discover_once_prints_a_pv_per_disk_with_its_capacity_and_skips_the_rest",
            discover_once_prints_a_pv_per_disk_with_its_capacity_and_skips_the_rest,
        ),
        (
            "in_file_mode_a_claim_binds_to_a_discovered_disk_and_is_mounted_in_the_same_run",
            in_file_mode_a_claim_binds_to_a_discovered_disk_and_is_mounted_in_the_same_run,
        ),
        (
            "a_disk_mounted_while_the_daemon_runs_is_published_through_the_api_within_a_second",
            a_disk_mounted_while_the_daemon_runs_is_published_through_the_api_within_a_second,
        ),
        (
            "run_publishes_every_disk_and_released_ones_come_back_clean_and_available",
            run_publishes_every_disk_and_released_ones_come_back_clean_and_available,
        ),
        (
            "a_kill_9_in_the_middle_of_a_cleanup_resumes_it_once_after_the_restart",
            a_kill_9_in_the_middle_of_a_cleanup_resumes_it_once_after_the_restart,
        ),
        (
            "in_file_mode_a_deleted_claims_disk_is_cleaned_or_kept_released_until_volumed_release",
            in_file_mode_a_deleted_claims_disk_is_cleaned_or_kept_released_until_volumed_release,
        ),
    ]
}

/// (name, capacity, path, volume mode, fsType) of each PV in a `kind: List`.
type PvRow = (String, String, String, String, Option<String>);

fn rows(items: &[serde_json::Value]) -> Vec<PvRow> {
    let mut rows: Vec<PvRow> = items
        .iter()
        .map(|pv| {
            let spec = &pv["spec"];
            (
                pv["metadata"]["name"].as_str().unwrap_or("").to_string(),
                spec["capacity"]["storage"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                spec["local"]["path"].as_str().unwrap_or("").to_string(),
                spec["volumeMode"].as_str().unwrap_or("").to_string(),
                spec["local"]["fsType"].as_str().map(String::from),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.2.cmp(&b.2));
    rows
}

fn discover_once_prints_a_pv_per_disk_with_its_capacity_and_skips_the_rest() -> TestResult {
    let sb = Sandbox::new(&format!("localpv-{:x}", fastrand::u32(..)));
    let disks = sb.path("mnt/disks");
    for (name, size) in [("vol1", "16m"), ("vol2", "32m"), ("vol3", "2g")] {
        let dir = disks.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        // mount -t tmpfs -o size=<size> tmpfs <dir>
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))?;
    }
    let device = Loop::new(&sb, "disk0", 64, false);
    std::os::unix::fs::symlink(&device.device, disks.join("disk0")).unwrap();
    std::fs::create_dir_all(disks.join("plain")).unwrap();
    std::fs::write(disks.join("notes.txt"), "not a disk").unwrap();
    sb.write(
        "config.toml",
        "[local_pv]\npv_labels = { team = \"storage\" }\n[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"BASE/mnt/disks\"\n",
    );
    let config = sb.path("config.toml").display().to_string();
    let discover = |output: &str, node: &str| {
        sb.volumed_bare(
            &[
                "discover", "--once", "--output", output, "--config", &config,
            ],
            node,
        )
    };

    let out = discover("json", "node-a");
    let stderr = text(&out.stderr);
    check(out.status.success(), || {
        format!("discover failed ({}): {stderr}", out.status)
    })?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("stdout is not JSON ({e}): {}", text(&out.stdout)))?;
    check(list["kind"] == "List", || format!("not a List: {list}"))?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let found = rows(&items);
    let path = |name: &str| disks.join(name).display().to_string();
    let want: Vec<(String, String, String, Option<String>)> = vec![
        (
            "64Mi".into(),
            path("disk0"),
            "Filesystem".into(),
            Some("ext4".into()),
        ),
        ("16Mi".into(), path("vol1"), "Filesystem".into(), None),
        ("32Mi".into(), path("vol2"), "Filesystem".into(), None),
        ("2Gi".into(), path("vol3"), "Filesystem".into(), None),
    ];
    let got: Vec<_> = found
        .iter()
        .map(|(_, c, p, m, f)| (c.clone(), p.clone(), m.clone(), f.clone()))
        .collect();
    check(got == want, || format!("PVs {got:#?}, wanted {want:#?}"))?;
    for pv in &items {
        let affinity =
            &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
        check(
            affinity["key"] == "kubernetes.io/hostname" && affinity["values"][0] == "node-a",
            || format!("node affinity: {affinity}"),
        )?;
        check(pv["metadata"]["labels"]["team"] == "storage", || {
            format!("labels: {}", pv["metadata"])
        })?;
    }
    for skipped in ["plain", "notes.txt"] {
        check(
            stderr.contains(&format!("skipped {}", path(skipped))),
            || format!("{skipped} is not reported as skipped: {stderr}"),
        )?;
    }

    // The same names on every run, in YAML too; another node's disks get other names.
    let yaml = discover("yaml", "node-a");
    check(yaml.status.success(), || text(&yaml.stderr))?;
    let docs: Vec<serde_json::Value> = text(&yaml.stdout)
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).map_err(|e| format!("YAML document: {e}: {d}")))
        .collect::<Result<_, _>>()?;
    let names = |rows: &[PvRow]| -> BTreeMap<String, String> {
        rows.iter().map(|r| (r.2.clone(), r.0.clone())).collect()
    };
    check(names(&rows(&docs)) == names(&found), || {
        format!(
            "names changed between runs: {:?} vs {:?}",
            names(&rows(&docs)),
            names(&found)
        )
    })?;
    let elsewhere = discover("json", "node-b");
    let other: serde_json::Value =
        serde_json::from_slice(&elsewhere.stdout).map_err(|e| e.to_string())?;
    let other = names(&rows(
        other["items"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    ));
    check(
        other.len() == 4
            && other
                .values()
                .all(|n| !names(&found).values().any(|m| m == n)),
        || {
            format!(
                "node-b's names {other:?} repeat node-a's {:?}",
                names(&found)
            )
        },
    )?;
    check(
        !sb.root.join("state").exists()
            || std::fs::read_dir(sb.root.join("state"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0,
        || "discover --once wrote state".into(),
    )
}

fn in_file_mode_a_claim_binds_to_a_discovered_disk_and_is_mounted_in_the_same_run() -> TestResult {
    let sb = Sandbox::new(&format!("localpv-run-{:x}", fastrand::u32(..)));
    let disk = sb.path("mnt/disks/vol1");
    std::fs::create_dir_all(&disk).unwrap();
    // mount -t tmpfs -o size=8m tmpfs <disk>
    mount(
        Some("tmpfs"),
        &disk,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=8m"),
    )
    .map_err(|e| format!("mount tmpfs: {e}"))?;
    std::fs::write(disk.join("data"), "on the disk").unwrap();
    sb.write(
        "config.toml",
        "[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"BASE/mnt/disks\"\n",
    );
    sb.manifest(
        "db.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {storageClassName: fast-disks, accessModes: [ReadWriteOnce], resources: {requests: {storage: 4Mi}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, uid: db-uid}\nspec: {nodeName: node-a, containers: [], volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]}\n",
    );
    let config = sb.path("config.toml").display().to_string();
    let out = sb.volumed(&["run", "--once", "--config", &config]);
    check(out.status.success(), || {
        format!(
            "run --once: {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    })?;
    let pv = volumed::localpv::discover::pv_name("node-a", &disk, "fast-disks");
    let volume = sb.volume("db-uid", "local-volume", &pv);
    let seen = std::fs::read_to_string(volume.join("data")).unwrap_or_default();
    check(seen == "on the disk", || {
        format!(
            "the pod's volume {} does not show the disk (read {seen:?})",
            volume.display()
        )
    })?;
    // The claim and its pod go: one more `run --once` tears the pod down, then cleans the
    // released disk (policy Delete) and makes it available. Not while the directory is
    // empty (a filesystem not mounted yet?): that releases nothing.
    std::fs::remove_file(sb.manifests.join("db.yaml")).unwrap();
    let out = sb.volumed(&["run", "--once", "--config", &config]);
    check(
        out.status.success()
            && std::fs::read_to_string(disk.join("data")).is_ok_and(|d| d == "on the disk"),
        || {
            format!(
                "run --once on an empty directory: {}\n{}",
                out.status,
                text(&out.stderr)
            )
        },
    )?;
    sb.manifest(
        "class.yaml",
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: fast-disks}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n",
    );
    let out = sb.volumed(&["run", "--once", "--config", &config]);
    check(out.status.success(), || {
        format!(
            "second run --once: {}
{}",
            out.status,
            text(&out.stderr)
        )
    })?;
    let left: Vec<_> = std::fs::read_dir(&disk)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    check(left.is_empty(), || {
        format!(
            "the released disk still holds {left:?}\n{}",
            text(&out.stderr)
        )
    })?;
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.root.join("state/bindings.json")).unwrap())
            .unwrap();
    check(
        record["bindings"].as_object().is_some_and(|b| b.is_empty())
            && record.get("released").is_none(),
        || format!("the binding record after the cleanup: {record}"),
    )
}

fn a_disk_mounted_while_the_daemon_runs_is_published_through_the_api_within_a_second() -> TestResult
{
    let sb = Sandbox::new(&format!("localpv-api-{:x}", fastrand::u32(..)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(FakeApiServer::start());
    server.apply_yaml("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n");
    let kubeconfig = server.kubeconfig(&sb.base);
    let disk = sb.path("mnt/disks/vol1");
    std::fs::create_dir_all(&disk).unwrap();
    sb.write(
        "config.toml",
        "[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"BASE/mnt/disks\"\n",
    );
    let config = sb.path("config.toml").display().to_string();
    let daemon = sb.api_daemon_with(&kubeconfig, "node-a", &["--config", &config]);
    let log = sb.path("daemon.log");
    let result = (|| {
        eventually(
            std::time::Duration::from_secs(30),
            "the daemon's first list",
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("every API watch completed its first list")
            },
        )?;
        let name = volumed::localpv::discover::pv_name("node-a", &disk, "fast-disks");
        let published = || {
            server
                .objects("PersistentVolume")
                .iter()
                .any(|pv| pv["metadata"]["name"] == name.as_str())
        };
        check(!published(), || {
            "published before the disk was mounted".into()
        })?;
        let mounted = std::time::Instant::now();
        // mount -t tmpfs -o size=16m tmpfs <disk>
        mount(
            Some("tmpfs"),
            &disk,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=16m"),
        )
        .map_err(|e| format!("mount tmpfs: {e}"))?;
        eventually(
            std::time::Duration::from_secs(10),
            "the new disk's PV",
            published,
        )?;
        let took = mounted.elapsed();
        eprintln!("a disk mounted under the mount_dir was published {took:?} after the mount");
        check(took < std::time::Duration::from_secs(1), || {
            format!("published {took:?} after the mount; the target is 1 s")
        })
    })();
    let log = sb.stop(daemon)?;
    drop(runtime);
    result.map_err(|e| {
        format!(
            "{e}\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        )
    })
}

/// mount -t tmpfs -o size=<size> tmpfs <dir>
fn mount_tmpfs(dir: &std::path::Path, size: &str) -> TestResult {
    std::fs::create_dir_all(dir).unwrap();
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(format!("size={size}").as_str()),
    )
    .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))
}

/// A fake API server with this node, on a runtime of its own.
fn api_server(sb: &Sandbox) -> (tokio::runtime::Runtime, FakeApiServer, std::path::PathBuf) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(FakeApiServer::start());
    server.apply_yaml("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n");
    let kubeconfig = server.kubeconfig(&sb.base);
    (runtime, server, kubeconfig)
}

fn find_pv(server: &FakeApiServer, name: &str) -> Option<serde_json::Value> {
    server
        .objects("PersistentVolume")
        .into_iter()
        .find(|pv| pv["metadata"]["name"] == name)
}

/// Marks a PV Released, as the PV controller does when its claim is deleted.
fn release(server: &FakeApiServer, name: &str) -> Result<String, String> {
    let mut pv = find_pv(server, name).ok_or_else(|| format!("{name} is not published"))?;
    pv["status"] = serde_json::json!({"phase": "Released"});
    pv["spec"]["claimRef"] =
        serde_json::json!({"namespace": "shop", "name": "gone", "uid": "c-gone"});
    let uid = pv["metadata"]["uid"].as_str().unwrap_or("").to_string();
    server.apply(pv);
    Ok(uid)
}

/// True once `name` exists again as a new object (another uid than `old_uid`), unclaimed.
fn published_afresh(server: &FakeApiServer, name: &str, old_uid: &str) -> bool {
    find_pv(server, name).is_some_and(|pv| {
        pv["metadata"]["uid"] != old_uid
            && pv["spec"]["claimRef"].is_null()
            && pv["status"]["phase"] != "Released"
    })
}

fn run_publishes_every_disk_and_released_ones_come_back_clean_and_available() -> TestResult {
    let sb = Sandbox::new(&format!("localpv-e2e-{:x}", fastrand::u32(..)));
    let disks = sb.path("mnt/disks");
    for (name, size) in [("vol1", "16m"), ("vol2", "32m"), ("vol3", "2g")] {
        mount_tmpfs(&disks.join(name), size)?;
    }
    let disk0 = Loop::new(&sb, "disk0", 64, false);
    std::os::unix::fs::symlink(&disk0.device, disks.join("disk0")).unwrap();
    let raw = Loop::new(&sb, "raw0", 8, false);
    std::fs::create_dir_all(sb.path("mnt/raw")).unwrap();
    std::os::unix::fs::symlink(&raw.device, sb.path("mnt/raw/raw0")).unwrap();
    // mkfs.ext4 -q <raw device>: a signature for the cleaner to wipe.
    let mkfs = std::process::Command::new("mkfs.ext4")
        .arg("-q")
        .arg(&raw.device)
        .output()
        .map_err(|e| format!("mkfs.ext4: {e}"))?;
    check(mkfs.status.success(), || text(&mkfs.stderr))?;
    sb.write(
        "config.toml",
        "[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"BASE/mnt/disks\"\n[[local_pv.classes]]\nstorage_class = \"raw-disks\"\nhost_dir = \"BASE/mnt/raw\"\nvolume_mode = \"Block\"\n",
    );
    let (runtime, server, kubeconfig) = api_server(&sb);
    let config = sb.path("config.toml").display().to_string();
    let daemon = sb.api_daemon_with(&kubeconfig, "node-a", &["--config", &config]);
    let result = (|| {
        let name = |dir: &std::path::Path, class: &str| {
            volumed::localpv::discover::pv_name("node-a", dir, class)
        };
        let (vol1, raw0) = (
            name(&disks.join("vol1"), "fast-disks"),
            name(&sb.path("mnt/raw/raw0"), "raw-disks"),
        );
        eventually(
            std::time::Duration::from_secs(30),
            "five PVs through the API",
            || server.objects("PersistentVolume").len() == 5,
        )?;
        let published = server.objects("PersistentVolume");
        let found: Vec<_> = rows(&published)
            .into_iter()
            .map(|(_, c, p, m, f)| (c, p, m, f))
            .collect();
        let path = |rel: &str| sb.path(rel).display().to_string();
        let want = vec![
            (
                "64Mi".to_string(),
                path("mnt/disks/disk0"),
                "Filesystem".to_string(),
                Some("ext4".to_string()),
            ),
            (
                "16Mi".into(),
                path("mnt/disks/vol1"),
                "Filesystem".into(),
                None,
            ),
            (
                "32Mi".into(),
                path("mnt/disks/vol2"),
                "Filesystem".into(),
                None,
            ),
            (
                "2Gi".into(),
                path("mnt/disks/vol3"),
                "Filesystem".into(),
                None,
            ),
            ("8Mi".into(), path("mnt/raw/raw0"), "Block".into(), None),
        ];
        check(found == want, || {
            format!("published {found:#?}, wanted {want:#?}")
        })?;
        for pv in &published {
            let term = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0];
            check(term["matchExpressions"][0]["values"][0] == "node-a", || {
                format!("node affinity: {term}")
            })?;
        }

        // A pod left data on vol1 and a filesystem on raw0; their claims are deleted.
        std::fs::create_dir_all(disks.join("vol1/sub")).unwrap();
        std::fs::write(disks.join("vol1/sub/data"), "pod data").unwrap();
        let (vol1_uid, raw0_uid) = (release(&server, &vol1)?, release(&server, &raw0)?);
        eventually(
            std::time::Duration::from_secs(30),
            "both released PVs published afresh",
            || {
                published_afresh(&server, &vol1, &vol1_uid)
                    && published_afresh(&server, &raw0, &raw0_uid)
            },
        )?;
        let left: Vec<_> = std::fs::read_dir(disks.join("vol1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        check(left.is_empty(), || format!("vol1 still holds {left:?}"))?;
        let signature = raw.blkid("TYPE");
        check(signature.is_empty(), || {
            format!("raw0 still has a {signature} signature after its cleanup")
        })?;
        check(server.objects("PersistentVolume").len() == 5, || {
            format!(
                "{} PVs after the cleanups",
                server.objects("PersistentVolume").len()
            )
        })?;

        // vol2's disk goes away: its PV is kept and told about, and status shows it.
        let vol2 = name(&disks.join("vol2"), "fast-disks");
        std::fs::create_dir_all(disks.join("plain")).unwrap();
        // umount <vol2>
        nix::mount::umount(&disks.join("vol2")).map_err(|e| format!("umount vol2: {e}"))?;
        let told = |reason: &str| {
            server
                .events()
                .iter()
                .filter(|e| e["reason"] == reason && e["regarding"]["name"] == vol2.as_str())
                .count()
        };
        eventually(
            std::time::Duration::from_secs(10),
            "a LocalDiskGone Event on vol2's PV",
            || told("LocalDiskGone") == 1,
        )?;
        check(find_pv(&server, &vol2).is_some(), || {
            "the PV of a vanished disk was deleted".into()
        })?;
        let kubeconfig_arg = kubeconfig.display().to_string();
        let status = |output: &str| {
            sb.volumed_bare(
                &[
                    "status",
                    "--output",
                    output,
                    "--config",
                    &config,
                    "--kubeconfig",
                    &kubeconfig_arg,
                ],
                "node-a",
            )
        };
        let json = status("json");
        check(json.status.success(), || text(&json.stderr))?;
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout)
            .map_err(|e| format!("status JSON ({e}): {}", text(&json.stdout)))?;
        let state_of = |rel: &str| {
            rows.iter()
                .find(|r| r["kind"] == "local-pv" && r["path"] == path(rel).as_str())
                .map(|r| r["state"].as_str().unwrap_or("").to_string())
        };
        for (rel, want) in [
            ("mnt/disks/vol1", "available"),
            ("mnt/disks/vol2", "vanished"),
            ("mnt/disks/plain", "skipped"),
            ("mnt/raw/raw0", "available"),
        ] {
            let got = state_of(rel);
            check(got.as_deref() == Some(want), || {
                format!("status says {got:?} of {rel}, wanted {want}: {rows:#?}")
            })?;
        }
        let table = status("table");
        let table_text = text(&table.stdout);
        check(
            table.status.success()
                && table_text
                    .lines()
                    .any(|l| l.contains(&vol2) && l.contains("local-pv") && l.contains("vanished")),
            || format!("status table:\n{table_text}{}", text(&table.stderr)),
        )?;

        // The disk is back: told once more, and the same PV stands.
        mount_tmpfs(&disks.join("vol2"), "32m")?;
        eventually(
            std::time::Duration::from_secs(10),
            "a LocalDiskBack Event on vol2's PV",
            || told("LocalDiskBack") == 1,
        )?;
        check(told("LocalDiskGone") == 1, || "told twice".into())
    })();
    let log = sb.stop(daemon)?;
    drop(runtime);
    result.map_err(|e| {
        format!(
            "{e}\n{}",
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        )
    })
}

fn a_kill_9_in_the_middle_of_a_cleanup_resumes_it_once_after_the_restart() -> TestResult {
    let sb = Sandbox::new(&format!("localpv-kill-{:x}", fastrand::u32(..)));
    let raw = Loop::new(&sb, "raw0", 8, false);
    std::fs::create_dir_all(sb.path("mnt/raw")).unwrap();
    std::os::unix::fs::symlink(&raw.device, sb.path("mnt/raw/raw0")).unwrap();
    // The cleaner notes each start, waits for the test's go, then notes that it finished.
    sb.write(
        "cleaner.sh",
        "echo start >> BASE/cleaner.log\nwhile [ ! -e BASE/go ]; do sleep 0.02; done\necho done >> BASE/cleaner.log\n",
    );
    sb.write(
        "config.toml",
        "[[local_pv.classes]]\nstorage_class = \"raw-disks\"\nhost_dir = \"BASE/mnt/raw\"\nvolume_mode = \"Block\"\nblock_cleaner = [\"/bin/sh\", \"BASE/cleaner.sh\"]\n",
    );
    let (runtime, server, kubeconfig) = api_server(&sb);
    let config = sb.path("config.toml").display().to_string();
    let name = volumed::localpv::discover::pv_name("node-a", &sb.path("mnt/raw/raw0"), "raw-disks");
    let cleaner_log = || std::fs::read_to_string(sb.path("cleaner.log")).unwrap_or_default();
    let count = |line: &str| cleaner_log().lines().filter(|l| *l == line).count();
    let mut daemon = sb.api_daemon_with(&kubeconfig, "node-a", &["--config", &config]);
    let first = (|| -> Result<String, String> {
        eventually(std::time::Duration::from_secs(30), "the PV", || {
            find_pv(&server, &name).is_some()
        })?;
        let uid = release(&server, &name)?;
        eventually(
            std::time::Duration::from_secs(30),
            "the cleaner's start",
            || count("start") == 1,
        )?;
        Ok(uid)
    })();
    // kill -9 <daemon>, mid-cleanup.
    let _ = daemon.kill();
    let _ = daemon.wait();
    let old_uid = first.map_err(|e| format!("{e}\n{}", sb.daemon_log()))?;
    let daemon = sb.api_daemon_with(&kubeconfig, "node-a", &["--config", &config]);
    let result = (|| {
        eventually(
            std::time::Duration::from_secs(30),
            "the resumed cleanup's start",
            || count("start") == 2,
        )?;
        std::fs::write(sb.path("go"), "").unwrap();
        eventually(
            std::time::Duration::from_secs(30),
            "the PV published afresh",
            || published_afresh(&server, &name, &old_uid),
        )?;
        // A killed run's cleaner does not live on to finish beside the resumed one.
        check(count("done") == 1 && count("start") == 2, || {
            format!("the cleaner ran {:?}", cleaner_log())
        })?;
        check(
            !std::fs::read_to_string(sb.root.join("state/localpv-cleanups.json"))
                .unwrap_or_default()
                .contains(&name),
            || "the finished cleanup is still journaled".into(),
        )
    })();
    let log = sb.stop(daemon)?;
    drop(runtime);
    result.map_err(|e| {
        format!(
            "{e}\n{}",
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        )
    })
}

fn claim_and_pod(claim: &str, class: &str, pod: &str, uid: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {claim}}}\nspec: {{storageClassName: {class}, accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 4Mi}}}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, uid: {uid}}}\nspec: {{nodeName: node-a, containers: [], volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]}}\n"
    )
}

fn in_file_mode_a_deleted_claims_disk_is_cleaned_or_kept_released_until_volumed_release(
) -> TestResult {
    let sb = Sandbox::new(&format!("localpv-release-{:x}", fastrand::u32(..)));
    let (fast, keep) = (sb.path("mnt/fast/a"), sb.path("mnt/keep/b"));
    mount_tmpfs(&fast, "8m")?;
    mount_tmpfs(&keep, "8m")?;
    std::fs::write(fast.join("data"), "old tenant").unwrap();
    std::fs::write(keep.join("data"), "kept data").unwrap();
    sb.write(
        "config.toml",
        "[[local_pv.classes]]\nstorage_class = \"fast-disks\"\nhost_dir = \"BASE/mnt/fast\"\n\n[[local_pv.classes]]\nstorage_class = \"keep-disks\"\nhost_dir = \"BASE/mnt/keep\"\n",
    );
    let config = sb.path("config.toml").display().to_string();
    sb.manifest(
        "classes.yaml",
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: keep-disks}\nprovisioner: kubernetes.io/no-provisioner\nreclaimPolicy: Retain\n",
    );
    sb.manifest(
        "db.yaml",
        &claim_and_pod("data", "fast-disks", "db", "db-uid"),
    );
    sb.manifest(
        "logger.yaml",
        &claim_and_pod("logs", "keep-disks", "logger", "log-uid"),
    );
    let (pv_fast, pv_keep) = (
        volumed::localpv::discover::pv_name("node-a", &fast, "fast-disks"),
        volumed::localpv::discover::pv_name("node-a", &keep, "keep-disks"),
    );
    let shows = |uid: &str, pv: &str, want: &str| {
        std::fs::read_to_string(sb.volume(uid, "local-volume", pv).join("data"))
            .is_ok_and(|seen| seen == want)
    };
    let record = || -> serde_json::Value {
        std::fs::read(sb.root.join("state/bindings.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    let row_of = |pv: &str| -> Result<(String, String, String), String> {
        let out = sb.volumed(&["status", "--output", "json", "--config", &config]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "status JSON ({e}): {}{}",
                text(&out.stdout),
                text(&out.stderr)
            )
        })?;
        let row = rows
            .iter()
            .find(|r| r["kind"] == "local-pv" && r["volume"] == pv)
            .ok_or_else(|| format!("no local-pv row for {pv} in {rows:?}"))?;
        let field = |k: &str| row[k].as_str().unwrap_or("").to_string();
        Ok((field("state"), field("pod"), field("reason")))
    };
    let release_cmd = |pv: &str| sb.volumed(&["release", pv, "--config", &config]);
    let daemon = sb.daemon_with(&["--config", &config]);
    let result = (|| {
        eventually(
            std::time::Duration::from_secs(20),
            "both pods see their disks",
            || shows("db-uid", &pv_fast, "old tenant") && shows("log-uid", &pv_keep, "kept data"),
        )?;
        // A bound volume is not released by hand.
        let refused = release_cmd(&pv_fast);
        check(
            refused.status.code() == Some(1)
                && text(&refused.stderr).contains("bound to claim default/data")
                && refused.stdout.is_empty(),
            || {
                format!(
                    "release of a bound PV: {}\n{}",
                    refused.status,
                    text(&refused.stderr)
                )
            },
        )?;

        // Delete policy: the claim's manifest goes; the disk is emptied and offered again.
        std::fs::remove_file(sb.manifests.join("db.yaml")).unwrap();
        eventually(
            std::time::Duration::from_secs(20),
            "the fast disk cleaned and its release dropped",
            || {
                let empty = std::fs::read_dir(&fast).is_ok_and(|mut d| d.next().is_none());
                let r = record();
                empty && r["bindings"].get("default/data").is_none() && r.get("released").is_none()
            },
        )?;
        let (state, _, reason) = row_of(&pv_fast)?;
        check(state == "available", || {
            format!("fast disk: {state} ({reason})")
        })?;
        // Counted: the cleanup, and each class's disks.
        let (_, body, _) = sb.http_get("/metrics")?;
        let metrics = crate::ops::samples(&body)?;
        for (series, want) in [
            (r#"volumed_local_pv_cleanups_total{result="done"}"#, 1.0),
            (
                r#"volumed_local_pv_disks{storage_class="fast-disks",state="discovered"}"#,
                1.0,
            ),
            (
                r#"volumed_local_pv_disks{storage_class="keep-disks",state="discovered"}"#,
                1.0,
            ),
        ] {
            check(metrics.get(series) == Some(&want), || {
                format!("{series} is {:?}, not {want}", metrics.get(series))
            })?;
        }
        // A new claim gets the cleaned disk: none of the old tenant's data.
        sb.manifest(
            "db2.yaml",
            &claim_and_pod("data2", "fast-disks", "db2", "db2-uid"),
        );
        eventually(
            std::time::Duration::from_secs(20),
            "the new claim's pod mounted on the cleaned disk",
            || {
                record()["bindings"]["default/data2"] == pv_fast.as_str()
                    && std::fs::read_dir(sb.volume("db2-uid", "local-volume", &pv_fast))
                        .is_ok_and(|mut d| d.next().is_none())
                    && sb
                        .mounts()
                        .iter()
                        .any(|m| m.mount_point == sb.volume("db2-uid", "local-volume", &pv_fast))
            },
        )?;

        // Retain: the claim's manifest goes; the disk and its data stay, Released.
        std::fs::remove_file(sb.manifests.join("logger.yaml")).unwrap();
        eventually(
            std::time::Duration::from_secs(20),
            "the kept disk recorded as released",
            || record()["released"][&pv_keep]["claim"] == "default/logs",
        )?;
        let (state, claim, reason) = row_of(&pv_keep)?;
        check(
            state == "released" && claim == "default/logs" && reason.contains("Retain"),
            || format!("kept disk: {state} {claim} ({reason})"),
        )?;
        // The same claim made again does not get it back on its own: once the daemon has read
        // the file (its marker pod's emptyDir is there), the claim is still unbound.
        let marker = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: marker, uid: marker-uid}\nspec: {nodeName: node-a, containers: [], volumes: [{name: scratch, emptyDir: {}}]}\n";
        sb.manifest(
            "logger.yaml",
            &(claim_and_pod("logs", "keep-disks", "logger", "log2-uid") + marker),
        );
        eventually(
            std::time::Duration::from_secs(20),
            "the daemon read the recreated claim (its marker pod's emptyDir)",
            || sb.volume("marker-uid", "empty-dir", "scratch").is_dir(),
        )?;
        check(record()["bindings"].get("default/logs").is_none(), || {
            format!("the recreated claim was bound: {}", record())
        })?;
        let out = sb.volumed(&["status", "--output", "json", "--config", &config]);
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("status JSON ({e}): {}", text(&out.stdout)))?;
        let pending = rows
            .iter()
            .find(|r| r["pod"] == "default/logger")
            .ok_or_else(|| format!("no row for the new logger pod in {rows:?}"))?;
        check(
            pending["state"] == "pending"
                && pending["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("`volumed release` makes it available"),
            || format!("the recreated claim's volume: {pending}"),
        )?;
        check(
            std::fs::read_to_string(keep.join("data")).is_ok_and(|d| d == "kept data"),
            || "the kept disk lost its data".into(),
        )?;
        // Released by hand: the claim binds to it, data and all.
        let released = release_cmd(&pv_keep);
        check(released.status.success(), || {
            format!("release: {}\n{}", released.status, text(&released.stderr))
        })?;
        let said = text(&released.stdout);
        check(
            said.trim()
                == format!("released {pv_keep} (bound to claim default/logs, whose manifest was deleted): it is available to claims again, with its data as it was"),
            || format!("release printed {said:?}"),
        )?;
        eventually(
            std::time::Duration::from_secs(20),
            "the recreated claim's pod sees the kept data",
            || shows("log2-uid", &pv_keep, "kept data"),
        )?;
        // Nothing left to release: refused.
        let again = release_cmd(&pv_keep);
        check(again.status.code() == Some(1), || {
            format!(
                "a second release: {}\n{}",
                again.status,
                text(&again.stderr)
            )
        })?;
        // A manifest the API server would refuse: nothing is released while it is there.
        sb.manifest(
            "bad.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {nodeName: node-a, containers: []}\n",
        );
        let refused = release_cmd(&pv_keep);
        std::fs::remove_file(sb.manifests.join("bad.yaml")).unwrap();
        check(
            refused.status.code() == Some(1)
                && text(&refused.stderr).contains("the manifests have errors"),
            || {
                format!(
                    "release beside a refused manifest: {}\n{}",
                    refused.status,
                    text(&refused.stderr)
                )
            },
        )
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| {
        format!(
            "{e}\n{}",
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        )
    })
}
