//! The manifest directory's watch (for the file source): inotify on the directory and on every
//! directory above it, by the path given and by the path its links lead to. A directory that
//! is removed and made again, renamed into place, or swapped by a symlink (`ln -sfn new dir`)
//! shows as an event on one of those, and the watch is set up again at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::manifest::has_manifest_name;
use crate::shared::lock;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// What an event may have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A file in the directory was written, removed or renamed: it can be read as it is.
    Content,
    /// A file was created in the directory: its writer usually writes and closes it next.
    Created,
    /// The directory or one above it was created, removed, renamed or replaced.
    Layout,
}

pub struct DirWatch {
    watcher: RecommendedWatcher,
    dir: PathBuf,
    /// The directory and its ancestors, by the given path and by where links lead; shared
    /// with the callback, which sorts events by them.
    layout: Arc<Mutex<Layout>>,
}

#[derive(Default)]
struct Layout {
    /// The directory itself, by each of its paths: events below these are content.
    dirs: BTreeSet<PathBuf>,
    /// The directories and every ancestor: an event naming one of these is a layout change.
    chain: BTreeSet<PathBuf>,
}

impl DirWatch {
    /// Watches `dir`; `on_event` sees every event first (the file source tracks writes).
    pub fn start(
        dir: &Path,
        on_event: impl Fn(&notify::Result<notify::Event>) + Send + 'static,
    ) -> Result<(DirWatch, mpsc::UnboundedReceiver<Change>), notify::Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let layout = Arc::new(Mutex::new(Layout::default()));
        let sorting = layout.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let layout = lock(&sorting);
            if event.as_ref().map_or(true, |e| in_dir(&layout, e)) {
                on_event(&event);
            }
            if let Some(change) = classify(&layout, &event) {
                let _ = tx.send(change);
            }
        })?;
        let mut watch = DirWatch {
            watcher,
            dir: dir.to_path_buf(),
            layout,
        };
        watch.rewatch();
        if !lock(&watch.layout).dirs.contains(dir) {
            return Err(notify::Error::path_not_found().add_path(dir.to_path_buf()));
        }
        Ok((watch, rx))
    }

    /// Sets the watches up again for the directory as it is now: the directory (if it
    /// exists) and every existing directory above it, by both paths. Top down, so a directory
    /// made meanwhile shows as an event on its parent's new watch; while this runs, events are
    /// sorted by the old and the new paths together, so none is dropped.
    pub fn rewatch(&mut self) {
        let resolved = std::fs::canonicalize(&self.dir).ok();
        let dirs: Vec<PathBuf> = std::iter::once(self.dir.clone()).chain(resolved).collect();
        let mut paths: Vec<PathBuf> = dirs
            .iter()
            .flat_map(|d| d.ancestors().map(Path::to_path_buf))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Fewer components are higher up: "/" first, the directory last.
        paths.sort_by_key(|p| p.components().count());
        let old: BTreeSet<PathBuf> = {
            let mut layout = lock(&self.layout);
            layout.dirs.extend(dirs.iter().cloned());
            let old = layout.chain.clone();
            layout.chain.extend(paths.iter().cloned());
            old
        };
        for path in old.iter().filter(|p| !paths.contains(p)) {
            let _ = self.watcher.unwatch(path);
        }
        let mut new = Layout::default();
        for path in &paths {
            // The inode at a path may be a new one: drop the old watch, then add one.
            let _ = self.watcher.unwatch(path);
            // inotify_add_watch follows a link: a swapped symlink is watched at its target.
            if self
                .watcher
                .watch(path, RecursiveMode::NonRecursive)
                .is_ok()
            {
                new.chain.insert(path.clone());
                if dirs.contains(path) {
                    new.dirs.insert(path.clone());
                }
            }
        }
        *lock(&self.layout) = new;
    }
}

/// Sorts an event: one naming the directory or a directory above it changes the layout; one
/// for a file in the directory that may change its content (a close after writing, create,
/// remove, rename) is content; events about other entries of the ancestors are ignored.
fn classify(layout: &Layout, event: &notify::Result<notify::Event>) -> Option<Change> {
    let event = match event {
        // Lost events (a queue overflow): anything may have changed.
        Err(_) => return Some(Change::Layout),
        Ok(event) => event,
    };
    let changes_content = changes_a_file(&event.kind);
    if changes_content && event.paths.iter().any(|p| layout.chain.contains(p)) {
        return Some(Change::Layout);
    }
    let created = matches!(event.kind, notify::EventKind::Create(_));
    let read = event.paths.iter().any(|p| may_change_a_read(p));
    (in_dir(layout, event) && changes_content && read).then_some(if created {
        Change::Created
    } else {
        Change::Content
    })
}

/// Whether an event of this kind may change what a path holds: it makes or unmakes a path, or
/// ends a write. Opens, reads and closes without writing do not count: the daemon's own reads
/// make those, and counting them would have every read ask for the next.
pub fn changes_a_file(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Other
            | EventKind::Any
    )
}

/// Whether an entry can change what the reader finds. A regular file the reader skips (a
/// hidden temporary file written before it is renamed into place, another extension) cannot;
/// a hidden directory or link can (a ConfigMap volume swaps its `..data` link to publish new
/// files), and so can an entry that is gone, whatever it was.
fn may_change_a_read(path: &Path) -> bool {
    has_manifest_name(path)
        || !std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_file())
}

/// True for an event about a file in the directory (not about the directory's ancestors'
/// other entries).
fn in_dir(layout: &Layout, event: &notify::Event) -> bool {
    event.paths.iter().any(|p| {
        p.parent()
            .is_some_and(|parent| layout.dirs.contains(parent))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};

    #[test]
    fn reading_a_file_is_no_change_and_writing_one_is() {
        let reads = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(
                notify::event::MetadataKind::AccessTime,
            )),
        ];
        for kind in reads {
            assert!(!changes_a_file(&kind), "{kind:?} is a read");
        }
        let writes = [
            EventKind::Create(CreateKind::File),
            EventKind::Remove(notify::event::RemoveKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ];
        for kind in writes {
            assert!(changes_a_file(&kind), "{kind:?} is a change");
        }
    }

    #[test]
    fn a_created_file_is_told_apart_and_skipped_files_are_no_change() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        std::fs::create_dir(&m).unwrap();
        let layout = Layout {
            dirs: BTreeSet::from([m.clone()]),
            chain: dir
                .path()
                .ancestors()
                .map(Path::to_path_buf)
                .chain([m.clone()])
                .collect(),
        };
        let at = |name: &str| m.join(name);
        let event = |kind, path: PathBuf| Ok(notify::Event::new(kind).add_path(path));
        let create = EventKind::Create(CreateKind::Any);
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let removed = EventKind::Remove(notify::event::RemoveKind::Any);
        std::fs::write(at("a.yaml"), "").unwrap();
        assert_eq!(
            classify(&layout, &event(create, at("a.yaml"))),
            Some(Change::Created)
        );
        assert_eq!(
            classify(&layout, &event(closed, at("a.yaml"))),
            Some(Change::Content)
        );
        assert_eq!(
            classify(&layout, &event(renamed, at("a.yaml"))),
            Some(Change::Content)
        );
        // A temporary file written before it is renamed into place, a file volumed skips.
        std::fs::write(at(".a.yaml.tmp"), "").unwrap();
        std::fs::write(at("notes.txt"), "").unwrap();
        assert_eq!(classify(&layout, &event(create, at(".a.yaml.tmp"))), None);
        assert_eq!(classify(&layout, &event(closed, at(".a.yaml.tmp"))), None);
        assert_eq!(classify(&layout, &event(closed, at("notes.txt"))), None);
        // A ConfigMap volume's update: a hidden directory, then its `..data` link swapped.
        std::fs::create_dir(at("..2026_12_07")).unwrap();
        std::os::unix::fs::symlink("..2026_12_07", at("..data")).unwrap();
        assert_eq!(
            classify(&layout, &event(create, at("..2026_12_07"))),
            Some(Change::Created)
        );
        assert_eq!(
            classify(&layout, &event(renamed, at("..data"))),
            Some(Change::Content)
        );
        // Gone: what it was cannot be told, so it counts.
        assert_eq!(
            classify(&layout, &event(removed, at(".gone"))),
            Some(Change::Content)
        );
        assert_eq!(
            classify(&layout, &event(create, m.clone())),
            Some(Change::Layout)
        );
    }
}
