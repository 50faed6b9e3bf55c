//! The Debian package (packaging/build-deb) as a user meets it: what it
//! holds, what lintian says of it, and its life in a booted systemd
//! (`tests/harness/sdbox`) with Debian's gearmand: installed, used,
//! upgraded and removed while jobs run, purged. Also what the package is
//! made from and needs no package to check: every config key documented
//! (slotman.toml(5) is rendered from that page), the man pages render
//! without a groff warning, the bash completion completes; and
//! `packaging/install.sh --uninstall` under running instances.
//!
//! The package is `SLOTMAN_TEST_DEB`, else the newest
//! `TARGET/debian/slotman_*.deb`: `.ci/run` builds it with
//! packaging/build-deb before `cargo test` (its fat-LTO build takes
//! minutes). Without one the "package" tier is skipped, or fails under
//! `SLOTMAN_TEST_REQUIRE=all|package`. The upgrade installs a second
//! package repacked from the first with a higher version (dpkg-deb), so it
//! costs no second build: whether an instance runs the new binary is told
//! by the file (inode) its processes run, which dpkg replaces.
//!
//! Notes (the lifecycle's transcript, the package's size, lintian's
//! output) go to `common::quiet::show`: printed with a failure, or always
//! with `SLOTMAN_TEST_SHOW=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::quiet::show;
use common::sdbox::{describe, Bind, OutputExt, SdBox};
use common::skip;

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
/// A unit starting or stopping, a job being picked up: how long it may take.
const SETTLE: Duration = Duration::from_secs(30);
/// The long job that upgrade and removal must wait for, in seconds.
const LONG_JOB_SECS: u32 = 6;

/// The package under test, or `None` after skipping (or failing) the tier.
fn package() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLOTMAN_TEST_DEB") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SLOTMAN_TEST_DEB={} is not a file",
            p.display()
        );
        return Some(p);
    }
    let newest = std::fs::read_dir(target_dir().join("debian"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("slotman_") && name.ends_with(".deb")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    if newest.is_none() {
        skip(
            "package",
            "no package: run packaging/build-deb first (or set SLOTMAN_TEST_DEB)",
        );
    }
    newest
}

/// Cargo's target directory: where build-deb leaves its package.
fn target_dir() -> PathBuf {
    let bin = common::slotman_bin();
    bin.ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .expect("the test binary lives in TARGET/PROFILE/")
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    out
}

/// `slotman generate WHAT` into a fresh directory.
fn generated(what: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    run(Command::new(common::slotman_bin())
        .args(["generate", what])
        .arg(dir.path()));
    dir
}

/// The part of a markdown `doc` under `heading` (such as `## Worker keys`),
/// up to the next heading of its level or above.
fn doc_section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no `{heading}` heading"));
    let rest = &doc[start + 1 + heading.len()..];
    let level = heading.bytes().take_while(|&b| b == b'#').count();
    let end = (1..=level)
        .filter_map(|l| rest.find(&format!("\n{} ", "#".repeat(l))))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Every key `slotman check` accepts has its place in
/// docs/configuration.md (a `###` section for a top-level key, a row of
/// the worker-key table for the others), and so in slotman.toml(5), which
/// is rendered from it. A key added without docs fails here.
#[test]
fn every_config_key_is_in_the_reference_and_its_man_page() {
    let doc = std::fs::read_to_string(Path::new(MANIFEST).join("docs/configuration.md"))
        .expect("reading docs/configuration.md");
    let man_dir = generated("man");
    let page = std::fs::read_to_string(man_dir.path().join("slotman.toml.5"))
        .expect("slotman.toml.5 was generated");
    let (top, worker) = slotman::config::known_keys();
    let mut missing = Vec::new();
    let top_doc = doc_section(&doc, "## Top-level keys");
    for key in top
        .iter()
        .filter(|k| !matches!(**k, "defaults" | "workers"))
    {
        if !top_doc.contains(&format!("\n### `{key}`\n")) {
            missing.push(format!(
                "top-level `{key}`: no `### `{key}`` under Top-level keys"
            ));
        }
        if !page.contains(&format!("\n.SS {key}\n")) {
            missing.push(format!("top-level `{key}`: no .SS in slotman.toml(5)"));
        }
    }
    let worker_doc = doc_section(&doc, "## Worker keys");
    for key in worker {
        let row = worker_doc.lines().any(|l| {
            l.starts_with(&format!("| [`{key}`](")) || l.starts_with(&format!("| `{key}` |"))
        });
        if !row {
            missing.push(format!(
                "worker key `{key}`: no row in the Worker keys table"
            ));
        }
        if !page.contains(&format!(".TP\n\\fB{key}\\fR\n")) {
            missing.push(format!("worker key `{key}`: no entry in slotman.toml(5)"));
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented keys:\n{}",
        missing.join("\n")
    );
}

/// The generated man pages format without one groff warning (lintian's
/// own check), their NAME lines parse for whatis (lexgrog), and every
/// command users see has its page.
#[test]
fn the_man_pages_render_cleanly_and_every_command_has_one() {
    if !common::tool_on_path("man") || !common::tool_on_path("lexgrog") {
        skip("package", "man-db is not installed (apt install man-db)");
        return;
    }
    let dir = generated("man");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("listing the pages")
        .flatten()
        .map(|e| e.path())
        .collect();
    pages.sort();
    for command in [
        "run", "check", "status", "reload", "restart", "drain", "pause", "resume", "demo",
    ] {
        assert!(
            dir.path().join(format!("slotman-{command}.1")).is_file(),
            "no page for slotman {command}: {pages:?}"
        );
    }
    for hidden in ["slot", "demo-handler", "generate"] {
        assert!(
            !dir.path().join(format!("slotman-{hidden}.1")).exists(),
            "a page for the internal command {hidden}"
        );
    }
    for page in &pages {
        let out = run(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(page)
            .env("LC_ALL", "C.UTF-8")
            .env("MANROFFSEQ", "")
            .env("MANWIDTH", "80"));
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(
            warnings.trim().is_empty(),
            "{}: groff says:\n{warnings}",
            page.display()
        );
        run(Command::new("lexgrog").arg(page));
    }
    let out = run(Command::new("man")
        .arg("-l")
        .arg(dir.path().join("slotman.toml.5"))
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WORKER KEYS") && text.contains("idle_timeout"),
        "{text}"
    );
}

/// `slotman generate` where nothing can be written: exit 1, and the
/// reason with the directory, not a panic.
#[test]
fn generate_into_a_place_that_cannot_be_written_fails_clearly() {
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    let dir = file.path().join("man");
    for what in ["man", "completions"] {
        let out = Command::new(common::slotman_bin())
            .args(["generate", what])
            .arg(&dir)
            .output()
            .expect("running slotman generate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            stderr.contains(&format!("writing into {}", dir.display()))
                && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

/// The bash completion, sourced into bash, completes the commands.
#[test]
fn the_bash_completion_completes_commands() {
    let dir = generated("completions");
    for f in ["slotman.bash", "_slotman", "slotman.fish"] {
        let text = std::fs::read_to_string(dir.path().join(f)).expect("a completion file");
        assert!(
            text.contains("status") && text.contains("reload"),
            "{f}: {text}"
        );
        assert!(
            !text.contains("demo-handler"),
            "{f} completes an internal command"
        );
    }
    let complete =
        |line: &str| {
            let words: Vec<&str> = line.split(' ').collect();
            let script =
                format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
             _slotman slotman '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            dir.path().join("slotman.bash").display(),
            words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
            words.len() - 1,
            line.len(),
            words[words.len() - 1],
            words[words.len() - 2],
        );
            let out = run(Command::new("bash").args(["--norc", "-c", &script]));
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
    assert_eq!(
        complete("slotman st"),
        ["status"],
        "completions of `slotman st`"
    );
    let commands = complete("slotman ");
    for visible in ["run", "check", "status", "reload", "demo"] {
        assert!(
            commands.iter().any(|c| c == visible),
            "no {visible} in {commands:?}"
        );
    }
    for hidden in ["slot", "demo-handler", "generate"] {
        assert!(
            !commands.iter().any(|c| c == hidden),
            "{hidden} offered: {commands:?}"
        );
    }
}

/// The package's files, control fields and conffiles: what DESIGN.md's
/// Packaging contract and the issue name.
#[test]
fn the_package_holds_what_the_contract_names() {
    let Some(deb) = package() else { return };
    let size = std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    show(&format!("package: {} ({} bytes)", deb.display(), size));
    let list = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let list = String::from_utf8_lossy(&list.stdout);
    let files: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.'))
        .collect();
    for want in [
        "/usr/bin/slotman",
        "/usr/libexec/slotman/slotman-slot",
        "/lib/systemd/system/slotman@.service",
        "/lib/systemd/system/slotman.slice",
        "/etc/slotman/example.toml",
        "/usr/share/man/man1/slotman.1.gz",
        "/usr/share/man/man1/slotman-run.1.gz",
        "/usr/share/man/man5/slotman.toml.5.gz",
        "/usr/share/bash-completion/completions/slotman",
        "/usr/share/zsh/vendor-completions/_slotman",
        "/usr/share/fish/vendor_completions.d/slotman.fish",
        "/usr/share/slotman/examples/python/worker.py",
        "/usr/share/slotman/examples/perl/worker.pl",
        "/usr/share/slotman/examples/php/worker.php",
        "/usr/share/slotman/examples/shell/reverse.sh",
        "/usr/share/doc/slotman/copyright",
        "/usr/share/doc/slotman/changelog.Debian.gz",
        "/usr/share/doc/slotman/configuration.md",
        "/usr/share/perl5/Slotman/Worker.pm",
        "/usr/lib/python3/dist-packages/slotman/__init__.py",
        "/usr/share/php/Slotman/Worker.php",
    ] {
        assert!(files.contains(&want), "the package has no {want}:\n{list}");
    }
    let conffiles = run(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout).trim(),
        "/etc/slotman/example.toml",
        "the conffiles"
    );
    let field = |name: &str| {
        let out = run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "slotman");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let depends = field("Depends");
    for dep in ["libc6", "systemd", "dbus"] {
        assert!(depends.contains(dep), "Depends: {depends}");
    }
    for script in ["postinst", "prerm", "postrm"] {
        let out = run(Command::new("dpkg-deb").arg("--info").arg(&deb).arg(script));
        assert!(!out.stdout.is_empty(), "no {script}");
    }

    // Stripped: no symbol table in either binary.
    let root = tempfile::tempdir().expect("a temp dir");
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(root.path()));
    for bin in ["usr/bin/slotman", "usr/libexec/slotman/slotman-slot"] {
        let path = root.path().join(bin);
        let out = run(Command::new("readelf").args(["-S", "-W"]).arg(&path));
        let sections = String::from_utf8_lossy(&out.stdout);
        assert!(!sections.contains(".symtab"), "{bin} is not stripped");
        show(&format!(
            "{bin}: {} bytes",
            path.metadata().map(|m| m.len()).unwrap_or(0)
        ));
    }
}

/// lintian (Debian's package checker) finds no error, and every warning it
/// gives is one that packaging/README.md accepts, with its reason.
#[test]
fn lintian_finds_no_error_and_only_accepted_warnings() {
    let Some(deb) = package() else { return };
    if !common::tool_on_path("lintian") {
        skip("package", "lintian is not installed (apt install lintian)");
        return;
    }
    let out = Command::new("lintian")
        .args([
            "--fail-on",
            "error",
            "--display-info",
            "--no-tag-display-limit",
        ])
        .arg(&deb)
        .output()
        .expect("running lintian");
    let text = String::from_utf8_lossy(&out.stdout);
    show(&format!("lintian: {}\n{text}", out.status));
    assert!(out.status.success(), "lintian: {}", describe(&out));
    let readme = std::fs::read_to_string(Path::new(MANIFEST).join("packaging/README.md"))
        .expect("packaging/README.md");
    let accepted = doc_section(&readme, "### lintian");
    let unexplained: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("W: ") || l.starts_with("E: "))
        .filter(|l| {
            let tag = l.split_whitespace().nth(2).unwrap_or("");
            !accepted.contains(&format!("`{tag}`"))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "lintian tags that packaging/README.md does not accept:\n{}",
        unexplained.join("\n")
    );
}

/// A booted systemd with a network of its own (Debian's gearmand takes
/// port 4730 in it) where `dirs` are visible, and policy-rc.d removed: it
/// is a container image's way of saying "start no services", and this box
/// is a machine that runs them.
fn machine(dirs: &[&Path]) -> Option<SdBox> {
    let sd = SdBox::start_full(&Bind::same_paths(dirs), true)?;
    sd.sh("rm -f /usr/sbin/policy-rc.d")
        .assert_ok("removing policy-rc.d in the box");
    Some(sd)
}

/// Runs `script` in the box, notes it and its output in the transcript,
/// and returns the output.
fn step(sd: &SdBox, transcript: &mut String, script: &str) -> std::process::Output {
    let started = Instant::now();
    let out = sd.sh(script);
    transcript.push_str(&format!(
        "# {script}    ({:.1}s, {})\n{}{}",
        started.elapsed().as_secs_f64(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    ));
    out
}

/// A long `Example::wait` job, submitted by a transient unit so it runs
/// on while the test goes on; its output and exit status go to `out`.
fn submit_long_job(sd: &SdBox, unit: &str, out: &str) {
    sd.sh(&format!(
        "systemd-run --quiet --unit={unit} sh -c 'gearman -f Example::wait -- {LONG_JOB_SECS} > {out} 2>&1; echo rc=$? >> {out}'"
    ))
    .assert_ok("submitting a long job");
    sd.wait_for(
        "the long job runs in a slot",
        SETTLE,
        "slotman status example --json | grep -q '\"busy\": *1'",
    );
}

/// The job ran once, to its end, and its client saw it complete: the
/// handler's progress reports (WORK_STATUS, 10% to 100%) each once, then
/// exit status 0. A job killed and re-queued would show its first steps
/// twice; a failed one, another status.
fn assert_completed(sd: &SdBox, out: &str, when: &str) {
    let done = sd.wait_for(
        &format!("the long job's client has ended ({when})"),
        SETTLE,
        &format!("grep -q rc= {out} && cat {out}"),
    );
    let text = done.text();
    let lines: Vec<&str> = text.lines().collect();
    let steps: Vec<String> = (1..=10).map(|s| format!("{}% Complete", s * 10)).collect();
    let mut want: Vec<&str> = steps.iter().map(String::as_str).collect();
    want.push("rc=0");
    assert_eq!(lines, want, "the job running during {when}: {text}");
}

/// The inode of the file a process runs, and of a path.
fn inodes(sd: &SdBox, pid: u32, path: &str) -> (String, String) {
    let proc_ = sd.exec(&["stat", "-L", "-c", "%i", &format!("/proc/{pid}/exe")]);
    let file = sd.exec(&["stat", "-c", "%i", path]);
    (
        proc_.assert_ok("stat exe").text(),
        file.assert_ok("stat file").text(),
    )
}

fn main_pid(sd: &SdBox) -> u32 {
    sd.prop("slotman@example.service", "MainPID")
        .parse()
        .expect("MainPID is a number")
}

/// The PIDs of the example's slot runners, from `slotman status --json`.
fn slot_pids(sd: &SdBox) -> Vec<u32> {
    let out = sd.sh("slotman status example --json");
    let status: slotman::view::ServiceStatus =
        serde_json::from_slice(&out.assert_ok("slotman status example --json").stdout)
            .expect("status JSON");
    status
        .workers
        .iter()
        .flat_map(|w| w.slots.iter().filter_map(|s| s.pid))
        .collect()
}

/// The package's whole life on a machine: `dpkg -i` → man pages and
/// completions in place → `systemctl enable --now slotman@example` against
/// Debian's gearmand answers `Example::reverse` → a higher version
/// installed while a long job runs: the job completes and the instance
/// runs the new binary (manager and slots) → `dpkg -r` while a job runs:
/// it completes → `dpkg --purge` leaves no slotman file, unit or scope.
#[test]
fn installed_upgraded_removed_and_purged_in_a_booted_systemd() {
    let Some(deb) = package() else { return };
    for tool in ["gearman", "gearadmin", "dpkg-deb", "man"] {
        if !common::tool_on_path(tool) {
            skip(
                "package",
                &format!("`{tool}` is not installed (gearman-tools, dpkg, man-db)"),
            );
            return;
        }
    }
    if !Path::new("/lib/systemd/system/gearman-job-server.service").exists() {
        skip(
            "package",
            "Debian's gearmand is not installed (apt install gearman-job-server)",
        );
        return;
    }
    // The packages where the box sees them: under the target directory
    // (a real file system; the box's /tmp is its own).
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp dir");
    let v1 = work.path().join("slotman-v1.deb");
    std::fs::copy(&deb, &v1).expect("copying the package");
    let v2 = work.path().join("slotman-v2.deb");
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    let version2 = format!("{}-2", env!("CARGO_PKG_VERSION"));
    let tree = work.path().join("v2");
    run(Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(&v1)
        .arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("DEBIAN/control");
    assert!(text.contains(&format!("\nVersion: {version}\n")), "{text}");
    std::fs::write(
        &control,
        text.replace(
            &format!("\nVersion: {version}\n"),
            &format!("\nVersion: {version2}\n"),
        ),
    )
    .expect("writing DEBIAN/control");
    run(Command::new("dpkg-deb")
        .args(["--build", "-Zgzip"])
        .arg(&tree)
        .arg(&v2));

    let Some(sd) = machine(&[work.path()]) else {
        return;
    };
    let mut t = String::new();
    let (v1, v2) = (v1.display().to_string(), v2.display().to_string());

    // Install.
    step(&sd, &mut t, &format!("dpkg -i {v1}")).assert_ok("dpkg -i");
    for (what, check) in [
        ("man slotman", "man -w slotman"),
        ("man 5 slotman.toml", "man -w 5 slotman.toml"),
        (
            "bash completion",
            "test -s /usr/share/bash-completion/completions/slotman",
        ),
        (
            "zsh completion",
            "test -s /usr/share/zsh/vendor-completions/_slotman",
        ),
        (
            "fish completion",
            "test -s /usr/share/fish/vendor_completions.d/slotman.fish",
        ),
        ("the runner", "test -x /usr/libexec/slotman/slotman-slot"),
    ] {
        step(&sd, &mut t, check).assert_ok(what);
    }
    let state = step(
        &sd,
        &mut t,
        "systemctl is-active slotman@example.service || true",
    );
    assert_eq!(
        state.text(),
        "inactive",
        "the package started an instance by itself"
    );

    // Use it, as packaging/example.toml says.
    step(&sd, &mut t, "systemctl start gearman-job-server").assert_ok("starting Debian's gearmand");
    sd.wait_for("gearmand answers", SETTLE, "gearadmin --getpid");
    step(&sd, &mut t, "systemctl enable --now slotman@example").assert_ok("enable --now");
    let out = step(&sd, &mut t, "gearman -f Example::reverse -- hello");
    assert_eq!(out.assert_ok("Example::reverse").text(), "olleh", "{t}");

    // A second instance whose config was broken after it started: its
    // restart fails, and must not fail the upgrade of the package.
    sd.write_file(
        "/etc/slotman/broken.toml",
        "[workers.B]\nkind = \"exec\"\ncommand = [\"/bin/cat\"]\nfunctions = [\"b\"]\n",
    );
    step(&sd, &mut t, "systemctl start slotman@broken").assert_ok("start slotman@broken");
    sd.write_file(
        "/etc/slotman/broken.toml",
        "[workers.B]\nkind = \"exec\"\nmin = \"many\"\n",
    );

    // Upgrade while a long job runs.
    let old_pid = main_pid(&sd);
    let (old_exe, _) = inodes(&sd, old_pid, "/usr/bin/slotman");
    submit_long_job(&sd, "job-upgrade", "/run/job-upgrade.out");
    let started = Instant::now();
    let out = step(&sd, &mut t, &format!("dpkg -i {v2}"));
    out.assert_ok("dpkg -i (upgrade)");
    let upgrade_took = started.elapsed();
    assert_completed(&sd, "/run/job-upgrade.out", "the upgrade");
    step(&sd, &mut t, "cat /run/job-upgrade.out");
    let out = step(
        &sd,
        &mut t,
        "dpkg-query -W -f '${Version}\\n${Status}' slotman",
    );
    assert_eq!(out.text(), format!("{version2}\ninstall ok installed"));
    let out = step(&sd, &mut t, "systemctl is-failed slotman@broken || true");
    assert_eq!(out.text(), "failed", "the broken instance's restart");
    let new_pid = main_pid(&sd);
    assert_ne!(new_pid, old_pid, "the instance was not restarted:\n{t}");
    let (exe, file) = inodes(&sd, new_pid, "/usr/bin/slotman");
    assert_eq!(
        exe, file,
        "the manager does not run the installed /usr/bin/slotman"
    );
    assert_ne!(exe, old_exe, "the manager runs the old binary");
    sd.wait_for(
        "a slot is up",
        SETTLE,
        "slotman status example --json | grep -q '\"idle\": *[1-9]'",
    );
    let runner = "/usr/libexec/slotman/slotman-slot";
    for pid in slot_pids(&sd) {
        let (exe, file) = inodes(&sd, pid, runner);
        assert_eq!(exe, file, "slot {pid} does not run the installed runner");
    }
    let out = step(&sd, &mut t, "gearman -f Example::reverse -- upgraded");
    assert_eq!(out.text(), "dedargpu");
    step(&sd, &mut t, "journalctl -q --no-pager -o cat -u slotman@example | grep -Ei 'drain|stop|start|ready' | tail -8");
    show(&format!(
        "upgrade took {upgrade_took:.1?} with a {LONG_JOB_SECS}s job running"
    ));

    // Remove while a long job runs: the job completes first.
    submit_long_job(&sd, "job-remove", "/run/job-remove.out");
    step(&sd, &mut t, "dpkg -r slotman").assert_ok("dpkg -r");
    assert_completed(&sd, "/run/job-remove.out", "the removal");
    step(&sd, &mut t, "cat /run/job-remove.out");
    let out = step(
        &sd,
        &mut t,
        "systemctl is-active slotman@example.service || true",
    );
    assert_ne!(out.text(), "active", "the instance runs on after dpkg -r");
    step(
        &sd,
        &mut t,
        "test ! -e /usr/bin/slotman && test ! -e /usr/libexec/slotman",
    )
    .assert_ok("dpkg -r removes the binaries");
    step(&sd, &mut t, "test -f /etc/slotman/example.toml").assert_ok("dpkg -r keeps the conffile");

    // Purge: nothing of slotman is left.
    step(&sd, &mut t, "dpkg --purge slotman").assert_ok("dpkg --purge");
    let left = step(
        &sd,
        &mut t,
        "find /etc /usr /lib /var /run -name '*slotman*' 2>/dev/null; \
         systemctl list-units --all --plain --no-legend 'slotman*'",
    );
    show(&format!("package lifecycle transcript:\n{t}"));
    assert_eq!(left.text(), "", "left after dpkg --purge:\n{t}");
}

/// install.sh (hosts without dpkg): `--uninstall` refuses while an
/// instance runs, and once they are stopped removes the program and the
/// instances' enable links, keeping /etc/slotman.
#[test]
fn install_sh_uninstall_refuses_under_running_instances_and_leaves_no_links() {
    let Some(g) = common::Gearmand::start() else {
        return;
    };
    let bin = common::slotman_bin();
    let bin_dir = bin
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    let Some(sd) = SdBox::start(&[Path::new(MANIFEST), &bin_dir]) else {
        return;
    };
    let script = format!("{MANIFEST}/packaging/install.sh");
    sd.exec(&[
        "sh".as_ref(),
        script.as_ref(),
        "--binary".as_ref(),
        bin.as_os_str(),
    ])
    .assert_ok("install.sh");
    sd.sh("test -x /usr/libexec/slotman/slotman-slot && test ! -e /usr/bin/slotman-slot && man -w slotman")
        .assert_ok("the runner in libexec, the man page in place");
    sd.write_file(
        "/etc/slotman/u.toml",
        &format!(
            "[workers.w]\nkind = \"exec\"\ncommand = [\"/bin/cat\"]\nfunctions = [\"echo\"]\njob_servers = [\"{}\"]\nmin = 1\nmax = 1\n",
            g.addr
        ),
    );
    sd.sh("systemctl enable --now slotman@u")
        .assert_ok("enable --now slotman@u");

    let out = sd.exec(&["sh", &script, "--uninstall"]);
    assert!(
        !out.status.success(),
        "--uninstall under a running instance: {}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("slotman@u.service"),
        "the refusal names the instance: {}",
        describe(&out)
    );
    sd.sh("test -x /usr/bin/slotman && systemctl is-active -q slotman@u")
        .assert_ok("a refused --uninstall changes nothing");

    sd.sh("systemctl stop slotman@u")
        .assert_ok("stop slotman@u");
    sd.exec(&["sh", &script, "--uninstall"])
        .assert_ok("--uninstall once stopped");
    let left =
        sd.sh("find /usr/bin /usr/libexec /usr/share/man /etc/systemd/system -name '*slotman*'");
    assert_eq!(left.text(), "", "left after --uninstall");
    sd.sh("test -f /etc/slotman/u.toml")
        .assert_ok("--uninstall keeps /etc/slotman");
}
