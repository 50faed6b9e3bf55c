//! The `exec` handler: the worker's command run once per job, payload on
//! stdin, result from stdout, exit status 0 for success (DESIGN.md).
//!
//! Also home of what both process-running kinds share: [`Launcher`] builds
//! the handler's command line, environment and credentials, and
//! [`GroupChild`] runs it in a process group of its own so that a kill
//! reaches everything it started.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Group, Pid, Uid, User};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::{sleep_until, Instant};

use super::*;

/// How long a command that has exited may keep its stdout open (a
/// background process that escaped its process group) before the job fails.
const STDOUT_GRACE: Duration = Duration::from_secs(2);

/// Runs the worker's command once per job.
#[derive(Debug)]
pub struct ExecHandler {
    launcher: Launcher,
    /// Largest result accepted (`worker.max_packet_size`).
    max_result: usize,
}

impl ExecHandler {
    /// Prepares the command; user and group names are resolved here, and a
    /// failure to resolve them fails each job with [`FailReason::Spawn`].
    pub fn new(worker: &WorkerConfig, id: &SlotIdentity) -> Self {
        ExecHandler {
            launcher: Launcher::new(worker, id),
            max_result: usize::try_from(worker.max_packet_size).unwrap_or(usize::MAX),
        }
    }

    /// Runs one job in a fresh process. `events` is unused: an exec handler
    /// reports nothing but its result.
    pub async fn run(
        &mut self,
        job: &Job,
        _events: &mpsc::Sender<JobEvent>,
        timeout: Option<Duration>,
    ) -> Outcome {
        let unique = job.unique.as_deref().unwrap_or_default();
        // The environment holds any byte but NUL. Gearman cannot carry a
        // NUL in a unique id either (it separates a packet's arguments), so
        // this is only a guard: such an id is left out rather than cut.
        let unique = match unique.contains(&0) {
            false => Some(OsStr::from_bytes(unique)),
            true => {
                tracing::warn!(
                    handle = job.handle,
                    "the job's unique id contains a NUL byte; GEARMAN_UNIQUE is left unset"
                );
                None
            }
        };
        let mut job_env = vec![
            ("SLOTMAN_FUNCTION", OsStr::new(&job.function)),
            ("GEARMAN_FUNCTION", OsStr::new(&job.gearman_function)),
            ("GEARMAN_HANDLE", OsStr::new(&job.handle)),
        ];
        job_env.extend(unique.map(|u| ("GEARMAN_UNIQUE", u)));
        let mut cmd = match self.launcher.command(&job_env) {
            Ok(cmd) => cmd,
            Err(why) => return Outcome::Fail(FailReason::Spawn(why)),
        };
        if unique.is_none() {
            cmd.env_remove("GEARMAN_UNIQUE");
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = match GroupChild::spawn(&mut cmd) {
            Ok(child) => child,
            Err(e) => {
                let why = format!("cannot start {:?}: {e}", self.launcher.program());
                return Outcome::Fail(FailReason::Spawn(why));
            }
        };
        let stdin = child.child.stdin.take();
        let stdout = child.child.stdout.take();
        let exchange = exchange(
            &mut child,
            stdin,
            stdout,
            job.payload.clone(),
            self.max_result,
        );
        let ended = match timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| limit),
            None => Ok(exchange.await),
        };
        match ended {
            Ok(Ok((status, output))) => match (status.code(), status.signal()) {
                (Some(0), _) => Outcome::Complete(Bytes::from(output)),
                (Some(_), _) => Outcome::Fail(FailReason::Declined(describe(status))),
                (None, _) => Outcome::Fail(FailReason::Died(describe(status))),
            },
            Ok(Err(failure)) => {
                child.kill_and_reap().await;
                Outcome::Fail(match failure {
                    ExchangeError::TooBig => FailReason::Framing(format!(
                        "result larger than max_packet_size ({} bytes)",
                        self.max_result
                    )),
                    ExchangeError::StdoutHeld(status) => FailReason::Died(format!(
                        "{}, but its stdout stayed open",
                        describe(status)
                    )),
                    ExchangeError::Io(what, e) => FailReason::Died(format!("{what}: {e}")),
                })
            }
            Err(limit) => {
                child.kill_and_reap().await;
                Outcome::Fail(FailReason::Timeout(limit))
            }
        }
    }
}

/// Why a job's exchange with its process ended without a usable result.
enum ExchangeError {
    /// stdout passed the result limit.
    TooBig,
    /// The process exited but something it left behind kept stdout open.
    StdoutHeld(ExitStatus),
    Io(&'static str, io::Error),
}

/// Feeds `payload` to the process, collects its stdout and waits for it to
/// exit, all at once: a process may write its result before it has read all
/// of its input, and either pipe can fill up. A process that does not read
/// its input at all is fine (the write ends with EPIPE).
async fn exchange(
    child: &mut GroupChild,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    payload: Bytes,
    max: usize,
) -> Result<(ExitStatus, Vec<u8>), ExchangeError> {
    let mut write = pin!(async move {
        if let Some(mut stdin) = stdin {
            if let Err(e) = stdin.write_all(&payload).await {
                if e.kind() != io::ErrorKind::BrokenPipe {
                    tracing::debug!("writing the payload to the handler failed: {e}");
                }
            }
        } // Dropping stdin closes it: the handler sees end of input.
    });
    let mut read = pin!(read_limited(stdout, max));
    let mut grace = pin!(sleep_until(far_future()));
    let (mut written, mut status, mut output) = (false, None, None);
    loop {
        tokio::select! {
            () = &mut write, if !written => written = true,
            read = &mut read, if output.is_none() => output = Some(read?),
            exited = child.child.wait(), if status.is_none() => {
                let exited = exited.map_err(|e| ExchangeError::Io("waiting for the handler failed", e))?;
                // Whatever the command left behind dies with it, so that its
                // stdout reaches end of file.
                child.kill_group();
                status = Some(exited);
                grace.as_mut().reset(Instant::now() + STDOUT_GRACE);
            }
            () = &mut grace, if status.is_some() => {
                if let Some(status) = status {
                    return Err(ExchangeError::StdoutHeld(status));
                }
            }
        }
        if let (Some(status), Some(output)) = (status, output.as_mut()) {
            return Ok((status, std::mem::take(output)));
        }
    }
}

/// Reads `out` to its end, failing once it passes `max` bytes.
async fn read_limited(
    out: Option<impl AsyncRead + Unpin>,
    max: usize,
) -> Result<Vec<u8>, ExchangeError> {
    let mut result = Vec::new();
    if let Some(out) = out {
        let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
        out.take(limit)
            .read_to_end(&mut result)
            .await
            .map_err(|e| ExchangeError::Io("reading the handler's stdout failed", e))?;
    }
    match result.len() > max {
        true => Err(ExchangeError::TooBig),
        false => Ok(result),
    }
}

/// A deadline that never comes, for a timer armed later.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// `exit status N` or `signal N`, the wording of [`FailReason`]s.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Everything about starting the worker's command that does not change from
/// one process to the next.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    /// Program and arguments, as configured.
    command: Vec<String>,
    /// `worker.env`, then the slot's identity: set on top of what is inherited.
    env: Vec<(String, String)>,
    working_directory: Option<PathBuf>,
    /// The ids to switch to, or why they could not be resolved.
    credentials: Result<Credentials, String>,
    /// A seed-style worker: the library's arguments go after the
    /// interpreter (`command`), naming the library directory as it is when
    /// each process starts.
    seed: Option<Seed>,
}

/// What a seed-style worker's interpreter is run on.
#[derive(Debug, Clone)]
struct Seed {
    language: crate::seed::Language,
    libs: Vec<PathBuf>,
    /// The module's name: the worker's.
    name: String,
}

/// Ids to switch to; `None` where ours will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Credentials {
    uid: Option<Uid>,
    gid: Option<Gid>,
}

impl Launcher {
    pub(crate) fn new(worker: &WorkerConfig, id: &SlotIdentity) -> Self {
        let mut env: Vec<(String, String)> = worker
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("SLOTMAN_SERVICE".into(), id.service.clone()));
        env.push(("SLOTMAN_WORKER".into(), id.worker.clone()));
        env.push(("SLOTMAN_SLOT".into(), id.slot.to_string()));
        Launcher {
            command: worker.command.clone(),
            env,
            working_directory: worker.working_directory.clone(),
            credentials: resolve_credentials(worker.user.as_deref(), worker.group.as_deref()),
            seed: worker.kind.language().map(|language| Seed {
                language,
                libs: worker.libs.clone(),
                name: worker.name.clone(),
            }),
        }
    }

    /// The program, for messages.
    pub(crate) fn program(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    /// The command, ready to spawn: the slot's environment minus
    /// [`scrubbed_env`], plus `worker.env`, the slot's identity and then
    /// `extra`; stderr inherited, stdin and stdout left to the caller. Fails
    /// only when the user or group could not be resolved (or the command is
    /// empty).
    pub(crate) fn command(&self, extra: &[(&str, &OsStr)]) -> Result<Command, String> {
        let credentials = self.credentials.clone()?;
        let Some((program, args)) = self.command.split_first() else {
            return Err("the worker's command is empty".into());
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(seed) = &self.seed {
            // Written (or checked) per process: a library directory removed
            // under a running slot is written again.
            let lib = crate::seed::library_dir()
                .map_err(|e| format!("cannot write slotman's worker library: {e}"))?;
            cmd.args(crate::seed::worker_args(
                seed.language,
                &lib,
                &seed.libs,
                &seed.name,
                false,
            ));
        }
        for name in scrubbed_env() {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.envs(extra.iter().copied());
        if let Some(dir) = &self.working_directory {
            cmd.current_dir(dir);
        }
        if let Some(gid) = credentials.gid {
            cmd.gid(gid.as_raw());
        }
        if let Some(uid) = credentials.uid {
            cmd.uid(uid.as_raw());
        }
        let stderr = super::handler_stderr().map_or_else(Stdio::inherit, Stdio::from);
        cmd.stderr(stderr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        // No pre_exec hook: with one, std falls back from posix_spawn
        // (clone(CLONE_VM|CLONE_VFORK)) to fork(), which copies the runner's
        // page tables and costs ~130 µs per exec job (bench/profile --kind
        // exec). So no PR_SET_PDEATHSIG here (it would be
        // sound: the runner spawns from its one thread, which lives as long
        // as it). "A handler never outlives its runner" comes instead from:
        // the runner, which kills the group whenever it drops a job
        // (GroupChild), also once its manager is gone and stop_timeout has
        // passed (slot::process_main); the manager, which kills the
        // runner's session when a runner dies by a signal
        // (placement::child::kill_session); and under systemd the scope.
        // Left open outside systemd: a runner SIGKILLed after its manager.
        Ok(cmd)
    }
}

/// Resolves `user` and `group` (names or numeric ids) to the ids to switch
/// to. A user without a group means the user's primary group. An id equal to
/// our own is left alone, so an unprivileged slotman can name its own user.
fn resolve_credentials(user: Option<&str>, group: Option<&str>) -> Result<Credentials, String> {
    let (uid, primary_gid) = match user {
        None => (None, None),
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(raw) => User::from_uid(Uid::from_raw(raw))
                    .map(|u| u.map(|u| (u.uid, Some(u.gid))))
                    .map(|u| u.or(Some((Uid::from_raw(raw), None)))),
                Err(_) => User::from_name(name).map(|u| u.map(|u| (u.uid, Some(u.gid)))),
            };
            match found {
                Ok(Some((uid, gid))) => (Some(uid), gid),
                Ok(None) => return Err(format!("no such user {name:?}")),
                Err(e) => return Err(format!("cannot look up user {name:?}: {e}")),
            }
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(raw) => Ok(Some(Gid::from_raw(raw))),
                Err(_) => Group::from_name(name).map(|g| g.map(|g| g.gid)),
            };
            match found {
                Ok(Some(gid)) => Some(gid),
                Ok(None) => return Err(format!("no such group {name:?}")),
                Err(e) => return Err(format!("cannot look up group {name:?}: {e}")),
            }
        }
    };
    Ok(Credentials {
        uid: uid.filter(|&uid| uid != Uid::effective()),
        gid: gid.filter(|&gid| gid != Gid::effective()),
    })
}

/// A handler process that leads a process group of its own. Dropping it
/// before it was reaped kills the whole group (tokio's `kill_on_drop` alone
/// would reach only the leader), so a cancelled job leaves nothing behind.
#[derive(Debug)]
pub(super) struct GroupChild {
    pub(super) child: Child,
    /// Process group id = the leader's pid.
    pgid: Option<Pid>,
}

impl GroupChild {
    /// Spawns `cmd`, which must come from [`Launcher::command`] (own group).
    pub(super) fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let child = cmd.spawn()?;
        let pgid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(Pid::from_raw);
        Ok(GroupChild { child, pgid })
    }

    /// SIGKILLs every process in the group.
    ///
    /// Before the leader is reaped its pid cannot be reused, so this reaches
    /// exactly the handler's processes. After, it still does while any of
    /// them lives (a process group keeps its id allocated); with none left
    /// the signal finds no one, unless in that instant the pid was reused
    /// for a new group leader, which would take a full wrap of the pid space.
    pub(super) fn kill_group(&self) {
        if let Some(pgid) = self.pgid {
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => tracing::warn!(
                    pgid = pgid.as_raw(),
                    "cannot kill handler process group: {e}"
                ),
            }
        }
    }

    /// Kills the group and reaps the leader; its status if it could be had.
    pub(super) async fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        self.kill_group();
        self.child.wait().await.ok()
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        // `id()` is `None` once the leader has been reaped: the group has then
        // been dealt with by whoever reaped it.
        if self.child.id().is_some() {
            self.kill_group();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ids_are_left_alone() {
        let me = User::from_uid(Uid::effective()).ok().flatten();
        if let Some(me) = me {
            let got = resolve_credentials(Some(&me.name), None).expect("resolves");
            assert_eq!(got.uid, None);
        }
        let got = resolve_credentials(Some(&Uid::effective().to_string()), None).expect("resolves");
        assert_eq!(got.uid, None);
    }

    #[test]
    fn unknown_names_are_errors() {
        let user = resolve_credentials(Some("no-such-user-slotman-test"), None);
        assert!(matches!(user, Err(why) if why.contains("no such user")));
        let group = resolve_credentials(None, Some("no-such-group-slotman-test"));
        assert!(matches!(group, Err(why) if why.contains("no such group")));
    }

    #[test]
    fn describes_statuses_in_the_contract_wording() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "signal 9");
    }
}
