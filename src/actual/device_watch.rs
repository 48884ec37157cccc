//! Keeps the block-device inventory current on one dedicated thread (udev types are not
//! `Send`): a udev monitor (udevd's events where it runs, the kernel's otherwise) wakes a
//! rescan, and a slow periodic rescan covers hosts where neither reaches us.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::watch;

use super::devices::{BlockDevice, DeviceScanner};
use crate::host::format::Formatter;
use crate::host::Mounter;

/// Starts the watcher. Its first inventory arrives as a change (scanning may take a while:
/// blkid runs once per device), so start-up never waits on a slow disk.
pub fn spawn(
    formatter: Arc<dyn Formatter>,
    mounter: Arc<dyn Mounter>,
    rescan: Duration,
) -> std::io::Result<watch::Receiver<Arc<Vec<BlockDevice>>>> {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    std::thread::Builder::new().name("device-watch".into()).spawn(move || {
        let mut scanner = DeviceScanner::new(formatter);
        let monitor = open_monitor();
        if let Err(err) = &monitor {
            tracing::warn!(%err, rescan_s = rescan.as_secs(), "no udev monitor; block devices are rescanned periodically only");
        }
        let timeout = PollTimeout::try_from(rescan).unwrap_or(PollTimeout::MAX);
        // Opened before the first read: a change after it flags the file, and the table is
        // read again only then (a host with many mounts pays for a read only when one changed).
        let changes = mounter
            .change_file()
            .and_then(|path| std::fs::File::open(path).ok());
        let mut mounts = None;
        loop {
            if mounts.is_none() || changes.as_ref().is_none_or(table_changed) {
                // A failed read is tried again at the next scan, not kept as an empty table.
                mounts = mounter.mount_table().ok();
            }
            match scanner.scan(mounts.as_deref().unwrap_or_default()) {
                Ok(devices) => publish(&tx, devices),
                Err(err) => tracing::warn!(%err, "block device scan failed; keeping the last inventory"),
            }
            if tx.is_closed() {
                return;
            }
            match &monitor {
                Ok(socket) => {
                    // poll: wait for a block-device uevent, at most one rescan interval.
                    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, timeout);
                    // Drain the burst (a new disk brings its partitions along).
                    std::thread::sleep(Duration::from_millis(50));
                    let mut events = 0;
                    for event in socket.iter() {
                        tracing::debug!(action = ?event.event_type(), device = ?event.sysname(), "block device event");
                        events += 1;
                    }
                    if events > 0 {
                        // A device changed (say, wiped or formatted by hand): probe afresh.
                        scanner.forget_probes();
                    }
                }
                Err(_) => std::thread::sleep(rescan),
            }
        }
    })?;
    Ok(rx)
}

/// Whether the mount table changed since the last ask (poll(POLLPRI) on mountinfo, which the
/// ask resets); an error counts as a change.
fn table_changed(file: &std::fs::File) -> bool {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) | Err(_) => true,
    }
}

/// udevd's events when it runs (after its rules ran, with stable links); else the kernel's.
fn open_monitor() -> std::io::Result<udev::MonitorSocket> {
    let builder = if std::path::Path::new("/run/udev/control").exists() {
        udev::MonitorBuilder::new()?
    } else {
        udev::MonitorBuilder::new_kernel()?
    };
    builder.match_subsystem("block")?.listen()
}

/// Publishes when a device came, went or changed; mount-point changes alone do not count
/// (the mount table has its own watcher).
fn publish(tx: &watch::Sender<Arc<Vec<BlockDevice>>>, devices: Vec<BlockDevice>) {
    let identity = |list: &[BlockDevice]| -> Vec<(String, String, u64, Option<String>)> {
        list.iter()
            .map(|d| {
                (
                    d.name.clone(),
                    d.dev.clone(),
                    d.size_bytes,
                    d.fs_type.clone(),
                )
            })
            .collect()
    };
    tx.send_if_modified(|current| {
        let changed = identity(current) != identity(&devices);
        if changed {
            *current = Arc::new(devices);
        }
        changed
    });
}
