//! The control socket: `$RUNTIME_DIR/SERVICE.sock`, mode 0600 (0660 with
//! `control_group`).
//!
//! Protocol (version [`PROTOCOL_VERSION`]): the client sends one JSON line,
//! `{"version":1,"request":"status"}`; the server answers one JSON line,
//! `{"ok":true,"status":{…ServiceStatus…}}` or `{"ok":false,"error":"…"}`,
//! and closes. A request line is at most [`MAX_REQUEST`] bytes and must
//! arrive within [`REQUEST_TIMEOUT`]; a peer that sends garbage gets an error
//! reply, a peer that stalls is dropped. Each connection is its own task, so
//! neither can hold up the manager, which only ever answers a channel message.
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once; further
//! ones wait in the socket's listen backlog, which costs the manager neither
//! file descriptors nor memory. When even the backlog is full, a client's
//! connect fails with EAGAIN, which `slotman status` takes as "busy" and
//! retries. Concurrent requests share one status view ([`super::snapshot`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::proto::{ServiceStatus, PROTOCOL_VERSION};
use super::snapshot::Snapshots;
use crate::manager::Command;

pub const MAX_REQUEST: u64 = 64 * 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. Answers are quick (one shared view for all
/// of them), so this only bounds a burst: 64 file descriptors and tasks.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub request: RequestKind,
    /// `restart`: the workers (none: all); `drain`, `pause`, `resume`:
    /// exactly one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// `drain`: one slot of the worker (none: every slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Status,
    /// Re-read the config; answers once it is applied or refused.
    Reload,
    /// Replace every slot of `workers` (all when empty), one at a time;
    /// answers when done.
    Restart,
    /// The slot (or every slot of the worker) finishes its job and is
    /// replaced.
    Drain,
    /// The worker's slots finish their jobs and take no new ones.
    Pause,
    Resume,
}

impl RequestKind {
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Status => "status",
            RequestKind::Reload => "reload",
            RequestKind::Restart => "restart",
            RequestKind::Drain => "drain",
            RequestKind::Pause => "pause",
            RequestKind::Resume => "resume",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a command did, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Response {
    fn error(message: String) -> Response {
        Response {
            ok: false,
            status: None,
            error: Some(message),
            message: None,
        }
    }
}

/// The socket path of `service` under `dir`.
pub fn socket_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.sock"))
}

/// The runtime directory: `--runtime-dir`, else systemd's
/// `$RUNTIME_DIRECTORY`, else `/run/slotman`.
pub fn runtime_dir(given: Option<&Path>) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, separated by ':'; ours is the first.
        if let Some(first) = d.to_string_lossy().split(':').next() {
            return PathBuf::from(first);
        }
    }
    PathBuf::from("/run/slotman")
}

/// Binds the socket. A stale socket file (no one answering) is replaced; a
/// live one is an error that says so.
pub async fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "{} is in use: is this service already running?",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| anyhow::anyhow!("binding {}: {e}", path.display()))?;
    let mode = if let Some(g) = group {
        // A name, or a numeric gid (the config accepts both).
        let gid = match g.parse::<u32>() {
            Ok(n) => nix::unistd::Gid::from_raw(n),
            Err(_) => {
                nix::unistd::Group::from_name(g)?
                    .ok_or_else(|| anyhow::anyhow!("control_group {g:?} does not exist"))?
                    .gid
            }
        };
        nix::unistd::chown(path, None, Some(gid))?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts connections until the manager's channel closes.
pub async fn serve(listener: UnixListener, snapshots: Arc<Snapshots>) {
    let accept = || async { listener.accept().await.map(|(s, _)| s) };
    let serving = snapshots.clone();
    super::accept::serve_bounded(
        accept,
        &snapshots,
        MAX_CONNECTIONS,
        "control socket",
        |stream| {
            let snapshots = serving.clone();
            async move { connection(stream, &snapshots).await }
        },
    )
    .await;
}

async fn connection(stream: UnixStream, snapshots: &Snapshots) {
    // Who asks: commands are logged with it. The socket's mode already
    // admits only root and `control_group`.
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let response = match read {
        Err(_) => return, // Stalled: drop it.
        Ok(Err(_)) | Ok(Ok(0)) => return,
        Ok(Ok(_)) => answer(&line, snapshots, uid).await,
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(&out)).await;
}

async fn answer(line: &[u8], snapshots: &Snapshots, uid: Option<u32>) -> Response {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return Response::error(format!("bad request: {e}")),
    };
    if req.version != PROTOCOL_VERSION {
        return Response::error(format!(
            "protocol version {} not supported (this slotman speaks {PROTOCOL_VERSION})",
            req.version
        ));
    }
    match req.request {
        RequestKind::Status => match snapshots.get().await {
            Ok(status) => Response {
                ok: true,
                status: Some(status),
                error: None,
                message: None,
            },
            Err(e) => Response::error(e.to_string()),
        },
        kind => {
            let who = uid.map_or("an unknown user".to_string(), |u| format!("uid {u}"));
            tracing::info!(
                command = kind.name(),
                "{} requested by {who}{}",
                kind.name(),
                describe_target(&req)
            );
            let one = |workers: Vec<String>| match <[String; 1]>::try_from(workers) {
                Ok([w]) => Ok(w),
                Err(_) => Err(format!("{} takes exactly one worker", kind.name())),
            };
            let command = match kind {
                RequestKind::Status | RequestKind::Reload => Ok(Command::Reload),
                RequestKind::Restart => Ok(Command::Restart(req.workers)),
                RequestKind::Drain => one(req.workers).map(|worker| Command::Drain {
                    worker,
                    slot: req.slot,
                }),
                RequestKind::Pause => one(req.workers).map(|w| Command::Pause(w, true)),
                RequestKind::Resume => one(req.workers).map(|w| Command::Pause(w, false)),
            };
            let command = match command {
                Ok(c) => c,
                Err(e) => return Response::error(e),
            };
            match snapshots.command(command).await {
                Ok(message) => Response {
                    ok: true,
                    status: None,
                    error: None,
                    message: Some(message),
                },
                Err(e) => Response::error(e),
            }
        }
    }
}

/// ` of w1, w2` / ` of w#3`: what a command is for, for the log.
fn describe_target(req: &Request) -> String {
    match (req.workers.as_slice(), req.slot) {
        ([], _) => String::new(),
        ([w], Some(slot)) => format!(" of {w}#{slot}"),
        (ws, _) => format!(" of {}", ws.join(", ")),
    }
}
