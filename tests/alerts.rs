//! The alerting rules and dashboard shipped in packaging/ against what a
//! real manager exposes: `promtool` accepts the rules and the exposition,
//! and every `slotman_*` metric they use exists, so a renamed metric fails
//! here rather than in someone's on-call rotation.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::service::{handler, submit_bg, Service};
use common::{free_port, skip, wait_until, Gearmand};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `promtool`, or a loud skip.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(
            "promtool",
            "promtool is not installed (apt install prometheus)",
        );
        return None;
    }
    Some("promtool")
}

/// Every `slotman_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("slotman_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        names.insert(name);
    }
    names
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    let (_, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    body.to_string()
}

#[test]
fn rules_and_dashboard_use_only_metrics_slotman_exposes() {
    let Some(promtool) = promtool() else { return };
    let rules = Path::new(ROOT).join("packaging/prometheus/slotman.rules.yml");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool check rules");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dashboard_text =
        std::fs::read_to_string(Path::new(ROOT).join("packaging/grafana/slotman.json"))
            .expect("dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));

    let Some(g) = Gearmand::start() else { return };
    let listen = format!("127.0.0.1:{}", free_port());
    let mut svc = Service::new(&format!(
        "metrics_listen = \"{listen}\"\n[workers.w]\nkind = \"stdio\"\ncommand = {}\nfunctions = [\"echo\"]\njob_servers = [\"{}\"]\nmin = 1\nmax = 2\n",
        handler(),
        g.addr
    ));
    svc.start();
    svc.one_slot_ready("w");
    // A job done, so that the job counters have samples.
    submit_bg(&g.addr, "w::echo", [("one".to_string(), "x".to_string())]);
    wait_until("a job done", Duration::from_secs(20), || {
        svc.worker("w").jobs_complete == 1
    });
    let mut exposition = String::new();
    wait_until(
        "metrics with memory and queue",
        Duration::from_secs(20),
        || {
            exposition = scrape(&listen);
            exposition.contains("slotman_worker_memory_bytes")
                && exposition.contains("slotman_queue_depth")
        },
    );
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool check metrics");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write exposition");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let exposed = metric_names(&exposition);
    let rules_text = std::fs::read_to_string(&rules).expect("rules");
    for (what, text) in [("rules", &rules_text), ("dashboard", &dashboard_text)] {
        let unknown: Vec<String> = metric_names(text)
            .into_iter()
            .filter(|n| !exposed.contains(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "the {what} use metrics slotman does not expose: {unknown:?}"
        );
    }
    assert!(svc.stop(), "manager exit status");
}
