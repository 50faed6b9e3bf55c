//! The slot runner process (`slotman slot`, started only by a manager).
//!
//! One slot = one runner process holding the Gearman connections of one
//! worker type + the user's handler. [`process_main`] is the process entry:
//! it takes its [`report::SlotSpec`] from the manager's socket and reports
//! back over it; [`runner::run`] is the same logic without a process around
//! it (used by tests).

pub mod connection;
pub mod cpu;
pub mod handler;
pub mod memory;
pub mod native;
pub mod relay;
pub mod report;
pub mod runner;
pub mod wire;

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use report::{ExitReason, ToSlot, CONTROL_FD_ENV, MAX_LINE};

/// Exit status of a slot whose handler could not start (the manager backs off).
pub const EXIT_HANDLER_FAILED: i32 = 3;

/// Exit status of a slot that lost its manager and abandoned its job in hand.
pub const EXIT_LEFT_ALONE: i32 = 4;

/// The whole runner process (`slotman-slot`, or `slotman slot`): logging, a
/// one-thread runtime (a slot runs one job at a time, and one thread keeps
/// its footprint small), then [`process_main`]. Returns the exit status.
pub fn main_entry(verbose: bool) -> i32 {
    name_after_argv0();
    crate::systemd::journal::init_runner_logging(verbose);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slotman: {e}");
            return 1;
        }
    };
    match rt.block_on(process_main()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("slotman: {e:#}");
            1
        }
    }
}

/// A manager starts its runner through a pinned descriptor
/// (`/proc/self/fd/N`, see `placement::runner`), which would make the
/// process's name (`comm`: ps, top, journald's `_COMM`) "N"; the name
/// comes from `argv[0]`, which the manager sets to the runner's path.
fn name_after_argv0() {
    let Some(arg0) = std::env::args_os().next() else {
        return;
    };
    let path = std::path::Path::new(&arg0);
    let Some(name) = path.file_name() else { return };
    let mut bytes = std::os::unix::ffi::OsStrExt::as_bytes(name).to_vec();
    bytes.truncate(15); // the kernel's limit, without the NUL
    if let Ok(name) = std::ffi::CString::new(bytes) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes from the pointer, which `name` keeps alive.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
}

/// Entry point of `slotman slot`. Returns the process exit status.
pub async fn process_main() -> anyhow::Result<i32> {
    let fd: i32 = std::env::var(CONTROL_FD_ENV)
        .map_err(|_| anyhow::anyhow!("`slotman slot` is started by `slotman run`, not by hand ({CONTROL_FD_ENV} is not set)"))?
        .parse()?;
    // The fd number comes from our manager, which passed it open; nothing
    // else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    std::env::remove_var(CONTROL_FD_ENV);
    // Keep the socket out of handler processes: their EOF must mean ours.
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    let std_stream = std::os::unix::net::UnixStream::from(owned);
    std_stream.set_nonblocking(true)?;
    let stream = UnixStream::from_std(std_stream)?;
    let (read_half, mut write_half) = stream.into_split();
    let mut lines = BufReader::new(read_half);

    let spec = match read_line(&mut lines).await? {
        Some(line) => match report::decode::<ToSlot>(&line)? {
            ToSlot::Start(spec) => *spec,
            ToSlot::Drain => return Ok(0),
            ToSlot::Pin { .. } | ToSlot::Pause { .. } => {
                anyhow::bail!("the manager's first message was not `start`")
            }
        },
        None => return Ok(0),
    };

    let drain = CancellationToken::new();
    // SIGTERM/SIGINT: finish the job in hand, then leave.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let on_signal = drain.clone();
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        on_signal.cancel();
    });
    // The manager gives a CPU to stdio slots only.
    let cpu = Arc::new(cpu::CpuPair::new(spec.cpu, spec.pin));
    // Messages from the manager; EOF means it is gone: drain as well. Only
    // the manager holds the other end, so EOF is its death notice (however
    // it died), with no PR_SET_PDEATHSIG needed.
    let on_msg = drain.clone();
    let on_pin = cpu.clone();
    let (pause_tx, pause) = tokio::sync::watch::channel(false);
    let manager_gone = CancellationToken::new();
    let on_gone = manager_gone.clone();
    tokio::spawn(async move {
        loop {
            match read_line(&mut lines).await {
                Ok(Some(line)) => match report::decode::<ToSlot>(&line) {
                    Ok(ToSlot::Drain) => on_msg.cancel(),
                    Ok(ToSlot::Pin { on }) => on_pin.set_wanted(on),
                    Ok(ToSlot::Pause { on }) => {
                        let _ = pause_tx.send(on);
                    }
                    Ok(ToSlot::Start(_)) | Err(_) => {}
                },
                _ => {
                    on_msg.cancel();
                    on_gone.cancel();
                    return;
                }
            }
        }
    });
    let (tx, mut rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            // Reports queued together go out in one write.
            let mut out = report::encode(&r);
            while let Ok(r) = rx.try_recv() {
                out.extend_from_slice(&report::encode(&r));
            }
            if write_half.write_all(&out).await.is_err() {
                break; // The manager is gone; the reader side drains us.
            }
        }
    });
    let stop_timeout = spec.stop_timeout;
    let reason = tokio::select! {
        reason = runner::run(spec, tx, drain, cpu, pause) => reason,
        () = left_alone(&manager_gone, stop_timeout) => {
            tracing::warn!(
                "the manager is gone and the job in hand outlasted stop_timeout: killing the handler; the job server requeues the job"
            );
            // Dropping the runner (here, and its tasks when the runtime
            // goes) kills every handler's process group (GroupChild).
            return Ok(EXIT_LEFT_ALONE);
        }
    };
    let _ = writer.await;
    Ok(match reason {
        ExitReason::HandlerFailed => EXIT_HANDLER_FAILED,
        ExitReason::Workleft | ExitReason::Drained | ExitReason::OomKilled | ExitReason::Memory => {
            0
        }
    })
}

/// Once the manager is gone, `stop_timeout` later: nobody is left to end a
/// drain that outlasts it (or to clean up after this process), so the slot
/// bounds its own drain, as the manager's stop would have.
async fn left_alone(manager_gone: &CancellationToken, stop_timeout: Option<std::time::Duration>) {
    manager_gone.cancelled().await;
    match stop_timeout {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// One line without its `\n`; `None` at EOF; an over-long line is an error.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        anyhow::bail!("control line too long or truncated");
    }
    line.pop();
    Ok(Some(line))
}
