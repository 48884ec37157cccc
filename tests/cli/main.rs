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
