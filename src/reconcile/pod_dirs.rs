//! Which pod a pod directory belongs to (pure, part of `plan`'s policy). A uid is only a
//! name: a pod that arrives with the uid of a departed pod must not get its directory, data
//! and all. Each directory's owner record decides; the departed pod's volumes are torn down
//! as usual, and the newcomer is set up once the directory is gone.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::desired::{DesiredState, WaitingVolume};
use crate::model::on_disk::{DirOwner, OnDisk};
use crate::model::PodRef;

/// `desired` with every pod whose uid names a directory that is not its own taken out: its
/// volumes wait with the reason instead. Borrowed when no pod is affected (the usual case).
pub fn assign<'a>(desired: &'a DesiredState, on_disk: &OnDisk) -> Cow<'a, DesiredState> {
    let refused: Vec<(&PodRef, String)> = desired
        .pods
        .values()
        .filter_map(|pod| Some((pod, refusal(pod, on_disk.owner(&pod.uid)?)?)))
        .collect();
    if refused.is_empty() {
        return Cow::Borrowed(desired);
    }
    let mut assigned = desired.clone();
    for (pod, reason) in refused {
        assigned.pods.remove(&pod.uid);
        assigned.terminating.remove(&pod.uid);
        let volumes: Vec<String> = desired
            .volumes
            .values()
            .filter(|v| v.key.pod_uid == pod.uid)
            .map(|v| v.volume_name.clone())
            .collect();
        assigned.volumes.retain(|key, _| key.pod_uid != pod.uid);
        assigned.waiting.extend(WaitingVolume::all_of(
            pod,
            volumes,
            &reason,
            desired.pod_origins.get(&pod.uid),
        ));
    }
    Cow::Owned(assigned)
}

/// Why `pod` may not use the directory of its uid, owned as `owner` says; `None`: it may.
fn refusal(pod: &PodRef, owner: &DirOwner) -> Option<String> {
    match owner {
        DirOwner::Unrecorded => None,
        DirOwner::Pod(found) if *found == pod.to_string() => None,
        DirOwner::Pod(found) => Some(format!("its uid {} names the directory of pod {found}, which is gone: that pod's volumes are torn down first, then this pod gets its own", pod.uid)),
        DirOwner::Unreadable(why) => Some(format!("the owner record of its pod directory (uid {}) is unreadable ({why}); nothing there is set up or torn down until it is fixed or removed", pod.uid)),
    }
}

/// Uids whose volumes are kept although no wanted volume names them: a waiting pod keeps
/// what is in its own directory (doubt keeps), never what is in another pod's.
pub fn held<'a>(desired: &'a DesiredState, on_disk: &OnDisk) -> BTreeSet<&'a str> {
    desired
        .waiting
        .iter()
        .filter(|w| w.blocking)
        .filter(|w| match on_disk.owner(&w.pod.uid) {
            None | Some(DirOwner::Unrecorded | DirOwner::Unreadable(_)) => true,
            Some(DirOwner::Pod(found)) => *found == w.pod.to_string(),
        })
        .map(|w| w.pod.uid.as_str())
        .collect()
}

/// Wanted pods whose directory has no owner record yet (made by an older volumed): they
/// claim it now, so the uid cannot be taken over later.
pub fn unclaimed<'a>(desired: &'a DesiredState, on_disk: &OnDisk) -> Vec<&'a PodRef> {
    desired
        .pods
        .values()
        .filter(|pod| on_disk.owner(&pod.uid) == Some(&DirOwner::Unrecorded))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::on_disk::PodDir;

    fn pod(namespace: &str, name: &str) -> PodRef {
        PodRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: "u".into(),
        }
    }

    fn disk(owner: DirOwner) -> OnDisk {
        let mut on_disk = OnDisk::default();
        let volumes = Default::default();
        on_disk.set_pod("u", Some(PodDir { volumes, owner }));
        on_disk
    }

    #[test]
    fn a_pod_gets_its_uids_directory_only_when_it_is_its_own_or_unrecorded() {
        let newcomer = pod("other", "taker");
        let mut desired = DesiredState::default();
        desired.pods.insert("u".into(), newcomer.clone());
        let cases = [
            (OnDisk::default(), true),
            (disk(DirOwner::Unrecorded), true),
            (disk(DirOwner::Pod("other/taker".into())), true),
            (disk(DirOwner::Pod("default/owner".into())), false),
            (disk(DirOwner::Unreadable("garbage".into())), false),
        ];
        for (on_disk, admitted) in cases {
            let assigned = assign(&desired, &on_disk);
            assert_eq!(
                assigned.pods.contains_key("u"),
                admitted,
                "{:?}",
                on_disk.owners
            );
            let waits = assigned.waiting.iter().any(|w| w.pod == newcomer);
            assert_eq!(waits, !admitted, "{:?}", on_disk.owners);
            // Waiting holds the directory only when it may be the newcomer's own.
            let holds = held(&assigned, &on_disk).contains("u");
            let unreadable = matches!(on_disk.owner("u"), Some(DirOwner::Unreadable(_)));
            assert_eq!(holds, unreadable, "{:?}", on_disk.owners);
        }
        assert_eq!(
            unclaimed(&desired, &disk(DirOwner::Unrecorded)),
            vec![&newcomer]
        );
    }
}
