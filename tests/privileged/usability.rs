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
        (
            "an_idle_daemon_reads_its_manifests_only_when_they_change",
            an_idle_daemon_reads_its_manifests_only_when_they_change,
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

fn an_idle_daemon_reads_its_manifests_only_when_they_change() -> TestResult {
    let sb = Sandbox::new(&format!("idle-{:x}", fastrand::u32(..)));
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: {name}-uid}}\nspec: {{nodeName: node-a, containers: [], volumes: [{{name: t, emptyDir: {{medium: Memory, sizeLimit: 1Mi}}}}]}}\n")
    };
    sb.manifest("a.yaml", &pod("a"));
    let daemon = sb.daemon_logging("volumed=debug");
    let reads = || {
        sb.daemon_log()
            .matches("reading the manifest directory")
            .count()
    };
    let mounted = |name: &str| {
        let path = sb.volume(&format!("{name}-uid"), "empty-dir", "t");
        sb.mounts().iter().any(|m| m.mount_point == path)
    };
    let result = (|| {
        crate::sandbox::eventually(std::time::Duration::from_secs(10), "a mounted", || {
            mounted("a")
        })?;
        // What one new manifest costs: the reads from its write until its pod is mounted.
        let before = reads();
        sb.manifest("b.yaml", &pod("b"));
        crate::sandbox::eventually(std::time::Duration::from_secs(10), "b mounted", || {
            mounted("b")
        })?;
        let one_change = reads() - before;
        // Others look at the directory and at the one above it (opens and reads, no change),
        // then a manifest is added. inotify delivers in order: once that pod is mounted, the
        // daemon has handled every event the looks caused, so the reads since are those the
        // looks caused plus the new manifest's.
        let before = reads();
        for _ in 0..20 {
            std::fs::read_dir(&sb.manifests).unwrap().for_each(drop);
            std::fs::read_dir(&sb.base).unwrap().for_each(drop);
        }
        sb.manifest("c.yaml", &pod("c"));
        crate::sandbox::eventually(std::time::Duration::from_secs(10), "c mounted", || {
            mounted("c")
        })?;
        let seen = reads() - before;
        eprintln!(
            "reads for one new manifest: {one_change}; for 40 looks and one new manifest: {seen}"
        );
        check(seen == one_change, || {
            format!("{seen} reads for 40 looks at an unchanged directory and one new manifest, {one_change} for the manifest alone (the daemon's own reads, or others' opens, must not wake it)")
        })
    })();
    let log = sb.stop(daemon)?;
    result.map_err(|e| {
        format!(
            "{e}\n{}",
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        )
    })
}
