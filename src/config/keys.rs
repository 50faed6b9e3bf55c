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
    Top(Reader<Config>),
    /// A key of `[defaults]` and `[workers.NAME]`.
    Worker {
        read: Reader<WorkerConfig>,
        kinds: Kinds,
        inherit: Inherit,
    },
}

/// The first pass over one value: what it sets, or `None` when it is bad
/// (and already reported).
pub(super) type Reader<C> = fn(&mut Ctx, &At, &Loc) -> Option<Value<C>>;

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

/// A value that `put`s `value` into its field.
fn set<C: 'static, T: Clone + 'static>(value: T, put: fn(&mut C, T)) -> Option<Value<C>> {
    Some(Value {
        apply: Box::new(move |config| put(config, value.clone())),
        places: Vec::new(),
    })
}

/// [`set`], remembering where each element of `value` is written.
fn set_at<C: 'static, T: Clone + 'static>(
    value: T,
    places: Vec<At>,
    put: fn(&mut C, T),
) -> Option<Value<C>> {
    set(value, put).map(|v| Value { places, ..v })
}

const fn top(name: &'static str, read: Reader<Config>) -> Spec {
    Spec {
        name,
        doc: name,
        place: Place::Top(read),
    }
}

const fn worker(name: &'static str, doc: &'static str, read: Reader<WorkerConfig>) -> Spec {
    for_kinds(name, doc, Kinds::All, read)
}

const fn for_kinds(
    name: &'static str,
    doc: &'static str,
    kinds: Kinds,
    read: Reader<WorkerConfig>,
) -> Spec {
    Spec {
        name,
        doc,
        place: Place::Worker {
            read,
            kinds,
            inherit: Inherit::Replace,
        },
    }
}

/// Every key, the top-level ones first. Within each group, the first of
/// two equally close keys is the one "did you mean" names.
pub(super) const KEYS: &[Spec] = &[
    top("stop_timeout", |c, at, v| {
        set(read::duration(c, at, v)?, |cfg, d| cfg.stop_timeout = d)
    }),
    top("metrics_listen", |c, at, v| {
        set(Some(read::listen(c, at, v)?), |cfg, a| {
            cfg.metrics_listen = a
        })
    }),
    top("control_group", |c, at, v| {
        set(Some(read::account(c, at, v)?), |cfg, g| {
            cfg.control_group = g
        })
    }),
    Spec {
        name: "defaults",
        doc: "how-defaults-merges",
        place: Place::Tables,
    },
    Spec {
        name: "workers",
        doc: "layout-of-the-file",
        place: Place::Tables,
    },
    worker("job_servers", "job_servers", |c, at, v| {
        set(read::job_servers(c, at, v)?, |w, s| w.job_servers = s)
    }),
    worker("kind", "kind", |c, at, v| {
        set(read::kind(c, at, v)?, |w, k| w.kind = k)
    }),
    for_kinds("command", "command", Kinds::Command, |c, at, v| {
        let (argv, program) = read::command(c, at, v)?;
        set_at(argv, vec![program], |w, argv| w.command = argv)
    }),
    worker("functions", "functions", |c, at, v| {
        let (names, places) = read::functions(c, at, v)?.into_iter().unzip();
        set_at(names, places, |w: &mut WorkerConfig, names| {
            w.functions = names
        })
    }),
    worker("prefix", "prefix", |c, at, v| {
        set(read::prefix(c, at, v)?, |w, p| w.prefix = p)
    }),
    worker("min", "min-and-max", |c, at, v| {
        set(read::uint32(c, at, v, 0)?, |w, n| w.min = n)
    }),
    worker("max", "min-and-max", |c, at, v| {
        set(read::uint32(c, at, v, 1)?, |w, n| w.max = n)
    }),
    worker("workleft", "workleft", |c, at, v| {
        set(read::uint(c, at, v, 0..=u64::MAX)?, |w, n| w.workleft = n)
    }),
    worker("idle_timeout", "idle_timeout", |c, at, v| {
        set(read::duration(c, at, v)?, |w, d| w.idle_timeout = d)
    }),
    worker("timeout", "timeout", |c, at, v| {
        set(read::limit(c, at, v)?, |w, d| w.timeout = d)
    }),
    worker("max_lifetime", "max_lifetime", |c, at, v| {
        set(read::limit(c, at, v)?, |w, d| w.max_lifetime = d)
    }),
    worker("recycle_rss", "recycle_rss", |c, at, v| {
        set(read::memory(c, at, v)?, |w, b| w.recycle_rss = b)
    }),
    Spec {
        name: "env",
        doc: "env",
        place: Place::Worker {
            read: |c, at, v| set(read::env(c, at, v), |w, vars| w.env.extend(vars)),
            kinds: Kinds::All,
            inherit: Inherit::Merge,
        },
    },
    worker("working_directory", "working_directory", |c, at, v| {
        let dir = read::working_directory(c, at, v)?;
        set(Some(dir), |w, d| w.working_directory = d)
    }),
    worker("user", "user-and-group", |c, at, v| {
        set(Some(read::account(c, at, v)?), |w, u| w.user = u)
    }),
    worker("group", "user-and-group", |c, at, v| {
        set(Some(read::account(c, at, v)?), |w, g| w.group = g)
    }),
    worker("memory_max", "resource-limits", |c, at, v| {
        set(read::memory(c, at, v)?, |w, b| w.memory_max = b)
    }),
    worker("memory_high", "resource-limits", |c, at, v| {
        set(read::memory(c, at, v)?, |w, b| w.memory_high = b)
    }),
    worker("cpu_quota", "resource-limits", |c, at, v| {
        set(Some(read::cpu_quota(c, at, v)?), |w, p| w.cpu_quota = p)
    }),
    worker("cpu_weight", "resource-limits", |c, at, v| {
        set(Some(read::uint(c, at, v, 1..=10_000)?), |w, n| {
            w.cpu_weight = n
        })
    }),
    worker("tasks_max", "resource-limits", |c, at, v| {
        set(read::tasks_max(c, at, v)?, |w, n| w.tasks_max = n)
    }),
    worker("max_packet_size", "max_packet_size", |c, at, v| {
        set(read::packet_size(c, at, v)?, |w, b| w.max_packet_size = b)
    }),
    worker(
        "max_spawn_rate",
        "max_spawn_rate-and-scale_on_queue",
        |c, at, v| set(read::uint32(c, at, v, 1)?, |w, n| w.max_spawn_rate = n),
    ),
    worker(
        "scale_on_queue",
        "max_spawn_rate-and-scale_on_queue",
        |c, at, v| set(read::boolean(c, at, v)?, |w, b| w.scale_on_queue = b),
    ),
    worker("prefetch", "prefetch", |c, at, v| {
        set(read::boolean(c, at, v)?, |w, b| w.prefetch = b)
    }),
    worker("proxy", "proxy", |c, at, v| {
        set(read::boolean(c, at, v)?, |w, b| w.proxy = b)
    }),
    worker("pin_cpu", "pin_cpu", |c, at, v| {
        set(read::boolean(c, at, v)?, |w, b| w.pin_cpu = b)
    }),
    worker("ready_timeout", "ready_timeout", |c, at, v| {
        set(read::deadline(c, at, v)?, |w, d| w.ready_timeout = d)
    }),
    for_kinds("libs", "libs", Kinds::Seed, |c, at, v| {
        set(read::libs(c, at, v)?, |w, dirs| w.libs = dirs)
    }),
    // The interpreter alone is the command; the runner adds the library's
    // arguments.
    for_kinds("interpreter", "interpreter", Kinds::Seed, |c, at, v| {
        set(vec![read::interpreter(c, at, v)?], |w, argv| {
            w.command = argv
        })
    }),
];

/// The entry for `name`, in whichever table it belongs.
pub(super) fn find(name: &str) -> Option<&'static Spec> {
    KEYS.iter().find(|spec| spec.name == name)
}

impl Spec {
    pub fn top_level(&self) -> bool {
        !matches!(self.place, Place::Worker { .. })
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
