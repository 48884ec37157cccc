//! The daemon's endpoint routes (`host::http` serves them): `/healthz` from the sync loop's
//! heartbeat, `/readyz` from its first reconcile of a complete snapshot, `/metrics` from the
//! registry, `/status` as `volumed status` shows it; and the asking side `volumed status` uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::inspect::rows_now;
use crate::config::Settings;
use crate::desired::DesiredState;
use crate::host::http::{get, Reply, Routes};
use crate::host::Mounter;
use crate::reconcile::status::StatusRow;
use crate::sync_loop::{alive, Progress};

/// How long `volumed status` waits for a running daemon's answer, beyond the daemon's own
/// deadline for reading the host.
const ASK_SLACK: Duration = Duration::from_secs(5);

/// What `/status` answers: `volumed status`'s rows and the desired state's verdict, and the
/// root dir they are about (so a stale address never passes off another daemon's status).
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusAnswer {
    pub root_dir: PathBuf,
    pub complete: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub rows: Vec<StatusRow>,
}

pub struct Endpoint {
    /// Held while a status read runs: a second one waits for it rather than starting more
    /// scans (each of which a hung disk could keep).
    pub reading: tokio::sync::Mutex<()>,
    pub progress: watch::Receiver<Progress>,
    pub settings: Settings,
    pub mounter: Arc<dyn Mounter>,
    pub client: Option<kube::Client>,
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The paths served.
const ROUTES: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/status"];

fn text(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        content_type: TEXT,
        body: body.into(),
    }
}

impl Endpoint {
    pub fn routes(self) -> Routes {
        let endpoint = Arc::new(self);
        Arc::new(move |path: String| {
            let endpoint = endpoint.clone();
            Box::pin(async move { endpoint.answer(&path).await })
        })
    }

    async fn answer(&self, path: &str) -> Reply {
        let counted = ROUTES
            .iter()
            .find(|r| **r == path)
            .copied()
            .unwrap_or("other");
        crate::metrics::get()
            .http_requests
            .get_or_create(&crate::metrics::RequestLabels { path: counted })
            .inc();
        match path {
            "/healthz" => self.health(),
            "/readyz" => self.readiness(),
            "/metrics" => Reply {
                status: 200,
                content_type: crate::metrics::CONTENT_TYPE,
                body: crate::metrics::get().render(),
            },
            "/status" => self.status().await,
            _ => text(
                404,
                "not found: this endpoint serves /healthz, /readyz, /metrics and /status\n",
            ),
        }
    }

    fn health(&self) -> Reply {
        match alive(&self.progress.borrow(), tokio::time::Instant::now()) {
            Ok(()) => text(200, "ok\n"),
            Err(why) => text(503, format!("{why}\n")),
        }
    }

    fn readiness(&self) -> Reply {
        let progress = self.progress.borrow();
        if progress.reconciled {
            return text(200, "ready\n");
        }
        let desired = &progress.planned_from;
        let why = if progress.passes == 0 {
            "no pass has run yet".to_string()
        } else if !desired.complete {
            format!(
                "the desired state is not complete yet: {}",
                desired.problems.join("; ")
            )
        } else {
            "the first complete desired state is still being reconciled".to_string()
        };
        text(503, format!("not ready: {why}\n"))
    }

    async fn status(&self) -> Reply {
        let Ok(_reading) =
            tokio::time::timeout(self.settings.op_timeout, self.reading.lock()).await
        else {
            return text(
                503,
                "an earlier status read is still under way (a hung disk?)\n",
            );
        };
        let mut desired: DesiredState = (*self.progress.borrow().planned_from).clone();
        match rows_now(
            &self.settings,
            &mut desired,
            &self.mounter,
            self.client.clone(),
        )
        .await
        {
            Ok(rows) => {
                let answer = StatusAnswer {
                    root_dir: self.settings.root_dir.clone(),
                    complete: desired.complete,
                    problems: desired.problems,
                    warnings: desired.warnings,
                    rows,
                };
                Reply {
                    status: 200,
                    content_type: "application/json",
                    body: serde_json::to_string_pretty(&answer).unwrap_or_default() + "\n",
                }
            }
            Err(err) => text(503, format!("the status cannot be read now: {err:#}\n")),
        }
    }
}

/// Where the daemon on `root_dir` writes the address its endpoint got.
pub fn address_file(root_dir: &Path) -> PathBuf {
    root_dir.join("state").join("http.addr")
}

/// The running daemon's status, when a daemon on this root dir answers at the address it
/// wrote; `None` when none does (then `volumed status` looks itself).
pub async fn ask_daemon(settings: &Settings) -> Option<(DesiredState, Vec<StatusRow>)> {
    let written = std::fs::read_to_string(address_file(&settings.root_dir)).ok()?;
    let addr: SocketAddr = written.trim().parse().ok()?;
    let (status, body) = match get(addr, "/status", settings.op_timeout + ASK_SLACK).await {
        Ok(answer) => answer,
        Err(err) => {
            tracing::debug!(%err, "no daemon answers; looking at the host directly");
            return None;
        }
    };
    let answer: StatusAnswer = match (status, serde_json::from_str::<StatusAnswer>(&body)) {
        (200, Ok(answer)) if answer.root_dir == settings.root_dir => answer,
        _ => {
            tracing::warn!(%addr, status, "the running daemon did not give its status; looking at the host directly");
            return None;
        }
    };
    let desired = DesiredState {
        complete: answer.complete,
        problems: answer.problems,
        warnings: answer.warnings,
        ..Default::default()
    };
    Some((desired, answer.rows))
}
