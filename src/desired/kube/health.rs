//! How the API source's watches stand (which completed a first list, which fail and why) and
//! how a failing one retries: the part of the API source the operator reads about.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kube::runtime::watcher;

use crate::model::backoff::BackoffPolicy;

/// The kinds watched, as their watches are named to the operator.
pub(super) const KINDS: [&str; 5] = [
    "Pod",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "Node",
];

/// How the watches stand: which completed a first list, which are failing and why.
#[derive(Debug, Default)]
pub struct WatchHealth {
    listed: BTreeSet<String>,
    failing: BTreeMap<String, Failing>,
}

#[derive(Debug)]
struct Failing {
    /// The first error of this run of errors (stable across retries).
    since: SystemTime,
    last_error: String,
}

pub type SharedHealth = Arc<Mutex<WatchHealth>>;

impl WatchHealth {
    /// One line per failing watch.
    pub fn failing(&self) -> Vec<String> {
        self.failing
            .iter()
            .map(|(kind, f)| {
                format!(
                    "the API watch of {kind} objects has been failing since {}: {}",
                    humantime::format_rfc3339_seconds(f.since),
                    f.last_error
                )
            })
            .collect()
    }

    /// The kinds whose first list has not completed.
    pub fn unlisted(&self) -> Vec<&'static str> {
        KINDS
            .into_iter()
            .filter(|kind| !self.listed.contains(*kind))
            .collect()
    }

    pub(super) fn failed(&mut self, kind: &str, error: String) {
        self.failing
            .entry(kind.to_string())
            .and_modify(|f| f.last_error.clone_from(&error))
            .or_insert_with(|| Failing {
                since: SystemTime::now(),
                last_error: error,
            });
    }

    pub(super) fn is_failing(&self, kind: &str) -> bool {
        self.failing.contains_key(kind)
    }

    /// True when this changed what is reported.
    pub(super) fn delivered(&mut self, kind: &str, first_list_done: bool) -> bool {
        let listed = first_list_done && self.listed.insert(kind.to_string());
        self.failing.remove(kind).is_some() || listed
    }
}

/// Only plain inserts and removals happen under the health lock: a poisoned one is sound.
pub(super) use crate::shared::lock;

/// Retry timing of a failing watch: 800 ms doubling to 30 s, jittered (kube-rs's default
/// curve), started afresh only when the watch really delivers. (kube-rs's own stream wrapper
/// resets on every item, `Init` included, which comes before each list attempt: a list
/// failing over and over would retry at the first step forever.)
#[derive(Default)]
pub(super) struct WatchBackoff {
    failures: u32,
}

impl WatchBackoff {
    const POLICY: BackoffPolicy = BackoffPolicy {
        initial: Duration::from_millis(800),
        max: Duration::from_secs(30),
    };

    /// The wait before the next attempt, after one more failure.
    pub(super) fn failed(&mut self) -> Duration {
        self.failures += 1;
        Self::POLICY.delay(self.failures)
    }

    pub(super) fn delivered(&mut self) {
        self.failures = 0;
    }
}

/// The HTTP status of an error the API server itself answered with (`None`: it could not be
/// reached, or the error is not from the server). Any answer proves the server is up.
pub(super) fn answered(err: &watcher::Error) -> Option<u16> {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.code),
        watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    }
}

/// How often, while a watch cannot reach the server, a cheap request (`GET /version`) asks
/// whether it is back: the watches' own retries may be up to 30 s apart by then.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// While any watch is failing, asks the server whether it is back and, when it answers,
/// wakes every waiting watch to retry at once (`back`).
pub(super) async fn probe_while_failing(
    client: kube::Client,
    health: SharedHealth,
    back: Arc<tokio::sync::Notify>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if lock(&health).failing.is_empty() {
            continue;
        }
        let probe = tokio::time::timeout(PROBE_EVERY, client.apiserver_version());
        // Any answer, an error status included, shows the server is there again.
        if let Ok(Ok(_) | Err(kube::Error::Api(_))) = probe.await {
            back.notify_waiters();
        }
    }
}

/// A watch error in a line: the API's own message and code, and for a refusal, the fix.
pub(super) fn for_operator(err: &watcher::Error) -> String {
    let status = match err {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.as_ref(),
        watcher::Error::WatchError(status) => status.as_ref(),
        other => return other.to_string(),
    };
    status_line(status)
}

/// A failed request in a line, as `for_operator` puts a watch error.
pub(super) fn request_for_operator(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status_line(status.as_ref()),
        other => other.to_string(),
    }
}

fn status_line(status: &kube::core::Status) -> String {
    let hint = match status.code {
        401 | 403 => "; check volumed's credentials and that deploy/rbac.yaml is applied",
        _ => "",
    };
    format!(
        "{} (HTTP {} {}){hint}",
        status.message, status.code, status.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_grows_until_the_watch_delivers_and_caps() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.failed()).collect();
        assert!(delays[0] <= Duration::from_millis(960), "{delays:?}");
        assert!(delays[3] >= Duration::from_millis(5000), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(36)),
            "{delays:?}"
        );
        assert!(delays[7] >= Duration::from_secs(24), "{delays:?}");
        backoff.delivered();
        assert!(backoff.failed() <= Duration::from_millis(960));
    }
}
