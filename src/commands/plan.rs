//! `volumed plan`: what `run --once` would do now, changing nothing.

use std::process::ExitCode;

use super::common::{exit_code, read_only_runtime, show};
use crate::app;
use crate::cli::{Output, ReadArgs};
use crate::config::Settings;
use crate::output;

pub fn plan(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args.common, false)?;
    let host = app::Host::real(&settings.mounter_path);
    let report = read_only_runtime()?.block_on(app::inspect::plan_only(&settings, host))?;
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
