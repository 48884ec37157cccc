//! Supervision of a run's long-lived tasks: one that ends before shutdown ends the run with
//! its reason, so that systemd or the kubelet restarts volumed instead of it idling on a
//! picture that no longer changes.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Supervisor {
    tracker: TaskTracker,
    /// Cancelled at shutdown: a task that ends after it is not news.
    shutdown: CancellationToken,
    ended_tx: mpsc::UnboundedSender<String>,
    ended_rx: mpsc::UnboundedReceiver<String>,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Supervisor {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Supervisor {
            tracker: TaskTracker::new(),
            shutdown,
            ended_tx,
            ended_rx,
        }
    }

    /// Runs `task` as `name`. It is meant to run until shutdown: ending before it, with an
    /// error, without one or by a panic, is reported to `first_failure`.
    pub fn spawn<E: Display + Send + 'static>(
        &self,
        name: &'static str,
        task: impl Future<Output = Result<(), E>> + Send + 'static,
    ) -> JoinHandle<()> {
        let (shutdown, ended) = (self.shutdown.clone(), self.ended_tx.clone());
        let inner = tokio::spawn(task);
        self.tracker.spawn(async move {
            let why = match inner.await {
                Ok(Ok(())) => format!("the {name} ended"),
                Ok(Err(err)) => format!("the {name} failed: {err}"),
                Err(join) => format!("the {name} died: {join}"),
            };
            if !shutdown.is_cancelled() {
                let _ = ended.send(why);
            }
        })
    }

    /// Runs `task` as `name`, a task that ends when its input closes (the loop's end): that
    /// end is no news, but dying of a panic before shutdown is reported as `spawn` reports.
    pub fn spawn_tied(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let (shutdown, ended) = (self.shutdown.clone(), self.ended_tx.clone());
        let inner = tokio::spawn(task);
        self.tracker.spawn(async move {
            if let Err(join) = inner.await {
                if !shutdown.is_cancelled() {
                    let _ = ended.send(format!("the {name} died: {join}"));
                } else {
                    tracing::error!(task = name, %join, "a task died during shutdown");
                }
            }
        })
    }

    /// The first task that ended before shutdown, and why; pending while none has.
    pub async fn first_failure(&mut self) -> String {
        match self.ended_rx.recv().await {
            Some(why) => why,
            // Never: the supervisor holds a sender itself.
            None => std::future::pending().await,
        }
    }

    /// A failure already reported, if any (without waiting).
    #[cfg(test)]
    pub fn reported(&mut self) -> Option<String> {
        self.ended_rx.try_recv().ok()
    }

    /// After shutdown: waits up to `grace` for the tasks to end; says whether they all did.
    pub async fn wait(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_ending_before_shutdown_is_reported_with_its_reason() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        supervisor.spawn("steady task", std::future::pending::<Result<(), String>>());
        supervisor.spawn("manifest watch", async {
            Err::<(), _>("inotify: too many")
        });
        assert_eq!(
            supervisor.first_failure().await,
            "the manifest watch failed: inotify: too many"
        );
        supervisor.spawn("panicking task", async {
            panic!("boom");
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        });
        assert!(supervisor
            .first_failure()
            .await
            .starts_with("the panicking task died"));
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_ending_after_shutdown_are_not_news() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(shutdown.clone());
        let stop = shutdown.clone();
        supervisor.spawn("source", async move {
            stop.cancelled().await;
            Ok::<(), String>(())
        });
        shutdown.cancel();
        assert!(supervisor.wait(Duration::from_secs(1)).await);
        assert_eq!(supervisor.reported(), None);
    }
}
