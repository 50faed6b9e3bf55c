//! The accept loop both listeners share (control socket, metrics): at most
//! `limit` connections served at once, the rest left in the kernel's listen
//! backlog (no file descriptor or task of ours until a permit frees up), and
//! an end when the manager has gone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::snapshot::Snapshots;

/// Accepts with `accept` and serves each connection with `serve` on its own
/// task, `limit` at a time, until the manager has gone. `what` names the
/// listener in the log.
pub async fn serve_bounded<S, A, AF, H, HF>(
    mut accept: A,
    snapshots: &Snapshots,
    limit: usize,
    what: &str,
    serve: H,
) where
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<S>>,
    H: Fn(S) -> HF,
    HF: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit));
    loop {
        // The permit first: beyond the limit, clients wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // Never closed.
            },
            _ = snapshots.closed() => return,
        };
        let stream = tokio::select! {
            r = accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = snapshots.closed() => return,
        };
        let served = serve(stream);
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
}
