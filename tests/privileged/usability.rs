//! What a new user meets, through the real binary with real mounts: memory-backed emptyDirs
//! sized as kubelet sizes them, and the daemon following a manifest directory that is
//! replaced.

use crate::blockdev::{manifests, Loop};
use crate::sandbox::{check, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![
        (
            "a_memory_emptydir_without_size_limit_is_sized_by_the_pod_or_the_node",
            a_memory_emptydir_without_size_limit_is_sized_by_the_pod_or_the_node,
        ),
        (
            "plan_marks_the_set_up_that_will_format_and_the_one_that_will_refuse",
            plan_marks_the_set_up_that_will_format_and_the_one_that_will_refuse,
        ),
    ]
}

fn a_memory_emptydir_without_size_limit_is_sized_by_the_pod_or_the_node() -> TestResult {
    let sb = Sandbox::new(&format!("tmpfssize-{:x}", fastrand::u32(..)));
    sb.manifest(
        "pods.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: limited, uid: limited-uid}
spec:
  nodeName: node-a
  containers:
  - {name: a, image: x, resources: {limits: {memory: 32Mi}}}
  - {name: b, image: x, resources: {limits: {memory: 16Mi}}}
  volumes: [{name: tmp, emptyDir: {medium: Memory}}]
---
apiVersion: v1
kind: Pod
metadata: {name: open, uid: open-uid}
spec:
  nodeName: node-a
  containers: [{name: a, image: x}]
  volumes: [{name: tmp, emptyDir: {medium: Memory}}]
"#,
    );
    sb.converge()?;
    let size_of = |uid: &str| {
        let path = sb.volume(uid, "empty-dir", "tmp");
        sb.mounts()
            .into_iter()
            .find(|m| m.mount_point == path)
            .and_then(|m| m.super_options.get("size").cloned().flatten())
    };
    check(size_of("limited-uid").as_deref() == Some("49152k"), || {
        format!("the pod's limits sum to 48Mi: {:?}", size_of("limited-uid"))
    })?;
    let mem_total_k = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    // tmpfs rounds the size up to whole pages.
    let want = mem_total_k.div_ceil(4) * 4;
    check(size_of("open-uid") == Some(format!("{want}k")), || {
        format!(
            "no pod limit: the node's memory ({want}k), got {:?}",
            size_of("open-uid")
        )
    })?;
    let status = sb.volumed(&["status"]);
    let table = text(&status.stdout);
    check(
        table.contains("the pod's memory limit") && table.contains("the node's memory"),
        || format!("status must say what sized each tmpfs:\n{table}"),
    )
}

fn plan_marks_the_set_up_that_will_format_and_the_one_that_will_refuse() -> TestResult {
    let sb = Sandbox::new(&format!("planformat-{:x}", fastrand::u32(..)));
    let disk = Loop::new(&sb, "blank", 64, false);
    manifests(&sb, &disk.device, &["a"], "");
    let before = disk.bytes();
    let out = sb.volumed(&["plan"]);
    let stdout = text(&out.stdout);
    let want = format!("format ext4 {}: blank, then mount", disk.device.display());
    check(out.status.success() && stdout.contains(&want), || {
        format!(
            "plan must say it will format ({}):\n{stdout}{}",
            out.status,
            text(&out.stderr)
        )
    })?;
    check(disk.bytes() == before, || "plan changed the device".into())?;
    // A swap signature: the same decision run makes, a refusal, told before anything runs.
    let swap = Loop::new(&sb, "swap", 64, false);
    let mkswap = std::process::Command::new("mkswap")
        .arg(&swap.device)
        .output()
        .unwrap();
    check(mkswap.status.success(), || "mkswap failed".into())?;
    manifests(&sb, &swap.device, &["a"], "");
    let out = sb.volumed(&["plan"]);
    let stderr = text(&out.stderr);
    let refusal = format!("refusing to use {}", swap.device.display());
    check(
        out.status.code() == Some(1) && stderr.contains(&refusal) && stderr.contains("swap"),
        || {
            format!(
                "plan must exit 1 and say why ({}):\n{}{stderr}",
                out.status,
                text(&out.stdout)
            )
        },
    )?;
    check(sb.mounts().is_empty(), || "plan mounted something".into())
}
