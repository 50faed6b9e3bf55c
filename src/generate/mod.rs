//! What a package installs beside the binaries, generated from the sources
//! it describes: `slotman(1)` and a page per command from the clap
//! definitions (clap_mangen), `slotman.toml(5)` from docs/configuration.md
//! ([`markdown`]), and bash, zsh and fish completions (clap_complete).
//! `slotman generate man|completions DIR` (hidden) writes them.

pub mod markdown;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap_complete::Shell;
use roff::{bold, italic, roman, Inline, Roff};

/// The configuration reference, compiled in: the man page is rendered from
/// the same text users read in the docs.
pub const CONFIGURATION_MD: &str = include_str!("../../docs/configuration.md");

/// Writes `slotman.1`, `slotman-COMMAND.1` for every visible command and
/// `slotman.toml.5` into `dir` (created if missing); returns their paths.
/// `cmd` is the CLI's clap definition; `date` goes into each page's title
/// line (`YYYY-MM-DD`, or empty).
pub fn man_pages(cmd: clap::Command, dir: &Path, date: &str) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    // Building names each subcommand: "slotman-run" (its page), and
    // "slotman run" (what its synopsis shows).
    cmd.build();
    let mut written = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = clap_mangen::Man::new(sub.clone())
            .date(date)
            .manual("slotman manual");
        written.push(write_file(dir, &man.get_filename(), |w| {
            man.render(w)?;
            let mut roff = Roff::new();
            see_also(&mut roff, &[("slotman", "1"), ("slotman.toml", "5")]);
            roff.to_writer(w)
        })?);
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .date(date)
        .manual("slotman manual");
    written.push(write_file(dir, "slotman.1", |w| {
        man.render_title(w)?;
        man.render_name_section(w)?;
        man.render_synopsis_section(w)?;
        man.render_description_section(w)?;
        man.render_options_section(w)?;
        man.render_subcommands_section(w)?;
        let mut roff = main_page_sections();
        let mut see: Vec<(String, &str)> = vec![("slotman.toml".into(), "5")];
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            see.push((format!("slotman-{}", sub.get_name()), "1"));
        }
        see.extend(
            [
                ("systemctl", "1"),
                ("journalctl", "1"),
                ("systemd.resource-control", "5"),
                ("gearmand", "8"),
                ("gearadmin", "1"),
            ]
            .map(|(n, s)| (n.to_string(), s)),
        );
        let see: Vec<(&str, &str)> = see.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        see_also(&mut roff, &see);
        roff.to_writer(w)?;
        man.render_version_section(w)
    })?);
    written.push(write_file(dir, "slotman.toml.5", |w| {
        w.write_all(config_page(CONFIGURATION_MD, env!("CARGO_PKG_VERSION"), date).as_bytes())
    })?);
    Ok(written)
}

/// Writes the bash, zsh and fish completions of `cmd` into `dir`:
/// `slotman.bash`, `_slotman`, `slotman.fish`. Hidden commands are left
/// out (clap_complete would offer them).
pub fn completions(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    let mut cmd = without_hidden_commands(cmd);
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| clap_complete::generate_to(shell, &mut cmd, &name, dir))
        .collect()
}

/// `cmd` with the same arguments and only its visible subcommands.
fn without_hidden_commands(cmd: clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(cmd.get_name().to_string());
    if let Some(version) = cmd.get_version() {
        visible = visible.version(version.to_string());
    }
    if let Some(about) = cmd.get_about() {
        visible = visible.about(about.clone());
    }
    visible = visible.args(cmd.get_arguments().cloned());
    visible.subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// `slotman.toml(5)`: docs/configuration.md under a man page's head.
pub fn config_page(md: &str, version: &str, date: &str) -> String {
    let mut roff = Roff::new();
    let source = format!("slotman {version}");
    roff.control(
        "TH",
        [
            "SLOTMAN.TOML",
            "5",
            quoted(date).as_str(),
            source.as_str(),
            "\"slotman manual\"",
        ],
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman("slotman.toml - configuration of a slotman service")]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold("/etc/slotman/"), italic("SERVICE"), bold(".toml")]);
    roff.control("SH", ["DESCRIPTION"]);
    markdown::render(&mut roff, &markdown::blocks(md));
    see_also(
        &mut roff,
        &[
            ("slotman", "1"),
            ("systemd.resource-control", "5"),
            ("systemd.unit", "5"),
            ("gearmand", "8"),
        ],
    );
    roff.render()
}

/// An empty title-line field must still be an argument.
fn quoted(field: &str) -> String {
    match field.is_empty() {
        true => "\"\"".to_string(),
        false => field.to_string(),
    }
}

/// `.SH SEE ALSO` and the pages, as `name(section)`.
fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*name));
        line.push(roman(format!("({section})")));
    }
    roff.text(line);
}

/// What `slotman(1)` says beyond the options: how it is used under
/// systemd, its files, its exit statuses, its environment.
fn main_page_sections() -> Roff {
    let mut roff = Roff::new();
    let examples = [
        ("$EDITOR /etc/slotman/billing.toml", "one file per service"),
        (
            "slotman check /etc/slotman/billing.toml",
            "validate: exit 1 and FILE:LINE on errors",
        ),
        (
            "systemctl enable --now slotman@billing",
            "the manager and its slots",
        ),
        (
            "systemctl reload slotman@billing",
            "apply an edited config, no job lost",
        ),
        (
            "slotman status billing",
            "slots, busy/idle, jobs, memory, CPU",
        ),
        (
            "slotman restart billing",
            "deploy new handler code, one slot at a time",
        ),
        (
            "journalctl -u slotman@billing",
            "the manager's decisions and why",
        ),
        (
            "journalctl -u 'slotman-billing-*'",
            "the handlers' output, per slot",
        ),
        (
            "systemctl stop slotman@billing",
            "drain: running jobs finish first",
        ),
        (
            "slotman run --config billing.toml",
            "the same pools without systemd",
        ),
        (
            "slotman demo",
            "a job server, a pool and a burst of jobs, live",
        ),
    ];
    let files = [
        (
            "/etc/slotman/SERVICE.toml",
            "the configuration of the service SERVICE; see slotman.toml(5)",
        ),
        (
            "/lib/systemd/system/slotman@.service",
            "the unit of one service's manager (slotman@SERVICE)",
        ),
        (
            "/lib/systemd/system/slotman.slice",
            "the slice above every manager and slot",
        ),
        (
            "/run/slotman/SERVICE.sock",
            "the control socket that status and the other commands use",
        ),
        (
            "/usr/libexec/slotman/slotman-slot",
            "the slot runner that each slot runs",
        ),
        (
            "/usr/share/slotman/examples/",
            "example handlers in Python, Perl, PHP and shell",
        ),
        (
            "/usr/share/doc/slotman/",
            "the README and the configuration reference",
        ),
    ];
    let exit_statuses = [
        ("0", "success"),
        (
            "1",
            "failure; the reason is on standard error (check: the file is invalid)",
        ),
        (
            "78",
            "run: the configuration is invalid (EX_CONFIG; the unit does not restart on it)",
        ),
    ];
    let environment = [
        (
            "RUST_LOG",
            "log filter of the manager and its slots, e.g. debug (default info)",
        ),
        (
            "RUNTIME_DIRECTORY",
            "directory of the control sockets (set by systemd; default /run/slotman)",
        ),
        ("NO_COLOR", "no colours in log lines written to a terminal"),
    ];
    entries(&mut roff, "EXAMPLES", &examples, bold);
    entries(&mut roff, "FILES", &files, italic);
    entries(&mut roff, "EXIT STATUS", &exit_statuses, bold);
    entries(&mut roff, "ENVIRONMENT", &environment, bold);
    roff
}

/// A section of `.TP` entries: each term in `style`, then what it is.
fn entries(roff: &mut Roff, heading: &str, items: &[(&str, &str)], style: fn(String) -> Inline) {
    roff.control("SH", [heading]);
    for (term, what) in items {
        roff.control("TP", []);
        roff.text([style(term.to_string())]);
        roff.text([roman(*what)]);
    }
}

/// Creates `dir/name` and writes it with `f`.
fn write_file(
    dir: &Path,
    name: &str,
    f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    f(&mut file)?;
    file.flush()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_page_has_a_title_a_name_and_every_section_of_the_docs() {
        let page = config_page(CONFIGURATION_MD, "1.2.3", "2024-01-02");
        assert!(
            page.contains(".TH SLOTMAN.TOML 5 2024-01-02 \"slotman 1.2.3\""),
            "{page}"
        );
        assert!(page.contains(".SH NAME\nslotman.toml \\- configuration of a slotman service\n"));
        for heading in CONFIGURATION_MD
            .lines()
            .filter(|l| l.starts_with("## ") || l.starts_with("### "))
        {
            let mut alone = Roff::new();
            markdown::render(&mut alone, &markdown::blocks(heading));
            let line = alone.to_roff();
            assert!(page.contains(&line), "no {line:?} for {heading:?}");
        }
    }

    #[test]
    fn an_empty_date_is_still_a_field_of_the_title_line() {
        let page = config_page("", "1.2.3", "");
        assert!(
            page.contains(".TH SLOTMAN.TOML 5 \"\" \"slotman 1.2.3\""),
            "{page}"
        );
    }
}
