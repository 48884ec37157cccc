//! `volumed discover --once`: the PersistentVolumes the local disks would become, changing
//! nothing.

use std::process::ExitCode;

use super::common::show;
use crate::app;
use crate::cli::{DiscoverArgs, PvOutput};
use crate::config::Settings;
use crate::host::real::RealMounter;
use crate::output;

pub fn discover(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.once,
        "`volumed discover` needs --once: it looks once and prints; `volumed run` discovers continuously"
    );
    let settings = Settings::from_args(&args.common, false)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let found = runtime.block_on(app::inspect::discover_now(
        &settings,
        &RealMounter::default(),
    ));
    // A scan hung on a dead disk keeps its thread: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    let found = found?;
    show(match args.output {
        PvOutput::Yaml => output::localpv::discovered_yaml(&found)?,
        PvOutput::Json => output::localpv::discovered_json(&found)?,
    });
    Ok(ExitCode::SUCCESS)
}
