//! The data-safety attacks, each replayed against the real binary: a manifest held open
//! half-written, a second instance on one root dir, a node name no manifest uses, symlinks
//! swapped in while volumed walks a pod's paths, and a disk whose only partition table left
//! is its backup GPT.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::blockdev::{expect_refusal, Loop};
use crate::sandbox::{check, eventually, mounts_under, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![
        (
            "a_manifest_held_open_half_written_keeps_its_pods_mounted",
            a_manifest_held_open_half_written_keeps_its_pods_mounted,
        ),
        (
            "a_second_instance_on_the_same_root_dir_refuses_at_once",
            a_second_instance_on_the_same_root_dir_refuses_at_once,
        ),
        (
            "a_node_name_that_no_manifest_uses_tears_nothing_down",
            a_node_name_that_no_manifest_uses_tears_nothing_down,
        ),
        (
            "a_symlink_swapped_in_during_teardown_never_unmounts_outside_the_root_dir",
            a_symlink_swapped_in_during_teardown_never_unmounts_outside_the_root_dir,
        ),
        (
            "a_symlink_swapped_in_during_or_create_never_creates_outside_the_roots",
            a_symlink_swapped_in_during_or_create_never_creates_outside_the_roots,
        ),
        (
            "a_disk_with_only_its_backup_gpt_left_is_not_formatted",
            a_disk_with_only_its_backup_gpt_left_is_not_formatted,
        ),
        (
            "the_state_dir_under_another_name_is_never_bound",
            the_state_dir_under_another_name_is_never_bound,
        ),
    ]
}

/// How many times each race is run: enough that an unguarded walk loses it many times.
const RACE_TRIES: usize = 30;

fn memory_pod(name: &str) -> String {
    format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: {name}-uid}}\nspec: {{nodeName: node-a, containers: [], volumes: [{{name: tmp, emptyDir: {{medium: Memory, sizeLimit: 1Mi}}}}]}}\n")
}

fn tmp_volume(sb: &Sandbox, pod: &str) -> PathBuf {
    sb.volume(&format!("{pod}-uid"), "empty-dir", "tmp")
}

fn is_mounted(sb: &Sandbox, path: &Path) -> bool {
    sb.mounts().iter().any(|m| m.mount_point == path)
}

fn matches_logged(sb: &Sandbox) -> usize {
    sb.daemon_log()
        .matches("host matches the desired state")
        .count()
}

/// Pods `a` and `b` in files of their own, converged by a daemon, with data in b's tmpfs.
fn two_pods_under_a_daemon(sb: &Sandbox) -> Result<std::process::Child, String> {
    sb.manifest("a.yaml", &memory_pod("a"));
    sb.manifest("b.yaml", &memory_pod("b"));
    let daemon = sb.daemon();
    let ready = (|| {
        eventually(Duration::from_secs(10), "a and b mounted", || {
            is_mounted(sb, &tmp_volume(sb, "a")) && is_mounted(sb, &tmp_volume(sb, "b"))
        })?;
        std::fs::write(tmp_volume(sb, "b").join("data"), "b's data").unwrap();
        eventually(
            Duration::from_secs(10),
            "the daemon reports a match",
            || matches_logged(sb) >= 1,
        )
    })();
    match ready {
        Ok(()) => Ok(daemon),
        Err(e) => Err(format!(
            "{e}\n{}",
            sb.stop(daemon).unwrap_or_else(|log| log)
        )),
    }
}

fn a_manifest_held_open_half_written_keeps_its_pods_mounted() -> TestResult {
    let sb = Sandbox::new(&format!("halfopen-{:x}", fastrand::u32(..)));
    let daemon = two_pods_under_a_daemon(&sb)?;
    let result = (|| {
        // ( exec > b.yaml; ...; cat full.yaml ): truncated, held open, not yet written.
        let mut writer = std::fs::File::create(sb.manifests.join("b.yaml")).unwrap();
        // Another file's close-write makes the daemon read the directory, b.yaml included;
        // pod c appearing is the sign that it did and acted on what it read.
        let seen = matches_logged(&sb);
        sb.manifest("a.yaml", &(memory_pod("a") + &memory_pod("c")));
        eventually(Duration::from_secs(10), "c mounted and matched", || {
            is_mounted(&sb, &tmp_volume(&sb, "c")) && matches_logged(&sb) > seen
        })?;
        check(is_mounted(&sb, &tmp_volume(&sb, "b")), || {
            "pod b lost its tmpfs while b.yaml was held open half-written".into()
        })?;
        // The writer finishes: b's pod is as it was, and pod d (new in it) arrives.
        let seen = matches_logged(&sb);
        let full = memory_pod("b") + &memory_pod("d");
        std::io::Write::write_all(&mut writer, full.as_bytes()).unwrap();
        drop(writer);
        eventually(Duration::from_secs(10), "d mounted and matched", || {
            is_mounted(&sb, &tmp_volume(&sb, "d")) && matches_logged(&sb) > seen
        })?;
        let data = std::fs::read_to_string(tmp_volume(&sb, "b").join("data"));
        check(data.as_deref().ok() == Some("b's data"), || {
            format!("b's emptyDir data: {data:?}")
        })?;
        // A file emptied on purpose (opened, truncated, closed) is acted on.
        std::fs::File::create(sb.manifests.join("b.yaml")).unwrap();
        eventually(Duration::from_secs(10), "b and d torn down", || {
            !sb.root.join("pods/b-uid").exists() && !sb.root.join("pods/d-uid").exists()
        })
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))
}

fn a_second_instance_on_the_same_root_dir_refuses_at_once() -> TestResult {
    let sb = Sandbox::new(&format!("lock-{:x}", fastrand::u32(..)));
    let daemon = two_pods_under_a_daemon(&sb)?;
    let pid = daemon.id().to_string();
    let result = (|| -> TestResult {
        let empty = sb.path("empty");
        std::fs::create_dir_all(&empty).unwrap();
        for args in [&["run", "--once"][..], &["run"][..]] {
            let out = sb.volumed_with_limit(args, &empty, Duration::from_secs(10))?;
            let stderr = text(&out.stderr);
            check(out.status.code() == Some(2), || {
                format!(
                    "a second `{}` must refuse (exit 2), got {}:\n{stderr}",
                    args.join(" "),
                    out.status
                )
            })?;
            check(stderr.contains(&pid) && stderr.contains("lock"), || {
                format!("the refusal must name the holder's pid {pid}:\n{stderr}")
            })?;
        }
        check(is_mounted(&sb, &tmp_volume(&sb, "b")), || {
            "a second instance unmounted the daemon's volume".into()
        })?;
        let data = std::fs::read_to_string(tmp_volume(&sb, "b").join("data"));
        check(data.is_ok(), || format!("b's data: {data:?}"))?;
        // Reading needs no lock.
        for command in ["plan", "status"] {
            let out = sb.volumed(&[command]);
            let shown = out.stdout.starts_with(b"nothing to do") || out.stdout.starts_with(b"POD");
            check(out.status.success() && shown, || {
                format!(
                    "{command} beside a running daemon: {}\n{}{}",
                    out.status,
                    text(&out.stdout),
                    text(&out.stderr)
                )
            })?;
        }
        Ok(())
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| format!("{e}\n{log}"))?;
    // Once the holder is gone, the lock is free again.
    sb.converge()
}

fn a_node_name_that_no_manifest_uses_tears_nothing_down() -> TestResult {
    let sb = Sandbox::new(&format!("nodename-{:x}", fastrand::u32(..)));
    sb.manifest("a.yaml", &memory_pod("a"));
    sb.manifest("b.yaml", &memory_pod("b"));
    sb.converge()?;
    let before = sb.mounts();
    for command in ["plan", "run"] {
        let args: &[&str] = if command == "run" {
            &["run", "--once"]
        } else {
            &["plan"]
        };
        let out = sb.volumed_with(args, &sb.manifests, "not-this-node");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        check(out.status.code() == Some(1), || {
            format!("{command} with an unknown node name must fail (exit 1), got {}:\n{stdout}\n{stderr}", out.status)
        })?;
        check(
            (stdout.clone() + &stderr).contains("node-a") && !stdout.contains("unmount"),
            || {
                format!("{command} must name the node the manifests use and plan no unmount:\n{stdout}\n{stderr}")
            },
        )?;
    }
    check(sb.mounts() == before, || {
        format!("a wrong node name changed the mounts: {:#?}", sb.mounts())
    })
}

/// mount --make-shared <dir>: host mounts below it propagate into the pods' rslave binds.
fn make_shared(dir: &Path) {
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
}

fn mount_tmpfs(at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    // mount -t tmpfs tmpfs <at>
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
}

/// A thread that swaps two names (`renameat2(RENAME_EXCHANGE)`) as fast as it can, as a
/// container writing into its hostPath can; `stop` leaves both names as they were.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
    names: (PathBuf, PathBuf),
}

impl Swapper {
    fn start(a: &Path, b: &Path) -> Swapper {
        let (stop, swaps) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let names = (a.to_path_buf(), b.to_path_buf());
        let (flag, count, (x, y)) = (stop.clone(), swaps.clone(), names.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                exchange(&x, &y);
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        Swapper {
            stop,
            swaps,
            thread,
            names,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        if self.swaps.load(Ordering::Relaxed) % 2 == 1 {
            exchange(&self.names.0, &self.names.1);
        }
    }
}

fn exchange(a: &Path, b: &Path) {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).unwrap();
}

fn a_symlink_swapped_in_during_teardown_never_unmounts_outside_the_root_dir() -> TestResult {
    let sb = Sandbox::new(&format!("umountrace-{:x}", fastrand::u32(..)));
    make_shared(&sb.base);
    let host = sb.path("host/h");
    let outside = sb.path("outside/mnt");
    mount_tmpfs(&outside);
    std::fs::write(outside.join("marker"), "outside the root dir").unwrap();
    std::fs::create_dir_all(host.join("sub/mnt")).unwrap();
    std::os::unix::fs::symlink(sb.path("outside"), host.join("link")).unwrap();
    let mut refused = 0;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: racer, uid: racer-uid}\nspec: {nodeName: node-a, containers: [], volumes: [{name: h, hostPath: {path: BASE/host/h, type: Directory}}]}\n";
    let mut escapes = Vec::new();
    for attempt in 0..RACE_TRIES {
        sb.manifest("racer.yaml", pod);
        sb.converge()?;
        // A host mount below the source after the bind: it propagates into the pod's copy,
        // which teardown must unmount first (a nested mount).
        mount_tmpfs(&host.join("sub/mnt"));
        let nested = sb.volume("racer-uid", "host-path", "h").join("sub/mnt");
        check(is_mounted(&sb, &nested), || {
            format!("attempt {attempt}: the host submount did not propagate into the pod")
        })?;
        std::fs::remove_file(sb.manifests.join("racer.yaml")).unwrap();
        let swapper = Swapper::start(&host.join("sub"), &host.join("link"));
        let raced = sb.volumed(&["run", "--once"]);
        swapper.stop();
        refused += usize::from(!raced.status.success());
        if mounts_under(&outside).is_empty() {
            escapes.push(format!("attempt {attempt}: {}", text(&raced.stderr)));
            mount_tmpfs(&outside);
        }
        // With nothing racing it, teardown completes.
        sb.converge()?;
        check(!sb.root.join("pods/racer-uid").exists(), || {
            format!("attempt {attempt}: the pod dir remains: {:#?}", sb.mounts())
        })?;
        check(mounts_under(&host.join("sub/mnt")).len() == 1, || {
            format!("attempt {attempt}: the host's own submount was unmounted")
        })?;
        nix::mount::umount(&host.join("sub/mnt")).unwrap();
    }
    eprintln!(
        "teardown race: {refused} of {RACE_TRIES} raced runs met a swapped-in link and refused it"
    );
    check(escapes.is_empty(), || {
        format!(
            "{} of {RACE_TRIES} teardowns unmounted {} (outside the root dir):\n{}",
            escapes.len(),
            outside.display(),
            escapes.join("\n")
        )
    })
}

fn a_symlink_swapped_in_during_or_create_never_creates_outside_the_roots() -> TestResult {
    let sb = Sandbox::new(&format!("createrace-{:x}", fastrand::u32(..)));
    let host = sb.path("host");
    let outside = sb.path("outside");
    std::fs::create_dir_all(host.join("p")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, host.join("q")).unwrap();
    let mut refused = 0;
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: maker, uid: maker-uid}\nspec:\n  nodeName: node-a\n  containers: []\n  volumes:\n  - {name: d, hostPath: {path: BASE/host/p/made/deeper, type: DirectoryOrCreate}}\n  - {name: f, hostPath: {path: BASE/host/p/made-file, type: FileOrCreate}}\n";
    let mut escapes = Vec::new();
    for attempt in 0..RACE_TRIES {
        sb.manifest("maker.yaml", pod);
        let swapper = Swapper::start(&host.join("p"), &host.join("q"));
        let raced = sb.volumed_within(&["run", "--once"], &[&host]);
        swapper.stop();
        refused += usize::from(!raced.status.success());
        let made: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        if !made.is_empty() {
            escapes.push(format!(
                "attempt {attempt}: {made:?} {}",
                text(&raced.stderr)
            ));
            std::fs::remove_dir_all(&outside).unwrap();
            std::fs::create_dir_all(&outside).unwrap();
        }
        std::fs::remove_file(sb.manifests.join("maker.yaml")).unwrap();
        let out = sb.volumed_within(&["run", "--once"], &[&host]);
        check(out.status.success(), || {
            format!("attempt {attempt}: teardown: {}", text(&out.stderr))
        })?;
        let _ = std::fs::remove_dir_all(host.join("p/made"));
        let _ = std::fs::remove_file(host.join("p/made-file"));
    }
    eprintln!(
        "create race: {refused} of {RACE_TRIES} raced runs met a swapped-in link and refused it"
    );
    check(escapes.is_empty(), || {
        format!(
            "{} of {RACE_TRIES} runs created host paths outside the host path roots, in {}:\n{}",
            escapes.len(),
            outside.display(),
            escapes.join("\n")
        )
    })
}

fn a_disk_with_only_its_backup_gpt_left_is_not_formatted() -> TestResult {
    let sb = Sandbox::new(&format!("backupgpt-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "gpt", 64, false);
    // sfdisk: a GPT with one partition over the disk, and data on that partition.
    let mut sfdisk = std::process::Command::new("sfdisk")
        .arg("--quiet")
        .arg(&disk.device)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(sfdisk.stdin.as_mut().unwrap(), b"label: gpt\n,,L\n").unwrap();
    check(sfdisk.wait().unwrap().success(), || "sfdisk failed".into())?;
    let device = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk.device)
        .unwrap();
    use std::os::unix::fs::FileExt;
    device.write_all_at(b"partition data", 2 << 20).unwrap();
    // dd if=/dev/zero of=<disk> bs=512 count=34: the protective MBR and the primary GPT go.
    device.write_all_at(&[0u8; 34 * 512], 0).unwrap();
    device.sync_all().unwrap();
    drop(device);
    let blkid = std::process::Command::new("blkid")
        .arg("-p")
        .arg(&disk.device)
        .output()
        .unwrap();
    check(blkid.status.code() == Some(2), || {
        format!(
            "the attack needs a disk blkid -p calls blank (exit 2), got {}: {}",
            blkid.status,
            text(&blkid.stdout)
        )
    })?;
    expect_refusal(&sb, &disk, "backup GPT")?;
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    check(stderr.contains("wipefs -a"), || {
        format!("the refusal must say how to clear both copies (wipefs -a):\n{stderr}")
    })
}

fn the_state_dir_under_another_name_is_never_bound() -> TestResult {
    let sb = Sandbox::new(&format!("statealias-{:x}", fastrand::u32(..)));
    sb.manifest("a.yaml", &memory_pod("a"));
    sb.converge()?;
    // mount --bind <root> <base>/alias: the state dir is reachable by a second path.
    let alias = sb.path("alias");
    std::fs::create_dir_all(&alias).unwrap();
    nix::mount::mount(
        Some(&sb.root),
        &alias,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    sb.manifest("thief.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: thief, uid: thief-uid}\nspec: {nodeName: node-a, containers: [], volumes: [{name: s, hostPath: {path: BASE/alias/state}}]}\n");
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    let stolen = sb.volume("thief-uid", "host-path", "s");
    let bound = is_mounted(&sb, &stolen);
    nix::mount::umount(&alias).unwrap();
    check(!out.status.success() && !bound, || {
        format!(
            "the state dir was bound through a second path ({}):\n{stderr}",
            out.status
        )
    })?;
    check(stderr.contains("volumed's own state"), || {
        format!("the refusal must say why:\n{stderr}")
    })
}
