//! Privileged block-device scenarios on loop devices backed by files the test creates:
//! safe-format, global mounts shared by pods, refusals that leave devices byte-for-byte
//! unchanged, raw block volumes, and `volumed devices`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sandbox::{check, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![
        (
            "sigterm_during_a_format_lets_mkfs_finish_then_exits_0",
            sigterm_during_a_format_lets_mkfs_finish_then_exits_0,
        ),
        (
            "blank_device_is_formatted_once_and_shared_by_two_pods",
            blank_device_is_formatted_once_and_shared_by_two_pods,
        ),
        (
            "existing_ext4_is_mounted_without_format",
            existing_ext4_is_mounted_without_format,
        ),
        (
            "devices_holding_anything_else_are_refused_and_untouched",
            devices_holding_anything_else_are_refused_and_untouched,
        ),
        (
            "a_filesystem_fsck_cannot_repair_is_not_mounted",
            a_filesystem_fsck_cannot_repair_is_not_mounted,
        ),
        (
            "block_mode_volume_is_a_device_node_in_volume_devices",
            block_mode_volume_is_a_device_node_in_volume_devices,
        ),
        (
            "devices_command_lists_loop_devices",
            devices_command_lists_loop_devices,
        ),
        (
            "a_device_used_as_a_raw_block_volume_is_never_formatted",
            a_device_used_as_a_raw_block_volume_is_never_formatted,
        ),
        (
            "a_read_only_pod_and_a_writable_pod_share_a_device",
            a_read_only_pod_and_a_writable_pod_share_a_device,
        ),
        (
            "a_device_that_appears_later_wakes_the_daemon",
            a_device_that_appears_later_wakes_the_daemon,
        ),
    ]
}

/// A loop device over a file in the sandbox, detached on drop.
pub struct Loop {
    pub device: PathBuf,
    pub file: PathBuf,
}

impl Loop {
    pub fn new(sb: &Sandbox, name: &str, mib: u64, read_only: bool) -> Loop {
        let file = sb.path(&format!("{name}.img"));
        std::fs::File::create(&file)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        // losetup --find --show [--read-only] <file>
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if read_only {
            cmd.arg("--read-only");
        }
        let out = cmd.arg(&file).output().expect("run losetup");
        assert!(out.status.success(), "losetup: {}", text(&out.stderr));
        Loop {
            device: PathBuf::from(text(&out.stdout).trim()),
            file,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap()
    }

    pub fn blkid(&self, tag: &str) -> String {
        let out = Command::new("blkid")
            .args(["-p", "-s", tag, "-o", "value"])
            .arg(&self.device)
            .output()
            .unwrap();
        text(&out.stdout).trim().to_string()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // losetup --detach <device>
        let _ = Command::new("losetup")
            .arg("--detach")
            .arg(&self.device)
            .status();
    }
}

fn run(program: &str, args: &[&str], device: &Path) {
    let out = Command::new(program)
        .args(args)
        .arg(device)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        text(&out.stderr)
    );
}

/// A PV on the device, a claim bound to it, and `pods` pods using it.
pub(crate) fn manifests(sb: &Sandbox, device: &Path, pods: &[&str], extra_pv: &str) {
    let mut text = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv-disk}}\nspec:\n  capacity: {{storage: 32Mi}}\n  accessModes: [ReadWriteOnce]\n  local: {{path: {}}}\n{extra_pv}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data}}\nspec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 16Mi}}}}}}\n",
        device.display()
    );
    for pod in pods {
        text.push_str(&format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, uid: {pod}-uid}}\nspec: {{containers: [], volumes: [{{name: d, persistentVolumeClaim: {{claimName: data}}}}]}}\n"));
    }
    sb.manifest("disk.yaml", &text);
}

fn global(sb: &Sandbox) -> PathBuf {
    sb.root
        .join("plugins/kubernetes.io/local-volume/mounts/pv-disk")
}

fn blank_device_is_formatted_once_and_shared_by_two_pods() -> TestResult {
    let sb = Sandbox::new(&format!("blank-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 64, false);
    manifests(&sb, &disk.device, &["a", "b"], "  mountOptions: [noatime]");
    sb.converge()?;
    check(disk.blkid("TYPE") == "ext4", || {
        "the blank device did not get ext4".into()
    })?;
    let uuid = disk.blkid("UUID");
    let mounts = sb.mounts();
    let points: Vec<_> = mounts.iter().map(|m| m.mount_point.clone()).collect();
    let want = vec![
        global(&sb),
        sb.volume("a-uid", "local-volume", "pv-disk"),
        sb.volume("b-uid", "local-volume", "pv-disk"),
    ];
    check(points == want, || format!("mounts {points:#?}"))?;
    check(mounts.iter().all(|m| m.fs_type == "ext4"), || {
        format!("{mounts:#?}")
    })?;
    std::fs::write(
        sb.volume("a-uid", "local-volume", "pv-disk").join("data"),
        "written by a",
    )
    .unwrap();
    let seen = std::fs::read_to_string(sb.volume("b-uid", "local-volume", "pv-disk").join("data"))
        .unwrap_or_default();
    check(seen == "written by a", || {
        "pod b does not see pod a's data".into()
    })?;

    // Teardown of both pods takes the global mount down too.
    manifests(&sb, &disk.device, &[], "");
    sb.converge()?;
    check(sb.mounts().is_empty(), || {
        format!("left mounted: {:#?}", sb.mounts())
    })?;
    check(!global(&sb).exists(), || {
        "the global mount point remains".into()
    })?;

    // A new run ("restart") mounts the same filesystem again: no second format, data intact.
    manifests(&sb, &disk.device, &["a"], "");
    sb.converge()?;
    check(disk.blkid("UUID") == uuid, || {
        "the device was formatted a second time".into()
    })?;
    let back = std::fs::read_to_string(sb.volume("a-uid", "local-volume", "pv-disk").join("data"))
        .unwrap_or_default();
    check(back == "written by a", || {
        "data did not survive teardown and remount".into()
    })
}

fn existing_ext4_is_mounted_without_format() -> TestResult {
    let sb = Sandbox::new(&format!("ext4-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 64, false);
    run("mkfs.ext4", &["-q"], &disk.device);
    let scratch = sb.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    nix::mount::mount(
        Some(&disk.device),
        &scratch,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(scratch.join("precious"), "existing data").unwrap();
    nix::mount::umount(&scratch).unwrap();
    let uuid = disk.blkid("UUID");
    manifests(&sb, &disk.device, &["a"], "");
    sb.converge()?;
    check(disk.blkid("UUID") == uuid, || {
        "an existing ext4 was reformatted".into()
    })?;
    let data = std::fs::read_to_string(
        sb.volume("a-uid", "local-volume", "pv-disk")
            .join("precious"),
    )
    .unwrap_or_default();
    check(data == "existing data", || {
        "existing data is not visible in the pod".into()
    })
}

/// Runs once on a device that must be refused: non-zero exit, a reason naming the device,
/// and not one byte changed.
pub(crate) fn expect_refusal(sb: &Sandbox, disk: &Loop, reason: &str) -> TestResult {
    let before = disk.bytes();
    manifests(sb, &disk.device, &["a"], "");
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    check(!out.status.success(), || {
        format!("{reason}: the run must fail")
    })?;
    let names_device = stderr.contains(&disk.device.display().to_string());
    check(names_device && stderr.contains(reason), || {
        format!(
            "the refusal must name {} and say {reason:?}:\n{stderr}",
            disk.device.display()
        )
    })?;
    check(disk.bytes() == before, || {
        format!("{reason}: the device was changed")
    })?;
    check(
        !sb.mounts().iter().any(|m| m.mount_point == global(sb)),
        || "a refused device was mounted".into(),
    )
}

fn devices_holding_anything_else_are_refused_and_untouched() -> TestResult {
    let sb = Sandbox::new(&format!("refuse-{:x}", fastrand::u32(..)));
    let table = Loop::new(&sb, "table", 64, false);
    // sfdisk: one partition over the whole disk (a dos table).
    let mut sfdisk = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&table.device)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(sfdisk.stdin.as_mut().unwrap(), b"label: dos\n,,L\n").unwrap();
    assert!(sfdisk.wait().unwrap().success());
    expect_refusal(&sb, &table, "partition")?;

    let swap = Loop::new(&sb, "swap", 64, false);
    run("mkswap", &[], &swap.device);
    expect_refusal(&sb, &swap, "swap")?;

    let xfs_like = Loop::new(&sb, "other", 64, false);
    run("mkfs.ext2", &["-q"], &xfs_like.device);
    expect_refusal(
        &sb,
        &xfs_like,
        "holds a ext2 filesystem but the PV asks for ext4",
    )?;

    let busy = Loop::new(&sb, "busy", 64, false);
    run("mkfs.ext4", &["-q"], &busy.device);
    let elsewhere = sb.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    nix::mount::mount(
        Some(&busy.device),
        &elsewhere,
        Some("ext4"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    let result = expect_refusal(&sb, &busy, "mounted at");
    nix::mount::umount(&elsewhere).unwrap();
    result?;

    let read_only = Loop::new(&sb, "ro", 64, true);
    expect_refusal(&sb, &read_only, "read-only")?;

    // Mounted in another mount namespace, which volumed's mount table does not show: the
    // exclusive open still finds it busy.
    let hidden = Loop::new(&sb, "hidden", 64, false);
    run("mkfs.ext4", &["-q"], &hidden.device);
    let holder_dir = sb.path("holder");
    std::fs::create_dir_all(&holder_dir).unwrap();
    let script = format!(
        "mount {} {} && echo ready && sleep 30",
        hidden.device.display(),
        holder_dir.display()
    );
    let mut holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    let result = expect_refusal(&sb, &hidden, "in use");
    let _ = holder.kill();
    let _ = holder.wait();
    result
}

fn a_filesystem_fsck_cannot_repair_is_not_mounted() -> TestResult {
    let sb = Sandbox::new(&format!("fsck-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 64, false);
    run("mkfs.ext4", &["-q"], &disk.device);
    // debugfs -w -R "clri <2>": clear the root inode, which fsck -p will not fix unattended;
    // then mark the filesystem as not cleanly unmounted so fsck -p checks it at all.
    run("debugfs", &["-w", "-R", "clri <2>"], &disk.device);
    run("debugfs", &["-w", "-R", "ssv state 0"], &disk.device);
    manifests(&sb, &disk.device, &["a"], "");
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    check(
        !out.status.success() && stderr.contains("fsck.ext4 -p exited"),
        || format!("fsck failure must refuse the mount:\n{stderr}"),
    )?;
    check(sb.mounts().is_empty(), || {
        "a filesystem with errors was mounted".into()
    })
}

fn block_mode_volume_is_a_device_node_in_volume_devices() -> TestResult {
    let sb = Sandbox::new(&format!("block-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 16, false);
    manifests(&sb, &disk.device, &["a"], "  volumeMode: Block");
    sb.manifest(
        "disk.yaml",
        &std::fs::read_to_string(sb.manifests.join("disk.yaml"))
            .unwrap()
            .replace("resources:", "volumeMode: Block, resources:"),
    );
    sb.converge()?;
    let node = sb
        .root
        .join("pods/a-uid/volumeDevices/kubernetes.io~local-volume/pv-disk");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let (got, want) = (
        std::fs::metadata(&node).map_err(|e| format!("{}: {e}", node.display()))?,
        std::fs::metadata(&disk.device).unwrap(),
    );
    check(
        got.file_type().is_block_device() && got.rdev() == want.rdev(),
        || format!("{} is not the device node", node.display()),
    )?;
    // Usable: bytes written through the pod's node are on the device.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&node)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"raw block"))
        .map_err(|e| e.to_string())?;
    check(disk.bytes().starts_with(b"raw block"), || {
        "a write through the pod's device node did not reach the device".into()
    })?;
    check(
        disk.blkid("TYPE").is_empty() || disk.blkid("TYPE") != "ext4",
        || "a Block volume was formatted".into(),
    )?;
    manifests(&sb, &disk.device, &[], "  volumeMode: Block");
    sb.converge()?;
    check(
        !sb.root.join("pods/a-uid").exists() && sb.mounts().is_empty(),
        || "the block volume was not torn down".into(),
    )
}

fn devices_command_lists_loop_devices() -> TestResult {
    let sb = Sandbox::new(&format!("devices-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 48, false);
    run("mkfs.ext4", &["-q"], &disk.device);
    let out = Command::new(env!("CARGO_BIN_EXE_volumed"))
        .args(["devices", "--output", "json"])
        .output()
        .unwrap();
    let devices: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("devices -o json: {e}: {}", text(&out.stderr)))?;
    let name = disk
        .device
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let entry = devices
        .as_array()
        .and_then(|list| list.iter().find(|d| d["name"] == name.as_str()))
        .ok_or(format!("{name} not listed"))?;
    check(
        entry["size_bytes"] == 48u64 << 20 && entry["fs_type"] == "ext4" && entry["kind"] == "loop",
        || format!("{entry}"),
    )?;
    let table = Command::new(env!("CARGO_BIN_EXE_volumed"))
        .arg("devices")
        .output()
        .unwrap();
    let line = text(&table.stdout)
        .lines()
        .find(|l| l.starts_with(&name))
        .map(str::to_string)
        .unwrap_or_default();
    let uuid = disk.blkid("UUID");
    check(
        !uuid.is_empty() && line.contains("48M") && line.contains("ext4") && line.contains(&uuid),
        || format!("table row: {line:?}"),
    )
}

fn a_device_that_appears_later_wakes_the_daemon() -> TestResult {
    let sb = Sandbox::new(&format!("hotplug-{:x}", fastrand::u32(..)));
    // The PV names a by-id style link that points nowhere yet.
    let link = sb.path("by-id/disk-later");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    manifests(&sb, &link, &["a"], "");
    let daemon = sb.daemon();
    let log_path = sb.path("daemon.log");
    let logged =
        |needle: &str| std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains(needle));
    let result = (|| {
        crate::sandbox::eventually(
            std::time::Duration::from_secs(10),
            "the set-up fails while the device is missing",
            || logged("op failed"),
        )?;
        let disk = Loop::new(&sb, "late", 32, false);
        std::os::unix::fs::symlink(&disk.device, &link).unwrap();
        crate::sandbox::eventually(
            std::time::Duration::from_secs(10),
            "the device event wakes the daemon",
            || logged("block devices changed"),
        )?;
        crate::sandbox::eventually(
            std::time::Duration::from_secs(10),
            "the volume is mounted",
            || sb.mounts().len() == 2,
        )?;
        Ok::<Loop, String>(disk)
    })();
    let log = sb.stop(daemon)?;
    let disk = result.map_err(|e| format!("{e}\n{log}"))?;
    // The daemon leaves its mounts on exit; detach the loop only after they are gone.
    for mount in sb.mounts().iter().rev() {
        nix::mount::umount(&mount.mount_point).unwrap();
    }
    drop(disk);
    Ok(())
}

fn a_device_used_as_a_raw_block_volume_is_never_formatted() -> TestResult {
    let sb = Sandbox::new(&format!("rawuse-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 16, false);
    let link = sb.path("by-id/same-disk");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&disk.device, &link).unwrap();
    // Pod a uses the disk raw; a second PV names the same disk through a link, as a filesystem.
    let raw = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: pv-raw}}\nspec: {{capacity: {{storage: 8Mi}}, accessModes: [ReadWriteOnce], volumeMode: Block, local: {{path: {}}}}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: raw}}\nspec: {{accessModes: [ReadWriteOnce], volumeMode: Block, resources: {{requests: {{storage: 8Mi}}}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: raw, uid: raw-uid}}\nspec: {{containers: [], volumes: [{{name: d, persistentVolumeClaim: {{claimName: raw}}}}]}}\n",
        disk.device.display()
    );
    sb.manifest("raw.yaml", &raw);
    sb.converge()?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(
            sb.root
                .join("pods/raw-uid/volumeDevices/kubernetes.io~local-volume/pv-raw"),
        )
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"database pages"))
        .map_err(|e| e.to_string())?;
    let before = disk.bytes();
    manifests(&sb, &link, &["a"], "");
    let out = sb.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    check(
        !out.status.success() && stderr.contains("volumeDevices"),
        || format!("a device in raw use must be refused, naming the raw volume:\n{stderr}"),
    )?;
    check(disk.bytes() == before, || {
        "the raw volume's data was overwritten".into()
    })?;
    for mount in sb.mounts().iter().rev() {
        nix::mount::umount(&mount.mount_point).unwrap();
    }
    Ok(())
}

fn a_read_only_pod_and_a_writable_pod_share_a_device() -> TestResult {
    let sb = Sandbox::new(&format!("rorw-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 64, false);
    // Formatted already: a blank device is never formatted for a read-only volume.
    run("mkfs.ext4", &["-q"], &disk.device);
    manifests(&sb, &disk.device, &["a", "b"], "");
    let text = std::fs::read_to_string(sb.manifests.join("disk.yaml")).unwrap();
    // Pod a (the first in the file) asks for the claim read-only.
    let text = text.replacen("claimName: data}", "claimName: data, readOnly: true}", 1);
    sb.manifest("disk.yaml", &text);
    sb.converge()?;
    let write = |pod: &str| {
        std::fs::write(
            sb.volume(&format!("{pod}-uid"), "local-volume", "pv-disk")
                .join(pod),
            pod,
        )
    };
    let a = write("a");
    check(
        a.as_ref().err().and_then(|e| e.raw_os_error()) == Some(nix::libc::EROFS),
        || format!("pod a must be read-only: {a:?}"),
    )?;
    check(write("b").is_ok(), || {
        "pod b must be writable although pod a is read-only".into()
    })
}

fn sigterm_during_a_format_lets_mkfs_finish_then_exits_0() -> TestResult {
    let sb = Sandbox::new(&format!("termfmt-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "disk", 64, false);
    // A slow mkfs.ext4 first on PATH: it says when it starts, waits, then is the real one.
    let bin = sb.path("slowbin");
    std::fs::create_dir_all(&bin).unwrap();
    let started = sb.path("mkfs-started");
    let real = Command::new("sh")
        .args(["-c", "command -v mkfs.ext4"])
        .output()
        .unwrap();
    let real = text(&real.stdout).trim().to_string();
    std::fs::write(
        bin.join("mkfs.ext4"),
        format!(
            "#!/bin/sh\ntouch {}\nsleep 2\nexec {real} \"$@\"\n",
            started.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("mkfs.ext4"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    manifests(&sb, &disk.device, &["a"], "");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The format outlives its op deadline (1 s): it is waited for all the same.
    let mut daemon = sb.daemon_with_env(&["--op-timeout", "1s"], &[("PATH", &path)]);
    let result = (|| {
        crate::sandbox::eventually(Duration::from_secs(20), "mkfs started", || started.exists())?;
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
            if signalled.elapsed() > Duration::from_secs(30) {
                return Err("still running 30 s after SIGTERM".to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = signalled.elapsed();
        eprintln!("SIGTERM during mkfs: exited {status} after {took:?}");
        check(
            status.success() && took >= Duration::from_millis(1500),
            || format!("exited {status} after {took:?}: it did not wait for mkfs"),
        )?;
        check(disk.blkid("TYPE") == "ext4", || {
            format!(
                "the device holds {:?} after the stop, not a whole ext4",
                disk.blkid("TYPE")
            )
        })
    })();
    let _ = daemon.kill();
    let log = sb.daemon_log();
    result.map_err(|e| format!("{e}\n{log}"))
}
