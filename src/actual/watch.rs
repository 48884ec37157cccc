//! Keeps the mount table current on one dedicated thread: re-reads it when poll(POLLPRI) on
//! `/proc/self/mountinfo` reports a change, when the sync loop asks (after its own ops), and on
//! a slow safety resync; never on a short timer.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use tokio::sync::watch;

use crate::host::{HostError, Mounter};
use crate::model::mountinfo::MountTable;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot set up the mount-table watcher: {0}")]
    Setup(String),
    #[error(transparent)]
    Read(#[from] HostError),
}

/// The sync loop's handle on the mount table.
pub struct MountWatch {
    pub tables: watch::Receiver<Arc<MountTable>>,
    requested: Arc<AtomicU64>,
    wake: Arc<EventFd>,
}

impl MountWatch {
    /// Reads the table once (so the first value is real), then starts the watcher thread.
    pub fn spawn(mounter: Arc<dyn Mounter>, resync: Duration) -> Result<MountWatch, WatchError> {
        let first = MountTable {
            entries: mounter.mount_table()?,
            covers: 0,
        };
        let (tx, tables) = watch::channel(Arc::new(first));
        let wake =
            Arc::new(EventFd::new().map_err(|e| WatchError::Setup(format!("eventfd: {e}")))?);
        let change_file = match mounter.change_file() {
            Some(path) => Some(
                std::fs::File::open(&path)
                    .map_err(|e| WatchError::Setup(format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        let requested = Arc::new(AtomicU64::new(0));
        let (thread_wake, thread_requested) = (wake.clone(), requested.clone());
        std::thread::Builder::new()
            .name("mount-watch".into())
            .spawn(move || {
                watch_loop(
                    mounter,
                    change_file,
                    thread_wake,
                    thread_requested,
                    tx,
                    resync,
                )
            })
            .map_err(|e| WatchError::Setup(format!("thread: {e}")))?;
        Ok(MountWatch {
            tables,
            requested,
            wake,
        })
    }

    /// Asks for a fresh read and returns the sequence number the answer will cover.
    pub fn refresh(&self) -> u64 {
        let seq = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        // An eventfd write only fails when the counter would overflow, which a wake-up is not.
        let _ = self.wake.write(1);
        seq
    }
}

fn watch_loop(
    mounter: Arc<dyn Mounter>,
    change_file: Option<std::fs::File>,
    wake: Arc<EventFd>,
    requested: Arc<AtomicU64>,
    tx: watch::Sender<Arc<MountTable>>,
    resync: Duration,
) {
    let timeout = PollTimeout::try_from(resync).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        if let Some(file) = &change_file {
            fds.push(PollFd::new(file.as_fd(), PollFlags::POLLPRI));
        }
        // poll: the kernel flags mountinfo with POLLPRI|POLLERR when any mount changes.
        if let Err(err) = poll(&mut fds, timeout) {
            if err != nix::errno::Errno::EINTR {
                tracing::error!(%err, "mount-table poll failed; falling back to the resync interval");
                std::thread::sleep(resync);
            }
        }
        let woken = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        if woken {
            let _ = wake.read();
        }
        // Read the request counter before the table, so `covers` never claims too much.
        let covers = requested.load(Ordering::SeqCst);
        match mounter.mount_table() {
            Ok(entries) => {
                if tx.send(Arc::new(MountTable { entries, covers })).is_err() {
                    return; // The sync loop is gone.
                }
            }
            Err(err) => tracing::warn!(%err, "mount-table read failed; keeping the last table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeMounter;

    #[tokio::test]
    async fn a_refresh_is_answered_with_a_table_that_covers_it() {
        let watch = MountWatch::spawn(FakeMounter::new(), Duration::from_secs(3600)).unwrap();
        let mut tables = watch.tables.clone();
        let seq = watch.refresh();
        let table =
            tokio::time::timeout(Duration::from_secs(5), tables.wait_for(|t| t.covers >= seq))
                .await
                .expect("the watcher answers a refresh")
                .unwrap()
                .clone();
        assert!(table.covers >= seq);
    }
}
