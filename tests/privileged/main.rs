//! Privileged end-to-end tests: the real `volumed` binary, real tmpfs and bind mounts, as root
//! inside a private mount namespace this process enters before any test thread starts.
//! Not root → every test is reported as ignored with the reason, or the run fails when
//! VOLUMED_REQUIRE_PRIVILEGED=1 (as scripts/test.sh sets it under root).

mod api;
#[path = "../support/apiserver/mod.rs"]
mod apiserver;
mod blockdev;
mod cases;
mod image;
mod localpv;
mod nfs;
mod ops;
mod safety;
mod sandbox;
mod usability;

use libtest_mimic::{Arguments, Trial};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

fn main() {
    let args = Arguments::from_args();
    let required = std::env::var("VOLUMED_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    let unavailable = enter_private_namespace().err();
    if let Some(why) = &unavailable {
        eprintln!("privileged tests cannot run: {why}");
        if required {
            eprintln!("VOLUMED_REQUIRE_PRIVILEGED=1: failing instead of skipping");
            std::process::exit(1);
        }
    }
    let trials = cases::all()
        .into_iter()
        .chain(blockdev::all())
        .chain(nfs::all())
        .chain(api::all())
        .chain(safety::all())
        .chain(usability::all())
        .chain(localpv::all())
        .chain(ops::all())
        .chain(image::all())
        .map(|(name, test)| {
            Trial::test(name, move || test().map_err(Into::into))
                .with_ignored_flag(unavailable.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// unshare -m, then make every mount private so nothing we do propagates to the host.
fn enter_private_namespace() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("they need root (run scripts/test.sh as root)".into());
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    // mount --make-rprivate /
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))
}
