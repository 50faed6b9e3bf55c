//! The demo job server's bookkeeping: connections, jobs and their queues,
//! and what each request does to them. Pure: a request goes in, the replies
//! it causes come out as `(connection, reply)` pairs in an [`Outbox`]; no
//! I/O, no clock, nothing that can block. `super` moves the bytes.
//!
//! Semantics follow gearmand 1.1 where a demo can see them: three priority
//! queues per function, FIFO within each; a foreground job's unique id
//! coalesces later submissions of the same function and unique (`-` means
//! "the payload is the unique id") onto the running job, each submission
//! getting every WORK_* packet; sleeping workers get one NOOP per sleep; a
//! job whose worker disconnects goes back to the end of its queue (with no
//! retry limit, as gearmand by default); a queued foreground job whose
//! clients all left is dropped; WORK_EXCEPTION reaches only clients that
//! asked for OPTION_REQ "exceptions", others get WORK_FAIL. Not here:
//! persistence, CAN_DO_TIMEOUT's timeout (the ability is registered, the
//! timeout ignored), SUBMIT_JOB_EPOCH/SCHED and reduce jobs (answered with
//! ERROR), `maxqueue` and the other admin commands but `status`,
//! `workers`, `version` and `getpid`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::gearman::packet::{Magic, Packet, PacketType};

/// A connection, numbered from 1 in accept order and never reused.
pub type ConnId = u64;

/// Something to send on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Packet(Packet),
    /// An answer to a text admin command, newlines included.
    Text(String),
}

/// Replies produced by one request, in the order they must be sent.
#[derive(Debug, Default)]
pub struct Outbox(pub Vec<(ConnId, Reply)>);

impl Outbox {
    fn packet(&mut self, to: ConnId, kind: PacketType, args: Vec<Bytes>) {
        self.0.push((to, Reply::Packet(Packet::res(kind, args))));
    }

    fn error(&mut self, to: ConnId, code: &'static str, text: &'static str) {
        self.packet(
            to,
            PacketType::Error,
            vec![
                Bytes::from_static(code.as_bytes()),
                Bytes::from_static(text.as_bytes()),
            ],
        );
    }
}

/// What the server holds at most, so that memory stays bounded whatever
/// clients send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Jobs known at once (queued or running).
    pub max_jobs: usize,
    /// Bytes of function names, unique ids and payloads of those jobs.
    pub max_job_bytes: usize,
    /// Functions one connection may register.
    pub max_abilities: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_jobs: 100_000,
            max_job_bytes: 256 << 20,
            max_abilities: 1024,
        }
    }
}

/// gearmand's limits on names (libgearman-1.0/limits.h), so that what works
/// against the demo works against gearmand.
const MAX_FUNCTION: usize = 512;
const MAX_UNIQUE: usize = 64;
const MAX_CLIENT_ID: usize = 253;

type JobId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    High = 0,
    Normal = 1,
    Low = 2,
}

struct Job {
    handle: Bytes,
    function: Bytes,
    /// As submitted, for JOB_ASSIGN_UNIQ.
    unique: Bytes,
    /// What coalesces submissions: the unique id, or the payload for `-`.
    key: Option<Bytes>,
    data: Bytes,
    priority: Priority,
    /// Submitted (at least once) as a background job: runs even if no
    /// client waits for it.
    background: bool,
    /// Connections waiting for the result, once per submission.
    clients: Vec<ConnId>,
    worker: Option<ConnId>,
    /// The last WORK_STATUS, for GET_STATUS.
    progress: (u32, u32),
}

impl Job {
    fn size(&self) -> usize {
        self.function.len() + self.unique.len() + self.data.len()
    }
}

#[derive(Default)]
struct Queues {
    waiting: [VecDeque<JobId>; 3],
    running: u64,
}

impl Queues {
    fn queued(&self) -> u64 {
        self.waiting.iter().map(|q| q.len() as u64).sum()
    }
}

struct Conn {
    address: String,
    client_id: Option<String>,
    /// Registered functions, in registration order (the order grabs look).
    abilities: Vec<Bytes>,
    sleeping: bool,
    noop_sent: bool,
    exceptions: bool,
    /// Jobs this connection runs as a worker.
    running: Vec<JobId>,
}

/// Everything the job server knows.
pub struct State {
    limits: Limits,
    conns: BTreeMap<ConnId, Conn>,
    jobs: HashMap<JobId, Job>,
    by_handle: HashMap<Bytes, JobId>,
    by_unique: HashMap<(Bytes, Bytes), JobId>,
    functions: BTreeMap<Bytes, Queues>,
    job_bytes: usize,
    next_conn: ConnId,
    next_job: JobId,
}

impl State {
    pub fn new(limits: Limits) -> State {
        State {
            limits,
            conns: BTreeMap::new(),
            jobs: HashMap::new(),
            by_handle: HashMap::new(),
            by_unique: HashMap::new(),
            functions: BTreeMap::new(),
            job_bytes: 0,
            next_conn: 1,
            next_job: 1,
        }
    }

    /// A new connection from `address` (shown by `workers`).
    pub fn connect(&mut self, address: String) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                address,
                client_id: None,
                abilities: Vec::new(),
                sleeping: false,
                noop_sent: false,
                exceptions: false,
                running: Vec::new(),
            },
        );
        id
    }

    /// A connection is gone: the jobs it ran go back to their queues, and
    /// foreground jobs no one waits for any more are dropped.
    pub fn disconnect(&mut self, id: ConnId, out: &mut Outbox) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        // Jobs it waits for as a client.
        let waited: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.clients.contains(&id))
            .map(|(&job, _)| job)
            .collect();
        for job_id in waited {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            job.clients.retain(|&c| c != id);
            if job.clients.is_empty() && !job.background && job.worker.is_none() {
                self.unqueue(job_id);
                self.forget(job_id);
            }
        }
        // Jobs it was running as a worker.
        for job_id in conn.running {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            job.worker = None;
            job.progress = (0, 0);
            let (function, priority) = (job.function.clone(), job.priority);
            let abandoned = job.clients.is_empty() && !job.background;
            if let Some(q) = self.functions.get_mut(&function) {
                q.running = q.running.saturating_sub(1);
            }
            if abandoned {
                self.forget(job_id);
            } else {
                self.enqueue(job_id, &function, priority, out);
            }
        }
    }

    /// One binary request from connection `from`.
    pub fn packet(&mut self, from: ConnId, p: Packet, out: &mut Outbox) {
        if !self.conns.contains_key(&from) {
            return;
        }
        if p.magic != Magic::Req {
            out.error(from, "INVALID_MAGIC", "Request magic expected");
            return;
        }
        use PacketType as T;
        match p.kind {
            T::EchoReq => out.packet(from, T::EchoRes, vec![p.arg_bytes(0)]),
            T::SubmitJob
            | T::SubmitJobBg
            | T::SubmitJobHigh
            | T::SubmitJobHighBg
            | T::SubmitJobLow
            | T::SubmitJobLowBg => self.submit(from, &p, out),
            T::SubmitJobEpoch
            | T::SubmitJobSched
            | T::SubmitReduceJob
            | T::SubmitReduceJobBackground => out.error(
                from,
                "NOT_SUPPORTED",
                "The slotman demo job server runs no scheduled or reduce jobs",
            ),
            T::GetStatus => self.get_status(from, &p, out),
            T::GetStatusUnique => self.get_status_unique(from, &p, out),
            T::OptionReq => {
                if p.arg(0).eq_ignore_ascii_case(b"exceptions") {
                    if let Some(c) = self.conns.get_mut(&from) {
                        c.exceptions = true;
                    }
                    out.packet(from, T::OptionRes, vec![p.arg_bytes(0)]);
                } else {
                    out.error(
                        from,
                        "UNKNOWN_OPTION",
                        "Server does not recognize given option",
                    );
                }
            }
            T::CanDo | T::CanDoTimeout => self.can_do(from, p.arg_bytes(0), out),
            T::CantDo => {
                if let Some(c) = self.conns.get_mut(&from) {
                    c.abilities.retain(|f| f[..] != *p.arg(0));
                }
            }
            T::ResetAbilities => {
                if let Some(c) = self.conns.get_mut(&from) {
                    c.abilities.clear();
                }
            }
            T::SetClientId => {
                if let Some(c) = self.conns.get_mut(&from) {
                    let id = p.arg(0);
                    c.client_id = Some(printable(&id[..id.len().min(MAX_CLIENT_ID)]));
                }
            }
            T::PreSleep => {
                if self.has_work_for(from) {
                    out.packet(from, T::Noop, vec![]);
                } else if let Some(c) = self.conns.get_mut(&from) {
                    c.sleeping = true;
                    c.noop_sent = false;
                }
            }
            T::GrabJob | T::GrabJobUniq | T::GrabJobAll => self.grab(from, p.kind, out),
            T::WorkStatus
            | T::WorkData
            | T::WorkWarning
            | T::WorkComplete
            | T::WorkFail
            | T::WorkException => self.work(from, p, out),
            // Packets only a job server sends, and ALL_YOURS (which
            // gearmand refuses too).
            T::Noop
            | T::JobCreated
            | T::NoJob
            | T::JobAssign
            | T::JobAssignUniq
            | T::JobAssignAll
            | T::EchoRes
            | T::Error
            | T::StatusRes
            | T::StatusResUnique
            | T::OptionRes
            | T::AllYours => out.error(from, "INVALID_COMMAND", "Command not expected"),
        }
    }

    /// One text admin command line from connection `from`.
    pub fn admin(&self, from: ConnId, line: &str, out: &mut Outbox) {
        let command = line.split_whitespace().next().unwrap_or("");
        let text = match command.to_ascii_lowercase().as_str() {
            "status" => self.status_text(),
            "workers" => self.workers_text(),
            "version" => format!(
                "OK {} (slotman demo job server)\n",
                env!("CARGO_PKG_VERSION")
            ),
            "getpid" => format!("OK {}\n", std::process::id()),
            // Blank lines between commands are harmless.
            "" => return,
            other => format!(
                "ERR UNKNOWN_COMMAND Unknown+server+command{}\r\n",
                printable(other.as_bytes()).replace(' ', "+")
            ),
        };
        out.0.push((from, Reply::Text(text)));
    }

    fn submit(&mut self, from: ConnId, p: &Packet, out: &mut Outbox) {
        use PacketType as T;
        let (priority, background) = match p.kind {
            T::SubmitJob => (Priority::Normal, false),
            T::SubmitJobBg => (Priority::Normal, true),
            T::SubmitJobHigh => (Priority::High, false),
            T::SubmitJobHighBg => (Priority::High, true),
            T::SubmitJobLow => (Priority::Low, false),
            _ => (Priority::Low, true),
        };
        let (function, unique, data) = (p.arg_bytes(0), p.arg_bytes(1), p.arg_bytes(2));
        if function.len() > MAX_FUNCTION {
            return out.error(from, "ARGUMENT_TOO_LARGE", "Function name too large");
        }
        if unique.len() > MAX_UNIQUE {
            return out.error(from, "ARGUMENT_TOO_LARGE", "Unique value too large");
        }
        let key = match &unique[..] {
            b"" => None,
            b"-" if data.is_empty() => None,
            b"-" => Some(data.clone()),
            _ => Some(unique.clone()),
        };
        let existing = key
            .as_ref()
            .and_then(|k| self.by_unique.get(&(function.clone(), k.clone())))
            .copied();
        let job_id = match existing {
            Some(id) => id,
            None => {
                let size = function.len() + unique.len() + data.len();
                if self.jobs.len() >= self.limits.max_jobs
                    || self.job_bytes.saturating_add(size) > self.limits.max_job_bytes
                {
                    return out.error(from, "QUEUE_ERROR", "Job queue is full");
                }
                let id = self.next_job;
                self.next_job += 1;
                let handle = Bytes::from(format!("H:slotman-demo:{id}"));
                self.by_handle.insert(handle.clone(), id);
                if let Some(k) = &key {
                    self.by_unique.insert((function.clone(), k.clone()), id);
                }
                self.job_bytes += size;
                self.jobs.insert(
                    id,
                    Job {
                        handle,
                        function: function.clone(),
                        unique,
                        key,
                        data,
                        priority,
                        background,
                        clients: Vec::new(),
                        worker: None,
                        progress: (0, 0),
                    },
                );
                self.enqueue(id, &function, priority, out);
                id
            }
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if background {
            job.background = true;
        } else {
            job.clients.push(from);
        }
        out.packet(from, T::JobCreated, vec![job.handle.clone()]);
    }

    /// Puts a job at the end of its queue and wakes the sleeping workers
    /// that can run it.
    fn enqueue(&mut self, id: JobId, function: &Bytes, priority: Priority, out: &mut Outbox) {
        self.functions.entry(function.clone()).or_default().waiting[priority as usize]
            .push_back(id);
        for (&cid, c) in self.conns.iter_mut() {
            if c.sleeping && !c.noop_sent && c.abilities.contains(function) {
                c.noop_sent = true;
                out.packet(cid, PacketType::Noop, vec![]);
            }
        }
    }

    /// Takes a queued job out of its queue (it is about to be dropped).
    fn unqueue(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if let Some(q) = self.functions.get_mut(&job.function) {
            q.waiting[job.priority as usize].retain(|&j| j != id);
        }
    }

    /// Drops a job from every index. The caller has taken it out of its
    /// queue or its worker's list.
    fn forget(&mut self, id: JobId) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        self.job_bytes = self.job_bytes.saturating_sub(job.size());
        self.by_handle.remove(&job.handle);
        if let Some(k) = job.key {
            self.by_unique.remove(&(job.function.clone(), k));
        }
        if let Some(w) = job.worker.and_then(|w| self.conns.get_mut(&w)) {
            w.running.retain(|&j| j != id);
        }
        if let Some(q) = self.functions.get(&job.function) {
            if q.queued() == 0 && q.running == 0 {
                self.functions.remove(&job.function);
            }
        }
    }

    fn can_do(&mut self, from: ConnId, function: Bytes, out: &mut Outbox) {
        let max = self.limits.max_abilities;
        let Some(c) = self.conns.get_mut(&from) else {
            return;
        };
        if c.abilities.contains(&function) {
            return;
        }
        if function.len() > MAX_FUNCTION || c.abilities.len() >= max {
            return out.error(from, "ARGUMENT_TOO_LARGE", "Too many or too long functions");
        }
        c.abilities.push(function);
    }

    fn has_work_for(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| {
            c.abilities
                .iter()
                .any(|f| self.functions.get(f).is_some_and(|q| q.queued() > 0))
        })
    }

    fn grab(&mut self, from: ConnId, kind: PacketType, out: &mut Outbox) {
        let Some(c) = self.conns.get_mut(&from) else {
            return;
        };
        c.sleeping = false;
        c.noop_sent = false;
        // Highest priority first across all the worker's functions, then
        // in the order it registered them.
        let mut found = None;
        'search: for prio in 0..3 {
            for f in &c.abilities {
                if let Some(q) = self.functions.get_mut(f) {
                    if let Some(id) = q.waiting[prio].pop_front() {
                        q.running += 1;
                        found = Some(id);
                        break 'search;
                    }
                }
            }
        }
        let Some(job) = found.and_then(|id| self.jobs.get_mut(&id)) else {
            return out.packet(from, PacketType::NoJob, vec![]);
        };
        job.worker = Some(from);
        c.running.extend(found);
        let (h, f, u, d) = (
            job.handle.clone(),
            job.function.clone(),
            job.unique.clone(),
            job.data.clone(),
        );
        match kind {
            PacketType::GrabJob => out.packet(from, PacketType::JobAssign, vec![h, f, d]),
            // gearmand answers GRAB_JOB_ALL for a job without a reducer
            // with JOB_ASSIGN_UNIQ, as here.
            _ => out.packet(from, PacketType::JobAssignUniq, vec![h, f, u, d]),
        }
    }

    /// WORK_* from a worker: forwarded to the job's clients; the last three
    /// end the job.
    fn work(&mut self, from: ConnId, p: Packet, out: &mut Outbox) {
        use PacketType as T;
        let Some(&job_id) = self.by_handle.get(p.arg(0)) else {
            return out.error(from, "JOB_NOT_FOUND", "Job given in work result not found");
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.worker != Some(from) {
            return out.error(from, "JOB_NOT_FOUND", "Job given in work result not found");
        }
        if p.kind == T::WorkStatus {
            job.progress = (atoi(p.arg(1)), atoi(p.arg(2)));
        }
        for &client in &job.clients {
            let exceptions = self.conns.get(&client).is_some_and(|c| c.exceptions);
            if p.kind == T::WorkException && !exceptions {
                out.packet(client, T::WorkFail, vec![p.arg_bytes(0)]);
            } else {
                out.0
                    .push((client, Reply::Packet(Packet::res(p.kind, p.args.clone()))));
            }
        }
        if matches!(p.kind, T::WorkComplete | T::WorkFail | T::WorkException) {
            let function = job.function.clone();
            if let Some(q) = self.functions.get_mut(&function) {
                q.running = q.running.saturating_sub(1);
            }
            self.forget(job_id);
        }
    }

    fn get_status(&self, from: ConnId, p: &Packet, out: &mut Outbox) {
        let job = self
            .by_handle
            .get(p.arg(0))
            .and_then(|id| self.jobs.get(id));
        let flag = |b: bool| Bytes::from_static(if b { b"1" } else { b"0" });
        let (n, d) = job.map_or((0, 0), |j| j.progress);
        out.packet(
            from,
            PacketType::StatusRes,
            vec![
                p.arg_bytes(0),
                flag(job.is_some()),
                flag(job.is_some_and(|j| j.worker.is_some())),
                Bytes::from(n.to_string()),
                Bytes::from(d.to_string()),
            ],
        );
    }

    fn get_status_unique(&self, from: ConnId, p: &Packet, out: &mut Outbox) {
        let job = self
            .jobs
            .values()
            .find(|j| j.key.as_deref() == Some(p.arg(0)));
        let flag = |b: bool| Bytes::from_static(if b { b"1" } else { b"0" });
        let (n, d) = job.map_or((0, 0), |j| j.progress);
        out.packet(
            from,
            PacketType::StatusResUnique,
            vec![
                p.arg_bytes(0),
                flag(job.is_some()),
                flag(job.is_some_and(|j| j.worker.is_some())),
                Bytes::from(n.to_string()),
                Bytes::from(d.to_string()),
                Bytes::from(job.map_or(0, |j| j.clients.len()).to_string()),
            ],
        );
    }

    /// `FUNCTION\tTOTAL\tRUNNING\tWORKERS` per function with jobs or
    /// workers, sorted by name, then `.`.
    fn status_text(&self) -> String {
        let mut rows: BTreeMap<&Bytes, (u64, u64, u64)> = BTreeMap::new();
        for (f, q) in &self.functions {
            let row = rows.entry(f).or_default();
            row.0 = q.queued() + q.running;
            row.1 = q.running;
        }
        for c in self.conns.values() {
            for f in &c.abilities {
                rows.entry(f).or_default().2 += 1;
            }
        }
        let mut text = String::new();
        for (f, (total, running, workers)) in rows {
            text.push_str(&format!(
                "{}\t{total}\t{running}\t{workers}\n",
                printable(f)
            ));
        }
        text.push_str(".\n");
        text
    }

    /// `ID ADDRESS CLIENT-ID : FUNCTION...` per connection, then `.`.
    fn workers_text(&self) -> String {
        let mut text = String::new();
        for (id, c) in &self.conns {
            text.push_str(&format!(
                "{id} {} {} :",
                c.address,
                c.client_id
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-")
            ));
            for f in &c.abilities {
                text.push(' ');
                text.push_str(&printable(f));
            }
            text.push('\n');
        }
        text.push_str(".\n");
        text
    }
}

/// Text for an admin answer: lossy UTF-8 with line breaks and other control
/// characters but tab shown as `?`, so that a name cannot break the format.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// The leading decimal digits as a number, 0 if none, saturating: what
/// gearmand's `atoi` makes of a WORK_STATUS count.
fn atoi(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .fold(0u32, |n, &b| {
            n.saturating_mul(10).saturating_add(u32::from(b - b'0'))
        })
}
