//! The `slotman` command: parses argv, sets up logging, calls the library,
//! and maps errors to exit codes. No logic of its own.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use slotman::control::client;
use slotman::control::server::RequestKind;

#[derive(Parser)]
#[command(
    name = "slotman",
    version,
    about = "Keeps pools of Gearman workers alive, sized to the load, on systemd",
    long_about = "Keeps pools of Gearman worker processes (slots) alive, sized to the load, \
natively on systemd. Each service is one manager, slotman@SERVICE.service, reading \
/etc/slotman/SERVICE.toml (see slotman.toml(5)); it keeps each worker's pool between \
min and max slots, grows it when every slot is busy, retires idle slots, recycles \
slots after workleft jobs, and applies an edited config on reload without losing a \
job. Under systemd every slot is a transient scope unit with its own limits and \
journal; without systemd the same pools run as plain child processes."
)]
struct Cli {
    /// More log output (debug level).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the manager for one service.
    Run {
        /// Service name: reads /etc/slotman/SERVICE.toml.
        service: Option<String>,
        /// Config file instead (service name = file stem).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where slots live: auto (systemd when run by systemd as root), child, systemd.
        #[arg(long, default_value = "auto")]
        placement: String,
        /// Directory for the control socket (default $RUNTIME_DIRECTORY or /run/slotman).
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
    },
    /// Validate a config without starting anything: everything `run` would
    /// refuse, with FILE:LINE (exit 1 if invalid).
    Check {
        /// A config file, or a service name (reads /etc/slotman/SERVICE.toml).
        file: PathBuf,
    },
    /// Show a running service's pools and slots.
    Status {
        /// The service (default: a line for every running service).
        service: Option<String>,
        /// The whole view as JSON, for scripts (health, problems, slots).
        #[arg(long)]
        json: bool,
        /// Directory of the control socket (default $RUNTIME_DIRECTORY or /run/slotman).
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
    },
    /// Re-read a running service's config and wait until it is applied
    /// (exit 1 with FILE:LINE when it is refused; the pools keep running).
    Reload {
        /// The service (its config is /etc/slotman/SERVICE.toml or the
        /// file `run --config` was given).
        service: String,
        /// Directory of the control socket (default $RUNTIME_DIRECTORY or /run/slotman).
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
    },
    /// Replace every slot (of the named workers, or all), one at a time,
    /// the new slot ready before the old one drains; returns when done.
    /// How new handler code is deployed.
    Restart {
        /// The service.
        service: String,
        /// Workers to restart (default: all).
        workers: Vec<String>,
        /// Directory of the control socket.
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
    },
    /// A slot (or every slot of a worker) finishes its job in hand and is
    /// replaced.
    Drain {
        /// The service.
        service: String,
        /// The worker.
        worker: String,
        /// The slot number (as `slotman status` shows it); default: every slot.
        slot: Option<u32>,
        /// Directory of the control socket.
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
    },
    /// A worker's slots finish their jobs in hand and take no new ones
    /// (they stay registered; jobs wait at the job server) until `resume`,
    /// a reload or a restart of the service. Returns once every slot has
    /// confirmed.
    Pause {
        /// The service.
        service: String,
        /// The worker.
        worker: String,
        /// Directory of the control socket.
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
    },
    /// A paused worker's slots take jobs again.
    Resume {
        /// The service.
        service: String,
        /// The worker.
        worker: String,
        /// Directory of the control socket.
        #[arg(long)]
        runtime_dir: Option<PathBuf>,
    },
    /// Run a self-contained demonstration: job server, pool, burst of jobs.
    Demo {
        /// Use this job server instead of starting one.
        #[arg(long)]
        job_server: Option<String>,
        /// Jobs in the burst.
        #[arg(long, default_value_t = 60)]
        jobs: u32,
    },
    /// Internal: a slot runner, started by `slotman run` when no
    /// `slotman-slot` is installed next to it.
    #[command(hide = true)]
    Slot,
    /// Internal: the demo's stdio handler.
    #[command(hide = true)]
    DemoHandler,
    /// Internal, for packages: writes the man pages (slotman.1, a page per
    /// command, slotman.toml.5) or the bash, zsh and fish completions into DIR.
    #[command(hide = true)]
    Generate {
        /// What to write.
        what: Generated,
        /// Where (created if missing).
        dir: PathBuf,
        /// The date in the man pages' title lines (YYYY-MM-DD).
        #[arg(long, default_value = "")]
        date: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    Man,
    Completions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => {
            let (result, warnings) = slotman::config::check(&service_or_file(file));
            for warning in warnings {
                eprintln!("{warning}");
            }
            match result {
                Ok(summary) => {
                    println!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Generate { what, dir, date } => {
            let written = match what {
                Generated::Man => slotman::generate::man_pages(Cli::command(), &dir, &date),
                Generated::Completions => slotman::generate::completions(Cli::command(), &dir),
            };
            match written {
                Ok(paths) => {
                    for p in paths {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    fail(anyhow::Error::new(e).context(format!("writing into {}", dir.display())))
                }
            }
        }
        Command::DemoHandler => match slotman::demo::handler_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Slot => {
            ExitCode::from(u8::try_from(slotman::slot::main_entry(cli.verbose)).unwrap_or(1))
        }
        Command::Run {
            service,
            config,
            placement,
            runtime_dir,
        } => {
            slotman::systemd::journal::init_logging(cli.verbose);
            let path = match (service, config) {
                (_, Some(path)) => path,
                (Some(s), None) => PathBuf::from(format!("/etc/slotman/{s}.toml")),
                (None, None) => return fail(anyhow::anyhow!("give a SERVICE or --config FILE")),
            };
            let opts = slotman::run::Options {
                config: path,
                placement,
                runtime_dir,
            };
            run_manager(slotman::run::run(opts))
        }
        Command::Status {
            service,
            json,
            runtime_dir,
        } => run_async(slotman::control::client::status(service, json, runtime_dir)),
        Command::Reload {
            service,
            runtime_dir,
        } => run_async(client::command(
            &service,
            RequestKind::Reload,
            vec![],
            None,
            runtime_dir,
        )),
        Command::Restart {
            service,
            workers,
            runtime_dir,
        } => run_async(client::command(
            &service,
            RequestKind::Restart,
            workers,
            None,
            runtime_dir,
        )),
        Command::Drain {
            service,
            worker,
            slot,
            runtime_dir,
        } => run_async(client::command(
            &service,
            RequestKind::Drain,
            vec![worker],
            slot,
            runtime_dir,
        )),
        Command::Pause {
            service,
            worker,
            runtime_dir,
        } => run_async(client::command(
            &service,
            RequestKind::Pause,
            vec![worker],
            None,
            runtime_dir,
        )),
        Command::Resume {
            service,
            worker,
            runtime_dir,
        } => run_async(client::command(
            &service,
            RequestKind::Resume,
            vec![worker],
            None,
            runtime_dir,
        )),
        Command::Demo { job_server, jobs } => {
            run_async(slotman::demo::run(slotman::demo::Options {
                job_server,
                jobs,
            }))
        }
    }
}

/// Commands that talk to sockets: a small multi-thread runtime.
fn run_async<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    block_on(builder, f)
}

/// The manager: one thread. Its work is small and event-driven; on a
/// multi-thread runtime every slot report crossed threads (futex wake-ups
/// between the reading worker thread and the thread running the loop).
fn run_manager<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
    block_on(tokio::runtime::Builder::new_current_thread(), f)
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(
    mut builder: tokio::runtime::Builder,
    f: F,
) -> ExitCode {
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e.into()),
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `billing` (no such file, a bare name) means /etc/slotman/billing.toml,
/// as for `run`.
fn service_or_file(file: PathBuf) -> PathBuf {
    let bare = file.components().count() == 1 && file.extension().is_none();
    if bare && !file.exists() {
        return PathBuf::from(format!("/etc/slotman/{}.toml", file.display()));
    }
    file
}

fn fail(e: anyhow::Error) -> ExitCode {
    if e.downcast_ref::<slotman::config::ConfigError>().is_some() {
        // The config's own messages already name FILE:LINE: key.
        eprintln!("{e}");
        // EX_CONFIG: the unit's RestartPreventExitStatus=78 does not retry.
        return ExitCode::from(78);
    }
    eprintln!("slotman: {e:#}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand, argument and flag says what it is in `--help`.
    #[test]
    fn everything_in_help_has_a_line_of_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "slotman", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:?}");
    }
}
