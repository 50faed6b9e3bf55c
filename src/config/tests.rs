//! Config tests are data: a file's text in, the `slotman check` outcome out,
//! through one [`check`] helper. Commands are looked up on a fake host, so
//! the tests do not depend on what this machine has installed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proptest::strategy::Strategy as _;

use super::probe::Probe;
use super::validate::validate;
use super::{parse, Config, HandlerKind, WorkerConfig};

/// A machine with a few executables and directories.
struct FakeHost;

impl Probe for FakeHost {
    fn executable(&self, program: &Path) -> Result<(), String> {
        match program.to_str().unwrap_or("") {
            "/usr/bin/python3"
            | "/usr/bin/true"
            | "/bin/sh"
            | "/opt/w/run"
            | "/opt/bin/tool"
            | "/usr/bin/perl"
            | "/usr/bin/php"
            | "/opt/py/bin/python3" => Ok(()),
            "/opt/w/data.txt" => Err("is not executable".into()),
            "/opt/w" | "/srv" => Err("is not a file".into()),
            _ => Err("does not exist".into()),
        }
    }

    fn directory(&self, dir: &Path) -> Result<(), String> {
        match dir.to_str().unwrap_or("") {
            "/srv" | "/opt/w" => Ok(()),
            "/opt/w/run" => Err("is not a directory".into()),
            _ => Err("does not exist".into()),
        }
    }

    fn search_path(&self) -> Option<String> {
        Some("/usr/bin:/bin".into())
    }

    fn account(&self, name: &str, group: bool) -> Result<(), String> {
        match (name, group) {
            ("nobody" | "www-data" | "u", false)
            | ("nogroup" | "www-data" | "slotman" | "g" | "adm", true) => Ok(()),
            _ => Err(format!(
                "no {} {name:?} on this host",
                if group { "group" } else { "user" }
            )),
        }
    }

    fn is_file(&self, path: &Path) -> bool {
        matches!(
            path.to_str().unwrap_or(""),
            "/opt/w/TestWorker.pm" | "/opt/w/TestWorker.py" | "/srv/Broken.pm"
        )
    }

    /// A module that compiles and has `reverse` and `wait`, but `Broken`.
    fn seed_module(
        &self,
        _language: crate::seed::Language,
        _interpreter: &Path,
        _libs: &[std::path::PathBuf],
        name: &str,
        file: &Path,
    ) -> Result<Option<Vec<String>>, String> {
        match name {
            "Broken" => Err(format!(
                "{} does not compile: syntax error at {} line 3",
                file.display(),
                file.display()
            )),
            _ => Ok(Some(vec!["reverse".into(), "wait".into()])),
        }
    }
}

fn outcome(text: &str) -> Result<Config, super::ConfigError> {
    validate(text, Path::new("t.toml"), Some(&FakeHost))
}

/// Runs `text` as `t.toml` and compares what `slotman check` would print:
/// `ok: SUMMARY`, or the error lines.
#[track_caller]
fn check(text: &str, expect: &str) {
    let got = match outcome(text) {
        Ok(config) => format!("ok: {}", config.summary()),
        Err(e) => e.to_string(),
    };
    assert_eq!(got, expect.trim(), "\n--- input ---\n{text}");
}

#[track_caller]
fn parse_ok(text: &str) -> Config {
    match outcome(text) {
        Ok(config) => config,
        Err(e) => panic!("{e}\n--- input ---\n{text}"),
    }
}

#[track_caller]
fn worker<'a>(config: &'a Config, name: &str) -> &'a WorkerConfig {
    config
        .worker(name)
        .unwrap_or_else(|| panic!("no worker {name}"))
}

const DESIGN_EXAMPLE: &str = r#"
[defaults]                      # the seed's "global": merged under each worker
job_servers = ["127.0.0.1:4730"]
min = 2
max = 5
workleft = 10                   # jobs per slot before it is replaced; 0 = never

[workers.TestWorker]            # registers TestWorker::reverse, TestWorker::wait
kind = "stdio"
command = ["/usr/bin/python3", "/opt/workers/test_worker.py"]
functions = ["reverse", "wait"]
max = 50
memory_max = "256M"
"#;

#[test]
fn design_example_parses() {
    check(
        DESIGN_EXAMPLE,
        "ok: 1 worker (TestWorker: stdio, 2..50 slots)",
    );
    let config = parse_ok(DESIGN_EXAMPLE);
    assert_eq!(config.service, "t");
    let w = worker(&config, "TestWorker");
    assert_eq!(w.job_servers, ["127.0.0.1:4730"]);
    assert_eq!((w.min, w.max, w.workleft), (2, 50, 10));
    assert_eq!(w.memory_max, Some(256 << 20));
    assert_eq!(w.registered_name("reverse"), "TestWorker::reverse");
    assert_eq!(w.functions, ["reverse", "wait"]);
}

#[test]
fn builtin_defaults_fill_every_key() {
    let config = parse_ok("[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\n");
    assert_eq!(config.stop_timeout, Duration::from_secs(60));
    assert_eq!(config.metrics_listen, None);
    assert_eq!(config.control_group, None);
    let w = worker(&config, "w");
    let want = WorkerConfig {
        command: vec!["/usr/bin/true".into()],
        functions: vec!["f".into()],
        ..WorkerConfig::builtin("w")
    };
    assert_eq!(*w, want);
    // The built-in values, as docs/configuration.md gives them.
    assert_eq!(
        (w.kind, w.prefix.as_str(), &w.job_servers[..]),
        (
            HandlerKind::Stdio,
            "w::",
            &["127.0.0.1:4730".to_owned()][..]
        )
    );
    assert_eq!((w.min, w.max, w.workleft, w.max_spawn_rate), (1, 4, 0, 64));
    let secs = Duration::from_secs;
    assert_eq!(
        (w.idle_timeout, w.ready_timeout, w.timeout, w.max_lifetime),
        (secs(10), secs(30), None, None)
    );
    assert_eq!((w.max_packet_size, w.recycle_rss), (64 << 20, None));
    assert_eq!(w.resource_limits(), []);
    assert_eq!(
        (w.scale_on_queue, w.prefetch, w.proxy, w.pin_cpu),
        (true, false, true, false)
    );
    assert!(w.env.is_empty() && w.libs.is_empty());
    assert_eq!(
        (&w.user, &w.group, &w.working_directory),
        (&None, &None, &None)
    );
}

#[test]
fn every_key_is_read() {
    let config = parse_ok(
        r#"
stop_timeout = "2m"
metrics_listen = "127.0.0.1:9477"
control_group = "slotman"

[workers.all]
job_servers = ["gm1", "gm2:7003", "[::1]"]
kind = "exec"
command = ["tool", "--flag"]
functions = ["a", "b"]
prefix = "img."
min = 0
max = 8
workleft = 100
idle_timeout = 30
timeout = "1m 30s"
max_lifetime = "1h"
env = { LANG = "C.UTF-8", PATH = "/opt/bin" }
working_directory = "/srv"
user = "www-data"
group = "www-data"
memory_max = "1G"
memory_high = 805306368
cpu_quota = "150%"
cpu_weight = 200
tasks_max = 64
max_packet_size = "1M"
ready_timeout = "1m"
"#,
    );
    assert_eq!(config.stop_timeout, Duration::from_secs(120));
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9477".parse().unwrap())
    );
    assert_eq!(config.control_group.as_deref(), Some("slotman"));
    let w = worker(&config, "all");
    assert_eq!(w.job_servers, ["gm1:4730", "gm2:7003", "[::1]:4730"]);
    assert_eq!(w.kind, HandlerKind::Exec);
    assert_eq!(w.command, ["tool", "--flag"]);
    assert_eq!(w.registered_name("a"), "img.a");
    assert_eq!((w.min, w.max, w.workleft), (0, 8, 100));
    assert_eq!(w.idle_timeout, Duration::from_secs(30));
    assert_eq!(w.timeout, Some(Duration::from_secs(90)));
    assert_eq!(w.max_lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(w.env["LANG"], "C.UTF-8");
    assert_eq!(w.working_directory.as_deref(), Some(Path::new("/srv")));
    assert_eq!(w.user.as_deref(), Some("www-data"));
    assert_eq!(w.group.as_deref(), Some("www-data"));
    assert_eq!(w.memory_max, Some(1 << 30));
    assert_eq!(w.memory_high, Some(768 << 20));
    assert_eq!(w.cpu_quota, Some(150));
    assert_eq!(w.cpu_weight, Some(200));
    assert_eq!(w.tasks_max, Some(64));
    assert_eq!(w.max_packet_size, 1 << 20);
    assert_eq!(w.ready_timeout, Duration::from_secs(60));
}

#[test]
fn every_worker_key_is_accepted_in_defaults() {
    // Guards the key list against the match in `read_keys`: a key listed
    // but not handled would come back as "unknown key".
    let values: BTreeMap<&str, &str> = [
        ("job_servers", "[\"gm\"]"),
        ("kind", "\"stdio\""),
        ("command", "[\"/usr/bin/true\"]"),
        ("functions", "[\"f\"]"),
        ("prefix", "\"\""),
        ("min", "1"),
        ("max", "2"),
        ("workleft", "3"),
        ("idle_timeout", "\"1s\""),
        ("timeout", "\"1s\""),
        ("max_lifetime", "\"1s\""),
        ("recycle_rss", "\"200M\""),
        ("env", "{}"),
        ("working_directory", "\"/srv\""),
        ("user", "\"u\""),
        ("group", "\"g\""),
        ("memory_max", "\"1M\""),
        ("memory_high", "\"1M\""),
        ("cpu_quota", "\"10%\""),
        ("cpu_weight", "10"),
        ("tasks_max", "\"infinity\""),
        ("max_packet_size", "\"1M\""),
        ("max_spawn_rate", "8"),
        ("scale_on_queue", "false"),
        ("prefetch", "true"),
        ("proxy", "false"),
        ("pin_cpu", "true"),
        ("ready_timeout", "\"5s\""),
        ("libs", "[\"/opt/w\"]"),
        ("interpreter", "\"/usr/bin/perl\""),
    ]
    .into_iter()
    .collect();
    let mut text = String::from("[defaults]\n");
    for key in super::known_keys().1 {
        let value = values
            .get(key)
            .unwrap_or_else(|| panic!("add a value for `{key}` to this test"));
        text.push_str(&format!("{key} = {value}\n"));
    }
    text.push_str("[workers.w]\n");
    check(&text, "ok: 1 worker (w: stdio, 1..2 slots)");
}

#[test]
fn defaults_merge_under_workers() {
    let config = parse_ok(
        r#"
[defaults]
command = ["/bin/sh", "-c", "exec worker"]
functions = ["f"]
min = 2
timeout = "30s"
memory_max = "256M"
prefix = ""
env = { LANG = "C", MODE = "prod", PATH = "/usr/bin" }

[workers.a]
kind = "exec"
env = { MODE = "test", EXTRA = "1" }

[workers.b]
prefix = "b."
timeout = 0
memory_max = "infinity"
functions = ["g"]
"#,
    );
    let a = worker(&config, "a");
    assert_eq!(a.command, ["/bin/sh", "-c", "exec worker"]);
    assert_eq!(a.kind, HandlerKind::Exec);
    assert_eq!((a.min, a.max), (2, 4));
    assert_eq!(a.timeout, Some(Duration::from_secs(30)));
    assert_eq!(a.memory_max, Some(256 << 20));
    assert_eq!(a.registered_name("f"), "f", "prefix \"\" from [defaults]");
    let env: Vec<(&str, &str)> = a
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("EXTRA", "1"),
            ("LANG", "C"),
            ("MODE", "test"),
            ("PATH", "/usr/bin")
        ]
    );

    let b = worker(&config, "b");
    assert_eq!(b.kind, HandlerKind::Stdio);
    assert_eq!(b.timeout, None, "0 lifts the inherited timeout");
    assert_eq!(b.memory_max, None, "infinity lifts the inherited limit");
    assert_eq!(b.functions, ["g"], "lists replace, they do not merge");
    assert_eq!(b.registered_name("g"), "b.g");
    assert_eq!(b.env["MODE"], "prod");
}

#[test]
fn workers_keep_file_order_and_native_needs_no_functions() {
    check(
        r#"
[workers.zeta]
command = ["/usr/bin/true"]
functions = ["f"]
[workers.alpha]
kind = "native"
command = ["/opt/w/run"]
min = 0
max = 1
"#,
        "ok: 2 workers (zeta: stdio, 1..4 slots; alpha: native, 0..1 slots)",
    );
}

#[test]
fn unknown_keys_name_line_and_path() {
    check(
        r#"
stop_timout = "1s"
min = 3
[defaults]
mx = 3
stop_timeout = "1s"
[workers.w]
command = ["/usr/bin/true"]
functions = ["f"]
colour = "blue"
env.LANG = "C"
[workers.w.limits]
x = 1
[worker.v]
"#,
        r#"
t.toml:2: stop_timout: unknown key; did you mean `stop_timeout`?
t.toml:3: min: unknown key; `min` belongs in [defaults] or [workers.NAME]
t.toml:5: defaults.mx: unknown key; did you mean `max`?
t.toml:6: defaults.stop_timeout: unknown key; `stop_timeout` is a top-level key: put it above the first table
t.toml:10: workers.w.colour: unknown key
t.toml:12: workers.w.limits: unknown key
t.toml:14: worker: unknown key; did you mean `workers`?
"#,
    );
}

#[test]
fn wrong_types_and_bad_values() {
    check(
        r#"
stop_timeout = 1.5
metrics_listen = "localhost:9477"
control_group = ""
[workers.w]
command = "/usr/bin/true"
functions = ["f", 3]
kind = "cgi"
min = "2"
max = 0
workleft = -1
idle_timeout = "soon"
timeout = true
env = { A = 1, B = "x" }
working_directory = "srv"
user = "a b"
memory_max = "256MB"
memory_high = 0
cpu_quota = 50
cpu_weight = 0
tasks_max = "lots"
max_packet_size = "8G"
job_servers = "gm:4730"
prefix = "a\tb"
ready_timeout = "0s"
"#,
        r#"
t.toml:2: stop_timeout: expected a duration such as "10s" or "500ms", or whole seconds, found a float
t.toml:3: metrics_listen: `localhost:9477` is not an IP address and port; write it like "127.0.0.1:9477"
t.toml:4: control_group: must not be empty
t.toml:6: workers.w.command: expected a list of strings, found a string; put it in brackets: ["..."]
t.toml:7: workers.w.functions[1]: expected a string, found an integer
t.toml:8: workers.w.kind: expected "exec", "stdio", "native", "perl", "python" or "php", not "cgi"
t.toml:9: workers.w.min: expected a number; write it without quotes: 2
t.toml:10: workers.w.max: must be from 1 to 4294967295, not 0
t.toml:11: workers.w.workleft: must be at least 0, not -1
t.toml:12: workers.w.idle_timeout: `soon` is not a duration; write it like "10s", "500ms" or "1m 30s"
t.toml:13: workers.w.timeout: expected a duration such as "10s" or "500ms", or whole seconds, found a boolean
t.toml:14: workers.w.env.A: expected a string, found an integer; put the value in quotes
t.toml:15: workers.w.working_directory: `srv` must be an absolute path
t.toml:16: workers.w.user: `a b` is not a user or group name
t.toml:17: workers.w.memory_max: `256MB` is not a size; write it like "512K", "256M" or "1G"
t.toml:18: workers.w.memory_high: must be more than 0; write "infinity" for no limit
t.toml:19: workers.w.cpu_quota: write the quota as a string, "50%"
t.toml:20: workers.w.cpu_weight: must be from 1 to 10000, not 0
t.toml:21: workers.w.tasks_max: expected a whole number or "infinity"
t.toml:22: workers.w.max_packet_size: must be more than 0 and less than 4G
t.toml:23: workers.w.job_servers: expected a list of strings, found a string; put it in brackets: ["..."]
t.toml:24: workers.w.prefix: prefix `a\tb` must not contain control characters such as tab, newline or NUL
t.toml:25: workers.w.ready_timeout: must be more than 0
"#,
    );
}

#[test]
fn list_elements_are_checked_one_by_one() {
    check(
        r#"
[workers.w]
command = [
  "/usr/bin/true",
  "ok\u0000",
]
functions = [
  "resize",
  "",
  "resize",
  "tab\there",
]
job_servers = ["gm", "gm:4730", "gm:0"]
"#,
        r#"
t.toml:5: workers.w.command[1]: must not contain a NUL character
t.toml:9: workers.w.functions[1]: a function name must not be empty
t.toml:10: workers.w.functions[2]: `resize` is listed twice
t.toml:11: workers.w.functions[3]: function name `tab\there` must not contain control characters such as tab, newline or NUL
t.toml:13: workers.w.job_servers[1]: `gm:4730` is listed twice
t.toml:13: workers.w.job_servers[2]: `gm:0`: port `0` is not a number from 1 to 65535
"#,
    );
}

#[test]
fn function_names_may_hold_spaces_and_utf8_but_no_control_characters() {
    let config = parse_ok(
        "[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"r\u{e9}sum\u{e9}\", \"r\u{e9} sum\u{e9}\"]\nprefix = \"cv \"\n",
    );
    let w = worker(&config, "w");
    assert_eq!(w.registered_name(&w.functions[1]), "cv r\u{e9} sum\u{e9}");
    check(
        r#"
[workers.w]
command = ["/usr/bin/true"]
functions = ["ok", "new\nline", "nul\u0000", "del\u007f"]
prefix = "p\r"
"#,
        r#"
t.toml:4: workers.w.functions[1]: function name `new\nline` must not contain control characters such as tab, newline or NUL
t.toml:4: workers.w.functions[2]: function name `nul\0` must not contain control characters such as tab, newline or NUL
t.toml:4: workers.w.functions[3]: function name `del\u{7f}` must not contain control characters such as tab, newline or NUL
t.toml:5: workers.w.prefix: prefix `p\r` must not contain control characters such as tab, newline or NUL
"#,
    );
}

#[test]
fn missing_and_empty_required_keys() {
    check(
        r#"
[workers.nocommand]
functions = ["f"]

[workers.nofunctions]
command = ["/usr/bin/true"]

[workers.empty]
kind = "exec"
command = []
functions = []
"#,
        r#"
t.toml:2: workers.nocommand.command: missing; every worker needs command = ["/path/to/program", "arg", ...]
t.toml:5: workers.nofunctions.functions: missing; a stdio worker registers at least one function, e.g. functions = ["resize"]
t.toml:10: workers.empty.command: must not be empty; write ["/path/to/program", "arg", ...]
t.toml:11: workers.empty.functions: must not be empty for a exec worker
"#,
    );
}

#[test]
fn min_and_max() {
    // The message sits on the key the worker itself set.
    check(
        r#"
[defaults]
command = ["/usr/bin/true"]
functions = ["f"]
max = 3
[workers.a]
min = 5
max = 2
[workers.b]
min = 5
[workers.c]
max = 1
[workers.d]
"#,
        r#"
t.toml:7: workers.a.min: must not exceed max (2)
t.toml:10: workers.b.min: must not exceed max (3, from [defaults])
"#,
    );
    check(
        r#"
[defaults]
command = ["/usr/bin/true"]
functions = ["f"]
min = 6
[workers.a]
max = 5
[workers.b]
[workers.c]
max = 10
"#,
        r#"
t.toml:5: defaults.min: must not exceed max (4, the default) for workers.b
t.toml:7: workers.a.max: must not be less than min (6, from [defaults])
"#,
    );
    // A bad max is reported once, not again as "min exceeds max".
    check(
        "[workers.a]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\nmin = 9\nmax = \"x\"\n",
        "t.toml:5: workers.a.max: expected a whole number, found a string",
    );
}

#[test]
fn commands_are_looked_up() {
    check(
        r#"
[workers.missing]
command = ["/opt/w/nope"]
functions = ["f"]
[workers.notexec]
command = [
  "/opt/w/data.txt",
]
functions = ["f"]
[workers.dir]
command = ["/opt/w"]
functions = ["f"]
[workers.relative]
command = ["bin/worker"]
functions = ["f"]
[workers.onpath]
command = ["true"]
functions = ["f"]
[workers.notonpath]
command = ["frobnicate"]
functions = ["f"]
[workers.ownpath]
command = ["tool"]
functions = ["f"]
env = { PATH = "/opt/bin" }
[workers.ownpath_miss]
command = ["true"]
functions = ["f"]
env = { PATH = "/opt/bin:relative" }
[workers.emptyprog]
command = ["", "x"]
functions = ["f"]
[workers.wd]
command = ["true"]
functions = ["f"]
working_directory = "/nowhere"
"#,
        r#"
t.toml:3: workers.missing.command: `/opt/w/nope` does not exist
t.toml:7: workers.notexec.command: `/opt/w/data.txt` is not executable
t.toml:11: workers.dir.command: `/opt/w` is not a file
t.toml:14: workers.relative.command: `bin/worker` is a relative path; give an absolute path, or a bare name to look up on PATH
t.toml:20: workers.notonpath.command: `frobnicate` is not an executable on PATH (/usr/bin:/bin); give its absolute path
t.toml:27: workers.ownpath_miss.command: `true` is not an executable on PATH (/opt/bin:relative); give its absolute path
t.toml:31: workers.emptyprog.command: the program (first element) must not be empty
t.toml:36: workers.wd.working_directory: `/nowhere` does not exist
"#,
    );
}

#[test]
fn parse_does_not_look_at_the_host() {
    let text = "[workers.w]\ncommand = [\"/definitely/not/here\"]\nfunctions = [\"f\"]\n";
    let config = parse(text, Path::new("/etc/slotman/billing.toml")).unwrap();
    assert_eq!(config.service, "billing");
    assert_eq!(config.path, Path::new("/etc/slotman/billing.toml"));
}

#[test]
fn a_bad_command_in_defaults_is_reported_once() {
    check(
        r#"
[defaults]
command = ["/opt/w/nope"]
functions = ["f"]
[workers.a]
[workers.b]
"#,
        "t.toml:3: defaults.command: `/opt/w/nope` does not exist",
    );
}

#[test]
fn registered_names_must_be_unique() {
    check(
        r#"
[defaults]
command = ["/usr/bin/true"]
prefix = ""
[workers.a]
functions = ["resize", "crop"]
[workers.b]
functions = ["rotate", "resize"]
[workers.c]
prefix = "c::"
functions = ["resize"]
"#,
        "t.toml:8: workers.b.functions[1]: `resize` registers `resize`, which workers.a registers too; give one of them another prefix",
    );
}

#[test]
fn worker_names_and_shapes() {
    check(
        r#"
workers = 3
"#,
        "t.toml:2: workers: expected tables [workers.NAME], found an integer",
    );
    check(
        r#"
[workers."has space"]
command = ["/usr/bin/true"]
functions = ["f"]
[workers]
min = 2
"#,
        r#"
t.toml:2: workers."has space": worker name `has space` may only use letters, digits, `_`, `.` and `-`
t.toml:6: workers.min: expected a table ([workers.min]), found an integer
"#,
    );
    check(
        "[workers.\"a.b\"]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\nmin = 9\n",
        "t.toml:4: workers.\"a.b\".min: must not exceed max (4, the default)",
    );
}

#[test]
fn no_workers() {
    check(
        "",
        "t.toml:1: workers: no workers; add at least one [workers.NAME] table",
    );
    check(
        "stop_timeout = \"1s\"\n[defaults]\nmin = 1\n",
        "t.toml:1: workers: no workers; add at least one [workers.NAME] table",
    );
}

#[test]
fn syntax_errors_name_their_line() {
    check(
        "[workers.a]\ncommand = [\"/usr/bin/true\"]\nmin = \n",
        "t.toml:3: invalid TOML: string values must be quoted, expected literal string",
    );
    check(
        "[workers.a]\nmin = 1\nmin = 2\n",
        "t.toml:3: invalid TOML: duplicate key `min`",
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let err = outcome(
        r#"
[defaults]
min = -1
[workers.a]
kind = "stdio"
max = 0
[workers.b]
command = ["/usr/bin/true"]
functions = ["f"]
memory_max = "lots"
"#,
    )
    .unwrap_err();
    let lines: Vec<(usize, &str)> = err
        .issues()
        .iter()
        .map(|i| (i.line, i.key.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        lines,
        [
            (3, "defaults.min"),
            (4, "workers.a.command"),
            (4, "workers.a.functions"),
            (6, "workers.a.max"),
            (10, "workers.b.memory_max"),
        ]
    );
}

#[test]
fn service_name_comes_from_the_file_stem() {
    let text = "[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\n";
    assert_eq!(
        parse(text, Path::new("billing.toml")).unwrap().service,
        "billing"
    );
    let err = parse(text, Path::new("")).unwrap_err();
    assert_eq!(
        err.to_string(),
        ":1: cannot name the service after the file name ``; name the file SERVICE.toml"
    );
}

#[test]
fn same_processes_ignores_pool_sizing_and_limits() {
    let base = parse_ok(DESIGN_EXAMPLE).workers[0].clone();
    let same: &[fn(&mut WorkerConfig)] = &[
        |w| w.min = 0,
        |w| w.max = 99,
        |w| w.idle_timeout = Duration::from_secs(1),
        |w| w.max_lifetime = Some(Duration::from_secs(60)),
        |w| w.max_spawn_rate = 1,
        |w| w.scale_on_queue = false,
        // Sent to the running slots.
        |w| w.pin_cpu = true,
        // For slots started from then on.
        |w| w.ready_timeout = Duration::from_secs(1),
        // Set on the running scopes instead.
        |w| w.memory_max = None,
        |w| w.memory_high = Some(1),
        |w| w.cpu_quota = Some(1),
        |w| w.cpu_weight = Some(1),
        |w| w.tasks_max = Some(1),
    ];
    for change in same {
        let mut other = base.clone();
        change(&mut other);
        assert!(base.same_processes(&other), "{other:?}");
    }
    let different: &[fn(&mut WorkerConfig)] = &[
        |w| w.name = "x".into(),
        |w| w.job_servers.push("b:1".into()),
        |w| w.kind = HandlerKind::Exec,
        |w| w.command.push("-v".into()),
        |w| w.functions.pop().map(drop).unwrap_or(()),
        |w| w.prefix.clear(),
        |w| w.workleft = 0,
        |w| w.timeout = Some(Duration::from_secs(1)),
        |w| {
            w.env.insert("A".into(), "b".into());
        },
        |w| w.working_directory = Some("/srv".into()),
        |w| w.user = Some("u".into()),
        |w| w.group = Some("g".into()),
        |w| w.recycle_rss = Some(1),
        |w| w.max_packet_size = 1,
        |w| w.proxy = !w.proxy,
    ];
    for change in different {
        let mut other = base.clone();
        change(&mut other);
        assert!(!base.same_processes(&other), "{other:?}");
    }
}

#[test]
fn resource_limits_in_systemd_spelling() {
    let config = parse_ok(
        r#"
[defaults]
command = ["/usr/bin/true"]
functions = ["f"]
[workers.none]
[workers.all]
memory_max = "1.5G"
memory_high = 1000
cpu_quota = "150%"
cpu_weight = 50
tasks_max = 64
[workers.unlimited]
memory_max = "infinity"
tasks_max = "infinity"
"#,
    );
    assert!(worker(&config, "none").resource_limits().is_empty());
    assert!(worker(&config, "unlimited").resource_limits().is_empty());
    let all: Vec<(&str, String)> = worker(&config, "all").resource_limits();
    let want = [
        ("MemoryMax", "1536M"),
        ("MemoryHigh", "1000"),
        ("CPUQuota", "150%"),
        ("CPUWeight", "50"),
        ("TasksMax", "64"),
    ];
    assert_eq!(
        all,
        want.map(|(k, v)| (k, v.to_owned())).to_vec(),
        "{config:?}"
    );
}

/// Each key's docs section, as the key table names it, is a heading of
/// docs/configuration.md (so slotman.toml(5) has it too), and each worker
/// key's row in the "Worker keys" table links to it.
#[test]
fn every_key_links_to_its_docs_section() {
    let doc = include_str!("../../docs/configuration.md");
    // GitHub's anchors: lower case, punctuation dropped, spaces as `-`.
    let anchors: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(|heading| {
            heading
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let (top, worker) = super::known_keys();
    for key in top.iter().chain(&worker) {
        let anchor = super::doc_anchor(key).expect("a key of the table");
        assert!(
            anchors.iter().any(|a| a == anchor),
            "`{key}`: no heading with the anchor #{anchor} in docs/configuration.md"
        );
    }
    for key in worker {
        let row = format!("| [`{key}`](#{}) |", super::doc_anchor(key).unwrap_or(""));
        assert!(
            doc.contains(&row),
            "no `{row}` row in the Worker keys table"
        );
    }
}

/// The whole-file examples of docs/configuration.md (code blocks that start
/// with `# /etc/slotman/`) are valid, and the value spellings it shows read
/// as it says.
#[test]
fn documented_examples_are_valid() {
    let doc = include_str!("../../docs/configuration.md");
    let mut examples = 0;
    for block in doc.split("```toml\n").skip(1) {
        let text = block.split("```").next().unwrap_or("");
        if !text.starts_with("# /etc/slotman/") {
            continue;
        }
        examples += 1;
        let name = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("x.toml");
        if let Err(e) = parse(text, Path::new(name)) {
            panic!("{e}\n--- example ---\n{text}");
        }
    }
    assert!(examples >= 2, "examples not found in the doc");

    use super::values::{parse_duration, parse_size};
    assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("1day"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_size("1.5G"), Ok(3 << 29));
    assert_eq!(parse_size("256MiB"), Ok(256 << 20));
    assert!(parse_size("256MB").is_err());
}

#[test]
fn spawn_rate_and_queue_scaling() {
    let cfg = parse(
        "[defaults]\nmax_spawn_rate = 4\n[workers.a]\ncommand = [\"/bin/sh\"]\nfunctions = [\"f\"]\nscale_on_queue = false\n[workers.b]\ncommand = [\"/bin/sh\"]\nfunctions = [\"g\"]\n",
        Path::new("t.toml"),
    )
    .expect("valid");
    let (a, b) = (&cfg.workers[0], &cfg.workers[1]);
    assert_eq!((a.max_spawn_rate, a.scale_on_queue), (4, false));
    assert_eq!((b.max_spawn_rate, b.scale_on_queue), (4, true));
    let err = parse(
        "[workers.a]\ncommand = [\"/bin/sh\"]\nfunctions = [\"f\"]\nscale_on_queue = \"yes\"\nmax_spawn_rate = 0\n",
        Path::new("t.toml"),
    )
    .expect_err("invalid")
    .to_string();
    assert!(err.contains("t.toml:4: workers.a.scale_on_queue"), "{err}");
    assert!(err.contains("t.toml:5: workers.a.max_spawn_rate"), "{err}");
    // Both apply without replacing slots.
    let mut c = a.clone();
    c.max_spawn_rate = 100;
    c.scale_on_queue = true;
    assert!(a.same_processes(&c));
}

#[test]
fn durations_and_sizes_beyond_the_clock_are_refused_with_their_line() {
    check(
        r#"
stop_timeout = 9223372036854775807
[workers.w]
command = ["/usr/bin/true"]
functions = ["f"]
idle_timeout = "500000000000y"
timeout = "101y"
max_lifetime = 3155760001
memory_max = "16E"
recycle_rss = "99999999999999999999999999999999999999999K"
"#,
        r#"
t.toml:2: stop_timeout: 9223372036854775807 seconds is longer than 100 years, the most a duration may be
t.toml:6: workers.w.idle_timeout: `500000000000y` is longer than 100 years, the most a duration may be
t.toml:7: workers.w.timeout: `101y` is longer than 100 years, the most a duration may be
t.toml:8: workers.w.max_lifetime: 3155760001 seconds is longer than 100 years, the most a duration may be
t.toml:9: workers.w.memory_max: `16E` is too large (the most is 16E less one byte)
t.toml:10: workers.w.recycle_rss: `99999999999999999999999999999999999999999K` is too large (the most is 16E less one byte)
"#,
    );
    // The largest of each is taken.
    let config = parse_ok(
        "stop_timeout = \"100y\"\n[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\nidle_timeout = 3155760000\nmemory_max = \"18446744073709551615\"\n",
    );
    assert_eq!(config.stop_timeout, super::values::MAX_DURATION);
    let w = worker(&config, "w");
    assert_eq!(w.idle_timeout, super::values::MAX_DURATION);
    assert_eq!(w.memory_max, Some(u64::MAX));
}

proptest::proptest! {
    /// Any number, as a TOML integer or a string with any unit, in any
    /// duration or size key: `check` answers (never panics), accepts only
    /// what the clock holds, and names the line of what it refuses.
    #[test]
    fn extreme_values_in_any_key_are_checked(
        key in proptest::sample::select(vec![
            "idle_timeout", "timeout", "max_lifetime", "memory_max", "memory_high",
            "recycle_rss", "max_packet_size",
        ]),
        value in proptest::prop_oneof![
            proptest::num::i64::ANY.prop_map(|n| n.to_string()),
            (proptest::num::u128::ANY, proptest::sample::select(vec![
                "", "s", "ms", "ns", "h", "d", "y", "K", "M", "G", "E",
            ])).prop_map(|(n, u)| format!("\"{n}{u}\"")),
        ],
    ) {
        let text = format!(
            "[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\n{key} = {value}\n"
        );
        match outcome(&text) {
            Ok(config) => {
                let w = worker(&config, "w");
                for d in [Some(w.idle_timeout), w.timeout, w.max_lifetime].into_iter().flatten() {
                    proptest::prop_assert!(d <= super::values::MAX_DURATION, "{text}");
                    proptest::prop_assert!(std::time::Instant::now().checked_add(d).is_some());
                }
            }
            Err(e) => proptest::prop_assert!(
                e.to_string().starts_with(&format!("t.toml:4: workers.w.{key}: ")),
                "{e}"
            ),
        }
    }
}

#[test]
fn unknown_users_and_groups_are_refused_at_their_line() {
    check(
        "control_group = \"nosuchgroup\"\n[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\nuser = \"nosuchuser\"\ngroup = \"nosuchgroup\"\n",
        "t.toml:1: control_group: no group \"nosuchgroup\" on this host\nt.toml:5: workers.w.user: no user \"nosuchuser\" on this host\nt.toml:6: workers.w.group: no group \"nosuchgroup\" on this host",
    );
    // Looked up also when another top-level key is bad.
    check(
        "stop_timeout = \"soon\"\ncontrol_group = \"nosuchgroup\"\n[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\n",
        "t.toml:1: stop_timeout: `soon` is not a duration; write it like \"10s\", \"500ms\" or \"1m 30s\"\nt.toml:2: control_group: no group \"nosuchgroup\" on this host",
    );
    // Known names, and numeric ids, pass.
    check(
        "control_group = \"adm\"\n[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
        "ok: 1 worker (w: stdio, 1..4 slots)",
    );
}

// ---- seed-style workers -----------------------------------------------------

/// What `slotman check` prints for `text` with a deep fake host: the error
/// lines or `ok`, then the warnings.
fn check_deep(text: &str) -> String {
    let (result, warnings) =
        super::validate::validate_with_warnings(text, Path::new("t.toml"), Some(&FakeHost));
    let mut out = match result {
        Ok(config) => format!("ok: {}", config.summary()),
        Err(e) => e.to_string(),
    };
    for w in warnings {
        out.push('\n');
        out.push_str(&w);
    }
    out
}

#[test]
fn seed_workers_need_libs_not_a_command() {
    let config = parse_ok("[workers.TestWorker]\nkind = \"perl\"\nlibs = [\"/opt/w\"]\n");
    let w = worker(&config, "TestWorker");
    assert_eq!(w.kind, HandlerKind::Perl);
    assert_eq!(w.command, vec!["perl".to_string()]);
    assert!(w.functions.is_empty(), "every announced method by default");
    assert_eq!(w.libs, vec![std::path::PathBuf::from("/opt/w")]);
    let config = parse_ok(
        "[workers.TestWorker]\nkind = \"python\"\nlibs = [\"/opt/w\"]\ninterpreter = \"/opt/py/bin/python3\"\nfunctions = [\"reverse\"]\n",
    );
    let w = worker(&config, "TestWorker");
    assert_eq!(w.command, vec!["/opt/py/bin/python3".to_string()]);
    assert_eq!(w.functions, vec!["reverse".to_string()]);
    check(
        "[defaults]\ncommand = [\"/usr/bin/true\"]\nlibs = [\"/opt/w\"]\n\
         [workers.TestWorker]\nkind = \"perl\"\n\
         [workers.plain]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\n",
        "ok: 2 workers (TestWorker: perl, 1..4 slots; plain: stdio, 1..4 slots)",
    );
}

#[test]
fn seed_worker_mistakes_name_their_line() {
    check(
        "[workers.TestWorker]\nkind = \"php\"\n",
        "t.toml:1: workers.TestWorker.libs: missing; a php worker needs libs = [\"/opt/workers\"], the directories where its module TestWorker.php is looked for",
    );
    check(
        "[workers.TestWorker]\nkind = \"perl\"\nlibs = [\"/opt/w\"]\ncommand = [\"/usr/bin/perl\"]\n",
        "t.toml:4: workers.TestWorker.command: a perl worker has no command: slotman runs its library on the module TestWorker.pm; `interpreter` chooses the program",
    );
    check(
        "[workers.w]\ncommand = [\"/usr/bin/true\"]\nfunctions = [\"f\"]\nlibs = [\"/opt/w\"]\ninterpreter = \"perl\"\n",
        "t.toml:4: workers.w.libs: only perl, python and php workers have libs, not a stdio worker\n\
         t.toml:5: workers.w.interpreter: only perl, python and php workers have interpreter, not a stdio worker",
    );
    check(
        "[workers.a-b]\nkind = \"python\"\nlibs = [\"opt\", \"/a:b\"]\ninterpreter = \"bin/python\"\n",
        "t.toml:1: workers.a-b.kind: `a-b` cannot name a package or class: the worker's name is its module's name, so use letters, digits and `_` only, not starting with a digit\n\
         t.toml:3: workers.a-b.libs[0]: `opt` must be an absolute path\n\
         t.toml:3: workers.a-b.libs[1]: `/a:b` must not contain `:`\n\
         t.toml:4: workers.a-b.interpreter: `bin/python` is a relative path; give an absolute path, or a bare name to look up on PATH",
    );
    check(
        "[workers.TestWorker]\nkind = \"perl\"\nlibs = []\nfunctions = []\n",
        "t.toml:3: workers.TestWorker.libs: must name at least one directory\n\
         t.toml:4: workers.TestWorker.functions: must not be empty for a perl worker",
    );
}

#[test]
fn seed_modules_are_looked_for_on_the_host() {
    // The module is found in the second directory.
    check(
        "[workers.TestWorker]\nkind = \"perl\"\nlibs = [\"/srv\", \"/opt/w\"]\n",
        "ok: 1 worker (TestWorker: perl, 1..4 slots)",
    );
    check(
        "[workers.TestWorker]\nkind = \"php\"\nlibs = [\"/srv\",\n  \"/nowhere\"]\n",
        "t.toml:3: workers.TestWorker.libs: `/nowhere` does not exist",
    );
    check(
        "[workers.TestWorker]\nkind = \"php\"\nlibs = [\"/srv\", \"/opt/w\"]\n",
        "t.toml:3: workers.TestWorker.libs: no TestWorker.php in /srv, /opt/w: workers.TestWorker runs the class TestWorker from it",
    );
    check(
        "[workers.TestWorker]\nkind = \"perl\"\nlibs = [\"/opt/w\"]\ninterpreter = \"/opt/perl\"\n",
        "t.toml:4: workers.TestWorker.interpreter: `/opt/perl` does not exist",
    );
    check(
        "[workers.TestWorker]\nkind = \"python\"\nlibs = [\"/opt/w\"]\ninterpreter = \"python9\"\n",
        "t.toml:4: workers.TestWorker.interpreter: `python9` is not an executable on PATH (/usr/bin:/bin); give its absolute path",
    );
    // The default interpreter is looked up too, and blamed on `kind`.
    check(
        "[workers.TestWorker]\nkind = \"perl\"\nlibs = [\"/opt/w\"]\nenv = { PATH = \"/opt/bin\" }\n",
        "t.toml:2: workers.TestWorker.kind: `perl` is not an executable on PATH (/opt/bin); give its absolute path",
    );
}

#[test]
fn check_compiles_and_compares_functions() {
    assert_eq!(
        check_deep("[workers.Broken]\nkind = \"perl\"\nlibs = [\"/srv\"]\n"),
        "t.toml:3: workers.Broken.libs: /srv/Broken.pm does not compile: syntax error at /srv/Broken.pm line 3"
    );
    assert_eq!(
        check_deep(
            "[workers.TestWorker]\nkind = \"perl\"\nlibs = [\"/opt/w\"]\nfunctions = [\"reverse\",\n  \"rverse\"]\n"
        ),
        "ok: 1 worker (TestWorker: perl, 1..4 slots)\n\
         t.toml:5: workers.TestWorker.functions[1]: warning: TestWorker has no public method `rverse` (it has reverse, wait): not registered"
    );
}
