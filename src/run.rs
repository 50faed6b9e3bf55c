//! `slotman run`: load the config, pick a placement, wire signals to the
//! manager, run it.

use std::path::PathBuf;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::manager::{Event, Manager};
use crate::placement::Placement;

pub struct Options {
    pub config: PathBuf,
    /// "auto", "child" or "systemd".
    pub placement: String,
    pub runtime_dir: Option<PathBuf>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let config = crate::config::load(&opts.config)?;
    let placement = match opts.placement.as_str() {
        "child" => Placement::Child,
        "auto" if !crate::placement::systemd_available() => Placement::Child,
        "auto" | "systemd" => Placement::systemd(&config.service, config.stop_timeout).await?,
        other => anyhow::bail!("unknown placement {other:?} (auto, child, systemd)"),
    };
    tracing::info!("slots run as {}", placement.name());
    // Pinned now, before an upgrade can replace it under us.
    let runner = crate::placement::runner().context("finding the slot runner")?;
    tracing::debug!(
        "slot runner: {}",
        runner.arg0.as_ref().unwrap_or(&runner.program).display()
    );
    if matches!(placement, Placement::Child) {
        for w in &config.workers {
            let limits: Vec<String> = w
                .resource_limits()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            if !limits.is_empty() {
                tracing::warn!(worker = %w.name, "worker {}: {} not enforced: plain child processes have no cgroup per slot (limits apply under systemd)", w.name, limits.join(" "));
            }
        }
    }
    // A stop that systemd cuts short kills the jobs a drain was waiting
    // for: refuse a config whose stop_timeout the unit cannot honour.
    if let Some((unit, limit)) = placement.own_stop_timeout().await {
        if config.stop_timeout >= limit {
            return Err(crate::config::ConfigError::host(
                &config.path,
                "stop_timeout",
                format!(
                    "{} is not shorter than {unit}'s TimeoutStopSec= ({}): systemd would kill the jobs a stop waits for; raise TimeoutStopSec= in a drop-in (systemctl edit {unit}) or lower stop_timeout",
                    crate::config::values::human_duration(config.stop_timeout),
                    crate::config::values::human_duration(limit)
                ),
            )
            .into());
        }
    }
    let bus = placement.systemd_bus();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let sig_tx = tx.clone();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = hup.recv() => Event::Reload,
                _ = term.recv() => Event::Stop,
                _ = int.recv() => Event::Stop,
            };
            if sig_tx.send(ev).is_err() {
                return;
            }
        }
    });
    let dir = crate::control::server::runtime_dir(opts.runtime_dir.as_deref());
    let sock = crate::control::server::socket_path(&dir, &config.service);
    let listener = crate::control::server::bind(&sock, config.control_group.as_deref()).await?;
    // One status view for the control socket and the metrics endpoint.
    let snapshots = crate::control::snapshot::Snapshots::new(tx.clone(), bus);
    tokio::spawn(crate::control::server::serve(listener, snapshots.clone()));
    if let Some(addr) = config.metrics_listen {
        let metrics = crate::control::metrics::bind(addr).await?;
        tokio::spawn(crate::control::metrics::serve(metrics, snapshots));
    }
    let result = Manager::new(config, placement, tx).run(rx).await;
    let _ = std::fs::remove_file(&sock);
    result
}
