//! The slot runner: joins the job-server connections to one handler and
//! reports to the manager.
//!
//! Lifecycle: start the handler → connect every job server → report `ready`
//! → jobs (`busy` / `done` each) → drain (workleft reached, `drain` from the
//! manager, SIGTERM, or the manager gone) → finish the job in hand → report
//! `exiting` → stop the handler → exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use super::connection::{self, ConnectionSpec, Gate, JobRunner};
use super::handler::{Handler, Job, JobEvent, Outcome, SlotIdentity};
use super::report::{ExitReason, JobResult, Report, SlotSpec};
use crate::config::HandlerKind;

/// Where reports go (the manager's socket, or a test's channel).
pub type Reports = mpsc::UnboundedSender<Report>;

/// The job side of the slot: the handler plus workleft accounting.
struct Jobs {
    handler: Mutex<Handler>,
    spec: SlotSpec,
    reports: Reports,
    done: AtomicU64,
    gate: Gate,
    drain: CancellationToken,
}

impl JobRunner for Jobs {
    fn run<'a>(&'a self, job: Job, events: mpsc::Sender<JobEvent>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let started = Instant::now();
            let _ = self.reports.send(Report::Busy {
                function: job.gearman_function.clone(),
                handle: job.handle.clone(),
            });
            let outcome = {
                let mut handler = self.handler.lock().await;
                handler.run(&job, &events, self.spec.worker.timeout).await
            };
            let result = match &outcome {
                Outcome::Complete(_) => JobResult::Complete,
                Outcome::Exception(_) => JobResult::Exception,
                Outcome::Fail(why) => {
                    tracing::warn!(
                        gearman_function = %job.gearman_function,
                        gearman_handle = %job.handle,
                        "job failed: {why}"
                    );
                    JobResult::Fail
                }
            };
            let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
            let workleft = self.spec.worker.workleft;
            if workleft > 0 && done >= workleft {
                // Closed while this job still holds the permit, so no other
                // connection can grab one more.
                self.gate.close();
                self.drain.cancel();
            }
            let _ = self.reports.send(Report::Done {
                result,
                millis: started.elapsed().as_millis() as u64,
            });
            outcome
        })
    }
}

/// Runs a slot until it drains. `drain` may be cancelled from outside
/// (manager message, SIGTERM); the job in hand always finishes first.
pub async fn run(spec: SlotSpec, reports: Reports, drain: CancellationToken) -> ExitReason {
    let id = SlotIdentity {
        service: spec.service.clone(),
        worker: spec.worker.name.clone(),
        slot: spec.slot,
    };
    if spec.worker.kind == HandlerKind::Native {
        return super::native::run(&spec, &id, &reports, &drain).await;
    }
    let handler = match Handler::start(&spec.worker, &id).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(worker = %id.worker, slot = id.slot, "{e}");
            let _ = reports.send(Report::Exiting {
                reason: ExitReason::HandlerFailed,
            });
            return ExitReason::HandlerFailed;
        }
    };
    let gate: Gate = Arc::new(Semaphore::new(1));
    let jobs = Arc::new(Jobs {
        handler: Mutex::new(handler),
        spec: spec.clone(),
        reports: reports.clone(),
        done: AtomicU64::new(0),
        gate: gate.clone(),
        drain: drain.clone(),
    });
    let pid = std::process::id();
    let client_id = format!(
        "slotman:{}:{}:{}:{}",
        spec.service, spec.worker.name, spec.slot, pid
    );
    let servers = spec.worker.job_servers.clone();
    let (first_tx, mut first_rx) = mpsc::channel(servers.len().max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for server in servers.iter() {
        let cspec = ConnectionSpec {
            server: server.clone(),
            client_id: client_id.clone(),
            prefix: spec.worker.prefix.clone(),
            functions: spec.worker.functions.clone(),
            max_packet: spec.worker.max_packet_size,
        };
        tasks.spawn(connection::serve(
            cspec,
            gate.clone(),
            drain.clone(),
            jobs.clone() as Arc<dyn JobRunner>,
            first_tx.clone(),
        ));
    }
    drop(first_tx);
    // Ready once every server has been tried once (a server that is down must
    // not hold the pool's start hostage; it is retried in the background).
    for _ in 0..servers.len() {
        tokio::select! {
            _ = first_rx.recv() => {}
            _ = drain.cancelled() => break,
        }
    }
    let _ = reports.send(Report::Ready { pid });

    // Drain: close the gate so idle connections leave; a connection mid-job
    // keeps its permit until it has answered.
    let drained = drain.clone();
    let gate_on_drain = gate.clone();
    tokio::spawn(async move {
        drained.cancelled().await;
        gate_on_drain.close();
    });
    while tasks.join_next().await.is_some() {}

    let workleft = spec.worker.workleft;
    let reason = if workleft > 0 && jobs.done.load(Ordering::SeqCst) >= workleft {
        ExitReason::Workleft
    } else {
        ExitReason::Drained
    };
    let _ = reports.send(Report::Exiting { reason });
    if let Ok(jobs) = Arc::try_unwrap(jobs) {
        jobs.handler.into_inner().shutdown().await;
    }
    reason
}
