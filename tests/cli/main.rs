//! The command line as a user meets it: every subcommand with every `--output` format through
//! the real binary, its output parsed and its exit code checked. Needs no root: the pods here
//! have only plain-directory volumes, which `run --once` makes without mounting anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A temp dir with a manifest directory, a root dir and host dirs.
struct Workspace {
    _tmp: tempfile::TempDir,
    base: PathBuf,
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, uid: web-uid}
spec:
  nodeName: node-a
  containers: [{name: c, image: busybox}]
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: config, configMap: {name: settings}}
"#;

impl Workspace {
    fn new() -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(base.join("manifests")).unwrap();
        Workspace { _tmp: tmp, base }
    }

    fn manifest(&self, name: &str, text: &str) {
        let text = text.replace("BASE", &self.base.display().to_string());
        std::fs::write(self.base.join("manifests").join(name), text).unwrap();
    }

    fn volumed(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_volumed"));
        command.args(args);
        if args.first() == Some(&"run") {
            // A temp dir on the host's own mounts: whether they are shared depends on the host.
            command.arg("--skip-propagation-check");
        }
        if !matches!(args.first(), Some(&"devices")) {
            command
                .arg("--manifests")
                .arg(self.base.join("manifests"))
                .arg("--root-dir")
                .arg(self.base.join("root"))
                .arg("--node-name")
                .arg("node-a")
                .arg("--host-path-root")
                .arg(&self.base);
        }
        command
            .env("VOLUMED_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run volumed")
    }

    fn root(&self) -> &Path {
        &self.base
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must exit `code`, and returns its stdout.
fn expect(workspace: &Workspace, args: &[&str], code: i32) -> String {
    let out = workspace.volumed(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "volumed {}: stdout:\n{}\nstderr:\n{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(stdout: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{stdout}"))
}

fn header(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_subcommand_and_output_format_works_through_the_binary() {
    let workspace = Workspace::new();
    workspace.manifest("web.yaml", POD);

    let plan = expect(&workspace, &["plan"], 0);
    assert_eq!(header(&plan), ["OP", "POD", "PATH", "DETAIL"], "{plan}");
    assert!(
        plan.contains("set-up") && plan.contains("scratch"),
        "{plan}"
    );
    let plan = json(
        &expect(&workspace, &["plan", "--output", "json"], 0),
        "plan -o json",
    );
    let ops = plan["ops"].as_array().expect("plan has an ops list");
    assert_eq!(ops.len(), 1, "{plan:#}");
    assert_eq!(ops[0]["op"], "setUp", "{plan:#}");
    assert_eq!(plan["desired"]["volumes"][0]["key"]["name"], "scratch");

    let status = expect(&workspace, &["status"], 0);
    assert_eq!(
        header(&status),
        ["POD", "VOLUME", "KIND", "PATH", "STATE", "REASON"],
        "{status}"
    );
    let rows = json(
        &expect(&workspace, &["status", "-o", "json"], 0),
        "status -o json",
    );
    let states: Vec<(&str, &str)> = rows
        .as_array()
        .expect("status is a list of rows")
        .iter()
        .map(|r| (r["volume"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("config", "unmanaged"), ("scratch", "not-ready")]);

    let run = expect(&workspace, &["run", "--once"], 0);
    assert_eq!(
        run.trim(),
        "volumed: 1 volume(s) of 1 pod(s) in place",
        "{run}"
    );
    assert!(workspace
        .root()
        .join("root/pods/web-uid/volumes/kubernetes.io~empty-dir/scratch")
        .is_dir());
    let table = expect(&workspace, &["status"], 0);
    let scratch = table.lines().find(|l| l.contains("scratch")).unwrap();
    assert!(
        scratch.trim_end().ends_with("mounted"),
        "REASON is empty for a mounted volume: {table}"
    );
    let again = expect(&workspace, &["plan"], 0);
    assert!(again.starts_with("nothing to do"), "{again}");
    let rows = json(
        &expect(&workspace, &["status", "--output", "json"], 0),
        "status",
    );
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["volume"] == "scratch" && r["state"] == "mounted"),
        "{rows:#}"
    );

    let devices = expect(&workspace, &["devices"], 0);
    assert_eq!(
        header(&devices),
        [
            "NAME",
            "MAJ:MIN",
            "SIZE",
            "RO",
            "TYPE",
            "FSTYPE",
            "UUID",
            "MOUNTPOINTS"
        ],
        "{devices}"
    );
    let listed = json(
        &expect(&workspace, &["devices", "-o", "json"], 0),
        "devices",
    );
    let first = &listed.as_array().expect("devices is a list")[0];
    assert!(
        first["name"].is_string() && first["size_bytes"].is_u64(),
        "{first:#}"
    );
}

#[test]
fn output_cut_short_by_a_closed_pipe_ends_quietly() {
    let workspace = Workspace::new();
    workspace.manifest("web.yaml", POD);
    // volumed devices -o json | head -c1
    let mut child = Command::new(env!("CARGO_BIN_EXE_volumed"))
        .args(["devices", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "a closed pipe must not panic:\n{}",
        text(&out.stderr)
    );
}

#[test]
fn deps_names_the_installed_packages_an_install_would_upgrade() {
    let sample =
        "Inst libudev1 [252.36-1~deb12u1] (252.39-1~deb12u1 Debian:12.12/stable [amd64])\n\
                  Inst libudev-dev (252.39-1~deb12u1 Debian:12.12/stable [amd64])\n\
                  Inst systemd [252.36-1] (252.39-1 Debian:12.12/stable [amd64])\n\
                  Conf libudev1 (252.39-1~deb12u1 Debian:12.12/stable [amd64])\n";
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!(". {}; apt_upgrades", lib.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), sample.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "libudev1 systemd");
}

/// A pod with three volumes that cannot be set up, for three different reasons, beside one
/// that can; and, in a file of its own, a pod the API server would refuse.
const TROUBLE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, uid: web-uid}
spec:
  nodeName: node-a
  containers: []
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: nope}}
  - {name: cache, emptyDir: {medium: Memory, sizeLimit: 12Foo}}
  - {name: logs, hostPath: {path: BASE/missing, type: Directory}}
  - {name: scratch, emptyDir: {}}
"#;

#[test]
fn plan_lists_what_cannot_be_set_up_with_file_and_line_and_exits_1() {
    let workspace = Workspace::new();
    workspace.manifest("web.yaml", TROUBLE);
    workspace.manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: evil}\nspec: {containers: [], volumes: [{name: ../../etc, emptyDir: {}}]}\n",
    );
    let out = workspace.volumed(&["plan"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let web = workspace.root().join("manifests/web.yaml:2");
    for (volume, reason) in [
        ("data", "PersistentVolumeClaim shop/nope does not exist"),
        ("cache", "emptyDir.sizeLimit"),
        ("logs", "is not a directory: found nothing"),
    ] {
        let line = format!(
            "cannot set up shop/web volume {volume} ({}): ",
            web.display()
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&line) && l.contains(reason)),
            "{volume}: want a line starting {line:?} with {reason:?}:\n{stderr}"
        );
    }
    let bad = workspace.root().join("manifests/bad.yaml:1");
    assert!(
        stderr.contains(&format!("error: {}: Pod is invalid", bad.display()))
            && stderr.contains("\"../../etc\""),
        "{stderr}"
    );
    // stdout is data: the ops table, the failing set-up marked, no error lines.
    assert_eq!(header(&stdout), ["OP", "POD", "PATH", "DETAIL"], "{stdout}");
    assert!(stdout.contains("will fail (see below)"), "{stdout}");
    assert!(
        stdout.contains("pods/web-uid/volumes/kubernetes.io~empty-dir/scratch"),
        "paths are relative to the root dir: {stdout}"
    );
    assert!(
        !stdout.contains("error") && !stdout.contains("cannot"),
        "{stdout}"
    );
    let wide = expect(&workspace, &["plan", "--wide"], 1);
    assert!(
        wide.contains(&workspace.root().join("root/pods").display().to_string()),
        "{wide}"
    );

    let json = json(
        &expect(&workspace, &["plan", "-o", "json"], 1),
        "plan -o json",
    );
    assert_eq!(json["canDoEverything"], false);
    let cannot: Vec<&str> = json["cannot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["volume"].as_str().unwrap())
        .collect();
    assert_eq!(cannot, ["data", "cache", "logs"], "{json:#}");
    assert!(json["cannot"][0]["origin"]
        .as_str()
        .unwrap()
        .ends_with("web.yaml:2"));
}

#[test]
fn messages_agree_with_each_other_and_with_exit_codes() {
    let workspace = Workspace::new();
    // A directory that does not exist is a command-line error, not "nothing to do".
    let root = workspace.root().join("root");
    for command in ["plan", "status"] {
        let out = Command::new(env!("CARGO_BIN_EXE_volumed"))
            .args([
                command,
                "--manifests",
                "/nonexistent/manifests",
                "--root-dir",
            ])
            .arg(&root)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{command}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("/nonexistent/manifests does not exist"));
    }

    // An empty status says so.
    let empty = expect(&workspace, &["status"], 0);
    assert!(empty.starts_with("no volumes"), "{empty}");

    // Volumes kept because the manifests are broken are "kept", and status exits 1.
    workspace.manifest("web.yaml", POD);
    expect(&workspace, &["run", "--once"], 0);
    workspace.manifest("web.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [broken\n");
    let out = workspace.volumed(&["status", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let rows = json(&text(&out.stdout), "status -o json");
    let scratch = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["volume"] == "scratch")
        .expect("the kept volume is listed");
    assert_eq!(scratch["state"], "kept", "{rows:#}");
    assert!(
        text(&out.stderr).contains("web.yaml:"),
        "{}",
        text(&out.stderr)
    );
    let out = workspace.volumed(&["run", "--once"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("host matches"), "{stderr}");
}

#[test]
fn help_documents_the_exit_codes_and_wide_paths() {
    for command in ["plan", "status"] {
        let out = Command::new(env!("CARGO_BIN_EXE_volumed"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = text(&out.stdout);
        assert!(out.status.success(), "{help}");
        assert!(
            help.contains("Exit 0") && help.contains("--wide"),
            "{command}: {help}"
        );
    }
}

#[test]
fn plan_counts_a_pod_held_back_by_its_directory_as_something_that_cannot_be_done() {
    let workspace = Workspace::new();
    workspace.manifest("web.yaml", POD);
    expect(&workspace, &["run", "--once"], 0);
    // The pod directory's owner record is no longer one volumed wrote.
    let record = workspace.root().join("root/pods/web-uid/volumed-owner");
    std::fs::remove_file(&record).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &record).unwrap();
    let out = workspace.volumed(&["plan"]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{stderr}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("cannot set up shop/web volume scratch") && stderr.contains("owner record"),
        "{stderr}"
    );
    assert!(
        !text(&out.stdout).contains("host matches"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn an_error_names_each_cause_once() {
    let workspace = Workspace::new();
    let out = Command::new(env!("CARGO_BIN_EXE_volumed"))
        .args([
            "plan",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--root-dir",
        ])
        .arg(workspace.root().join("root"))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_daemon_whose_manifest_watch_dies_exits_non_zero_with_the_reason() {
    // In a user namespace of its own the daemon may open no inotify instance at all, so the
    // manifest watch fails as it does on a host out of inotify instances.
    let workspace = Workspace::new();
    workspace.manifest("pod.yaml", POD);
    let base = workspace.root();
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "sh", "-c"])
        .arg(r#"echo 0 > /proc/sys/user/max_inotify_instances && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_volumed"))
        .arg("run")
        .arg("--skip-propagation-check")
        .arg("--manifests")
        .arg(base.join("manifests"))
        .arg("--root-dir")
        .arg(base.join("root"))
        .args(["--node-name", "node-a"])
        .env("VOLUMED_LOG", "warn")
        .env("VOLUMED_HTTP_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs volumed in a user namespace");
    // A guard, not a wait: before the fix the daemon idled here for ever.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > give_up {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "volumed kept running without its manifest watch; stderr:\n{}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("volumed: the manifest source failed:")
            && last.contains("inotify")
            && last.contains("restarts it"),
        "the last line names the task and why it stopped: {last}"
    );
}

#[test]
fn discover_refuses_to_run_without_once_classes_or_a_valid_config_and_says_why() {
    let workspace = Workspace::new();
    let base = workspace.root();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_volumed"))
            .args(args)
            .args(["--node-name", "node-a", "--root-dir"])
            .arg(base.join("root"))
            .env("VOLUMED_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let config = base.join("config.toml");
    let config = config.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (vec!["discover"], "", "needs --once"),
        (vec!["discover", "--once", "--config", config], "[local_pv]\n", "no local-PV classes are configured"),
        (
            vec!["discover", "--once", "--config", config],
            "[[local_pv.classes]]\nstorage_class = \"fast\"\nhost_dir = \"/mnt/disks\"\nvolume_mod = \"Block\"\n",
            "local_pv.classes[0].volume_mod: unknown field `volume_mod`",
        ),
        (vec!["discover", "--once", "--config", "/nonexistent/config.toml"], "", "cannot read config file /nonexistent/config.toml"),
    ];
    for (args, file, want) in cases {
        std::fs::write(base.join("config.toml"), file).unwrap();
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{args:?}: stdout {}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(want),
            "{args:?}: stderr says {want:?}: {stderr}"
        );
    }
}

#[test]
fn the_install_script_installs_a_unit_that_systemd_analyze_verify_accepts() {
    let prefix = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(repo.join("scripts/install.sh"))
        .arg("--prefix")
        .arg(prefix.path())
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_volumed"))
        .output()
        .unwrap();
    assert!(out.status.success(), "install.sh: {}", text(&out.stderr));
    let unit = prefix.path().join("lib/systemd/system/volumed.service");
    let installed = std::fs::read_to_string(&unit).unwrap();
    let exec = format!("ExecStart={}/bin/volumed run", prefix.path().display());
    assert!(installed.lines().any(|l| l == exec), "{installed}");
    assert!(
        !installed.contains('@'),
        "a placeholder is left: {installed}"
    );
    for file in [
        "bin/volumed",
        "etc/volumed/config.toml.example",
        "share/doc/volumed/README.md",
    ] {
        assert!(
            prefix.path().join(file).is_file(),
            "{file} was not installed"
        );
    }
    assert!(prefix.path().join("etc/volumed/manifests").is_dir());
    // systemd-analyze verify <unit>: accepted, and nothing to warn about.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (scripts/deps.sh installs systemd)");
    assert!(
        verify.status.success() && verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify: {}\n{}{}",
        verify.status,
        text(&verify.stdout),
        text(&verify.stderr)
    );
    let version = Command::new(prefix.path().join("bin/volumed"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        text(&version.stdout).starts_with("volumed "),
        "{}",
        text(&version.stdout)
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_the_ops_span() {
    let workspace = Workspace::new();
    workspace.manifest("web.yaml", POD);
    let out = workspace.volumed(&["run", "--once", "--log-format", "json", "--log", "info"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "op done" && l["span"]["op"] == "set-up")
        .unwrap_or_else(|| panic!("no set-up's \"op done\" in:\n{stderr}"));
    assert_eq!(done["span"]["pod"], "web-uid", "{done}");
    assert_eq!(done["span"]["volume"], "scratch", "{done}");
    assert_eq!(done["level"], "INFO", "{done}");
    // Only the summary is not a log line.
    let other: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    assert!(
        other.iter().all(|l| l.contains("unmanaged")
            || l.trim().is_empty()
            || l.starts_with("warning")
            || l.starts_with("  ")),
        "{other:?}"
    );
}

/// `check-config`'s lines, `key = value  # source`, by key; `not set` for a commented key.
fn effective(stdout: &str) -> std::collections::BTreeMap<String, (String, String)> {
    stdout
        .lines()
        .filter_map(|line| {
            if let Some(key) = line
                .strip_prefix("# ")
                .and_then(|l| l.strip_suffix(" is not set"))
            {
                return Some((key.to_string(), ("not set".to_string(), String::new())));
            }
            let (setting, source) = line.split_once("  # ")?;
            let (key, value) = setting.split_once(" = ")?;
            Some((key.to_string(), (value.to_string(), source.to_string())))
        })
        .collect()
}

#[test]
fn every_flag_has_a_config_key_and_a_flag_beats_the_environment_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("volumed.toml");
    std::fs::write(
        &config,
        "op_timeout = \"45s\"\nresync = \"90s\"\nmax_concurrent_ops = 5\nnode_labels = { zone = \"a\" }\nhost_path_root = [\"/srv\", \"/data\"]\n\n[[local_pv.classes]]\nstorage_class = \"fast\"\nhost_dir = \"/mnt/disks\"\n",
    )
    .unwrap();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_volumed"))
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = run(
        &["--resync", "2m"],
        &[("VOLUMED_OP_TIMEOUT", "50s"), ("VOLUMED_RESYNC", "3m")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let got = effective(&stdout);
    let file = format!("file {}", config.display());
    assert_eq!(got["resync"], ("\"2m\"".into(), "flag".into()), "{stdout}");
    assert_eq!(
        got["op_timeout"],
        ("\"50s\"".into(), "env VOLUMED_OP_TIMEOUT".into())
    );
    assert_eq!(got["max_concurrent_ops"], ("\"5\"".into(), file.clone()));
    assert_eq!(got["node_labels"], ("\"zone=a\"".into(), file.clone()));
    assert_eq!(
        got["host_path_root"],
        ("[\"/srv\", \"/data\"]".into(), file)
    );
    assert_eq!(got["mount_timeout"], ("\"2m\"".into(), "default".into()));
    assert_eq!(got["manifests"].0, "not set");
    assert!(stdout.contains("# local_pv: 1 class(es)"), "{stdout}");
    // Every long flag of every command is a key the file may set.
    for key in [
        "http_addr",
        "log",
        "log_format",
        "root_dir",
        "mounter_path",
        "first_list_timeout",
    ] {
        assert!(got.contains_key(key), "{key} missing from {stdout}");
    }
    // Bad keys and values are named, and nothing runs.
    for (text, named) in [
        ("op_timout = \"3s\"\n", "op_timout: unknown key"),
        ("op_timeout = \"3x\"\n", "op_timeout: invalid value '3x'"),
        (
            "max_concurrent_ops = \"many\"\n",
            "max_concurrent_ops: invalid value 'many'",
        ),
        (
            "[local_pv]\nclasess = []\n",
            "local_pv.clasess: unknown field",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let (code, stdout, stderr) = run(&[], &[]);
        assert_eq!(code, Some(2), "{text}: {stdout}{stderr}");
        assert!(
            stderr.contains(named) && stderr.contains("volumed.toml"),
            "{text}: {stderr}"
        );
        assert!(stdout.is_empty());
    }
}

#[test]
fn a_run_takes_its_settings_from_the_config_file() {
    let workspace = Workspace::new();
    workspace.manifest("web.yaml", POD);
    let base = workspace.root();
    let config = base.join("volumed.toml");
    std::fs::write(
        &config,
        format!(
            "manifests = \"{}\"\nroot_dir = \"{}\"\nnode_name = \"node-a\"\nhost_path_root = [\"{}\"]\nskip_propagation_check = true\n",
            base.join("manifests").display(),
            base.join("from-file").display(),
            base.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_volumed"))
        .args(["run", "--once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        base.join("from-file/pods/web-uid/volumes/kubernetes.io~empty-dir/scratch")
            .is_dir(),
        "the root dir of the file was not used: {}",
        text(&out.stderr)
    );
}
