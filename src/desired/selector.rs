//! Label-selector and node-affinity matching for the binder (pure).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, VolumeNodeAffinity};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

/// True when `labels` satisfy the claim's selector (matchLabels AND matchExpressions).
pub fn selector_matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|req| {
        let values = req.values.as_deref().unwrap_or_default();
        let value = labels.get(&req.key);
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// True when a PV's required node affinity admits this node. Terms are ORed; inside a term
/// every requirement must hold; an empty term matches nothing, as in Kubernetes.
pub fn node_affinity_matches(
    affinity: Option<&VolumeNodeAffinity>,
    node_name: &str,
    node_labels: &Labels,
) -> bool {
    let Some(required) = affinity.and_then(|a| a.required.as_ref()) else {
        return true;
    };
    let node_fields = Labels::from([("metadata.name".to_string(), node_name.to_string())]);
    required.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        (!expressions.is_empty() || !fields.is_empty())
            && expressions
                .iter()
                .all(|r| requirement_holds(r, node_labels))
            && fields.iter().all(|r| requirement_holds(r, &node_fields))
    })
}

fn requirement_holds(req: &NodeSelectorRequirement, labels: &Labels) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let value = labels.get(&req.key);
    let compare = |want_greater: bool| {
        let (Some(have), [bound]) = (value, values) else {
            return false;
        };
        match (have.parse::<i64>(), bound.parse::<i64>()) {
            (Ok(have), Ok(bound)) if want_greater => have > bound,
            (Ok(have), Ok(bound)) => have < bound,
            _ => false,
        }
    };
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(true),
        "Lt" => compare(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorTerm};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn label_selectors_follow_kubernetes_operators() {
        let have = labels(&[("tier", "fast"), ("zone", "a")]);
        let cases = [
            (vec![expr("tier", "In", &["fast", "slow"])], true),
            (vec![expr("tier", "NotIn", &["fast"])], false),
            (vec![expr("gone", "NotIn", &["x"])], true),
            (vec![expr("zone", "Exists", &[])], true),
            (vec![expr("zone", "DoesNotExist", &[])], false),
            (vec![expr("zone", "Bogus", &[])], false),
        ];
        for (expressions, want) in cases {
            let selector = LabelSelector {
                match_expressions: Some(expressions.clone()),
                match_labels: Some(labels(&[("zone", "a")])),
            };
            assert_eq!(selector_matches(&selector, &have), want, "{expressions:?}");
        }
        let wrong_label = LabelSelector {
            match_labels: Some(labels(&[("zone", "b")])),
            ..Default::default()
        };
        assert!(!selector_matches(&wrong_label, &have));
    }

    fn affinity(terms: Vec<Vec<(&str, &str, &[&str])>>) -> VolumeNodeAffinity {
        let term = |reqs: Vec<(&str, &str, &[&str])>| NodeSelectorTerm {
            match_expressions: Some(
                reqs.into_iter()
                    .map(|(k, op, vs)| NodeSelectorRequirement {
                        key: k.into(),
                        operator: op.into(),
                        values: Some(vs.iter().map(|v| v.to_string()).collect()),
                    })
                    .collect(),
            ),
            match_fields: None,
        };
        VolumeNodeAffinity {
            required: Some(NodeSelector {
                node_selector_terms: terms.into_iter().map(term).collect(),
            }),
        }
    }

    #[test]
    fn node_affinity_terms_are_ored_and_requirements_anded() {
        let node = labels(&[("kubernetes.io/hostname", "n1"), ("disks", "4")]);
        let host = "kubernetes.io/hostname";
        let cases: Vec<(VolumeNodeAffinity, bool)> = vec![
            (affinity(vec![vec![(host, "In", &["n1"])]]), true),
            (affinity(vec![vec![(host, "In", &["n2"])]]), false),
            (
                affinity(vec![
                    vec![(host, "In", &["n2"])],
                    vec![("disks", "Gt", &["3"])],
                ]),
                true,
            ),
            (
                affinity(vec![vec![(host, "In", &["n1"]), ("disks", "Lt", &["3"])]]),
                false,
            ),
            (affinity(vec![vec![]]), false),
        ];
        for (aff, want) in cases {
            assert_eq!(
                node_affinity_matches(Some(&aff), "n1", &node),
                want,
                "{aff:?}"
            );
        }
        assert!(node_affinity_matches(None, "n1", &node));
    }
}
