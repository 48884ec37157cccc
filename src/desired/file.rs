//! The manifest-directory source: reads the directory, binds claims, records new bindings,
//! and publishes a `DesiredState` at start, on every inotify change, and on a slow resync.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::shared::lock;
use k8s_openapi::api::core::v1::PersistentVolume;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::binder::{bind, BindInput, Bindings};
use super::binding_store::{BindingStore, Recorded, ReleasedVolume};
use super::dir_watch::{Change, DirWatch};
use super::file_identity::{identity, Identity};
use super::local_disks::{add_discovered, LocalDisks};
use super::manifest::{manifest_files, ManifestError, Manifests};
use super::resolve::{consumed_claims, our_pods, resolve, unknown_node_name};
use super::{DesiredState, NodeConfig};
use crate::host::write_lease::open_for_writing;
use crate::localpv::cleaner::read_journal;

/// Coalesces a burst of file events (a create, then the write's close) into one reload.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How long a risky read (one that loses pods or volumes, or binds) must stay unchanged.
const SETTLE: Duration = Duration::from_millis(250);
/// Reads before giving up on a directory that keeps changing (then: incomplete).
const SETTLE_TRIES: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot watch manifest directory {dir} for changes: {source}; {hint}")]
    Watch {
        dir: PathBuf,
        source: notify::Error,
        hint: &'static str,
    },
    #[error("the watch of manifest directory {dir} stopped delivering changes")]
    WatchEnded { dir: PathBuf },
}

pub struct FileSource {
    pub dir: PathBuf,
    pub node: NodeConfig,
    pub store: BindingStore,
    /// False for read-only commands (`plan`, `status`): new bindings are shown, not recorded.
    pub record_bindings: bool,
    /// Re-reads the directory this often even without events, in case inotify lost some.
    pub resync: Duration,
    /// The root dir, whose pod directories say whether a doubtful node name could cost data.
    pub root_dir: PathBuf,
    /// What is known of each file between reads (`Default::default()` to start).
    pub memory: FileMemory,
    /// The local-PV classes whose discovered disks join the manifests' PVs.
    pub local_disks: Option<LocalDisks>,
    /// Where the daemon's complete reads send the volumes they know, for the file-mode cleaner.
    pub volumes_out: Option<watch::Sender<Arc<Vec<PersistentVolume>>>>,
    /// Wakes the daemon's source for a read at once (the cleaner made a disk available).
    pub reread: Arc<Notify>,
}

/// One read of the manifest directory, and what it asks of the binding record and the cleaner.
pub struct Read {
    pub state: DesiredState,
    /// Recording it would change the binding record (new bindings, or releases).
    pub records: bool,
    /// The volumes this read would release from their deleted claims, by PV name.
    pub gone: BTreeMap<String, ReleasedVolume>,
    /// Every PV the read knows (the manifests', the discovered disks', those being cleaned),
    /// for the cleaner, which takes their phases from the binding record.
    pub volumes: Vec<PersistentVolume>,
    /// When it began, by the clock file times are compared with (see `quiet`).
    pub began: SystemTime,
    /// The binding record's identity before it was read (`None`: there was none).
    record: Option<Identity>,
}

/// Which manifest files are being written, and the last complete version of each.
pub struct FileMemory {
    /// Files modified with no close-write since (inotify); kept by the watcher's callback.
    writing: Arc<Mutex<BTreeSet<PathBuf>>>,
    /// Each file's content as last read while no one was writing it, with its parse.
    complete: Mutex<BTreeMap<PathBuf, Known>>,
    /// Whether a file is open for writing now (`None`: cannot tell); the kernel's answer.
    open_for_writing: fn(&Path) -> Option<bool>,
    /// The wall clock that file times are compared with, and the wait before a second read
    /// (tests replace both).
    clock: fn() -> SystemTime,
    pause: fn(Duration),
    /// The wall and monotonic clocks when this memory was made, to tell a stepped wall clock.
    started: (SystemTime, std::time::Instant),
    /// Full reads of the directory made so far (tests count the second reads).
    reads: std::sync::atomic::AtomicU64,
}

impl FileMemory {
    /// Whether the wall clock moved unlike the monotonic one since the start (a step by NTP,
    /// by hand): file times from before the step cannot be compared with now.
    fn clock_stepped(&self) -> bool {
        let (wall, mono) = self.started;
        let walked = SystemTime::now()
            .duration_since(wall)
            .unwrap_or(Duration::ZERO);
        let ran = mono.elapsed();
        walked.max(ran) - walked.min(ran) > RACY_WINDOW
    }
}

/// Whether `dir` is on a filesystem whose file times this kernel sets itself, by its own
/// clock: the local disk filesystems and tmpfs (not NFS, SMB, FUSE or the like).
fn on_local_filesystem(dir: &Path) -> bool {
    // The magic numbers of linux/magic.h.
    const LOCAL: [u64; 6] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x794C_7630, // overlayfs
        0x2FC1_2FC1, // zfs
    ];
    rustix::fs::statfs(dir).is_ok_and(|fs| {
        #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
        let magic = fs.f_type as u64;
        LOCAL.contains(&magic)
    })
}

/// A file's last complete version.
struct Known {
    text: String,
    /// `text` parsed alone, added to each read's manifests while the file stays the same.
    parsed: Manifests,
    /// What told this version from others when it was read.
    identity: Option<Identity>,
    /// Its last change (ctime) came well before the read that saw it: a later write would
    /// show in its identity, so an unchanged identity means unchanged content. (A write in
    /// the same clock tick as the read would not; those files are read again next time.)
    settled: bool,
}

/// A manifest file as a read finds it, before its content is looked at.
struct Seen {
    path: PathBuf,
    identity: Option<Identity>,
    /// Its last complete version, from earlier reads.
    before: Option<Known>,
}

impl Seen {
    /// Its earlier parse stands without a read (see `Known::settled`).
    fn unchanged(&self, writing: &BTreeSet<PathBuf>) -> bool {
        self.before.as_ref().is_some_and(|b| {
            b.settled
                && self.identity.is_some()
                && b.identity == self.identity
                && !writing.contains(&self.path)
        })
    }
}

/// What a read makes of one file.
enum Looked {
    Known(Known),
    /// Being written: its last complete version stays, with a warning.
    Kept {
        kept: Known,
        warning: String,
    },
    Failed(ManifestError),
}

/// Files to parse in a read before they are shared among threads: fewer cost less than the
/// threads.
const PARSE_IN_PARALLEL_FROM: usize = 64;

/// `items.map(work)` in order, on as many threads as the machine has cores when `parallel`.
/// Each thread takes the next item until none is left; a thread that cannot be started
/// (a pids limit) leaves its share to the others, this one included.
fn map_maybe_in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    parallel: bool,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !parallel || threads < 2 {
        return items.into_iter().map(work).collect();
    }
    let count = items.len();
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let drain = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(slot) = slots.get(i) else {
            return;
        };
        let item = lock(slot).take().expect("each item is taken once");
        *lock(&results[i]) = Some(work(item));
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            let _ = std::thread::Builder::new().spawn_scoped(scope, drain);
        }
        drain();
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .ok()
                .flatten()
                .expect("every item is done when the threads end")
        })
        .collect()
}

/// How long before a read a file's last change must be for its identity alone to vouch for
/// its content: more than the coarsest timestamp tick of the filesystems it may live on.
const RACY_WINDOW: Duration = Duration::from_millis(100);

/// Whether a file's last change (its ctime, which no one can set back) came more than `quiet`
/// plus a timestamp tick before `read_began`.
fn unchanged_for(identity: Option<Identity>, quiet: Duration, read_began: SystemTime) -> bool {
    identity.is_some_and(|(.., ctime, ctime_nsec)| {
        let changed = u64::try_from(ctime).ok().map(|secs| {
            std::time::UNIX_EPOCH + Duration::new(secs, u32::try_from(ctime_nsec).unwrap_or(0))
        });
        changed.is_some_and(|changed| changed + quiet + RACY_WINDOW < read_began)
    })
}

fn settled_before(identity: Option<Identity>, read_began: SystemTime) -> bool {
    unchanged_for(identity, Duration::ZERO, read_began)
}

/// Whether `seen` (a file's identity, looked at now) has fine file times and no change since
/// `quiet` before `read_began` (see `unchanged_for`).
fn still_for(seen: Option<Identity>, quiet: Duration, read_began: SystemTime) -> bool {
    let fine = seen.is_some_and(|(.., ctime_nsec)| ctime_nsec != 0);
    fine && unchanged_for(seen, quiet, read_began)
}

impl Default for FileMemory {
    fn default() -> Self {
        FileMemory {
            writing: Arc::default(),
            complete: Mutex::default(),
            open_for_writing,
            clock: SystemTime::now,
            pause: std::thread::sleep,
            started: (SystemTime::now(), std::time::Instant::now()),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl FileSource {
    /// A snapshot safe to act on, for a one-shot command: see `settled`.
    pub fn snapshot(&self) -> DesiredState {
        self.settled(None, true).state
    }

    /// Reads the directory until the result is safe to act on. A read that would lose pods
    /// or volumes against `baseline` (the last complete snapshot; none at start), make new
    /// bindings or release the volumes of deleted claims is trusted only when a second read
    /// `SETTLE` later agrees, so a file caught mid-write never tears anything down, binds a
    /// claim from half a spec or releases a volume. Additions need no second read and show up
    /// at once. `may_release`: whether a claim missing from this read may have its volume
    /// released (not while a replaced directory may still be filling). Blocking file I/O:
    /// call it off the async runtime.
    pub fn settled(&self, baseline: Option<&DesiredState>, may_release: bool) -> Read {
        let mut read = self.read_once(None, may_release);
        for _ in 0..SETTLE_TRIES {
            let state = &read.state;
            let loses = match baseline {
                Some(baseline) => loses(baseline, state),
                // At start, what could be lost is what the host has: a pod directory.
                None => self.loses_pod_dirs(state),
            };
            let risky = state.complete && (read.records || loses);
            // A read of inputs that had all been still for SETTLE already is what the second
            // read would find (short of a writer pausing longer than SETTLE, which the second
            // read would miss as well).
            // Asked only of a risky read: it stats every input again.
            if risky && !self.quiet(read.began) {
                (self.memory.pause)(SETTLE);
                // Inputs still as the first read found them: a second read would find the
                // same, and is not made.
                if !self.unchanged_since(&read) {
                    let again = self.read_once(None, may_release);
                    if again.state != read.state || again.gone != read.gone {
                        read = again;
                        continue;
                    }
                }
            }
            if !(read.records && self.record_bindings) {
                return read;
            }
            // Agreed twice: now record the new bindings, and the releases both reads found.
            let recorded = self.read_once(Some(&read.gone), may_release);
            if recorded.state == read.state {
                return recorded;
            }
            read = Read {
                records: false,
                ..recorded
            };
        }
        read.state.complete = false;
        read.state.problems.push(format!(
            "the manifest directory {} kept changing for {} ms; nothing is torn down until it settles",
            self.dir.display(),
            SETTLE.as_millis() * u128::from(SETTLE_TRIES)
        ));
        read
    }

    /// One full read. `record` (the releases earlier reads agreed on) saves new bindings, and
    /// releases (with `may_release`) the volumes of recorded claims that this read, complete,
    /// and the earlier ones no longer have.
    fn read_once(
        &self,
        record: Option<&BTreeMap<String, ReleasedVolume>>,
        may_release: bool,
    ) -> Read {
        let (mut manifests, read_began) = self.load();
        // An empty directory (a filesystem not mounted yet, a wrong --manifests) releases
        // nothing, however complete it looks.
        let has_manifests = !lock(&self.memory.complete).is_empty();
        let mut problems: Vec<String> = manifests.errors.iter().map(|e| e.to_string()).collect();
        let mut held = Vec::new();
        if let Some(disks) = &self.local_disks {
            // A disk being cleaned is offered to no claim until it is clean.
            match read_journal(&self.root_dir) {
                Ok(journal) => {
                    let cleaning = journal.cleaning.keys().cloned().collect();
                    let (trouble, cleaning) =
                        add_discovered(&mut manifests, disks, &self.node, &cleaning);
                    problems.extend(trouble);
                    held = cleaning;
                }
                Err(why) => problems.push(format!(
                    "{why}; no local disk is offered until it is fixed or removed"
                )),
            }
        }
        let pods_dir = self.root_dir.join("pods");
        // Unsure (not even readable) counts as there: doubt keeps.
        let has_pod_dir = |uid: &str| {
            pods_dir
                .join(uid)
                .symlink_metadata()
                .map_or_else(|e| e.kind() != std::io::ErrorKind::NotFound, |_| true)
        };
        problems.extend(unknown_node_name(&manifests, &self.node, has_pod_dir));
        let pods = our_pods(&manifests, &self.node);
        let consumed = consumed_claims(&pods);
        let record_seen = identity(self.store.path());
        let recorded = match self.store.load() {
            Ok(recorded) => Some(recorded),
            Err(err) => {
                problems.push(err.to_string());
                None
            }
        };
        let mut labels = self.node.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.node.name.clone());
        let none = Recorded::default();
        let known = recorded.as_ref().unwrap_or(&none);
        let mut bindings = bind(&BindInput {
            claims: &manifests.claims,
            volumes: &manifests.volumes,
            classes: &manifests.classes,
            recorded: &known.bindings,
            released: &known.released,
            consumed: &consumed,
            node_name: &self.node.name,
            node_labels: &labels,
        });
        // Only a binding the binder chose waits for a second read: one the claim or the volume
        // names is recorded from the first.
        let binds = recorded.as_ref().is_some_and(|recorded| {
            bindings.bound.iter().any(|(claim, pv)| {
                bindings.chosen.contains(claim) && recorded.bindings.get(claim) != Some(pv)
            })
        });
        match &recorded {
            // New bindings are made only from a complete view and a readable record, so a
            // claim is never bound while the volume it should get is in a broken file.
            Some(recorded) if problems.is_empty() => {
                let policies = policies_of(&manifests.volumes);
                if let Err(why) =
                    self.record_new(&recorded.bindings, &bindings, &policies, record.is_some())
                {
                    hold_back_new(&mut bindings, &recorded.bindings, &why);
                    problems.push(why);
                }
            }
            Some(recorded) => hold_back_new(
                &mut bindings,
                &recorded.bindings,
                "the manifests have errors",
            ),
            None => hold_back_new(
                &mut bindings,
                &Default::default(),
                "the binding record is unreadable",
            ),
        }
        let mut state = resolve(&manifests, &bindings, &self.node);
        problems.extend(manifests.refused.iter().map(|e| e.to_string()));
        state.problems.splice(0..0, problems);
        state.complete = state.problems.is_empty();
        // Claims whose manifest is gone, with their volumes: released only from a complete
        // read, and not while a pod still names the claim (as Kubernetes' pvc-protection
        // keeps a claim in use), as a deleted PVC's volume is.
        let gone: BTreeMap<String, ReleasedVolume> = known
            .bindings
            .iter()
            .filter(|(claim, _)| {
                !manifests.claims.contains_key(*claim) && !consumed.contains(*claim)
            })
            .map(|(claim, pv)| {
                // The policy it was bound with; for a binding recorded without one, as it
                // is now.
                let now = || {
                    let spec = manifests.volumes.get(pv)?.spec.as_ref()?;
                    spec.persistent_volume_reclaim_policy.clone()
                };
                let released = ReleasedVolume {
                    claim: claim.clone(),
                    reclaim_policy: known.policies.get(pv).cloned().or_else(now),
                };
                (pv.clone(), released)
            })
            .collect();
        let releases = state.complete && may_release && has_manifests && !gone.is_empty();
        if let (true, Some(agreed)) = (releases, record) {
            let confirmed: BTreeMap<_, _> = gone
                .iter()
                .filter(|(pv, released)| agreed.get(*pv) == Some(released))
                .map(|(pv, released)| (pv.clone(), released.clone()))
                .collect();
            if let Err(why) = self.record_releases(&confirmed) {
                state.problems.push(why);
                state.complete = false;
            }
        }
        // Copied only for the cleaner that asks for them.
        let volumes = match &self.volumes_out {
            Some(_) => manifests
                .volumes
                .into_values()
                .map(Arc::unwrap_or_clone)
                .chain(held)
                .collect(),
            None => Vec::new(),
        };
        Read {
            began: read_began,
            record: record_seen,
            state,
            records: binds || releases,
            gone: if releases { gone } else { BTreeMap::new() },
            volumes,
        }
    }

    /// Whether no input of the read that began at `read_began` changed in the `SETTLE` before
    /// it, nor since: the directory's entries (a file added, removed or renamed changes the
    /// directory), each manifest file it read (its ctime, looked at now, after the read), and
    /// the binding record; and no file is being written. Asked after the read, so a change
    /// during the read counts. Reads that add discovered local disks keep the second read:
    /// their disks and the cleaner's journal are inputs too.
    ///
    /// File times are trusted for this only where they are fine and local: every input's
    /// ctime has nanoseconds (a filesystem with one-second times has none), the directory is
    /// on a local filesystem (a network or FUSE server sets times by its own clock), and the
    /// wall clock has not been stepped since this process started (it runs with the monotonic
    /// clock within `RACY_WINDOW`). Elsewhere the second read is made.
    fn quiet(&self, read_began: SystemTime) -> bool {
        let still = |path: &Path| still_for(identity(path), SETTLE, read_began);
        let record = self.store.path();
        self.trusts_file_times()
            && still(&self.dir)
            && lock(&self.memory.complete).keys().all(|file| still(file))
            && (still(record) || !record.exists())
    }

    /// After the settle pause: whether the inputs of the read that began at `read_began` are
    /// still as it found them, so that a second read would find the same: the same files
    /// listed, each with the identity that read saw and no change since before it began (its
    /// ctime, looked at now: a change in the same timestamp tick leaves the identity alone),
    /// the binding record likewise, and none being written. The directory's ctime cannot vouch
    /// here (the change that made the read risky is on it), so its entries are listed again
    /// instead. This asks more than the second read does (no change at all, not the same
    /// result at two moments), where `quiet` trusts file times.
    fn unchanged_since(&self, read: &Read) -> bool {
        let read_began = read.began;
        if !self.trusts_file_times() {
            return false;
        }
        let (listed, listing) = manifest_files(&self.dir);
        let complete = lock(&self.memory.complete);
        let as_read = |file: &PathBuf| {
            let seen = identity(file);
            complete
                .get(file)
                .is_some_and(|known| known.identity.is_some() && known.identity == seen)
                && still_for(seen, Duration::ZERO, read_began)
        };
        let record = identity(self.store.path());
        listing.errors.is_empty()
            && listed.len() == complete.len()
            && listed.iter().all(as_read)
            && record == read.record
            && (record.is_none() || still_for(record, Duration::ZERO, read_began))
    }

    /// What `quiet` and `unchanged_since` need of the file times: see `quiet`.
    fn trusts_file_times(&self) -> bool {
        self.local_disks.is_none()
            && !self.memory.clock_stepped()
            && on_local_filesystem(&self.dir)
            && lock(&self.memory.writing).is_empty()
    }

    /// Whether `state` lacks a pod that has a directory under the root dir (unreadable: yes).
    fn loses_pod_dirs(&self, state: &DesiredState) -> bool {
        let Ok(entries) = std::fs::read_dir(self.root_dir.join("pods")) else {
            return self.root_dir.join("pods").exists();
        };
        entries.into_iter().any(|entry| {
            entry.map_or(true, |entry| {
                let uid = entry.file_name();
                let uid = uid.to_string_lossy();
                !state.pods.contains_key(uid.as_ref()) && !state.terminating.contains(uid.as_ref())
            })
        })
    }

    /// Reads the directory, each file in its last complete version: a file whose content
    /// changed while it is being written (modified with no close-write since, or open for
    /// writing now) keeps the content it had before, whatever made this read happen; one
    /// that has none yet makes the read incomplete. A file that is closed is taken as it is,
    /// emptied or not.
    fn load(&self) -> (Manifests, SystemTime) {
        // Taken before the directory is listed: anything changed after this has a later ctime.
        let read_began = (self.memory.clock)();
        self.memory
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (files, mut manifests) = manifest_files(&self.dir);
        let writing = lock(&self.memory.writing).clone();
        let mut complete = lock(&self.memory.complete);
        let files: Vec<Seen> = files
            .into_iter()
            .map(|path| {
                let identity = identity(&path);
                let before = complete.remove(&path);
                Seen {
                    path,
                    identity,
                    before,
                }
            })
            .collect();
        // Most reads of a daemon find most files unchanged (a stat each); a first read, or a
        // `run --once`, parses them all, which is worth the machine's cores.
        let to_parse = files.iter().filter(|f| !f.unchanged(&writing)).count();
        let looked = map_maybe_in_parallel(files, to_parse >= PARSE_IN_PARALLEL_FROM, |file| {
            let path = file.path.clone();
            (path, self.look(file, &writing, read_began))
        });
        let mut now = BTreeMap::new();
        // In the directory's order, as if read one by one: a second definition of an object
        // is the one reported.
        for (path, looked) in looked {
            let kept = match looked {
                Looked::Known(kept) => kept,
                Looked::Kept { kept, warning } => {
                    manifests.warnings.push(warning);
                    kept
                }
                Looked::Failed(error) => {
                    manifests.errors.push(error);
                    continue;
                }
            };
            manifests.absorb(&kept.parsed);
            now.insert(path, kept);
        }
        // Files gone from the directory are forgotten.
        *complete = now;
        (manifests, read_began)
    }

    /// One file of a read, parsed alone (or its earlier parse, where that stands).
    fn look(&self, file: Seen, writing: &BTreeSet<PathBuf>, read_began: SystemTime) -> Looked {
        let unchanged = file.unchanged(writing);
        let Seen {
            path,
            identity: seen,
            before,
        } = file;
        // Unchanged since a read that came well after its last change: its parse stands,
        // and it is not even read.
        let before = match before {
            Some(before) if unchanged => return Looked::Known(before),
            before => before,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => {
                return Looked::Failed(ManifestError::ReadFile {
                    path,
                    source: source.into(),
                })
            }
        };
        let changed = before.as_ref().map(|b| &b.text) != Some(&text);
        let in_progress = changed && self.in_progress(&path, seen, writing);
        match (in_progress, before) {
            // The same text: the parse stands; only what tells versions apart is new.
            (false, Some(before)) if !changed => Looked::Known(Known {
                identity: seen,
                settled: settled_before(seen, read_began),
                ..before
            }),
            (false, _) => {
                let mut parsed = Manifests::default();
                parsed.add_file(&path, &text);
                Looked::Known(Known {
                    text,
                    parsed,
                    identity: seen,
                    settled: settled_before(seen, read_began),
                })
            }
            (true, Some(before)) => Looked::Kept {
                kept: before,
                warning: format!("{} is being written; its last complete version stays in force until it is closed", path.display()),
            },
            (true, None) => Looked::Failed(ManifestError::BeingWritten { path }),
        }
    }

    /// Whether a file whose content changed is still being written: it changed while it was
    /// read, or a writer still holds it (asked after the read, so a writer that truncated it
    /// and has not written yet is caught). Where the kernel cannot tell, inotify's "modified,
    /// not closed since" decides; where it can, its answer wins over a stale inotify entry
    /// (a `truncate(2)` by path has no close to follow it).
    fn in_progress(
        &self,
        path: &Path,
        seen: Option<Identity>,
        writing: &BTreeSet<PathBuf>,
    ) -> bool {
        if seen.is_none() || identity(path) != seen {
            return true;
        }
        match (self.memory.open_for_writing)(path) {
            Some(open) => {
                if !open {
                    lock(&self.memory.writing).remove(path);
                }
                open
            }
            None => writing.contains(path),
        }
    }

    /// Records the new bindings, each volume with the reclaim policy it has now (`policies`):
    /// those the binder chose only when `chosen_agreed` (two reads agreed on them, or one of
    /// inputs that had been still for the settle window), those the
    /// manifests name whenever this source records bindings.
    fn record_new(
        &self,
        recorded: &BTreeMap<String, String>,
        bindings: &Bindings,
        policies: &BTreeMap<String, String>,
        chosen_agreed: bool,
    ) -> Result<(), String> {
        let is_new = |(claim, pv): &(&String, &String)| {
            recorded.get(*claim) != Some(*pv)
                && self.record_bindings
                && (chosen_agreed || !bindings.chosen.contains(*claim))
        };
        if !bindings.bound.iter().any(|b| is_new(&b)) {
            return Ok(());
        }
        self.store
            .update(|now| {
                for (claim, pv) in bindings.bound.iter().filter(|b| is_new(b)) {
                    now.bindings.insert(claim.clone(), pv.clone());
                    if let Some(policy) = policies.get(pv) {
                        now.policies.insert(pv.clone(), policy.clone());
                    }
                }
                (true, ())
            })
            .map_err(|e| e.to_string())?;
        for (claim, pv) in bindings.bound.iter().filter(|b| is_new(b)) {
            tracing::info!(claim, pv, "bound claim to volume");
        }
        Ok(())
    }

    /// Moves the bindings of deleted claims to the record's releases.
    fn record_releases(&self, gone: &BTreeMap<String, ReleasedVolume>) -> Result<(), String> {
        let moved = self
            .store
            .update(|now| {
                let mut moved = Vec::new();
                for (pv, released) in gone {
                    let claim = &released.claim;
                    if now.bindings.get(claim) == Some(pv) {
                        now.bindings.remove(claim);
                        now.policies.remove(pv);
                        now.released.insert(pv.clone(), released.clone());
                        moved.push((pv, claim));
                    }
                }
                (!moved.is_empty(), moved)
            })
            .map_err(|e| e.to_string())?;
        for (pv, claim) in moved {
            tracing::info!(
                claim,
                pv,
                "the claim's manifest is gone: its volume is Released"
            );
        }
        Ok(())
    }

    /// Publishes snapshots until `cancel` fires: at start, after each finished write in the
    /// directory, and on the resync interval.
    pub async fn run(
        self,
        tx: watch::Sender<Arc<DesiredState>>,
        cancel: CancellationToken,
    ) -> Result<(), FileSourceError> {
        let writing = self.memory.writing.clone();
        let (mut watch, mut events) =
            DirWatch::start(&self.dir, move |event| track_writes(&writing, event))
                .map_err(|source| self.watch_error(source))?;
        // `volumed release` changes the binding record: a read follows at once.
        let (record_tx, mut record_changes) = tokio::sync::mpsc::unbounded_channel();
        let _record_watch = watch_record(&self.store, record_tx);
        let source = Arc::new(self);
        let mut baseline: Option<Arc<DesiredState>> = None;
        // Set when the directory was replaced, until a file in it changes or a resync comes:
        // an empty directory that replaced one with pods may be a copy not yet begun.
        let mut replaced = false;
        loop {
            let read = source.read(baseline.clone(), !replaced).await;
            let mut state = read.state;
            let had_pods = baseline.as_ref().is_some_and(|b| !b.pods.is_empty());
            // The last read's complete files: none means the directory has no manifests.
            if replaced && had_pods && lock(&source.memory.complete).is_empty() {
                state.complete = false;
                state.problems.push(format!(
                    "the manifest directory {} was replaced by one with no manifests; nothing is torn down until a manifest appears in it, or the next resync (in {}) finds it still empty",
                    source.dir.display(),
                    humantime::format_duration(source.resync)
                ));
            }
            let previous = tx.borrow().clone();
            let state = Arc::new(state);
            if state.complete {
                baseline = Some(state.clone());
                if let Some(out) = &source.volumes_out {
                    out.send_if_modified(|now| {
                        let changed = **now != read.volumes;
                        if changed {
                            *now = Arc::new(read.volumes);
                        }
                        changed
                    });
                }
            }
            if state.problems != previous.problems || state.warnings != previous.warnings {
                for problem in &state.problems {
                    tracing::error!(dir = %source.dir.display(), %problem, "manifest problem; nothing is torn down until it is fixed");
                }
                for warning in &state.warnings {
                    tracing::warn!(dir = %source.dir.display(), %warning, "manifest warning");
                }
            }
            crate::shared::publish(&tx, state);
            let resync_at = tokio::time::Instant::now() + source.resync;
            // Until something may have changed what a read finds.
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(resync_at) => {
                        replaced = false;
                        break;
                    }
                    _ = source.reread.notified() => break,
                    Some(()) = record_changes.recv() => {
                        while record_changes.try_recv().is_ok() {}
                        // This source's own write (a new binding) is in what it read already.
                        if !source.store.is_own_write() {
                            break;
                        }
                    }
                    change = events.recv() => {
                        // The watch's thread is gone: changes would be seen only at resyncs.
                        let Some(change) = change else {
                            return Err(FileSourceError::WatchEnded { dir: source.dir.clone() });
                        };
                        if change == Change::Layout {
                            // Watch the new directory before reading it: what is written into
                            // it after this is seen, what was written before is read.
                            watch.rewatch();
                        }
                        let burst = Burst::gather(&mut events, change).await;
                        if burst.layout {
                            watch.rewatch();
                        }
                        replaced = burst.layout || (replaced && !burst.content);
                        break;
                    }
                }
            }
        }
    }

    async fn read(
        self: &Arc<Self>,
        baseline: Option<Arc<DesiredState>>,
        may_release: bool,
    ) -> Read {
        tracing::debug!(dir = %self.dir.display(), "reading the manifest directory");
        let reader = self.clone();
        tokio::task::spawn_blocking(move || reader.settled(baseline.as_deref(), may_release))
            .await
            .expect("the manifest reader does not panic")
    }

    fn watch_error(&self, source: notify::Error) -> FileSourceError {
        let out_of_inotify = match &source.kind {
            notify::ErrorKind::MaxFilesWatch => true,
            notify::ErrorKind::Io(err) => {
                matches!(
                    err.raw_os_error(),
                    Some(nix::libc::EMFILE | nix::libc::ENOSPC)
                )
            }
            _ => false,
        };
        FileSourceError::Watch {
            dir: self.dir.clone(),
            source,
            hint: if out_of_inotify {
                "the host is out of inotify instances or watches: raise the sysctls fs.inotify.max_user_instances and fs.inotify.max_user_watches"
            } else {
                "check that it exists"
            },
        }
    }
}

/// The events that came together, as one read.
struct Burst {
    layout: bool,
    content: bool,
}

impl Burst {
    /// `first` and what follows it at once. A file just created is written and closed next
    /// in most cases, and a replaced directory fills up: their next event is waited for (up
    /// to `DEBOUNCE`), so one read sees the file whole. A close, a rename into place or a
    /// removal is read at once: a file renamed into place is complete.
    async fn gather(
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Change>,
        first: Change,
    ) -> Burst {
        let mut burst = Burst {
            layout: false,
            content: false,
        };
        let mut last = first;
        loop {
            burst.layout |= last == Change::Layout;
            burst.content |= last != Change::Layout;
            last = match events.try_recv() {
                Ok(next) => next,
                Err(_) if last == Change::Content => return burst,
                // The watch ending is seen by the next wait for an event.
                Err(_) => match tokio::time::timeout(DEBOUNCE, events.recv()).await {
                    Ok(Some(next)) => next,
                    Ok(None) | Err(_) => return burst,
                },
            };
        }
    }
}

/// Each volume's reclaim policy, where it has one.
fn policies_of(volumes: &BTreeMap<String, Arc<PersistentVolume>>) -> BTreeMap<String, String> {
    volumes
        .iter()
        .filter_map(|(name, pv)| {
            let policy = pv.spec.as_ref()?.persistent_volume_reclaim_policy.clone()?;
            Some((name.clone(), policy))
        })
        .collect()
}

/// Watches the binding record's directory; each change to the record is sent. `None` (with a
/// warning) when it cannot be watched: changes by `volumed release` are then seen at the next
/// read.
fn watch_record(
    store: &BindingStore,
    changes: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let record = store.path().to_path_buf();
    let dir = record.parent()?.to_path_buf();
    let watched = record.clone();
    let started = std::fs::create_dir_all(&dir)
        .map_err(notify::Error::io)
        .and_then(|()| {
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Only a change: this source's own reads of the record are events too.
                let changed = event.is_ok_and(|e| {
                    e.paths.contains(&watched) && super::dir_watch::changes_a_file(&e.kind)
                });
                if changed {
                    let _ = changes.send(());
                }
            })
        })
        .and_then(|mut watcher| {
            watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
    started
        .inspect_err(|err| tracing::warn!(record = %record.display(), %err, "cannot watch the binding record; a change made by `volumed release` is seen at the next read of the manifests"))
        .ok()
}

/// Turns bindings that are not yet recorded back into pending claims.
fn hold_back_new(
    bindings: &mut Bindings,
    recorded: &std::collections::BTreeMap<String, String>,
    why: &str,
) {
    let new: Vec<String> = bindings
        .bound
        .iter()
        .filter(|(claim, pv)| recorded.get(*claim) != Some(*pv))
        .map(|(claim, _)| claim.clone())
        .collect();
    for claim in new {
        let pv = bindings.bound.remove(&claim).unwrap_or_default();
        bindings
            .pending
            .insert(claim, format!("would bind to {pv}, held back: {why}"));
    }
}

/// Keeps the set of files being written: a modify adds a file, its close-write (or its
/// removal or rename) takes it out. Lost events (an overflow) forget them all; the lease check
/// at read time still sees writers.
fn track_writes(writing: &Mutex<BTreeSet<PathBuf>>, event: &notify::Result<notify::Event>) {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    let mut writing = lock(writing);
    match event {
        Err(_) => writing.clear(),
        Ok(event) => match event.kind {
            EventKind::Modify(ModifyKind::Data(_)) => writing.extend(event.paths.iter().cloned()),
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_)) => {
                for path in &event.paths {
                    writing.remove(path);
                }
            }
            _ => {}
        },
    }
}

/// True when a pod or a volume of `before` is missing from `after`.
fn loses(before: &DesiredState, after: &DesiredState) -> bool {
    before.pods.keys().any(|uid| !after.pods.contains_key(uid))
        || before
            .volumes
            .keys()
            .any(|key| !after.volumes.contains_key(key))
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
