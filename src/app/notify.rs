//! systemd's notify protocol (`Type=notify`): `READY=1` once the first complete desired state
//! is reconciled, `STATUS=` with the counts as they change, and `WATCHDOG=1` while the sync
//! loop goes round, all from the loop's progress. Without `NOTIFY_SOCKET` this does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::sync_loop::{alive, Progress};

/// The line `STATUS=` shows (`systemctl status`).
pub fn status_line(progress: &Progress) -> String {
    let desired = &progress.planned_from;
    let verdict = if !desired.complete {
        "the desired state is incomplete"
    } else if progress.idle {
        "idle"
    } else {
        "working"
    };
    format!(
        "{} pod(s), {} volume(s) wanted; {verdict}",
        desired.pods.len(),
        desired.volumes.len()
    )
}

/// Tells systemd how the daemon stands until `cancel` fires.
pub async fn tell_systemd(mut progress: watch::Receiver<Progress>, cancel: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // An interval, not a sleep per wake: progress may change more often than pings are due.
    let mut pings = watchdog_interval().map(|every| {
        let mut pings = tokio::time::interval(every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pings
    });
    let mut ready = false;
    let mut told = String::new();
    loop {
        let (reconciled, line) = {
            let now = progress.borrow_and_update();
            (now.reconciled, status_line(&now))
        };
        let mut states = Vec::new();
        if reconciled && !ready {
            ready = true;
            states.push(NotifyState::Ready);
        }
        if line != told {
            told = line.clone();
            states.push(NotifyState::Status(&line));
        }
        if !states.is_empty() {
            send(&states);
        }
        let ping = async {
            match pings.as_mut() {
                Some(pings) => {
                    pings.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A stop is told whichever comes first: the signal, or the loop's end (its
            // progress sender gone), which a stop also brings.
            biased;
            _ = cancel.cancelled() => {
                send(&[NotifyState::Stopping]);
                return;
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    send(&[NotifyState::Stopping]);
                    return;
                }
            }
            _ = ping => {
                let verdict = alive(&progress.borrow(), tokio::time::Instant::now());
                match verdict {
                    Ok(()) => send(&[NotifyState::Watchdog]),
                    Err(why) => tracing::warn!(why, "no watchdog ping"),
                }
            }
        }
    }
}

/// Half the watchdog timeout systemd set (`WATCHDOG_USEC`), as sd_watchdog_enabled(3) advises.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(%err, "cannot tell systemd how the daemon stands (NOTIFY_SOCKET)");
    }
}
