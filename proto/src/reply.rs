//! Replies: what archon answers, one per request, in request order on each connection.
//!
//! Every reply is one record, except the tables: `List`, `Status`, `Tree`, `Config` and
//! `History`. Their first record is `<Kind>,<n>` and `n` rows follow (`Process`, `Service`,
//! `Node`, `Setting`, `Event`), so a client knows where the reply ends without waiting.

use std::fmt;

use crate::event::Event;
use crate::limits::{MAX_HISTORY, MAX_LOG_ROWS, MAX_TREE_NODES};
use crate::log::LogLine;
use crate::name;
use crate::record::{self, Fields};
use crate::request::{Id, Power, Target, parse_pid, parse_u64};
use crate::signal;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// It exited with this code.
    Exited(u8),
    /// A signal killed it.
    Signaled(i32),
    /// It has ended, but the kernel cannot tell how (a process archon monitors but did not start,
    /// on a kernel older than 6.15, or that its parent has not reaped).
    Unknown,
}

impl Status {
    /// The shell's view of the status: the exit code, or 128 + the signal's number.
    pub fn code(self) -> Option<i32> {
        match self {
            Status::Exited(c) => Some(i32::from(c)),
            Status::Signaled(n) => Some(128 + n),
            Status::Unknown => None,
        }
    }

    /// The status as one field: the exit code (`0`), the signal's name (`SIGKILL`), or `unknown`.
    pub fn to_field(self) -> Vec<u8> {
        match self {
            Status::Exited(c) => c.to_string().into_bytes(),
            Status::Signaled(n) => signal::name(n)
                .unwrap_or_else(|| format!("SIG{n}"))
                .into_bytes(),
            Status::Unknown => b"unknown".to_vec(),
        }
    }

    /// Reads a field written by [`to_field`](Self::to_field).
    pub fn from_field(field: &[u8]) -> Option<Status> {
        if field == b"unknown" {
            return Some(Status::Unknown);
        }
        if field.starts_with(b"SIG") {
            return signal::parse(field)
                .filter(|&n| n > 0)
                .map(Status::Signaled);
        }
        parse_u64(field)
            .and_then(|c| u8::try_from(c).ok())
            .map(Status::Exited)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(c) => write!(f, "exited with code {c}"),
            Status::Signaled(n) => match signal::name(*n) {
                Some(name) => write!(f, "killed by {name}"),
                None => write!(f, "killed by signal {n}"),
            },
            Status::Unknown => write!(f, "ended, status unknown"),
        }
    }
}

wire_enum! {
    /// How a process came under archon's watch.
    Kind {
        /// Started by `Run`.
        Run = "run",
        /// Started by `StartDaemon`.
        Daemon = "daemon",
        /// Watched by `MonitorFD` or `Monitor`.
        Monitor = "monitor",
    }
}

wire_enum! {
    /// Where a process is in its life.
    ProcState {
        /// Forked; not yet known to have executed its program.
        Starting = "starting",
        /// Running.
        Running = "running",
        /// Asked to stop; SIGKILL follows when its grace period ends.
        Stopping = "stopping",
        /// Ended; its status says how.
        Exited = "exited",
    }
}

wire_enum! {
    /// What a row of a `Status` reply describes: a configured service or task, or a process that
    /// came by request.
    ServiceKind {
        /// A service from the configuration: kept running.
        Service = "service",
        /// A task from the configuration: runs once to completion.
        Task = "task",
        /// A process started by `StartDaemon`.
        Daemon = "daemon",
        /// A process started by `Run`.
        Run = "run",
        /// A process watched by `MonitorFD` or `Monitor`.
        Monitor = "monitor",
        /// A Lua handler of the configuration, named `<file>:<line>` (the file's last
        /// component, the line of its `on`, `every` or `watch`): the subject of `handler` and
        /// `note` events, never a row of `Status`.
        Lua = "lua",
        /// archon itself, in the events of its re-execution (subject `archon`).
        Archon = "archon",
    }
}

impl ServiceKind {
    /// True for the kinds of processes that came by request (named by their id), false for
    /// services and tasks (named by their name).
    pub fn is_process(self) -> bool {
        matches!(
            self,
            ServiceKind::Daemon | ServiceKind::Run | ServiceKind::Monitor
        )
    }
}

impl From<Kind> for ServiceKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Run => ServiceKind::Run,
            Kind::Daemon => ServiceKind::Daemon,
            Kind::Monitor => ServiceKind::Monitor,
        }
    }
}

wire_enum! {
    /// Where a service, a task or a process is, as `Status` reports it: one set of words for
    /// both, since a process's states are a subset of a service's plus `exited`.
    ServiceState {
        /// Not running: never started, stopped on request, or not enabled.
        Stopped = "stopped",
        /// Started; not yet ready (a service) or not yet known to have executed (a process).
        Starting = "starting",
        /// Running; a service that reports readiness has not yet done so.
        Running = "running",
        /// Running and ready; dependents may start.
        Ready = "ready",
        /// Asked to stop; SIGKILL follows when its grace period ends.
        Stopping = "stopping",
        /// Ended and waiting to be restarted.
        Backoff = "backoff",
        /// Given up: failed to start, a required service failed, too many restarts, or a task
        /// that exited non-zero; the reason says which.
        Failed = "failed",
        /// A task that exited 0.
        Done = "done",
        /// Stopped by `Pause` (SIGSTOP, or its cgroup frozen) until `Resume`.
        Paused = "paused",
        /// A process that has ended (processes only; its last status says how).
        Exited = "exited",
    }
}

impl ServiceState {
    /// Whether a row of kind `kind` may be in this state: a process is starting, running,
    /// paused, stopping or exited; a service or a task is never exited.
    pub fn fits(self, kind: ServiceKind) -> bool {
        if kind.is_process() {
            matches!(
                self,
                ServiceState::Starting
                    | ServiceState::Running
                    | ServiceState::Paused
                    | ServiceState::Stopping
                    | ServiceState::Exited
            )
        } else {
            self != ServiceState::Exited
        }
    }
}

impl From<ProcState> for ServiceState {
    fn from(state: ProcState) -> Self {
        match state {
            ProcState::Starting => ServiceState::Starting,
            ProcState::Running => ServiceState::Running,
            ProcState::Stopping => ServiceState::Stopping,
            ProcState::Exited => ServiceState::Exited,
        }
    }
}

wire_enum! {
    /// What a service's health check says.
    Health {
        /// The check passes.
        Healthy = "healthy",
        /// It failed `retries` times in a row after the start period.
        Unhealthy = "unhealthy",
        /// Within the start period, or no check has finished yet.
        Starting = "starting",
    }
}

/// One row of a `Status` reply:
/// `Service,<name>,<kind>,<state>,<pid>,<since>,<restarts>,<last>,<ready>,<health>,<rss-kib>,<cpu-ms>,<reason>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRow {
    /// A service's or task's name; a process's id, in decimal.
    pub name: Vec<u8>,
    /// What the row describes.
    pub kind: ServiceKind,
    /// Where it is; [`ServiceState::fits`] its kind.
    pub state: ServiceState,
    /// Its main process; `None` (an empty field) when it has none.
    pub pid: Option<i32>,
    /// When it entered its state, in milliseconds since the Unix epoch (so for `running` and
    /// `ready`, when it started); written as seconds with three decimals.
    pub since_ms: u64,
    /// How many times archon has restarted it.
    pub restarts: u32,
    /// How its main process last ended; `None` (an empty field) when it never has.
    pub last: Option<Status>,
    /// Whether it has reported readiness: `yes`, `no`, or `None` (`-`) where that does not
    /// apply (not running, a process).
    pub ready: Option<bool>,
    /// Its health check's verdict; `None` (`-`) without a check.
    pub health: Option<Health>,
    /// Resident memory of its whole tree, in KiB; `None` (an empty field) when unknown.
    pub rss_kib: Option<u64>,
    /// CPU time used by its whole tree, user and system, in milliseconds; `None` (an empty
    /// field) when unknown.
    pub cpu_ms: Option<u64>,
    /// Why it is failed, in backoff or stopped, for people; may be empty.
    pub reason: Vec<u8>,
    /// Where its sockets are bound, in the order declared, separated by a space, each as
    /// `<transport>:<address>` (`tcp:127.0.0.1:43211`, `udp:[::1]:5353`, `unix:/run/web.sock`,
    /// `unixgram:@log`): a port 0 is the port archon got; a space, a backslash or a control
    /// character of a Unix address is written `\xHH`. Empty for none, and for a process.
    pub sockets: Vec<u8>,
}

/// One row of a `Tree` reply: `Node,<name>,<pid>,<ppid>,<comm>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TreeNode {
    /// The service the process belongs to, or the id (in decimal) of the process that came by
    /// request whose descendant it is.
    pub name: Vec<u8>,
    /// The process.
    pub pid: i32,
    /// Its parent (0 when the kernel shows none, as for a process whose parent is outside
    /// archon's pid namespace).
    pub ppid: i32,
    /// Its command name as the kernel has it (`/proc/<pid>/comm`, at most 15 bytes there).
    pub comm: Vec<u8>,
}

/// One row of a `Config` reply: `Setting,<name>,<key>,<value>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Setting {
    /// The service or task.
    pub name: Vec<u8>,
    /// The field (`argv`, `restart`, `backoff.initial`); never empty.
    pub key: Vec<u8>,
    /// Its effective value, as a Lua literal would read: `{"a","b"}`, `"always"`, `7000ms`.
    pub value: Vec<u8>,
}

/// What a `Reload` did: `Ok,<started>,<stopped>,<restarted>,<unchanged>`, counts of services
/// and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReloadCounts {
    /// New in the file: started (or only declared, when not to be started).
    pub started: u32,
    /// Gone from the file: stopped.
    pub stopped: u32,
    /// Changed: restarted with the new settings.
    pub restarted: u32,
    /// Left as they were.
    pub unchanged: u32,
}

impl ReloadCounts {
    /// The fields after `Ok`.
    pub fn to_fields(self) -> Fields {
        [self.started, self.stopped, self.restarted, self.unchanged]
            .iter()
            .map(|n| n.to_string().into_bytes())
            .collect()
    }

    /// Reads the fields after `Ok`; fields after the fourth are an extension and are ignored.
    pub fn from_fields(fields: &[Vec<u8>]) -> Option<ReloadCounts> {
        let n = |i: usize| {
            fields
                .get(i)
                .and_then(|f| parse_u64(f))
                .and_then(|n| u32::try_from(n).ok())
        };
        Some(ReloadCounts {
            started: n(0)?,
            stopped: n(1)?,
            restarted: n(2)?,
            unchanged: n(3)?,
        })
    }
}

/// One row of a `List` reply:
/// `Process,<id>,<kind>,<pid>,<state>,<started>,<status>[,<argv>...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessRow {
    /// archon's id for the process.
    pub id: Id,
    /// How it came under watch.
    pub kind: Kind,
    /// Its pid.
    pub pid: i32,
    /// Where it is in its life.
    pub state: ProcState,
    /// When archon started or began watching it, in milliseconds since the Unix epoch; written
    /// as seconds with three decimals (`1763769600.250`).
    pub started_ms: u64,
    /// How it last ended; `None` (an empty field) while it runs.
    pub status: Option<Status>,
    /// Its command line as archon started it; empty for a monitored process.
    pub argv: Fields,
}

/// The reply kinds, as spelled on the wire.
pub mod kind {
    /// [`super::Reply::Ok`]
    pub const OK: &str = "Ok";
    /// [`super::Reply::Error`]
    pub const ERROR: &str = "Error";
    /// [`super::Reply::ExitStatus`]
    pub const EXIT_STATUS: &str = "ExitStatus";
    /// [`super::Reply::Pong`]
    pub const PONG: &str = "Pong";
    /// [`super::Reply::Version`]
    pub const VERSION: &str = "Version";
    /// [`super::Reply::List`]'s header
    pub const LIST: &str = "List";
    /// A row of [`super::Reply::List`]
    pub const PROCESS: &str = "Process";
    /// [`super::Reply::Status`]'s header
    pub const STATUS: &str = "Status";
    /// A row of [`super::Reply::Status`]
    pub const SERVICE: &str = "Service";
    /// [`super::Reply::Tree`]'s header
    pub const TREE: &str = "Tree";
    /// A row of [`super::Reply::Tree`]
    pub const NODE: &str = "Node";
    /// [`super::Reply::Config`]'s header
    pub const CONFIG: &str = "Config";
    /// A row of [`super::Reply::Config`]
    pub const SETTING: &str = "Setting";
    /// [`super::Reply::History`]'s header
    pub const HISTORY: &str = "History";
    /// A row of [`super::Reply::History`], and an event of a `Subscribe` stream
    pub const EVENT: &str = "Event";
    /// The mark in a `Subscribe` or `FollowLogs` stream of events or lines left out
    pub const DROPPED: &str = "Dropped";
    /// [`super::Reply::Logs`]'s header
    pub const LOGS: &str = "Logs";
    /// A row of [`super::Reply::Logs`], and a line of a `FollowLogs` stream
    pub const LOG: &str = "Log";
}

/// The words of a `Status` row's `ready` field.
pub mod ready {
    /// It has reported readiness.
    pub const YES: &str = "yes";
    /// It has not (yet).
    pub const NO: &str = "no";
    /// Does not apply; also the `health` field's word for no check, and `Stop`'s status of a
    /// service that was not running.
    pub const NONE: &str = "-";
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `Ok[,<field>...]`: done. `StartDaemon`, `MonitorFD` and `Monitor` add `<id>,<pid>`; `Stop`
    /// adds `<target>,<status>`; `Signal`, `Start`, `Restart`, `Pause` and `Resume` add
    /// `<target>`; `Reload` adds its [`ReloadCounts`]; `Subscribe` adds the number the next
    /// event will have, and the stream of events follows.
    Ok(Fields),
    /// `Error,<reason>`: not done, and nothing changed.
    Error(Vec<u8>),
    /// `ExitStatus,<code>[,<signal>]`: how a `Run` ended. Killed by signal N, the code is 128+N and
    /// the signal's name follows.
    ExitStatus(Status),
    /// `Pong`: the answer to `Ping`.
    Pong,
    /// `Version,<archon version>,<protocol version>`.
    Version {
        /// archon's version.
        archon: Vec<u8>,
        /// The protocol's version ([`crate::limits::PROTOCOL_VERSION`]).
        protocol: u32,
    },
    /// `List,<n>` and `n` rows.
    List(Vec<ProcessRow>),
    /// `Status,<n>` and `n` rows.
    Status(Vec<ServiceRow>),
    /// `Tree,<n>` and `n` rows (at most [`MAX_TREE_NODES`]).
    Tree(Vec<TreeNode>),
    /// `Config,<n>` and `n` rows.
    Config(Vec<Setting>),
    /// `History,<n>` and `n` rows (at most [`MAX_HISTORY`]), oldest first.
    History(Vec<Event>),
    /// `Logs,<n>` and `n` rows (at most [`MAX_LOG_ROWS`]), oldest first.
    Logs(Vec<LogLine>),
}

/// A reply that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(pub String);

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed reply: {}", self.0)
    }
}

impl std::error::Error for ReplyError {}

pub(crate) fn bad(what: &str) -> ReplyError {
    ReplyError(what.to_string())
}

pub(crate) fn millis_to_field(ms: u64) -> Vec<u8> {
    format!("{}.{:03}", ms / 1000, ms % 1000).into_bytes()
}

pub(crate) fn millis_from_field(field: &[u8]) -> Option<u64> {
    let dot = field.iter().position(|&b| b == b'.')?;
    let (secs, frac) = (&field[..dot], &field[dot + 1..]);
    if frac.len() != 3 {
        return None;
    }
    parse_u64(secs)?
        .checked_mul(1000)?
        .checked_add(parse_u64(frac)?)
}

impl Reply {
    /// `Error,<reason>`.
    pub fn error(reason: impl fmt::Display) -> Reply {
        Reply::Error(reason.to_string().into_bytes())
    }

    /// `Ok,<id>,<pid>`: the answer to `StartDaemon`, `MonitorFD` and `Monitor`.
    pub fn started(id: Id, pid: i32) -> Reply {
        Reply::Ok(vec![
            id.to_string().into_bytes(),
            pid.to_string().into_bytes(),
        ])
    }

    /// `Ok,<id>,<status>`: the answer to `Stop`.
    pub fn stopped(id: Id, status: Status) -> Reply {
        Reply::Ok(vec![id.to_string().into_bytes(), status.to_field()])
    }

    /// `Ok,<target>`: the answer to `Signal`, `Start`, `Restart`, `Pause` and `Resume`.
    pub fn done(target: &Target) -> Reply {
        Reply::Ok(vec![target.to_field()])
    }

    /// `Ok,<name>,<status>`: the answer to a `Stop` of a service; the status is `-` when it was
    /// not running.
    pub fn stopped_service(name: &[u8], last: Option<Status>) -> Reply {
        Reply::Ok(vec![
            name.to_vec(),
            last.map_or_else(|| ready::NONE.as_bytes().to_vec(), Status::to_field),
        ])
    }

    /// `Ok,<next-seq>`: the answer to `Subscribe`, before its stream.
    pub fn subscribed(next_seq: u64) -> Reply {
        Reply::Ok(vec![next_seq.to_string().into_bytes()])
    }

    /// `Ok,<started>,<stopped>,<restarted>,<unchanged>`: the answer to `Reload`.
    pub fn reloaded(counts: ReloadCounts) -> Reply {
        Reply::Ok(counts.to_fields())
    }

    /// `Ok,<poweroff|reboot|halt>`: the answer to `Poweroff`, `Reboot` and `Halt`, sent before
    /// anything stops.
    pub fn going_down(power: Power) -> Reply {
        Reply::Ok(vec![power.word().as_bytes().to_vec()])
    }

    /// Appends the reply's records to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let k = |s: &str| s.as_bytes().to_vec();
        match self {
            Reply::Ok(fields) => record::join_into(
                std::iter::once(k(kind::OK)).chain(fields.iter().cloned()),
                out,
            ),
            Reply::Error(reason) => record::join_into([k(kind::ERROR), reason.clone()], out),
            Reply::ExitStatus(status) => {
                let mut fields = vec![k(kind::EXIT_STATUS)];
                if let Status::Signaled(n) = status {
                    fields.push((128 + n).to_string().into_bytes());
                }
                fields.push(status.to_field());
                record::join_into(fields, out);
            }
            Reply::Pong => record::join_into([kind::PONG], out),
            Reply::Version { archon, protocol } => record::join_into(
                [
                    k(kind::VERSION),
                    archon.clone(),
                    protocol.to_string().into_bytes(),
                ],
                out,
            ),
            Reply::List(rows) => {
                record::join_into([k(kind::LIST), rows.len().to_string().into_bytes()], out);
                for row in rows {
                    let mut fields = vec![
                        k(kind::PROCESS),
                        row.id.to_string().into_bytes(),
                        k(row.kind.as_str()),
                        row.pid.to_string().into_bytes(),
                        k(row.state.as_str()),
                        millis_to_field(row.started_ms),
                        row.status.map(Status::to_field).unwrap_or_default(),
                    ];
                    fields.extend(row.argv.iter().cloned());
                    record::join_into(fields, out);
                }
            }
            Reply::Status(rows) => {
                header(kind::STATUS, rows.len(), out);
                for row in rows {
                    record::join_into(service_fields(row), out);
                }
            }
            Reply::Tree(nodes) => {
                header(kind::TREE, nodes.len(), out);
                for n in nodes {
                    record::join_into(
                        [
                            k(kind::NODE),
                            n.name.clone(),
                            n.pid.to_string().into_bytes(),
                            n.ppid.to_string().into_bytes(),
                            n.comm.clone(),
                        ],
                        out,
                    );
                }
            }
            Reply::Config(settings) => {
                header(kind::CONFIG, settings.len(), out);
                for s in settings {
                    record::join_into(
                        [
                            k(kind::SETTING),
                            s.name.clone(),
                            s.key.clone(),
                            s.value.clone(),
                        ],
                        out,
                    );
                }
            }
            Reply::History(events) => {
                header(kind::HISTORY, events.len(), out);
                for e in events {
                    e.encode_into(out);
                }
            }
            Reply::Logs(lines) => {
                header(kind::LOGS, lines.len(), out);
                for l in lines {
                    l.encode_into(out);
                }
            }
        }
    }

    /// The reply's records.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// `<kind>,<n>`: the first record of a table.
fn header(kind: &str, n: usize, out: &mut Vec<u8>) {
    record::join_into([kind.as_bytes(), n.to_string().as_bytes()], out);
}

fn opt_num(n: Option<impl ToString>) -> Vec<u8> {
    n.map(|n| n.to_string().into_bytes()).unwrap_or_default()
}

fn service_fields(row: &ServiceRow) -> [Vec<u8>; 14] {
    let word = |s: &str| s.as_bytes().to_vec();
    [
        word(kind::SERVICE),
        row.name.clone(),
        word(row.kind.as_str()),
        word(row.state.as_str()),
        opt_num(row.pid),
        millis_to_field(row.since_ms),
        row.restarts.to_string().into_bytes(),
        row.last.map(Status::to_field).unwrap_or_default(),
        word(match row.ready {
            Some(true) => ready::YES,
            Some(false) => ready::NO,
            None => ready::NONE,
        }),
        word(row.health.map_or(ready::NONE, Health::as_str)),
        opt_num(row.rss_kib),
        opt_num(row.cpu_ms),
        row.reason.clone(),
        row.sockets.clone(),
    ]
}

/// The rows of a table read so far.
#[derive(Debug)]
enum Rows {
    List(Vec<ProcessRow>),
    Status(Vec<ServiceRow>),
    Tree(Vec<TreeNode>),
    Config(Vec<Setting>),
    History(Vec<Event>),
    Logs(Vec<LogLine>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::List(r) => r.len(),
            Rows::Status(r) => r.len(),
            Rows::Tree(r) => r.len(),
            Rows::Config(r) => r.len(),
            Rows::History(r) => r.len(),
            Rows::Logs(r) => r.len(),
        }
    }

    fn push(&mut self, fields: &[Vec<u8>]) -> Result<(), ReplyError> {
        match self {
            Rows::List(r) => r.push(parse_row(fields)?),
            Rows::Status(r) => r.push(parse_service(fields)?),
            Rows::Tree(r) => r.push(parse_node(fields)?),
            Rows::Config(r) => r.push(parse_setting(fields)?),
            Rows::History(r) => r.push(Event::from_fields(fields)?),
            Rows::Logs(r) => r.push(LogLine::from_fields(fields)?),
        }
        Ok(())
    }

    fn into_reply(self) -> Reply {
        match self {
            Rows::List(r) => Reply::List(r),
            Rows::Status(r) => Reply::Status(r),
            Rows::Tree(r) => Reply::Tree(r),
            Rows::Config(r) => Reply::Config(r),
            Rows::History(r) => Reply::History(r),
            Rows::Logs(r) => Reply::Logs(r),
        }
    }
}

/// Room reserved for the rows of a table before they come: the count in the header is the
/// peer's word, so memory follows the rows that arrive, not the count.
const ROWS_RESERVED: usize = 1024;

/// Reads a reply record by record, as a client does: most replies are done after one record, a
/// table (`List`, `Status`, `Tree`, `Config`, `History`) after its rows.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// The table being read: how many rows it has, and those read so far.
    table: Option<(usize, Rows)>,
}

impl ReplyParser {
    /// A parser waiting for the first record of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins a table of `n` rows: complete at once when it has none.
    fn start_table(&mut self, n: usize, rows: Rows) -> Option<Reply> {
        if n == 0 {
            return Some(rows.into_reply());
        }
        self.table = Some((n, rows));
        None
    }

    /// Takes the next record's fields; returns the reply once it is complete.
    pub fn push(&mut self, fields: &[Vec<u8>]) -> Result<Option<Reply>, ReplyError> {
        if let Some((want, rows)) = &mut self.table {
            rows.push(fields)?;
            if rows.len() < *want {
                return Ok(None);
            }
            return Ok(self.table.take().map(|(_, rows)| rows.into_reply()));
        }
        let Some((head, rest)) = fields.split_first() else {
            return Err(bad("empty record"));
        };
        let reply = match head.as_slice() {
            b"Ok" => Reply::Ok(rest.to_vec()),
            b"Error" => match rest {
                [reason] => Reply::Error(reason.clone()),
                _ => return Err(bad("Error takes one field")),
            },
            b"ExitStatus" => match rest {
                [code] => {
                    Reply::ExitStatus(Status::from_field(code).ok_or_else(|| bad("exit code"))?)
                }
                [code, name] => {
                    let status = Status::from_field(name).ok_or_else(|| bad("signal"))?;
                    if status.code().and_then(|c| u64::try_from(c).ok()) != parse_u64(code) {
                        return Err(bad("exit code does not match the signal"));
                    }
                    Reply::ExitStatus(status)
                }
                _ => return Err(bad("ExitStatus takes one or two fields")),
            },
            b"Pong" if rest.is_empty() => Reply::Pong,
            b"Version" => match rest {
                [archon, protocol] => Reply::Version {
                    archon: archon.clone(),
                    protocol: parse_u64(protocol)
                        .and_then(|p| u32::try_from(p).ok())
                        .ok_or_else(|| bad("protocol version"))?,
                },
                _ => return Err(bad("Version takes two fields")),
            },
            b"List" => {
                let n = row_count(rest, kind::LIST, usize::MAX)?;
                return Ok(
                    self.start_table(n, Rows::List(Vec::with_capacity(n.min(ROWS_RESERVED))))
                );
            }
            b"Status" => {
                let n = row_count(rest, kind::STATUS, usize::MAX)?;
                return Ok(
                    self.start_table(n, Rows::Status(Vec::with_capacity(n.min(ROWS_RESERVED))))
                );
            }
            b"Tree" => {
                let n = row_count(rest, kind::TREE, MAX_TREE_NODES)?;
                return Ok(
                    self.start_table(n, Rows::Tree(Vec::with_capacity(n.min(ROWS_RESERVED))))
                );
            }
            b"Config" => {
                let n = row_count(rest, kind::CONFIG, usize::MAX)?;
                return Ok(
                    self.start_table(n, Rows::Config(Vec::with_capacity(n.min(ROWS_RESERVED))))
                );
            }
            b"History" => {
                let n = row_count(rest, kind::HISTORY, MAX_HISTORY)?;
                return Ok(
                    self.start_table(n, Rows::History(Vec::with_capacity(n.min(ROWS_RESERVED))))
                );
            }
            b"Logs" => {
                let n = row_count(rest, kind::LOGS, MAX_LOG_ROWS)?;
                return Ok(
                    self.start_table(n, Rows::Logs(Vec::with_capacity(n.min(ROWS_RESERVED))))
                );
            }
            _ => return Err(bad("unknown reply kind")),
        };
        Ok(Some(reply))
    }
}

/// The `<n>` of a table's header, at most `max`.
fn row_count(rest: &[Vec<u8>], kind: &str, max: usize) -> Result<usize, ReplyError> {
    match rest {
        [n] => parse_u64(n)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= max)
            .ok_or_else(|| bad("row count")),
        _ => Err(ReplyError(format!("{kind} takes one field"))),
    }
}

fn parse_row(fields: &[Vec<u8>]) -> Result<ProcessRow, ReplyError> {
    let [head, id, kind, pid, state, started, status, argv @ ..] = fields else {
        return Err(bad("Process row too short"));
    };
    if head != kind::PROCESS.as_bytes() {
        return Err(bad("expected a Process row"));
    }
    Ok(ProcessRow {
        id: parse_u64(id).ok_or_else(|| bad("id"))?,
        kind: Kind::from_field(kind).ok_or_else(|| bad("kind"))?,
        pid: parse_pid(pid).ok_or_else(|| bad("pid"))?,
        state: ProcState::from_field(state).ok_or_else(|| bad("state"))?,
        started_ms: millis_from_field(started).ok_or_else(|| bad("start time"))?,
        status: match status.as_slice() {
            b"" => None,
            s => Some(Status::from_field(s).ok_or_else(|| bad("status"))?),
        },
        argv: argv.to_vec(),
    })
}

/// An empty field is `None`.
pub(crate) fn optional<T>(
    field: &[u8],
    parse: impl FnOnce(&[u8]) -> Option<T>,
    what: &str,
) -> Result<Option<T>, ReplyError> {
    match field {
        b"" => Ok(None),
        f => parse(f).map(Some).ok_or_else(|| bad(what)),
    }
}

/// A row's name: a process's id when `process`, else a service name.
pub(crate) fn check_row_name(field: &[u8], process: bool) -> Result<(), ReplyError> {
    let ok = if process {
        field.iter().all(u8::is_ascii_digit) && parse_u64(field).is_some()
    } else {
        name::check(field).is_ok()
    };
    if ok { Ok(()) } else { Err(bad("name")) }
}

fn parse_service(fields: &[Vec<u8>]) -> Result<ServiceRow, ReplyError> {
    let [
        head,
        name,
        kind,
        state,
        pid,
        since,
        restarts,
        last,
        ready,
        health,
        rss,
        cpu,
        reason,
        sockets,
    ] = fields
    else {
        return Err(bad("a Service row has 14 fields"));
    };
    if head != kind::SERVICE.as_bytes() {
        return Err(bad("expected a Service row"));
    }
    let kind = ServiceKind::from_field(kind).ok_or_else(|| bad("kind"))?;
    check_row_name(name, kind.is_process())?;
    let state = ServiceState::from_field(state)
        .filter(|s| s.fits(kind))
        .ok_or_else(|| bad("state"))?;
    Ok(ServiceRow {
        name: name.clone(),
        kind,
        state,
        pid: optional(pid, parse_pid, "pid")?,
        since_ms: millis_from_field(since).ok_or_else(|| bad("since"))?,
        restarts: parse_u64(restarts)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("restarts"))?,
        last: optional(last, Status::from_field, "last status")?,
        ready: match ready.as_slice() {
            b"yes" => Some(true),
            b"no" => Some(false),
            b"-" => None,
            _ => return Err(bad("ready")),
        },
        health: match health.as_slice() {
            b"-" => None,
            h => Some(Health::from_field(h).ok_or_else(|| bad("health"))?),
        },
        rss_kib: optional(rss, parse_u64, "rss")?,
        cpu_ms: optional(cpu, parse_u64, "cpu")?,
        reason: reason.clone(),
        sockets: sockets.clone(),
    })
}

fn parse_node(fields: &[Vec<u8>]) -> Result<TreeNode, ReplyError> {
    let [head, name, pid, ppid, comm] = fields else {
        return Err(bad("a Node row has 5 fields"));
    };
    if head != kind::NODE.as_bytes() {
        return Err(bad("expected a Node row"));
    }
    check_row_name(name, name.iter().all(u8::is_ascii_digit))?;
    Ok(TreeNode {
        name: name.clone(),
        pid: parse_pid(pid).ok_or_else(|| bad("pid"))?,
        ppid: parse_u64(ppid)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| bad("ppid"))?,
        comm: comm.clone(),
    })
}

fn parse_setting(fields: &[Vec<u8>]) -> Result<Setting, ReplyError> {
    let [head, name, key, value] = fields else {
        return Err(bad("a Setting row has 4 fields"));
    };
    if head != kind::SETTING.as_bytes() {
        return Err(bad("expected a Setting row"));
    }
    check_row_name(name, false)?;
    if key.is_empty() {
        return Err(bad("key"));
    }
    Ok(Setting {
        name: name.clone(),
        key: key.clone(),
        value: value.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Framer};

    /// Encodes, then reads back through the framer and the parser, as a client would.
    fn round_trip(reply: &Reply) -> Reply {
        let bytes = reply.encode();
        let mut parser = ReplyParser::new();
        let mut buf = &bytes[..];
        loop {
            let Frame::Record { body, consumed } = Framer::default().next_frame(buf) else {
                unreachable!("bad frame in {:?}", String::from_utf8_lossy(&bytes));
            };
            let fields = record::split(&buf[..body]);
            buf = &buf[consumed..];
            if let Some(r) = parser.push(&fields).unwrap_or_else(|e| unreachable!("{e}")) {
                assert!(buf.is_empty(), "bytes left after the reply");
                return r;
            }
        }
    }

    #[test]
    fn wire_forms() {
        assert_eq!(Reply::started(3, 1234).encode(), b"Ok,3,1234\n");
        assert_eq!(
            Reply::stopped(3, Status::Signaled(15)).encode(),
            b"Ok,3,SIGTERM\n"
        );
        assert_eq!(Reply::Ok(vec![]).encode(), b"Ok\n");
        assert_eq!(Reply::error("busy").encode(), b"Error,busy\n");
        assert_eq!(Reply::error("a, b").encode(), b"Error,\"a, b\"\n");
        assert_eq!(
            Reply::ExitStatus(Status::Exited(0)).encode(),
            b"ExitStatus,0\n"
        );
        assert_eq!(
            Reply::ExitStatus(Status::Signaled(9)).encode(),
            b"ExitStatus,137,SIGKILL\n"
        );
        assert_eq!(Reply::Pong.encode(), b"Pong\n");
        assert_eq!(
            Reply::Version {
                archon: b"0.1.0".to_vec(),
                protocol: 1
            }
            .encode(),
            b"Version,0.1.0,1\n"
        );
        let row = ProcessRow {
            id: 2,
            kind: Kind::Daemon,
            pid: 77,
            state: ProcState::Running,
            started_ms: 1_763_769_600_250,
            status: None,
            argv: vec![b"/usr/bin/sleep".to_vec(), b"100".to_vec()],
        };
        assert_eq!(
            Reply::List(vec![row]).encode(),
            b"List,1\nProcess,2,daemon,77,running,1763769600.250,,/usr/bin/sleep,100\n"
        );
        assert_eq!(Reply::List(vec![]).encode(), b"List,0\n");
    }

    #[test]
    fn replies_round_trip() {
        let rows = vec![
            ProcessRow {
                id: 1,
                kind: Kind::Run,
                pid: 5,
                state: ProcState::Exited,
                started_ms: 7,
                status: Some(Status::Signaled(64)),
                argv: vec![
                    b"sh".to_vec(),
                    b"-c".to_vec(),
                    b"echo \"a,b\"\nexit 3".to_vec(),
                ],
            },
            ProcessRow {
                id: u64::MAX,
                kind: Kind::Monitor,
                pid: i32::MAX,
                state: ProcState::Exited,
                started_ms: 0,
                status: Some(Status::Unknown),
                argv: vec![],
            },
        ];
        for reply in [
            Reply::started(1, 2),
            Reply::Ok(vec![b"".to_vec(), b"x\ny".to_vec()]),
            Reply::error("no such process: 9"),
            Reply::ExitStatus(Status::Exited(255)),
            Reply::ExitStatus(Status::Signaled(15)),
            Reply::ExitStatus(Status::Unknown),
            Reply::Pong,
            Reply::Version {
                archon: b"1.2.3".to_vec(),
                protocol: 1,
            },
            Reply::List(rows),
            Reply::List(vec![]),
        ] {
            assert_eq!(round_trip(&reply), reply);
        }
    }

    fn service_row() -> ServiceRow {
        ServiceRow {
            name: b"web".to_vec(),
            kind: ServiceKind::Service,
            state: ServiceState::Ready,
            pid: Some(4242),
            since_ms: 1_763_769_600_250,
            restarts: 2,
            last: Some(Status::Signaled(9)),
            ready: Some(true),
            health: Some(Health::Healthy),
            rss_kib: Some(12_600),
            cpu_ms: Some(1_500),
            reason: Vec::new(),
            sockets: b"tcp:127.0.0.1:43211 unix:/run/web.sock".to_vec(),
        }
    }

    fn process_row() -> ServiceRow {
        ServiceRow {
            name: b"3".to_vec(),
            kind: ServiceKind::Daemon,
            state: ServiceState::Exited,
            pid: Some(77),
            since_ms: 5,
            restarts: 0,
            last: Some(Status::Exited(0)),
            ready: None,
            health: None,
            rss_kib: None,
            cpu_ms: None,
            reason: b"stopped, \"on request\"".to_vec(),
            sockets: Vec::new(),
        }
    }

    #[test]
    fn service_wire_forms() {
        assert_eq!(
            Reply::Status(vec![service_row(), process_row()]).encode(),
            &b"Status,2\n\
               Service,web,service,ready,4242,1763769600.250,2,SIGKILL,yes,healthy,12600,1500,,\
               tcp:127.0.0.1:43211 unix:/run/web.sock\n\
               Service,3,daemon,exited,77,0.005,0,0,-,-,,,\"stopped, \"\"on request\"\"\",\n"[..]
        );
        let stopped = ServiceRow {
            name: b"db".to_vec(),
            kind: ServiceKind::Task,
            state: ServiceState::Stopped,
            pid: None,
            last: None,
            ready: Some(false),
            health: Some(Health::Starting),
            sockets: Vec::new(),
            ..service_row()
        };
        assert_eq!(
            Reply::Status(vec![stopped]).encode(),
            &b"Status,1\n\
               Service,db,task,stopped,,1763769600.250,2,,no,starting,12600,1500,,\n"[..]
        );
        assert_eq!(Reply::Status(vec![]).encode(), b"Status,0\n");
        let node = TreeNode {
            name: b"web".to_vec(),
            pid: 4250,
            ppid: 4242,
            comm: b"python3".to_vec(),
        };
        assert_eq!(
            Reply::Tree(vec![node]).encode(),
            b"Tree,1\nNode,web,4250,4242,python3\n"
        );
        let setting = Setting {
            name: b"web".to_vec(),
            key: b"argv".to_vec(),
            value: br#"{"/usr/bin/python3","-m"}"#.to_vec(),
        };
        assert_eq!(
            Reply::Config(vec![setting]).encode(),
            &br#"Config,1
Setting,web,argv,"{""/usr/bin/python3"",""-m""}"
"#[..]
        );
        assert_eq!(
            Reply::done(&Target::Service(b"db".to_vec())).encode(),
            b"Ok,db\n"
        );
        assert_eq!(Reply::done(&Target::Id(4)).encode(), b"Ok,4\n");
        assert_eq!(Reply::stopped_service(b"db", None).encode(), b"Ok,db,-\n");
        assert_eq!(
            Reply::stopped_service(b"db", Some(Status::Signaled(15))).encode(),
            b"Ok,db,SIGTERM\n"
        );
        let counts = ReloadCounts {
            started: 1,
            stopped: 2,
            restarted: 3,
            unchanged: 4,
        };
        assert_eq!(Reply::reloaded(counts).encode(), b"Ok,1,2,3,4\n");
        assert_eq!(ReloadCounts::from_fields(&counts.to_fields()), Some(counts));
        let mut more = counts.to_fields();
        more.push(b"x".to_vec());
        assert_eq!(ReloadCounts::from_fields(&more), Some(counts));
        assert_eq!(ReloadCounts::from_fields(&more[..3]), None);
    }

    #[test]
    fn service_replies_round_trip() {
        let node = |name: &[u8], pid, ppid, comm: &[u8]| TreeNode {
            name: name.to_vec(),
            pid,
            ppid,
            comm: comm.to_vec(),
        };
        for reply in [
            Reply::Status(vec![service_row(), process_row()]),
            Reply::Status(vec![]),
            Reply::Tree(vec![
                node(b"web", 1, 0, b""),
                node(b"12", i32::MAX, i32::MAX, b"a,b\nc"),
            ]),
            Reply::Tree(vec![]),
            Reply::Config(vec![Setting {
                name: b"w@1".to_vec(),
                key: b"env.A".to_vec(),
                value: b"".to_vec(),
            }]),
            Reply::Config(vec![]),
        ] {
            assert_eq!(round_trip(&reply), reply);
        }
    }

    #[test]
    fn history_is_a_table_of_events() {
        use crate::event::{Cause, EventKind};
        let event = |seq, subject: &[u8], kind, what, old, new| Event {
            seq,
            time_ms: 1_795_310_701_093,
            subject: subject.to_vec(),
            kind,
            what,
            old,
            new,
            pid: Some(4242),
            status: None,
            reason: Vec::new(),
            cause: Cause::Client { uid: 0, pid: 7 },
        };
        let events = vec![
            event(
                1,
                b"web",
                ServiceKind::Service,
                EventKind::Start,
                Some(ServiceState::Stopped),
                Some(ServiceState::Starting),
            ),
            event(
                2,
                b"3",
                ServiceKind::Daemon,
                EventKind::Spawn,
                None,
                Some(ServiceState::Running),
            ),
        ];
        assert_eq!(
            Reply::History(events.clone()).encode(),
            &b"History,2\n\
               Event,1,1795310701.093,web,service,start,stopped,starting,4242,,,0,7\n\
               Event,2,1795310701.093,3,daemon,spawn,,running,4242,,,0,7\n"[..]
        );
        for reply in [Reply::History(events), Reply::History(vec![])] {
            assert_eq!(round_trip(&reply), reply);
        }
        assert_eq!(Reply::subscribed(9).encode(), b"Ok,9\n");
        assert!(
            ReplyParser::new()
                .push(&record::split(b"History,65537"))
                .is_err()
        );
        assert_eq!(
            ReplyParser::new().push(&record::split(b"History,65536")),
            Ok(None)
        );
        let mut p = ReplyParser::new();
        assert_eq!(p.push(&record::split(b"History,1")), Ok(None));
        assert!(p.push(&record::split(b"Dropped,1")).is_err());
    }

    #[test]
    fn kinds_and_states_fit() {
        for kind in [ServiceKind::Daemon, ServiceKind::Run, ServiceKind::Monitor] {
            assert!(kind.is_process());
            assert!(ServiceState::Exited.fits(kind));
            assert!(ServiceState::Paused.fits(kind));
            assert!(!ServiceState::Ready.fits(kind));
            assert!(!ServiceState::Backoff.fits(kind));
        }
        for kind in [ServiceKind::Service, ServiceKind::Task] {
            assert!(!kind.is_process());
            assert!(!ServiceState::Exited.fits(kind));
            assert!(ServiceState::Done.fits(kind));
        }
        for (k, s) in [
            (Kind::Run, ProcState::Starting),
            (Kind::Daemon, ProcState::Running),
            (Kind::Monitor, ProcState::Stopping),
            (Kind::Run, ProcState::Exited),
        ] {
            let (kind, state) = (ServiceKind::from(k), ServiceState::from(s));
            assert_eq!(kind.as_str(), k.as_str());
            assert_eq!(state.as_str(), s.as_str());
            assert!(state.fits(kind));
        }
    }

    #[test]
    fn malformed_service_rows_are_errors() {
        let good = "Service,web,service,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,,";
        let split = |s: &str| record::split(s.as_bytes());
        let mut p = ReplyParser::new();
        assert_eq!(p.push(&split("Status,1")), Ok(None));
        assert!(matches!(p.push(&split(good)), Ok(Some(Reply::Status(_)))));
        for row in [
            "Service,web,service,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,",
            "Service,web,service,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,,x,y",
            "Process,web,service,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,,",
            "Service,,service,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,,",
            "Service,12,service,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,,",
            "Service,web,daemon,running,4242,1.250,2,SIGKILL,-,-,12600,1500,,",
            "Service,web,unit,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,,",
            "Service,web,service,exited,4242,1.250,2,SIGKILL,yes,healthy,12600,1500,,",
            "Service,3,daemon,ready,4242,1.250,2,SIGKILL,-,-,12600,1500,,",
            "Service,web,service,ready,0,1.250,2,SIGKILL,yes,healthy,12600,1500,,",
            "Service,web,service,ready,4242,1.25,2,SIGKILL,yes,healthy,12600,1500,,",
            "Service,web,service,ready,4242,1.250,4294967296,SIGKILL,yes,healthy,12600,1500,,",
            "Service,web,service,ready,4242,1.250,2,-,yes,healthy,12600,1500,,",
            "Service,web,service,ready,4242,1.250,2,SIGKILL,,healthy,12600,1500,,",
            "Service,web,service,ready,4242,1.250,2,SIGKILL,true,healthy,12600,1500,,",
            "Service,web,service,ready,4242,1.250,2,SIGKILL,yes,,12600,1500,,",
            "Service,web,service,ready,4242,1.250,2,SIGKILL,yes,sick,12600,1500,,",
            "Service,web,service,ready,4242,1.250,2,SIGKILL,yes,healthy,-,1500,",
            "Service,web,service,ready,4242,1.250,2,SIGKILL,yes,healthy,12600,1.5,,",
        ] {
            let mut p = ReplyParser::new();
            assert_eq!(p.push(&split("Status,2")), Ok(None));
            assert_eq!(p.push(&split(good)), Ok(None));
            assert!(p.push(&split(row)).is_err(), "{row}");
        }
        for (header, row) in [
            ("Tree,1", "Node,web,1,0"),
            ("Tree,1", "Node,web,0,1,sh"),
            ("Tree,1", "Node,web,1,-1,sh"),
            ("Tree,1", "Node,,1,0,sh"),
            ("Tree,1", "Node,-x,1,0,sh"),
            ("Tree,1", "Setting,web,1,0"),
            ("Config,1", "Setting,web,,1"),
            ("Config,1", "Setting,3,argv,1"),
            ("Config,1", "Setting,web,argv"),
        ] {
            let mut p = ReplyParser::new();
            assert_eq!(p.push(&split(header)), Ok(None));
            assert!(p.push(&split(row)).is_err(), "{row}");
        }
        assert!(ReplyParser::new().push(&split("Tree,65537")).is_err());
        assert_eq!(ReplyParser::new().push(&split("Tree,65536")), Ok(None));
        for line in ["Status", "Status,1,2", "Tree,x", "Config,-1", "Service,web"] {
            assert!(ReplyParser::new().push(&split(line)).is_err(), "{line}");
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        let split = |s: &str| record::split(s.as_bytes());
        for line in [
            "Nope",
            "Error",
            "Error,a,b",
            "ExitStatus,256",
            "ExitStatus,1,SIGKILL",
            "ExitStatus,x",
            "Version,1",
            "List,x",
            "Pong,1",
        ] {
            assert!(ReplyParser::new().push(&split(line)).is_err(), "{line}");
        }
        let mut p = ReplyParser::new();
        assert_eq!(p.push(&split("List,1")), Ok(None));
        assert!(p.push(&split("Process,1,daemon,2,running,1.5,,x")).is_err());
    }
}
