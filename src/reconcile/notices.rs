//! What the sync loop tells pods about their volumes (pure): failures and notable steps, as
//! Kubernetes Events are worded (`FailedMount`, `FailedUnmount`, `VolumePending`,
//! `SuccessfulMount`). A source that can record Events (the API) publishes them.

use std::collections::BTreeSet;

use crate::desired::DesiredState;
use crate::model::notice::Notice;
use crate::model::op::Op;
use crate::model::PodRef;

/// The notice for an op's outcome, for a pod the loop has seen (`known`: pods by uid, kept
/// after they leave the desired state so teardown failures can still be told).
pub fn for_op(
    op: &Op,
    error: Option<&str>,
    known: &std::collections::BTreeMap<String, PodRef>,
) -> Option<Notice> {
    let pod = known.get(op.pod_uid()?)?.clone();
    let (reason, message, warning) = match (op, error) {
        (Op::SetUp { volume }, Some(error)) => (
            "FailedMount",
            format!("volume {}: {error}", volume.volume_name),
            true,
        ),
        (Op::SetUp { volume }, None) => (
            "SuccessfulMount",
            format!(
                "volume {} is in place ({})",
                volume.volume_name,
                volume.spec.describe()
            ),
            false,
        ),
        (Op::Unmount { key, .. } | Op::RemoveVolumeDir { key, .. }, Some(error)) => (
            "FailedUnmount",
            format!("volume {}: {error}", key.name),
            true,
        ),
        _ => return None,
    };
    Some(Notice {
        pod,
        reason,
        message,
        warning,
    })
}

/// `VolumePending` for each blocking wait that was not in the last snapshot; `seen` keeps the
/// waits already told, so a steady wait is told once.
pub fn pending(
    desired: &DesiredState,
    seen: &mut BTreeSet<(String, String, String)>,
) -> Vec<Notice> {
    let now: BTreeSet<(String, String, String)> = desired
        .waiting
        .iter()
        .filter(|w| w.blocking)
        .map(|w| (w.pod.uid.clone(), w.volume_name.clone(), w.reason.clone()))
        .collect();
    let notices = desired
        .waiting
        .iter()
        .filter(|w| {
            w.blocking
                && !seen.contains(&(w.pod.uid.clone(), w.volume_name.clone(), w.reason.clone()))
        })
        .map(|w| Notice {
            pod: w.pod.clone(),
            reason: "VolumePending",
            message: format!("volume {}: {}", w.volume_name, w.reason),
            warning: true,
        })
        .collect();
    *seen = now;
    notices
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::WaitingVolume;
    use crate::model::VolumeKey;

    #[test]
    fn a_teardown_failure_is_told_to_a_pod_that_left_the_desired_state() {
        let pod = PodRef {
            namespace: "shop".into(),
            name: "web".into(),
            uid: "u1".into(),
        };
        let known = std::collections::BTreeMap::from([("u1".to_string(), pod.clone())]);
        let op = Op::Unmount {
            key: VolumeKey::new("u1", crate::model::Plugin::Nfs, "files"),
            nested: None,
            server: None,
            if_hung: crate::model::op::IfHung::ForceThenDetach,
        };
        let notice = for_op(&op, Some("device busy"), &known).expect("told");
        assert_eq!((notice.reason, notice.warning), ("FailedUnmount", true));
        assert!(notice.message.contains("files") && notice.message.contains("device busy"));
        assert_eq!(
            for_op(&op, None, &known),
            None,
            "a clean unmount is not news"
        );
        let stranger = Op::RemovePodDir {
            pod_uid: "u9".into(),
        };
        assert_eq!(for_op(&stranger, Some("x"), &known), None);
    }

    #[test]
    fn a_steady_wait_is_told_once_and_a_new_reason_again() {
        let pod = PodRef {
            namespace: "shop".into(),
            name: "web".into(),
            uid: "u1".into(),
        };
        let wait = |reason: &str| WaitingVolume {
            pod: pod.clone(),
            volume_name: "data".into(),
            reason: reason.into(),
            blocking: true,
            origin: None,
        };
        let mut desired = DesiredState {
            waiting: vec![wait("claim is Pending")],
            ..Default::default()
        };
        let mut seen = BTreeSet::new();
        assert_eq!(pending(&desired, &mut seen).len(), 1);
        assert_eq!(pending(&desired, &mut seen).len(), 0, "told once");
        desired.waiting = vec![wait("PersistentVolume pv1 does not exist")];
        let notices = pending(&desired, &mut seen);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, "VolumePending");
        assert!(notices[0].message.contains("pv1 does not exist"));
    }
}
