//! The status view that `slotman status` and the Prometheus endpoint
//! answer with, shared by requests that come together.
//!
//! A request needs two things: the manager's view (a channel round trip:
//! cheap, and it must be current, so a client that just ran a job sees it
//! counted) and a [`Sample`] of what lies outside the manager (an admin
//! connection to every job server, a /proc scan on a blocking thread, a
//! D-Bus call per scope). A burst of requests must not multiply either:
//!
//! - a request that arrives while a round trip or a sample is under way
//!   waits for that one and shares it instead of starting another;
//! - a sample finished less than [`SAMPLE_MAX_AGE`] ago that covers the
//!   view (the same job servers, scopes and runners) is reused: memory, CPU
//!   and queue depth move on the scale of seconds, a status table or a
//!   scrape every few seconds cannot tell 250 ms apart, and it bounds a
//!   burst of any size to four samples a second; the counts, which a client
//!   may have just changed, always come from the manager;
//! - a sample never takes more than [`SAMPLE_TIMEOUT`]: what did not answer
//!   by then (a stopped job server, a hung systemd) shows as unknown.
//!
//! So whatever the request rate, the manager holds at most one admin
//! connection per job server and one /proc scan at a time for status.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Mutex};

use super::proto::ServiceStatus;
use super::stats::Sample;
use crate::manager::Event;
use crate::placement::scope::Systemd;

/// How long a sample of memory, CPU and queue depths is reused.
pub const SAMPLE_MAX_AGE: Duration = Duration::from_millis(250);
/// The longest a sample may take; what has not answered by then is unknown.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the manager may take to hand over its view.
pub const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Why there is no status to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("the manager is stopping")]
    Stopping,
    #[error("the manager did not answer within {VIEW_TIMEOUT:?}")]
    NotAnswering,
}

/// Status views for every request of the control socket and the metrics
/// endpoint; one per manager.
pub struct Snapshots {
    events: mpsc::UnboundedSender<Event>,
    bus: Option<Systemd>,
    view: Shared<ServiceStatus, Unavailable>,
    sample: Shared<Sample, std::convert::Infallible>,
}

impl Snapshots {
    /// `bus`: read scopes' accounting from systemd (placement systemd).
    pub fn new(events: mpsc::UnboundedSender<Event>, bus: Option<Systemd>) -> Arc<Snapshots> {
        Arc::new(Snapshots {
            events,
            bus,
            view: Shared::default(),
            sample: Shared::default(),
        })
    }

    /// The manager's view with memory, CPU and queue depths filled in.
    pub async fn get(&self) -> Result<ServiceStatus, Unavailable> {
        let view = self
            .view
            .get(|_| false, || ask_manager(&self.events))
            .await?;
        let sample = self
            .sample
            .get(
                |s| s.age() <= SAMPLE_MAX_AGE && s.covers(&view),
                || async { Ok(Sample::take(&view, self.bus.as_ref(), SAMPLE_TIMEOUT).await) },
            )
            .await;
        let sample = match sample {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let mut status = (*view).clone();
        sample.apply(&mut status);
        Ok(status)
    }

    /// Has the manager carry out `command`; its answer (what was done, or
    /// why not). Waits as long as the command takes (a restart replaces
    /// slots one at a time).
    pub async fn command(&self, command: crate::manager::Command) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Command(command, tx))
            .map_err(|_| Unavailable::Stopping.to_string())?;
        rx.await
            .map_err(|_| "the manager stopped before it was done".to_string())?
    }

    /// Whether the manager has gone (its event channel closed).
    pub fn is_closed(&self) -> bool {
        self.events.is_closed()
    }

    /// Resolves once the manager has gone.
    pub async fn closed(&self) {
        self.events.closed().await
    }
}

async fn ask_manager(events: &mpsc::UnboundedSender<Event>) -> Result<ServiceStatus, Unavailable> {
    let (tx, rx) = oneshot::channel();
    events
        .send(Event::Status(tx))
        .map_err(|_| Unavailable::Stopping)?;
    match tokio::time::timeout(VIEW_TIMEOUT, rx).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(_)) => Err(Unavailable::Stopping),
        Err(_) => Err(Unavailable::NotAnswering),
    }
}

/// The latest result of something costly, built by one caller at a time.
struct Shared<T, E> {
    /// Held while building: callers that come meanwhile queue here (tokio's
    /// mutex is fair) and then find the result that was under way.
    latest: Mutex<Option<Built<T, E>>>,
}

struct Built<T, E> {
    finished: Instant,
    result: Result<Arc<T>, E>,
}

impl<T, E> Default for Shared<T, E> {
    fn default() -> Self {
        Shared {
            latest: Mutex::new(None),
        }
    }
}

impl<T, E: Clone> Shared<T, E> {
    /// The result of a build that finished after this call began (it was
    /// under way, or started while this call waited), else the latest
    /// success if `reuse` accepts it, else a new build. A failure is shared
    /// with those who waited for it, never reused: otherwise each waiter
    /// would in turn wait out the same failure.
    async fn get<F, Fut>(&self, reuse: impl Fn(&T) -> bool, build: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let arrived = Instant::now();
        let mut latest = self.latest.lock().await;
        if let Some(b) = latest.as_ref() {
            if b.finished >= arrived {
                return b.result.clone();
            }
            if let Ok(v) = &b.result {
                if reuse(v) {
                    return Ok(v.clone());
                }
            }
        }
        let result = build().await.map(Arc::new);
        *latest = Some(Built {
            finished: Instant::now(),
            result: result.clone(),
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn callers_that_come_during_a_build_share_it() {
        let shared: Arc<Shared<usize, ()>> = Arc::new(Shared::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..20 {
            let (shared, builds, mut wait) = (shared.clone(), builds.clone(), wait.clone());
            let entered = entered.clone();
            callers.push(tokio::spawn(async move {
                // Counted in the same poll as `get` notes its arrival.
                entered.fetch_add(1, Ordering::SeqCst);
                shared
                    .get(
                        |_| false,
                        || async move {
                            let n = builds.fetch_add(1, Ordering::SeqCst) + 1;
                            let _ = wait.wait_for(|go| *go).await;
                            Ok(n)
                        },
                    )
                    .await
            }));
        }
        // Every caller has arrived before the build may end.
        while entered.load(Ordering::SeqCst) < 20 {
            tokio::task::yield_now().await;
        }
        let _ = release.send(true);
        for c in callers {
            assert_eq!(c.await.expect("join").map(|v| *v), Ok(1));
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1);

        // Later callers build again unless `reuse` says otherwise.
        let again = shared.get(|_| false, || async { Ok(2) }).await;
        assert_eq!(again.map(|v| *v), Ok(2));
        let reused = shared.get(|v| *v == 2, || async { Ok(3) }).await;
        assert_eq!(reused.map(|v| *v), Ok(2));
    }

    #[tokio::test]
    async fn a_failure_is_shared_but_not_reused() {
        let shared: Shared<u8, &str> = Shared::default();
        assert_eq!(
            shared.get(|_| true, || async { Err("no") }).await,
            Err("no")
        );
        let next = shared.get(|_| true, || async { Ok(1) }).await;
        assert_eq!(next.map(|v| *v), Ok(1));
    }

    #[tokio::test]
    async fn a_closed_manager_is_stopping() {
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        let snapshots = Snapshots::new(tx, None);
        assert_eq!(snapshots.get().await, Err(Unavailable::Stopping));
        assert!(snapshots.is_closed());
    }
}
