//! `slotman check FILE` from the outside: the library entry points on real
//! files, and the binary's contract (DESIGN.md "Contracts": exit 0 when valid,
//! 1 when invalid with `FILE:LINE: ...` on stderr).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use slotman::config::{self, ConfigError};

/// A temporary directory holding an executable handler script.
struct Scratch {
    dir: tempfile::TempDir,
    handler: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        let handler = dir.path().join("handler");
        std::fs::write(&handler, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&handler, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { dir, handler }
    }

    /// Writes `text` to `NAME.toml`; `{handler}` becomes the script's path.
    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        let text = text.replace("{handler}", self.handler.to_str().unwrap());
        std::fs::write(&path, text).unwrap();
        path
    }
}

const VALID: &str = r#"
[defaults]
min = 2

[workers.resize]
command = ["{handler}", "--fast"]
functions = ["resize"]
"#;

/// Line 3: a program that is not there; line 5: a bad size; line 7: an
/// unknown key.
const INVALID: &str = r#"
[workers.resize]
command = ["/nonexistent/slotman-test/handler"]
functions = ["resize"]
memory_max = "lots"
[workers.crop]
colour = "red"
command = ["{handler}"]
functions = ["crop"]
"#;

#[test]
fn load_reads_a_valid_file() {
    let scratch = Scratch::new();
    let path = scratch.config("billing", VALID);
    let config = config::load(&path).unwrap();
    assert_eq!(config.service, "billing");
    assert_eq!(config.path, path);
    let resize = config.worker("resize").unwrap();
    assert_eq!(resize.command[0], scratch.handler.to_str().unwrap());
    assert_eq!((resize.min, resize.max), (2, 4));
    assert_eq!(resize.registered_name("resize"), "resize::resize");
}

#[test]
fn check_summarises_a_valid_file() {
    let scratch = Scratch::new();
    let path = scratch.config("billing", VALID);
    assert_eq!(
        config::check(&path).0.unwrap(),
        format!(
            "{}: ok: 1 worker (resize: stdio, 2..4 slots)",
            path.display()
        )
    );
}

#[test]
fn check_reports_every_problem_with_file_and_line() {
    let scratch = Scratch::new();
    let path = scratch.config("billing", INVALID);
    let err = config::check(&path).0.unwrap_err();
    let p = path.display();
    assert_eq!(
        err.to_string(),
        format!(
            "{p}:3: workers.resize.command: `/nonexistent/slotman-test/handler` does not exist\n\
             {p}:5: workers.resize.memory_max: `lots` is not a size; write it like \"512K\", \"256M\" or \"1G\"\n\
             {p}:7: workers.crop.colour: unknown key"
        )
    );
    assert_eq!(err.issues().len(), 3);
}

#[test]
fn a_command_that_is_not_executable_is_an_error() {
    let scratch = Scratch::new();
    std::fs::set_permissions(&scratch.handler, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = scratch.config("billing", VALID);
    let err = config::load(&path).unwrap_err();
    assert_eq!(err.issues().len(), 1);
    assert_eq!(err.issues()[0].line, 6);
    assert!(err.to_string().ends_with("is not executable"), "{err}");
}

#[test]
fn parse_leaves_the_host_alone() {
    // The same text that `load` refuses for its missing program.
    let text = "[workers.w]\ncommand = [\"/nonexistent/x\"]\nfunctions = [\"f\"]\n";
    assert!(config::parse(text, Path::new("w.toml")).is_ok());
}

#[test]
fn a_missing_file_is_a_read_error() {
    let scratch = Scratch::new();
    let path = scratch.dir.path().join("nope.toml");
    match config::load(&path) {
        Err(ConfigError::Read { error, .. }) => {
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("{other:?}"),
    }
}

fn slotman_check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slotman"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run slotman")
}

#[test]
fn binary_check_exits_1_with_file_and_line_on_stderr() {
    let scratch = Scratch::new();
    let path = scratch.config("billing", INVALID);
    let out = slotman_check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    for line in [3, 5, 7] {
        let want = format!("{}:{line}: ", path.display());
        assert!(stderr.contains(&want), "no {want:?} in stderr: {stderr}");
    }
}

#[test]
fn binary_check_exits_0_when_valid() {
    let scratch = Scratch::new();
    let path = scratch.config("billing", VALID);
    let out = slotman_check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn binary_check_refuses_a_duration_the_clock_cannot_hold() {
    let scratch = Scratch::new();
    let path = scratch.config(
        "billing",
        "[workers.resize]\ncommand = [\"{handler}\"]\nfunctions = [\"resize\"]\nidle_timeout = \"500000000000y\"\n",
    );
    let out = slotman_check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let want = format!(
        "{}:4: workers.resize.idle_timeout: `500000000000y` is longer than 100 years",
        path.display()
    );
    assert!(stderr.contains(&want), "no {want:?} in stderr: {stderr}");
}

#[test]
fn check_and_run_refuse_what_the_host_lacks_and_run_exits_78() {
    let scratch = Scratch::new();
    let cases = [
        ("user", "[workers.w]\ncommand = [\"{handler}\"]\nfunctions = [\"f\"]\nuser = \"nosuchuser-slotman\"\n", "w.toml:4: workers.w.user: no user"),
        ("group", "[workers.w]\ncommand = [\"{handler}\"]\nfunctions = [\"f\"]\ngroup = \"nosuchgroup-slotman\"\n", "w.toml:4: workers.w.group: no group"),
        ("control_group", "control_group = \"nosuchgroup-slotman\"\n[workers.w]\ncommand = [\"{handler}\"]\nfunctions = [\"f\"]\n", "w.toml:1: control_group: no group"),
        ("program", "[workers.w]\ncommand = [\"/nonexistent/slotman-test/run\"]\nfunctions = [\"f\"]\n", "w.toml:2: workers.w.command"),
        ("working_directory", "[workers.w]\ncommand = [\"{handler}\"]\nfunctions = [\"f\"]\nworking_directory = \"/nonexistent/slotman-test\"\n", "w.toml:4: workers.w.working_directory"),
    ];
    for (what, text, expect) in cases {
        let path = scratch.config("w", text);
        let out = Command::new(env!("CARGO_BIN_EXE_slotman"))
            .arg("check")
            .arg(&path)
            .output()
            .expect("slotman check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(expect), "{what}: {stderr}");
        let run = Command::new(env!("CARGO_BIN_EXE_slotman"))
            .args(["run", "--placement", "child", "--runtime-dir"])
            .arg(scratch.dir.path())
            .arg("--config")
            .arg(&path)
            .output()
            .expect("slotman run");
        assert_eq!(
            run.status.code(),
            Some(78),
            "{what}: run must exit 78 (EX_CONFIG): {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

#[test]
fn check_takes_a_service_name_like_run() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // Writing /etc/slotman needs root; CI runs as root.
    }
    let scratch = Scratch::new();
    let name = format!("slotman-check-test-{}", std::process::id());
    let path = PathBuf::from(format!("/etc/slotman/{name}.toml"));
    std::fs::create_dir_all("/etc/slotman").expect("mkdir /etc/slotman");
    let text = VALID.replace("{handler}", scratch.handler.to_str().expect("utf-8"));
    std::fs::write(&path, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_slotman"))
        .args(["check", &name])
        .output()
        .expect("slotman check");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{name}.toml: ok")));
}
