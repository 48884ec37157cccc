//! Keeps the sync loop's picture of the mounts at or below the root dir current, on one
//! dedicated thread. Where the kernel has mount events (fanotify, Linux 6.14+), each mount
//! attached or detached is read alone with statmount, so a change costs what it touches and
//! mounts elsewhere on the host cost next to nothing; elsewhere it re-reads mountinfo when
//! poll(POLLPRI) reports a change. Either way it answers the sync loop's requests after its own
//! ops, and re-reads everything on a slow safety resync; never on a short timer.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use tokio::sync::watch;

use crate::host::mount_events::{self, MountEvents, MountId};
use crate::host::{HostError, Mounter};
use crate::model::mountinfo::{MountEntry, MountTable};
use crate::shared::lock;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot set up the mount-table watcher: {0}")]
    Setup(String),
    #[error(transparent)]
    Read(#[from] HostError),
}

/// The sync loop's handle on the mount table.
pub struct MountWatch {
    /// The mounts at or below the root dir (nothing else is volumed's to decide on).
    pub tables: watch::Receiver<Arc<MountTable>>,
    requested: Arc<AtomicU64>,
    /// Paths whose mounts are to be read again with the next answer: an op may have changed
    /// a mount in place (a read-only remount, its propagation), which raises no event.
    restat: Arc<Mutex<Vec<PathBuf>>>,
    wake: Arc<EventFd>,
}

impl MountWatch {
    /// Reads the table once (so the first value is real), then starts the watcher thread.
    pub fn spawn(
        mounter: Arc<dyn Mounter>,
        root: PathBuf,
        resync: Duration,
    ) -> Result<MountWatch, WatchError> {
        let events = mounter.uses_host_mounts().then(MountEvents::open).and_then(|opened| {
            opened
                .inspect_err(|err| tracing::info!(%err, "no mount events from this kernel; watching mountinfo with poll() instead"))
                .ok()
        });
        let mut source = match events {
            Some(events) => Source::Events(EventTable::load(events, &root)?),
            None => {
                let change_file = match mounter.change_file() {
                    Some(path) => Some(
                        std::fs::File::open(&path)
                            .map_err(|e| WatchError::Setup(format!("{}: {e}", path.display())))?,
                    ),
                    None => None,
                };
                Source::Reads {
                    mounter,
                    change_file,
                }
            }
        };
        let first = MountTable {
            entries: source.table(&root, false)?,
            covers: 0,
        };
        let (tx, tables) = watch::channel(Arc::new(first));
        let wake =
            Arc::new(EventFd::new().map_err(|e| WatchError::Setup(format!("eventfd: {e}")))?);
        let requested = Arc::new(AtomicU64::new(0));
        let restat = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            wake: wake.clone(),
            requested: requested.clone(),
            restat: restat.clone(),
        };
        std::thread::Builder::new()
            .name("mount-watch".into())
            .spawn(move || watch_loop(source, root, shared, tx, resync))
            .map_err(|e| WatchError::Setup(format!("thread: {e}")))?;
        Ok(MountWatch {
            tables,
            requested,
            restat,
            wake,
        })
    }

    /// Asks for an answer that shows every mount change made so far, with the mounts at or
    /// below `restat` read again; returns the sequence number that answer will cover.
    pub fn refresh(&self, restat: impl IntoIterator<Item = PathBuf>) -> u64 {
        lock(&self.restat).extend(restat);
        let seq = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        // An eventfd write only fails when the counter would overflow, which a wake-up is not.
        let _ = self.wake.write(1);
        seq
    }
}

/// What the sync loop and the watcher thread share.
struct Shared {
    wake: Arc<EventFd>,
    requested: Arc<AtomicU64>,
    restat: Arc<Mutex<Vec<PathBuf>>>,
}

/// Where the watcher learns of changes.
enum Source {
    /// Mount events, and the mounts below the root dir kept by id.
    Events(EventTable),
    /// Whole reads of the mount table (`change_file` polled for changes, when there is one).
    Reads {
        mounter: Arc<dyn Mounter>,
        change_file: Option<std::fs::File>,
    },
}

impl Source {
    /// The mounts at or below `root`; `full` re-reads everything (start, resync).
    fn table(&mut self, root: &Path, full: bool) -> Result<Vec<Arc<MountEntry>>, HostError> {
        match self {
            Source::Events(table) => {
                if full {
                    table.resync(root)?;
                }
                Ok(table.entries())
            }
            Source::Reads { mounter, .. } => Ok(below(mounter.mount_table()?, root)),
        }
    }
}

fn is_below(path: &Path, root: &Path) -> bool {
    path.starts_with(root)
}

fn below(entries: Vec<MountEntry>, root: &Path) -> Vec<Arc<MountEntry>> {
    entries
        .into_iter()
        .filter(|m| is_below(&m.mount_point, root))
        .map(Arc::new)
        .collect()
}

/// The mounts at or below the root dir, kept current from mount events.
struct EventTable {
    events: MountEvents,
    /// By kernel id, which grows with each mount: iteration order is mount order, so of
    /// mounts stacked at one path the newest comes last, as in mountinfo.
    mounts: BTreeMap<MountId, Arc<MountEntry>>,
    /// The same mounts by mount point, for reading again those below a path.
    by_path: BTreeMap<PathBuf, BTreeSet<MountId>>,
    /// The other mounts of the namespace (outside the root dir), by id only: a resync need
    /// not read them again.
    elsewhere: HashSet<MountId>,
    /// Resyncs since the last reading of every mount.
    resyncs: u32,
}

/// One resync in this many reads every mount again, those outside the root dir included: a
/// mount moved into the root dir keeps its id, and its events are all that tell of it.
const RELOAD_EVERY: u32 = 10;

impl EventTable {
    fn load(events: MountEvents, root: &Path) -> Result<EventTable, HostError> {
        let mut table = EventTable {
            events,
            mounts: BTreeMap::new(),
            by_path: BTreeMap::new(),
            elsewhere: HashSet::new(),
            resyncs: 0,
        };
        table.reload(root)?;
        Ok(table)
    }

    /// Everything afresh: the queued events first (a listing shows them all), then every
    /// mount listed, read in full when it is below the root dir.
    fn reload(&mut self, root: &Path) -> Result<(), HostError> {
        self.events.drain()?;
        self.mounts.clear();
        self.by_path.clear();
        self.elsewhere.clear();
        self.resyncs = 0;
        for id in mount_events::list_mounts()? {
            match mount_events::stat_mount(id, |p| is_below(p, root))? {
                Some((_, Some(entry))) => self.insert(id, entry),
                Some((_, None)) => {
                    self.elsewhere.insert(id);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The safety re-read, in case events went missing: the queued events, then the
    /// namespace's mount ids (one listing) against those known. Every mount below the root
    /// dir is read again (a remount changes no id), a new or forgotten id is read, a known one
    /// outside the root dir is not; one resync in `RELOAD_EVERY` reads everything.
    fn resync(&mut self, root: &Path) -> Result<(), HostError> {
        self.resyncs += 1;
        if self.resyncs >= RELOAD_EVERY {
            return self.reload(root);
        }
        self.apply_events(root)?;
        let listed: HashSet<MountId> = mount_events::list_mounts()?.into_iter().collect();
        let gone: Vec<MountId> = self
            .mounts
            .keys()
            .filter(|id| !listed.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.remove(id);
        }
        self.elsewhere.retain(|id| listed.contains(id));
        for id in listed {
            if !self.elsewhere.contains(&id) {
                self.stat(id, root)?;
            }
        }
        Ok(())
    }

    fn insert(&mut self, id: MountId, entry: MountEntry) {
        self.by_path
            .entry(entry.mount_point.clone())
            .or_default()
            .insert(id);
        self.mounts.insert(id, Arc::new(entry));
    }

    fn remove(&mut self, id: MountId) -> bool {
        let Some(entry) = self.mounts.remove(&id) else {
            return false;
        };
        if let Some(ids) = self.by_path.get_mut(&entry.mount_point) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_path.remove(&entry.mount_point);
            }
        }
        true
    }

    /// Applies the queued events; true when anything below the root dir changed.
    fn apply_events(&mut self, root: &Path) -> Result<bool, HostError> {
        let changes = self.events.drain()?;
        if changes.lost {
            tracing::warn!("mount events were lost (queue overflow); reading every mount again");
            self.reload(root)?;
            return Ok(true);
        }
        let mut changed = false;
        for &id in &changes.detached {
            self.elsewhere.remove(&id);
            changed |= self.remove(id);
        }
        for &id in &changes.attached {
            changed |= self.stat(id, root)?;
        }
        Ok(changed)
    }

    /// Reads mount `id` again: kept when it is below the root dir, dropped when it is gone.
    fn stat(&mut self, id: MountId, root: &Path) -> Result<bool, HostError> {
        match mount_events::stat_mount(id, |p| is_below(p, root))? {
            Some((_, Some(entry))) => {
                self.elsewhere.remove(&id);
                let changed = self.mounts.get(&id).map(|m| &**m) != Some(&entry);
                if changed {
                    self.remove(id);
                    self.insert(id, entry);
                }
                Ok(changed)
            }
            Some((_, None)) => {
                self.elsewhere.insert(id);
                Ok(self.remove(id))
            }
            None => {
                self.elsewhere.remove(&id);
                Ok(self.remove(id))
            }
        }
    }

    /// Reads again the mounts at or below each of `paths`.
    fn restat(&mut self, paths: &[PathBuf], root: &Path) -> Result<bool, HostError> {
        let mut ids = BTreeSet::new();
        for path in paths {
            let at_or_below = self
                .by_path
                .range(path.clone()..)
                .take_while(|(point, _)| point.starts_with(path));
            ids.extend(at_or_below.flat_map(|(_, ids)| ids.iter().copied()));
        }
        let mut changed = false;
        for id in ids {
            changed |= self.stat(id, root)?;
        }
        Ok(changed)
    }

    fn entries(&self) -> Vec<Arc<MountEntry>> {
        self.mounts.values().cloned().collect()
    }
}

fn watch_loop(
    mut source: Source,
    root: PathBuf,
    shared: Shared,
    tx: watch::Sender<Arc<MountTable>>,
    resync: Duration,
) {
    let timeout = PollTimeout::try_from(resync).unwrap_or(PollTimeout::MAX);
    let mut last_full = Instant::now();
    let mut published_covers = 0;
    loop {
        let mut fds = vec![PollFd::new(shared.wake.as_fd(), PollFlags::POLLIN)];
        match &source {
            Source::Events(table) => fds.push(PollFd::new(table.events.fd(), PollFlags::POLLIN)),
            // The kernel flags mountinfo with POLLPRI|POLLERR when any mount changes.
            Source::Reads {
                change_file: Some(file),
                ..
            } => fds.push(PollFd::new(file.as_fd(), PollFlags::POLLPRI)),
            Source::Reads { .. } => {}
        }
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
            let _ = shared.wake.read();
        }
        // Read the request counter before the table, so `covers` never claims too much: the
        // events of an op that finished before this are queued by now.
        let covers = shared.requested.load(Ordering::SeqCst);
        let restat = std::mem::take(&mut *lock(&shared.restat));
        let full = last_full.elapsed() >= resync;
        if full {
            last_full = Instant::now();
        }
        let answer = match &mut source {
            Source::Events(table) if !full => table
                .apply_events(&root)
                .and_then(|changed| Ok(table.restat(&restat, &root)? | changed))
                .map(|changed| changed.then(|| table.entries())),
            other => other.table(&root, full).map(Some),
        };
        let entries = match answer {
            Ok(Some(entries)) => entries,
            // Nothing below the root dir changed: only a request to answer.
            Ok(None) if covers > published_covers => tx.borrow().entries.clone(),
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(%err, "mount-table read failed; keeping the last table");
                continue;
            }
        };
        published_covers = covers;
        if tx.send(Arc::new(MountTable { entries, covers })).is_err() {
            return; // The sync loop is gone.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeMounter;

    #[tokio::test]
    async fn a_refresh_is_answered_with_a_table_that_covers_it() {
        let watch = MountWatch::spawn(
            FakeMounter::new(),
            PathBuf::from("/var/lib/volumed"),
            Duration::from_secs(3600),
        )
        .unwrap();
        let mut tables = watch.tables.clone();
        let seq = watch.refresh([]);
        let table =
            tokio::time::timeout(Duration::from_secs(5), tables.wait_for(|t| t.covers >= seq))
                .await
                .expect("the watcher answers a refresh")
                .unwrap()
                .clone();
        assert!(table.covers >= seq);
    }
}
