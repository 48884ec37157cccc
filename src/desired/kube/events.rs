//! Notices from the sync loop as Kubernetes Events on their pods: one kube-rs recorder per
//! distinct notice (so repeats continue an Event series), repeats held back, a node-wide rate.

use std::time::Duration;

use kube::Client;
use tokio::sync::mpsc;

/// Records notices as Events on their pods with the kube-rs recorder. Each distinct notice
/// (pod, reason, message) keeps its own recorder, so a repeat is a PATCH to the same Event's
/// series (its count and last time) rather than a new Event; a notice repeated within
/// `repeat_after` is not sent at all.
pub async fn publish_notices(
    client: Client,
    node_name: String,
    repeat_after: Duration,
    mut notices: mpsc::Receiver<crate::model::notice::Notice>,
) {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let reporter = Reporter {
        controller: "volumed".into(),
        instance: Some(node_name),
    };
    struct Told {
        recorder: Recorder,
        /// When it was last sent (never, for a recorder just made).
        at: Option<tokio::time::Instant>,
    }
    let mut told: std::collections::HashMap<(String, &'static str, String), Told> =
        Default::default();
    let mut budget = EventBudget::new();
    while let Some(notice) = notices.recv().await {
        let now = tokio::time::Instant::now();
        // kube-rs forgets a series after a few minutes; so do we, to stay small.
        told.retain(|_, t| t.at.is_some_and(|at| now.duration_since(at) < SERIES_KEPT));
        let key = (
            notice.pod.uid.clone(),
            notice.reason,
            notice.message.clone(),
        );
        let told = told.entry(key).or_insert_with(|| Told {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            at: None,
        });
        if told
            .at
            .is_some_and(|at| now.duration_since(at) < repeat_after)
        {
            continue;
        }
        // Over the rate, Events wait their turn (the queue before this is bounded).
        let wait = budget.reserve(now);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        told.at = Some(now);
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(notice.pod.name.clone()),
            namespace: Some(notice.pod.namespace.clone()),
            uid: Some(notice.pod.uid.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.into(),
            note: Some(notice.message),
            action: if notice.reason == "FailedUnmount" {
                "Unmount"
            } else {
                "Mount"
            }
            .into(),
            secondary: None,
        };
        if let Err(err) = told.recorder.publish(&event, &reference).await {
            tracing::warn!(%err, pod = %notice.pod, reason = notice.reason, "cannot record an Event; the log has the same news");
        }
    }
}

/// A token bucket over all Events of this node, as kubelet's (--event-qps 50, --event-burst
/// 100): a storm of failures cannot flood the API; Events over the rate are delayed.
struct EventBudget {
    tokens: f64,
    at: tokio::time::Instant,
}

impl EventBudget {
    const PER_SECOND: f64 = 50.0;
    const BURST: f64 = 100.0;

    fn new() -> EventBudget {
        EventBudget {
            tokens: Self::BURST,
            at: tokio::time::Instant::now(),
        }
    }

    /// Takes a token; returns how long to wait until it is really there.
    fn reserve(&mut self, now: tokio::time::Instant) -> Duration {
        let refill = now.duration_since(self.at).as_secs_f64() * Self::PER_SECOND;
        self.tokens = (self.tokens + refill).min(Self::BURST) - 1.0;
        self.at = now;
        Duration::from_secs_f64((-self.tokens).max(0.0) / Self::PER_SECOND)
    }
}

/// The same notice is not sent again within this time.
pub const REPEAT_AFTER: Duration = Duration::from_secs(60);

/// How long a notice's Event series is continued (kube-rs keeps its own for 6 minutes).
const SERIES_KEPT: Duration = Duration::from_secs(6 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_budget_allows_a_burst_then_the_rate() {
        let start = tokio::time::Instant::now();
        let mut budget = EventBudget::new();
        let waits: Vec<Duration> = (0..150).map(|_| budget.reserve(start)).collect();
        assert!(waits[..100].iter().all(Duration::is_zero), "{waits:?}");
        // The 150th waits for 50 tokens at 50/s.
        assert!(waits[149] > Duration::from_millis(990), "{waits:?}");
        assert!(waits[149] < Duration::from_millis(1010), "{waits:?}");
        // Two seconds on, the debt is paid and 50 more are free.
        let later = start + Duration::from_secs(2);
        let free = (0..60).filter(|_| budget.reserve(later).is_zero()).count();
        assert_eq!(free, 50);
    }
}
