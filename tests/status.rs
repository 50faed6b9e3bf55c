//! `slotman status` against what is really running, and a control socket
//! that survives bad peers.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{slotman_bin, wait_until, Gearmand};
use slotman::control::proto::ServiceStatus;
use slotman::gearman::client::{Client, JobResult};

struct Service {
    dir: tempfile::TempDir,
    child: Child,
}

impl Service {
    fn start(config: &str) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("svc.toml"), config).expect("config");
        let child = Command::new(slotman_bin())
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("svc.toml"))
            .arg("--runtime-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("slotman run");
        wait_until("control socket", Duration::from_secs(10), || {
            dir.path().join("svc.sock").exists()
        });
        Service { dir, child }
    }

    fn status_json(&self) -> ServiceStatus {
        let out = Command::new(slotman_bin())
            .args(["status", "svc", "--json", "--runtime-dir"])
            .arg(self.dir.path())
            .output()
            .expect("status");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn status_table(&self) -> String {
        let out = Command::new(slotman_bin())
            .args(["status", "svc", "--runtime-dir"])
            .arg(self.dir.path())
            .output()
            .expect("status");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn config(g: &Gearmand, min: u32, max: u32) -> String {
    format!(
        "[workers.w]\nkind = \"stdio\"\ncommand = [\"python3\", \"{}/tests/fixtures/handler.py\"]\nfunctions = [\"hold\", \"echo\", \"sleep\"]\njob_servers = [\"{}\"]\nmin = {min}\nmax = {max}\n",
        env!("CARGO_MANIFEST_DIR"),
        g.addr
    )
}

#[test]
fn status_matches_what_is_running() {
    let Some(g) = Gearmand::start() else { return };
    let svc = Service::start(&config(&g, 3, 3));
    wait_until("3 idle slots", Duration::from_secs(15), || {
        svc.status_json().workers[0].idle == 3
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut c = Client::connect(&g.addr).await.expect("connect");
        for i in 0..7 {
            let r = c
                .submit("w::echo", &format!("e{i}"), "x")
                .await
                .expect("submit");
            assert_eq!(r.result, JobResult::Complete("x".into()));
        }
        // Two jobs in flight, each holding 50 MB for 3 s.
        c.submit_background("w::hold", "h1", "50")
            .await
            .expect("bg");
        c.submit_background("w::hold", "h2", "50")
            .await
            .expect("bg");
    });
    wait_until("two busy slots", Duration::from_secs(10), || {
        svc.status_json().workers[0].busy == 2
    });
    // Give the handlers time to touch their 50 MB.
    std::thread::sleep(Duration::from_millis(800));
    let st = svc.status_json();
    let w = &st.workers[0];
    assert_eq!(w.slots.len(), 3);
    assert_eq!(w.jobs_complete, 7, "jobs done match jobs sent");
    assert_eq!(w.busy, 2, "busy matches jobs in flight");
    for s in &w.slots {
        let pid = s.pid.expect("slot pid");
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "slot pid {pid} exists"
        );
        assert!(s.uptime_secs > 0.0);
        if s.state == "busy" {
            let job = s.job.as_ref().expect("busy slot shows its job");
            assert_eq!(job.function, "w::hold");
            let mem = s.memory_bytes.expect("memory known for a plain process");
            assert!(
                mem > 50 * 1024 * 1024,
                "slot holding 50 MB shows {mem} bytes"
            );
        }
    }
    let table = svc.status_table();
    assert!(
        table.contains("busy") && table.contains("w::hold"),
        "{table}"
    );
}

#[test]
fn garbage_and_stalled_peers_do_not_stop_the_manager() {
    let Some(g) = Gearmand::start() else { return };
    let svc = Service::start(&config(&g, 1, 3));
    let sock = svc.dir.path().join("svc.sock");
    // A peer that connects and never sends anything.
    let _stalled = UnixStream::connect(&sock).expect("connect");
    // A peer that sends garbage, and one that sends a huge line.
    let mut garbage = UnixStream::connect(&sock).expect("connect");
    garbage
        .write_all(b"\x00\xffnot json at all\n")
        .expect("write");
    let mut huge = UnixStream::connect(&sock).expect("connect");
    let _ = huge.write_all(&vec![b'x'; 1 << 20]);
    // Meanwhile the pool still scales and serves: 3 parallel sleeps need 3 slots.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..3 {
            let addr = g.addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&addr).await.expect("connect");
                c.submit("w::sleep", &format!("s{i}"), "1")
                    .await
                    .expect("submit")
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.expect("join").result,
                JobResult::Complete("slept".into())
            );
        }
    });
    let st = svc.status_json();
    assert_eq!(st.workers[0].jobs_complete, 3);
    assert!(
        st.workers[0].slots.len() >= 2,
        "the pool grew: {:?}",
        st.workers[0]
    );
}
