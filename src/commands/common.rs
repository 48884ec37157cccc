//! What the subcommands share: printing a rendered output, exit codes, a small runtime.

use std::process::ExitCode;

use crate::output::Printed;

pub(super) fn show(printed: Printed) {
    print!("{}", printed.stdout);
    eprint!("{}", printed.stderr);
}

/// 0 when everything asked for can be (or was) done, 1 when something cannot.
pub(super) fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `plan` and `status` only read (the API, when that is the source): one thread will do.
pub(super) fn read_only_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
