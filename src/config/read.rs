//! The first pass over one value: its type, syntax and range, each problem
//! reported at its line, and [`Ctx`], which collects them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use super::error::ConfigIssue;
use super::raw::{Loc, Node};
use super::values;
use super::HandlerKind;

/// What validation has found so far.
pub(super) struct Ctx {
    /// Byte offsets of every '\n', to turn spans into line numbers.
    pub newlines: Vec<usize>,
    pub issues: Vec<ConfigIssue>,
    /// Said by `slotman check`, but no reason to refuse the file.
    pub warnings: Vec<ConfigIssue>,
}

impl Ctx {
    pub fn new(text: &str) -> Ctx {
        Ctx {
            newlines: text.match_indices('\n').map(|(i, _)| i).collect(),
            issues: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// 1-based line of a span's start, or `fallback` when there is no span.
    pub fn line(&self, span: &Option<Range<usize>>, fallback: usize) -> usize {
        match span {
            Some(span) => self.newlines.partition_point(|&nl| nl < span.start) + 1,
            None => fallback,
        }
    }

    pub fn err(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue {
            line,
            key: Some(key.to_owned()),
            message: message.into(),
        });
    }

    pub fn err_at(&mut self, at: &At, message: impl Into<String>) {
        self.err(at.line, &at.key, message);
    }

    pub fn warn_at(&mut self, at: &At, message: impl Into<String>) {
        self.warnings.push(ConfigIssue {
            line: at.line,
            key: Some(at.key.clone()),
            message: format!("warning: {}", message.into()),
        });
    }
}

/// Where a value was written: its line and dotted key path.
#[derive(Debug, Clone)]
pub(super) struct At {
    pub line: usize,
    pub key: String,
}

impl At {
    pub fn in_defaults(&self) -> bool {
        self.key.starts_with("defaults.")
    }
}

/// A key as TOML would write it in a dotted path.
pub(super) fn quote_key(name: &str) -> String {
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

pub(super) fn boolean(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<bool> {
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

/// A whole number that fits a `u32`, from `min`.
fn uint32(ctx: &mut Ctx, at: &At, value: &Loc, min: u32) -> Option<u32> {
    let n = uint(ctx, at, value, u64::from(min)..=u64::from(u32::MAX))?;
    // In range, so it fits.
    u32::try_from(n).ok()
}

pub(super) fn duration(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Duration> {
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

// ---- The readers the key table names, for one key or a few -------------

pub(super) fn kind(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<HandlerKind> {
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

pub(super) fn job_servers(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Vec<String>> {
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

/// A `command`: its argv, and where its program (the first element) is
/// written, under the key's own name.
pub(super) fn command(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<(Vec<String>, Vec<At>)> {
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
    ok.then(|| {
        let argv = list.iter().map(|(s, _)| (*s).to_owned()).collect();
        (argv, vec![program_at])
    })
}

/// `functions`: the names, and where each is written.
pub(super) fn functions(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<(Vec<String>, Vec<At>)> {
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
    ok.then(|| out.into_iter().unzip())
}

/// A `prefix`: any string a function name may hold.
pub(super) fn prefix(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<String> {
    let s = string(ctx, at, value)?;
    report(ctx, at, values::check_function_name("prefix", s)).map(|()| s.to_owned())
}

/// `min`: a number of slots from 0.
pub(super) fn count(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<u32> {
    uint32(ctx, at, value, 0)
}

/// `max`, `max_spawn_rate`: a number from 1.
pub(super) fn positive(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<u32> {
    uint32(ctx, at, value, 1)
}

/// `workleft`: a number of jobs from 0.
pub(super) fn jobs(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<u64> {
    uint(ctx, at, value, 0..=u64::MAX)
}

/// `timeout` and `max_lifetime`: 0 means none, so that a worker can lift a
/// limit its `[defaults]` set.
pub(super) fn limit(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Option<Duration>> {
    duration(ctx, at, value).map(|d| (!d.is_zero()).then_some(d))
}

/// memory_max / memory_high: a size or "infinity"; 0 is refused because it
/// would starve every process of the slot rather than mean "no limit".
pub(super) fn memory(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Option<u64>> {
    match size(ctx, at, value, true)? {
        Some(0) => {
            ctx.err_at(at, "must be more than 0; write \"infinity\" for no limit");
            None
        }
        limit => Some(limit),
    }
}

/// An `env` table: its good variables. `[defaults]` and worker tables are
/// merged per variable, so a bad one drops only itself (and never the
/// table: this never returns `None`).
pub(super) fn env(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    let Node::Table(entries) = &value.node else {
        expected(
            ctx,
            at,
            "a table of strings, such as { LANG = \"C.UTF-8\" }",
            &value.node,
        );
        return Some(vars);
    };
    for (key, value) in entries {
        let key_line = ctx.line(&key.span, at.line);
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
                vars.insert(key.name.clone(), s.clone());
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
    Some(vars)
}

/// `working_directory`: an absolute path.
pub(super) fn directory(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<PathBuf> {
    let s = string(ctx, at, value)?;
    if s.starts_with('/') && !s.contains('\0') {
        Some(PathBuf::from(s))
    } else {
        ctx.err_at(at, format!("`{s}` must be an absolute path"));
        None
    }
}

pub(super) fn account(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<String> {
    let s = string(ctx, at, value)?;
    report(ctx, at, values::check_account_name(s)).map(|()| s.to_owned())
}

/// `cpu_quota`: "50%", as systemd writes it.
pub(super) fn cpu_quota(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<u32> {
    match &value.node {
        Node::Str(s) => report(ctx, at, values::parse_percent(s)),
        Node::Int(n) => {
            ctx.err_at(at, format!("write the quota as a string, \"{n}%\""));
            None
        }
        other => {
            expected(ctx, at, "a percentage such as \"50%\"", other);
            None
        }
    }
}

/// `cpu_weight`: systemd's range, 1 to 10000.
pub(super) fn cpu_weight(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<u64> {
    uint(ctx, at, value, 1..=10_000)
}

/// `tasks_max`: a number from 1, or "infinity" (`None`).
pub(super) fn tasks_max(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Option<u64>> {
    match &value.node {
        Node::Str(s) if s == "infinity" => Some(None),
        Node::Str(_) => {
            ctx.err_at(at, "expected a whole number or \"infinity\"");
            None
        }
        _ => uint(ctx, at, value, 1..=u64::MAX).map(Some),
    }
}

/// `max_packet_size`: a size from 1 byte to under 4G (a packet's length
/// field is 32 bits).
pub(super) fn packet_size(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<u32> {
    let bytes = size(ctx, at, value, false).flatten()?;
    match u32::try_from(bytes) {
        Ok(b) if b > 0 => Some(b),
        _ => {
            ctx.err_at(at, "must be more than 0 and less than 4G");
            None
        }
    }
}

/// `ready_timeout`: no "0 means none", as a handler that never says READY
/// is the fault this deadline exists for.
pub(super) fn deadline(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Duration> {
    let d = duration(ctx, at, value)?;
    if d.is_zero() {
        ctx.err_at(at, "must be more than 0");
        return None;
    }
    Some(d)
}

/// A `libs` list: absolute directories, at least one.
pub(super) fn libs(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Vec<PathBuf>> {
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
pub(super) fn interpreter(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<String> {
    let s = string(ctx, at, value)?;
    let problem = if s.is_empty() || s.contains('\0') {
        "must be a program: an absolute path or a name on PATH".to_owned()
    } else if !s.starts_with('/') && s.contains('/') {
        format!(
            "`{s}` is a relative path; give an absolute path, or a bare name to look up on PATH"
        )
    } else {
        return Some(s.to_owned());
    };
    ctx.err_at(at, problem);
    None
}

/// `metrics_listen`: an IP address and port.
pub(super) fn listen(ctx: &mut Ctx, at: &At, value: &Loc) -> Option<SocketAddr> {
    let s = string(ctx, at, value)?;
    report(ctx, at, values::parse_listen(s))
}
