//! The `volumed` binary: parses the command line and hands it to `volumed::commands`.

use std::process::ExitCode;

fn main() -> ExitCode {
    volumed::commands::main_from_env()
}
