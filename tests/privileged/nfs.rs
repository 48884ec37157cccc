//! NFS and hung-mount isolation, with two stand-ins (this kernel has no NFS client):
//! a mount-helper script that records its arguments and then mounts a tmpfs, fails as
//! mount.nfs does, or hangs forever; and a FUSE filesystem that never answers, to hang
//! stat for real.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sandbox::{check, eventually, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![
        (
            "nfs_mounts_go_through_the_helper_with_exact_arguments",
            nfs_mounts_go_through_the_helper_with_exact_arguments,
        ),
        (
            "a_failing_nfs_server_fails_its_volume_alone",
            a_failing_nfs_server_fails_its_volume_alone,
        ),
        (
            "a_hung_nfs_server_stalls_nothing_else",
            a_hung_nfs_server_stalls_nothing_else,
        ),
        (
            "a_daemon_stopped_while_a_mount_helper_hangs_leaves_no_helper_running",
            a_daemon_stopped_while_a_mount_helper_hangs_leaves_no_helper_running,
        ),
        (
            "a_hung_filesystem_under_a_host_path_stalls_nothing_else",
            a_hung_filesystem_under_a_host_path_stalls_nothing_else,
        ),
        (
            "sigterm_with_a_hung_nfs_mount_in_flight_exits_0_within_a_second",
            sigterm_with_a_hung_nfs_mount_in_flight_exits_0_within_a_second,
        ),
    ]
}

fn sigterm_with_a_hung_nfs_mount_in_flight_exits_0_within_a_second() -> TestResult {
    let sb = Sandbox::new(&format!("nfsterm-{:x}", fastrand::u32(..)));
    let helper = helper(&sb).display().to_string();
    // `stall`: hangs like `hang`, with a child of its own name, which the tests of `hang` count.
    sb.manifest("hung.yaml", &nfs_pod("stuck", "stall1", ""));
    sb.manifest("fine.yaml", &nfs_pod("fine", "good1", SCRATCH));
    // The hung mount is well within its deadline when the signal comes: it is in flight.
    let mut daemon = sb.daemon_with(&["--mounter-path", &helper, "--mount-timeout", "60s"]);
    let result = (|| {
        eventually(
            Duration::from_secs(10),
            "the other pod mounted while stall1's helper hangs",
            || {
                sb.mounts().len() == 2
                    && calls(&sb)
                        .iter()
                        .any(|c| c.iter().any(|a| a.starts_with("stall1")))
            },
        )?;
        let signalled = Instant::now();
        // kill -TERM <pid>
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                break status;
            }
            if signalled.elapsed() > Duration::from_secs(10) {
                let _ = daemon.kill();
                return Err("still running 10 s after SIGTERM".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = signalled.elapsed();
        eprintln!("SIGTERM with a hung NFS mount in flight: exited {status} after {took:?}");
        check(status.success() && took < Duration::from_secs(1), || {
            format!("exited {status} after {took:?}")
        })?;
        check(sb.mounts().len() == 2, || {
            "a stop must unmount nothing".into()
        })
    })();
    let _ = daemon.kill();
    // The helper stand-in outlives the daemon, as a real mount helper would: ended here.
    let _ = Command::new("pkill").args(["-f", "sleep 100002"]).status();
    let log = sb.daemon_log();
    result.map_err(|e| format!("{e}\n{log}"))
}

/// Writes the mount-helper stand-in; its log has one line per call (one append each, so
/// concurrent calls do not interleave), arguments tab-separated.
fn helper(sb: &Sandbox) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
line=
for arg in "$@"; do line="$line$arg$(printf '\t')"; done
# One write per call: helpers run concurrently and must not interleave their lines.
printf '%s\n' "$line" >> {log}
eval source=\${{$(($#-1))}}
eval target=\${{$#}}
case "$source" in
  good*) exec mount -t tmpfs -o size=1m "$source" "$target" ;;
  bad*) echo "mount.nfs: access denied by server while mounting $source" >&2; exit 32 ;;
  hang*) sleep 100001 & wait ;;
  stall*) sleep 100002 & wait ;;
  hold*) sleep 100003 & wait ;;
esac
exit 1
"#,
        log = sb.path("helper.log").display()
    );
    let path = sb.path("mount-helper");
    std::fs::write(&path, script).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&path).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn calls(sb: &Sandbox) -> Vec<Vec<String>> {
    let log = std::fs::read_to_string(sb.path("helper.log")).unwrap_or_default();
    log.lines()
        .map(|l| {
            l.trim_end_matches('\t')
                .split('\t')
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn nfs_pod(name: &str, server: &str, extra: &str) -> String {
    format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: {name}-uid}}\nspec:\n  containers: []\n  volumes:\n  - {{name: share, nfs: {{server: {server}, path: /exports/{name}}}}}\n{extra}")
}

const SCRATCH: &str = "  - {name: scratch, emptyDir: {medium: Memory}}\n";

fn once(sb: &Sandbox, helper: &Path) -> std::process::Output {
    sb.volumed(&[
        "run",
        "--once",
        "--mounter-path",
        &helper.display().to_string(),
        "--mount-timeout",
        "3s",
        "--op-timeout",
        "2s",
    ])
}

fn nfs_mounts_go_through_the_helper_with_exact_arguments() -> TestResult {
    let sb = Sandbox::new(&format!("nfs-{:x}", fastrand::u32(..)));
    let helper = helper(&sb);
    sb.manifest("pv.yaml", "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: pv-nfs}\nspec:\n  capacity: {storage: 1Gi}\n  accessModes: [ReadWriteMany]\n  mountOptions: [nfsvers=4.1, hard]\n  nfs: {server: good1, path: /exports/shared}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: shared}\nspec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}\n");
    sb.manifest(
        "pod.yaml",
        &(nfs_pod("web", "good2", "")
            + "  - {name: data, persistentVolumeClaim: {claimName: shared, readOnly: true}}\n"),
    );
    let out = once(&sb, &helper);
    check(out.status.success(), || {
        format!("run --once: {}", text(&out.stderr))
    })?;
    let pv_target = sb.volume("web-uid", "nfs", "pv-nfs").display().to_string();
    let inline_target = sb.volume("web-uid", "nfs", "share").display().to_string();
    let mut got = calls(&sb);
    got.sort();
    let want = vec![
        vec![
            "-t".to_string(),
            "nfs".into(),
            "-o".into(),
            "nfsvers=4.1,hard,ro".into(),
            "good1:/exports/shared".into(),
            pv_target,
        ],
        vec![
            "-t".to_string(),
            "nfs".into(),
            "good2:/exports/web".into(),
            inline_target,
        ],
    ];
    check(got == want, || {
        format!("helper argv {got:#?}\nwant {want:#?}")
    })?;
    check(sb.mounts().len() == 2, || format!("{:#?}", sb.mounts()))?;
    std::fs::remove_file(sb.manifests.join("pod.yaml")).unwrap();
    let out = once(&sb, &helper);
    check(out.status.success() && sb.mounts().is_empty(), || {
        format!("teardown: {}\n{:#?}", text(&out.stderr), sb.mounts())
    })
}

fn a_failing_nfs_server_fails_its_volume_alone() -> TestResult {
    let sb = Sandbox::new(&format!("nfsbad-{:x}", fastrand::u32(..)));
    let helper = helper(&sb);
    sb.manifest(
        "pods.yaml",
        &(nfs_pod("broken", "bad1", "") + &nfs_pod("fine", "good1", SCRATCH)),
    );
    let out = once(&sb, &helper);
    let stderr = text(&out.stderr);
    check(!out.status.success(), || {
        "a failed NFS mount must fail the run".into()
    })?;
    check(stderr.contains("access denied by server"), || {
        format!("the helper's error must be shown:\n{stderr}")
    })?;
    check(sb.mounts().len() == 2, || {
        format!("the other pod must converge: {:#?}", sb.mounts())
    })
}

/// A daemon with short deadlines and the helper stand-in.
fn daemon(sb: &Sandbox, helper: &Path) -> Child {
    daemon_with(sb, helper, &["--mount-timeout", "3s", "--op-timeout", "1s"])
}

/// A daemon with the helper stand-in and these deadline flags.
fn daemon_with(sb: &Sandbox, helper: &Path, deadlines: &[&str]) -> Child {
    let log = std::fs::File::create(sb.path("daemon.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_volumed"))
        .args(["run", "--manifests"])
        .arg(&sb.manifests)
        .arg("--root-dir")
        .arg(&sb.root)
        .args(["--node-name", "node-a", "--host-path-root"])
        .arg(&sb.base)
        .arg("--mounter-path")
        .arg(helper)
        .args(deadlines)
        // Any free port: test daemons run side by side.
        .env("VOLUMED_HTTP_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `volumed status` must answer within 3 s and show the volume with a stuck/failed reason.
fn status_names(sb: &Sandbox, pod: &str, volume: &str, reason: &str) -> TestResult {
    let started = Instant::now();
    let out = sb.volumed(&["status", "--output", "json"]);
    let took = started.elapsed();
    check(took < Duration::from_secs(3), || {
        format!("status took {took:?}")
    })?;
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("status json: {e}: {}", text(&out.stderr)))?;
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["pod"] == pod && r["volume"] == volume))
        .ok_or(format!("{pod} {volume} not in status"))?;
    check(
        row["state"] == "failed" && row["reason"].as_str().is_some_and(|r| r.contains(reason)),
        || format!("status row {row}"),
    )
}

fn stop_quickly(sb: &Sandbox, daemon: Child) -> Result<String, String> {
    let started = Instant::now();
    let log = sb.stop(daemon)?;
    let took = started.elapsed();
    check(took < Duration::from_secs(5), || {
        format!("SIGTERM took {took:?}\n{log}")
    })?;
    Ok(log)
}

fn a_hung_nfs_server_stalls_nothing_else() -> TestResult {
    let sb = Sandbox::new(&format!("nfshang-{:x}", fastrand::u32(..)));
    let helper = helper(&sb);
    sb.manifest("hung.yaml", &nfs_pod("stuck", "hang1", ""));
    sb.manifest(
        "fine.yaml",
        &(nfs_pod("fine", "good1", SCRATCH) + &nfs_pod("other", "good2", "")),
    );
    let daemon = daemon(&sb, &helper);
    let result = (|| {
        eventually(
            Duration::from_secs(5),
            "other pods converge while hang1 hangs",
            || sb.mounts().len() == 3,
        )?;
        // Reported as killed after its deadline (or, on a retry, as still running).
        eventually(Duration::from_secs(8), "the hung mount is reported", || {
            status_names(&sb, "default/stuck", "share", "the mount helper").is_ok()
        })?;
        // The endpoint answers at once while the mount hangs, and counts what failed.
        for path in ["/healthz", "/metrics"] {
            let (status, body, took) = sb.http_get(path)?;
            check(status == 200 && took < Duration::from_secs(1), || {
                format!("{path} while a mount hangs: {status} after {took:?}")
            })?;
            if path == "/metrics" {
                let failed = crate::ops::samples(&body)?
                    .get(r#"storage_operation_duration_seconds_count{operation_name="set-up",volume_plugin="kubernetes.io/nfs",status="fail-unknown"}"#)
                    .copied()
                    .unwrap_or(0.0);
                check(failed >= 1.0, || {
                    format!("no failed NFS set-up counted\n{body}")
                })?;
            }
        }
        // Both the hung pod and the others go: the hung one must not hold up the others.
        std::fs::remove_file(sb.manifests.join("fine.yaml")).unwrap();
        std::fs::remove_file(sb.manifests.join("hung.yaml")).unwrap();
        eventually(
            Duration::from_secs(5),
            "the other pods are torn down while hang1 hangs",
            || sb.mounts().is_empty() && !sb.root.join("pods/fine-uid").exists(),
        )
    })();
    let log = stop_quickly(&sb, daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))?;
    // Like mount → mount.nfs, the stand-in leaves a child holding its output: killing the
    // helper's process group must take that child too.
    let leftover = running("sleep 100001");
    check(leftover.is_empty(), || {
        format!("helper children left running: {leftover}")
    })
}

/// The pids of the processes whose command line has `pattern` (pgrep -f).
fn running(pattern: &str) -> String {
    let found = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    text(&found.stdout).trim().to_string()
}

/// The child of a helper for a `hold*` server.
fn held_helpers() -> String {
    running("sleep 100003")
}

/// Stopped while a helper is still within its deadline (a server that never answers), the
/// daemon kills the helper's group: nothing of it outlives the daemon.
fn a_daemon_stopped_while_a_mount_helper_hangs_leaves_no_helper_running() -> TestResult {
    let sb = Sandbox::new(&format!("nfshold-{:x}", fastrand::u32(..)));
    let helper = helper(&sb);
    sb.manifest("held.yaml", &nfs_pod("held", "hold1", ""));
    // Far past the test: the helper is running when the daemon stops.
    let daemon = daemon_with(&sb, &helper, &["--mount-timeout", "600s"]);
    let running = eventually(Duration::from_secs(10), "the helper for hold1 runs", || {
        !held_helpers().is_empty()
    });
    let log = stop_quickly(&sb, daemon)?;
    running.map_err(|e| format!("{e}\n{log}"))?;
    eventually(
        Duration::from_secs(2),
        "the helper's group is gone after the daemon stopped",
        || held_helpers().is_empty(),
    )
    .map_err(|e| format!("{e}: {}\n{log}", held_helpers()))
}

/// A FUSE filesystem that never answers a lookup or getattr: anything that stats below it hangs.
struct HungFs {
    parked: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
}

impl fuser::Filesystem for HungFs {
    fn lookup(
        &self,
        _req: &fuser::Request,
        _parent: fuser::INodeNo,
        _name: &std::ffi::OsStr,
        reply: fuser::ReplyEntry,
    ) {
        self.parked.lock().unwrap().push(Box::new(reply));
    }

    fn getattr(
        &self,
        _req: &fuser::Request,
        _ino: fuser::INodeNo,
        _fh: Option<fuser::FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        self.parked.lock().unwrap().push(Box::new(reply));
    }
}

/// Aborts the FUSE connection (every hung call returns) and lets the mount go.
fn abort_fuse(mountpoint: &Path) {
    let entry = crate::sandbox::mounts_under(mountpoint)
        .into_iter()
        .find(|m| m.mount_point == mountpoint);
    if let Some(minor) = entry.and_then(|m| m.device.split(':').nth(1).map(str::to_string)) {
        let _ = nix::mount::mount(
            Some("fusectl"),
            "/sys/fs/fuse/connections",
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
    }
    let _ = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH);
}

fn a_hung_filesystem_under_a_host_path_stalls_nothing_else() -> TestResult {
    let sb = Sandbox::new(&format!("fuse-{:x}", fastrand::u32(..)));
    let helper = helper(&sb);
    let fuse = sb.path("fuse");
    std::fs::create_dir_all(&fuse).unwrap();
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("volumed-hung".into())];
    let session = fuser::spawn_mount(
        HungFs {
            parked: Mutex::new(Vec::new()),
        },
        &fuse,
        &config,
    )
    .map_err(|e| format!("FUSE mount: {e}"))?;
    let hung_pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: stuck, uid: stuck-uid}}\nspec: {{containers: [], volumes: [{{name: data, hostPath: {{path: {}/data}}}}]}}\n", fuse.display());
    sb.manifest("hung.yaml", &hung_pod);
    sb.manifest("fine.yaml", &nfs_pod("fine", "good1", SCRATCH));
    let daemon = daemon(&sb, &helper);
    let result = (|| {
        eventually(
            Duration::from_secs(5),
            "the other pod converges while a stat hangs",
            || sb.mounts().len() == 2,
        )?;
        eventually(
            Duration::from_secs(5),
            "the hung volume is reported stuck",
            || status_names(&sb, "default/stuck", "data", "stuck").is_ok(),
        )?;
        status_names(&sb, "default/stuck", "data", "stuck")
    })();
    // SIGTERM: the daemon's shutdown must finish promptly. Its thread stuck in the FUSE call
    // cannot be reaped until the filesystem answers (the kernel waits uninterruptibly for a
    // request a FUSE server already read), so the connection is aborted afterwards.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let log_path = sb.path("daemon.log");
    let stopped = eventually(
        Duration::from_secs(5),
        "the daemon finishes its shutdown after SIGTERM",
        || std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("volumed stopped")),
    );
    abort_fuse(&fuse);
    drop(session);
    let log = sb.stop(daemon).unwrap_or_else(|e| e);
    stopped.map_err(|e| format!("{e}\n{log}"))?;
    result.map_err(|e| format!("{e}\n{log}"))
}
