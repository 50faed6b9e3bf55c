//! The [`raw`] tree → [`Config`]: every key checked and parsed by the
//! [`keys`] table, `[defaults]` merged under each worker ([`worker`]),
//! built-in defaults filled in, and every problem collected rather than the
//! first one returned.
//!
//! Problems are found in two passes over each table: first each value on its
//! own (type, syntax, range), then what needs the merged worker (min ≤ max,
//! required keys, function names unique across workers, and, when a
//! [`Probe`] is given, whether the command exists). A value found bad in the
//! first pass is `Invalid`, and the second pass stays quiet about it, so one
//! mistake gives one message.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, ConfigIssue};
use super::keys::{self, Layer, Place};
use super::probe::Probe;
use super::raw::{self, Key, Loc, Node};
use super::read::{quote_key, At, Ctx};
use super::worker::finish;
use super::{values, Config, WorkerConfig};

/// Validates `text` (the contents of `path`). With a `probe`, commands and
/// working directories are also checked against the host.
pub(crate) fn validate(
    text: &str,
    path: &Path,
    probe: Option<&dyn Probe>,
) -> Result<Config, ConfigError> {
    validate_with_warnings(text, path, probe).0
}

/// [`validate`], and what is not wrong but likely a mistake (a listed
/// function the module lacks), as `FILE:LINE: KEY: warning: ...` lines.
pub(crate) fn validate_with_warnings(
    text: &str,
    path: &Path,
    probe: Option<&dyn Probe>,
) -> (Result<Config, ConfigError>, Vec<String>) {
    let mut ctx = Ctx::new(text);
    let config = match raw::parse(text) {
        Ok(root) => build(&mut ctx, &root, path, probe),
        Err(e) => {
            let line = ctx.line(&e.span(), 1);
            let message = e.message().trim().replace('\n', "; ");
            ctx.issues.push(ConfigIssue {
                line,
                key: None,
                message: format!("invalid TOML: {message}"),
            });
            None
        }
    };
    let mut warnings = std::mem::take(&mut ctx.warnings);
    warnings.sort_by_key(|w| w.line);
    let warnings = warnings
        .iter()
        .map(|w| format!("{}:{w}", path.display()))
        .collect();
    let result = match config {
        Some(config) if ctx.issues.is_empty() => Ok(config),
        _ => {
            let mut issues = ctx.issues;
            // Line order reads top to bottom; a bad `[defaults]` value that
            // several workers inherit is said once.
            issues.sort_by_key(|i| i.line);
            let mut seen = std::collections::HashSet::new();
            issues.retain(|i| seen.insert(i.clone()));
            debug_assert!(!issues.is_empty(), "no Config and no issue");
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                issues,
            })
        }
    };
    (result, warnings)
}

fn build(ctx: &mut Ctx, root: &Loc, path: &Path, probe: Option<&dyn Probe>) -> Option<Config> {
    let service = service_name(ctx, path);
    let entries: &[(Key, Loc)] = match &root.node {
        Node::Table(entries) => entries,
        // toml always yields a table at the top; nothing to read otherwise.
        _ => &[],
    };

    let mut top = Layer::<Config>::default();
    let mut defaults = Layer::default();
    let mut workers: Vec<(String, usize, bool, Layer<WorkerConfig>)> = Vec::new();
    let mut workers_line = None;

    for (key, value) in entries {
        let key_line = ctx.line(&key.span, 1);
        let line = ctx.line(&value.span, key_line);
        let path = quote_key(&key.name);
        let at = At {
            line,
            key: path.clone(),
        };
        let top_key = keys::find(&key.name).and_then(|spec| Some((spec.name, spec.top()?)));
        match (key.name.as_str(), top_key) {
            (_, Some((name, read))) => {
                let value = read.read(ctx, &at, value);
                top.insert(name, at, value);
            }
            ("defaults", _) => match &value.node {
                Node::Table(entries) => defaults = read_table(ctx, "defaults", entries, line),
                other => ctx.err_at(
                    &at,
                    format!("expected a table ([defaults]), found {}", other.type_name()),
                ),
            },
            ("workers", _) => {
                workers_line = Some(key_line);
                let Node::Table(entries) = &value.node else {
                    ctx.err_at(
                        &at,
                        format!(
                            "expected tables [workers.NAME], found {}",
                            value.node.type_name()
                        ),
                    );
                    continue;
                };
                for (wkey, wvalue) in entries {
                    let wpath = format!("workers.{}", quote_key(&wkey.name));
                    let header_line = ctx.line(&wkey.span, line);
                    let name_ok = match values::check_worker_name(&wkey.name) {
                        Ok(()) => true,
                        Err(message) => {
                            ctx.err(header_line, &wpath, message);
                            false
                        }
                    };
                    match &wvalue.node {
                        Node::Table(entries) => {
                            let keys = read_table(ctx, &wpath, entries, header_line);
                            workers.push((wkey.name.clone(), header_line, name_ok, keys));
                        }
                        other => ctx.err(
                            header_line,
                            &wpath,
                            format!("expected a table ([{wpath}]), found {}", other.type_name()),
                        ),
                    }
                }
            }
            _ => unknown_key(ctx, key_line, &path, &key.name, true),
        }
    }

    // Only when no worker table was there at all: a bad one has its own
    // message already.
    let worker_issue = |i: &ConfigIssue| i.key.as_deref().is_some_and(|k| k.starts_with("workers"));
    if workers.is_empty() && !ctx.issues.iter().any(worker_issue) {
        ctx.err(
            workers_line.unwrap_or(1),
            "workers",
            "no workers; add at least one [workers.NAME] table",
        );
    }

    let mut built = Vec::new();
    // Registered name → the worker and place that registers it.
    let mut registered: HashMap<String, (String, At)> = HashMap::new();
    for (name, header_line, name_ok, keys) in workers {
        let Some((worker, function_places)) =
            finish(ctx, probe, &name, header_line, &defaults, &keys)
        else {
            continue;
        };
        for (function, at) in worker.functions.iter().zip(function_places) {
            let full = worker.registered_name(function);
            match registered.get(&full) {
                Some((other, _)) if *other != worker.name => ctx.err_at(
                    &at,
                    format!(
                        "`{function}` registers `{full}`, which workers.{} registers too; give one of them another prefix",
                        quote_key(other)
                    ),
                ),
                _ => {
                    registered.insert(full, (worker.name.clone(), at));
                }
            }
        }
        if name_ok {
            built.push(worker);
        }
    }

    // The built-in top-level defaults, then what the file sets.
    let mut valid = service.is_some();
    let mut config = Config {
        path: path.to_owned(),
        service: service.unwrap_or_default(),
        stop_timeout: Duration::from_secs(60),
        metrics_listen: None,
        control_group: None,
        workers: built,
    };
    for spec in keys::KEYS
        .iter()
        .filter(|spec| matches!(spec.place, Place::Top(_)))
    {
        valid &= top.get(spec.name).apply(&mut config);
    }
    if let (Some(probe), Some(at), Some(group)) =
        (probe, top.get("control_group").at(), &config.control_group)
    {
        if let Err(why) = probe.account(group, true) {
            ctx.err_at(at, why);
        }
    }
    valid.then_some(config)
}

/// The service is named by the file: `billing` for `/etc/slotman/billing.toml`.
fn service_name(ctx: &mut Ctx, path: &Path) -> Option<String> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if stem.is_empty() || stem.chars().any(|c| c.is_whitespace() || c.is_control()) {
        ctx.issues.push(ConfigIssue {
            line: 1,
            key: None,
            message: format!(
                "cannot name the service after the file name `{}`; name the file SERVICE.toml",
                path.display()
            ),
        });
        return None;
    }
    Some(stem.to_owned())
}

/// First pass over one table of worker keys: `[defaults]` or `[workers.NAME]`.
fn read_table(
    ctx: &mut Ctx,
    base: &str,
    entries: &[(Key, Loc)],
    table_line: usize,
) -> Layer<WorkerConfig> {
    let mut layer = Layer::default();
    for (key, value) in entries {
        let key_line = ctx.line(&key.span, table_line);
        let path = format!("{base}.{}", quote_key(&key.name));
        match keys::find(&key.name).and_then(|spec| Some((spec.name, spec.worker()?))) {
            Some((name, read)) => {
                let at = At {
                    line: ctx.line(&value.span, key_line),
                    key: path,
                };
                let value = read.read(ctx, &at, value);
                layer.insert(name, at, value);
            }
            _ => unknown_key(ctx, key_line, &path, &key.name, false),
        }
    }
    layer
}

/// Says `name` is not a key of its table (`top`: the top level; else a
/// table of worker keys), with a hint from the key table.
fn unknown_key(ctx: &mut Ctx, line: usize, path: &str, name: &str, top: bool) {
    let hint = match keys::find(name) {
        // A key in the wrong table is likelier than a typo of a similar key.
        Some(spec) if top => format!("; `{}` belongs in [defaults] or [workers.NAME]", spec.name),
        Some(spec) => format!(
            "; `{}` is a top-level key: put it above the first table",
            spec.name
        ),
        None => keys::KEYS
            .iter()
            .filter(|spec| spec.top_level() == top)
            .map(|spec| (values::edit_distance(name, spec.name), spec.name))
            .filter(|(distance, known)| *distance <= (known.len() / 3).max(1))
            .min_by_key(|(distance, _)| *distance)
            .map_or(String::new(), |(_, close)| {
                format!("; did you mean `{close}`?")
            }),
    };
    ctx.err(line, path, format!("unknown key{hint}"));
}
