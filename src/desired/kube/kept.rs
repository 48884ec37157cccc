//! The API source's store for claims and volumes, between their cluster-wide watches and the
//! snapshot (pure): it keeps only the objects this node's pods reference, so memory and each
//! snapshot's cost follow this node's pods rather than the cluster's size, and it names the
//! ones to read with a GET: those a pod came to need after their watch passed them by.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::runtime::watcher;

/// What the store knows of one wanted key (what its tests read).
#[cfg(test)]
#[derive(Debug, PartialEq)]
pub enum Lookup<'a, K> {
    Held(&'a Arc<K>),
    /// The API said it does not exist (a watch's delete, a GET's 404).
    Absent,
    /// Not known yet: a GET is due or on its way; the last one's failure, if it failed.
    Unread(Option<&'a str>),
}

/// The wanted objects of one kind, by the key the file source uses for them.
pub struct Kept<K> {
    key: fn(&K) -> String,
    wanted: BTreeSet<String>,
    held: BTreeMap<String, Arc<K>>,
    absent: BTreeSet<String>,
    /// Keys a GET is out for: the token its answer must bring back, and its last failure.
    reading: BTreeMap<String, (u64, Option<String>)>,
    /// The last token handed out: an answer whose token is not its key's current one is from
    /// a GET that a relist or the key's falling out of want has made moot.
    tokens: u64,
    /// A list in progress (after `Init`): swapped in whole at `InitDone`, so that a relist
    /// never shows a partial view.
    relist: Option<BTreeMap<String, Arc<K>>>,
    /// Whether a list has completed.
    listed: bool,
}

impl<K: Clone> Kept<K> {
    pub fn new(key: fn(&K) -> String) -> Kept<K> {
        Kept {
            key,
            wanted: BTreeSet::new(),
            held: BTreeMap::new(),
            absent: BTreeSet::new(),
            reading: BTreeMap::new(),
            tokens: 0,
            relist: None,
            listed: false,
        }
    }

    /// Applies one event of the watch; objects no pod wants are dropped at once.
    pub fn watch_event(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(object) => {
                let key = (self.key)(object);
                if self.wanted.contains(&key) {
                    self.absent.remove(&key);
                    self.held.insert(key, Arc::new(object.clone()));
                }
            }
            watcher::Event::Delete(object) => {
                let key = (self.key)(object);
                self.held.remove(&key);
                if self.wanted.contains(&key) {
                    self.absent.insert(key);
                }
            }
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(object) => {
                let key = (self.key)(object);
                if let (true, Some(listed)) = (self.wanted.contains(&key), self.relist.as_mut()) {
                    listed.insert(key, Arc::new(object.clone()));
                }
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.relist.take() {
                    self.held = listed;
                }
                // What became wanted while the list went by, and what the watch may have
                // missed before it (a gap ends in a relist), is read again; a GET sent before
                // may answer with an object the list found deleted, so its answer is dropped.
                self.absent.clear();
                self.reading.clear();
                self.listed = true;
            }
        }
    }

    /// Sets the keys wanted now and forgets every other object (and every GET out for one);
    /// returns the wanted keys that need a GET, each with the token its answer must bring
    /// back. None before a list has completed (the list brings them) or while one is in
    /// progress.
    pub fn want(&mut self, keys: BTreeSet<String>) -> Vec<(String, u64)> {
        self.held.retain(|key, _| keys.contains(key));
        self.absent.retain(|key| keys.contains(key));
        self.reading.retain(|key, _| keys.contains(key));
        self.wanted = keys;
        if !self.listed || self.relist.is_some() {
            return Vec::new();
        }
        let due: Vec<String> = self
            .wanted
            .iter()
            .filter(|key| {
                !self.held.contains_key(*key)
                    && !self.absent.contains(*key)
                    && !self.reading.contains_key(*key)
            })
            .cloned()
            .collect();
        due.into_iter()
            .map(|key| {
                self.tokens += 1;
                self.reading.insert(key.clone(), (self.tokens, None));
                (key, self.tokens)
            })
            .collect()
    }

    /// A GET's answer for `key` (`Ok(None)`: not found), with the token `want` gave it.
    /// Returns true when the reader should try again (it failed, and its GET is still the
    /// current one). An answer is moot once a watch event or a list has told of the key
    /// since, or the key fell out of want meanwhile (its token is then no longer current).
    pub fn read(&mut self, key: &str, token: u64, answer: Result<Option<K>, String>) -> bool {
        if self.reading.get(key).map(|(current, _)| *current) != Some(token) {
            return false;
        }
        if self.held.contains_key(key) || self.absent.contains(key) {
            self.reading.remove(key);
            return false;
        }
        match answer {
            Ok(Some(object)) => {
                self.held.insert(key.to_string(), Arc::new(object));
            }
            Ok(None) => {
                self.absent.insert(key.to_string());
            }
            Err(why) => {
                self.reading.insert(key.to_string(), (token, Some(why)));
                return true;
            }
        }
        self.reading.remove(key);
        false
    }

    #[cfg(test)]
    pub fn lookup(&self, key: &str) -> Option<Lookup<'_, K>> {
        if let Some(object) = self.held.get(key) {
            return Some(Lookup::Held(object));
        }
        if self.absent.contains(key) {
            return Some(Lookup::Absent);
        }
        self.wanted
            .contains(key)
            .then(|| Lookup::Unread(self.reading.get(key).and_then(|(_, why)| why.as_deref())))
    }

    /// The wanted objects held (shared, not copied).
    pub fn held(&self) -> BTreeMap<String, Arc<K>> {
        self.held.clone()
    }

    /// Wanted keys not known yet, with the last GET's failure for each that failed.
    pub fn unread(&self) -> BTreeMap<String, Option<String>> {
        self.wanted
            .iter()
            .filter(|key| !self.held.contains_key(*key) && !self.absent.contains(*key))
            .map(|key| {
                let failed = self.reading.get(key).and_then(|(_, why)| why.clone());
                (key.clone(), failed)
            })
            .collect()
    }

    pub fn listed(&self) -> bool {
        self.listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Obj {
        name: &'static str,
        version: u32,
    }

    fn key(o: &Obj) -> String {
        o.name.to_string()
    }

    fn obj(name: &'static str, version: u32) -> Obj {
        Obj { name, version }
    }

    fn keys(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn listed(wanted: &[&str], objects: &[Obj]) -> Kept<Obj> {
        let mut kept = Kept::new(key);
        assert!(
            kept.want(keys(wanted)).is_empty(),
            "nothing is read before a list"
        );
        kept.watch_event(&watcher::Event::Init);
        for o in objects {
            kept.watch_event(&watcher::Event::InitApply(o.clone()));
        }
        kept.watch_event(&watcher::Event::InitDone);
        kept
    }

    /// The keys `want` says are due (their tokens dropped).
    fn due_keys(kept: &mut Kept<Obj>, names: &[&str]) -> Vec<String> {
        kept.want(keys(names)).into_iter().map(|(k, _)| k).collect()
    }

    /// Wants exactly `names`, of which only the first may be due: returns its token.
    fn due(kept: &mut Kept<Obj>, names: &[&str]) -> u64 {
        let due = kept.want(keys(names));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, names[0]);
        due[0].1
    }

    fn version(kept: &Kept<Obj>, name: &str) -> Option<u32> {
        match kept.lookup(name) {
            Some(Lookup::Held(o)) => Some(o.version),
            _ => None,
        }
    }

    #[test]
    fn a_list_keeps_only_the_wanted_objects() {
        let kept = listed(&["a"], &[obj("a", 1), obj("b", 1)]);
        assert_eq!(version(&kept, "a"), Some(1));
        assert_eq!(kept.lookup("b"), None, "not wanted, not kept");
        assert_eq!(kept.held().len(), 1);
    }

    #[test]
    fn an_object_wanted_after_its_watch_passed_it_is_read_once() {
        let mut kept = listed(&[], &[obj("a", 1)]);
        kept.watch_event(&watcher::Event::Apply(obj("a", 2)));
        let token = due(&mut kept, &["a"]);
        assert_eq!(kept.lookup("a"), Some(Lookup::Unread(None)));
        assert!(
            kept.want(keys(&["a"])).is_empty(),
            "one GET at a time per key"
        );
        assert!(!kept.read("a", token, Ok(Some(obj("a", 2)))));
        assert_eq!(version(&kept, "a"), Some(2));
        assert!(kept.unread().is_empty());
    }

    #[test]
    fn a_failed_read_is_retried_and_shows_why_until_it_answers() {
        let mut kept = listed(&[], &[]);
        let token = due(&mut kept, &["a"]);
        assert!(kept.read("a", token, Err("connection refused".into())));
        assert_eq!(
            kept.lookup("a"),
            Some(Lookup::Unread(Some("connection refused")))
        );
        assert_eq!(kept.unread()["a"].as_deref(), Some("connection refused"));
        assert!(
            kept.want(keys(&["a"])).is_empty(),
            "its reader retries by itself"
        );
        assert!(!kept.read("a", token, Ok(None)));
        assert_eq!(kept.lookup("a"), Some(Lookup::Absent));
    }

    #[test]
    fn a_watch_event_during_a_read_wins_over_its_answer() {
        let mut kept = listed(&[], &[]);
        let tokens = kept.want(keys(&["a", "b"]));
        kept.watch_event(&watcher::Event::Apply(obj("a", 3)));
        kept.watch_event(&watcher::Event::Delete(obj("b", 1)));
        assert!(!kept.read("a", tokens[0].1, Ok(Some(obj("a", 2)))));
        assert!(!kept.read("b", tokens[1].1, Ok(Some(obj("b", 1)))));
        assert_eq!(version(&kept, "a"), Some(3));
        assert_eq!(kept.lookup("b"), Some(Lookup::Absent));
    }

    #[test]
    fn an_answer_from_before_a_relist_is_dropped_and_the_key_read_again() {
        let mut kept = listed(&[], &[]);
        let before = due(&mut kept, &["a"]);
        kept.watch_event(&watcher::Event::Init);
        assert!(
            due_keys(&mut kept, &["a", "b"]).is_empty(),
            "nothing is read while a list is in progress"
        );
        kept.watch_event(&watcher::Event::InitDone);
        // The relist did not have it (deleted meanwhile); the old GET's copy must not stay.
        assert!(!kept.read("a", before, Ok(Some(obj("a", 1)))));
        assert_eq!(kept.lookup("a"), Some(Lookup::Unread(None)));
        assert_eq!(due_keys(&mut kept, &["a", "b"]), ["a", "b"]);
    }

    #[test]
    fn an_answer_to_a_get_made_before_the_key_fell_out_of_want_is_dropped() {
        let mut kept = listed(&[], &[]);
        let stale = due(&mut kept, &["a"]);
        // No pod names it; it is recreated meanwhile (the event goes by, unwanted) ...
        assert!(kept.want(keys(&[])).is_empty());
        kept.watch_event(&watcher::Event::Apply(obj("a", 2)));
        // ... and a pod names it again: a GET of its own, whatever the first one answers.
        let fresh = due(&mut kept, &["a"]);
        assert_ne!(stale, fresh);
        assert!(!kept.read("a", stale, Ok(Some(obj("a", 1)))));
        assert_eq!(
            kept.lookup("a"),
            Some(Lookup::Unread(None)),
            "the stale copy was kept"
        );
        assert!(!kept.read("a", fresh, Ok(Some(obj("a", 2)))));
        assert_eq!(version(&kept, "a"), Some(2));
    }

    #[test]
    fn a_relist_swaps_whole_and_forgets_what_it_did_not_find() {
        let mut kept = listed(&["a", "b"], &[obj("a", 1), obj("b", 1)]);
        kept.watch_event(&watcher::Event::Init);
        kept.watch_event(&watcher::Event::InitApply(obj("a", 2)));
        assert_eq!(
            version(&kept, "a"),
            Some(1),
            "the old view until the list is whole"
        );
        assert_eq!(version(&kept, "b"), Some(1));
        kept.watch_event(&watcher::Event::InitDone);
        assert_eq!(version(&kept, "a"), Some(2));
        assert_eq!(
            kept.lookup("b"),
            Some(Lookup::Unread(None)),
            "asked again, not assumed gone"
        );
        assert_eq!(due_keys(&mut kept, &["a", "b"]), ["b"]);
    }

    #[test]
    fn a_relist_forgets_what_was_known_absent() {
        let mut kept = listed(&["a"], &[]);
        let token = due(&mut kept, &["a"]);
        assert!(!kept.read("a", token, Ok(None)));
        assert_eq!(kept.lookup("a"), Some(Lookup::Absent));
        kept.watch_event(&watcher::Event::Init);
        kept.watch_event(&watcher::Event::InitDone);
        // The watch may have missed its creation in the gap that ended in this relist.
        assert_eq!(kept.lookup("a"), Some(Lookup::Unread(None)));
    }

    #[test]
    fn objects_no_longer_wanted_are_forgotten() {
        let mut kept = listed(&["a", "b"], &[obj("a", 1), obj("b", 1)]);
        kept.watch_event(&watcher::Event::Delete(obj("b", 1)));
        assert_eq!(due_keys(&mut kept, &["c"]), ["c"]);
        assert_eq!(kept.lookup("a"), None);
        assert_eq!(kept.lookup("b"), None);
        assert!(kept.held().is_empty());
        kept.watch_event(&watcher::Event::Apply(obj("a", 2)));
        assert!(
            kept.held().is_empty(),
            "an event for an unwanted key is dropped"
        );
    }
}
