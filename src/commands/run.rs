//! `volumed run [--once]`: the reconciler, as a daemon until SIGTERM/SIGINT, or one pass.

use std::process::ExitCode;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use super::common::exit_code;
use crate::app;
use crate::cli::RunArgs;
use crate::config::Settings;
use crate::host::real::RealMounter;
use crate::host::run_lock::RunLock;
use crate::output;

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args.common, true)?;
    // One reconciler per root dir, for this process's whole life: another one would tear
    // down what this one sets up (ops outliving the runtime included).
    let lock = RunLock::acquire(&settings.root_dir)?;
    if !args.skip_propagation_check {
        check_propagation(&settings)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(reconcile(settings, args.once, &lock));
    // Dropping a runtime waits for every blocking worker, a hung mount included; what had to
    // finish has, so give workers a moment and let process exit end the rest.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// Refuses to start where the mounts volumed makes would not reach the host, or the disks the
/// host mounts would not reach volumed.
fn check_propagation(settings: &Settings) -> anyhow::Result<()> {
    use crate::host::Mounter;
    let dirs: Vec<(&str, &std::path::Path)> = settings
        .local_pv
        .iter()
        .flat_map(|c| &c.classes)
        .map(|c| (c.storage_class.as_str(), c.mount_dir()))
        .collect();
    // The mounts holding these paths, each read alone where the kernel can (a host with many
    // mounts costs no whole-table read); else, or when one cannot be read so, the table.
    let paths = std::iter::once(settings.root_dir.as_path()).chain(dirs.iter().map(|(_, d)| *d));
    // Only for paths that are their own canonical form: the check matches mount points
    // against the paths as given, and statx follows links.
    let table = match paths
        .map(|path| {
            let canonical = path.canonicalize().ok().filter(|c| c == path)?;
            crate::host::mount_events::mount_holding(&canonical)
                .ok()
                .flatten()
        })
        .collect::<Option<Vec<_>>>()
    {
        Some(holding) => holding,
        None => RealMounter::default().mount_table()?,
    };
    let problems = crate::reconcile::propagation::problems(&settings.root_dir, &dirs, &table);
    anyhow::ensure!(
        problems.is_empty(),
        "{}; volumed set nothing up (--skip-propagation-check starts it anyway)",
        problems.join("; ")
    );
    Ok(())
}

async fn reconcile(settings: Settings, once: bool, lock: &RunLock) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    // Installed before anything starts: a daemon that cannot be stopped cleanly must not run.
    let (term, int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    tokio::spawn(cancel_on_signal(term, int, cancel.clone()));
    tracing::info!(node = %settings.node.name, root = %settings.root_dir.display(), source = %settings.manifests.as_ref().map_or("the Kubernetes API".to_string(), |d| d.display().to_string()), once, "volumed starting");
    let host = app::Host::real(&settings.mounter_path);
    let report = app::run(&settings, once, host, cancel, lock).await;
    // A mount helper still running (a hung NFS server) would outlive the daemon.
    let killed = crate::host::kill_running_helpers();
    if killed > 0 {
        tracing::info!(killed, "stopped the NFS mount helpers still running; their volumes are mounted at the next start");
    }
    let report = report?;
    if !once {
        tracing::info!("volumed stopped; mounts are left in place");
        return Ok(ExitCode::SUCCESS);
    }
    let paths = output::Paths {
        root: &settings.root_dir,
        wide: false,
    };
    let summary = output::once_summary(&paths, &report);
    // The problems first, then the verdict line, as an operator reads them.
    eprint!("{}", summary.stderr);
    print!("{}", summary.stdout);
    Ok(exit_code(report.converged()))
}

async fn cancel_on_signal(mut term: Signal, mut int: Signal, cancel: CancellationToken) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping intake; a format or check under way finishes first"),
        _ = int.recv() => tracing::info!("SIGINT: stopping intake; a format or check under way finishes first"),
    }
    cancel.cancel();
    // A second signal means "now": exit without waiting for in-flight ops.
    // Exit status as a shell reports death by that signal: 128 + its number.
    let code = tokio::select! {
        _ = term.recv() => 128 + 15,
        _ = int.recv() => 128 + 2,
    };
    tracing::warn!("second signal: exiting at once; in-flight ops are abandoned");
    std::process::exit(code);
}
