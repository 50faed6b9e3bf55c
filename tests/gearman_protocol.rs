//! The Gearman layer against a real gearmand: the admin protocol, a worker
//! written directly on `PacketCodec`, and `Client` submitting to it. Skips
//! (loudly) without gearmand; `SLOTMAN_TEST_REQUIRE=gearmand` makes that a
//! failure.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use slotman::gearman::admin;
use slotman::gearman::client::{Client, JobResult};
use slotman::gearman::codec::PacketCodec;
use slotman::gearman::packet::{Packet, PacketType};

use common::{wait_until, Gearmand};

/// Bound on any single step, so a protocol mistake fails instead of hanging.
const STEP: Duration = Duration::from_secs(10);

/// A worker speaking the binary protocol by hand, one packet at a time.
struct RawWorker {
    conn: Framed<TcpStream, PacketCodec>,
}

impl RawWorker {
    async fn connect(addr: &str, client_id: &str, functions: &[&str]) -> RawWorker {
        let stream = TcpStream::connect(addr).await.expect("worker connect");
        let mut w = RawWorker {
            conn: Framed::new(stream, PacketCodec::default()),
        };
        w.send(PacketType::SetClientId, &[client_id.as_bytes()])
            .await;
        for f in functions {
            w.send(PacketType::CanDo, &[f.as_bytes()]).await;
        }
        w
    }

    async fn send(&mut self, kind: PacketType, args: &[&[u8]]) {
        let args = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        self.conn
            .send(Packet::req(kind, args))
            .await
            .expect("worker send");
    }

    async fn recv(&mut self) -> Packet {
        match tokio::time::timeout(STEP, self.conn.next()).await {
            Ok(Some(Ok(p))) => p,
            other => panic!("worker expected a packet, got {other:?}"),
        }
    }

    /// The worker cycle: GRAB_JOB_UNIQ; on NO_JOB, PRE_SLEEP and wait for
    /// NOOP, then grab again. Returns the JOB_ASSIGN_UNIQ.
    async fn grab(&mut self) -> Packet {
        loop {
            self.send(PacketType::GrabJobUniq, &[]).await;
            let p = self.recv().await;
            match p.kind {
                PacketType::JobAssignUniq => return p,
                PacketType::NoJob => {
                    self.send(PacketType::PreSleep, &[]).await;
                    let wake = self.recv().await;
                    assert_eq!(wake.kind, PacketType::Noop, "{wake:?}");
                }
                // A NOOP left over from an earlier sleep: grab again.
                PacketType::Noop => {}
                _ => panic!("unexpected {p:?}"),
            }
        }
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_version_and_echo() {
    let Some(gm) = Gearmand::start() else { return };
    let v = admin::version(&gm.addr, STEP).await.expect("version");
    assert!(v.starts_with("1."), "version {v:?}");

    let mut client = within("connect", Client::connect(&gm.addr)).await.unwrap();
    let data = Bytes::from_static(b"ping\0with\0nuls");
    let back = within("echo", client.echo(data.clone())).await.unwrap();
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_a_submitted_job() {
    let Some(gm) = Gearmand::start() else { return };
    let function = "slotman_test::reverse";
    let client_id = "slotman:test:Reverser:0:1";
    let mut worker = RawWorker::connect(&gm.addr, client_id, &[function]).await;

    // `workers` shows the worker under its client id with its function.
    wait_until("gearmand lists the worker", STEP, || {
        gm.workers()
            .iter()
            .any(|w| w.client_id == client_id && w.functions == [function])
    });
    let listed = admin::workers(&gm.addr, STEP).await.unwrap();
    assert!(
        listed.iter().any(|w| w.client_id == client_id),
        "{listed:?}"
    );

    let submit = tokio::spawn({
        let addr = gm.addr.clone();
        async move {
            let mut client = Client::connect(&addr).await?;
            client.submit(function, "job-1", "hello").await
        }
    });

    let job = within("grab", worker.grab()).await;
    let handle = job.arg_bytes(0);
    assert_eq!(job.arg(1), function.as_bytes());
    assert_eq!(job.arg(2), b"job-1");
    assert_eq!(job.arg(3), b"hello");

    // While the job runs, `status` counts it as queued and running.
    wait_until("status shows the running job", STEP, || {
        gm.function_status(function) == (1, 1, 1)
    });

    worker
        .send(PacketType::WorkStatus, &[&handle, b"1", b"2"])
        .await;
    worker
        .send(PacketType::WorkData, &[&handle, b"part\0ial"])
        .await;
    worker
        .send(PacketType::WorkWarning, &[&handle, b"careful"])
        .await;
    worker
        .send(PacketType::WorkStatus, &[&handle, b"2", b"2"])
        .await;
    worker
        .send(PacketType::WorkComplete, &[&handle, b"olleh"])
        .await;

    let reply = within("submit", submit).await.unwrap().expect("submit");
    assert_eq!(reply.handle.as_bytes(), &handle[..]);
    assert_eq!(
        reply.result,
        JobResult::Complete(Bytes::from_static(b"olleh"))
    );
    assert_eq!(reply.data, vec![Bytes::from_static(b"part\0ial")]);
    assert_eq!(reply.warnings, vec![Bytes::from_static(b"careful")]);
    assert_eq!(reply.statuses, vec![(1, 2), (2, 2)]);
    wait_until("the job leaves the queue", STEP, || {
        gm.function_status(function) == (0, 0, 1)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_and_exception_reach_the_client() {
    let Some(gm) = Gearmand::start() else { return };
    let function = "slotman_test::flaky";
    let mut worker = RawWorker::connect(&gm.addr, "flaky-worker", &[function]).await;
    let mut client = within("connect", Client::connect(&gm.addr)).await.unwrap();

    let failing = tokio::spawn(async move {
        let r = client.submit(function, "", "a").await;
        (client, r)
    });
    let job = within("grab 1", worker.grab()).await;
    worker.send(PacketType::WorkFail, &[job.arg(0)]).await;
    let (mut client, r) = within("fail", failing).await.unwrap();
    assert_eq!(r.expect("submit").result, JobResult::Fail);

    let throwing = tokio::spawn(async move {
        let r = client.submit(function, "", "b").await;
        (client, r)
    });
    let job = within("grab 2", worker.grab()).await;
    assert_eq!(job.arg(3), b"b");
    worker
        .send(PacketType::WorkException, &[job.arg(0), b"boom\0trace"])
        .await;
    let (mut client, r) = within("exception", throwing).await.unwrap();
    assert_eq!(
        r.expect("submit").result,
        JobResult::Exception(Bytes::from_static(b"boom\0trace"))
    );

    // The connection is still in step afterwards.
    let echoed = within("echo", client.echo("still here")).await.unwrap();
    assert_eq!(&echoed[..], b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_background_jobs() {
    let Some(gm) = Gearmand::start() else { return };
    let function = "slotman_test::later";
    let mut client = within("connect", Client::connect(&gm.addr)).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..3 {
        let h = within(
            "submit_background",
            client.submit_background(function, &format!("bg-{i}"), "x"),
        )
        .await
        .expect("submit_background");
        assert!(!h.is_empty());
        handles.push(h);
    }
    handles.sort();
    handles.dedup();
    assert_eq!(handles.len(), 3, "distinct handles");

    let status = admin::status(&gm.addr, STEP).await.unwrap();
    let f = status
        .iter()
        .find(|f| f.name == function)
        .expect("function listed");
    assert_eq!((f.queued, f.running, f.workers), (3, 0, 0));

    // A worker drains them; `status` follows.
    let mut worker = RawWorker::connect(&gm.addr, "drainer", &[function]).await;
    for _ in 0..3 {
        let job = within("grab", worker.grab()).await;
        worker
            .send(PacketType::WorkComplete, &[job.arg(0), b""])
            .await;
    }
    wait_until("the queue drains", STEP, || {
        gm.function_status(function) == (0, 0, 1)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_restart_keeps_the_port() {
    let Some(mut gm) = Gearmand::start() else {
        return;
    };
    let addr = gm.addr.clone();
    let old_pid = gm.pid();
    gm.kill();
    assert!(!gm.is_running());
    assert!(
        Client::connect(&addr).await.is_err(),
        "nothing listens after kill"
    );
    gm.restart();
    assert_eq!(gm.addr, addr);
    assert_ne!(gm.pid(), old_pid);
    let v = admin::version(&gm.addr, STEP)
        .await
        .expect("version after restart");
    assert!(!v.is_empty());
}
