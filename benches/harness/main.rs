//! The engine of `scripts/bench.sh`: runs volumed and its baselines (the syscall floor,
//! exec-based mounting, a kubelet-style polling loop) on the same workload, in the private
//! mount namespace the script made, and prints one markdown table. Not a test: the targets
//! live here, as ratios against baselines measured in the same run.

mod api_scale;
#[path = "../../tests/support/apiserver/mod.rs"]
mod apiserver;
mod measure;
mod workload;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use measure::{percentile, secs, sorted, MountEvents, Spread};
use workload::Workload;

#[derive(Parser)]
struct Cli {
    /// None: what `cargo test` runs (it passes no arguments), the harness's own checks.
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every row: mounts a tmpfs on --work (which must exist) and works inside it.
    Run(RunArgs),
    /// Baseline child: the floor's mkdirs and mounts for pods 0..N under BASE.
    Floor { base: PathBuf, pods: usize },
    /// Baseline child: the floor's unmounts and rmdirs.
    FloorTeardown { base: PathBuf, pods: usize },
    /// Baseline child: the same mounts, one `mount` process each.
    Exec { base: PathBuf, pods: usize },
    /// For profiling by hand: writes the workload's manifests and disks for pods 0..N.
    Gen { base: PathBuf, pods: usize },
    /// For profiling by hand: N unrelated bind mounts under DIR.
    Unrelated { dir: PathBuf, count: usize },
    /// Baseline child: re-reads mountinfo every INTERVAL ms for SECS s; prints its CPU seconds.
    Poll { secs: u64, interval_ms: u64 },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    #[arg(long)]
    volumed: PathBuf,
    #[arg(long)]
    work: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Runs of each timed row.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Single-pod manifests added (and then removed) one at a time while the daemon runs.
    #[arg(long, default_value_t = 200)]
    reactions: usize,
    #[arg(long, default_value_t = 10_000)]
    unrelated: usize,
    /// Unrelated mounts added and removed for the churn row.
    #[arg(long, default_value_t = 1000)]
    churn: usize,
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    scaling: Vec<usize>,
    /// PersistentVolumes (and as many claims) in the test API server: the small cluster, the
    /// big one.
    #[arg(long, value_delimiter = ',', default_value = "100,10000")]
    api_objects: Vec<usize>,
    /// Which groups of rows to run (all by default): converge, daemon, api, scaling.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "converge,daemon,api,scaling"
    )]
    rows: Vec<String>,
    /// This node's pods in the API rows.
    #[arg(long, default_value_t = 50)]
    api_pods: usize,
    /// Other nodes' claims and volumes changed one at a time in the API rows.
    #[arg(long, default_value_t = 200)]
    api_changes: usize,
}

fn main() {
    let Some(command) = Cli::parse().command else {
        self_check();
        return;
    };
    match command {
        Cmd::Run(args) => std::process::exit(run(args)),
        Cmd::Floor { base, pods } => workload::floor_mount(&Workload::new(&base), 0..pods),
        Cmd::FloorTeardown { base, pods } => {
            workload::floor_unmount(&Workload::new(&base), 0..pods)
        }
        Cmd::Exec { base, pods } => workload::exec_mount(&Workload::new(&base), 0..pods),
        Cmd::Gen { base, pods } => Workload::new(&base).create(0..pods),
        Cmd::Unrelated { dir, count } => workload::unrelated_mounts(&dir, 0..count),
        Cmd::Poll { secs, interval_ms } => {
            poll_loop(
                Duration::from_secs(secs),
                Duration::from_millis(interval_ms),
            );
            Ok(())
        }
    }
    .unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(1)
    })
}

/// Checks of the harness itself, run by `cargo test`: the workload is what volumed reads
/// without complaint, and the statistics are right.
fn self_check() {
    let w = Workload::new(Path::new("/srv/bench"));
    let mut manifests = volumed::desired::manifest::Manifests::default();
    manifests.add_file(Path::new("pod.yaml"), &w.manifest(7));
    assert!(manifests.errors.is_empty(), "{:?}", manifests.errors);
    assert!(manifests.warnings.is_empty(), "{:?}", manifests.warnings);
    assert_eq!(
        (
            manifests.pods.len(),
            manifests.claims.len(),
            manifests.volumes.len()
        ),
        (1, 1, 1)
    );
    let pv = &manifests.volumes[&Workload::pv(7)];
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    assert_eq!(claim_ref.and_then(|c| c.name.as_deref()), Some("data-7"));
    let values = sorted((1..=100).map(f64::from).collect());
    assert_eq!(percentile(&values, 50.0), 50.0);
    assert_eq!(percentile(&values, 99.0), 99.0);
    let spread = Spread::of(&[3.0, 1.0, 2.0]);
    assert_eq!((spread.median, spread.min, spread.max), (2.0, 1.0, 3.0));
    println!("harness self-check: ok (run the benchmark with scripts/bench.sh)");
}

/// kubelet-style: the whole mount table every interval, whether anything changed or not.
fn poll_loop(length: Duration, interval: Duration) {
    let began = Instant::now();
    let mut buf = Vec::new();
    let mut reads = 0u64;
    while began.elapsed() < length {
        let tick = Instant::now();
        buf.clear();
        std::fs::File::open("/proc/self/mountinfo")
            .and_then(|mut f| f.read_to_end(&mut buf))
            .expect("mountinfo");
        reads += 1;
        std::thread::sleep(interval.saturating_sub(tick.elapsed()));
    }
    // The whole process's CPU time: this loop is single-threaded.
    let cpu = secs(measure::thread_cpu());
    println!("{cpu} {reads}");
}

/// Longer than volumed's settle window (250 ms): manifests removed this long before a run
/// are trusted without a second read.
const SETTLED: Duration = Duration::from_millis(400);

/// One row of the table.
struct Row {
    name: String,
    volumed: String,
    baseline: String,
    ratio: String,
    target: String,
    met: bool,
}

struct Bench {
    args: RunArgs,
    me: PathBuf,
    config: PathBuf,
    rows: Vec<Row>,
}

fn run(args: RunArgs) -> i32 {
    let me = std::env::current_exe().expect("own path");
    let work = args.work.clone();
    nix::mount::mount(
        Some("volumed-bench"),
        &work,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2g"),
    )
    .expect("a tmpfs on the work dir (run as root, in a private mount namespace)");
    // The root dir must be on a shared mount (volumed checks); its only peer is itself.
    nix::mount::mount(
        None::<&str>,
        &work,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .expect("make the work tmpfs shared");
    let config = work.join("config.toml");
    std::fs::write(&config, "").expect("config");
    let mut bench = Bench {
        args,
        me,
        config,
        rows: Vec::new(),
    };
    let wanted = |group: &str| bench.args.rows.iter().any(|r| r == group);
    let (converge, daemon, api, scaling) = (
        wanted("converge"),
        wanted("daemon"),
        wanted("api"),
        wanted("scaling"),
    );
    if converge {
        bench.converge_rows();
    }
    if daemon {
        bench.daemon_rows();
    }
    if api {
        bench.api_rows();
    }
    if scaling {
        bench.scaling_row();
    }
    let _ = nix::mount::umount2(&work, nix::mount::MntFlags::MNT_DETACH);
    print_table(&bench.rows);
    let missed = bench.rows.iter().filter(|r| !r.met).count();
    if missed > 0 {
        eprintln!(
            "bench: {missed} of {} rows miss their target",
            bench.rows.len()
        );
        return 1;
    }
    0
}

impl Bench {
    fn base(&self, name: &str) -> PathBuf {
        let base = self.args.work.join(name);
        std::fs::create_dir_all(&base).expect("base dir");
        base
    }

    fn volumed(&self, w: &Workload, once: bool) -> Command {
        let mut cmd = Command::new(&self.args.volumed);
        cmd.args(["--log", "warn", "run"]);
        if once {
            cmd.arg("--once");
        }
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--manifests")
            .arg(&w.manifests)
            .arg("--root-dir")
            .arg(&w.root)
            .args(["--node-name", workload::NODE, "--http-addr", "127.0.0.1:0"])
            .arg("--host-path-root")
            .arg(&self.args.work);
        cmd
    }

    fn child(&self, verb: &str, base: &Path, pods: usize) -> Command {
        let mut cmd = Command::new(&self.me);
        cmd.arg(verb).arg(base).arg(pods.to_string());
        cmd
    }

    fn converge_rows(&mut self) {
        let n = self.args.pods;
        let (mut cold, mut noop, mut teardown) = (Vec::new(), Vec::new(), Vec::new());
        let mut teardown_at_once = Vec::new();
        let (mut floor, mut floor_down, mut exec) = (Vec::new(), Vec::new(), Vec::new());
        let mut noop_mounts = None;
        for run in 0..self.args.runs {
            eprintln!("bench: converge run {} of {}", run + 1, self.args.runs);
            let w = Workload::new(&self.base(&format!("volumed-{run}")));
            w.create(0..n).expect("workload");
            cold.push(timed(&mut self.volumed(&w, true)));
            assert_eq!(
                measure::mounts_under(&w.root),
                2 * n,
                "cold converge mounted all"
            );
            noop.push(timed(&mut self.volumed(&w, true)));
            if run == 0 {
                noop_mounts = Some(self.mount_syscalls(&w));
            }
            for i in 0..n {
                std::fs::remove_file(w.file(i)).expect("manifest");
            }
            // Removed long enough ago that volumed's half-written-file guard trusts the
            // directory at once (the row's own measure) ...
            std::thread::sleep(SETTLED);
            teardown.push(timed(&mut self.volumed(&w, true)));
            assert_eq!(measure::mounts_under(&w.root), 0, "teardown unmounted all");
            // ... or just now: then it reads the directory a second time, one settle window
            // later, before it tears anything down. (A workload of its own: the first one's
            // volumes are Released now, as their claims were deleted.)
            let w = Workload::new(&self.base(&format!("volumed-at-once-{run}")));
            w.create(0..n).expect("workload");
            timed(&mut self.volumed(&w, true));
            for i in 0..n {
                std::fs::remove_file(w.file(i)).expect("manifest");
            }
            teardown_at_once.push(timed(&mut self.volumed(&w, true)));
            assert_eq!(measure::mounts_under(&w.root), 0, "teardown unmounted all");

            let base = self.base(&format!("floor-{run}"));
            Workload::new(&base).create(0..n).expect("workload");
            floor.push(timed(&mut self.child("floor", &base, n)));
            floor_down.push(timed(&mut self.child("floor-teardown", &base, n)));
            exec.push(timed(&mut self.child("exec", &base, n)));
            timed(&mut self.child("floor-teardown", &base, n));
        }
        let (cold, floor, exec) = (Spread::of(&cold), Spread::of(&floor), Spread::of(&exec));
        let ms = |s: &Spread| s.show(1e3, "ms", 1);
        let ratio = cold.median / floor.median;
        self.rows.push(Row {
            name: format!("cold converge, {n} pods (`run --once`)"),
            volumed: ms(&cold),
            baseline: format!("{} syscall floor", ms(&floor)),
            ratio: format!("{ratio:.2}×"),
            target: "≤ 2×".into(),
            met: ratio <= 2.0,
        });
        let speedup = exec.median / cold.median;
        self.rows.push(Row {
            name: "cold converge vs exec-based mounting".into(),
            volumed: ms(&cold),
            baseline: format!("{} one `mount` per mount", ms(&exec)),
            ratio: format!("{speedup:.1}× faster"),
            target: "≥ 20× faster".into(),
            met: speedup >= 20.0,
        });
        let (teardown, floor_down) = (Spread::of(&teardown), Spread::of(&floor_down));
        let ratio = teardown.median / floor_down.median;
        self.rows.push(Row {
            name: format!(
                "teardown, {n} pods (`run --once`, manifests removed {} ms before)",
                SETTLED.as_millis()
            ),
            volumed: ms(&teardown),
            baseline: format!("{} syscall floor", ms(&floor_down)),
            ratio: format!("{ratio:.2}×"),
            target: "≤ 2×".into(),
            met: ratio <= 2.0,
        });
        let at_once = Spread::of(&teardown_at_once);
        let ratio = at_once.median / floor_down.median;
        self.rows.push(Row {
            name: "teardown right after the removal (a second read one settle window later)".into(),
            volumed: ms(&at_once),
            baseline: format!("{} syscall floor", ms(&floor_down)),
            ratio: format!("{ratio:.2}×"),
            target: "shown, not judged: the half-written-file guard's cost".into(),
            met: true,
        });
        let noop = Spread::of(&noop);
        let mounts = noop_mounts.expect("counted in the first run");
        let share = noop.median / cold.median;
        self.rows.push(Row {
            name: "no-op pass (`run --once`, all in place)".into(),
            volumed: format!("{}, {mounts} mount syscalls", ms(&noop)),
            baseline: format!("{} cold converge", ms(&cold)),
            ratio: format!("{share:.2}"),
            target: "0 mount syscalls, ≤ 0.2".into(),
            met: mounts == 0 && share <= 0.2,
        });
    }

    /// mount-family syscalls of one no-op `run --once`, counted by strace.
    fn mount_syscalls(&self, w: &Workload) -> u64 {
        let out = self.args.work.join("strace.txt");
        let volumed = self.volumed(w, true);
        let status = Command::new("strace")
            .args(["-f", "-qq", "-c", "-o"])
            .arg(&out)
            .arg("-e")
            .arg("trace=mount,umount2,move_mount,fsmount,fsconfig,open_tree,mount_setattr")
            .arg(volumed.get_program())
            .args(volumed.get_args())
            .stdout(Stdio::null())
            .status()
            .expect("strace (scripts/bench.sh installs it)");
        assert!(status.success(), "no-op run under strace: {status}");
        let text = std::fs::read_to_string(&out).expect("strace summary");
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let name = *fields.last()?;
                (name != "total" && name != "syscall" && fields.len() >= 5)
                    .then(|| fields[3].parse::<u64>().ok())
                    .flatten()
            })
            .sum()
    }

    fn daemon_rows(&mut self) {
        let n = self.args.pods;
        let w = Workload::new(&self.base("daemon"));
        w.create(0..n).expect("workload");
        let events = MountEvents::open();
        let log = std::fs::File::create(self.args.work.join("daemon.log")).expect("log");
        let daemon = Daemon(
            self.volumed(&w, false)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("volumed run"),
        );
        let pid = daemon.0.id();
        eprintln!("bench: daemon converging {n} pods");
        events
            .until(Duration::from_secs(300), || {
                measure::mounts_under(&w.root) == 2 * n
            })
            .expect("the daemon converges");

        eprintln!("bench: {} pods added one at a time", self.args.reactions);
        let added = n..n + self.args.reactions;
        let mut adds = Vec::new();
        for i in added.clone() {
            let staged = w.stage(i).expect("stage");
            let targets = w.targets(i);
            let began = Instant::now();
            std::fs::rename(&staged, w.file(i)).expect("rename");
            events
                .until(Duration::from_secs(30), || {
                    targets.iter().all(|t| workload::is_mount_root(t))
                })
                .unwrap_or_else(|| panic!("pod {i}'s mounts did not appear in 30 s"));
            adds.push(secs(began.elapsed()));
        }
        eprintln!("bench: the same pods removed one at a time");
        let mut removes = Vec::new();
        for i in added {
            let targets = w.targets(i);
            let began = Instant::now();
            std::fs::remove_file(w.file(i)).expect("remove");
            events
                .until(Duration::from_secs(30), || {
                    !targets.iter().any(|t| workload::is_mount_root(t))
                })
                .unwrap_or_else(|| panic!("pod {i}'s mounts were not removed in 30 s"));
            removes.push(secs(began.elapsed()));
        }
        let adds = sorted(adds);
        let (p50, p99) = (percentile(&adds, 50.0), percentile(&adds, 99.0));
        self.rows.push(Row {
            name: format!(
                "reaction: pod manifest renamed in → mounts visible ({} adds, daemon with {n} pods)",
                adds.len()
            ),
            volumed: format!("p50 {:.1} ms, p99 {:.1} ms", p50 * 1e3, p99 * 1e3),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "p50 ≤ 10 ms, p99 ≤ 50 ms".into(),
            met: p50 <= 0.010 && p99 <= 0.050,
        });
        let removes = sorted(removes);
        let p99 = percentile(&removes, 99.0);
        self.rows.push(Row {
            name: format!(
                "teardown latency: manifest removed → mounts gone ({})",
                removes.len()
            ),
            volumed: format!(
                "p50 {:.1} ms, p99 {:.1} ms",
                percentile(&removes, 50.0) * 1e3,
                p99 * 1e3
            ),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "p99 ≤ 300 ms".into(),
            met: p99 <= 0.300,
        });

        let unrelated = self.args.work.join("unrelated");
        eprintln!("bench: {} unrelated mounts", self.args.unrelated);
        workload::unrelated_mounts(&unrelated, 0..self.args.unrelated).expect("unrelated");
        measure::wait_quiet(pid, Duration::from_millis(500), Duration::from_secs(60));
        let idle_secs = self.args.idle_secs;
        eprintln!("bench: {idle_secs} s idle, beside a polling loop");
        let meter = measure::CpuMeter::start(pid);
        let poll = Command::new(&self.me)
            .args(["poll", &idle_secs.to_string(), "100"])
            .output()
            .expect("polling loop");
        let idle = secs(meter.used());
        let polled: f64 = String::from_utf8_lossy(&poll.stdout)
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("the polling loop's CPU seconds");
        let ratio = idle / polled;
        self.rows.push(Row {
            name: format!(
                "idle: {} volumes + {} unrelated mounts, {idle_secs} s",
                2 * n,
                self.args.unrelated
            ),
            volumed: format!("{:.1} ms CPU", idle * 1e3),
            baseline: format!("{:.0} ms CPU polling mountinfo every 100 ms", polled * 1e3),
            ratio: format!("{ratio:.4}"),
            target: "≤ 0.01".into(),
            met: ratio <= 0.01,
        });

        let read_cost = Spread::of(
            &(0..10)
                .map(|_| {
                    let began = measure::thread_cpu();
                    let text = std::fs::read("/proc/self/mountinfo").expect("mountinfo");
                    std::hint::black_box(text);
                    secs(measure::thread_cpu() - began)
                })
                .collect::<Vec<_>>(),
        );
        let churn = self.args.unrelated..self.args.unrelated + self.args.churn;
        eprintln!("bench: {} unrelated mounts added and removed", churn.len());
        let meter = measure::CpuMeter::start(pid);
        workload::unrelated_mounts(&unrelated, churn.clone()).expect("churn");
        workload::remove_unrelated(&unrelated, churn.clone()).expect("churn");
        measure::wait_quiet(pid, Duration::from_millis(500), Duration::from_secs(60));
        let per_change = secs(meter.used()) / (2 * churn.len()) as f64;
        let ratio = per_change / read_cost.median;
        self.rows.push(Row {
            name: format!("churn: {} unrelated mounts added and removed", churn.len()),
            volumed: format!("{:.1} µs CPU per change", per_change * 1e6),
            baseline: format!("{} CPU per mountinfo read", read_cost.show(1e3, "ms", 2)),
            ratio: format!("{ratio:.3}"),
            target: "≤ 0.1".into(),
            met: ratio <= 0.1,
        });

        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .count();
        let (mut plain, mut parsed) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let began = Instant::now();
            std::hint::black_box(std::fs::read("/proc/self/mountinfo").expect("mountinfo"));
            plain.push(secs(began.elapsed()));
            let began = Instant::now();
            let file = std::fs::File::open("/proc/self/mountinfo").expect("mountinfo");
            let entries =
                volumed::model::mountinfo::parse(std::io::BufReader::new(file), "mountinfo")
                    .expect("parse");
            std::hint::black_box(entries);
            parsed.push(secs(began.elapsed()));
        }
        let (plain, parsed) = (Spread::of(&plain), Spread::of(&parsed));
        let ratio = parsed.median / plain.median;
        self.rows.push(Row {
            name: format!("mountinfo read + parse, {mounts} mounts"),
            volumed: parsed.show(1e3, "ms", 2),
            baseline: format!("{} plain read", plain.show(1e3, "ms", 2)),
            ratio: format!("{ratio:.2}×"),
            target: "≤ 1.5×".into(),
            met: ratio <= 1.5,
        });

        let peak = measure::peak_rss(pid);
        let volumes = 2 * n;
        self.rows.push(Row {
            name: format!(
                "memory: daemon peak RSS, {volumes} volumes (+{} added and removed)",
                2 * self.args.reactions
            ),
            volumed: format!("{:.1} MiB", peak as f64 / 1048576.0),
            baseline: "—".into(),
            ratio: "—".into(),
            target: "≤ 40 MiB at 2 000 volumes".into(),
            met: peak <= 40 << 20,
        });
        drop(daemon);
        let _ = workload::remove_unrelated(&unrelated, 0..self.args.unrelated);
    }

    fn api_rows(&mut self) {
        let scale = api_scale::ApiScale {
            volumed: &self.args.volumed,
            config: &self.config,
            host_path_root: &self.args.work,
            pods: self.args.api_pods,
            changes: self.args.api_changes,
        };
        let [small, big] = self.args.api_objects[..] else {
            panic!("--api-objects takes two sizes");
        };
        let mut costs = Vec::new();
        for objects in [small, big] {
            eprintln!(
                "bench: API mode, {objects} PVs and claims, {} of them this node's",
                scale.pods
            );
            costs.push(scale.measure(&self.base(&format!("api-{objects}")), objects));
        }
        let (small_cost, big_cost) = (&costs[0], &costs[1]);
        let mib = |bytes: u64| bytes as f64 / 1048576.0;
        let ratio = big_cost.peak_rss as f64 / small_cost.peak_rss as f64;
        self.rows.push(Row {
            name: format!(
                "API scale: daemon peak RSS, {big} PVs and claims in the cluster ({} pods here)",
                scale.pods
            ),
            volumed: format!(
                "{:.1} MiB ({:.1} MiB after the changes)",
                mib(big_cost.peak_rss),
                mib(big_cost.rss)
            ),
            baseline: format!(
                "{:.1} MiB ({:.1} MiB) with {small}",
                mib(small_cost.peak_rss),
                mib(small_cost.rss)
            ),
            ratio: format!("{ratio:.2}×"),
            target: "≤ 1.5×".into(),
            met: ratio <= 1.5,
        });
        let ratio = big_cost.cpu_per_change / small_cost.cpu_per_change;
        self.rows.push(Row {
            name: format!(
                "API scale: daemon CPU per change ({} other nodes' objects changed, one pod added)",
                scale.changes
            ),
            volumed: format!("{:.0} µs with {big}", big_cost.cpu_per_change * 1e6),
            baseline: format!("{:.0} µs with {small}", small_cost.cpu_per_change * 1e6),
            ratio: format!("{ratio:.2}×"),
            target: "≤ 1.5×".into(),
            met: ratio <= 1.5,
        });
    }

    fn scaling_row(&mut self) {
        let mut per_pod = Vec::new();
        let mut shown = Vec::new();
        // The kernel's own cost per mount grows with the mounts there are (propagation to a
        // shared root's peers): the floor's time per pod at each size shows how much.
        let (mut floor_per_pod, mut floor_shown) = (Vec::new(), Vec::new());
        for &size in &self.args.scaling.clone() {
            let runs = if size > 2000 { 2 } else { self.args.runs };
            eprintln!("bench: scaling, {size} pods, {runs} runs");
            let mut times = Vec::new();
            for run in 0..runs {
                let w = Workload::new(&self.base(&format!("scale-{size}-{run}")));
                w.create(0..size).expect("workload");
                times.push(timed(&mut self.volumed(&w, true)) / size as f64);
                clear(&w, size);
            }
            let spread = Spread::of(&times);
            per_pod.push(spread.median);
            shown.push(format!("{size}: {}", spread.show(1e6, "µs", 0)));
            let base = self.base(&format!("scale-floor-{size}"));
            Workload::new(&base).create(0..size).expect("workload");
            let floor = timed(&mut self.child("floor", &base, size)) / size as f64;
            timed(&mut self.child("floor-teardown", &base, size));
            floor_per_pod.push(floor);
            floor_shown.push(format!("{size}: {:.0} µs", floor * 1e6));
        }
        let spread_of = |values: &[f64]| {
            let max = values.iter().cloned().fold(f64::MIN, f64::max);
            let min = values.iter().cloned().fold(f64::MAX, f64::min);
            max / min
        };
        let ratio = spread_of(&per_pod);
        self.rows.push(Row {
            name: "scaling: cold converge time per pod".into(),
            volumed: shown.join("; "),
            baseline: format!(
                "syscall floor per pod {} ({:.2}× max/min)",
                floor_shown.join("; "),
                spread_of(&floor_per_pod)
            ),
            ratio: format!("{ratio:.2}× max/min"),
            target: "flat within 1.5×".into(),
            met: ratio <= 1.5,
        });
    }
}

/// Unmounts pods 0..pods of `w` and removes all of it.
fn clear(w: &Workload, pods: usize) {
    for i in 0..pods {
        for target in w.targets(i) {
            nix::mount::umount2(&target, nix::mount::MntFlags::empty())
                .unwrap_or_else(|e| panic!("unmounting {}: {e}", target.display()));
        }
    }
    std::fs::remove_dir_all(w.root.parent().expect("base")).expect("clearing a workload");
}

/// A running daemon, stopped (SIGTERM, then waited for) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Wall seconds of one run of `cmd`, which must succeed.
fn timed(cmd: &mut Command) -> f64 {
    let began = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output();
    let took = secs(began.elapsed());
    let out = out.unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn print_table(rows: &[Row]) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0.0, |kb| kb as f64 / 1048576.0);
    println!("Machine: {cpu}, {cores} cores, {memory:.1} GiB, Linux {kernel}. Medians with min–max over runs.\n");
    println!("| row | volumed | baseline (same run) | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.volumed,
            r.baseline,
            r.ratio,
            r.target,
            if r.met { "yes" } else { "**no**" }
        );
    }
}
