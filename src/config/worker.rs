//! The second pass over one worker: `[defaults]` under its own keys (as the
//! key table says each is inherited), the built-in defaults under both, then
//! the checks that need the whole worker: keys of the wrong kind, required
//! keys, min ≤ max, and, with a [`Probe`], its program, module, users and
//! directory on the host.

use std::path::{Path, PathBuf};

use super::keys::{self, Layer, Place, Setting};
use super::probe::Probe;
use super::read::{quote_key, At, Ctx};
use super::{HandlerKind, WorkerConfig};

/// Where handlers are looked up when neither the worker's `env` nor the
/// environment has a `PATH` (the value systemd gives services).
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Worker `name` (its header on `header_line`) from its own table `own`
/// over `[defaults]`, with where each of its functions is written; `None`
/// when something it needs is bad or missing (and reported).
pub(super) fn finish(
    ctx: &mut Ctx,
    probe: Option<&dyn Probe>,
    name: &str,
    header_line: usize,
    defaults: &Layer<WorkerConfig>,
    own: &Layer<WorkerConfig>,
) -> Option<(WorkerConfig, Vec<At>)> {
    let base = format!("workers.{}", quote_key(name));
    let header = |key: &str| At {
        line: header_line,
        key: format!("{base}.{key}"),
    };
    let merged = |key: &str| own.get(key).over(defaults.get(key));
    let mut w = WorkerConfig::builtin(name);

    // The kind first: which keys apply depends on it.
    let kind = merged("kind");
    let kind_ok = kind.apply(&mut w);
    let language = kind_ok.then(|| w.kind.language()).flatten();
    if let Some(language) = language {
        w.command = vec![language.default_interpreter().to_owned()];
    }
    let mut valid = kind_ok;
    for spec in keys::KEYS {
        let Place::Worker { kinds, inherit, .. } = spec.place else {
            continue;
        };
        if !kinds.include(language.is_some()) {
            // Set in the worker's own table for the other family of kinds
            // (a `[defaults]` value may serve other workers: no complaint).
            if let (Some(at), true) = (own.get(spec.name).at(), kind_ok) {
                ctx.err_at(at, wrong_kind(spec.name, w.kind, name));
            }
            continue;
        }
        valid &= match inherit {
            keys::Inherit::Replace => merged(spec.name).apply(&mut w),
            keys::Inherit::Merge => {
                defaults.get(spec.name).apply(&mut w) & own.get(spec.name).apply(&mut w)
            }
        };
    }
    if let (Some(_), Err(message)) = (language, crate::seed::check_worker_name(name)) {
        ctx.err_at(&header("kind"), message);
    }

    // Where the program is written: the command's first element, or for
    // a seed-style worker its interpreter (the default one: its kind).
    let program_at = match language {
        Some(_) => match merged("interpreter") {
            Setting::Set(_, at) => Some(at.clone()),
            Setting::Invalid => None,
            Setting::Unset => Some(kind.at().cloned().unwrap_or_else(|| header("kind"))),
        },
        None => match merged("command") {
            Setting::Unset => {
                ctx.err_at(
                    &header("command"),
                    "missing; every worker needs command = [\"/path/to/program\", \"arg\", ...]",
                );
                valid = false;
                None
            }
            command => command.places().first().cloned(),
        },
    };

    let libs = merged("libs");
    if let (Some(language), Setting::Unset) = (language, &libs) {
        ctx.err_at(
            &header("libs"),
            format!(
                "missing; a {} worker needs libs = [\"/opt/workers\"], the directories \
                 where its module {} is looked for",
                w.kind.name(),
                language.module_file(name)
            ),
        );
        valid = false;
    }

    let functions = merged("functions");
    let needs_functions = kind_ok && w.kind != HandlerKind::Native && language.is_none();
    match &functions {
        Setting::Unset if needs_functions => {
            ctx.err_at(
                &header("functions"),
                format!(
                    "missing; a {} worker registers at least one function, e.g. functions = [\"resize\"]",
                    w.kind.name()
                ),
            );
            valid = false;
        }
        Setting::Set(_, at)
            if kind_ok && w.functions.is_empty() && w.kind != HandlerKind::Native =>
        {
            let whose = if at.in_defaults() {
                format!(" (inherited by {base})")
            } else {
                String::new()
            };
            ctx.err_at(
                at,
                format!("must not be empty for a {} worker{whose}", w.kind.name()),
            );
            valid = false;
        }
        _ => {}
    }
    let function_places = functions.places().to_vec();

    if let (Some(min_at), Some(max_at)) = (merged("min").place(), merged("max").place()) {
        if w.min > w.max {
            min_exceeds_max(ctx, &base, (w.min, min_at), (w.max, max_at));
        }
    }

    if let Some(probe) = probe {
        on_host(
            ctx,
            probe,
            &w,
            &merged,
            program_at.as_ref(),
            &function_places,
        );
    }
    valid.then_some((w, function_places))
}

/// Why a key of one family of kinds is wrong in a worker of `kind`.
fn wrong_kind(key: &str, kind: HandlerKind, name: &str) -> String {
    match kind.language() {
        Some(language) => format!(
            "a {} worker has no {key}: slotman runs its library on the module {}; \
             `interpreter` chooses the program",
            kind.name(),
            language.module_file(name)
        ),
        None => format!(
            "only perl, python and php workers have {key}, not a {} worker",
            kind.name()
        ),
    }
}

/// The checks against the host: the program (for a bare name, on the
/// worker's PATH), a seed-style worker's module, users and groups, the
/// working directory.
fn on_host<'a>(
    ctx: &mut Ctx,
    probe: &dyn Probe,
    w: &WorkerConfig,
    merged: &dyn Fn(&str) -> Setting<'a, WorkerConfig>,
    program_at: Option<&At>,
    function_places: &[At],
) {
    let mut program = None;
    if let (Some(at), Some(argv0)) = (program_at, w.command.first()) {
        let search_path = w
            .env
            .get("PATH")
            .cloned()
            .or_else(|| probe.search_path())
            .unwrap_or_else(|| FALLBACK_PATH.to_owned());
        match program_exists(probe, argv0, &search_path) {
            Ok(path) => program = Some(path),
            Err(message) => ctx.err_at(at, message),
        }
    }
    if let (Some(language), Some(libs_at), Some(program)) =
        (w.kind.language(), merged("libs").at(), &program)
    {
        let functions: Vec<(String, At)> = w
            .functions
            .iter()
            .cloned()
            .zip(function_places.iter().cloned())
            .collect();
        seed_module(
            ctx,
            probe,
            language,
            &w.name,
            (&w.libs, libs_at),
            program,
            &functions,
        );
    }
    for (key, account, group) in [("user", &w.user, false), ("group", &w.group, true)] {
        if let (Some(at), Some(name)) = (merged(key).at(), account) {
            if let Err(why) = probe.account(name, group) {
                ctx.err_at(at, why);
            }
        }
    }
    if let (Some(at), Some(dir)) = (merged("working_directory").at(), &w.working_directory) {
        if let Err(why) = probe.directory(dir) {
            ctx.err_at(at, format!("`{}` {why}", dir.display()));
        }
    }
}

/// Says min > max at the key the user is most likely to change: one set in
/// the worker's own table before one inherited from `[defaults]`.
fn min_exceeds_max(
    ctx: &mut Ctx,
    base: &str,
    (min, min_at): (u32, Option<&At>),
    (max, max_at): (u32, Option<&At>),
) {
    let origin = |at: Option<&At>| match at {
        None => ", the default",
        Some(at) if at.in_defaults() => ", from [defaults]",
        Some(_) => "",
    };
    let own = |at: Option<&At>| at.is_some_and(|a| !a.in_defaults());
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
pub(super) fn program_exists(
    probe: &dyn Probe,
    program: &str,
    search_path: &str,
) -> Result<PathBuf, String> {
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
