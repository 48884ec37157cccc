//! `volumed devices`: the host's block devices, as lsblk shows them (or as JSON).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::actual::devices::DeviceScanner;
use crate::cli::{DevicesArgs, Output};
use crate::host::format::RealFormatter;
use crate::host::real::RealMounter;
use crate::host::Mounter;
use crate::output::devices::lsblk_table;

pub fn devices(args: DevicesArgs) -> anyhow::Result<ExitCode> {
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
