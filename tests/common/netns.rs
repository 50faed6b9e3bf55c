//! Simulated hosts for tests: each a network namespace with its own address
//! on a private bridge, which lives in a namespace of its own (the test's
//! "switch"), so nothing touches the host's network and two tests never
//! see each other. Processes are started inside a host with `setns(2)`
//! between fork and exec (what `ip netns exec` does), tied to the test
//! process like every fixture; the test's own sockets (clients, admin
//! reads) are opened from a thread that joined the host's namespace.
//!
//! Everything is removed on drop, after a panic too: the processes in each
//! namespace are killed, then the namespaces deleted (the veth pairs go
//! with them). Namespaces a killed test run left behind (its pid in their
//! name is gone) are removed by the next run. Names are
//! `slf-PID-N-ROLE`, unique per run and per test.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{skip, spawn_tied_to_process, wait_until};

/// Test tier name for `SLOTMAN_TEST_REQUIRE`.
pub const TIER: &str = "netns";
/// Most hosts one test may create.
const MAX_HOSTS: usize = 12;
const PREFIX: &str = "slf-";

/// A host: a network namespace with one interface (`eth0`) on the switch.
pub struct Host {
    pub ns: String,
    /// Its IPv4 address on the switch.
    pub addr: String,
    file: File,
}

/// The simulated network of one test.
pub struct Net {
    switch: String,
    hosts: Vec<Host>,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Kills every process in namespace `ns` (they are this test run's), then
/// deletes it.
fn remove(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Removes namespaces of earlier test runs that died without cleaning up.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove(name);
        }
    }
}

impl Net {
    /// A switch and `roles.len()` hosts on it, 10.99.0.1, .2, … in the
    /// order given. `None` (after `skip`) where namespaces cannot be made.
    pub fn new(roles: &[&str]) -> Option<Net> {
        assert!(roles.len() <= MAX_HOSTS, "at most {MAX_HOSTS} hosts");
        if !nix::unistd::geteuid().is_root() {
            skip(TIER, "network namespaces need root");
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            skip(TIER, "`ip` is not installed (apt install iproute2)");
            return None;
        }
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(remove_leftovers);
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = |role: &str| format!("{PREFIX}{}-{n}-{role}", std::process::id());
        let mut net = Net {
            switch: name("sw"),
            hosts: Vec::new(),
            children: Vec::new(),
        };
        if let Err(e) = ip(&["netns", "add", &net.switch]) {
            skip(TIER, &format!("cannot create a network namespace: {e}"));
            return None;
        }
        let sw = net.switch.clone();
        let made = (|| {
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
            for (i, role) in roles.iter().enumerate() {
                let ns = name(role);
                ip(&["netns", "add", &ns])?;
                let file = File::open(format!("/run/netns/{ns}"))
                    .map_err(|e| format!("opening /run/netns/{ns}: {e}"))?;
                let addr = format!("10.99.0.{}", i + 1);
                net.hosts.push(Host {
                    ns: ns.clone(),
                    addr: addr.clone(),
                    file,
                });
                let port = format!("p{i}");
                ip(&[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                    "netns", &sw,
                ])?;
                ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = made {
            // Drop removes what was made.
            panic!("setting up the simulated network: {e}");
        }
        Some(net)
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Starts `cmd` inside host `i`, tied to the test process and killed
    /// when the network is dropped; returns its pid.
    pub fn spawn(&mut self, i: usize, mut cmd: Command) -> u32 {
        let fd = self.hosts[i].file.as_raw_fd();
        // SAFETY: between fork and exec only setns(2), async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = spawn_tied_to_process(cmd).expect("spawning in a simulated host");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Takes back a child started with [`spawn`](Self::spawn), to wait for
    /// it or kill it.
    pub fn take(&mut self, pid: u32) -> Option<Child> {
        let at = self.children.iter().position(|c| c.id() == pid)?;
        Some(self.children.swap_remove(at))
    }

    /// Runs `f` on a thread inside host `i`: the sockets it opens are that
    /// host's.
    pub fn within<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.hosts[i].file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread alone, with a valid fd.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Takes host `i`'s link down (cut off from every other host) or up.
    pub fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hosts[i].ns, "link", "set", "eth0", state]).expect("ip link set");
    }

    /// Bytes host `i` has sent to `peer` (an address) over TCP that `peer`
    /// has not acknowledged yet (`ss` Send-Q).
    pub fn unacked(&self, i: usize, peer: &str) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, "ss", "-tnH"])
            .output()
            .expect("ss");
        let prefix = format!("{peer}:");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 5 && f[4].starts_with(&prefix))
            .map(|f| f[2].parse::<u64>().unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add)
    }

    /// Waits until host `from` can open a TCP connection to `addr`.
    pub fn wait_reachable(&self, from: usize, addr: &str) {
        let addr: std::net::SocketAddr = addr.parse().expect("address");
        self.within(from, || {
            wait_until(
                &format!("{addr} accepts connections"),
                Duration::from_secs(10),
                || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            )
        });
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            remove(&h.ns);
        }
        remove(&self.switch);
    }
}
