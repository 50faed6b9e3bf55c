//! The Prometheus endpoint of a real `slotman run` (`metrics_listen`), with
//! a real gearmand and real stdio handlers: jobs and slots as scraped over
//! TCP and read by a Prometheus parser (and by `promtool` when installed).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::service::Service;
use common::{free_port, wait_until, Gearmand};
use prometheus_parse::{Scrape, Value};
use slotman::gearman::client::{Client, JobResult};

const WORKER: &str = "Echo";

/// One HTTP/1.1 request; (status code, head, body). The server closes.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status code in {head:?}")))?;
    Ok((code, head.to_owned(), body.to_owned()))
}

/// `/metrics`, checked for a 200 and the exposition format's content type.
fn scrape_text(addr: SocketAddr) -> String {
    let (code, head, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a Prometheus scrape")
}

/// The value of the one sample of `metric` (counter or gauge) whose labels
/// include `want`; `None` if there is none.
fn sample(s: &Scrape, metric: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric)
        .filter(|x| want.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{metric}: not a number: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{metric} {want:?}: {found:?}");
    found.first().copied()
}

fn jobs(s: &Scrape, function: &str, result: &str) -> f64 {
    let l = [
        ("service", "svc"),
        ("worker", WORKER),
        ("function", function),
        ("result", result),
    ];
    sample(s, "slotman_jobs_total", &l).unwrap_or(0.0)
}

fn slots(s: &Scrape, state: &str) -> f64 {
    let l = [("service", "svc"), ("worker", WORKER), ("state", state)];
    sample(s, "slotman_slots", &l).unwrap_or_else(|| panic!("no slotman_slots{{state={state}}}"))
}

fn promtool() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// `promtool check metrics` on `text`, when promtool is installed.
fn promtool_check(text: &str, dir: &Path) {
    let Some(promtool) = promtool() else {
        return;
    };
    let file = dir.join("scrape.prom");
    std::fs::write(&file, text).expect("write scrape");
    let out = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open scrape"))
        .output()
        .expect("run promtool");
    // promtool exits 1 for lint remarks (naming style) as well as for
    // errors; only errors ("error while linting" / parse errors) fail here.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || !said.to_ascii_lowercase().contains("error"),
        "promtool check metrics:\n{said}\n--- scrape ---\n{text}"
    );
}

#[test]
fn metrics_endpoint_shows_jobs_and_slots() {
    let Some(g) = Gearmand::start() else { return };
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = format!(
        r#"metrics_listen = "{addr}"

[workers.{WORKER}]
kind = "stdio"
command = ["python3", "{}/tests/fixtures/handler.py"]
functions = ["echo", "fail"]
job_servers = ["{}"]
min = 2
max = 3
"#,
        env!("CARGO_MANIFEST_DIR"),
        g.addr
    );
    let mut svc = Service::running(&config);

    // The endpoint answers once the manager runs, and both min slots are
    // ready soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        svc.assert_running();
        match http_get(addr, "/metrics") {
            Ok((200, _, body)) => break body,
            Ok((code, head, _)) => panic!("GET /metrics: {code}\n{head}"),
            Err(e) if Instant::now() > deadline => panic!(
                "nothing answers on metrics_listen {addr} 10s after start ({e}); \
                 is the metrics server started by `slotman run`?"
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let s = parse(&first);
    assert_eq!(sample(&s, "slotman_up", &[]), Some(1.0), "{first}");
    wait_until(
        "2 idle slots in the metrics",
        Duration::from_secs(10),
        || slots(&parse(&scrape_text(addr)), "idle") == 2.0,
    );

    let echo = format!("{WORKER}::echo");
    let fail = format!("{WORKER}::fail");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = Client::connect(&g.addr).await.expect("connect");
        for i in 0..5 {
            let payload = format!("job {i}");
            let reply = c.submit(&echo, "", payload.clone()).await.expect("echo");
            assert_eq!(reply.result, JobResult::Complete(payload.into()));
        }
        let reply = c.submit(&fail, "", "x").await.expect("fail");
        assert_eq!(reply.result, JobResult::Fail);
    });

    // The slots report `done` right after they answer the job server, so
    // the counts may trail the client by a moment.
    let mut text = String::new();
    wait_until(
        "6 jobs counted in the metrics",
        Duration::from_secs(10),
        || {
            text = scrape_text(addr);
            let s = parse(&text);
            jobs(&s, &echo, "complete") + jobs(&s, &fail, "fail") == 6.0
        },
    );
    let s = parse(&text);
    let w = [("service", "svc"), ("worker", WORKER)];
    assert_eq!(jobs(&s, &echo, "complete"), 5.0, "{text}");
    assert_eq!(jobs(&s, &echo, "fail"), 0.0, "{text}");
    assert_eq!(jobs(&s, &echo, "exception"), 0.0, "{text}");
    assert_eq!(jobs(&s, &fail, "fail"), 1.0, "{text}");
    assert_eq!(jobs(&s, &fail, "complete"), 0.0, "{text}");

    let total: f64 = ["starting", "idle", "busy", "draining"]
        .iter()
        .map(|st| slots(&s, st))
        .sum();
    assert!((2.0..=3.0).contains(&total), "{total} slots:\n{text}");
    assert_eq!(sample(&s, "slotman_slots_min", &w), Some(2.0));
    assert_eq!(sample(&s, "slotman_slots_max", &w), Some(3.0));
    assert_eq!(sample(&s, "slotman_worker_failed", &w), Some(0.0));
    assert_eq!(sample(&s, "slotman_slot_restarts_total", &w), Some(0.0));
    // gearmand answers admin `status`, so the queue depth is known: empty.
    assert_eq!(sample(&s, "slotman_queue_depth", &w), Some(0.0), "{text}");
    // Plain child processes: memory from /proc.
    let memory = sample(&s, "slotman_worker_memory_bytes", &w).expect("memory");
    assert!(memory > 0.0, "{text}");

    // One duration per job, in cumulative buckets.
    let histogram = s
        .samples
        .iter()
        .find(|x| {
            x.metric == "slotman_job_duration_seconds" && x.labels.get("worker") == Some(WORKER)
        })
        .expect("duration histogram");
    let Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {histogram:?}");
    };
    let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
    assert!(counts.windows(2).all(|p| p[0] <= p[1]), "{buckets:?}");
    let inf = buckets.iter().find(|b| b.less_than.is_infinite());
    assert_eq!(inf.map(|b| b.count), Some(6.0), "{buckets:?}");
    assert_eq!(
        sample(&s, "slotman_job_duration_seconds_count", &w),
        Some(6.0)
    );

    let (code, _, _) = http_get(addr, "/nope").expect("GET /nope");
    assert_eq!(code, 404);

    promtool_check(&text, svc.dir.path());
    assert!(svc.stop(), "slotman run did not stop cleanly");
}
