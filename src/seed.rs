//! The seed-style worker libraries (`kind = "perl" | "python" | "php"`):
//! their sources, built into the binary from `lib/`, written where the
//! interpreters can read them, and the command lines that run a worker's
//! module on them or check it.
//!
//! Why built in: the library speaks the stdio framing of the runner that
//! starts it, so it must be the one of the running slotman, whether slotman
//! came from the package, `install.sh` or `cargo run` in a checkout. Each
//! process that needs it writes the files once per library version to
//! `$TMPDIR/slotman-UID/lib-HASH/` (HASH of the contents, so an upgrade
//! under running slots puts the new version beside the old), in a directory
//! only its user can write (checked, never trusted: see [`library_dir`]) and
//! everyone can read (handlers may run as another `user`). The copies the
//! package installs under the languages' own paths are for developers'
//! editors and tests; slotman itself never loads them, because its own
//! directory comes first on the search path.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The library files, by path under the library directory.
const FILES: &[(&str, &str)] = &[
    (
        "perl/Slotman/Worker.pm",
        include_str!("../lib/perl/Slotman/Worker.pm"),
    ),
    (
        "python/slotman/__init__.py",
        include_str!("../lib/python/slotman/__init__.py"),
    ),
    (
        "php/Slotman/Worker.php",
        include_str!("../lib/php/Slotman/Worker.php"),
    ),
];

/// The languages a seed-style worker can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Perl,
    Python,
    Php,
}

impl Language {
    /// The interpreter run when the worker sets no `interpreter`.
    pub fn default_interpreter(self) -> &'static str {
        match self {
            Language::Perl => "perl",
            Language::Python => "python3",
            Language::Php => "php",
        }
    }

    /// The file that holds worker `name`'s module.
    pub fn module_file(self, name: &str) -> String {
        match self {
            Language::Perl => format!("{name}.pm"),
            Language::Python => format!("{name}.py"),
            Language::Php => format!("{name}.php"),
        }
    }

    /// The base class, as a worker names it.
    pub fn base_class(self) -> &'static str {
        match self {
            Language::Perl => "Slotman::Worker",
            Language::Python => "slotman.Worker",
            Language::Php => "\\Slotman\\Worker",
        }
    }
}

/// Whether `name` can name a worker's package or class: the module is
/// found by it, and the language must accept it as one identifier.
pub fn check_worker_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` cannot name a package or class: the worker's name is its module's name, \
             so use letters, digits and `_` only, not starting with a digit"
        ))
    }
}

/// The first of `libs` that holds worker `name`'s module file.
pub fn find_module(language: Language, libs: &[PathBuf], name: &str) -> Option<PathBuf> {
    let file = language.module_file(name);
    libs.iter().map(|dir| dir.join(&file)).find(|p| p.is_file())
}

/// The interpreter's arguments that serve worker `name` over the stdio
/// framing (`list`: print its functions instead, for `slotman check`),
/// with `lib` the library directory and `libs` the worker's.
pub fn worker_args(
    language: Language,
    lib: &Path,
    libs: &[PathBuf],
    name: &str,
    list: bool,
) -> Vec<String> {
    let lib = lib.to_string_lossy();
    let libs = libs.iter().map(|p| p.to_string_lossy().into_owned());
    let list = list.then(|| "--list".to_string());
    match language {
        // Our directory first: an older copy installed elsewhere never wins.
        Language::Perl => std::iter::once(format!("-I{lib}/perl"))
            .chain(libs.map(|l| format!("-I{l}")))
            .chain([
                "-MSlotman::Worker".into(),
                "-e".into(),
                "exit Slotman::Worker::_main(@ARGV)".into(),
                "--".into(),
            ])
            .chain(list)
            .chain([name.to_string()])
            .collect(),
        // sys.path = ours, the libs, then the interpreter's own without the
        // current directory that `-c` would put first.
        Language::Python => [
            "-c".to_string(),
            "import sys;n=sys.argv.index('--');sys.path[:]=sys.argv[n+1:]+[p for p in sys.path if p];\
             import slotman;sys.exit(slotman._main(sys.argv[1:n]))"
                .into(),
        ]
        .into_iter()
        .chain(list)
        .chain([name.to_string(), "--".into(), format!("{lib}/python")])
        .chain(libs)
        .collect(),
        // display_errors before anything runs: PHP prints warnings to stdout.
        Language::Php => [
            "-d".to_string(),
            "display_errors=stderr".into(),
            "-r".into(),
            "require $argv[1]; exit(\\Slotman\\main(array_slice($argv, 2)));".into(),
            "--".into(),
            format!("{lib}/php/Slotman/Worker.php"),
        ]
        .into_iter()
        .chain(list)
        .chain([name.to_string()])
        .chain(libs)
        .collect(),
    }
}

/// The interpreter's arguments that check `file` compiles, without
/// writing anything next to it (Python compiles in memory, not through
/// py_compile's `__pycache__`). Perl's `-c` runs the module's `BEGIN`
/// blocks and `use` lines, as loading it would.
pub fn compile_args(language: Language, lib: &Path, libs: &[PathBuf], file: &Path) -> Vec<String> {
    let file = file.to_string_lossy().into_owned();
    match language {
        Language::Perl => std::iter::once(format!("-I{}/perl", lib.to_string_lossy()))
            .chain(libs.iter().map(|l| format!("-I{}", l.to_string_lossy())))
            .chain(["-c".into(), file])
            .collect(),
        Language::Python => vec![
            "-c".into(),
            "import sys\ntry:\n compile(open(sys.argv[1],'rb').read(),sys.argv[1],'exec')\n\
             except SyntaxError as e:\n sys.exit('%s line %s: %s' % (e.filename, e.lineno, e.msg))"
                .into(),
            file,
        ],
        Language::Php => vec!["-l".into(), file],
    }
}

/// The library's files written out, if this process has not done so
/// already; the directory holding them (`DIR/perl`, `DIR/python`,
/// `DIR/php`).
///
/// The directory is `$TMPDIR/slotman-UID/lib-HASH`. `slotman-UID` must be a
/// real directory owned by this user and writable by nobody else (a
/// directory someone else planted in a shared `/tmp` is refused); the
/// library's files are compared with the built-in ones each time, and a
/// copy that differs (or is missing) is written anew beside it and
/// renamed into place, so concurrent slots never see half a library.
pub fn library_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("slotman-{}", nix::unistd::geteuid()));
    library_dir_in(&base)
}

/// [`library_dir`] under `base`.
pub fn library_dir_in(base: &Path) -> io::Result<PathBuf> {
    match std::fs::create_dir(base) {
        Ok(()) => std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(base)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory that only this user can write; remove it",
            base.display()
        )));
    }
    let dir = base.join(format!("lib-{:016x}", contents_hash()));
    if holds_library(&dir) {
        return Ok(dir);
    }
    // Written aside and renamed: another slot may be doing the same now.
    let fresh = base.join(format!(
        ".lib-{:016x}-{}",
        contents_hash(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&fresh);
    write_library(&fresh)?;
    if std::fs::rename(&fresh, &dir).is_err() {
        // Taken by another process meanwhile, or a damaged copy in the way.
        let _ = std::fs::remove_dir_all(&fresh);
        if !holds_library(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
            write_library(&fresh)?;
            std::fs::rename(&fresh, &dir)?;
        }
    }
    Ok(dir)
}

/// Whether `dir` holds exactly the built-in library.
fn holds_library(dir: &Path) -> bool {
    FILES.iter().all(|(path, text)| {
        std::fs::read(dir.join(path)).is_ok_and(|found| found == text.as_bytes())
    })
}

fn write_library(dir: &Path) -> io::Result<()> {
    for (path, text) in FILES {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, text)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    }
    // Readable by the users handlers run as, whatever the umask.
    let mut dirs: Vec<PathBuf> = FILES
        .iter()
        .flat_map(|(path, _)| {
            Path::new(path)
                .ancestors()
                .skip(1)
                .map(|a| dir.join(a))
                .collect::<Vec<_>>()
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// FNV-1a over the files' paths and contents: names the library version.
fn contents_hash() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, text) in FILES {
        for b in path.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_library_once_and_repairs_it() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("slotman-test");
        let dir = library_dir_in(&base).unwrap();
        assert!(holds_library(&dir));
        let pm = dir.join("perl/Slotman/Worker.pm");
        let mode = std::fs::metadata(&pm).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let mode = std::fs::metadata(&base).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // A damaged copy is replaced, at the same place.
        std::fs::write(&pm, "package Slotman::Worker; die;").unwrap();
        assert_eq!(library_dir_in(&base).unwrap(), dir);
        assert!(holds_library(&dir));
        // Nothing is left aside.
        let names: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn refuses_a_base_others_can_write() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("slotman-test");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = library_dir_in(&base).unwrap_err();
        assert!(err.to_string().contains("only this user"), "{err}");
        // A symlink to a good directory is refused too.
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(library_dir_in(&link).is_err());
    }

    #[test]
    fn worker_names_are_identifiers() {
        assert!(check_worker_name("TestWorker").is_ok());
        assert!(check_worker_name("_w2").is_ok());
        for bad in ["", "2w", "a-b", "a.b", "résumé"] {
            assert!(check_worker_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_hash_names_the_contents() {
        assert_eq!(contents_hash(), contents_hash());
        assert_ne!(contents_hash(), 0xcbf2_9ce4_8422_2325);
    }
}
