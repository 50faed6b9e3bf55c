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

    /// STATUS_RES for the job with the handle GET_STATUS names.
    fn get_status(&self, from: ConnId, p: &Packet, out: &mut Outbox) {
        let job = self
            .by_handle
            .get(p.arg(0))
            .and_then(|id| self.jobs.get(id));
        let mut args = vec![p.arg_bytes(0)];
        args.extend(progress_args(job));
        out.packet(from, PacketType::StatusRes, args);
    }

    /// STATUS_RES_UNIQUE for the job with the unique id GET_STATUS_UNIQUE
    /// names (of any function, as gearmand looks it up).
    fn get_status_unique(&self, from: ConnId, p: &Packet, out: &mut Outbox) {
        let job = self
            .jobs
            .values()
            .find(|j| j.key.as_deref() == Some(p.arg(0)));
        let mut args = vec![p.arg_bytes(0)];
        args.extend(progress_args(job));
        args.push(Bytes::from(job.map_or(0, |j| j.clients.len()).to_string()));
        out.packet(from, PacketType::StatusResUnique, args);
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

/// What the status replies say of a job: known, running, numerator,
/// denominator (all zero for a job the server does not know).
fn progress_args(job: Option<&Job>) -> [Bytes; 4] {
    let flag = |b: bool| Bytes::from_static(if b { b"1" } else { b"0" });
    let (n, d) = job.map_or((0, 0), |j| j.progress);
    [
        flag(job.is_some()),
        flag(job.is_some_and(|j| j.worker.is_some())),
        Bytes::from(n.to_string()),
        Bytes::from(d.to_string()),
    ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gearman::admin;
    use proptest::prelude::*;
    use PacketType as T;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    /// Sends one request; the replies as (to, kind, args).
    fn send(s: &mut State, from: ConnId, kind: T, args: &[&[u8]]) -> Vec<(ConnId, T, Vec<Bytes>)> {
        let mut out = Outbox::default();
        s.packet(
            from,
            Packet::req(kind, args.iter().map(|a| b(a)).collect()),
            &mut out,
        );
        check(s);
        out.0
            .into_iter()
            .map(|(to, r)| match r {
                Reply::Packet(p) => (to, p.kind, p.args),
                Reply::Text(t) => panic!("text reply to a packet: {t}"),
            })
            .collect()
    }

    fn admin_text(s: &State, line: &str) -> String {
        let mut out = Outbox::default();
        s.admin(1, line, &mut out);
        match out.0.pop() {
            Some((_, Reply::Text(t))) => t,
            other => panic!("{other:?}"),
        }
    }

    fn kinds(replies: &[(ConnId, T, Vec<Bytes>)]) -> Vec<(ConnId, T)> {
        replies.iter().map(|(c, k, _)| (*c, *k)).collect()
    }

    /// A worker registered for `functions`, asleep (or woken at once if
    /// there is work).
    fn sleeping_worker(s: &mut State, functions: &[&[u8]]) -> ConnId {
        let w = s.connect("127.0.0.1".into());
        for f in functions {
            send(s, w, T::CanDo, &[f]);
        }
        send(s, w, T::PreSleep, &[]);
        w
    }

    /// The handle in a JOB_CREATED reply.
    fn created(replies: &[(ConnId, T, Vec<Bytes>)]) -> Bytes {
        replies
            .iter()
            .find(|r| r.1 == T::JobCreated)
            .map(|r| r.2[0].clone())
            .expect("JOB_CREATED")
    }

    /// The bookkeeping agrees with itself.
    fn check(s: &State) {
        let mut bytes = 0;
        for (&id, job) in &s.jobs {
            bytes += job.size();
            assert_eq!(s.by_handle.get(&job.handle), Some(&id));
            if let Some(k) = &job.key {
                assert_eq!(
                    s.by_unique.get(&(job.function.clone(), k.clone())),
                    Some(&id)
                );
            }
            let queued: usize = s.functions.get(&job.function).map_or(0, |q| {
                q.waiting.iter().flatten().filter(|&&j| j == id).count()
            });
            match job.worker {
                Some(w) => {
                    assert_eq!(queued, 0, "a running job is not queued");
                    let c = s
                        .conns
                        .get(&w)
                        .expect("a running job's worker is connected");
                    assert_eq!(c.running.iter().filter(|&&j| j == id).count(), 1);
                }
                None => {
                    assert_eq!(queued, 1, "a waiting job is queued once");
                    let q = &s.functions[&job.function].waiting[job.priority as usize];
                    assert!(q.contains(&id), "in its priority's queue");
                    assert!(
                        job.background || !job.clients.is_empty(),
                        "a queued foreground job has a client"
                    );
                }
            }
            for c in &job.clients {
                assert!(s.conns.contains_key(c), "clients are connected");
            }
        }
        assert_eq!(bytes, s.job_bytes);
        assert_eq!(s.by_handle.len(), s.jobs.len());
        assert_eq!(
            s.by_unique.len(),
            s.jobs.values().filter(|j| j.key.is_some()).count()
        );
        for (f, q) in &s.functions {
            let running = s
                .jobs
                .values()
                .filter(|j| j.worker.is_some() && j.function == *f)
                .count() as u64;
            assert_eq!(q.running, running, "running count of {f:?}");
            assert!(q.queued() + q.running > 0, "empty functions are dropped");
        }
        for (&cid, c) in &s.conns {
            for j in &c.running {
                assert_eq!(s.jobs[j].worker, Some(cid));
            }
        }
    }

    #[test]
    fn a_foreground_job_round_trip_with_progress() {
        let mut s = State::new(Limits::default());
        let w = sleeping_worker(&mut s, &[b"rev"]);
        let c = s.connect("127.0.0.1".into());
        let r = send(&mut s, c, T::SubmitJob, &[b"rev", b"", b"abc"]);
        assert_eq!(kinds(&r), vec![(w, T::Noop), (c, T::JobCreated)]);
        let h = created(&r);
        // One NOOP per sleep: another submission does not wake it again.
        let r2 = send(&mut s, c, T::SubmitJobBg, &[b"rev", b"", b"x"]);
        assert_eq!(kinds(&r2), vec![(c, T::JobCreated)]);
        let r = send(&mut s, w, T::GrabJobUniq, &[]);
        assert_eq!(
            r,
            vec![(
                w,
                T::JobAssignUniq,
                vec![h.clone(), b(b"rev"), b(b""), b(b"abc")]
            )]
        );
        let status = send(&mut s, c, T::GetStatus, &[&h]);
        assert_eq!(status[0].2[1..], [b(b"1"), b(b"1"), b(b"0"), b(b"0")]);
        for (kind, args) in [
            (T::WorkStatus, vec![&h[..], b"1", b"2"]),
            (T::WorkData, vec![&h[..], b"d\0ata"]),
            (T::WorkWarning, vec![&h[..], b"w"]),
        ] {
            let r = send(&mut s, w, kind, &args);
            assert_eq!(r, vec![(c, kind, args.iter().map(|a| b(a)).collect())]);
        }
        let status = send(&mut s, c, T::GetStatus, &[&h]);
        assert_eq!(status[0].2[1..], [b(b"1"), b(b"1"), b(b"1"), b(b"2")]);
        let r = send(&mut s, w, T::WorkComplete, &[&h, b"cba"]);
        assert_eq!(r, vec![(c, T::WorkComplete, vec![h.clone(), b(b"cba")])]);
        let status = send(&mut s, c, T::GetStatus, &[&h]);
        assert_eq!(status[0].2[1..], [b(b"0"), b(b"0"), b(b"0"), b(b"0")]);
        // Plain GRAB_JOB gets JOB_ASSIGN; nothing left then NO_JOB.
        let r = send(&mut s, w, T::GrabJob, &[]);
        assert_eq!(r[0].1, T::JobAssign);
        assert_eq!(r[0].2[1..], [b(b"rev"), b(b"x")]);
        send(&mut s, w, T::WorkComplete, &[&r[0].2[0], b""]);
        assert_eq!(
            kinds(&send(&mut s, w, T::GrabJobAll, &[])),
            vec![(w, T::NoJob)]
        );
        assert!(s.jobs.is_empty() && s.functions.is_empty() && s.job_bytes == 0);
    }

    #[test]
    fn higher_priorities_first_then_in_order() {
        let mut s = State::new(Limits::default());
        let c = s.connect("c".into());
        for (kind, data) in [
            (T::SubmitJobLowBg, b"low1"),
            (T::SubmitJobBg, b"nor1"),
            (T::SubmitJobHighBg, b"hig1"),
            (T::SubmitJobLow, b"low2"),
            (T::SubmitJob, b"nor2"),
            (T::SubmitJobHigh, b"hig2"),
        ] {
            send(&mut s, c, kind, &[b"f", b"", data]);
        }
        let w = s.connect("w".into());
        send(&mut s, w, T::CanDo, &[b"f"]);
        let order: Vec<Bytes> = (0..6)
            .map(|_| send(&mut s, w, T::GrabJobUniq, &[])[0].2[3].clone())
            .collect();
        assert_eq!(
            order,
            ["hig1", "hig2", "nor1", "nor2", "low1", "low2"].map(Bytes::from)
        );
    }

    #[test]
    fn a_pre_sleep_with_work_waiting_is_answered_with_noop() {
        let mut s = State::new(Limits::default());
        let c = s.connect("c".into());
        send(&mut s, c, T::SubmitJobBg, &[b"f", b"", b""]);
        let w = s.connect("w".into());
        send(&mut s, w, T::CanDo, &[b"f"]);
        assert_eq!(
            kinds(&send(&mut s, w, T::PreSleep, &[])),
            vec![(w, T::Noop)]
        );
        // CANT_DO and RESET_ABILITIES take the function away.
        send(&mut s, w, T::CantDo, &[b"f"]);
        assert_eq!(
            kinds(&send(&mut s, w, T::GrabJobUniq, &[])),
            vec![(w, T::NoJob)]
        );
        send(&mut s, w, T::CanDoTimeout, &[b"f", b"1000"]);
        send(&mut s, w, T::ResetAbilities, &[]);
        assert_eq!(kinds(&send(&mut s, w, T::PreSleep, &[])), vec![]);
    }

    #[test]
    fn unique_ids_coalesce_per_function_until_the_job_ends() {
        let mut s = State::new(Limits::default());
        let w = sleeping_worker(&mut s, &[b"f", b"g"]);
        let (c1, c2, c3) = (
            s.connect("a".into()),
            s.connect("b".into()),
            s.connect("c".into()),
        );
        let h1 = created(&send(&mut s, c1, T::SubmitJob, &[b"f", b"u", b"one"]));
        let h2 = created(&send(&mut s, c2, T::SubmitJob, &[b"f", b"u", b"two"]));
        assert_eq!(h1, h2, "same function and unique: one job");
        let hg = created(&send(&mut s, c3, T::SubmitJob, &[b"g", b"u", b"three"]));
        assert_ne!(h1, hg, "the unique id is per function");
        // "-": the payload is the unique id.
        let d1 = created(&send(&mut s, c1, T::SubmitJobBg, &[b"f", b"-", b"same"]));
        let d2 = created(&send(&mut s, c2, T::SubmitJobBg, &[b"f", b"-", b"same"]));
        assert_eq!(d1, d2);
        assert_eq!(s.jobs.len(), 3);
        let r = send(&mut s, w, T::GrabJobUniq, &[]);
        assert_eq!(r[0].2[..], [h1.clone(), b(b"f"), b(b"u"), b(b"one")]);
        // A submission while it runs joins it too.
        let c4 = s.connect("d".into());
        assert_eq!(
            created(&send(&mut s, c4, T::SubmitJob, &[b"f", b"u", b""])),
            h1
        );
        // It fails: every submission hears it, and the id is free again.
        let r = send(&mut s, w, T::WorkFail, &[&h1]);
        assert_eq!(
            kinds(&r),
            vec![(c1, T::WorkFail), (c2, T::WorkFail), (c4, T::WorkFail)]
        );
        let again = created(&send(&mut s, c1, T::SubmitJob, &[b"f", b"u", b"one"]));
        assert_ne!(again, h1, "a new job, not the dead one");
        let status = send(&mut s, c1, T::GetStatusUnique, &[b"u"]);
        assert_eq!(status[0].1, T::StatusResUnique);
        assert_eq!(
            status[0].2[1..],
            [b(b"1"), b(b"0"), b(b"0"), b(b"0"), b(b"1")]
        );
    }

    #[test]
    fn a_worker_that_disconnects_mid_job_hands_it_back() {
        let mut s = State::new(Limits::default());
        let w1 = sleeping_worker(&mut s, &[b"f"]);
        let c = s.connect("c".into());
        let h = created(&send(&mut s, c, T::SubmitJob, &[b"f", b"u", b"x"]));
        send(&mut s, w1, T::GrabJobUniq, &[]);
        send(&mut s, w1, T::WorkStatus, &[&h, b"1", b"2"]);
        let w2 = sleeping_worker(&mut s, &[b"f"]);
        let mut out = Outbox::default();
        s.disconnect(w1, &mut out);
        check(&s);
        assert_eq!(
            out.0,
            vec![(w2, Reply::Packet(Packet::res(T::Noop, vec![])))]
        );
        let status = send(&mut s, c, T::GetStatus, &[&h]);
        assert_eq!(status[0].2[1..], [b(b"1"), b(b"0"), b(b"0"), b(b"0")]);
        let r = send(&mut s, w2, T::GrabJobUniq, &[]);
        assert_eq!(r[0].2[0], h, "the same job, same handle");
        // The old worker's late word is refused; it holds no job now.
        let r = send(&mut s, w2, T::WorkComplete, &[&h, b"done"]);
        assert_eq!(r, vec![(c, T::WorkComplete, vec![h.clone(), b(b"done")])]);
        assert!(s.jobs.is_empty());
    }

    #[test]
    fn clients_that_leave() {
        let mut s = State::new(Limits::default());
        let c = s.connect("c".into());
        let other = s.connect("o".into());
        created(&send(&mut s, c, T::SubmitJob, &[b"f", b"u", b"fg"]));
        created(&send(&mut s, c, T::SubmitJobBg, &[b"f", b"", b"bg"]));
        let shared = created(&send(&mut s, c, T::SubmitJob, &[b"f", b"v", b"shared"]));
        created(&send(&mut s, other, T::SubmitJob, &[b"f", b"v", b""]));
        let running = created(&send(&mut s, c, T::SubmitJob, &[b"g", b"", b"run"]));
        let w = sleeping_worker(&mut s, &[b"g"]);
        send(&mut s, w, T::GrabJobUniq, &[]);
        let mut out = Outbox::default();
        s.disconnect(c, &mut out);
        check(&s);
        assert!(out.0.is_empty());
        // Its queued foreground job is gone (and its unique id free); the
        // background one, the one another client waits for and the running
        // one stay.
        assert_eq!(s.jobs.len(), 3);
        assert!(s.by_handle.contains_key(&shared));
        // The running one's result goes nowhere, and then it is gone.
        assert_eq!(send(&mut s, w, T::WorkComplete, &[&running, b"r"]), vec![]);
        assert_eq!(s.jobs.len(), 2);
        // A job whose worker and clients are all gone is dropped too.
        let h = created(&send(&mut s, other, T::SubmitJob, &[b"g", b"", b"x"]));
        send(&mut s, w, T::GrabJobUniq, &[]);
        let mut out = Outbox::default();
        s.disconnect(other, &mut out);
        s.disconnect(w, &mut out);
        check(&s);
        assert!(!s.by_handle.contains_key(&h));
    }

    #[test]
    fn exceptions_reach_only_clients_that_asked() {
        let mut s = State::new(Limits::default());
        let w = sleeping_worker(&mut s, &[b"f"]);
        let (plain, asked) = (s.connect("p".into()), s.connect("a".into()));
        assert_eq!(
            send(&mut s, asked, T::OptionReq, &[b"Exceptions"]),
            vec![(asked, T::OptionRes, vec![b(b"Exceptions")])]
        );
        assert_eq!(
            kinds(&send(&mut s, asked, T::OptionReq, &[b"bogus"])),
            vec![(asked, T::Error)]
        );
        let h = created(&send(&mut s, plain, T::SubmitJob, &[b"f", b"u", b""]));
        send(&mut s, asked, T::SubmitJob, &[b"f", b"u", b""]);
        send(&mut s, w, T::GrabJob, &[]);
        let r = send(&mut s, w, T::WorkException, &[&h, b"oops"]);
        assert_eq!(
            r,
            vec![
                (plain, T::WorkFail, vec![h.clone()]),
                (asked, T::WorkException, vec![h.clone(), b(b"oops")]),
            ]
        );
        assert!(s.jobs.is_empty());
    }

    #[test]
    fn misuse_is_answered_with_error_and_changes_nothing() {
        let mut s = State::new(Limits::default());
        let w = sleeping_worker(&mut s, &[b"f"]);
        let c = s.connect("c".into());
        let h = created(&send(&mut s, c, T::SubmitJob, &[b"f", b"", b"x"]));
        // Work results for a job this connection does not hold.
        for who in [w, c] {
            let r = send(&mut s, who, T::WorkComplete, &[&h, b"forged"]);
            assert_eq!(kinds(&r), vec![(who, T::Error)]);
        }
        assert_eq!(
            kinds(&send(&mut s, c, T::WorkFail, &[b"H:nope"])),
            vec![(c, T::Error)]
        );
        // Server-only packets, a response magic, unsupported submissions.
        for kind in [
            T::Noop,
            T::JobAssign,
            T::AllYours,
            T::SubmitJobEpoch,
            T::SubmitReduceJob,
        ] {
            let args: Vec<&[u8]> = vec![b"a"; kind.arg_count()];
            assert_eq!(
                kinds(&send(&mut s, c, kind, &args)),
                vec![(c, T::Error)],
                "{kind}"
            );
        }
        let mut out = Outbox::default();
        s.packet(c, Packet::res(T::EchoReq, vec![b(b"x")]), &mut out);
        assert_eq!(out.0.len(), 1);
        // gearmand's name limits.
        let long_unique = [b'u'; 65];
        let r = send(&mut s, c, T::SubmitJob, &[b"f", &long_unique, b""]);
        assert_eq!(kinds(&r), vec![(c, T::Error)]);
        let long_function = [b'f'; 513];
        assert_eq!(
            kinds(&send(
                &mut s,
                c,
                T::SubmitJobBg,
                &[&long_function, b"", b""]
            )),
            vec![(c, T::Error)]
        );
        assert_eq!(
            kinds(&send(&mut s, w, T::CanDo, &[&long_function])),
            vec![(w, T::Error)]
        );
        assert_eq!(s.jobs.len(), 1);
        // Echo is binary-safe.
        let r = send(&mut s, c, T::EchoReq, &[b"a\0b"]);
        assert_eq!(r, vec![(c, T::EchoRes, vec![b(b"a\0b")])]);
    }

    #[test]
    fn limits_refuse_new_jobs_but_keep_coalescing() {
        let limits = Limits {
            max_jobs: 2,
            max_job_bytes: 100,
            max_abilities: 2,
        };
        let mut s = State::new(limits);
        let c = s.connect("c".into());
        created(&send(&mut s, c, T::SubmitJobBg, &[b"f", b"u", b"1"]));
        let big = [b'x'; 100];
        let r = send(&mut s, c, T::SubmitJobBg, &[b"f", b"", &big]);
        assert_eq!(r[0].2[..], [b(b"QUEUE_ERROR"), b(b"Job queue is full")]);
        created(&send(&mut s, c, T::SubmitJobBg, &[b"f", b"", b"2"]));
        assert_eq!(
            kinds(&send(&mut s, c, T::SubmitJob, &[b"f", b"", b"3"])),
            vec![(c, T::Error)]
        );
        // Joining an existing job costs nothing.
        created(&send(&mut s, c, T::SubmitJob, &[b"f", b"u", b"1"]));
        for f in [b"a", b"b"] {
            assert_eq!(send(&mut s, c, T::CanDo, &[f]), vec![]);
        }
        assert_eq!(
            kinds(&send(&mut s, c, T::CanDo, &[b"c"])),
            vec![(c, T::Error)]
        );
    }

    #[test]
    fn admin_answers_parse_as_gearmand_s() {
        let mut s = State::new(Limits::default());
        let w = sleeping_worker(&mut s, &[b"slotman::work", b"odd\nname"]);
        send(&mut s, w, T::SetClientId, &[b"slotman:svc:demo:1:42"]);
        let idle = sleeping_worker(&mut s, &[b"slotman::work"]);
        let c = s.connect("::1".into());
        for _ in 0..3 {
            send(&mut s, c, T::SubmitJobBg, &[b"slotman::work", b"", b""]);
        }
        send(&mut s, c, T::SubmitJobBg, &[b"nobody", b"", b""]);
        send(&mut s, w, T::GrabJobUniq, &[]);
        let status = admin::parse_status(&admin_text(&s, "status")).expect("status parses");
        let row = |name: &str| status.iter().find(|r| r.name == name).cloned();
        let work = row("slotman::work").expect("slotman::work");
        assert_eq!((work.queued, work.running, work.workers), (3, 1, 2));
        let nobody = row("nobody").expect("nobody");
        assert_eq!((nobody.queued, nobody.running, nobody.workers), (1, 0, 0));
        assert_eq!(row("odd?name").map(|r| r.workers), Some(1));
        let workers = admin::parse_workers(&admin_text(&s, "WORKERS\r")).expect("workers parse");
        assert_eq!(workers.len(), 3);
        assert_eq!(workers[0].fd, w.to_string());
        assert_eq!(workers[0].client_id, "slotman:svc:demo:1:42");
        assert_eq!(workers[0].functions, ["slotman::work", "odd?name"]);
        assert_eq!(workers[1].fd, idle.to_string());
        assert_eq!(workers[1].client_id, "-");
        assert_eq!(
            (workers[2].address.as_str(), workers[2].functions.len()),
            ("::1", 0)
        );
        assert!(admin::parse_version(&admin_text(&s, "version")).is_ok());
        assert_eq!(
            admin_text(&s, "getpid"),
            format!("OK {}\n", std::process::id())
        );
        let err = admin_text(&s, "shutdown now");
        assert!(err.starts_with("ERR UNKNOWN_COMMAND"), "{err}");
        assert!(matches!(
            admin::parse_status(&err),
            Err(admin::AdminError::Server(_))
        ));
        let mut out = Outbox::default();
        s.admin(c, "   ", &mut out);
        assert!(out.0.is_empty());
    }

    #[test]
    fn connection_ids_are_never_reused() {
        let mut s = State::new(Limits::default());
        let a = s.connect("a".into());
        s.disconnect(a, &mut Outbox::default());
        let b = s.connect("b".into());
        assert!(b > a);
        // Requests from a connection that is gone are ignored.
        let mut out = Outbox::default();
        s.packet(a, Packet::req(T::EchoReq, vec![]), &mut out);
        assert!(out.0.is_empty());
    }

    /// One step of a random session.
    #[derive(Debug, Clone)]
    enum Op {
        Connect,
        Disconnect(usize),
        Submit {
            conn: usize,
            function: u8,
            unique: u8,
            data: u8,
            kind: u8,
        },
        CanDo(usize, u8),
        CantDo(usize, u8),
        Sleep(usize),
        Grab(usize, u8),
        /// A WORK_* packet for the connection's first running job (or a
        /// made-up handle when it runs none).
        Work(usize, u8),
        Exceptions(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let conn = 0usize..6;
        prop_oneof![
            1 => Just(Op::Connect),
            1 => conn.clone().prop_map(Op::Disconnect),
            4 => (conn.clone(), 0u8..3, 0u8..5, 0u8..3, 0u8..6).prop_map(|(conn, function, unique, data, kind)| Op::Submit { conn, function, unique, data, kind }),
            2 => (conn.clone(), 0u8..3).prop_map(|(c, f)| Op::CanDo(c, f)),
            1 => (conn.clone(), 0u8..3).prop_map(|(c, f)| Op::CantDo(c, f)),
            1 => conn.clone().prop_map(Op::Sleep),
            3 => (conn.clone(), 0u8..3).prop_map(|(c, k)| Op::Grab(c, k)),
            3 => (conn.clone(), 0u8..6).prop_map(|(c, k)| Op::Work(c, k)),
            1 => conn.prop_map(Op::Exceptions),
        ]
    }

    /// Per connection: foreground submissions accepted, and the ends of
    /// jobs it was told.
    #[derive(Default)]
    struct Tally {
        submitted: HashMap<ConnId, usize>,
        ended: HashMap<ConnId, usize>,
    }

    impl Tally {
        fn apply(&mut self, s: &mut State, from: ConnId, p: Packet) {
            let foreground = matches!(p.kind, T::SubmitJob | T::SubmitJobHigh | T::SubmitJobLow);
            let mut out = Outbox::default();
            s.packet(from, p, &mut out);
            check(s);
            self.count(s, from, foreground, out);
        }

        fn count(&mut self, s: &State, from: ConnId, foreground: bool, out: Outbox) {
            for (to, reply) in out.0 {
                assert!(s.conns.contains_key(&to), "replies go to open connections");
                let Reply::Packet(p) = reply else { continue };
                match p.kind {
                    T::JobCreated if foreground && to == from => {
                        *self.submitted.entry(to).or_default() += 1
                    }
                    T::WorkComplete | T::WorkFail | T::WorkException => {
                        *self.ended.entry(to).or_default() += 1
                    }
                    _ => {}
                }
            }
        }
    }

    proptest! {
        /// Any sequence of requests keeps the bookkeeping consistent, and
        /// once every job has run, each submission of a client still
        /// connected has heard exactly one end.
        #[test]
        fn every_foreground_submission_hears_one_end(ops in proptest::collection::vec(op(), 1..80)) {
            let mut s = State::new(Limits::default());
            let mut tally = Tally::default();
            let mut conns: Vec<ConnId> = (0..3).map(|_| s.connect("x".into())).collect();
            let functions: [&[u8]; 3] = [b"f", b"g", b"h"];
            for op in ops {
                let pick = |i: usize| conns.get(i % conns.len().max(1)).copied();
                match op {
                    Op::Connect => conns.push(s.connect("x".into())),
                    Op::Disconnect(i) => {
                        if let Some(c) = pick(i) {
                            conns.retain(|&x| x != c);
                            let mut out = Outbox::default();
                            s.disconnect(c, &mut out);
                            check(&s);
                            tally.count(&s, c, false, out);
                        }
                    }
                    Op::Submit { conn, function, unique, data, kind } => {
                        let Some(c) = pick(conn) else { continue };
                        let kind = [T::SubmitJob, T::SubmitJobBg, T::SubmitJobHigh, T::SubmitJobHighBg, T::SubmitJobLow, T::SubmitJobLowBg][kind as usize];
                        let unique: &[u8] = [&b""[..], b"u1", b"u2", b"-", b"u3"][unique as usize];
                        let args = vec![b(functions[function as usize]), b(unique), Bytes::from(vec![b'd'; data as usize])];
                        tally.apply(&mut s, c, Packet::req(kind, args));
                    }
                    Op::CanDo(i, f) | Op::CantDo(i, f) => {
                        let Some(c) = pick(i) else { continue };
                        let kind = if matches!(op, Op::CanDo(..)) { T::CanDo } else { T::CantDo };
                        tally.apply(&mut s, c, Packet::req(kind, vec![b(functions[f as usize])]));
                    }
                    Op::Sleep(i) => {
                        let Some(c) = pick(i) else { continue };
                        tally.apply(&mut s, c, Packet::req(T::PreSleep, vec![]));
                    }
                    Op::Grab(i, k) => {
                        let Some(c) = pick(i) else { continue };
                        let kind = [T::GrabJob, T::GrabJobUniq, T::GrabJobAll][k as usize];
                        tally.apply(&mut s, c, Packet::req(kind, vec![]));
                    }
                    Op::Work(i, k) => {
                        let Some(c) = pick(i) else { continue };
                        let handle = s.conns[&c].running.first().map_or(b(b"H:made-up"), |j| s.jobs[j].handle.clone());
                        let p = match k {
                            0 => Packet::req(T::WorkStatus, vec![handle, b(b"1"), b(b"2")]),
                            1 => Packet::req(T::WorkData, vec![handle, b(b"d")]),
                            2 => Packet::req(T::WorkWarning, vec![handle, b(b"w")]),
                            3 => Packet::req(T::WorkComplete, vec![handle, b(b"r")]),
                            4 => Packet::req(T::WorkFail, vec![handle]),
                            _ => Packet::req(T::WorkException, vec![handle, b(b"e")]),
                        };
                        tally.apply(&mut s, c, p);
                    }
                    Op::Exceptions(i) => {
                        let Some(c) = pick(i) else { continue };
                        tally.apply(&mut s, c, Packet::req(T::OptionReq, vec![b(b"exceptions")]));
                    }
                }
            }
            // Finish what runs, then run everything queued on a new worker.
            for &c in &conns {
                while let Some(j) = s.conns[&c].running.first().copied() {
                    let h = s.jobs[&j].handle.clone();
                    tally.apply(&mut s, c, Packet::req(T::WorkComplete, vec![h, b(b"r")]));
                }
            }
            let w = s.connect("drain".into());
            for f in functions {
                tally.apply(&mut s, w, Packet::req(T::CanDo, vec![b(f)]));
            }
            for _ in 0..1000 {
                let mut out = Outbox::default();
                s.packet(w, Packet::req(T::GrabJobUniq, vec![]), &mut out);
                let Some((_, Reply::Packet(assign))) = out.0.pop() else { break };
                if assign.kind == T::NoJob {
                    break;
                }
                tally.apply(&mut s, w, Packet::req(T::WorkComplete, vec![assign.arg_bytes(0), b(b"r")]));
            }
            prop_assert!(s.jobs.is_empty() && s.functions.is_empty() && s.job_bytes == 0);
            for c in conns {
                prop_assert_eq!(tally.submitted.get(&c), tally.ended.get(&c), "connection {}", c);
            }
        }
    }
}
