//! The native kind's relay: the slot runner between an unmodified Gearman
//! worker and its job servers, so that slotman sees every job of a worker
//! it did not write.
//!
//! The runner listens on loopback, one port per configured job server
//! (chosen by the kernel, bound before the worker starts), and hands the
//! worker those addresses (`SLOTMAN_JOB_SERVERS`, `{job_servers}`). Each
//! connection the worker opens is relayed to its job server as it is,
//! packet by packet ([`pipe`]), and the packets tell the slot what the
//! worker does ([`session`]): busy and idle, each job's start and end, so
//! the manager's scaling, `slotman status`, `workleft`, `timeout` and the
//! journal's job fields work as for the other kinds. What the connections
//! of one slot share (its one job, whether it still takes jobs) is in
//! [`shared`].
//!
//! Only the binary protocol is relayed: the text admin protocol (`status`,
//! `workers`) is refused as a malformed packet; workers do not use it.

mod pipe;
mod session;
mod shared;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use shared::Shared;

/// At most this many connections from the worker to one relay at a time;
/// more are closed at once (a worker that leaks connections must not run
/// the runner out of descriptors).
const MAX_CONNECTIONS: usize = 64;

/// The slot's relays: listening, and relaying what the worker opens.
pub struct Relay {
    /// What the connections share.
    pub shared: Arc<Shared>,
    /// `127.0.0.1:PORT` per job server, in `job_servers` order.
    pub addrs: Vec<String>,
    /// The accept loops and the connections they relay.
    tasks: TaskTracker,
    accepting: tokio::task::JoinSet<()>,
}

impl Relay {
    /// Listens on a kernel-chosen loopback port for each of `servers`.
    pub async fn bind(servers: &[String], shared: Shared) -> std::io::Result<Relay> {
        let shared = Arc::new(shared);
        let tasks = TaskTracker::new();
        let mut accepting = tokio::task::JoinSet::new();
        let mut addrs = Vec::with_capacity(servers.len());
        for server in servers {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            addrs.push(listener.local_addr()?.to_string());
            accepting.spawn(accept(
                listener,
                server.clone(),
                shared.clone(),
                tasks.clone(),
            ));
        }
        Ok(Relay {
            shared,
            addrs,
            tasks,
            accepting,
        })
    }

    /// The worker is gone for good: its connections fail their jobs in
    /// hand (WORK_FAIL) and close; waits at most `limit` for them.
    pub async fn close(mut self, limit: std::time::Duration) {
        self.accepting.abort_all();
        self.shared.end_generation();
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}

/// Accepts the worker's connections to the relay for `server`.
async fn accept(listener: TcpListener, server: String, shared: Arc<Shared>, tasks: TaskTracker) {
    let open = Arc::new(());
    loop {
        let worker = match listener.accept().await {
            Ok((worker, _)) => worker,
            Err(e) => {
                // Out of descriptors, say: back off rather than spin.
                tracing::warn!(server = %server, "relay cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // The strong count is the number of live connections, plus this one.
        if Arc::strong_count(&open) > MAX_CONNECTIONS {
            tracing::warn!(server = %server, "the worker has {MAX_CONNECTIONS} connections to its relay open; closing another");
            continue;
        }
        let (id, generation) = shared.accepted();
        let held = open.clone();
        tasks.spawn(pipe::serve(
            worker,
            server.clone(),
            shared.clone(),
            id,
            generation,
            held,
        ));
    }
}
