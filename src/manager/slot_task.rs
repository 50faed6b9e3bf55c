//! One task per slot: places the runner process, relays its reports to the
//! manager in order, forwards the manager's commands, and reports its exit
//! last (after every report the runner sent).

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::pool::SlotCmd;
use super::{Event, SlotEvent};
use crate::placement::child::{self, HandlerGroup};
use crate::placement::Placement;
use crate::slot::report::{self, Report, SlotSpec, ToSlot, MAX_LINE};

pub async fn run(
    placement: Arc<Placement>,
    spec: SlotSpec,
    events: mpsc::UnboundedSender<Event>,
    mut cmds: mpsc::UnboundedReceiver<SlotCmd>,
) {
    let worker = spec.worker.name.clone();
    let id = spec.slot;
    let send = |ev: SlotEvent| {
        let _ = events.send(Event::Slot {
            worker: worker.clone(),
            id,
            ev,
        });
    };
    let mut placed = match placement.place(&spec).await {
        Ok(p) => p,
        Err(e) => {
            send(SlotEvent::PlaceFailed(e.to_string()));
            return;
        }
    };
    send(SlotEvent::Placed {
        pid: placed.pid,
        unit: placed.unit.clone(),
    });
    let (read_half, mut write_half) = placed.control.into_split();
    let mut lines = BufReader::new(read_half).lines();
    let _ = write_half
        .write_all(&report::encode(&ToSlot::Start(Box::new(spec.clone()))))
        .await;
    let mut reading = true;
    let mut cmds_open = true;
    // The runner's long-running handler's process group, for cleanup.
    let mut handler_group = None;
    let relay = |r: Report, handler_group: &mut Option<HandlerGroup>| match r {
        Report::Handler {
            pid,
            start,
            session,
        } => {
            *handler_group = start
                .zip(session)
                .map(|(start_time, session)| HandlerGroup {
                    pgid: pid,
                    start_time,
                    session,
                })
        }
        r => send(SlotEvent::Report(r)),
    };
    // Not reaped until cleanup is done: see child::exited.
    let exited = child::exited(placed.pid);
    tokio::pin!(exited);
    let status = loop {
        tokio::select! {
            line = lines.next_line(), if reading => match line {
                Ok(Some(line)) if line.len() <= MAX_LINE => match report::decode::<Report>(line.as_bytes()) {
                    Ok(r) => relay(r, &mut handler_group),
                    Err(e) => tracing::warn!(worker = %worker, slot = id, "bad report from slot: {e}"),
                },
                _ => reading = false,
            },
            cmd = cmds.recv(), if cmds_open => match cmd {
                Some(SlotCmd::Drain) => {
                    let _ = write_half.write_all(&report::encode(&ToSlot::Drain)).await;
                }
                Some(SlotCmd::Kill) => placement.kill(placed.pid, placed.unit.as_deref()).await,
                Some(SlotCmd::Pin(on)) => {
                    let _ = write_half.write_all(&report::encode(&ToSlot::Pin { on })).await;
                }
                Some(SlotCmd::Pause(on)) => {
                    let _ = write_half.write_all(&report::encode(&ToSlot::Pause { on })).await;
                }
                None => cmds_open = false,
            },
            status = &mut exited => break status,
        }
    };
    // Reports written just before the exit are still in the socket.
    while reading {
        // Bounded: nothing but the runner holds its end, but never hang here.
        let next = tokio::time::timeout(std::time::Duration::from_secs(1), lines.next_line()).await;
        match next {
            Ok(Ok(Some(line))) => {
                if let Ok(r) = report::decode::<Report>(line.as_bytes()) {
                    relay(r, &mut handler_group);
                }
            }
            _ => reading = false,
        }
    }
    placement
        .cleanup(
            placed.pid,
            placed.unit.as_deref(),
            status.as_ref().ok(),
            handler_group,
        )
        .await;
    let reaped = placed.child.wait().await;
    let status = match status {
        Ok(s) => Ok(s),
        Err(_) => reaped,
    };
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("wait failed: {e}"),
    };
    send(SlotEvent::Exited { status });
}
