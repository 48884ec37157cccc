//! Executor tests against the fake host: backoff, one op per key, per-server caps.
use super::*;
use crate::host::fake::FakeMounter;
use crate::host::fs::PodFs;
use crate::model::{DesiredVolume, MountSpec, Plugin, PodRef, VolumeKey};

fn config() -> ExecutorConfig {
    ExecutorConfig {
        max_concurrent: 4,
        deadline: Duration::from_millis(300),
        nfs_mount_deadline: Duration::from_millis(300),
        max_per_server: 1,
        slack: Duration::from_millis(100),
        backoff: BackoffPolicy::default(),
        retry: true,
    }
}

fn nfs(pod: &str, server: &str) -> Op {
    let key = VolumeKey::new(pod, Plugin::Nfs, "share");
    let pod_ref = PodRef {
        namespace: "default".into(),
        name: pod.into(),
        uid: pod.into(),
    };
    let spec = MountSpec::Nfs {
        server: server.into(),
        path: "/export".into(),
        options: vec![],
        read_only: false,
    };
    Op::SetUp {
        volume: Box::new(DesiredVolume {
            key,
            pod: pod_ref,
            volume_name: "share".into(),
            pv_name: None,
            claim: None,
            spec,
        }),
    }
}

/// An executor (`config()`, one format at a time) on the fake host, below `root`.
fn executor_on(
    root: &std::path::Path,
    mounter: &Arc<FakeMounter>,
) -> (Executor, tokio::sync::mpsc::UnboundedReceiver<OpEvent>) {
    let fs = PodFs::new(root.to_path_buf(), vec![root.to_path_buf()]);
    let formatter = Arc::new(crate::host::fake::FakeFormatter::default());
    Executor::new(
        OpContext::new(mounter.clone(), fs, formatter, mounter.clone(), 1),
        config(),
    )
}

/// Waits (10 s at most) until `done`, looking every 5 ms.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 10 s"));
}

#[tokio::test]
async fn a_hung_nfs_server_gets_no_more_than_its_cap_while_other_servers_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mounter = FakeMounter::new();
    let (mut executor, mut events) = executor_on(&root, &mounter);
    let target = |pod: &str| root.join(format!("pods/{pod}/volumes/kubernetes.io~nfs/share"));
    mounter.hang_at(&target("p1"));
    assert_eq!(
        executor.submit(vec![
            nfs("p1", "dead"),
            nfs("p2", "dead"),
            nfs("p3", "alive")
        ]),
        3
    );
    // p3's server is fine: it finishes while p1 hangs and p2 waits for dead's only slot.
    let event = events.recv().await.unwrap();
    executor.complete(&event);
    assert!(matches!(&event, OpEvent::Finished { op, .. } if op.pod_uid() == Some("p3")));
    // Past every deadline (slack included): p1 is stuck, p2 is overdue waiting for the
    // slot, and still p2 has not started.
    let mut overdue = Vec::new();
    while overdue.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("both ops are reported overdue")
            .unwrap();
        executor.complete(&event);
        match &event {
            OpEvent::Overdue { op, .. } => {
                overdue.push(op.pod_uid().unwrap_or_default().to_string())
            }
            other => panic!("only the overdue reports come while p1 hangs: {other:?}"),
        }
    }
    overdue.sort();
    assert_eq!(
        overdue,
        ["p1", "p2"],
        "both the stuck op and the one waiting for its slot are overdue"
    );
    let calls = mounter.calls();
    assert!(calls
        .iter()
        .any(|c| c.ends_with("p1/volumes/kubernetes.io~nfs/share")));
    assert!(
        !calls.iter().any(|c| c.contains("/p2/")),
        "p2 must wait for the dead server's slot: {calls:?}"
    );
    mounter.release(&target("p1"));
    for _ in 0..2 {
        let event = events.recv().await.unwrap();
        executor.complete(&event);
    }
    assert_eq!(mounter.table().len(), 3);
}

fn set_up(size: u64) -> Op {
    let key = VolumeKey {
        pod_uid: "u1".into(),
        plugin: Plugin::EmptyDir,
        name: "cache".into(),
        block: false,
    };
    let pod = PodRef {
        namespace: "default".into(),
        name: "p".into(),
        uid: "u1".into(),
    };
    let spec = MountSpec::Tmpfs {
        size_bytes: Some(size),
        sized_by: crate::model::TmpfsSize::SizeLimit,
    };
    Op::SetUp {
        volume: Box::new(DesiredVolume {
            key,
            pod,
            volume_name: "cache".into(),
            pv_name: None,
            claim: None,
            spec,
        }),
    }
}

#[tokio::test]
async fn a_failed_op_backs_off_one_op_per_key_and_a_changed_spec_runs_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mounter = FakeMounter::new();
    let fs = PodFs::new(root.clone(), vec![root.clone()]);
    let config = config();
    let (mut executor, mut events) = Executor::new(
        OpContext::new(
            mounter.clone(),
            fs,
            Arc::new(crate::host::fake::FakeFormatter::default()),
            mounter.clone(),
            2,
        ),
        config,
    );
    let target = root.join("pods/u1/volumes/kubernetes.io~empty-dir/cache");
    mounter.fail_at(&target, "simulated failure");

    assert_eq!(executor.submit(vec![set_up(1 << 20)]), 1);
    assert_eq!(
        executor.submit(vec![set_up(1 << 20)]),
        0,
        "one op per key while it runs"
    );
    let event = events.recv().await.unwrap();
    executor.complete(&event);
    assert_eq!(
        executor.submit(vec![set_up(1 << 20)]),
        0,
        "the same spec waits out its backoff"
    );
    let retry = executor.next_retry().expect("a retry is scheduled");
    assert!(
        retry > Instant::now() + Duration::from_millis(300),
        "about 500 ms after the failure"
    );

    mounter.clear_failure(&target);
    assert_eq!(
        executor.submit(vec![set_up(2 << 20)]),
        1,
        "a changed spec is tried at once"
    );
    assert_eq!(
        executor.next_retry(),
        None,
        "no wake-up for a key that is running"
    );
    let event = events.recv().await.unwrap();
    executor.complete(&event);
    assert!(matches!(&event, OpEvent::Finished { outcome, .. } if outcome.did.is_ok()));
    assert_eq!(mounter.table().len(), 1);
}

#[tokio::test]
async fn a_queue_is_more_ops_on_time_than_workers_and_overdue_ops_leave_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mounter = FakeMounter::new();
    let (mut executor, mut events) = executor_on(&root, &mounter);
    let pods: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
    let target = |pod: &str| root.join(format!("pods/{pod}/volumes/kubernetes.io~nfs/share"));
    for pod in &pods {
        mounter.hang_at(&target(pod));
    }
    let ops: Vec<Op> = pods.iter().map(|pod| nfs(pod, pod)).collect();
    assert_eq!(executor.submit(ops[..4].to_vec()), 4);
    // Once the four have a worker each (their mounts hang), none waits.
    until("four mounts start", || mounter.calls().len() >= 4).await;
    assert!(!executor.has_queue(), "four ops, four workers");
    assert_eq!(
        executor.submit(ops.clone()),
        2,
        "the other four are in flight"
    );
    // Counted once their tasks have their server's slot (each has a server of its own).
    until("six ops, four workers: two wait", || executor.has_queue()).await;
    // Past the deadline every op is overdue: a hung op gives its worker back.
    let mut overdue = 0;
    while overdue < 6 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("every op is reported overdue")
            .unwrap();
        executor.complete(&event);
        overdue += usize::from(matches!(event, OpEvent::Overdue { .. }));
    }
    assert_eq!(executor.in_flight(), 6);
    // The two got the workers the stuck ones gave back.
    until("all six mounts start", || mounter.calls().len() >= 6).await;
    assert!(!executor.has_queue());
    for pod in &pods {
        mounter.release(&target(pod));
    }
    let mut finished = 0;
    while finished < 6 {
        let event = events.recv().await.unwrap();
        executor.complete(&event);
        finished += usize::from(matches!(event, OpEvent::Finished { .. }));
    }
    assert!(!executor.has_queue());
}

/// The picture the loop keeps of the pod directories, changed by each op's own account of
/// what it did (`PodDirChange`), is what a scan of the disk finds after every op: set-ups,
/// unmounts, removals, a pod directory's claim and removal, and a failed op (rescanned).
#[test]
fn each_ops_account_of_its_pod_directory_is_what_a_scan_finds() {
    use crate::model::on_disk::OnDisk;
    use crate::model::op::{Contents, IfHung};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let mounter = FakeMounter::new();
    let fs = PodFs::new(root.clone(), vec![root.clone()]);
    let formatter = Arc::new(crate::host::fake::FakeFormatter::default());
    let ctx = OpContext::new(mounter.clone(), fs, formatter, mounter.clone(), 1);
    let named = |name: &str| match set_up(1 << 20) {
        Op::SetUp { mut volume } => {
            volume.key.name = name.into();
            volume.volume_name = name.into();
            Op::SetUp { volume }
        }
        _ => unreachable!(),
    };
    let key = |name: &str| VolumeKey {
        pod_uid: "u1".into(),
        plugin: Plugin::EmptyDir,
        name: name.into(),
        block: false,
    };
    let unmount = |name: &str| Op::Unmount {
        key: key(name),
        nested: None,
        server: None,
        if_hung: IfHung::Wait,
    };
    let remove = |name: &str| Op::RemoveVolumeDir {
        key: key(name),
        contents: Contents::DeleteAll,
    };
    let pod = PodRef {
        namespace: "default".into(),
        name: "p".into(),
        uid: "u1".into(),
    };
    let ops = [
        Op::ClaimPodDir { pod: pod.clone() },
        named("cache"),
        named("scratch"),
        unmount("cache"),
        remove("cache"),
        // Still mounted: refused, and the pod directory is scanned again.
        remove("scratch"),
        unmount("scratch"),
        remove("scratch"),
        Op::RemovePodDir {
            pod_uid: "u1".into(),
        },
    ];
    let mut picture: OnDisk = ctx.fs.scan().unwrap();
    for op in &ops {
        let outcome = run::run_op(&ctx, op);
        let refused = matches!(op, Op::RemoveVolumeDir { key, .. } if key.name == "scratch")
            && mounter
                .table()
                .iter()
                .any(|m| m.mount_point.ends_with("scratch"));
        assert_eq!(outcome.did.is_err(), refused, "{op:?}: {:?}", outcome.did);
        picture.apply(outcome.pod_dir);
        assert_eq!(picture, ctx.fs.scan().unwrap(), "after {op:?}");
    }
    assert!(picture.pods.is_empty());
}
