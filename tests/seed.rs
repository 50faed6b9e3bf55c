//! Seed-style workers (`kind = "perl" | "python" | "php"`) end to end: real
//! interpreters running slotman's libraries under `slotman run`, a real
//! gearmand, and clients as users have them (slotman's own client, Perl's
//! Gearman::Client). For each language, one module with public, `_private`
//! and capitals-only methods (and, where the language has them, imported
//! and static functions) is served and checked: exactly the public methods
//! are registered, NUL bytes and a 1 MB payload round-trip, progress reaches
//! the client, an exception reaches it as WORK_EXCEPTION with its message,
//! printing to stdout does not break the framing, and `workleft` recycles.
//! Then `slotman check` on a missing module and a syntax error.
//!
//! A missing interpreter skips its tests (tier `perl`, `python`, `php`)
//! unless `SLOTMAN_TEST_REQUIRE` asks for it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::service::{rt, Service};
use common::{skip, wait_until, Gearmand};
use slotman::gearman::client::{Client, JobResult};

const PATIENCE: Duration = Duration::from_secs(30);

/// The same worker in each language: `reverse`, `progress`, `boom` (throws
/// "kaboom: PAYLOAD"), `noisy` (prints to stdout, returns "quiet"), `pid`
/// (its process id); `_private` and `HIDDEN` must not be registered.
const PERL: &str = r#"package TestWorker;
use strict;
use warnings;
use parent 'Slotman::Worker';
use POSIX qw(floor);      # imported: not a function of this worker
print "loading TestWorker\n";

sub reverse { my ($self, $payload, $job) = @_; return scalar reverse $payload }
sub progress {
    my ($self, $payload, $job) = @_;
    $job->status(1, 2);
    $job->data("part");
    $job->warning("warn");
    $job->status(2, 2);
    return "done";
}
sub boom { my ($self, $payload) = @_; die "kaboom: $payload\n" }
sub noisy { print "noise\n" for 1 .. 2000; print STDOUT "COMPLETE 3\nbad"; warn "a warning\n"; return "quiet" }
sub pid { return $$ }
sub who { my ($self, $payload, $job) = @_; return join '|', $job->function, $job->unique // '-' }
sub _private { return "no" }
sub HIDDEN { return "no" }
1;
"#;

const PYTHON: &str = r#"import os
import sys
from os.path import join  # imported: not a method
from slotman import Worker

print("loading TestWorker")


class TestWorker(Worker):
    def reverse(self, payload, job):
        return payload[::-1]

    def progress(self, payload, job):
        job.status(1, 2)
        job.data(b"part")
        job.warning("warn")
        job.status(2, 2)
        return "done"

    def boom(self, payload, job):
        raise ValueError("kaboom: " + payload.decode())

    def noisy(self, payload, job):
        for _ in range(2000):
            print("noise")
        sys.stdout.write("COMPLETE 3\nbad")
        os.write(1, b"COMPLETE 3\nbad")
        return "quiet"

    def pid(self, payload, job):
        return str(os.getpid())

    def who(self, payload, job):
        return job.function.encode() + b"|" + (b"-" if job.unique is None else job.unique)

    @staticmethod
    def helper(payload, job):
        return "no"

    def _private(self, payload, job):
        return "no"

    def HIDDEN(self, payload, job):
        return "no"
"#;

const PHP: &str = r#"<?php
echo "loading TestWorker\n";

class TestWorker extends \Slotman\Worker
{
    public function reverse(string $payload, $job) { return strrev($payload); }

    public function progress(string $payload, $job)
    {
        $job->status(1, 2);
        $job->data("part");
        $job->warning("warn");
        $job->status(2, 2);
        return "done";
    }

    public function boom(string $payload, $job) { throw new RuntimeException("kaboom: $payload"); }

    public function noisy(string $payload, $job)
    {
        for ($i = 0; $i < 2000; $i++) {
            echo "noise\n";
        }
        fwrite(STDOUT, "COMPLETE 3\nbad");
        trigger_error("a warning", E_USER_WARNING);
        return "quiet";
    }

    public function pid(string $payload, $job) { return getmypid(); }

    public function who(string $payload, $job) { return $job->function() . '|' . ($job->unique() ?? '-'); }

    public static function helper() { return "no"; }

    protected function inner() { return "no"; }

    public function _private() { return "no"; }

    public function HIDDEN() { return "no"; }
}
?>

"#;

/// The registered names every version must have, no more.
const FUNCTIONS: &[&str] = &["boom", "noisy", "pid", "progress", "reverse", "who"];

struct Lang {
    kind: &'static str,
    interpreter: &'static str,
    file: &'static str,
    module: &'static str,
}

const LANGS: [Lang; 3] = [
    Lang {
        kind: "perl",
        interpreter: "perl",
        file: "TestWorker.pm",
        module: PERL,
    },
    Lang {
        kind: "python",
        interpreter: "python3",
        file: "TestWorker.py",
        module: PYTHON,
    },
    Lang {
        kind: "php",
        interpreter: "php",
        file: "TestWorker.php",
        module: PHP,
    },
];

fn lang(kind: &str) -> &'static Lang {
    LANGS.iter().find(|l| l.kind == kind).expect("a language")
}

/// Whether `program` runs here; skips the tier otherwise.
fn have(tier: &str, program: &str) -> bool {
    let ok = Command::new(program)
        .arg(if program == "php" { "-v" } else { "--version" })
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(tier, &format!("`{program}` is not installed"));
    }
    ok
}

/// The language and a gearmand, or `None` (after a skip) without them.
fn ready(kind: &str) -> Option<(&'static Lang, Gearmand)> {
    let l = lang(kind);
    if !have(kind, l.interpreter) {
        return None;
    }
    Some((l, Gearmand::start()?))
}

/// A libs directory holding `file` with `text`.
fn libs_with(file: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(file), text).expect("write module");
    dir
}

fn config(kind: &str, libs: &Path, addr: &str, extra: &str) -> String {
    format!(
        "stop_timeout = \"5s\"\n[workers.TestWorker]\nkind = \"{kind}\"\nlibs = [\"{}\"]\n\
         job_servers = [\"{addr}\"]\nmin = 1\nmax = 1\n{extra}",
        libs.display()
    )
}

/// The functions gearmand lists for the slots of TestWorker.
fn registered(g: &Gearmand) -> BTreeSet<String> {
    g.workers()
        .into_iter()
        .filter(|w| w.client_id.starts_with("slotman:svc:TestWorker:"))
        .flat_map(|w| w.functions)
        .collect()
}

fn names(prefix: &str, list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|f| format!("{prefix}{f}")).collect()
}

fn submit(
    addr: &str,
    function: &str,
    payload: impl Into<Bytes>,
) -> slotman::gearman::client::JobReply {
    let payload = payload.into();
    rt().block_on(async {
        let mut c = Client::connect(addr).await.expect("connect");
        tokio::time::timeout(PATIENCE, c.submit(function, "", payload))
            .await
            .expect("a reply in time")
            .expect("submit")
    })
}

fn complete(addr: &str, function: &str, payload: impl Into<Bytes>) -> Bytes {
    match submit(addr, function, payload).result {
        JobResult::Complete(result) => result,
        other => panic!("{function} gave {other:?}"),
    }
}

/// Runs the worker in `kind` through everything the module above offers.
fn serves_the_seed_way(kind: &str) {
    let Some((l, g)) = ready(kind) else { return };
    let libs = libs_with(l.file, l.module);
    let mut svc = Service::new(&config(kind, libs.path(), &g.addr, "workleft = 5\n"));
    svc.start();
    let want = names("TestWorker::", FUNCTIONS);
    wait_until("the slot registers", PATIENCE, || registered(&g) == want);
    wait_until("the manager learns the functions", PATIENCE, || {
        svc.worker("TestWorker")
            .registered
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            == want
    });

    // Binary-safe, exact sizes: NUL bytes, and more than any pipe holds.
    let small = Bytes::from_static(b"a\0b\nc \xff");
    assert_eq!(
        complete(&g.addr, "TestWorker::reverse", small.clone()),
        small.iter().rev().copied().collect::<Vec<u8>>()
    );
    let big: Bytes = (0..1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let back = complete(&g.addr, "TestWorker::reverse", big.clone());
    assert_eq!(back.len(), big.len());
    assert!(back.iter().eq(big.iter().rev()), "1 MB came back changed");

    // A unique id that is not a plain word comes in a JOBX frame.
    for (unique, want) in [
        ("a b\nc\u{e9}", "who|a b\nc\u{e9}"),
        ("-", "who|-"),
        ("", "who|-"),
        ("u1", "who|u1"),
    ] {
        let reply = rt().block_on(async {
            let mut c = Client::connect(&g.addr).await.expect("connect");
            c.submit("TestWorker::who", unique, "")
                .await
                .expect("submit")
        });
        assert_eq!(
            reply.result,
            JobResult::Complete(Bytes::from(want)),
            "unique {unique:?}"
        );
    }

    // Progress, in the order sent, before the result.
    let reply = submit(&g.addr, "TestWorker::progress", "x");
    let seen = (reply.statuses, reply.data, reply.warnings, reply.result);
    let part = vec![Bytes::from_static(b"part")];
    let warn = vec![Bytes::from_static(b"warn")];
    let done = JobResult::Complete(Bytes::from_static(b"done"));
    assert_eq!(seen, (vec![(1, 2), (2, 2)], part, warn, done));

    let reply = submit(&g.addr, "TestWorker::boom", "x");
    assert_eq!(
        reply.result,
        JobResult::Exception(Bytes::from_static(b"kaboom: x"))
    );

    // Stray output, framing look-alikes included, goes to stderr.
    assert_eq!(complete(&g.addr, "TestWorker::noisy", ""), "quiet");
    assert_eq!(complete(&g.addr, "TestWorker::reverse", "abc"), "cba");
    let log = svc.log();
    assert!(log.contains("noise"), "stdout should reach the log:\n{log}");
    assert!(log.contains("loading TestWorker"), "{log}");

    // workleft = 5: six jobs have run; the handler is another process by now
    // and stays the same for at most five jobs.
    let mut pids = BTreeSet::new();
    for _ in 0..6 {
        pids.insert(complete(&g.addr, "TestWorker::pid", ""));
    }
    assert!(pids.len() >= 2, "workleft did not recycle: {pids:?}");
    let w = svc.worker("TestWorker");
    assert!(w.recycles >= 1, "{w:?}");
    assert_eq!(registered(&g), want, "the replacement registered the same");

    if have("perl-gearman", "perl") {
        perl_client_sees_status_and_exception(&g.addr);
    }
    assert!(svc.stop(), "the manager exits 0");
}

/// A Perl `Gearman::Client` (exceptions on) gets `on_status` with each
/// step and `on_exception` with the message.
fn perl_client_sees_status_and_exception(addr: &str) {
    let script = r#"
use strict;
use warnings;
use Gearman::Client;
my $client = Gearman::Client->new(job_servers => [$ARGV[0]], exceptions => 1);
my @seen;
my $set = $client->new_task_set;
$set->add_task('TestWorker::progress' => 'x', {
    on_status   => sub { push @seen, "status $_[0]/$_[1]" },
    on_complete => sub { push @seen, "complete ${$_[0]}" },
    on_fail     => sub { push @seen, "fail" },
});
$set->wait(timeout => 20);
$set = $client->new_task_set;
$set->add_task('TestWorker::boom' => 'y', {
    on_exception => sub { push @seen, "exception $_[0]" },
    on_complete  => sub { push @seen, "complete" },
});
eval { $set->wait(timeout => 20) };
print join("\n", @seen), "\n";
"#;
    let out = Command::new("perl")
        .args(["-e", script, addr])
        .output()
        .expect("perl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(2)
        && String::from_utf8_lossy(&out.stderr).contains("Can't locate Gearman")
    {
        skip(
            "perl-gearman",
            "Gearman::Client is not installed (apt install libgearman-client-perl)",
        );
        return;
    }
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "status 1/2",
            "status 2/2",
            "complete done",
            "exception kaboom: y"
        ],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn perl_worker_serves_the_seed_way() {
    serves_the_seed_way("perl");
}

#[test]
fn python_worker_serves_the_seed_way() {
    serves_the_seed_way("python");
}

#[test]
fn php_worker_serves_the_seed_way() {
    serves_the_seed_way("php");
}

/// `functions` restricts what is registered; a listed name the module
/// lacks is not registered, and the log says so once.
#[test]
fn functions_restrict_the_announced_set() {
    let Some((l, g)) = ready("python") else {
        return;
    };
    let libs = libs_with(l.file, l.module);
    let mut svc = Service::new(&config(
        "python",
        libs.path(),
        &g.addr,
        "functions = [\"reverse\", \"missing\"]\n",
    ));
    svc.start();
    let want = names("TestWorker::", &["reverse"]);
    wait_until("the slot registers", PATIENCE, || registered(&g) == want);
    assert_eq!(complete(&g.addr, "TestWorker::reverse", "ab"), "ba");
    wait_until("the log names what is not registered", PATIENCE, || {
        svc.log().contains("not registered: missing")
    });
    assert!(svc.stop());
}

/// A module that fails as it loads is a slot that fails to start, with the
/// interpreter's words in the worker's problems.
#[test]
fn a_module_that_dies_at_load_is_a_start_failure() {
    let Some((l, g)) = ready("perl") else { return };
    let libs = libs_with(
        l.file,
        "package TestWorker;\nuse parent 'Slotman::Worker';\ndie \"no database here\\n\";\n1;\n",
    );
    let mut svc = Service::new(&config("perl", libs.path(), &g.addr, ""));
    svc.start();
    wait_until("the problem shows in status", PATIENCE, || {
        svc.worker("TestWorker")
            .problems
            .iter()
            .any(|p| p.contains("no database here"))
    });
    assert!(registered(&g).is_empty());
    assert!(svc.stop());
}

/// `slotman check FILE`: (exit code, stdout, stderr).
fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("svc.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(common::slotman_bin())
        .arg("check")
        .arg(&path)
        .output()
        .expect("slotman check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "svc.toml"),
    )
}

/// Each language: a missing module and a syntax error are refused with the
/// line of `libs`; a listed function the module lacks is a warning.
#[test]
fn check_catches_a_missing_module_and_a_syntax_error() {
    let broken = [
        ("perl", "package TestWorker;\nuse parent 'Slotman::Worker';\nsub reverse { return reverse $_[1] \n1;\n"),
        ("python", "from slotman import Worker\nclass TestWorker(Worker):\n    def reverse(self, p, j)\n        return p\n"),
        ("php", "<?php\nclass TestWorker extends \\Slotman\\Worker {\n    public function reverse($p, $j) { return strrev($p) }\n}\n"),
    ];
    for (kind, text) in broken {
        let l = lang(kind);
        if !have(kind, l.interpreter) {
            continue;
        }
        let empty = tempfile::tempdir().expect("tempdir");
        let (code, _, err) = check(&config(kind, empty.path(), "127.0.0.1:4730", ""));
        assert_eq!(code, 1, "{kind}: {err}");
        assert!(
            err.starts_with(&format!(
                "svc.toml:4: workers.TestWorker.libs: no {} in {}",
                l.file,
                empty.path().display()
            )),
            "{kind}: {err}"
        );

        let libs = libs_with(l.file, text);
        let (code, _, err) = check(&config(kind, libs.path(), "127.0.0.1:4730", ""));
        assert_eq!(code, 1, "{kind}: {err}");
        assert!(
            err.starts_with("svc.toml:4: workers.TestWorker.libs: ")
                && err.contains("does not compile")
                && err.contains(&format!("{}", libs.path().join(l.file).display())),
            "{kind}: {err}"
        );
        assert!(
            err.contains("line 3")
                || err.contains("line 4")
                || err.contains(":3")
                || err.contains(":4"),
            "{kind}: the module's line should be named: {err}"
        );

        let libs = libs_with(l.file, l.module);
        let (code, out, err) = check(&config(
            kind,
            libs.path(),
            "127.0.0.1:4730",
            "functions = [\"reverse\", \"rverse\"]\n",
        ));
        assert_eq!(code, 0, "{kind}: {err}");
        assert!(out.contains("ok: 1 worker (TestWorker"), "{out}");
        assert_eq!(
            err.trim(),
            "svc.toml:8: workers.TestWorker.functions[1]: warning: TestWorker has no public method \
             `rverse` (it has boom, noisy, pid, progress, reverse, who): not registered",
            "{kind}"
        );
        // Checking wrote nothing next to the module (no __pycache__).
        let files: Vec<_> = std::fs::read_dir(libs.path())
            .expect("read libs")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(files.len(), 1, "{kind}: {files:?}");
    }
}

/// examples/seed: its config as written (with `libs` pointed at the
/// examples) passes `slotman check`, and each language's TestWorker serves
/// `reverse` with exactly `reverse` and `wait` registered.
#[test]
fn the_seed_examples_run() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed");
    if have("perl", "perl") {
        let text = std::fs::read_to_string(examples.join("slotman.toml")).expect("example config");
        let text = text.replace("/opt/workers", &examples.display().to_string());
        let (code, out, err) = check(&text);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(
                "2 workers (TestWorker: perl, 2..50 slots; SecondWorker: perl, 2..5 slots)"
            ),
            "{out}"
        );
    }
    for l in &LANGS {
        if !have(l.kind, l.interpreter) {
            continue;
        }
        let Some(g) = Gearmand::start() else { return };
        let mut svc = Service::new(&config(l.kind, &examples, &g.addr, ""));
        svc.start();
        let want = names("TestWorker::", &["reverse", "wait"]);
        wait_until("the example registers", PATIENCE, || registered(&g) == want);
        assert_eq!(
            complete(&g.addr, "TestWorker::reverse", "hello"),
            "olleh",
            "{}",
            l.kind
        );
        assert!(svc.stop());
    }
}

/// Handlers may run as another `user`: the library slotman writes (as root)
/// is readable to them, and the worker serves. Each language, as `nobody`.
#[test]
fn workers_running_as_another_user_read_the_library() {
    if !nix::unistd::Uid::effective().is_root() {
        skip("root", "switching to `user = \"nobody\"` needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody");
    for l in &LANGS {
        if !have(l.kind, l.interpreter) {
            continue;
        }
        let Some(g) = Gearmand::start() else { return };
        let libs = libs_with(l.file, l.module);
        // A module directory nobody can read but not write.
        std::fs::set_permissions(
            libs.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let mut svc = Service::new(&config(l.kind, libs.path(), &g.addr, "user = \"nobody\"\n"));
        svc.start();
        wait_until("the slot registers", PATIENCE, || {
            registered(&g) == names("TestWorker::", FUNCTIONS)
        });
        let pid: u32 = String::from_utf8_lossy(&complete(&g.addr, "TestWorker::pid", ""))
            .trim()
            .parse()
            .expect("a pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .expect("Uid line");
        assert_eq!(uid, nobody.uid.to_string(), "{}", l.kind);
        assert_eq!(complete(&g.addr, "TestWorker::reverse", "ab"), "ba");
        assert!(svc.stop());
    }
}

/// A PHP without FFI (`ffi.enable = 0`): the library falls back to closing
/// STDIN and STDOUT; echo still goes to stderr and the framing holds, and a
/// method that writes to the closed STDOUT fails only its own job.
#[test]
fn php_without_ffi_keeps_the_framing() {
    let Some((l, g)) = ready("php") else { return };
    let libs = libs_with(
        l.file,
        "<?php\nclass TestWorker extends \\Slotman\\Worker {\n\
         public function reverse(string $p, $j) { echo \"noise\\n\"; return strrev($p); }\n\
         public function raw(string $p, $j) { fwrite(STDOUT, \"COMPLETE 3\\nbad\"); return 'no'; }\n}\n",
    );
    let wrapper = libs.path().join("php-no-ffi");
    std::fs::write(&wrapper, "#!/bin/sh\nexec php -d ffi.enable=0 \"$@\"\n").expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let extra = format!("interpreter = \"{}\"\n", wrapper.display());
    let mut svc = Service::new(&config("php", libs.path(), &g.addr, &extra));
    svc.start();
    let want = names("TestWorker::", &["raw", "reverse"]);
    wait_until("the slot registers", PATIENCE, || registered(&g) == want);
    assert_eq!(complete(&g.addr, "TestWorker::reverse", "ab"), "ba");
    match submit(&g.addr, "TestWorker::raw", "").result {
        JobResult::Exception(why) => {
            assert!(String::from_utf8_lossy(&why).contains("stream"), "{why:?}")
        }
        other => panic!("raw gave {other:?}"),
    }
    assert_eq!(complete(&g.addr, "TestWorker::reverse", "cd"), "dc");
    assert!(svc.log().contains("noise"));
    assert!(svc.stop());
}
