//! The TOML contract of DESIGN.md: one file per service, `[defaults]` merged
//! under each `[workers.NAME]`. `load` is the only place a config file is read;
//! everything after it works on the validated, typed [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

/// One `[workers.NAME]` table with `[defaults]` merged under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub name: String,
    /// "host:port", port filled in (4730) when the file left it out.
    pub job_servers: Vec<String>,
    pub kind: HandlerKind,
    /// Program and arguments; never empty.
    pub command: Vec<String>,
    /// Function names without prefix.
    pub functions: Vec<String>,
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
}

impl WorkerConfig {
    /// The name registered with the job server for `function`.
    pub fn registered_name(&self, function: &str) -> String {
        format!("{}{}", self.prefix, function)
    }
}
