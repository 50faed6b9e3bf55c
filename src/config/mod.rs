//! The TOML contract of DESIGN.md: one file per service, `[defaults]` merged
//! under each `[workers.NAME]`. `load` is the only place a config file is read;
//! everything after it works on the validated, typed [`Config`].
//!
//! - [`load`]: read, validate, and check commands against the host: what
//!   `slotman run` and a reload use.
//! - [`parse`]: validate text without touching the host (no command lookups).
//! - [`check`]: `slotman check FILE`: [`load`] plus a one-line summary.
//!
//! Every problem found is reported, each as `FILE:LINE: KEY: message`
//! ([`ConfigError`]); a TOML syntax error stops at that one.
//!
//! # Defaults
//!
//! Every key may be left out. Top level: `stop_timeout` 60s, no
//! `metrics_listen` (no endpoint), no `control_group` (root only). Per worker,
//! after `[defaults]`: `job_servers` ["127.0.0.1:4730"], `kind` "stdio" (the
//! kind DESIGN.md presents as the successor of the seed's workers), `prefix`
//! "NAME::", `min` 1, `max` 4, `workleft` 0 (never), `idle_timeout` 10s, no
//! `timeout`, no `max_lifetime`, `max_packet_size` 64M, `ready_timeout` 30s,
//! no limits, `proxy` true (native workers). `command`
//! has no default, nor has `functions` for exec and stdio workers. Perl,
//! Python and PHP workers take no `command` (`interpreter`, default `perl`,
//! `python3`, `php`, runs slotman's library on their module) and need
//! `libs`; their `functions` default to what the module announces.
//!
//! # Value syntax
//!
//! - durations: "10s", "500ms", "1m 30s" (humantime), or whole seconds as a
//!   number or digits, at most 100 years (`values::MAX_DURATION`: anything
//!   the manager adds to a clock fits); for `timeout` and `max_lifetime`, 0
//!   means none, so a worker can lift a limit its `[defaults]` set.
//! - sizes: bytes as a number, or "512K", "256M", "1.5G" with systemd's binary
//!   units (K = 1024), at most u64; "infinity" for no limit on `memory_*`.
//! - `cpu_quota`: "50%" (of one CPU; "200%" is two); `cpu_weight` 1..=10000;
//!   `tasks_max` a number or "infinity".
//! - `env`: `[defaults]` and worker tables merge per variable, the worker's
//!   value winning.
//! - `command`: the program is an absolute path to an executable file, or a
//!   bare name found on `PATH` (the worker's `env.PATH`, else the checker's
//!   own). Paths like `bin/x` are refused: relative to what would depend on
//!   where the handler starts.

mod error;
mod keys;
mod probe;
mod raw;
mod read;
mod validate;
pub mod values;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, ConfigIssue};

/// `program` as `command` finds it: an executable in an absolute
/// directory of `search_path`.
pub fn find_program(program: &str, search_path: &str) -> Option<std::path::PathBuf> {
    worker::program_exists(&probe::Host { deep: false }, program, search_path).ok()
}

/// Every key a config file may use: the top-level ones, and those of
/// `[defaults]` and `[workers.NAME]` (so a test can hold the docs to them).
pub fn known_keys() -> (Vec<&'static str>, Vec<&'static str>) {
    let names = |top: bool| {
        keys::KEYS
            .iter()
            .filter(|spec| spec.top_level() == top)
            .map(|spec| spec.name)
            .collect()
    };
    (names(true), names(false))
}

/// The anchor of the docs/configuration.md section that explains `key`
/// (`min-and-max` for `min`), from the key table.
pub fn doc_anchor(key: &str) -> Option<&'static str> {
    keys::find(key).map(|spec| spec.doc)
}

/// Port of a job server given as plain "host".
pub const DEFAULT_PORT: u16 = 4730;

/// Default `max_packet_size`: 64 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 64 << 20;
/// Default `max_spawn_rate`: slots per second. Twice PHP-FPM's 32: a slot
/// runner starts in about a millisecond, so what this bounds is the
/// handlers' start-up (64 Python interpreters ≈ 1.3 s of CPU), and a burst
/// of 64 still gets all its slots in well under a second.
pub const DEFAULT_MAX_SPAWN_RATE: u32 = 64;

/// `ready_timeout` when not set: how long a stdio handler has to say `READY`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads and validates the config at `path`, including that each command's
/// program exists and is executable. The service is named by the file stem.
/// This is the only function here that reads a file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    validate::validate(&text, path, Some(&probe::Host { deep: false }))
}

/// Validates config `text` as if read from `path` (used for the service name
/// and in messages). Pure: it does not look whether commands or working
/// directories exist; [`load`] does.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    validate::validate(text, path, None)
}

/// What `slotman check FILE` does: [`load`], plus, for Perl, Python and
/// PHP workers, their modules compiled and their methods listed by the
/// interpreter; on success a one-line summary (`FILE: ok: 2 workers
/// (resize: stdio, 1..4 slots; ...)`) for stdout. The error's `Display` is
/// the lines for stderr; so are the warnings (`FILE:LINE: KEY: warning:
/// ...`), returned either way.
pub fn check(path: &Path) -> (Result<String, ConfigError>, Vec<String>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            let error = ConfigError::Read {
                path: path.to_owned(),
                error,
            };
            return (Err(error), Vec::new());
        }
    };
    let (config, warnings) =
        validate::validate_with_warnings(&text, path, Some(&probe::Host { deep: true }));
    let summary = config.map(|c| format!("{}: ok: {}", path.display(), c.summary()));
    (summary, warnings)
}

/// A validated service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// Service name: the file stem (`billing` for `/etc/slotman/billing.toml`).
    pub service: String,
    /// Top-level `stop_timeout`: how long a stop waits for jobs in hand (default 60s).
    pub stop_timeout: Duration,
    /// Top-level `metrics_listen`: Prometheus endpoint; off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Top-level `control_group`: group allowed on the control socket.
    pub control_group: Option<String>,
    /// Workers in file order.
    pub workers: Vec<WorkerConfig>,
}

/// How a slot runs its user's handler (DESIGN.md "Handler").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    Exec,
    Stdio,
    Native,
    /// A seed-style worker: slotman's library for the language runs the
    /// worker's module as a `stdio` handler (DESIGN.md "Seed-style workers").
    Perl,
    Python,
    Php,
}

impl HandlerKind {
    /// The word the config uses.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Exec => "exec",
            HandlerKind::Stdio => "stdio",
            HandlerKind::Native => "native",
            HandlerKind::Perl => "perl",
            HandlerKind::Python => "python",
            HandlerKind::Php => "php",
        }
    }

    /// The language of a seed-style worker.
    pub fn language(self) -> Option<crate::seed::Language> {
        match self {
            HandlerKind::Perl => Some(crate::seed::Language::Perl),
            HandlerKind::Python => Some(crate::seed::Language::Python),
            HandlerKind::Php => Some(crate::seed::Language::Php),
            HandlerKind::Exec | HandlerKind::Stdio | HandlerKind::Native => None,
        }
    }

    /// A long-running handler speaking the stdio framing: `stdio` and the
    /// seed-style kinds.
    pub fn is_stdio(self) -> bool {
        self == HandlerKind::Stdio || self.language().is_some()
    }
}

/// One `[workers.NAME]` table with `[defaults]` merged under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub name: String,
    /// "host:port", port filled in (4730) when the file left it out.
    pub job_servers: Vec<String>,
    pub kind: HandlerKind,
    /// Program and arguments; never empty. For a seed-style worker, its
    /// interpreter alone (the runner adds the library's arguments).
    pub command: Vec<String>,
    /// Function names without prefix. Empty for a seed-style worker that
    /// registers whatever its module announces.
    pub functions: Vec<String>,
    /// Where a seed-style worker's module is looked for, in order (the
    /// seed's `libs`); empty for the other kinds.
    #[serde(default)]
    pub libs: Vec<PathBuf>,
    /// Registered name = prefix + function. Default `NAME::`.
    pub prefix: String,
    pub min: u32,
    pub max: u32,
    /// Jobs per slot before it is recycled; 0 = never.
    pub workleft: u64,
    /// How long a slot stays idle before it may be retired (default 10s).
    pub idle_timeout: Duration,
    /// Per-job limit; `None` = no limit.
    pub timeout: Option<Duration>,
    /// Recycle a slot after this long (with splay); `None` = never.
    pub max_lifetime: Option<Duration>,
    /// Recycle a slot after the job that left its handler's resident memory
    /// above this many bytes (uWSGI's reload-on-rss); `None` = never.
    pub recycle_rss: Option<u64>,
    pub env: BTreeMap<String, String>,
    pub working_directory: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    /// Bytes.
    pub memory_max: Option<u64>,
    /// Bytes.
    pub memory_high: Option<u64>,
    /// Percent of one CPU (`"50%"` → 50; may exceed 100).
    pub cpu_quota: Option<u32>,
    pub cpu_weight: Option<u64>,
    pub tasks_max: Option<u64>,
    /// Largest Gearman packet body accepted from a job server (default 64 MiB).
    pub max_packet_size: u32,
    /// Slots started per second to absorb load (PHP-FPM's
    /// `pm.max_spawn_rate`); default 64.
    pub max_spawn_rate: u32,
    /// Also grow on the job servers' queue depth (admin `status`), not only
    /// when every slot is busy; default true.
    pub scale_on_queue: bool,
    /// Ask for the next job while one runs (Celery's prefetch, one deep):
    /// more throughput for short jobs, but a job may wait behind a long
    /// one in this slot while another slot is idle; default false.
    pub prefetch: bool,
    /// `native` workers only: hand the worker the slot's relay addresses
    /// (`SLOTMAN_JOB_SERVERS`, `{job_servers}`) so that slotman sees its
    /// jobs; `false`: the real job servers, supervision only. Default true.
    pub proxy: bool,
    /// Pin each slot's runner and stdio handler to one CPU while they
    /// stream short jobs and the service has more slots than CPUs
    /// (`slot/cpu.rs`); default false: it changes the CPU affinity of the
    /// user's handlers, which only they may ask for. Applied to running slots.
    pub pin_cpu: bool,
    /// How long a freshly started stdio handler has to say `READY` before
    /// it is killed and counted as a failed start; default 30s. Slots
    /// started after a reload get the new value.
    pub ready_timeout: Duration,
}

impl Config {
    /// The worker called `name`.
    pub fn worker(&self, name: &str) -> Option<&WorkerConfig> {
        self.workers.iter().find(|w| w.name == name)
    }

    /// One line: `2 workers (resize: stdio, 1..4 slots; thumbs: exec, 0..8 slots)`.
    pub fn summary(&self) -> String {
        let mut out = match self.workers.len() {
            1 => "1 worker (".to_owned(),
            n => format!("{n} workers ("),
        };
        for (i, w) in self.workers.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            let kind = w.kind.name();
            // Writing to a String cannot fail.
            let _ = write!(out, "{sep}{}: {kind}, {}..{} slots", w.name, w.min, w.max);
        }
        out.push(')');
        out
    }
}

impl WorkerConfig {
    /// Worker `name` with every key at its built-in default: what a key is
    /// when neither its table nor `[defaults]` sets it. `command` and
    /// `functions` are empty, which no valid file leaves them (a seed-style
    /// worker's command is its interpreter); set them before use.
    pub fn builtin(name: &str) -> WorkerConfig {
        WorkerConfig {
            name: name.to_owned(),
            job_servers: vec![format!("127.0.0.1:{DEFAULT_PORT}")],
            // The kind DESIGN.md presents as the successor of the seed's workers.
            kind: HandlerKind::Stdio,
            command: Vec::new(),
            functions: Vec::new(),
            libs: Vec::new(),
            prefix: format!("{name}::"),
            min: 1,
            max: 4,
            workleft: 0,
            idle_timeout: Duration::from_secs(10),
            timeout: None,
            max_lifetime: None,
            recycle_rss: None,
            env: BTreeMap::new(),
            working_directory: None,
            user: None,
            group: None,
            memory_max: None,
            memory_high: None,
            cpu_quota: None,
            cpu_weight: None,
            tasks_max: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_spawn_rate: DEFAULT_MAX_SPAWN_RATE,
            scale_on_queue: true,
            prefetch: false,
            proxy: true,
            pin_cpu: false,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// The name registered with the job server for `function`.
    pub fn registered_name(&self, function: &str) -> String {
        format!("{}{}", self.prefix, function)
    }

    /// The resource limits that are set, as systemd properties with values
    /// in systemd's syntax (`("MemoryMax", "256M")`, `("CPUQuota", "50%")`),
    /// in the order MemoryMax, MemoryHigh, CPUQuota, CPUWeight, TasksMax.
    /// Under systemd they become the slot scopes' properties; plain child
    /// processes cannot enforce them, and the manager says so.
    pub fn resource_limits(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(b) = self.memory_max {
            out.push(("MemoryMax", values::format_size(b)));
        }
        if let Some(b) = self.memory_high {
            out.push(("MemoryHigh", values::format_size(b)));
        }
        if let Some(p) = self.cpu_quota {
            out.push(("CPUQuota", format!("{p}%")));
        }
        if let Some(w) = self.cpu_weight {
            out.push(("CPUWeight", w.to_string()));
        }
        if let Some(n) = self.tasks_max {
            out.push(("TasksMax", n.to_string()));
        }
        out
    }

    /// Whether running slots may stay on a reload from `self` to `other`:
    /// true when at most the pool-sizing keys differ (`min`, `max`,
    /// `idle_timeout`, `max_lifetime`, spawn rate, queue scaling,
    /// `pin_cpu`, `ready_timeout`), which the
    /// manager applies to the slots it has, or the resource limits, which it
    /// sets on their running scopes (systemd's SetUnitProperties). Anything
    /// else a slot was started with (command, kind, env, functions, libs, prefix,
    /// job servers, user, group, directory, `workleft`, `timeout`,
    /// `recycle_rss`, packet size, `prefetch`, `proxy`) means replacing the slots.
    pub fn same_processes(&self, other: &WorkerConfig) -> bool {
        // Destructured without `..` so that a new field has to be sorted into
        // one group or the other here before this compiles.
        let WorkerConfig {
            name,
            job_servers,
            kind,
            command,
            functions,
            libs,
            prefix,
            min: _,
            max: _,
            workleft,
            idle_timeout: _,
            timeout,
            max_lifetime: _,
            recycle_rss,
            env,
            working_directory,
            user,
            group,
            memory_max: _,
            memory_high: _,
            cpu_quota: _,
            cpu_weight: _,
            tasks_max: _,
            max_packet_size,
            max_spawn_rate: _,
            scale_on_queue: _,
            prefetch,
            proxy,
            pin_cpu: _,
            ready_timeout: _,
        } = self;
        *name == other.name
            && *job_servers == other.job_servers
            && *kind == other.kind
            && *command == other.command
            && *functions == other.functions
            && *libs == other.libs
            && *prefix == other.prefix
            && *workleft == other.workleft
            && *timeout == other.timeout
            && *recycle_rss == other.recycle_rss
            && *env == other.env
            && *working_directory == other.working_directory
            && *user == other.user
            && *group == other.group
            && *max_packet_size == other.max_packet_size
            && *prefetch == other.prefetch
            && *proxy == other.proxy
    }
}
