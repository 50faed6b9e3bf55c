//! Green runs print nothing but the harness's own lines; a failing test
//! shows what explains it.
//!
//! A child process's stderr goes to a [`ChildLog`], printed only if the test
//! that holds it panics. A test's own notes go through [`show`]: captured by
//! the harness (and so shown only with a failure, or with `--nocapture`)
//! unless `SLOTMAN_TEST_SHOW` asks to see them in every run.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

/// A file that child processes write their stderr to, printed under
/// `label` when dropped during a panic (the test failed), else discarded.
pub struct ChildLog {
    label: String,
    file: tempfile::NamedTempFile,
}

impl ChildLog {
    pub fn new(label: &str) -> ChildLog {
        let file = tempfile::Builder::new()
            .prefix("slotman-test-")
            .suffix(".log")
            .tempfile()
            .expect("a temp file for a child's stderr");
        ChildLog {
            label: label.to_string(),
            file,
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// For `Command::stderr`: appends to the log.
    pub fn stdio(&self) -> Stdio {
        OpenOptions::new()
            .append(true)
            .open(self.path())
            .expect("opening a child's log")
            .into()
    }

    /// `command` with its stderr appended to the log: `sh` redirects and
    /// execs it (same pid, argv, environment), for a child that code under
    /// test spawns with stderr inherited.
    pub fn wrap(&self, command: &[&str]) -> Vec<String> {
        let path = self.path().to_str().expect("a UTF-8 temp path");
        [
            "/bin/sh",
            "-c",
            r#"log=$1; shift; exec "$@" 2>>"$log""#,
            "sh",
            path,
        ]
        .into_iter()
        .chain(command.iter().copied())
        .map(str::to_string)
        .collect()
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(self.path()).unwrap_or_else(|e| format!("(cannot read: {e})"))
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.label, self.text().trim_end());
        }
    }
}

/// A test's note (a timing, a journal excerpt): on stderr in every run with
/// `SLOTMAN_TEST_SHOW` set, otherwise captured by the harness and shown only
/// if the test fails. Threads a test spawns share its capture.
pub fn show(note: &str) {
    if std::env::var_os("SLOTMAN_TEST_SHOW").is_some() {
        let _ = writeln!(std::io::stderr(), "{note}");
    } else {
        eprintln!("{note}");
    }
}
