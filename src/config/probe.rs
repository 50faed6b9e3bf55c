//! The only part of config checking that looks at the host: does a command's
//! program exist and is it executable, does a working directory exist, do
//! the users and groups named exist, is a seed-style worker's module there
//! (and for `slotman check`: does it compile, which methods does it have).
//! Validation asks through [`Probe`], so it stays testable with a fake host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::seed::Language;

/// How long `slotman check` lets an interpreter compile or list a module.
const SEED_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Questions validation asks about the machine the slots will run on.
pub(crate) trait Probe {
    /// `Ok` when `program` (an absolute path) is an executable file; else
    /// why not, as a message fragment ("does not exist").
    fn executable(&self, program: &Path) -> Result<(), String>;
    /// `Ok` when `dir` is an existing directory.
    fn directory(&self, dir: &Path) -> Result<(), String>;
    /// The `PATH` handlers inherit when their worker's `env` sets none.
    fn search_path(&self) -> Option<String>;
    /// `Ok` when the user (`group`: false) or group named exists; a
    /// numeric id is taken as it is.
    fn account(&self, name: &str, group: bool) -> Result<(), String>;
    /// Whether `path` is a file.
    fn is_file(&self, path: &Path) -> bool;
    /// For a seed-style worker whose module is `file`: `Err` when it does
    /// not compile (why, in the interpreter's words); else the functions
    /// it announces, when this probe looks that deep (`None` otherwise).
    fn seed_module(
        &self,
        _language: Language,
        _interpreter: &Path,
        _libs: &[PathBuf],
        _name: &str,
        _file: &Path,
    ) -> Result<Option<Vec<String>>, String> {
        Ok(None)
    }
}

/// The real file system and environment. `deep`: also run the
/// interpreters on seed-style workers' modules (`slotman check` only: Perl
/// runs a module's `BEGIN` blocks, Python and PHP its top-level code).
pub(crate) struct Host {
    pub deep: bool,
}

impl Probe for Host {
    fn executable(&self, program: &Path) -> Result<(), String> {
        let meta = std::fs::metadata(program).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_owned(),
            _ => format!("cannot be examined: {e}"),
        })?;
        if !meta.is_file() {
            return Err("is not a file".into());
        }
        // Any execute bit, not access(2): the checker may be root or another
        // user than the worker's `user`, so its own rights prove nothing.
        if meta.permissions().mode() & 0o111 == 0 {
            return Err("is not executable".into());
        }
        Ok(())
    }

    fn directory(&self, dir: &Path) -> Result<(), String> {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err("is not a directory".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("does not exist".into()),
            Err(e) => Err(format!("cannot be examined: {e}")),
        }
    }

    fn search_path(&self) -> Option<String> {
        std::env::var("PATH").ok()
    }

    fn account(&self, name: &str, group: bool) -> Result<(), String> {
        if name.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(());
        }
        let found = match group {
            true => nix::unistd::Group::from_name(name).map(|g| g.is_some()),
            false => nix::unistd::User::from_name(name).map(|u| u.is_some()),
        };
        let what = if group { "group" } else { "user" };
        match found {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("no {what} {name:?} on this host")),
            Err(e) => Err(format!("cannot look up {what} {name:?}: {e}")),
        }
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn seed_module(
        &self,
        language: Language,
        interpreter: &Path,
        libs: &[PathBuf],
        name: &str,
        file: &Path,
    ) -> Result<Option<Vec<String>>, String> {
        if !self.deep {
            return Ok(None);
        }
        let lib = crate::seed::library_dir()
            .map_err(|e| format!("cannot write slotman's {language:?} library: {e}"))?;
        let compile = crate::seed::compile_args(language, &lib, libs, file);
        let out = run_bounded(interpreter, &compile, false)?;
        if !out.status.success() {
            return Err(format!(
                "{} does not compile: {}",
                file.display(),
                last_words(&out.stderr, &out.stdout)
            ));
        }
        let list = crate::seed::worker_args(language, &lib, libs, name, true);
        // -B: Python writes no __pycache__ next to the module.
        let out = run_bounded(interpreter, &list, language == Language::Python)?;
        if !out.status.success() {
            return Err(format!(
                "{} does not load: {}",
                file.display(),
                last_words(&out.stderr, &out.stdout)
            ));
        }
        Ok(Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// Runs `program args` (`-B` first when `no_bytecode`) with no input, for
/// at most [`SEED_CHECK_TIMEOUT`]; its output.
fn run_bounded(
    program: &Path,
    args: &[String],
    no_bytecode: bool,
) -> Result<std::process::Output, String> {
    let mut cmd = Command::new(program);
    if no_bytecode {
        cmd.arg("-B");
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", program.display()))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(SEED_CHECK_TIMEOUT) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("running `{}` failed: {e}", program.display())),
        Err(_) => {
            // Still our unreaped child (the thread waits for it): the pid is its.
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Err(format!(
                "`{}` did not finish within {}s",
                program.display(),
                SEED_CHECK_TIMEOUT.as_secs()
            ))
        }
    }
}

/// An interpreter's complaint on one line: the last few lines of its
/// stderr (else stdout), joined.
fn last_words(stderr: &[u8], stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr });
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut words = lines[lines.len().saturating_sub(4)..].join("; ");
    if words.len() > 600 {
        let mut end = 600;
        while !words.is_char_boundary(end) {
            end -= 1;
        }
        words.truncate(end);
        words.push('…');
    }
    if words.is_empty() {
        "(no message)".into()
    } else {
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_words_are_the_last_lines() {
        let err = b"a\n\nb\nc\nd\ne\n";
        assert_eq!(last_words(err, b""), "b; c; d; e");
        assert_eq!(last_words(b"", b"only\n"), "only");
        assert_eq!(last_words(b"", b""), "(no message)");
        let long = "é".repeat(400);
        assert!(last_words(long.as_bytes(), b"").ends_with('…'));
    }

    #[test]
    fn host_sees_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let host = Host { deep: false };
        assert_eq!(host.executable(&script), Err("is not executable".into()));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(host.executable(&script), Ok(()));
        assert_eq!(host.executable(dir.path()), Err("is not a file".into()));
        assert_eq!(
            host.executable(&dir.path().join("nope")),
            Err("does not exist".into())
        );
        assert_eq!(host.directory(dir.path()), Ok(()));
        assert_eq!(host.directory(&script), Err("is not a directory".into()));
        assert!(host.is_file(&script));
        assert!(!host.is_file(dir.path()));
    }
}
