//! `volumed status`: one row per pod volume, as the host stands.

use std::process::ExitCode;
use std::sync::Arc;

use super::common::{exit_code, read_only_runtime, show};
use crate::app;
use crate::cli::{Output, ReadArgs};
use crate::config::Settings;
use crate::host::real::RealMounter;
use crate::host::Mounter;
use crate::output;

pub fn status(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args.common, false)?;
    let mounter: Arc<dyn Mounter> = Arc::new(RealMounter::default());
    // A daemon on this root dir knows best (its failures, its snapshot): it is asked first.
    let (desired, rows) = read_only_runtime()?.block_on(async {
        match app::endpoint::ask_daemon(&settings).await {
            Some(answer) => Ok(answer),
            None => app::inspect::status_only(&settings, &mounter).await,
        }
    })?;
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
