//! The key table: every key a config file may set, one entry each, naming
//! where it may be written, how its value is read, which kinds of worker it
//! is for, how `[defaults]` hands it on, and the docs section that explains
//! it. Reading a table, "unknown key" hints, inheritance and
//! [`super::known_keys`] all go by this table, so a new key is an entry
//! here, its field (and built-in default) in [`Config`] or [`WorkerConfig`],
//! and its docs.

use super::raw::Loc;
use super::read::{self, At, Ctx};
use super::{Config, WorkerConfig};

/// One key a config file may set.
pub(super) struct Spec {
    pub name: &'static str,
    /// Anchor of the docs/configuration.md section that explains it.
    pub doc: &'static str,
    pub place: Place,
}

/// Where a key is written, and so how it is read.
pub(super) enum Place {
    /// `defaults` and `workers`: the tables that hold worker keys.
    Tables,
    /// A top-level key.
    Top(&'static dyn Read<Config>),
    /// A key of `[defaults]` and `[workers.NAME]`.
    Worker {
        read: &'static dyn Read<WorkerConfig>,
        kinds: Kinds,
        inherit: Inherit,
    },
}

/// The first pass over one value: what it sets, or `None` when it is bad
/// (and already reported).
pub(super) trait Read<C> {
    fn read(&self, ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Value<C>>;
}

/// A reader of one value's type, as those of [`read`] are.
type Reader<T> = fn(&mut Ctx, &At, &Loc) -> Option<T>;

/// A key whose value `.0` reads and `.1` puts into its field.
pub(super) struct Put<T, C>(Reader<T>, fn(&mut C, T));

/// [`Put`] for a list whose elements' places are kept: `.0` reads the
/// value and where each element is written.
pub(super) struct PutPlaced<T, C>(Reader<(T, Vec<At>)>, fn(&mut C, T));

/// The kinds of worker a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kinds {
    All,
    /// Those that run their own `command`: exec, stdio, native.
    Command,
    /// The seed-style ones (perl, python, php), run by slotman's library.
    Seed,
}

impl Kinds {
    /// Whether a worker of the seed style (`seed`) or not has this key.
    pub fn include(self, seed: bool) -> bool {
        match self {
            Kinds::All => true,
            Kinds::Command => !seed,
            Kinds::Seed => seed,
        }
    }
}

/// How a worker gets a key that `[defaults]` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inherit {
    /// The worker's own value replaces the one from `[defaults]` (a list
    /// too: lists are not merged).
    Replace,
    /// Both apply, the worker's last: `env`, merged per variable.
    Merge,
}

/// A value read: it sets its field of the config it is merged into.
pub(super) struct Value<C> {
    apply: Box<dyn Fn(&mut C)>,
    /// Where each element is written, for the checks after the merge: each
    /// function's place; the command's program.
    pub places: Vec<At>,
}

impl<C: 'static> Value<C> {
    fn new<T: Clone + 'static>(value: T, places: Vec<At>, put: fn(&mut C, T)) -> Value<C> {
        Value {
            apply: Box::new(move |config| put(config, value.clone())),
            places,
        }
    }
}

impl<T: Clone + 'static, C: 'static> Read<C> for Put<T, C> {
    fn read(&self, ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Value<C>> {
        Some(Value::new((self.0)(ctx, at, value)?, Vec::new(), self.1))
    }
}

impl<T: Clone + 'static, C: 'static> Read<C> for PutPlaced<T, C> {
    fn read(&self, ctx: &mut Ctx, at: &At, value: &Loc) -> Option<Value<C>> {
        let (value, places) = (self.0)(ctx, at, value)?;
        Some(Value::new(value, places, self.1))
    }
}

const fn top(name: &'static str, read: &'static dyn Read<Config>) -> Spec {
    Spec {
        name,
        doc: name,
        place: Place::Top(read),
    }
}

const fn tables(name: &'static str, doc: &'static str) -> Spec {
    Spec {
        name,
        doc,
        place: Place::Tables,
    }
}

/// A worker key for every kind, that a worker's own value replaces.
const fn worker(
    name: &'static str,
    doc: &'static str,
    read: &'static dyn Read<WorkerConfig>,
) -> Spec {
    worker_key(name, doc, read, Kinds::All, Inherit::Replace)
}

const fn command_only(name: &'static str, read: &'static dyn Read<WorkerConfig>) -> Spec {
    worker_key(name, name, read, Kinds::Command, Inherit::Replace)
}

const fn seed_only(name: &'static str, read: &'static dyn Read<WorkerConfig>) -> Spec {
    worker_key(name, name, read, Kinds::Seed, Inherit::Replace)
}

const fn merged(name: &'static str, read: &'static dyn Read<WorkerConfig>) -> Spec {
    worker_key(name, name, read, Kinds::All, Inherit::Merge)
}

const fn worker_key(
    name: &'static str,
    doc: &'static str,
    read: &'static dyn Read<WorkerConfig>,
    kinds: Kinds,
    inherit: Inherit,
) -> Spec {
    Spec {
        name,
        doc,
        place: Place::Worker {
            read,
            kinds,
            inherit,
        },
    }
}

/// A worker key read by `read` into its field by `put`.
const fn to<T>(read: Reader<T>, put: fn(&mut WorkerConfig, T)) -> Put<T, WorkerConfig> {
    Put(read, put)
}

/// [`to`] for a list whose elements' places are kept.
const fn placed<T>(
    read: Reader<(T, Vec<At>)>,
    put: fn(&mut WorkerConfig, T),
) -> PutPlaced<T, WorkerConfig> {
    PutPlaced(read, put)
}

/// Every key, the top-level ones first. Within each group, the first of
/// two equally close keys is the one "did you mean" names.
#[rustfmt::skip]
pub(super) const KEYS: &[Spec] = &[
    top("stop_timeout", &Put(read::duration, |c: &mut Config, d| c.stop_timeout = d)),
    top("metrics_listen", &Put(read::listen, |c: &mut Config, a| c.metrics_listen = Some(a))),
    top("control_group", &Put(read::account, |c: &mut Config, g| c.control_group = Some(g))),
    tables("defaults", "how-defaults-merges"),
    tables("workers", "layout-of-the-file"),
    worker("job_servers", "job_servers", &to(read::job_servers, |w, s| w.job_servers = s)),
    worker("kind", "kind", &to(read::kind, |w, k| w.kind = k)),
    command_only("command", &placed(read::command, |w, argv| w.command = argv)),
    worker("functions", "functions", &placed(read::functions, |w, names| w.functions = names)),
    worker("prefix", "prefix", &to(read::prefix, |w, p| w.prefix = p)),
    worker("min", "min-and-max", &to(read::count, |w, n| w.min = n)),
    worker("max", "min-and-max", &to(read::positive, |w, n| w.max = n)),
    worker("workleft", "workleft", &to(read::jobs, |w, n| w.workleft = n)),
    worker("idle_timeout", "idle_timeout", &to(read::duration, |w, d| w.idle_timeout = d)),
    worker("timeout", "timeout", &to(read::limit, |w, d| w.timeout = d)),
    worker("max_lifetime", "max_lifetime", &to(read::limit, |w, d| w.max_lifetime = d)),
    worker("recycle_rss", "recycle_rss", &to(read::memory, |w, b| w.recycle_rss = b)),
    merged("env", &to(read::env, |w, vars| w.env.extend(vars))),
    worker("working_directory", "working_directory", &to(read::directory, |w, d| w.working_directory = Some(d))),
    worker("user", "user-and-group", &to(read::account, |w, u| w.user = Some(u))),
    worker("group", "user-and-group", &to(read::account, |w, g| w.group = Some(g))),
    worker("memory_max", "resource-limits", &to(read::memory, |w, b| w.memory_max = b)),
    worker("memory_high", "resource-limits", &to(read::memory, |w, b| w.memory_high = b)),
    worker("cpu_quota", "resource-limits", &to(read::cpu_quota, |w, p| w.cpu_quota = Some(p))),
    worker("cpu_weight", "resource-limits", &to(read::cpu_weight, |w, n| w.cpu_weight = Some(n))),
    worker("tasks_max", "resource-limits", &to(read::tasks_max, |w, n| w.tasks_max = n)),
    worker("max_packet_size", "max_packet_size", &to(read::packet_size, |w, b| w.max_packet_size = b)),
    worker("max_spawn_rate", SPAWN, &to(read::positive, |w, n| w.max_spawn_rate = n)),
    worker("scale_on_queue", SPAWN, &to(read::boolean, |w, b| w.scale_on_queue = b)),
    worker("prefetch", "prefetch", &to(read::boolean, |w, b| w.prefetch = b)),
    worker("proxy", "proxy", &to(read::boolean, |w, b| w.proxy = b)),
    worker("pin_cpu", "pin_cpu", &to(read::boolean, |w, b| w.pin_cpu = b)),
    worker("ready_timeout", "ready_timeout", &to(read::deadline, |w, d| w.ready_timeout = d)),
    seed_only("libs", &to(read::libs, |w, dirs| w.libs = dirs)),
    // The interpreter alone is the command; the runner adds the library's arguments.
    seed_only("interpreter", &to(read::interpreter, |w, program| w.command = vec![program])),
];

/// The docs section of `max_spawn_rate` and `scale_on_queue`.
const SPAWN: &str = "max_spawn_rate-and-scale_on_queue";

/// The entry for `name`, in whichever table it belongs.
pub(super) fn find(name: &str) -> Option<&'static Spec> {
    KEYS.iter().find(|spec| spec.name == name)
}

impl Spec {
    pub fn top_level(&self) -> bool {
        !matches!(self.place, Place::Worker { .. })
    }

    /// The reader of a top-level key.
    pub fn top(&self) -> Option<&'static dyn Read<Config>> {
        match self.place {
            Place::Top(read) => Some(read),
            Place::Tables | Place::Worker { .. } => None,
        }
    }

    /// The reader of a worker key.
    pub fn worker(&self) -> Option<&'static dyn Read<WorkerConfig>> {
        match self.place {
            Place::Worker { read, .. } => Some(read),
            Place::Tables | Place::Top(_) => None,
        }
    }
}

/// One table after the first pass: each key it sets, with where, and its
/// value, or `None` when that was bad.
pub(super) struct Layer<C> {
    entries: Vec<(&'static str, At, Option<Value<C>>)>,
}

impl<C> Default for Layer<C> {
    fn default() -> Self {
        Layer {
            entries: Vec::new(),
        }
    }
}

/// What one table (or a worker with `[defaults]` under it) says of a key.
pub(super) enum Setting<'a, C> {
    Unset,
    /// Present but bad; already reported.
    Invalid,
    Set(&'a Value<C>, &'a At),
}

impl<C> Layer<C> {
    pub fn insert(&mut self, name: &'static str, at: At, value: Option<Value<C>>) {
        self.entries.push((name, at, value));
    }

    pub fn get(&self, name: &str) -> Setting<'_, C> {
        // A misspelt name would read as "unset" and skip its checks.
        debug_assert!(find(name).is_some(), "`{name}` is not in the key table");
        match self.entries.iter().find(|(n, _, _)| *n == name) {
            None => Setting::Unset,
            Some((_, _, None)) => Setting::Invalid,
            Some((_, at, Some(value))) => Setting::Set(value, at),
        }
    }
}

impl<'a, C> Setting<'a, C> {
    /// This, or `under` when this is unset.
    pub fn over(self, under: Setting<'a, C>) -> Setting<'a, C> {
        match self {
            Setting::Unset => under,
            set_or_invalid => set_or_invalid,
        }
    }

    /// Where a valid value is written.
    pub fn at(&self) -> Option<&'a At> {
        match self {
            Setting::Set(_, at) => Some(at),
            Setting::Unset | Setting::Invalid => None,
        }
    }

    /// `None` when invalid; else where it is set, if it is (`Some(None)`:
    /// the built-in default).
    pub fn place(&self) -> Option<Option<&'a At>> {
        match self {
            Setting::Invalid => None,
            other => Some(other.at()),
        }
    }

    /// Where each element is written (none when unset or invalid).
    pub fn places(&self) -> &'a [At] {
        match self {
            Setting::Set(value, _) => &value.places,
            Setting::Unset | Setting::Invalid => &[],
        }
    }

    /// Puts a valid value into `config`; false when it is invalid.
    pub fn apply(&self, config: &mut C) -> bool {
        match self {
            Setting::Set(value, _) => (value.apply)(config),
            Setting::Unset => {}
            Setting::Invalid => return false,
        }
        true
    }
}
