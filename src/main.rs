//! The `volumed` binary: parses the command line and runs the chosen command.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use volumed::actual::devices::DeviceScanner;
use volumed::cli::{Cli, Command, Output};
use volumed::config::Settings;
use volumed::host::format::RealFormatter;
use volumed::host::real::RealMounter;
use volumed::host::run_lock::RunLock;
use volumed::host::Mounter;
use volumed::output::devices::lsblk_table;
use volumed::reconcile::status::{StatusRow, VolumeState};
use volumed::{app, output};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // A reader that goes away (`volumed devices | head`) ends a one-shot command quietly,
        // as it ends other tools; the daemon keeps Rust's default of ignoring SIGPIPE.
        // SAFETY: no other thread exists yet, and SIG_DFL needs no handler.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("volumed: {}", describe(&err));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes in one line, each cause once: most of volumed's errors already
/// name their cause in their own message (and also return it as their source).
fn describe(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let settings = Settings::from_args(&args.common, true)?;
            // One reconciler per root dir, for this process's whole life: another one would
            // tear down what this one sets up (ops outliving the runtime included).
            let lock = RunLock::acquire(&settings.root_dir)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(run(settings, args.once, &lock));
            // Dropping a runtime waits for every blocking worker, a hung mount included; the
            // report is out, so give workers a moment and let process exit end the rest.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result
        }
        Command::Plan(args) => {
            let settings = Settings::from_args(&args.common, false)?;
            let host = app::Host::real(&settings.mounter_path);
            let report = read_only_runtime()?.block_on(app::plan_only(&settings, host))?;
            let paths = output::Paths {
                root: &settings.root_dir,
                wide: args.wide,
            };
            match args.output {
                Output::Json => {
                    println!("{}", output::plan_json(&report)?);
                    eprint!("{}", output::problems(&report.desired));
                }
                Output::Table => show(output::plan_table(&paths, &report)),
            }
            Ok(exit_code(report.can_do_everything()))
        }
        Command::Devices(args) => {
            let mut scanner = DeviceScanner::new(Arc::new(RealFormatter));
            let mounts = RealMounter::default().mount_table()?;
            let devices = scanner
                .scan(&mounts)
                .context("cannot list block devices from /sys/class/block")?;
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&devices)?),
                Output::Table => print!("{}", lsblk_table(&devices)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let settings = Settings::from_args(&args.common, false)?;
            let (desired, rows) = read_only_runtime()?
                .block_on(app::status_only(&settings, &RealMounter::default()))?;
            let paths = output::Paths {
                root: &settings.root_dir,
                wide: args.wide,
            };
            match args.output {
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                    eprint!("{}", output::problems(&desired));
                }
                Output::Table => show(output::status_table(&paths, &rows, &desired)),
            }
            Ok(exit_code(desired.complete))
        }
    }
}

fn show(printed: output::Printed) {
    print!("{}", printed.stdout);
    eprint!("{}", printed.stderr);
}

/// 0 when everything asked for can be (or was) done, 1 when something cannot.
fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `plan` and `status` only read (the API, when that is the source): one thread will do.
fn read_only_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn run(settings: Settings, once: bool, lock: &RunLock) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    tracing::info!(node = %settings.node.name, root = %settings.root_dir.display(), source = %settings.manifests.as_ref().map_or("the Kubernetes API".to_string(), |d| d.display().to_string()), once, "volumed starting");
    let report = app::run(
        &settings,
        once,
        app::Host::real(&settings.mounter_path),
        cancel,
        lock,
    )
    .await?;
    if !once {
        tracing::info!("volumed stopped; mounts are left in place");
        return Ok(ExitCode::SUCCESS);
    }
    let in_place = report
        .rows
        .iter()
        .filter(|r| r.state == VolumeState::Mounted)
        .count();
    if report.converged() {
        eprint!("{}", output::problems(&report.desired));
        println!(
            "volumed: {in_place} volume(s) of {} pod(s) in place",
            report.desired.pods.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bad: Vec<StatusRow> = report
        .rows
        .iter()
        .filter(|r| !matches!(r.state, VolumeState::Mounted | VolumeState::Unmanaged))
        .cloned()
        .collect();
    let paths = output::Paths {
        root: &settings.root_dir,
        wide: false,
    };
    eprint!(
        "volumed: not converged ({in_place} volume(s) in place)\n{}{}",
        output::rows_table(&paths, &bad),
        output::problems(&report.desired)
    );
    for (subject, error) in &report.other_failures {
        eprintln!("{subject}: {error}");
    }
    Ok(ExitCode::FAILURE)
}

async fn cancel_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop volumed with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping intake, letting in-flight ops finish"),
        _ = int.recv() => tracing::info!("SIGINT: stopping intake, letting in-flight ops finish"),
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
