//! Tests of the manifest parser: documents, kinds, errors with file and line.

use super::*;

fn parse(name: &str, text: &str) -> Manifests {
    let mut manifests = Manifests::default();
    manifests.add_file(Path::new(name), text);
    manifests
}

const POD_AND_CLAIM: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  containers: [{name: c, image: busybox}]
---
# a claim in the default namespace
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  resources: {requests: {storage: 1Gi}}
";

#[test]
fn several_yaml_documents_in_one_file_are_all_read() {
    let m = parse("a.yaml", POD_AND_CLAIM);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert!(m.pods.contains_key("shop/web"));
    assert!(m.claims.contains_key("default/data"));
}

#[test]
fn json_files_and_lists_are_read() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"PersistentVolume","metadata":{"name":"pv1"},
         "spec":{"capacity":{"storage":10}}}]}"#;
    let m = parse("b.json", text);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert!(m.volumes.contains_key("pv1"));
}

#[test]
fn a_syntax_error_names_the_file_and_line() {
    let text =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: [unclosed\n";
    let m = parse("bad.yaml", text);
    assert_eq!(m.errors.len(), 1);
    let message = m.errors[0].to_string();
    assert!(message.starts_with("bad.yaml:"), "{message}");
    match &m.errors[0] {
        ManifestError::Syntax { line, .. } => assert!((5..=7).contains(line), "line {line}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        m.pods.contains_key("default/a"),
        "the good document is still read"
    );
}

#[test]
fn a_wrongly_typed_field_is_named_in_the_error() {
    let text = "kind: Pod\napiVersion: v1\nmetadata: {name: a}\nspec: {containers: 5}\n";
    let m = parse("typed.yaml", text);
    let message = m.refused[0].to_string();
    assert!(message.contains("spec.containers"), "{message}");
    assert!(message.contains("typed.yaml:1"), "{message}");
}

#[test]
fn unknown_kinds_are_skipped_with_a_warning() {
    let m = parse(
        "c.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    );
    assert!(m.errors.is_empty());
    assert_eq!(m.warnings.len(), 1);
    assert!(m.warnings[0].contains("ConfigMap"));
}

#[test]
fn documents_without_kind_or_name_are_errors() {
    let m = parse(
        "d.yaml",
        "apiVersion: v1\nmetadata: {name: x}\n---\nkind: Pod\nmetadata: {}\n",
    );
    assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
    assert_eq!(m.refused.len(), 1, "a pod without a name: {:?}", m.refused);
}

#[test]
fn an_object_defined_twice_is_an_error_naming_both_files() {
    let mut m = parse("one.yaml", POD_AND_CLAIM);
    m.add_file(Path::new("two.yaml"), POD_AND_CLAIM);
    let message = m.errors[0].to_string();
    assert!(
        message.contains("one.yaml") && message.contains("two.yaml"),
        "{message}"
    );
}

#[test]
fn empty_documents_and_comments_are_ignored() {
    let m = parse("e.yaml", "---\n# nothing\n---\n\n");
    assert!(m.errors.is_empty() && m.warnings.is_empty() && m.pods.is_empty());
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let m = load_dir(Path::new("/nonexistent/volumed-manifests"));
    assert!(m.errors[0]
        .to_string()
        .contains("/nonexistent/volumed-manifests"));
}

#[test]
fn objects_are_validated_as_the_api_server_validates_them() {
    let cases = [
        ("metadata: {name: Web}\nspec: {containers: []}", "metadata.name \"Web\""),
        ("metadata: {name: web, namespace: a.b}\nspec: {containers: []}", "metadata.namespace"),
        (
            "metadata: {name: web}\nspec: {containers: [], volumes: [{name: ../../etc, emptyDir: {}}]}",
            "spec.volumes[].name \"../../etc\"",
        ),
        (
            "metadata: {name: web}\nspec: {containers: [], volumes: [{name: a, emptyDir: {}}, {name: a, emptyDir: {}}]}",
            "\"a\" appears twice",
        ),
    ];
    for (body, want) in cases {
        let text = format!("apiVersion: v1\nkind: Pod\n{body}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: fine}}\nspec: {{containers: []}}\n");
        let m = parse("pods.yaml", &text);
        let errors: Vec<String> = m.refused.iter().map(|e| e.to_string()).collect();
        assert!(
            errors.len() == 1 && errors[0].starts_with("pods.yaml:1:") && errors[0].contains(want),
            "{body}: {errors:?}"
        );
        assert!(
            m.pods.contains_key("default/fine"),
            "the other pod is read: {body}"
        );
    }
}
