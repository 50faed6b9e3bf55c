//! The [`raw`] tree → [`Config`]: every key checked
//! and parsed, `[defaults]` merged under each worker, built-in defaults filled
//! in, and every problem collected rather than the first one returned.
//!
//! Problems are found in two passes over each table: first each value on its
//! own (type, syntax, range), then what needs the merged worker (min ≤ max,
//! required keys, function names unique across workers, and, when a
//! [`Probe`] is given, whether the command exists). A value found bad in the
//! first pass is `Invalid`, and the second pass stays quiet about it, so one
//! mistake gives one message.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, ConfigIssue};
use super::probe::Probe;
use super::raw::{self, Key, Loc, Node};
use super::values;
use super::{Config, HandlerKind, WorkerConfig, DEFAULT_MAX_PACKET_SIZE};

pub(crate) const TOP_KEYS: &[&str] = &[
    "stop_timeout",
    "metrics_listen",
    "control_group",
    "defaults",
    "workers",
];

/// Keys of `[defaults]` and `[workers.NAME]`.
pub(crate) const WORKER_KEYS: &[&str] = &[
    "job_servers",
    "kind",
    "command",
    "functions",
    "prefix",
    "min",
    "max",
    "workleft",
    "idle_timeout",
    "timeout",
    "max_lifetime",
    "recycle_rss",
    "env",
    "working_directory",
    "user",
    "group",
    "memory_max",
    "memory_high",
    "cpu_quota",
    "cpu_weight",
    "tasks_max",
    "max_packet_size",
    "max_spawn_rate",
    "scale_on_queue",
    "prefetch",
    "proxy",
    "pin_cpu",
    "ready_timeout",
    "libs",
    "interpreter",
];

/// Where handlers are looked up when neither the worker's `env` nor the
/// environment has a `PATH` (the value systemd gives services).
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    let mut ctx = Ctx {
        newlines: text.match_indices('\n').map(|(i, _)| i).collect(),
        issues: Vec::new(),
        warnings: Vec::new(),
    };
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

struct Ctx {
    /// Byte offsets of every '\n', to turn spans into line numbers.
    newlines: Vec<usize>,
    issues: Vec<ConfigIssue>,
    /// Said by `slotman check`, but no reason to refuse the file.
    warnings: Vec<ConfigIssue>,
}

impl Ctx {
    /// 1-based line of a span's start, or `fallback` when there is no span.
    fn line(&self, span: &Option<Range<usize>>, fallback: usize) -> usize {
        match span {
            Some(span) => self.newlines.partition_point(|&nl| nl < span.start) + 1,
            None => fallback,
        }
    }

    fn err(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            line,
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    fn err_at(&mut self, at: &At, message: impl Into<String>) {
        self.err(at.line, &at.key, message);
    }

    fn warn_at(&mut self, at: &At, message: impl Into<String>) {
        self.warnings.push(ConfigIssue {
            line: at.line,
            key: Some(at.key.clone()),
            message: format!("warning: {}", message.into()),
        });
    }
}

/// Where a value was written: its line and dotted key path.
#[derive(Debug, Clone)]
struct At {
    line: usize,
    key: String,
}

impl At {
    fn in_defaults(&self) -> bool {
        self.key.starts_with("defaults.")
    }
}

/// One key of one table after the first pass.
#[derive(Debug, Clone, Default)]
enum Field<T> {
    #[default]
    Unset,
    /// Present but bad; already reported.
    Invalid,
    Set(T, At),
}

impl<T: Clone> Field<T> {
    fn new(value: Option<T>, at: At) -> Self {
        match value {
            Some(v) => Field::Set(v, at),
            None => Field::Invalid,
        }
    }

    /// The worker's own value, else the one from `[defaults]`.
    fn over(self, defaults: &Field<T>) -> Field<T> {
        match self {
            Field::Unset => defaults.clone(),
            set_or_invalid => set_or_invalid,
        }
    }

    /// `None` when invalid; the built-in default (and no place) when unset.
    fn or_builtin(self, builtin: T) -> Option<(T, Option<At>)> {
        match self {
            Field::Unset => Some((builtin, None)),
            Field::Invalid => None,
            Field::Set(v, at) => Some((v, Some(at))),
        }
    }
}

#[derive(Debug, Clone)]
struct Command {
    argv: Vec<String>,
    /// Where the program (the first element) is written.
    program: At,
}

/// The worker keys of one table, `[defaults]` or `[workers.NAME]`.
#[derive(Debug, Clone, Default)]
struct Keys {
    job_servers: Field<Vec<String>>,
    kind: Field<HandlerKind>,
    command: Field<Command>,
    /// Each function with where it is written.
    functions: Field<Vec<(String, At)>>,
    prefix: Field<String>,
    min: Field<u32>,
    max: Field<u32>,
    workleft: Field<u64>,
    idle_timeout: Field<Duration>,
    timeout: Field<Option<Duration>>,
    max_lifetime: Field<Option<Duration>>,
    recycle_rss: Field<Option<u64>>,
    /// Merged key by key, so kept per variable.
    env: BTreeMap<String, String>,
    working_directory: Field<PathBuf>,
    user: Field<String>,
    group: Field<String>,
    memory_max: Field<Option<u64>>,
    memory_high: Field<Option<u64>>,
    cpu_quota: Field<u32>,
    cpu_weight: Field<u64>,
    tasks_max: Field<Option<u64>>,
    max_packet_size: Field<u32>,
    max_spawn_rate: Field<u32>,
    scale_on_queue: Field<bool>,
    prefetch: Field<bool>,
    proxy: Field<bool>,
    pin_cpu: Field<bool>,
    ready_timeout: Field<Duration>,
    libs: Field<Vec<PathBuf>>,
    interpreter: Field<String>,
}

fn build(ctx: &mut Ctx, root: &Loc, path: &Path, probe: Option<&dyn Probe>) -> Option<Config> {
    let service = service_name(ctx, path);
    let entries: &[(Key, Loc)] = match &root.node {
        Node::Table(entries) => entries,
        // toml always yields a table at the top; nothing to read otherwise.
        _ => &[],
    };

    let mut stop_timeout = Field::Unset;
    let mut metrics_listen = Field::Unset;
    let mut control_group = Field::Unset;
    let mut defaults = Keys::default();
    let mut workers: Vec<(String, usize, bool, Keys)> = Vec::new();
    let mut workers_line = None;

    for (key, value) in entries {
        let key_line = ctx.line(&key.span, 1);
        let line = ctx.line(&value.span, key_line);
        let path = quote_key(&key.name);
        let at = At {
            line,
            key: path.clone(),
        };
        match key.name.as_str() {
            "stop_timeout" => stop_timeout = Field::new(duration(ctx, &at, value), at),
            "metrics_listen" => {
                let v =
                    string(ctx, &at, value).and_then(|s| report(ctx, &at, values::parse_listen(s)));
                metrics_listen = Field::new(v, at);
            }
            "control_group" => {
                let v = account(ctx, &at, value);
                control_group = Field::new(v, at);
            }
            "defaults" => match &value.node {
                Node::Table(entries) => defaults = read_keys(ctx, "defaults", entries, line),
                other => ctx.err_at(
                    &at,
                    format!("expected a table ([defaults]), found {}", other.type_name()),
                ),
            },
            "workers" => {
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
                            let keys = read_keys(ctx, &wpath, entries, header_line);
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
            _ => unknown_key(ctx, key_line, &path, &key.name, TOP_KEYS),
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
            finish(ctx, probe, &name, header_line, &defaults, keys)
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

    let (stop_timeout, _) = stop_timeout.or_builtin(Duration::from_secs(60))?;
    let (metrics_listen, _) = metrics_listen.map_some().or_builtin(None)?;
    if let (Some(probe), Field::Set(name, at)) = (probe, &control_group) {
        if let Err(why) = probe.account(name, true) {
            ctx.err_at(at, why);
        }
    }
    let (control_group, _) = control_group.map_some().or_builtin(None)?;
    Some(Config {
        path: path.to_owned(),
        service: service?,
        stop_timeout,
        metrics_listen,
        control_group,
        workers: built,
    })
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

/// First pass over one table of worker keys.
fn read_keys(ctx: &mut Ctx, base: &str, entries: &[(Key, Loc)], table_line: usize) -> Keys {
    let mut k = Keys::default();
    for (key, value) in entries {
        let key_line = ctx.line(&key.span, table_line);
        let line = ctx.line(&value.span, key_line);
        let at = At {
            line,
            key: format!("{base}.{}", quote_key(&key.name)),
        };
        let a = at.clone();
        match key.name.as_str() {
            "job_servers" => k.job_servers = Field::new(job_servers(ctx, &a, value), at),
            "kind" => k.kind = Field::new(kind(ctx, &a, value), at),
            "command" => k.command = Field::new(command(ctx, &a, value), at),
            "functions" => k.functions = Field::new(functions(ctx, &a, value), at),
            "prefix" => {
                let v = string(ctx, &a, value).and_then(|s| {
                    report(ctx, &a, values::check_function_name("prefix", s)).map(|()| s.to_owned())
                });
                k.prefix = Field::new(v, at);
            }
            "min" => {
                let v = uint(ctx, &a, value, 0..=u64::from(u32::MAX));
                k.min = Field::new(v.map(|v| v as u32), at);
            }
            "max" => {
                let v = uint(ctx, &a, value, 1..=u64::from(u32::MAX));
                k.max = Field::new(v.map(|v| v as u32), at);
            }
            "workleft" => k.workleft = Field::new(uint(ctx, &a, value, 0..=u64::MAX), at),
            "idle_timeout" => k.idle_timeout = Field::new(duration(ctx, &a, value), at),
            // 0 means no limit, so that a worker can lift a limit its
            // [defaults] set.
            "timeout" => {
                let v = duration(ctx, &a, value).map(|d| (!d.is_zero()).then_some(d));
                k.timeout = Field::new(v, at);
            }
            "max_lifetime" => {
                let v = duration(ctx, &a, value).map(|d| (!d.is_zero()).then_some(d));
                k.max_lifetime = Field::new(v, at);
            }
            "env" => env(ctx, &a, value, line, &mut k.env),
            "working_directory" => {
                let v = string(ctx, &a, value).and_then(|s| {
                    if s.starts_with('/') && !s.contains('\0') {
                        Some(PathBuf::from(s))
                    } else {
                        ctx.err_at(&a, format!("`{s}` must be an absolute path"));
                        None
                    }
                });
                k.working_directory = Field::new(v, at);
            }
            "user" => k.user = Field::new(account(ctx, &a, value), at),
            "group" => k.group = Field::new(account(ctx, &a, value), at),
            "memory_max" => k.memory_max = Field::new(memory(ctx, &a, value), at),
            "memory_high" => k.memory_high = Field::new(memory(ctx, &a, value), at),
            "recycle_rss" => k.recycle_rss = Field::new(memory(ctx, &a, value), at),
            "cpu_quota" => {
                let v = match &value.node {
                    Node::Str(s) => report(ctx, &a, values::parse_percent(s)),
                    Node::Int(n) => {
                        ctx.err_at(&a, format!("write the quota as a string, \"{n}%\""));
                        None
                    }
                    other => {
                        expected(ctx, &a, "a percentage such as \"50%\"", other);
                        None
                    }
                };
                k.cpu_quota = Field::new(v, at);
            }
            "cpu_weight" => k.cpu_weight = Field::new(uint(ctx, &a, value, 1..=10_000), at),
            "tasks_max" => {
                let v = match &value.node {
                    Node::Str(s) if s == "infinity" => Some(None),
                    Node::Str(_) => {
                        ctx.err_at(&a, "expected a whole number or \"infinity\"");
                        None
                    }
                    _ => uint(ctx, &a, value, 1..=u64::MAX).map(Some),
                };
                k.tasks_max = Field::new(v, at);
            }
            "max_spawn_rate" => {
                let v = uint(ctx, &a, value, 1..=u64::from(u32::MAX));
                k.max_spawn_rate = Field::new(v.map(|v| v as u32), at);
            }
            "scale_on_queue" => k.scale_on_queue = Field::new(boolean(ctx, &a, value), at),
            "prefetch" => k.prefetch = Field::new(boolean(ctx, &a, value), at),
            "proxy" => k.proxy = Field::new(boolean(ctx, &a, value), at),
            "pin_cpu" => k.pin_cpu = Field::new(boolean(ctx, &a, value), at),
            // No "0 means none": a handler that never says READY is the
            // fault this deadline exists for.
            "ready_timeout" => {
                let v = duration(ctx, &a, value).filter(|d| {
                    let ok = !d.is_zero();
                    if !ok {
                        ctx.err_at(&a, "must be more than 0");
                    }
                    ok
                });
                k.ready_timeout = Field::new(v, at);
            }
            "libs" => k.libs = Field::new(libs(ctx, &a, value), at),
            "interpreter" => {
                let v = string(ctx, &a, value).and_then(|s| report(ctx, &a, interpreter(s)));
                k.interpreter = Field::new(v, at);
            }
            "max_packet_size" => {
                let v =
                    size(ctx, &a, value, false).flatten().and_then(|bytes| {
                        match u32::try_from(bytes) {
                            Ok(b) if b > 0 => Some(b),
                            _ => {
                                ctx.err_at(&a, "must be more than 0 and less than 4G");
                                None
                            }
                        }
                    });
                k.max_packet_size = Field::new(v, at);
            }
            _ => {
                let path = format!("{base}.{}", quote_key(&key.name));
                unknown_key(ctx, key_line, &path, &key.name, WORKER_KEYS);
            }
        }
    }
    k
}

/// Second pass: `[defaults]` under the worker's own keys, built-in defaults
/// under both, then the checks that need the whole worker. Returns the worker
/// and where each of its functions is written.
fn finish(
    ctx: &mut Ctx,
    probe: Option<&dyn Probe>,
    name: &str,
    header_line: usize,
    d: &Keys,
    w: Keys,
) -> Option<(WorkerConfig, Vec<At>)> {
    let base = format!("workers.{}", quote_key(name));
    let header = |key: &str| At {
        line: header_line,
        key: format!("{base}.{key}"),
    };

    let job_servers = w
        .job_servers
        .over(&d.job_servers)
        .or_builtin(vec![format!("127.0.0.1:{}", super::DEFAULT_PORT)]);
    let kind = w.kind.over(&d.kind).or_builtin(HandlerKind::Stdio);

    let language = kind.as_ref().and_then(|(k, _)| k.language());
    // Keys of one family of kinds set in the worker's own table for the
    // other (a `[defaults]` value may serve other workers: no complaint).
    let kind_word = kind.as_ref().map_or("", |(k, _)| k.name());
    for (key, own, seed_only) in [
        ("command", field_at(&w.command), false),
        ("libs", field_at(&w.libs), true),
        ("interpreter", field_at(&w.interpreter), true),
    ] {
        match (own, language.is_some(), seed_only) {
            (Some(at), true, false) => ctx.err_at(
                at,
                format!(
                    "a {kind_word} worker has no {key}: slotman runs its library on the module \
                     {}; `interpreter` chooses the program",
                    language.map_or(String::new(), |l| l.module_file(name))
                ),
            ),
            (Some(at), false, true) if kind.is_some() => ctx.err_at(
                at,
                format!("only perl, python and php workers have {key}, not a {kind_word} worker"),
            ),
            _ => {}
        }
    }
    if let (Some(_), Err(message)) = (language, crate::seed::check_worker_name(name)) {
        ctx.err_at(&header("kind"), message);
    }

    let command = match language {
        // The interpreter alone; the runner adds the library's arguments.
        Some(language) => match w.interpreter.clone().over(&d.interpreter) {
            Field::Set(program, at) => Some(Command {
                argv: vec![program],
                program: at,
            }),
            Field::Invalid => None,
            Field::Unset => Some(Command {
                argv: vec![language.default_interpreter().to_owned()],
                program: kind
                    .as_ref()
                    .and_then(|(_, at)| at.clone())
                    .unwrap_or_else(|| header("kind")),
            }),
        },
        None => match w.command.clone().over(&d.command) {
            Field::Set(command, _) => Some(command),
            Field::Invalid => None,
            Field::Unset => {
                ctx.err_at(
                    &header("command"),
                    "missing; every worker needs command = [\"/path/to/program\", \"arg\", ...]",
                );
                None
            }
        },
    };

    let libs = match (language, w.libs.clone().over(&d.libs)) {
        (Some(language), Field::Unset) => {
            ctx.err_at(
                &header("libs"),
                format!(
                    "missing; a {kind_word} worker needs libs = [\"/opt/workers\"], the directories \
                     where its module {} is looked for",
                    language.module_file(name)
                ),
            );
            None
        }
        (Some(_), Field::Invalid) => None,
        (Some(_), Field::Set(list, at)) => Some((list, Some(at))),
        (None, _) => Some((Vec::new(), None)),
    };

    let functions = match (w.functions.over(&d.functions), &kind) {
        (Field::Invalid, _) => None,
        (Field::Unset, Some((HandlerKind::Native, _))) => Some(Vec::new()),
        // Whatever the module announces.
        (Field::Unset, Some((k, _))) if k.language().is_some() => Some(Vec::new()),
        (Field::Unset, Some((k, _))) => {
            ctx.err_at(
                &header("functions"),
                format!(
                    "missing; a {} worker registers at least one function, e.g. functions = [\"resize\"]",
                    kind_name(*k)
                ),
            );
            None
        }
        (Field::Unset, None) => None,
        (Field::Set(list, at), Some((k, _))) if list.is_empty() && *k != HandlerKind::Native => {
            let whose = if at.in_defaults() {
                format!(" (inherited by {base})")
            } else {
                String::new()
            };
            ctx.err_at(
                &at,
                format!("must not be empty for a {} worker{whose}", kind_name(*k)),
            );
            None
        }
        (Field::Set(list, _), _) => Some(list),
    };

    let prefix = w.prefix.over(&d.prefix).or_builtin(format!("{name}::"));

    let min = w.min.over(&d.min).or_builtin(1);
    let max = w.max.over(&d.max).or_builtin(4);
    if let (Some((min, min_at)), Some((max, max_at))) = (&min, &max) {
        if min > max {
            min_exceeds_max(ctx, &base, (*min, min_at), (*max, max_at));
        }
    }

    let mut env = d.env.clone();
    env.extend(w.env);

    // The program as found on the host (for a bare name, on the worker's PATH).
    let mut program = None;
    if let (Some(probe), Some(command)) = (probe, &command) {
        let search_path = env
            .get("PATH")
            .cloned()
            .or_else(|| probe.search_path())
            .unwrap_or_else(|| FALLBACK_PATH.to_owned());
        match program_exists(probe, &command.argv[0], &search_path) {
            Ok(path) => program = Some(path),
            Err(message) => ctx.err_at(&command.program, message),
        }
    }
    if let (Some(probe), Some(language), Some((libs, Some(libs_at))), Some(program)) =
        (probe, language, &libs, &program)
    {
        let functions = functions.as_deref().unwrap_or_default();
        seed_module(
            ctx,
            probe,
            language,
            name,
            (libs, libs_at),
            program,
            functions,
        );
    }
    if let Some(probe) = probe {
        for (field, group) in [
            (w.user.clone().over(&d.user), false),
            (w.group.clone().over(&d.group), true),
        ] {
            if let Field::Set(name, at) = &field {
                if let Err(why) = probe.account(name, group) {
                    ctx.err_at(at, why);
                }
            }
        }
    }
    let working_directory = w.working_directory.over(&d.working_directory);
    if let (Some(probe), Field::Set(dir, at)) = (probe, &working_directory) {
        if let Err(why) = probe.directory(dir) {
            ctx.err_at(at, format!("`{}` {why}", dir.display()));
        }
    }

    let (functions, places): (Vec<String>, Vec<At>) = functions?.into_iter().unzip();
    let worker = WorkerConfig {
        name: name.to_owned(),
        job_servers: job_servers?.0,
        kind: kind?.0,
        command: command?.argv,
        functions,
        libs: libs?.0,
        prefix: prefix?.0,
        min: min?.0,
        max: max?.0,
        workleft: w.workleft.over(&d.workleft).or_builtin(0)?.0,
        idle_timeout: w
            .idle_timeout
            .over(&d.idle_timeout)
            .or_builtin(Duration::from_secs(10))?
            .0,
        timeout: w.timeout.over(&d.timeout).or_builtin(None)?.0,
        max_lifetime: w.max_lifetime.over(&d.max_lifetime).or_builtin(None)?.0,
        recycle_rss: w.recycle_rss.over(&d.recycle_rss).or_builtin(None)?.0,
        env,
        working_directory: working_directory.map_some().or_builtin(None)?.0,
        user: w.user.over(&d.user).map_some().or_builtin(None)?.0,
        group: w.group.over(&d.group).map_some().or_builtin(None)?.0,
        memory_max: w.memory_max.over(&d.memory_max).or_builtin(None)?.0,
        memory_high: w.memory_high.over(&d.memory_high).or_builtin(None)?.0,
        cpu_quota: w
            .cpu_quota
            .over(&d.cpu_quota)
            .map_some()
            .or_builtin(None)?
            .0,
        cpu_weight: w
            .cpu_weight
            .over(&d.cpu_weight)
            .map_some()
            .or_builtin(None)?
            .0,
        tasks_max: w.tasks_max.over(&d.tasks_max).or_builtin(None)?.0,
        max_packet_size: w
            .max_packet_size
            .over(&d.max_packet_size)
            .or_builtin(DEFAULT_MAX_PACKET_SIZE)?
            .0,
        max_spawn_rate: w
            .max_spawn_rate
            .over(&d.max_spawn_rate)
            .or_builtin(super::DEFAULT_MAX_SPAWN_RATE)?
            .0,
        scale_on_queue: w.scale_on_queue.over(&d.scale_on_queue).or_builtin(true)?.0,
        prefetch: w.prefetch.over(&d.prefetch).or_builtin(false)?.0,
        proxy: w.proxy.over(&d.proxy).or_builtin(true)?.0,
        pin_cpu: w.pin_cpu.over(&d.pin_cpu).or_builtin(false)?.0,
        ready_timeout: w
            .ready_timeout
            .over(&d.ready_timeout)
            .or_builtin(super::DEFAULT_READY_TIMEOUT)?
            .0,
    };
    Some((worker, places))
}

impl<T: Clone> Field<T> {
    /// For keys whose absence is `None` in [`WorkerConfig`].
    fn map_some(self) -> Field<Option<T>> {
        match self {
            Field::Unset => Field::Unset,
            Field::Invalid => Field::Invalid,
            Field::Set(v, at) => Field::Set(Some(v), at),
        }
    }
}

/// Says min > max at the key the user is most likely to change: one set in
/// the worker's own table before one inherited from `[defaults]`.
fn min_exceeds_max(
    ctx: &mut Ctx,
    base: &str,
    (min, min_at): (u32, &Option<At>),
    (max, max_at): (u32, &Option<At>),
) {
    let origin = |at: &Option<At>| match at {
        None => ", the default",
        Some(at) if at.in_defaults() => ", from [defaults]",
        Some(_) => "",
    };
    let own = |at: &Option<At>| at.as_ref().is_some_and(|a| !a.in_defaults());
    match (min_at, max_at) {
        (Some(at), _) if own(min_at) => {
            ctx.err_at(at, format!("must not exceed max ({max}{})", origin(max_at)))
        }
        (_, Some(at)) if own(max_at) => ctx.err_at(
            at,
            format!("must not be less than min ({min}{})", origin(min_at)),
        ),
        // Both inherited (the built-in min of 1 never exceeds a max).
        (Some(at), _) => ctx.err_at(
            at,
            format!("must not exceed max ({max}{}) for {base}", origin(max_at)),
        ),
        (None, _) => {}
    }
}

/// A command's program: an absolute path that is executable, or a bare name
/// found on `search_path`.
/// Returns its path (the one found on `search_path` for a bare name).
fn program_exists(probe: &dyn Probe, program: &str, search_path: &str) -> Result<PathBuf, String> {
    if program.starts_with('/') {
        return probe
            .executable(Path::new(program))
            .map(|()| PathBuf::from(program))
            .map_err(|why| format!("`{program}` {why}"));
    }
    // Relative PATH entries are skipped: they depend on the directory the
    // handler happens to start in.
    let found = search_path
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .find(|path| probe.executable(path).is_ok());
    if let Some(path) = found {
        Ok(path)
    } else {
        Err(format!(
            "`{program}` is not an executable on PATH ({search_path}); give its absolute path"
        ))
    }
}

fn kind_name(kind: HandlerKind) -> &'static str {
    kind.name()
}

/// Where a worker's own table sets a key.
fn field_at<T>(field: &Field<T>) -> Option<&At> {
    match field {
        Field::Set(_, at) => Some(at),
        Field::Unset | Field::Invalid => None,
    }
}

/// A seed-style worker's module, on the host: each of `libs` is a
/// directory and one holds the module file; with a deep probe (`slotman
/// check`), the module compiles, and each listed function is one of the
/// methods it announces (a warning otherwise).
fn seed_module(
    ctx: &mut Ctx,
    probe: &dyn Probe,
    language: crate::seed::Language,
    name: &str,
    (libs, libs_at): (&[PathBuf], &At),
    interpreter: &Path,
    functions: &[(String, At)],
) {
    let mut ok = true;
    for dir in libs {
        if let Err(why) = probe.directory(dir) {
            ctx.err_at(libs_at, format!("`{}` {why}", dir.display()));
            ok = false;
        }
    }
    if !ok {
        return;
    }
    let file = language.module_file(name);
    let Some(module) = libs
        .iter()
        .map(|dir| dir.join(&file))
        .find(|p| probe.is_file(p))
    else {
        let dirs: Vec<String> = libs.iter().map(|d| d.display().to_string()).collect();
        ctx.err_at(
            libs_at,
            format!(
                "no {file} in {}: workers.{} runs the {} {name} from it",
                dirs.join(", "),
                quote_key(name),
                match language {
                    crate::seed::Language::Perl => "package",
                    _ => "class",
                }
            ),
        );
        return;
    };
    match probe.seed_module(language, interpreter, libs, name, &module) {
        Ok(None) => {}
        Ok(Some(announced)) if announced.is_empty() => ctx.err_at(
            libs_at,
            format!(
                "{name} in {} has no public method to register (methods starting with `_` \
                 and names in capitals only are not registered)",
                module.display()
            ),
        ),
        Ok(Some(announced)) => {
            for (function, at) in functions {
                if !announced.contains(function) {
                    ctx.warn_at(
                        at,
                        format!(
                            "{name} has no public method `{function}` (it has {}): not registered",
                            announced.join(", ")
                        ),
                    );
                }
            }
        }
        Err(why) => ctx.err_at(libs_at, why),
    }
}

/// A `libs` list: absolute directories, at least one.
fn libs(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Vec<PathBuf>> {
    let list = strings(ctx, at, value)?;
    if list.is_empty() {
        ctx.err_at(at, "must name at least one directory");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (dir, item_at) in list {
        let problem = if !dir.starts_with('/') {
            Some(format!("`{dir}` must be an absolute path"))
        } else if dir.contains('\0') {
            Some("must not contain a NUL character".to_owned())
        } else if dir.contains(':') {
            // PHP's include_path is a `:` list; one rule for every language.
            Some(format!("`{dir}` must not contain `:`"))
        } else {
            None
        };
        match problem {
            Some(message) => {
                ctx.err_at(&item_at, message);
                ok = false;
            }
            None => out.push(PathBuf::from(dir)),
        }
    }
    ok.then_some(out)
}

/// An `interpreter`: an absolute path, or a bare name looked up on PATH.
fn interpreter(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('\0') {
        Err("must be a program: an absolute path or a name on PATH".into())
    } else if !s.starts_with('/') && s.contains('/') {
        Err(format!(
            "`{s}` is a relative path; give an absolute path, or a bare name to look up on PATH"
        ))
    } else {
        Ok(s.to_owned())
    }
}

/// A key as TOML would write it in a dotted path.
fn quote_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_owned()
    } else {
        format!("\"{}\"", name.escape_default())
    }
}

fn unknown_key(ctx: &mut Ctx, line: usize, path: &str, name: &str, known: &[&str]) {
    // A key in the wrong table is likelier than a typo of a similar key.
    let close = known
        .iter()
        .filter(|k| values::edit_distance(name, k) <= (k.len() / 3).max(1))
        .min_by_key(|k| values::edit_distance(name, k));
    let hint = if std::ptr::eq(known, TOP_KEYS) && WORKER_KEYS.contains(&name) {
        format!("; `{name}` belongs in [defaults] or [workers.NAME]")
    } else if std::ptr::eq(known, WORKER_KEYS) && TOP_KEYS.contains(&name) {
        format!("; `{name}` is a top-level key: put it above the first table")
    } else if let Some(close) = close {
        format!("; did you mean `{close}`?")
    } else {
        String::new()
    };
    ctx.err(line, path, format!("unknown key{hint}"));
}

/// Reports `result`'s error at `at`.
fn report<T>(ctx: &mut Ctx, at: &At, result: Result<T, String>) -> Option<T> {
    result.map_err(|message| ctx.err_at(at, message)).ok()
}

fn expected(ctx: &mut Ctx, at: &At, what: &str, found: &Node) {
    ctx.err_at(at, format!("expected {what}, found {}", found.type_name()));
}

fn string<'a>(ctx: &mut Ctx, at: &At, value: &'a Loc) -> Option<&'a str> {
    match &value.node {
        Node::Str(s) => Some(s),
        other => {
            expected(ctx, at, "a string", other);
            None
        }
    }
}

fn boolean(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<bool> {
    match &value.node {
        Node::Bool(b) => Some(*b),
        other => {
            expected(ctx, at, "true or false", other);
            None
        }
    }
}

fn uint(ctx: &mut Ctx, at: &At, value: &Loc, range: RangeInclusive<u64>) -> Option<u64> {
    match &value.node {
        Node::Int(n) => match u64::try_from(*n) {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                let bounds = if *range.end() == u64::MAX {
                    format!("at least {}", range.start())
                } else {
                    format!("from {} to {}", range.start(), range.end())
                };
                ctx.err_at(at, format!("must be {bounds}, not {n}"));
                None
            }
        },
        Node::Str(s) if s.trim().parse::<u64>().is_ok() => {
            ctx.err_at(
                at,
                format!("expected a number; write it without quotes: {}", s.trim()),
            );
            None
        }
        other => {
            expected(ctx, at, "a whole number", other);
            None
        }
    }
}

fn duration(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Duration> {
    match &value.node {
        Node::Int(n) => match u64::try_from(*n) {
            Ok(secs) => report(ctx, at, values::duration_from_secs(secs)),
            Err(_) => {
                ctx.err_at(at, format!("must not be negative, not {n}"));
                None
            }
        },
        Node::Str(s) => report(ctx, at, values::parse_duration(s)),
        other => {
            expected(
                ctx,
                at,
                "a duration such as \"10s\" or \"500ms\", or whole seconds",
                other,
            );
            None
        }
    }
}

/// A size in bytes; `Some(None)` for "infinity" where `infinity_ok`.
fn size(ctx: &mut Ctx, at: &At, value: &Loc, infinity_ok: bool) -> Option<Option<u64>> {
    match &value.node {
        Node::Int(n) => match u64::try_from(*n) {
            Ok(bytes) => Some(Some(bytes)),
            Err(_) => {
                ctx.err_at(at, format!("must not be negative, not {n}"));
                None
            }
        },
        Node::Str(s) if infinity_ok && s.trim() == "infinity" => Some(None),
        Node::Str(s) => report(ctx, at, values::parse_size(s)).map(Some),
        other => {
            expected(
                ctx,
                at,
                "a size such as \"256M\" or a number of bytes",
                other,
            );
            None
        }
    }
}

/// memory_max / memory_high: a size or "infinity"; 0 is refused because it
/// would starve every process of the slot rather than mean "no limit".
fn memory(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Option<u64>> {
    match size(ctx, at, value, true)? {
        Some(0) => {
            ctx.err_at(at, "must be more than 0; write \"infinity\" for no limit");
            None
        }
        limit => Some(limit),
    }
}

fn account(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<String> {
    let s = string(ctx, at, value)?;
    report(ctx, at, values::check_account_name(s)).map(|()| s.to_owned())
}

fn kind(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<HandlerKind> {
    match string(ctx, at, value)? {
        "exec" => Some(HandlerKind::Exec),
        "stdio" => Some(HandlerKind::Stdio),
        "native" => Some(HandlerKind::Native),
        "perl" => Some(HandlerKind::Perl),
        "python" => Some(HandlerKind::Python),
        "php" => Some(HandlerKind::Php),
        other => {
            ctx.err_at(
                at,
                format!("expected \"exec\", \"stdio\", \"native\", \"perl\", \"python\" or \"php\", not \"{other}\""),
            );
            None
        }
    }
}

/// A list of strings, each with where it is written; element errors name
/// `key[i]`.
fn strings<'a>(ctx: &mut Ctx, at: &At, value: &'a Loc) -> Option<Vec<(&'a str, At)>> {
    let Node::Array(items) = &value.node else {
        let found = value.node.type_name();
        let hint = if matches!(value.node, Node::Str(_)) {
            "; put it in brackets: [\"...\"]"
        } else {
            ""
        };
        ctx.err_at(
            at,
            format!("expected a list of strings, found {found}{hint}"),
        );
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_at = At {
            line: ctx.line(&item.span, at.line),
            key: format!("{}[{i}]", at.key),
        };
        match &item.node {
            Node::Str(s) => out.push((s.as_str(), item_at)),
            other => {
                expected(ctx, &item_at, "a string", other);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn job_servers(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Vec<String>> {
    let list = strings(ctx, at, value)?;
    if list.is_empty() {
        ctx.err_at(at, "must name at least one job server");
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    let mut ok = true;
    for (text, item_at) in list {
        match values::parse_job_server(text) {
            Ok(server) if out.contains(&server) => {
                ctx.err_at(&item_at, format!("`{server}` is listed twice"));
                ok = false;
            }
            Ok(server) => out.push(server),
            Err(message) => {
                ctx.err_at(&item_at, message);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn command(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Command> {
    let list = strings(ctx, at, value)?;
    let Some((program, program_at)) = list.first() else {
        ctx.err_at(
            at,
            "must not be empty; write [\"/path/to/program\", \"arg\", ...]",
        );
        return None;
    };
    let program_at = At {
        line: program_at.line,
        key: at.key.clone(),
    };
    if program.is_empty() {
        ctx.err_at(&program_at, "the program (first element) must not be empty");
        return None;
    }
    if !program.starts_with('/') && program.contains('/') {
        ctx.err_at(
            &program_at,
            format!(
                "`{program}` is a relative path; give an absolute path, or a bare name to look up on PATH"
            ),
        );
        return None;
    }
    let mut ok = true;
    for (arg, arg_at) in &list {
        if arg.contains('\0') {
            ctx.err_at(arg_at, "must not contain a NUL character");
            ok = false;
        }
    }
    ok.then(|| Command {
        argv: list.iter().map(|(s, _)| (*s).to_owned()).collect(),
        program: program_at,
    })
}

fn functions(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Vec<(String, At)>> {
    let list = strings(ctx, at, value)?;
    let mut out: Vec<(String, At)> = Vec::new();
    let mut ok = true;
    for (name, item_at) in list {
        let problem = if name.is_empty() {
            Some("a function name must not be empty".to_owned())
        } else if out.iter().any(|(n, _)| n == name) {
            Some(format!("`{name}` is listed twice"))
        } else {
            values::check_function_name("function name", name).err()
        };
        match problem {
            Some(message) => {
                ctx.err_at(&item_at, message);
                ok = false;
            }
            None => out.push((name.to_owned(), item_at)),
        }
    }
    ok.then_some(out)
}

/// `env` entries go straight into `into`: `[defaults]` and worker tables are
/// merged per variable, so a bad one drops only itself.
fn env(ctx: &mut Ctx, at: &At, value: &Loc, line: usize, into: &mut BTreeMap<String, String>) {
    let Node::Table(entries) = &value.node else {
        expected(
            ctx,
            at,
            "a table of strings, such as { LANG = \"C.UTF-8\" }",
            &value.node,
        );
        return;
    };
    for (key, value) in entries {
        let key_line = ctx.line(&key.span, line);
        let var_at = At {
            line: ctx.line(&value.span, key_line),
            key: format!("{}.{}", at.key, quote_key(&key.name)),
        };
        if key.name.is_empty() || key.name.contains(['=', '\0']) {
            ctx.err_at(&var_at, "not a valid environment variable name");
            continue;
        }
        match &value.node {
            Node::Str(s) if s.contains('\0') => {
                ctx.err_at(&var_at, "must not contain a NUL character")
            }
            Node::Str(s) => {
                into.insert(key.name.clone(), s.clone());
            }
            other => {
                let hint = match other {
                    Node::Int(_) | Node::Float | Node::Bool(_) => "; put the value in quotes",
                    _ => "",
                };
                ctx.err_at(
                    &var_at,
                    format!("expected a string, found {}{hint}", other.type_name()),
                );
            }
        }
    }
}
