//! The optional Prometheus endpoint (`metrics_listen = "127.0.0.1:9477"`):
//! [`serve`] answers `GET /metrics` with [`render`]'s exposition over a
//! deliberately tiny HTTP/1.1 responder.
//!
//! The responder reads one request head per connection (at most
//! [`MAX_HEAD`] bytes, within [`TIMEOUT`]), answers it with
//! `Connection: close` and closes. Each connection is its own task and at
//! most [`MAX_CONNECTIONS`] are served at once, so a stalled or garbage peer
//! only loses its own connection and cannot hold up the manager, which only
//! ever answers a channel message (as for the control socket). Scrapes share
//! the status view of `slotman status` requests ([`super::snapshot`]).
//!
//! There is no authentication: the endpoint belongs on loopback, which is
//! what the examples use; the config accepts any address it is given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use super::exposition::{render, CONTENT_TYPE};
use super::snapshot::Snapshots;

/// Largest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a peer may take to send its request head, to take the answer,
/// and how long the manager may take to produce a status.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long, and how many bytes, a connection is drained after the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Serving

/// Binds `metrics_listen`; the error names the key.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_listen {addr}: cannot listen: {e}"))
}

/// Limits of one connection; [`serve`] uses [`MAX_HEAD`] and [`TIMEOUT`].
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_head: usize,
    timeout: Duration,
}

const LIMITS: Limits = Limits {
    max_head: MAX_HEAD,
    timeout: TIMEOUT,
};

/// Answers `GET /metrics` on `listener` until the manager's channel closes.
pub async fn serve(listener: TcpListener, snapshots: Arc<Snapshots>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("Prometheus metrics on http://{addr}/metrics");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "metrics_listen {addr} is not a loopback address: anyone who can reach it can read the metrics"
            );
        }
    }
    serve_with(listener, snapshots, LIMITS).await;
}

async fn serve_with(listener: TcpListener, snapshots: Arc<Snapshots>, limits: Limits) {
    let accept = || async { listener.accept().await.map(|(s, _)| s) };
    let serving = snapshots.clone();
    super::accept::serve_bounded(accept, &snapshots, MAX_CONNECTIONS, "metrics", |stream| {
        let snapshots = serving.clone();
        async move { connection(stream, &snapshots, limits).await }
    })
    .await;
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics`, or `HEAD /metrics` (`head_only`).
    Metrics {
        head_only: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    HeadTooLarge,
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The head, up to and including the blank line.
    Complete(Vec<u8>),
    TooLarge,
    /// The peer closed (or failed) before sending a whole head.
    Closed,
}

async fn connection(mut stream: TcpStream, snapshots: &Snapshots, limits: Limits) {
    let head =
        match tokio::time::timeout(limits.timeout, read_head(&mut stream, limits.max_head)).await {
            Ok(head) => head,
            Err(_) => return, // Stalled: drop it.
        };
    let route = match head {
        Head::Complete(bytes) => route(&bytes),
        Head::TooLarge => Route::HeadTooLarge,
        Head::Closed => return,
    };
    let reply = match route {
        Route::Metrics { head_only } => match scrape(snapshots, limits.timeout).await {
            Some(body) => Reply::new(200, "OK", CONTENT_TYPE, body).head_only(head_only),
            None => Reply::text(503, "Service Unavailable", "the manager is not answering\n"),
        },
        Route::NotFound => Reply::text(404, "Not Found", "not found; try /metrics\n"),
        Route::MethodNotAllowed => {
            Reply::text(405, "Method Not Allowed", "use GET\n").header("Allow: GET, HEAD")
        }
        Route::BadRequest => Reply::text(400, "Bad Request", "bad request\n"),
        Route::HeadTooLarge => Reply::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
    };
    let bytes = reply.into_bytes();
    let sent = tokio::time::timeout(limits.timeout, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        linger(&mut stream).await;
    }
}

/// Reads and discards what the peer still sends (the rest of an oversized
/// head, a body) for a moment before closing: closing with unread input
/// makes the kernel reset the connection, and the peer may then lose the
/// answer. Ends at once when the peer closes after reading the answer.
async fn linger(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Reads until the blank line that ends a request head, at most `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (max + 1).saturating_sub(buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(n) => n,
        };
        // Search only where a new terminator can be: the fresh bytes and
        // the three before them.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            let end = from + end;
            if end > max {
                return Head::TooLarge;
            }
            buf.truncate(end);
            return Head::Complete(buf);
        }
        if buf.len() > max {
            return Head::TooLarge;
        }
    }
}

/// The length of the head in `buf` (through "\r\n\r\n", or "\n\n" from a
/// lenient client), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Routes a request by its request line; headers are not looked at.
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !token(method) || !token(target) || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::MethodNotAllowed,
    }
}

/// A status from the manager, with memory and queue depths filled in,
/// rendered; `None` if the manager is gone or does not answer in time.
async fn scrape(snapshots: &Snapshots, limit: Duration) -> Option<String> {
    let status = tokio::time::timeout(limit, snapshots.get())
        .await
        .ok()?
        .ok()?;
    Some(render(&status))
}

/// An HTTP/1.1 response that closes the connection.
struct Reply {
    code: u16,
    reason: &'static str,
    content_type: &'static str,
    headers: Vec<&'static str>,
    body: String,
    head_only: bool,
}

impl Reply {
    fn new(code: u16, reason: &'static str, content_type: &'static str, body: String) -> Self {
        Reply {
            code,
            reason,
            content_type,
            headers: Vec::new(),
            body,
            head_only: false,
        }
    }

    fn text(code: u16, reason: &'static str, body: &str) -> Self {
        Reply::new(code, reason, "text/plain; charset=utf-8", body.to_owned())
    }

    fn head_only(mut self, yes: bool) -> Self {
        self.head_only = yes;
        self
    }

    fn header(mut self, line: &'static str) -> Self {
        self.headers.push(line);
        self
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.code,
            self.reason,
            self.content_type,
            self.body.len()
        );
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{
        FunctionStats, Histogram, ServiceStatus, SlotStatus, WorkerStatus,
    };
    use crate::manager::Event;
    use prometheus_parse::{Scrape, Value};
    use tokio::sync::{mpsc, oneshot};

    /// A worker with every count zero. Built from JSON so that it does not
    /// have to name fields of the view that metrics do not use.
    fn worker(name: &str) -> WorkerStatus {
        serde_json::from_value(serde_json::json!({
            "name": name, "kind": "stdio", "min": 1, "max": 4,
            "busy": 0, "idle": 0, "starting": 0, "draining": 0, "failed": false,
            "jobs_complete": 0, "jobs_failed": 0, "jobs_exception": 0,
            "jobs_per_sec": 0.0, "restarts": 0, "recycles": 0, "queued": null,
            "job_servers": [], "registered": [], "functions": [],
            "durations": Histogram::default(), "slots": [],
        }))
        .expect("a WorkerStatus")
    }

    fn slot(id: u32, state: &str, memory: Option<u64>) -> SlotStatus {
        SlotStatus {
            id,
            state: state.into(),
            pid: None,
            unit: None,
            uptime_secs: 1.0,
            jobs_done: 0,
            jobs_left: None,
            job: None,
            memory_bytes: memory,
            cpu_usage_nsec: None,
            tasks: None,
            outdated: false,
            pinned_cpu: None,
        }
    }

    fn status() -> ServiceStatus {
        let mut resize = worker("resize");
        resize.min = 2;
        resize.max = 8;
        resize.busy = 3;
        resize.idle = 1;
        resize.starting = 1;
        resize.draining = 0;
        resize.restarts = 4;
        resize.recycles = 2;
        resize.queued = Some(7);
        resize.functions = vec![
            FunctionStats {
                name: "resize::small".into(),
                complete: 10,
                fail: 2,
                exception: 1,
            },
            FunctionStats {
                name: "resize::big".into(),
                complete: 5,
                fail: 0,
                exception: 0,
            },
        ];
        for secs in [0.0005, 0.003, 0.003, 0.2, 2.0, 1000.0] {
            resize.durations.observe(secs);
        }
        resize.slots = vec![
            slot(1, "busy", Some(1000)),
            slot(2, "busy", None),
            slot(3, "idle", Some(24)),
        ];

        let mut thumbs = worker("thumbs");
        thumbs.failed = true;
        thumbs.slots = vec![slot(1, "starting", None)];

        ServiceStatus {
            version: crate::control::proto::PROTOCOL_VERSION,
            service: "billing".into(),
            config: "/etc/slotman/billing.toml".into(),
            pid: 42,
            uptime_secs: 10.0,
            stopping: false,
            reload_error: None,
            health: "failed".into(),
            problems: vec![],
            workers: vec![resize, thumbs],
        }
    }

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
    }

    /// The value of the one sample of `metric` whose labels include `want`.
    fn value(scrape: &Scrape, metric: &str, want: &[(&str, &str)]) -> Option<Value> {
        let found: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| want.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert!(
            found.len() <= 1,
            "{metric} {want:?}: {} samples",
            found.len()
        );
        found.first().map(|s| s.value.clone())
    }

    fn number(scrape: &Scrape, metric: &str, want: &[(&str, &str)]) -> f64 {
        match value(scrape, metric, want) {
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => v,
            other => panic!("{metric} {want:?}: {other:?}"),
        }
    }

    #[test]
    fn renders_every_family_with_its_values() {
        let text = render(&status());
        let s = parse(&text);
        let r = [("service", "billing"), ("worker", "resize")];
        let t = [("service", "billing"), ("worker", "thumbs")];

        assert_eq!(number(&s, "slotman_up", &[("service", "billing")]), 1.0);
        assert_eq!(number(&s, "slotman_config_reload_failed", &[]), 0.0);
        for (state, n) in [
            ("starting", 1.0),
            ("idle", 1.0),
            ("busy", 3.0),
            ("draining", 0.0),
        ] {
            let l = [r[0], r[1], ("state", state)];
            assert!(matches!(value(&s, "slotman_slots", &l), Some(Value::Gauge(v)) if v == n));
        }
        assert_eq!(number(&s, "slotman_slots_min", &r), 2.0);
        assert_eq!(number(&s, "slotman_slots_max", &r), 8.0);
        assert_eq!(number(&s, "slotman_worker_failed", &r), 0.0);
        assert_eq!(number(&s, "slotman_worker_failed", &t), 1.0);

        let jobs = |f: &str, result: &str| {
            let l = [r[0], r[1], ("function", f), ("result", result)];
            match value(&s, "slotman_jobs_total", &l) {
                Some(Value::Counter(v)) => v,
                other => panic!("jobs {f} {result}: {other:?}"),
            }
        };
        assert_eq!(jobs("resize::small", "complete"), 10.0);
        assert_eq!(jobs("resize::small", "fail"), 2.0);
        assert_eq!(jobs("resize::small", "exception"), 1.0);
        assert_eq!(jobs("resize::big", "complete"), 5.0);
        assert_eq!(jobs("resize::big", "fail"), 0.0);

        assert!(
            matches!(value(&s, "slotman_slot_restarts_total", &r), Some(Value::Counter(v)) if v == 4.0)
        );
        assert!(
            matches!(value(&s, "slotman_slot_recycles_total", &r), Some(Value::Counter(v)) if v == 2.0)
        );

        // Queue depth and memory only where known.
        assert_eq!(number(&s, "slotman_queue_depth", &r), 7.0);
        assert!(value(&s, "slotman_queue_depth", &t).is_none());
        assert_eq!(number(&s, "slotman_worker_memory_bytes", &r), 1024.0);
        assert!(value(&s, "slotman_worker_memory_bytes", &t).is_none());

        // Every family has HELP and TYPE, once, before its samples.
        for family in [
            "slotman_up",
            "slotman_slots",
            "slotman_jobs_total",
            "slotman_job_duration_seconds",
            "slotman_worker_memory_bytes",
        ] {
            assert!(s.docs.contains_key(family), "HELP of {family}");
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family}"
            );
        }
        assert!(text.contains("# TYPE slotman_jobs_total counter\n"));
        assert!(text.contains("# TYPE slotman_job_duration_seconds histogram\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn families_are_not_interleaved_and_empty_ones_are_left_out() {
        let mut st = status();
        for w in &mut st.workers {
            w.queued = None;
            w.slots.clear();
        }
        let text = render(&st);
        assert!(!text.contains("slotman_queue_depth"), "{text}");
        assert!(!text.contains("slotman_worker_memory_bytes"), "{text}");
        // Each metric name's lines form one contiguous run.
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .filter(|base| base.ends_with("_seconds"))
                    .unwrap_or(n)
            })
            .collect();
        let mut seen = Vec::new();
        for pair in names.windows(2) {
            if pair[0] != pair[1] {
                assert!(!seen.contains(&pair[1]), "{} interleaved:\n{text}", pair[1]);
                seen.push(pair[0]);
            }
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let s = parse(&render(&status()));
        let r = [("service", "billing"), ("worker", "resize")];
        let Some(Value::Histogram(buckets)) = value(&s, "slotman_job_duration_seconds", &r) else {
            panic!("no histogram");
        };
        let le = |bound: f64| {
            buckets
                .iter()
                .find(|b| b.less_than == bound)
                .unwrap_or_else(|| panic!("no bucket le={bound}"))
                .count
        };
        // Observed: 0.0005, 0.003, 0.003, 0.2, 2.0, 1000.0.
        assert_eq!(le(0.001), 1.0);
        assert_eq!(le(0.005), 3.0);
        assert_eq!(le(0.01), 3.0);
        assert_eq!(le(0.5), 4.0);
        assert_eq!(le(1.0), 4.0);
        assert_eq!(le(5.0), 5.0);
        assert_eq!(le(300.0), 5.0);
        assert_eq!(le(f64::INFINITY), 6.0);
        assert_eq!(buckets.len(), DURATION_BUCKETS + 1);
        let mut last = 0.0;
        for b in &buckets {
            assert!(b.count >= last, "not cumulative: {buckets:?}");
            last = b.count;
        }
        assert_eq!(number(&s, "slotman_job_duration_seconds_count", &r), 6.0);
        let sum = number(&s, "slotman_job_duration_seconds_sum", &r);
        assert!((sum - 1002.2065).abs() < 1e-9, "{sum}");

        // An idle worker still has all its buckets, at zero.
        let t = [("service", "billing"), ("worker", "thumbs")];
        let Some(Value::Histogram(empty)) = value(&s, "slotman_job_duration_seconds", &t) else {
            panic!("no histogram");
        };
        assert!(empty.iter().all(|b| b.count == 0.0));
    }

    const DURATION_BUCKETS: usize = crate::control::proto::DURATION_BOUNDS.len();

    #[test]
    fn label_values_are_escaped() {
        // prometheus-parse takes labels apart at `,`, `=` and the first `}`
        // and does not unescape, so it gets a value without those; the strict
        // reader above checks the full set.
        let parseable = "a\\b \"q\"\nnext";
        let mut st = status();
        st.service = parseable.into();
        let text = render(&st);
        let s = parse(&text);
        // Still one sample per line, and the parser takes every line.
        let lines = text.lines().filter(|l| !l.starts_with('#')).count();
        let parsed: usize = s
            .samples
            .iter()
            .map(|x| match &x.value {
                Value::Histogram(b) => b.len(),
                _ => 1,
            })
            .sum();
        assert_eq!(parsed, lines, "{text}");
        assert!(s
            .samples
            .iter()
            .all(|x| x.labels.get("service") == Some("a\\\\b \\\"q\\\"\\nnext")));

        let nasty = "a\\b \"q\"\nnext }{,=";
        st.service = nasty.into();
        st.workers[0].functions[0].name = format!("fn{nasty}");
        let text = render(&st);
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), lines);
        let up = text
            .lines()
            .find(|l| l.starts_with("slotman_up{"))
            .expect("slotman_up");
        assert_eq!(up, "slotman_up{service=\"a\\\\b \\\"q\\\"\\nnext }{,=\"} 1");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(labels_of(line)[0], ("service".to_owned(), nasty.to_owned()));
        }
        let job = text
            .lines()
            .find(|l| l.starts_with("slotman_jobs_total{") && l.contains("fn"))
            .expect("a jobs line");
        let labels = labels_of(job);
        assert_eq!(labels[2], ("function".to_owned(), format!("fn{nasty}")));
        assert_eq!(labels[3].0, "result");
    }

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(
            r("GET /metrics HTTP/1.1\n\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metrics/ HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET  /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("\u{0}\u{1} garbage\n\n"), Route::BadRequest);
        assert_eq!(route(b"GET /\xff HTTP/1.1\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
    }

    // --- The responder, over real TCP, with a stand-in manager.

    /// A manager that answers every status request with [`status`] until
    /// `stop` is dropped.
    fn fake_manager() -> (mpsc::UnboundedSender<Event>, oneshot::Sender<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Some(Event::Status(reply)) => { let _ = reply.send(status()); }
                        Some(_) => {}
                        None => return,
                    },
                    _ = &mut stopped => return,
                }
            }
        });
        (tx, stop)
    }

    async fn start(limits: Limits) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events, stop) = fake_manager();
        tokio::spawn(serve_with(listener, Snapshots::new(events, None), limits));
        (addr, stop)
    }

    /// Sends `request` and reads the whole answer (the server closes).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer in time")
            .expect("read");
        String::from_utf8(out).expect("utf-8")
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let (addr, _stop) = start(LIMITS).await;

        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let (head, body) = ok.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(head.contains("Connection: close"), "{head}");
        assert_eq!(body, render(&status()));

        let head_only = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head_only.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");

        let not_found = exchange(addr, b"GET /favicon.ico HTTP/1.1\r\n\r\n").await;
        assert!(not_found.starts_with("HTTP/1.1 404 "), "{not_found}");
        let post = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("Allow: GET, HEAD\r\n"), "{post}");
        let garbage = exchange(addr, b"\x16\x03\x01 hello\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");

        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        let too_large = exchange(addr, &huge).await;
        assert!(too_large.starts_with("HTTP/1.1 431 "), "{too_large}");

        // A peer that closes before a whole head gets nothing (and at once).
        assert_eq!(exchange(addr, b"GET /metr").await, "");
    }

    #[tokio::test]
    async fn a_stalled_peer_loses_only_its_own_connection() {
        let limits = Limits {
            timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let (addr, _stop) = start(limits).await;
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("write");

        // Others are served meanwhile...
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));

        // ... and the stalled one is dropped once its time is up.
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut buf))
            .await
            .expect("closed by the server");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?} {buf:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn stops_when_the_manager_is_gone_and_says_503_meanwhile() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // A manager that takes requests but never answers.
        let (events, mut rx) = mpsc::unbounded_channel::<Event>();
        let limits = Limits {
            timeout: Duration::from_millis(200),
            ..LIMITS
        };
        let server = tokio::spawn(serve_with(listener, Snapshots::new(events, None), limits));
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(ev) = rx.recv().await {
                held.push(ev);
                if held.len() == 1 {
                    return held;
                }
            }
            held
        });
        let busy = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
        // The stand-in returned (dropping its receiver): the server ends.
        drop(silent.await.expect("stand-in"));
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns when the manager is gone")
            .expect("no panic");
    }

    /// Label values of one sample line, unescaped by the exposition format's
    /// rules (prometheus-parse splits labels on `,` and `=` and does not
    /// unescape, so escaping is checked with this strict reader).
    fn labels_of(line: &str) -> Vec<(String, String)> {
        let inner = &line[line.find('{').expect("labels") + 1..];
        let mut out = Vec::new();
        let mut chars = inner.chars();
        loop {
            let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            loop {
                match chars.next().expect("unterminated value") {
                    '"' => break,
                    '\\' => match chars.next().expect("dangling escape") {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other} in {line}"),
                    },
                    '\n' => panic!("raw newline in {line}"),
                    c => value.push(c),
                }
            }
            out.push((name, value));
            match chars.next() {
                Some(',') => continue,
                Some('}') => return out,
                other => panic!("after a label: {other:?} in {line}"),
            }
        }
    }
}
