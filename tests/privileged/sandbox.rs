//! A scratch tmpfs per test (inside the private namespace), manifests in it, and helpers to
//! run the real binary and read the real mount table.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use volumed::model::mountinfo::{parse, MountEntry};

pub type TestResult = Result<(), String>;

pub struct Sandbox {
    pub base: PathBuf,
    pub root: PathBuf,
    pub manifests: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let base = std::env::temp_dir().join(format!("volumed-e2e-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // mount -t tmpfs tmpfs <base>: everything the test makes lives on it.
        mount(
            Some("tmpfs"),
            &base,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=64m"),
        )
        .expect("mount scratch tmpfs");
        // mount --make-shared <base>: as the root dir of a real host is (the propagation
        // check asks for it); its peers are only itself, inside this namespace.
        mount(
            None::<&str>,
            &base,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("make the scratch tmpfs shared");
        let sandbox = Sandbox {
            root: base.join("root"),
            manifests: base.join("manifests"),
            base,
        };
        std::fs::create_dir_all(&sandbox.manifests).unwrap();
        sandbox
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text.replace("BASE", &self.base.display().to_string())).unwrap();
    }

    pub fn manifest(&self, name: &str, text: &str) {
        self.write(&format!("manifests/{name}"), text);
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_with(args, &self.manifests, "node-a")
    }

    fn command_with(&self, args: &[&str], manifests: &Path, node: &str) -> Command {
        let mut cmd = self.command_without_source(args, node);
        cmd.arg("--manifests").arg(manifests);
        cmd
    }

    fn command_without_source(&self, args: &[&str], node: &str) -> Command {
        let mut cmd = self.bare_command(args, node);
        cmd.arg("--host-path-root").arg(&self.base);
        cmd
    }

    /// The binary on this root dir, without a source or host path roots.
    fn bare_command(&self, args: &[&str], node: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_volumed"));
        cmd.args(args)
            .arg("--root-dir")
            .arg(&self.root)
            .arg("--node-name")
            .arg(node)
            .env("VOLUMED_LOG", "info")
            // Any free port: test daemons run side by side.
            .env("VOLUMED_HTTP_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null());
        cmd
    }

    /// volumed on the sandbox's manifests with hostPath and local paths limited to `roots`.
    pub fn volumed_within(&self, args: &[&str], roots: &[&Path]) -> Output {
        let mut cmd = self.bare_command(args, "node-a");
        cmd.arg("--manifests").arg(&self.manifests);
        for root in roots {
            cmd.arg("--host-path-root").arg(root);
        }
        cmd.output().expect("run volumed")
    }

    /// The binary on this root dir as `node`, with no source or host path roots given.
    pub fn volumed_bare(&self, args: &[&str], node: &str) -> Output {
        self.bare_command(args, node).output().expect("run volumed")
    }

    pub fn volumed(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run volumed")
    }

    /// volumed on this root dir with another manifest directory or node name.
    pub fn volumed_with(&self, args: &[&str], manifests: &Path, node: &str) -> Output {
        self.command_with(args, manifests, node)
            .output()
            .expect("run volumed")
    }

    /// volumed on this root dir with another manifest directory, killed if it has not
    /// exited within `limit` (an error then).
    pub fn volumed_with_limit(
        &self,
        args: &[&str],
        manifests: &Path,
        limit: Duration,
    ) -> Result<Output, String> {
        let mut child = self
            .command_with(args, manifests, "node-a")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start volumed");
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                return Err(format!(
                    "volumed {} still ran after {limit:?}:\n{}",
                    args.join(" "),
                    text(&out.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child.wait_with_output().unwrap())
    }

    /// GET `path` from the endpoint of the daemon on this root dir (at the address it wrote):
    /// its status, body and how long it took.
    pub fn http_get(&self, path: &str) -> Result<(u16, String, Duration), String> {
        let written = std::fs::read_to_string(self.root.join("state/http.addr"))
            .map_err(|e| format!("the daemon's address: {e}"))?;
        let addr = written
            .trim()
            .parse()
            .map_err(|e| format!("{written:?}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let (status, body) = runtime
            .block_on(volumed::host::http::get(
                addr,
                path,
                Duration::from_secs(10),
            ))
            .map_err(|e| e.to_string())?;
        Ok((status, body, started.elapsed()))
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// `run --once`, which must exit 0.
    pub fn converge(&self) -> TestResult {
        let out = self.volumed(&["run", "--once"]);
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "run --once failed ({}):\n{}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        ))
    }

    pub fn daemon(&self) -> Child {
        Self::spawn_logged(self.command(&["run"]), &self.path("daemon.log"))
    }

    /// The file-mode daemon with more arguments for `run`.
    pub fn daemon_with(&self, extra: &[&str]) -> Child {
        self.daemon_with_env(extra, &[])
    }

    /// The file-mode daemon with more arguments for `run` and more environment.
    pub fn daemon_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Child {
        let args: Vec<&str> = ["run"].into_iter().chain(extra.iter().copied()).collect();
        let mut cmd = self.command(&args);
        cmd.envs(env.iter().copied());
        Self::spawn_logged(cmd, &self.path("daemon.log"))
    }

    /// The daemon with a log filter of its own (`volumed=debug`, say).
    pub fn daemon_logging(&self, filter: &str) -> Child {
        let mut cmd = self.command(&["run"]);
        cmd.env("VOLUMED_LOG", filter);
        Self::spawn_logged(cmd, &self.path("daemon.log"))
    }

    /// The daemon with the Kubernetes API as its source.
    pub fn api_daemon(&self, kubeconfig: &Path, node: &str) -> Child {
        self.api_daemon_with(kubeconfig, node, &[])
    }

    /// As `api_daemon`, with more arguments for `run`.
    pub fn api_daemon_with(&self, kubeconfig: &Path, node: &str, extra: &[&str]) -> Child {
        let args: Vec<&str> = ["run"].into_iter().chain(extra.iter().copied()).collect();
        let mut cmd = self.command_without_source(&args, node);
        cmd.arg("--kubeconfig").arg(kubeconfig);
        Self::spawn_logged(cmd, &self.path("daemon.log"))
    }

    fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
        // A file, not a pipe: an unread pipe could fill and stall the daemon.
        let log = std::fs::File::create(log).unwrap();
        cmd.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start volumed")
    }

    pub fn volume(&self, uid: &str, plugin: &str, name: &str) -> PathBuf {
        self.root
            .join(format!("pods/{uid}/volumes/kubernetes.io~{plugin}/{name}"))
    }

    /// Mounts below the root dir, from the real mount table.
    pub fn mounts(&self) -> Vec<MountEntry> {
        mounts_under(&self.root)
    }
}

pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    let file = std::fs::File::open("/proc/self/mountinfo").unwrap();
    let mut entries: Vec<_> = parse(std::io::BufReader::new(file), "mountinfo")
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    entries.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    entries
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // umount -l <base>: detaches the scratch tmpfs with every mount the test made below it.
        let _ = umount2(&self.base, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.base);
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn check(ok: bool, what: impl FnOnce() -> String) -> TestResult {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// Polls until `done` holds, failing after `limit`.
pub fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> TestResult {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what}: not reached within {limit:?}"))
}

impl Sandbox {
    /// SIGTERM, then the daemon must exit 0 within 10 s; returns its log.
    pub fn stop(&self, daemon: Child) -> Result<String, String> {
        let result = stop(daemon);
        let log = std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default();
        result
            .map(|()| log.clone())
            .map_err(|e| format!("{e}\n{log}"))
    }
}

fn stop(mut daemon: Child) -> Result<(), String> {
    // kill -TERM <pid>
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("daemon exited {status}"))
            };
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = daemon.kill();
            return Err("daemon did not stop within 10 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
