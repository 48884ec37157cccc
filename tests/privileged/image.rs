//! The DaemonSet's image: `scripts/image.sh` builds it from Debian's packages with buildah,
//! podman runs it privileged, and a `run --once` inside it mounts the examples into a root
//! dir shared back to this namespace, as the DaemonSet's Bidirectional mount does on a node.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::sandbox::{check, mounts_under, text, Sandbox, TestResult};

type Case = (&'static str, fn() -> TestResult);

pub fn all() -> Vec<Case> {
    vec![(
        "the_image_built_from_debian_packages_runs_version_and_run_once_on_the_examples",
        the_image_built_from_debian_packages_runs_version_and_run_once_on_the_examples,
    )]
}

/// Container storage, podman's state and the image archive, all in one temp dir on disk (the
/// image is too big for a sandbox tmpfs), removed at the end with whatever podman mounted.
struct Containers {
    dir: PathBuf,
    tag: String,
    /// The cgroup podman puts the container and conmon in, removed at the end.
    cgroup_parent: String,
}

impl Containers {
    fn new() -> Containers {
        let dir = std::env::temp_dir().join(format!("volumed-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.display();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{path}/storage\"\n\
                 runroot = \"{path}/run\"\n"
            ),
        )
        .unwrap();
        // runc keeps its state in the temp dir too (its default is /run/runc).
        let runc = dir.join("runc");
        std::fs::write(
            &runc,
            format!("#!/bin/sh\nexec runc --root \"{path}/runc-state\" \"$@\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Nothing outside the temp dir: podman's state there, no journald events, cgroups
        // made by podman itself (this machine's systemd is not the container's manager).
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\ntmp_dir = \"{path}/libpod\"\nevents_logger = \"none\"\n\
                 cgroup_manager = \"cgroupfs\"\nruntime = \"e2e-runc\"\n\
                 [engine.runtimes]\ne2e-runc = [\"{path}/runc\"]\n"
            ),
        )
        .unwrap();
        Containers {
            dir,
            tag: format!("localhost/volumed:e2e-{}", std::process::id()),
            cgroup_parent: format!("volumed-e2e-{}", std::process::id()),
        }
    }

    fn env(&self, command: &mut Command) {
        command
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
    }

    fn build(&self) -> Output {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut command = Command::new(repo.join("scripts/image.sh"));
        command
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_volumed"))
            .arg("--tag")
            .arg(&self.tag)
            .arg("--archive")
            .arg(self.dir.join("volumed.oci.tar"))
            // The default mirrors, named: the main archive as a URI, security as a line.
            .arg("--mirror")
            .arg("http://deb.debian.org/debian")
            .arg("--mirror")
            .arg(format!(
                "deb http://deb.debian.org/debian-security {}-security main",
                host_debian_release()
            ));
        self.env(&mut command);
        command.output().expect("run scripts/image.sh")
    }

    /// podman run --rm, privileged, with no network; the limits podman would ask for by
    /// default (nofile 1048576) are above this machine's hard limit, so runc's setrlimit
    /// would fail: these are set to what any host grants.
    fn run(&self, volumes: &[&Path], args: &[&str]) -> Output {
        let mut command = Command::new("podman");
        command.args([
            "run",
            "--rm",
            "--privileged",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--cgroup-parent",
            &self.cgroup_parent,
        ]);
        for volume in volumes {
            let path = volume.display();
            // rshared: what volumed mounts inside reaches this namespace (Bidirectional).
            command
                .arg("--volume")
                .arg(format!("{path}:{path}:rshared"));
        }
        command.arg(&self.tag).args(args);
        self.env(&mut command);
        command.output().expect("run podman")
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let mut command = Command::new("podman");
        command.args(["rmi", "--force", &self.tag]);
        self.env(&mut command);
        let _ = command.output();
        // Overlay and shm mounts podman left in this (private) namespace, deepest first.
        for entry in mounts_under(&self.dir).iter().rev() {
            let _ = nix::mount::umount2(&entry.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The (empty) cgroups podman made under our parent, in every hierarchy (the v1
        // controllers and the unified one).
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten();
        for hierarchy in hierarchies.flatten().map(|e| e.path()) {
            remove_cgroup(&hierarchy.join(&self.cgroup_parent));
        }
        remove_cgroup(&Path::new("/sys/fs/cgroup").join(&self.cgroup_parent));
    }
}

/// rmdir a cgroup and the cgroups below it, deepest first (podman nests conmon's there).
fn remove_cgroup(cgroup: &Path) {
    for child in std::fs::read_dir(cgroup).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&child.path());
        }
    }
    let _ = std::fs::remove_dir(cgroup);
}

fn the_image_built_from_debian_packages_runs_version_and_run_once_on_the_examples() -> TestResult {
    let containers = Containers::new();
    let built = containers.build();
    check(built.status.success(), || {
        format!("scripts/image.sh failed: {}", text(&built.stderr))
    })?;
    let said = text(&built.stderr);
    let version = env!("CARGO_PKG_VERSION");
    check(
        said.lines().any(|line| {
            line.starts_with(&format!(
                "image.sh: built {} (volumed {version}, Debian {}, ",
                containers.tag,
                host_debian_release()
            ))
        }),
        || format!("scripts/image.sh did not say what it built: {said}"),
    )?;
    check_archive_names(&containers.dir.join("volumed.oci.tar"), &containers.tag)?;

    let shown = containers.run(&[], &["--version"]);
    let printed = text(&shown.stdout);
    check(
        shown.status.success() && printed.trim() == format!("volumed {version}"),
        || {
            format!(
                "volumed --version in the image: {:?}, stdout {printed:?}, stderr {}",
                shown.status,
                text(&shown.stderr)
            )
        },
    )?;

    // The demo's layout: the examples' /tmp/volumed-demo paths become the sandbox's.
    let sandbox = Sandbox::new("image");
    let base = sandbox.base.display().to_string();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let manifest = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        sandbox.manifest(&name, &manifest.replace("/tmp/volumed-demo", &base));
    }
    sandbox.write("disks/vol-small/README", "written on the host\n");
    std::fs::create_dir_all(sandbox.path("disks/vol-large")).unwrap();
    let root = sandbox.root.display().to_string();
    let manifests = sandbox.manifests.display().to_string();
    let once = [
        "--log",
        "warn",
        "run",
        "--once",
        "--manifests",
        &manifests,
        "--root-dir",
        &root,
        "--node-name",
        "demo-node",
        "--host-path-root",
        &base,
    ];

    let up = containers.run(&[&sandbox.base], &once);
    check(up.status.success(), || {
        format!(
            "run --once in the image: {:?}: {}",
            up.status,
            text(&up.stderr)
        )
    })?;
    // Seen from outside the container: one tmpfs for the Memory emptyDir, binds for the
    // hostPath and the local volume (the rest are directories).
    let mounts = sandbox.mounts();
    let kinds: Vec<String> = mounts
        .iter()
        .map(|m| {
            let rel = m.mount_point.strip_prefix(&sandbox.root).unwrap();
            let plugin = rel.iter().nth(3).map(|p| p.to_string_lossy().into_owned());
            format!("{} {}", plugin.unwrap_or_default(), m.fs_type)
        })
        .collect();
    check(
        kinds
            == [
                "kubernetes.io~empty-dir tmpfs",
                "kubernetes.io~host-path tmpfs",
                "kubernetes.io~local-volume tmpfs",
            ],
        || format!("mounts the image's run --once made, seen from outside: {kinds:?}"),
    )?;
    let local = mounts
        .iter()
        .find(|m| m.mount_point.to_string_lossy().contains("local-volume"))
        .unwrap();
    let data = std::fs::read_to_string(local.mount_point.join("README")).unwrap_or_default();
    check(data == "written on the host\n", || {
        format!("the claim's volume holds {data:?}, not vol-small's README")
    })?;

    // The pod goes away: the teardown inside reaches this namespace too; the data stays.
    std::fs::remove_file(sandbox.manifests.join("web.yaml")).unwrap();
    let down = containers.run(&[&sandbox.base], &once);
    check(down.status.success(), || {
        format!("teardown run --once in the image: {}", text(&down.stderr))
    })?;
    let left = sandbox.mounts();
    check(left.is_empty(), || {
        format!("mounts left after the teardown in the image: {left:?}")
    })?;
    let kept = std::fs::read_to_string(sandbox.path("disks/vol-small/README")).unwrap();
    check(kept == "written on the host\n", || {
        format!("vol-small after the teardown: {kept:?}")
    })
}

/// The Debian release image.sh builds the root from: this host's, bookworm elsewhere.
fn host_debian_release() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        release
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|value| value.trim_matches('"').to_owned())
    };
    match (field("ID="), field("VERSION_CODENAME=")) {
        (Some(id), Some(name)) if id == "debian" && !name.is_empty() => name,
        _ => "bookworm".into(),
    }
}

/// The OCI archive's index names the image by its tag, as `ctr images import` reads it.
fn check_archive_names(archive: &Path, tag: &str) -> TestResult {
    let index = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json")
        .output()
        .expect("run tar");
    let index: serde_json::Value = serde_json::from_slice(&index.stdout)
        .map_err(|e| format!("{}: index.json is not JSON: {e}", archive.display()))?;
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    check(names == [tag], || {
        format!(
            "{}: the index names {names:?}, not {tag}",
            archive.display()
        )
    })
}
