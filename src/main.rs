//! The `volumed` binary: parses the command line and hands it to `volumed::commands`.

use std::process::ExitCode;

fn main() -> ExitCode {
    tune_malloc();
    volumed::commands::main_from_env()
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed
/// in one is kept there: the worker threads that read manifests and run ops left a daemon of
/// 1 000 pods at 580 MB after 100 pod adds, against 135 MB with one arena. Two keep the
/// workers from queueing on one lock.
///
/// Buffers of 128 KiB and more (an API list page, a big manifest directory's read) are mapped
/// and unmapped each time, and freed memory above that is returned: glibc otherwise raises its
/// mmap threshold after the first such buffer is freed, and later ones then stay in the heap,
/// which rarely shrinks (10 000 PVs listed left an API-mode daemon at 30 MB against 22 MB with
/// 100; with this, 23 MB). (`GLIBC_TUNABLES` and `MALLOC_*_` in the environment still win.)
fn tune_malloc() {
    const BIG: i32 = 128 * 1024;
    let set = |option: &str, param, value| {
        if std::env::var_os(option).is_none() {
            // SAFETY: mallopt with an integer option, before any thread is started.
            unsafe { nix::libc::mallopt(param, value) };
        }
    };
    set("MALLOC_ARENA_MAX", nix::libc::M_ARENA_MAX, 2);
    set("MALLOC_MMAP_THRESHOLD_", nix::libc::M_MMAP_THRESHOLD, BIG);
    set("MALLOC_TRIM_THRESHOLD_", nix::libc::M_TRIM_THRESHOLD, BIG);
}
