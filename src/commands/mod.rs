//! The subcommands, one file each: each reads its settings, asks `app` for the work, has
//! `output` render it, and returns the exit code that agrees with what it printed.

mod check_config;
mod common;
mod devices;
mod discover;
mod plan;
mod release;
mod run;
mod status;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// The binary's whole life: the command line (with the config file's settings as its
/// defaults), process set-up, the command, and its exit code.
pub fn main_from_env() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let file = match crate::config::file::config_path(&args) {
        Some(path) => match crate::config::file::load(&path) {
            Ok(file) => file,
            Err(err) => {
                eprintln!("volumed: {err}");
                return ExitCode::from(2);
            }
        },
        None => Default::default(),
    };
    match crate::config::file::parse_with(&args, &file) {
        Ok((cli, settings)) => main(cli, settings),
        Err(crate::config::file::FileError::CommandLine(err)) => err.exit(),
        Err(err) => {
            eprintln!("volumed: {err}");
            ExitCode::from(2)
        }
    }
}

/// After parsing: process set-up, the command, and its exit code.
pub fn main(
    cli: Cli,
    settings: std::collections::BTreeMap<String, crate::config::file::Effective>,
) -> ExitCode {
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
    // RUST_LOG counts only where neither --log, VOLUMED_LOG nor the config file says.
    let log_from_default = settings
        .get("log")
        .is_none_or(|e| e.source == crate::config::file::Source::Default);
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) if log_from_default => filter,
        _ => tracing_subscriber::EnvFilter::new(&cli.log),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        crate::cli::LogFormat::Text => logs.with_ansi(ansi).init(),
        // One object per line, with the current span and its parents (op, pod, volume).
        crate::cli::LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Plan(args) => plan::plan(args),
        Command::Status(args) => status::status(args),
        Command::Devices(args) => devices::devices(args),
        Command::Discover(args) => discover::discover(args),
        Command::Release(args) => release::release(args),
        Command::CheckConfig(args) => check_config::check_config(args, &settings),
    };
    match result {
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
