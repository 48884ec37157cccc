//! `volumed release PV`: makes a volume released from a deleted claim available again.

use std::process::ExitCode;
use std::sync::Arc;

use crate::app::release::{release as release_now, NotReleased};
use crate::cli::ReleaseArgs;
use crate::config::Settings;
use crate::host::real::RealMounter;
use crate::host::Mounter;

pub fn release(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_args(&args.common, false)?;
    let mounter: Arc<dyn Mounter> = Arc::new(RealMounter::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(release_now(&settings, &args.pv, &mounter));
    // A scan hung on a dead disk keeps its thread: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(done) => {
            println!(
                "released {} (bound to claim {}, whose manifest was deleted): it is available to claims again, with its data as it was",
                done.pv, done.claim
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(NotReleased::Refused(why)) => {
            eprintln!("volumed: not released: {why}");
            Ok(ExitCode::FAILURE)
        }
        Err(NotReleased::Failed(err)) => Err(err),
    }
}
