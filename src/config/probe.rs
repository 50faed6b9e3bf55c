//! The only part of config checking that looks at the host: does a command's
//! program exist and is it executable, does a working directory exist, do
//! the users and groups named exist.
//! Validation asks through [`Probe`], so it stays testable with a fake host.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
}

/// The real file system and environment.
pub(crate) struct Host;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sees_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("run");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(Host.executable(&script), Err("is not executable".into()));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(Host.executable(&script), Ok(()));
        assert_eq!(Host.executable(dir.path()), Err("is not a file".into()));
        assert_eq!(
            Host.executable(&dir.path().join("nope")),
            Err("does not exist".into())
        );
        assert_eq!(Host.directory(dir.path()), Ok(()));
        assert_eq!(Host.directory(&script), Err("is not a directory".into()));
    }
}
