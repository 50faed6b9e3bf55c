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
        config::check(&path).unwrap(),
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
    let err = config::check(&path).unwrap_err();
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
