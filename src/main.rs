//! The `volumed` binary: parses the command line and hands it to `volumed::commands`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    volumed::commands::main(volumed::cli::Cli::parse())
}
