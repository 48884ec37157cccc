//! Operations: the daemon's health, readiness, metrics and status endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::sandbox::{check, eventually, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![
        (
            "the_endpoint_serves_health_readiness_metrics_and_status_of_what_it_mounted",
            the_endpoint_serves_health_readiness_metrics_and_status_of_what_it_mounted,
        ),
        (
            "systemd_hears_ready_after_the_first_reconcile_then_status_and_watchdog_pings",
            systemd_hears_ready_after_the_first_reconcile_then_status_and_watchdog_pings,
        ),
        (
            "a_daemon_waits_for_a_missing_manifest_directory_then_works_on_it",
            a_daemon_waits_for_a_missing_manifest_directory_then_works_on_it,
        ),
        (
            "a_private_root_dir_or_mount_dir_is_refused_with_what_to_change",
            a_private_root_dir_or_mount_dir_is_refused_with_what_to_change,
        ),
        (
            "volume_stats_per_claim_follow_what_is_written",
            volume_stats_per_claim_follow_what_is_written,
        ),
        (
            "mounts_elsewhere_cost_no_mount_table_read_and_each_pod_mount_change_is_seen",
            mounts_elsewhere_cost_no_mount_table_read_and_each_pod_mount_change_is_seen,
        ),
        (
            "the_resync_reads_again_every_mount_below_the_root_dir_a_remount_included",
            the_resync_reads_again_every_mount_below_the_root_dir_a_remount_included,
        ),
    ]
}

/// On this kernel (fanotify mount events), the watcher reads single mounts: fifty mounts made
/// and removed outside the root dir leave the mountinfo read count where it was, and a pod
/// volume unmounted from outside is seen (a detach event) and mounted again.
fn mounts_elsewhere_cost_no_mount_table_read_and_each_pod_mount_change_is_seen() -> TestResult {
    let sb = Sandbox::new(&format!("events-{:x}", fastrand::u32(..)));
    sb.manifest("web.yaml", PODS);
    let daemon = sb.daemon();
    let elsewhere = sb.path("elsewhere");
    let result = (|| {
        eventually(Duration::from_secs(20), "/readyz answers 200", || {
            sb.http_get("/readyz")
                .is_ok_and(|(status, _, _)| status == 200)
        })?;
        let reads = || -> Result<f64, String> {
            let (_, body, _) = sb.http_get("/metrics")?;
            samples(&body)?
                .get("volumed_mount_table_reads_total")
                .copied()
                .ok_or_else(|| format!("no volumed_mount_table_reads_total in\n{body}"))
        };
        let before = reads()?;
        for i in 0..50 {
            let at = elsewhere.join(i.to_string());
            std::fs::create_dir_all(&at).map_err(|e| e.to_string())?;
            nix::mount::mount(
                Some("tmpfs"),
                &at,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=1m"),
            )
            .map_err(|e| format!("mount on {}: {e}", at.display()))?;
        }
        for i in 0..50 {
            nix::mount::umount(&elsewhere.join(i.to_string())).map_err(|e| e.to_string())?;
        }
        let cache = sb.volume("web-uid", "empty-dir", "cache");
        nix::mount::umount(&cache).map_err(|e| format!("unmounting {}: {e}", cache.display()))?;
        eventually(
            Duration::from_secs(20),
            "the volume unmounted from outside is mounted again",
            || sb.mounts().iter().any(|m| m.mount_point == cache),
        )?;
        let after = reads()?;
        check(after == before, || {
            format!(
                "mountinfo was read {} times for 100 mount changes elsewhere and one of ours",
                after - before
            )
        })
    })();
    for i in 0..50 {
        let _ = nix::mount::umount(&elsewhere.join(i.to_string()));
    }
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))
}

/// Mount events tell of mounts coming and going, not of a remount (the id stays): the
/// watcher's resync, which reads no mount outside the root dir again, still reads every one
/// below it, so a mount made read-only from outside shows in its table.
fn the_resync_reads_again_every_mount_below_the_root_dir_a_remount_included() -> TestResult {
    use nix::mount::{mount, umount, MsFlags};
    use volumed::actual::watch::MountWatch;
    let sb = Sandbox::new(&format!("resync-{:x}", fastrand::u32(..)));
    let volume = "pods/u1/volumes/kubernetes.io~empty-dir/cache";
    std::fs::create_dir_all(sb.path("root").join(volume)).map_err(|e| e.to_string())?;
    let root = sb.path("root").canonicalize().map_err(|e| e.to_string())?;
    let target = root.join(volume);
    mount(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .map_err(|e| format!("mount on {}: {e}", target.display()))?;
    let result = (|| {
        let watch = MountWatch::spawn(
            std::sync::Arc::new(volumed::host::real::RealMounter::default()),
            root.clone(),
            Duration::from_secs(1),
        )
        .map_err(|e| e.to_string())?;
        let read_only = || {
            let table = watch.tables.borrow();
            let entry = table.entries.iter().find(|m| m.mount_point == target);
            entry.map(|m| m.read_only)
        };
        check(read_only() == Some(false), || {
            format!(
                "the first table has the mount read-write: {:?}",
                read_only()
            )
        })?;
        // mount -o remount,bind,ro <target>: no mount event.
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("remount of {}: {e}", target.display()))?;
        // Well before the tenth resync, which would read every mount anyway.
        eventually(
            Duration::from_secs(5),
            "the table shows the mount read-only after a resync (every 1 s)",
            || read_only() == Some(true),
        )
    })();
    let _ = umount(&target);
    result
}

/// The samples of a Prometheus text exposition: `name{labels}` → value. Every line that is
/// not a comment must be a sample.
pub fn samples(exposition: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut out = BTreeMap::new();
    for line in exposition.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("not a sample: {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|e| format!("{line:?}: the value: {e}"))?;
        out.insert(series.to_string(), value);
    }
    Ok(out)
}

/// `promtool check metrics` (Prometheus's own checker, which scripts/test.sh provides as
/// VOLUMED_PROMTOOL) must accept the exposition: its format and its naming rules.
fn promtool_accepts(exposition: &str) -> TestResult {
    use std::io::Write;
    let tool = std::env::var("VOLUMED_PROMTOOL").map_err(|_| {
        "VOLUMED_PROMTOOL is not set: run scripts/test.sh, which fetches promtool, or point it at one".to_string()
    })?;
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{tool}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    check(out.status.success(), || {
        format!(
            "promtool check metrics: {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, uid: web-uid}
spec:
  nodeName: node-a
  containers: []
  volumes:
  - {name: cache, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
  - {name: scratch, emptyDir: {}}
"#;

fn the_endpoint_serves_health_readiness_metrics_and_status_of_what_it_mounted() -> TestResult {
    let sb = Sandbox::new(&format!("endpoint-{:x}", fastrand::u32(..)));
    sb.manifest("web.yaml", PODS);
    let daemon = sb.daemon();
    let result = (|| {
        eventually(Duration::from_secs(20), "/readyz answers 200", || {
            sb.http_get("/readyz")
                .is_ok_and(|(status, _, _)| status == 200)
        })?;
        let (status, body, took) = sb.http_get("/healthz")?;
        check(status == 200 && body == "ok\n", || {
            format!("/healthz: {status} {body:?}")
        })?;
        eprintln!("/healthz answered in {took:?}");
        let (status, body, _) = sb.http_get("/metrics")?;
        check(status == 200, || format!("/metrics: {status} {body}"))?;
        promtool_accepts(&body)?;
        let metrics = samples(&body)?;
        let value = |series: &str| metrics.get(series).copied();
        for (series, want) in [
            (
                r#"volume_manager_total_volumes{plugin_name="kubernetes.io/empty-dir",state="desired_state_of_world"}"#,
                2.0,
            ),
            (
                r#"volume_manager_total_volumes{plugin_name="kubernetes.io/empty-dir",state="actual_state_of_world"}"#,
                2.0,
            ),
            (
                r#"storage_operation_duration_seconds_count{operation_name="set-up",volume_plugin="kubernetes.io/empty-dir",status="success"}"#,
                2.0,
            ),
            (
                r#"volumed_operations_total{op="set-up",result="done"}"#,
                2.0,
            ),
            ("volumed_source_ready", 1.0),
            ("volumed_stuck_operations", 0.0),
        ] {
            check(value(series) == Some(want), || {
                format!("{series} is {:?}, not {want}\n{body}", value(series))
            })?;
        }
        check(
            value("volumed_sync_passes_total").is_some_and(|v| v >= 1.0)
                && value("volumed_mount_table_reads_total").is_some_and(|v| v >= 1.0)
                && value("volumed_last_complete_snapshot_timestamp_seconds")
                    .is_some_and(|v| v > 1.6e9),
            || format!("passes, reads or the snapshot time missing\n{body}"),
        )?;
        // /status is what `volumed status -o json` prints, and that asks the daemon.
        let (status, body, _) = sb.http_get("/status")?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("/status ({e}): {body}"))?;
        check(status == 200 && answer["complete"] == true, || {
            format!("/status: {body}")
        })?;
        let asked = || -> Result<f64, String> {
            let (_, body, _) = sb.http_get("/metrics")?;
            Ok(samples(&body)?
                .get(r#"volumed_http_requests_total{path="/status"}"#)
                .copied()
                .unwrap_or(0.0))
        };
        let before = asked()?;
        let out = sb.volumed(&["status", "--output", "json"]);
        let after = asked()?;
        check(after == before + 1.0, || {
            format!(
                "`volumed status` did not ask the daemon ({before} then {after} /status requests)"
            )
        })?;
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("status json ({e}): {}", text(&out.stderr)))?;
        check(printed == answer["rows"], || {
            format!(
                "`volumed status` printed {printed}\nthe daemon's /status rows are {}",
                answer["rows"]
            )
        })?;
        let states: Vec<&str> = printed
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["state"].as_str().unwrap_or(""))
            .collect();
        check(states == ["mounted", "mounted"], || {
            format!("states {states:?}")
        })?;
        // Nothing here changes anything, and the unknown is named.
        let (status, body, _) = sb.http_get("/nothing")?;
        check(status == 404 && body.contains("/healthz"), || {
            format!("/nothing: {status} {body}")
        })
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))
}

fn systemd_hears_ready_after_the_first_reconcile_then_status_and_watchdog_pings() -> TestResult {
    let sb = Sandbox::new(&format!("notify-{:x}", fastrand::u32(..)));
    sb.manifest("web.yaml", PODS);
    // The socket systemd would listen on.
    let socket_path = sb.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let socket_arg = socket_path.display().to_string();
    let daemon = sb.daemon_with_env(
        &[],
        &[("NOTIFY_SOCKET", &socket_arg), ("WATCHDOG_USEC", "1000000")],
    );
    let result = (|| {
        let mut buffer = [0u8; 4096];
        let mut next = || -> Result<String, String> {
            let n = socket
                .recv(&mut buffer)
                .map_err(|e| format!("no notify message: {e}"))?;
            Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
        };
        // Before READY=1 only pings and status lines; READY=1 comes with the volumes in place.
        let mut status = String::new();
        loop {
            let message = next()?;
            for line in message.lines() {
                if let Some(now) = line.strip_prefix("STATUS=") {
                    status = now.to_string();
                }
            }
            if message.lines().any(|l| l == "READY=1") {
                break;
            }
            check(
                message
                    .lines()
                    .all(|l| l == "WATCHDOG=1" || l.starts_with("STATUS=")),
                || format!("before READY=1 came {message:?}"),
            )?;
        }
        let mounts = sb.mounts().len();
        check(mounts == 1, || {
            format!("READY=1 came with {mounts} mount(s) in place, not the tmpfs emptyDir")
        })?;
        check(status == "1 pod(s), 2 volume(s) wanted; idle", || {
            format!("the status at READY=1: {status:?}")
        })?;
        // Pings every half of WATCHDOG_USEC while the loop goes round.
        let started = std::time::Instant::now();
        let mut pings = 0;
        while pings < 3 {
            if next()?.trim_end() == "WATCHDOG=1" {
                pings += 1;
            }
        }
        let took = started.elapsed();
        check(took < Duration::from_secs(3), || {
            format!("3 pings took {took:?}")
        })
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))?;
    // The last word before exit.
    let mut buffer = [0u8; 4096];
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut last = String::new();
    while let Ok(n) = socket.recv(&mut buffer) {
        last = String::from_utf8_lossy(&buffer[..n]).trim_end().to_string();
    }
    check(last == "STOPPING=1", || {
        format!("the last message was {last:?}")
    })
}

fn a_daemon_waits_for_a_missing_manifest_directory_then_works_on_it() -> TestResult {
    let sb = Sandbox::new(&format!("waitdir-{:x}", fastrand::u32(..)));
    std::fs::remove_dir(&sb.manifests).unwrap();
    let mut daemon = sb.daemon();
    let result = (|| {
        eventually(Duration::from_secs(10), "the wait is logged", || {
            sb.daemon_log().contains("waiting for it to appear")
        })?;
        check(daemon.try_wait().unwrap().is_none(), || {
            "the daemon exited instead of waiting".into()
        })?;
        std::fs::create_dir(&sb.manifests).unwrap();
        sb.manifest("web.yaml", PODS);
        eventually(Duration::from_secs(10), "the pod's tmpfs mounted", || {
            sb.mounts().len() == 1
        })?;
        let told = sb.daemon_log().matches("waiting for it to appear").count();
        check(told == 1, || format!("the wait was logged {told} times"))
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))
}

fn a_private_root_dir_or_mount_dir_is_refused_with_what_to_change() -> TestResult {
    use nix::mount::{mount, MsFlags};
    let sb = Sandbox::new(&format!("propagation-{:x}", fastrand::u32(..)));
    sb.manifest("web.yaml", PODS);
    // mount -t tmpfs tmpfs <dir> && mount --make-private <dir>
    let private = |dir: &std::path::Path| -> TestResult {
        std::fs::create_dir_all(dir).unwrap();
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=4m"),
        )
        .map_err(|e| format!("mount {}: {e}", dir.display()))?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("make {} private: {e}", dir.display()))
    };
    let root = sb.path("private-root");
    private(&root)?;
    let root_arg = root.join("root").display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_volumed"))
        .args([
            "run",
            "--once",
            "--node-name",
            "node-a",
            "--root-dir",
            &root_arg,
        ])
        .arg("--manifests")
        .arg(&sb.manifests)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    check(
        out.status.code() == Some(2)
            && stderr.contains("is not shared")
            && stderr.contains(&format!("mount --make-rshared {}", root.display()))
            && stderr.contains("mountPropagation: Bidirectional")
            && stderr.contains("set nothing up"),
        || format!("a private root dir: {}\n{stderr}", out.status),
    )?;
    check(
        !root.join("root/pods").exists() && sb.mounts().is_empty(),
        || "something was set up under a refused root dir".into(),
    )?;
    // A mount_dir the host's mounts never reach.
    let disks = sb.path("mnt/private-disks");
    private(&disks)?;
    sb.write(
        "config.toml",
        &format!(
            "[[local_pv.classes]]\nstorage_class = \"fast\"\nhost_dir = \"{}\"\n",
            disks.display()
        ),
    );
    let config = sb.path("config.toml").display().to_string();
    let out = sb.volumed(&["run", "--once", "--config", &config]);
    let stderr = text(&out.stderr);
    check(
        out.status.code() == Some(2)
            && stderr.contains("class fast")
            && stderr.contains("mountPropagation: HostToContainer"),
        || format!("a private mount_dir: {}\n{stderr}", out.status),
    )?;
    // The shared sandbox itself passes, and the flag skips the check.
    let out = sb.volumed(&["run", "--once"]);
    check(out.status.success(), || {
        format!("a shared root: {}", text(&out.stderr))
    })?;
    let out = sb.volumed(&[
        "run",
        "--once",
        "--config",
        &config,
        "--skip-propagation-check",
    ]);
    check(out.status.success(), || {
        format!("--skip-propagation-check: {}", text(&out.stderr))
    })
}

fn volume_stats_per_claim_follow_what_is_written() -> TestResult {
    use nix::mount::{mount, MsFlags};
    let sb = Sandbox::new(&format!("stats-{:x}", fastrand::u32(..)));
    let disk = sb.path("disks/d");
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
    sb.manifest(
        "db.yaml",
        &format!("apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv-d}}\nspec: {{capacity: {{storage: 8Mi}}, accessModes: [ReadWriteOnce], storageClassName: local, local: {{path: {}}}}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: shop}}\nspec: {{accessModes: [ReadWriteOnce], storageClassName: local, resources: {{requests: {{storage: 1Mi}}}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: db, namespace: shop, uid: db-uid}}\nspec: {{nodeName: node-a, containers: [], volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]}}\n", disk.display()),
    );
    let daemon = sb.daemon_with(&["--resync", "1s"]);
    let stat = |name: &str| -> Option<f64> {
        let (_, body, _) = sb.http_get("/metrics").ok()?;
        samples(&body)
            .ok()?
            .get(&format!(
                "kubelet_volume_stats_{name}{{namespace=\"shop\",persistentvolumeclaim=\"data\"}}"
            ))
            .copied()
    };
    let result = (|| {
        eventually(Duration::from_secs(20), "the claim's capacity", || {
            stat("capacity_bytes") == Some(8.0 * 1024.0 * 1024.0)
        })?;
        let volume = sb.volume("db-uid", "local-volume", "pv-d");
        std::fs::write(volume.join("blob"), vec![7u8; 2 << 20]).unwrap();
        eventually(
            Duration::from_secs(20),
            "2 MiB used, 6 MiB available",
            || {
                stat("used_bytes").is_some_and(|u| u >= 2.0 * 1024.0 * 1024.0)
                    && stat("available_bytes").is_some_and(|a| a <= 6.0 * 1024.0 * 1024.0)
            },
        )?;
        check(
            stat("inodes_used").is_some_and(|i| i >= 2.0)
                && stat("inodes").is_some_and(|i| i > 0.0),
            || "no inode counts".into(),
        )?;
        // The claim goes: so do its series.
        std::fs::remove_file(sb.manifests.join("db.yaml")).unwrap();
        eventually(
            Duration::from_secs(20),
            "the claim's series removed",
            || {
                sb.http_get("/metrics")
                    .is_ok_and(|(_, body, _)| !body.contains("persistentvolumeclaim=\"data\""))
            },
        )
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))
}
