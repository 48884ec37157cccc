//! What the harness reads off processes and the kernel: CPU time and peak RSS of a process,
//! waits on mount-table changes, and the summary statistics the table shows.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// CPU time (user + system) of every thread of `pid`, from the scheduler's nanosecond
/// accounting (`/proc/<pid>/task/*/schedstat`), not the 10 ms ticks of `stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process is alive");
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// The CPU a process uses from `start` on, threads that come and go included. Each thread's
/// own nanosecond count is read (a thread that ends takes its count with it, so a plain sum
/// can shrink); the process's 10 ms ticks (`stat`, which keep the time of ended threads) are
/// the floor of the answer, so a short-lived thread is never left out.
pub struct CpuMeter {
    pid: u32,
    threads: std::collections::BTreeMap<String, u64>,
    ticks: u64,
}

impl CpuMeter {
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            threads: thread_times(pid),
            ticks: process_ticks(pid),
        }
    }

    pub fn used(&self) -> Duration {
        let exact: u64 = thread_times(self.pid)
            .iter()
            .map(|(tid, now)| now.saturating_sub(self.threads.get(tid).copied().unwrap_or(0)))
            .sum();
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) }.max(1) as u64;
        let ticked = (process_ticks(self.pid) - self.ticks) * 1_000_000_000 / hz;
        Duration::from_nanos(exact.max(ticked))
    }
}

/// Each live thread's CPU nanoseconds, by thread id.
fn thread_times(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process is alive");
    tasks
        .flatten()
        .filter_map(|task| {
            let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let nanos = text.split_whitespace().next()?.parse().ok()?;
            Some((task.file_name().to_string_lossy().into_owned(), nanos))
        })
        .collect()
}

/// utime + stime of the whole process, in clock ticks (ended threads included).
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process is alive");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// CPU time this thread has used (for costs measured in-process).
pub fn thread_cpu() -> Duration {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    let rc = unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "thread CPU clock");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Peak resident set (`VmHWM`) of `pid`, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// Resident set now (`VmRSS`) of `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Waits until `pid` has used no CPU for `quiet` (or `limit` passed): the end of its
/// reaction to something.
pub fn wait_quiet(pid: u32, quiet: Duration, limit: Duration) {
    let began = Instant::now();
    let mut last = cpu_time(pid);
    while began.elapsed() < limit {
        std::thread::sleep(quiet);
        let now = cpu_time(pid);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Wakes on every change to this namespace's mount table (poll(POLLPRI) on mountinfo).
pub struct MountEvents(std::fs::File);

impl MountEvents {
    pub fn open() -> MountEvents {
        let file = std::fs::File::open("/proc/self/mountinfo").expect("mountinfo");
        let events = MountEvents(file);
        events.wait(Duration::ZERO);
        events
    }

    /// Returns after a change since the last call, or after `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLPRI)];
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, ms);
    }

    /// Waits until `done` holds, checking it after every mount-table change; `None` after
    /// `limit`.
    pub fn until(&self, limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
        let began = Instant::now();
        loop {
            if done() {
                return Some(began.elapsed());
            }
            if began.elapsed() > limit {
                return None;
            }
            self.wait(Duration::from_millis(50));
        }
    }
}

/// Median, min and max of some runs.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Spread {
            median: percentile(&sorted, 50.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }

    /// `12.3 ms (11.9–13.0)`, in the unit `scale` and `unit` give.
    pub fn show(&self, scale: f64, unit: &str, digits: usize) -> String {
        if (self.max - self.min).abs() < f64::EPSILON {
            return format!("{:.digits$} {unit}", self.median * scale);
        }
        format!(
            "{:.digits$} {unit} ({:.digits$}–{:.digits$})",
            self.median * scale,
            self.min * scale,
            self.max * scale
        )
    }
}

/// The `p`th percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Mounts in this namespace whose mount point lies under `dir`.
pub fn mounts_under(dir: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = format!("{}/", dir.display());
    text.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(&prefix)))
        .count()
}
