//! Table-driven tests of the binder against the Kubernetes binding rules.

use std::path::Path;

use super::*;
use crate::desired::manifest::Manifests;

fn pv(name: &str, size: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}, labels: {{speed: fast}}}}\n\
         spec:\n  capacity: {{storage: {size}}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: local\n\
         {extra}\n  local: {{path: /mnt/disks/{name}}}\n"
    )
}

fn pvc(name: &str, size: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\n\
         spec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: local\n\
         resources: {{requests: {{storage: {size}}}}}\n{extra}\n"
    )
    .replace("\nresources", "\n  resources")
}

const WFFC_CLASS: &str = "---\napiVersion: storage.k8s.io/v1\nkind: StorageClass\n\
    metadata: {name: local}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n";

struct Case {
    name: &'static str,
    yaml: String,
    recorded: &'static [(&'static str, &'static str)],
    /// PV → the deleted claim it was released from.
    released: &'static [(&'static str, &'static str)],
    consumed: &'static [&'static str],
    want_bound: &'static [(&'static str, &'static str)],
    want_pending: &'static [(&'static str, &'static str)],
}

fn run(case: &Case) -> Bindings {
    let mut m = Manifests::default();
    m.add_file(Path::new("case.yaml"), &case.yaml);
    assert!(
        m.errors.is_empty(),
        "{}: fixture: {:?}",
        case.name,
        m.errors
    );
    let recorded = case
        .recorded
        .iter()
        .map(|(c, v)| (c.to_string(), v.to_string()))
        .collect();
    let released = case
        .released
        .iter()
        .map(|(v, c)| {
            let released = crate::desired::binding_store::ReleasedVolume {
                claim: c.to_string(),
                reclaim_policy: Some("Retain".into()),
            };
            (v.to_string(), released)
        })
        .collect();
    let consumed = case.consumed.iter().map(|c| c.to_string()).collect();
    let labels = Labels::from([
        ("kubernetes.io/hostname".to_string(), "node-a".to_string()),
        ("disk".to_string(), "ssd".to_string()),
    ]);
    bind(&BindInput {
        claims: &m.claims,
        volumes: &m.volumes,
        classes: &m.classes,
        recorded: &recorded,
        released: &released,
        consumed: &consumed,
        node_name: "node-a",
        node_labels: &labels,
    })
}

const ON_NODE_B: &str = "  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-b]}]}]}}";
const ON_SSD: &str = "  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [{key: disk, operator: In, values: [ssd]}]}]}}";

#[test]
fn the_binder_follows_the_kubernetes_rules() {
    let cases = vec![
        Case {
            name: "the smallest fitting volume wins",
            yaml: pv("big", "10Gi", "")
                + &pv("small", "2Gi", "")
                + &pv("tiny", "1Mi", "")
                + &pvc("data", "1Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[("default/data", "small")],
            want_pending: &[],
        },
        Case {
            name: "as the PV controller: the fewest access modes first, then the smallest",
            yaml: pv("only-rwo", "28Gi", "")
                + &pv("all-modes", "9Gi", "").replace(
                    "[ReadWriteOnce]",
                    "[ReadWriteOnce, ReadOnlyMany, ReadWriteMany]",
                )
                + &pv("two-modes", "6Gi", "")
                    .replace("[ReadWriteOnce]", "[ReadWriteOnce, ReadOnlyMany]")
                + &pvc("data", "5Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[("default/data", "only-rwo")],
            want_pending: &[],
        },
        Case {
            name: "as the scheduler for a WaitForFirstConsumer claim: the smallest fit",
            yaml: WFFC_CLASS.to_string()
                + &pv("only-rwo", "28Gi", "")
                + &pv("two-modes", "6Gi", "")
                    .replace("[ReadWriteOnce]", "[ReadWriteOnce, ReadOnlyMany]")
                + &pvc("data", "5Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &["default/data"],
            want_bound: &[("default/data", "two-modes")],
            want_pending: &[],
        },
        Case {
            name: "a recorded binding never moves, even to a smaller volume",
            yaml: pv("big", "10Gi", "") + &pv("small", "2Gi", "") + &pvc("data", "1Gi", ""),
            recorded: &[("default/data", "big")],
            released: &[],
            consumed: &[],
            want_bound: &[("default/data", "big")],
            want_pending: &[],
        },
        Case {
            name: "a recorded binding to a vanished volume waits instead of moving",
            yaml: pv("small", "2Gi", "") + &pvc("data", "1Gi", ""),
            recorded: &[("default/data", "gone")],
            released: &[],
            consumed: &[],
            want_bound: &[],
            want_pending: &[("default/data", "gone")],
        },
        Case {
            name: "a volume recorded for a deleted claim stays reserved",
            yaml: pv("small", "2Gi", "") + &pvc("other", "1Gi", ""),
            recorded: &[("default/old", "small")],
            released: &[],
            consumed: &[],
            want_bound: &[],
            want_pending: &[("default/other", "bound to default/old")],
        },
        Case {
            name: "a released volume goes to no claim, not even a new one of its old claim's name",
            yaml: pv("small", "2Gi", "")
                + &pvc("old", "1Gi", "")
                + &pvc("named", "1Gi", "  volumeName: small"),
            recorded: &[],
            released: &[("small", "default/old")],
            consumed: &[],
            want_bound: &[],
            want_pending: &[
                ("default/old", "default/old, which was deleted (Released: "),
                (
                    "default/named",
                    "which was deleted (Released: `volumed release` makes it available)",
                ),
            ],
        },
        Case {
            name: "storage class, access modes, capacity, selector and volumeMode must all fit",
            yaml: pv("a", "10Gi", "").replace("storageClassName: local", "storageClassName: other")
                + &pv("b", "10Gi", "").replace("[ReadWriteOnce]", "[ReadOnlyMany]")
                + &pv("c", "1Gi", "")
                + &pv("d", "10Gi", "  volumeMode: Block")
                + &pv("e", "10Gi", "").replace("speed: fast", "speed: slow")
                + &pvc("data", "5Gi", "  selector: {matchLabels: {speed: fast}}"),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[],
            want_pending: &[
                ("default/data", "storageClassName"),
                ("default/data", "lacks access mode"),
                ("default/data", "below the request"),
                ("default/data", "volumeMode Block"),
                ("default/data", "selector"),
            ],
        },
        Case {
            name: "node affinity must admit this node, by hostname or by node label",
            yaml: pv("remote", "1Gi", ON_NODE_B)
                + &pv("ssd", "5Gi", ON_SSD)
                + &pvc("data", "1Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[("default/data", "ssd")],
            want_pending: &[],
        },
        Case {
            name: "an empty storage class matches only an empty class",
            yaml: pv("classless", "1Gi", "").replace("  storageClassName: local\n", "")
                + &pvc("data", "1Gi", "").replace("  storageClassName: local\n", "")
                + &pvc("classy", "1Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[("default/data", "classless")],
            want_pending: &[("default/classy", "storageClassName")],
        },
        Case {
            name: "a claim pre-bound by volumeName gets that volume even when a smaller one fits",
            yaml: pv("big", "10Gi", "")
                + &pv("small", "2Gi", "")
                + &pvc("data", "1Gi", "  volumeName: big"),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[("default/data", "big")],
            want_pending: &[],
        },
        Case {
            name: "a volume pre-bound by claimRef goes only to that claim",
            yaml: pv(
                "small",
                "2Gi",
                "  claimRef: {namespace: default, name: second}",
            ) + &pv("big", "10Gi", "")
                + &pvc("first", "1Gi", "")
                + &pvc("second", "1Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[("default/first", "big"), ("default/second", "small")],
            want_pending: &[],
        },
        Case {
            name: "a pre-bound claim whose volume does not fit waits with the reason",
            yaml: pv("small", "1Mi", "") + &pvc("data", "1Gi", "  volumeName: small"),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[],
            want_pending: &[("default/data", "does not fit")],
        },
        Case {
            name: "WaitForFirstConsumer binds only claims used by a pod of this node",
            yaml: WFFC_CLASS.to_string()
                + &pv("a", "1Gi", "")
                + &pv("b", "1Gi", "")
                + &pvc("used", "1Gi", "")
                + &pvc("unused", "1Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &["default/used"],
            want_bound: &[("default/used", "a")],
            want_pending: &[("default/unused", "waiting for first consumer")],
        },
        Case {
            name: "two claims never share a volume",
            yaml: pv("only", "1Gi", "") + &pvc("a", "1Gi", "") + &pvc("b", "1Gi", ""),
            recorded: &[],
            released: &[],
            consumed: &[],
            want_bound: &[("default/a", "only")],
            want_pending: &[("default/b", "bound to default/a")],
        },
    ];
    for case in &cases {
        let got = run(case);
        let want_bound: BTreeMap<String, String> = case
            .want_bound
            .iter()
            .map(|(c, v)| (c.to_string(), v.to_string()))
            .collect();
        assert_eq!(got.bound, want_bound, "{}", case.name);
        assert_eq!(
            got.pending.len(),
            case.want_pending
                .iter()
                .map(|(c, _)| c)
                .collect::<BTreeSet<_>>()
                .len(),
            "{}: {:?}",
            case.name,
            got.pending
        );
        for (claim, fragment) in case.want_pending {
            let reason = got
                .pending
                .get(*claim)
                .unwrap_or_else(|| panic!("{}: {claim} not pending", case.name));
            assert!(
                reason.contains(fragment),
                "{}: {claim}: {reason:?} lacks {fragment:?}",
                case.name
            );
        }
    }
}
