//! Requests: what a client asks, parsed from and written to one record.

use std::fmt;

use crate::bind::{BindAddr, BindError};
use crate::command::{Command, CommandError};
use crate::event::{self, Filter, KindSet};
use crate::frame::FrameError;
use crate::limits::{
    MAX_FDS_PER_REQUEST, MAX_HISTORY, MAX_LOG_ROWS, MAX_REQUEST_LEN, MAX_STOP_GRACE_MS,
};
use crate::name;
use crate::record::{self, Fields};
use crate::signal;

/// What a supervised process is called in requests and replies: a number archon gives it, never
/// reused while archon runs.
pub type Id = u64;

/// What `Stop`, `Signal`, `Pause` and `Resume` act on: a configured service (or task) by its name,
/// or a process archon started or watches by its id.
///
/// On the wire it is one field: digits only make an id (a process started by `StartDaemon` or
/// `Run`, or watched by `Monitor`/`MonitorFD`), anything else must be a service name as
/// [`name::check`] has it. No name is all digits, so the two never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A process, by archon's id.
    Id(Id),
    /// A service or task, by its name.
    Service(Vec<u8>),
}

impl Target {
    /// Reads a target field: an id (digits only, at most 20, fitting in 64 bits) or a valid
    /// service name. An empty field is a missing target.
    pub fn from_field(field: &[u8]) -> Result<Target, RequestError> {
        if field.is_empty() {
            return Err(RequestError::Missing("target"));
        }
        if field.iter().all(u8::is_ascii_digit) {
            return parse_u64(field)
                .map(Target::Id)
                .ok_or(RequestError::BadNumber("id"));
        }
        service_name(field, "target").map(Target::Service)
    }

    /// The target as one field: the id in decimal, or the name.
    pub fn to_field(&self) -> Vec<u8> {
        match self {
            Target::Id(id) => id.to_string().into_bytes(),
            Target::Service(name) => name.clone(),
        }
    }

    /// Checks a target built in code, as [`from_field`](Self::from_field) would read it back.
    fn check(&self) -> Result<(), RequestError> {
        match self {
            Target::Id(_) => Ok(()),
            Target::Service(name) => service_name(name, "target").map(drop),
        }
    }
}

impl From<Id> for Target {
    fn from(id: Id) -> Self {
        Target::Id(id)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Id(id) => write!(f, "{id}"),
            Target::Service(name) => f.write_str(&String::from_utf8_lossy(name)),
        }
    }
}

/// A service name field: empty counts as missing (`what` names the field), else it must pass
/// [`name::check`].
fn service_name(field: &[u8], what: &'static str) -> Result<Vec<u8>, RequestError> {
    if field.is_empty() {
        return Err(RequestError::Missing(what));
    }
    name::check(field).map_err(RequestError::BadName)?;
    Ok(field.to_vec())
}

/// What `Poweroff`, `Reboot` and `Halt` ask for: how the machine (or the PID namespace archon is
/// process 1 of) ends once everything has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Power {
    /// `Poweroff`: stop everything, then turn the machine off.
    Poweroff,
    /// `Reboot`: stop everything, then restart the machine.
    Reboot,
    /// `Halt`: stop everything, then halt the machine (it stays on, doing nothing).
    Halt,
}

impl Power {
    /// Every kind, in the order the verbs are documented.
    pub const ALL: [Power; 3] = [Power::Poweroff, Power::Reboot, Power::Halt];

    /// The request's verb: `Poweroff`, `Reboot` or `Halt`.
    pub fn verb(self) -> &'static str {
        match self {
            Power::Poweroff => verb::POWEROFF,
            Power::Reboot => verb::REBOOT,
            Power::Halt => verb::HALT,
        }
    }

    /// The word for people and for the `Ok` reply: `poweroff`, `reboot` or `halt`.
    pub fn word(self) -> &'static str {
        match self {
            Power::Poweroff => "poweroff",
            Power::Reboot => "reboot",
            Power::Halt => "halt",
        }
    }
}

impl fmt::Display for Power {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// A request, one per line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// `Run,<command>`: run it and answer `ExitStatus` when it has ended. Up to three fds become
    /// its stdin, stdout and stderr.
    Run(Command),
    /// `StartDaemon,<command>`: start it, answer `Ok,<id>,<pid>` once it has been executed, and
    /// keep monitoring it. Up to three fds become its stdin, stdout and stderr.
    StartDaemon(Command),
    /// `MonitorFD` with one pidfd attached: watch that process.
    MonitorFd,
    /// `Monitor,<pid>`: watch the process with that pid; archon opens its pidfd.
    Monitor {
        /// The process to watch.
        pid: i32,
    },
    /// `Stop,<target>[,<grace-ms>]`: a process: SIGTERM to it (its process group when it leads
    /// one), SIGKILL after the grace period, answered `Ok,<id>,<status>` when it has ended. A
    /// service: its dependents first, then it, answered `Ok,<name>,<status>` (`-` when it was not
    /// running).
    Stop {
        /// The process or service to stop.
        target: Target,
        /// Time between SIGTERM and SIGKILL, in milliseconds; archon's default (a service's
        /// `stop_timeout`) when `None`.
        grace_ms: Option<u64>,
    },
    /// `Signal,<target>,<signal>[,group]`: send a signal to the process (a service's main
    /// process), or to its process group; answered `Ok,<target>`.
    Signal {
        /// The process or service.
        target: Target,
        /// The signal's number (0 only checks that the process exists).
        signal: i32,
        /// Send it to the process group the process leads, not to the process alone.
        group: bool,
    },
    /// `OnExit,<target>,<command>`: when the process ends, run `command` (a `Run` nobody
    /// waits for) with what ended in its environment; at once when it has ended already and
    /// archon still keeps its record. Answered `Ok,<id>`.
    OnExit {
        /// The process, by its id (a service is refused: its exits go to its Lua handlers).
        target: Target,
        /// What to run.
        command: Command,
    },
    /// `List`: every supervised process, and the recently ended ones.
    List,
    /// `Ping`: answered `Pong`.
    Ping,
    /// `Version`: answered `Version,<archon version>,<protocol version>`.
    Version,
    /// `Start,<name>`: start a service (and what it requires that is not running); answered
    /// `Ok,<name>` once it is ready, or a task once it is done.
    Start {
        /// The service or task.
        name: Vec<u8>,
    },
    /// `Restart,<name>`: stop a service and start it again; answered `Ok,<name>` once it is
    /// ready again.
    Restart {
        /// The service.
        name: Vec<u8>,
    },
    /// `Pause,<target>`: SIGSTOP to the whole tree (freeze its cgroup, else its process group);
    /// answered `Ok,<target>`.
    Pause {
        /// The process or service.
        target: Target,
    },
    /// `Resume,<target>`: SIGCONT to what `Pause` stopped; answered `Ok,<target>`.
    Resume {
        /// The process or service.
        target: Target,
    },
    /// `Status[,<name>...]`: one row per service and per process, or for the services named;
    /// answered with [`Reply::Status`](crate::Reply::Status).
    Status {
        /// The services asked about; every service and process when empty.
        names: Vec<Vec<u8>>,
    },
    /// `Tree[,<name>]`: every process of every service, or of one; answered with
    /// [`Reply::Tree`](crate::Reply::Tree).
    Tree {
        /// The service asked about; all of them when `None`.
        name: Option<Vec<u8>>,
    },
    /// `Config`: the effective configuration; answered with
    /// [`Reply::Config`](crate::Reply::Config).
    Config,
    /// `Reload`: read the configuration file again and apply what changed; answered
    /// `Ok,<started>,<stopped>,<restarted>,<unchanged>`.
    Reload,
    /// `History[,<subject>[,<kind>[,<max>]]]`: the events archon keeps that match, oldest first;
    /// answered with [`Reply::History`](crate::Reply::History).
    History {
        /// Which events.
        filter: Filter,
        /// At most this many (the newest), 1 to [`MAX_HISTORY`]; all that match when `None`.
        max: Option<usize>,
    },
    /// `Subscribe[,<subject>[,<kind>]]`: answered `Ok,<next-seq>`, then every event that matches
    /// as it happens ([`StreamItem`](crate::StreamItem)s); the connection takes no more requests.
    Subscribe {
        /// Which events.
        filter: Filter,
    },
    /// `Logs,<name>[,<level>[,<max>]]`: the lines of a service's output archon keeps, at
    /// `level` or more severe, the newest `max` of them (all that fit in
    /// [`MAX_LOGS_REPLY`](crate::limits::MAX_LOGS_REPLY) when `None`), oldest first; answered with
    /// [`Reply::Logs`](crate::Reply::Logs).
    Logs {
        /// The service or task.
        name: Vec<u8>,
        /// The least severe level wanted (0 to 7; 7 takes every line).
        level: u8,
        /// At most this many lines, 0 to [`MAX_LOG_ROWS`].
        max: Option<usize>,
    },
    /// `FollowLogs,<name>[,<level>[,<max>]]`: answered `Ok,<name>`, then the newest `max` lines
    /// kept (none when `None`) and every new line at `level` or more severe, as it is read
    /// ([`StreamItem`](crate::StreamItem)s); the connection takes no more requests.
    FollowLogs {
        /// The service or task.
        name: Vec<u8>,
        /// The least severe level wanted.
        level: u8,
        /// The lines kept to send first, 0 to [`MAX_LOG_ROWS`].
        max: Option<usize>,
    },
    /// `Poweroff`, `Reboot` or `Halt` (root only): answered `Ok,<poweroff|reboot|halt>` at once,
    /// then everything stops and the machine (or archon's PID namespace) goes down; an archon
    /// that is not process 1 exits instead.
    Power(Power),
    /// `ReExec[,<path>]` (root only): archon hands its state to a new image of itself (its own
    /// program file, or the absolute `path`) without restarting a service; answered `Ok,<version>`
    /// by the new image, or `Error` by the old one, which carries on, when the new one cannot
    /// take over.
    ReExec {
        /// The program to execute, absolute; archon's own when `None`.
        path: Option<Vec<u8>>,
    },
    /// `Bind,<transport>,<address>...`: the socket archon holds at this address for the
    /// asking process's service, answered `Ok` with it attached, or `Error` (see [`crate::bind`]).
    Bind(BindAddr),
}

/// The verbs, as spelled on the wire.
pub mod verb {
    /// [`super::Request::Run`]
    pub const RUN: &str = "Run";
    /// [`super::Request::StartDaemon`]
    pub const START_DAEMON: &str = "StartDaemon";
    /// [`super::Request::MonitorFd`]
    pub const MONITOR_FD: &str = "MonitorFD";
    /// [`super::Request::Monitor`]
    pub const MONITOR: &str = "Monitor";
    /// [`super::Request::Stop`]
    pub const STOP: &str = "Stop";
    /// [`super::Request::Signal`]
    pub const SIGNAL: &str = "Signal";
    /// [`super::Request::OnExit`]
    pub const ON_EXIT: &str = "OnExit";
    /// [`super::Request::List`]
    pub const LIST: &str = "List";
    /// [`super::Request::Ping`]
    pub const PING: &str = "Ping";
    /// [`super::Request::Version`]
    pub const VERSION: &str = "Version";
    /// [`super::Request::Start`]
    pub const START: &str = "Start";
    /// [`super::Request::Restart`]
    pub const RESTART: &str = "Restart";
    /// [`super::Request::Pause`]
    pub const PAUSE: &str = "Pause";
    /// [`super::Request::Resume`]
    pub const RESUME: &str = "Resume";
    /// [`super::Request::Status`]
    pub const STATUS: &str = "Status";
    /// [`super::Request::Tree`]
    pub const TREE: &str = "Tree";
    /// [`super::Request::Config`]
    pub const CONFIG: &str = "Config";
    /// [`super::Request::Reload`]
    pub const RELOAD: &str = "Reload";
    /// [`super::Request::History`]
    pub const HISTORY: &str = "History";
    /// [`super::Request::Subscribe`]
    pub const SUBSCRIBE: &str = "Subscribe";
    /// [`super::Request::Logs`]
    pub const LOGS: &str = "Logs";
    /// [`super::Request::FollowLogs`]
    pub const FOLLOW_LOGS: &str = "FollowLogs";
    /// [`super::Request::Power`] with [`super::Power::Poweroff`]
    pub const POWEROFF: &str = "Poweroff";
    /// [`super::Request::Power`] with [`super::Power::Reboot`]
    pub const REBOOT: &str = "Reboot";
    /// [`super::Request::Power`] with [`super::Power::Halt`]
    pub const HALT: &str = "Halt";
    /// [`super::Request::Bind`]
    pub const BIND: &str = "Bind";
    /// [`super::Request::ReExec`]
    pub const REEXEC: &str = "ReExec";
    /// The keyword that makes `Signal` reach the process group.
    pub const GROUP: &str = "group";
}

/// Why a request cannot be carried out as sent. Its `Display` is the reason of the
/// `Error,<reason>` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The line breaks the framing grammar.
    Frame(FrameError),
    /// The line is longer than [`MAX_REQUEST_LEN`].
    TooLong,
    /// An empty line.
    Empty,
    /// The first field is not a verb archon knows (the text is the verb, shortened and made
    /// printable).
    UnknownVerb(String),
    /// A command that cannot be read.
    Command(CommandError),
    /// A required field is missing (the text names it).
    Missing(&'static str),
    /// More fields than the verb takes.
    ExtraFields(&'static str),
    /// A field that should be a number is not one in range (the text names it).
    BadNumber(&'static str),
    /// Not a signal name or number.
    BadSignal,
    /// `Signal`'s fourth field is not `group`.
    BadSignalScope,
    /// A service name that breaks the naming rule (the text is [`name::check`]'s reason).
    BadName(String),
    /// A subject pattern that breaks its rule (the text is [`event::check_pattern`]'s reason).
    BadPattern(String),
    /// A level field that is no level (`0` to `7`, or a name like `err`).
    BadLevel,
    /// A kind field with a word that is no kind (the text is [`KindSet::from_field`]'s reason).
    BadKind(String),
    /// The request carries fds that it does not take, or more than it takes.
    Fds {
        /// The verb.
        verb: &'static str,
        /// How many fds came.
        got: usize,
    },
    /// A field holds a NUL byte (only when writing a request).
    Nul,
    /// A `Bind` whose fields cannot be read.
    Bind(BindError),
    /// A path that must be absolute is not (or holds a NUL byte).
    NotAbsolute,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Frame(e) => write!(f, "{e}"),
            RequestError::TooLong => write!(f, "request too long (limit {MAX_REQUEST_LEN} bytes)"),
            RequestError::Empty => write!(f, "empty request"),
            RequestError::UnknownVerb(v) => write!(f, "unknown request: {v}"),
            RequestError::Command(e) => write!(f, "{e}"),
            RequestError::Missing(what) => write!(f, "missing {what}"),
            RequestError::ExtraFields(verb) => write!(f, "too many fields for {verb}"),
            RequestError::BadNumber(what) => write!(f, "bad {what}"),
            RequestError::BadSignal => write!(f, "bad signal"),
            RequestError::BadSignalScope => write!(f, "bad signal scope: only 'group' is known"),
            RequestError::BadName(why) => write!(f, "bad name: {why}"),
            RequestError::BadPattern(why) => write!(f, "bad subject pattern: {why}"),
            RequestError::BadKind(why) => write!(f, "bad kind: {why}"),
            RequestError::BadLevel => write!(
                f,
                "bad level: 0 to 7, or emerg, alert, crit, err, warning, notice, info, debug"
            ),
            RequestError::Fds { verb, got } => match (*verb, *got) {
                (verb::MONITOR_FD, 0) => write!(f, "MonitorFD needs a pidfd attached"),
                (verb::MONITOR_FD, n) => write!(f, "MonitorFD takes exactly one pidfd, got {n}"),
                (verb::RUN | verb::START_DAEMON, n) => {
                    write!(
                        f,
                        "too many fds: {verb} takes at most {MAX_FDS_PER_REQUEST}, got {n}"
                    )
                }
                (verb, n) => write!(f, "{verb} takes no fds, got {n}"),
            },
            RequestError::Nul => write!(f, "NUL byte in a field"),
            RequestError::Bind(e) => write!(f, "{e}"),
            RequestError::NotAbsolute => write!(f, "the path must be absolute"),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<CommandError> for RequestError {
    fn from(e: CommandError) -> Self {
        RequestError::Command(e)
    }
}

impl From<FrameError> for RequestError {
    fn from(e: FrameError) -> Self {
        RequestError::Frame(e)
    }
}

/// A decimal number field: digits only, no sign.
pub(crate) fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 20 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// A pid: a decimal number from 1 to `i32::MAX`.
pub(crate) fn parse_pid(field: &[u8]) -> Option<i32> {
    parse_u64(field)
        .and_then(|n| i32::try_from(n).ok())
        .filter(|&n| n > 0)
}

/// The verb for error messages: at most 32 printable ASCII characters; `""` when empty.
fn printable(field: &[u8]) -> String {
    if field.is_empty() {
        return "\"\"".to_string();
    }
    let mut s: String = field
        .iter()
        .take(32)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if field.len() > 32 {
        s.push_str("...");
    }
    s
}

/// The first argument as a target.
fn target_arg(args: &[Vec<u8>]) -> Result<Target, RequestError> {
    Target::from_field(args.first().map_or(&[][..], Vec::as_slice))
}

/// The first argument as a service name.
fn name_arg(args: &[Vec<u8>]) -> Result<Vec<u8>, RequestError> {
    service_name(args.first().map_or(&[][..], Vec::as_slice), "name")
}

/// The `<subject>,<kind>` fields of `History` and `Subscribe`; absent or empty ones take every
/// event.
fn filter_args(args: &[Vec<u8>]) -> Result<Filter, RequestError> {
    let field = |i: usize| args.get(i).map_or(&[][..], Vec::as_slice);
    event::check_pattern(field(0)).map_err(RequestError::BadPattern)?;
    Ok(Filter {
        subject: field(0).to_vec(),
        kinds: KindSet::from_field(field(1)).map_err(RequestError::BadKind)?,
    })
}

/// `History`'s `<max>`: 1 to [`MAX_HISTORY`]; absent or empty for all.
fn max_arg(field: Option<&Vec<u8>>) -> Result<Option<usize>, RequestError> {
    match field.map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some(f) => parse_u64(f)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_HISTORY).contains(n))
            .map(Some)
            .ok_or(RequestError::BadNumber("count")),
    }
}

/// The `<name>,<level>,<max>` fields of `Logs` and `FollowLogs`.
fn log_args(args: &[Vec<u8>]) -> Result<(Vec<u8>, u8, Option<usize>), RequestError> {
    let name = name_arg(args)?;
    let level = match args.get(1).map(Vec::as_slice) {
        None | Some([]) => crate::log::LEVEL_DEBUG,
        Some(f) => crate::log::parse_level(f).ok_or(RequestError::BadLevel)?,
    };
    let max = match args.get(2).map(Vec::as_slice) {
        None | Some([]) => None,
        Some(f) => Some(
            parse_u64(f)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= MAX_LOG_ROWS)
                .ok_or(RequestError::BadNumber("count"))?,
        ),
    };
    Ok((name, level, max))
}

/// `Poweroff`, `Reboot` or `Halt`, which take no field.
fn power_request(args: &[Vec<u8>], power: Power) -> Result<Request, RequestError> {
    no_more(args, 0, power.verb())?;
    Ok(Request::Power(power))
}

fn no_more(fields: &[Vec<u8>], n: usize, verb: &'static str) -> Result<(), RequestError> {
    if fields.len() > n {
        return Err(RequestError::ExtraFields(verb));
    }
    Ok(())
}

impl Request {
    /// Parses a request from its fields (see [`record::split`]).
    pub fn from_fields(fields: &[Vec<u8>]) -> Result<Request, RequestError> {
        let Some((verb, args)) = fields.split_first() else {
            return Err(RequestError::Empty);
        };
        let req = match verb.as_slice() {
            b"Run" => Request::Run(Command::from_fields(args)?),
            b"StartDaemon" => Request::StartDaemon(Command::from_fields(args)?),
            b"MonitorFD" => {
                no_more(args, 0, verb::MONITOR_FD)?;
                Request::MonitorFd
            }
            b"Monitor" => {
                no_more(args, 1, verb::MONITOR)?;
                let pid = args.first().ok_or(RequestError::Missing("pid"))?;
                Request::Monitor {
                    pid: parse_pid(pid).ok_or(RequestError::BadNumber("pid"))?,
                }
            }
            b"Stop" => {
                no_more(args, 2, verb::STOP)?;
                let target = target_arg(args)?;
                let grace_ms = match args.get(1) {
                    None => None,
                    Some(g) => Some(
                        parse_u64(g)
                            .filter(|&g| g <= MAX_STOP_GRACE_MS)
                            .ok_or(RequestError::BadNumber("grace period"))?,
                    ),
                };
                Request::Stop { target, grace_ms }
            }
            b"Signal" => {
                no_more(args, 3, verb::SIGNAL)?;
                let target = target_arg(args)?;
                let sig = args.get(1).ok_or(RequestError::Missing("signal"))?;
                let group = match args.get(2).map(Vec::as_slice) {
                    None => false,
                    Some(b"group") => true,
                    Some(_) => return Err(RequestError::BadSignalScope),
                };
                Request::Signal {
                    target,
                    signal: signal::parse(sig).ok_or(RequestError::BadSignal)?,
                    group,
                }
            }
            b"OnExit" => {
                let target = target_arg(args)?;
                Request::OnExit {
                    target,
                    command: Command::from_fields(args.get(1..).unwrap_or_default())?,
                }
            }
            b"List" => {
                no_more(args, 0, verb::LIST)?;
                Request::List
            }
            b"Ping" => {
                no_more(args, 0, verb::PING)?;
                Request::Ping
            }
            b"Version" => {
                no_more(args, 0, verb::VERSION)?;
                Request::Version
            }
            b"Start" => {
                no_more(args, 1, verb::START)?;
                Request::Start {
                    name: name_arg(args)?,
                }
            }
            b"Restart" => {
                no_more(args, 1, verb::RESTART)?;
                Request::Restart {
                    name: name_arg(args)?,
                }
            }
            b"Pause" => {
                no_more(args, 1, verb::PAUSE)?;
                Request::Pause {
                    target: target_arg(args)?,
                }
            }
            b"Resume" => {
                no_more(args, 1, verb::RESUME)?;
                Request::Resume {
                    target: target_arg(args)?,
                }
            }
            b"Status" => Request::Status {
                names: args
                    .iter()
                    .map(|n| service_name(n, "name"))
                    .collect::<Result<_, _>>()?,
            },
            b"Tree" => {
                no_more(args, 1, verb::TREE)?;
                Request::Tree {
                    name: match args.first() {
                        None => None,
                        Some(n) => Some(service_name(n, "name")?),
                    },
                }
            }
            b"Config" => {
                no_more(args, 0, verb::CONFIG)?;
                Request::Config
            }
            b"Reload" => {
                no_more(args, 0, verb::RELOAD)?;
                Request::Reload
            }
            b"History" => {
                no_more(args, 3, verb::HISTORY)?;
                Request::History {
                    filter: filter_args(args)?,
                    max: max_arg(args.get(2))?,
                }
            }
            b"Subscribe" => {
                no_more(args, 2, verb::SUBSCRIBE)?;
                Request::Subscribe {
                    filter: filter_args(args)?,
                }
            }
            b"Logs" => {
                no_more(args, 3, verb::LOGS)?;
                let (name, level, max) = log_args(args)?;
                Request::Logs { name, level, max }
            }
            b"FollowLogs" => {
                no_more(args, 3, verb::FOLLOW_LOGS)?;
                let (name, level, max) = log_args(args)?;
                Request::FollowLogs { name, level, max }
            }
            b"Poweroff" => power_request(args, Power::Poweroff)?,
            b"Reboot" => power_request(args, Power::Reboot)?,
            b"Halt" => power_request(args, Power::Halt)?,
            b"ReExec" => {
                no_more(args, 1, verb::REEXEC)?;
                Request::ReExec {
                    path: match args.first() {
                        None => None,
                        Some(p) if p.first() == Some(&b'/') && !p.contains(&0) => Some(p.clone()),
                        Some(p) if p.is_empty() => return Err(RequestError::Missing("path")),
                        Some(_) => return Err(RequestError::NotAbsolute),
                    },
                }
            }
            b"Bind" => Request::Bind(BindAddr::from_fields(args).map_err(RequestError::Bind)?),
            [] if args.is_empty() => return Err(RequestError::Empty),
            other => return Err(RequestError::UnknownVerb(printable(other))),
        };
        Ok(req)
    }

    /// Parses the text of one framed record (without its terminator).
    pub fn parse(body: &[u8]) -> Result<Request, RequestError> {
        Request::from_fields(&record::split(body))
    }

    /// The verb, as spelled on the wire.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Run(_) => verb::RUN,
            Request::StartDaemon(_) => verb::START_DAEMON,
            Request::MonitorFd => verb::MONITOR_FD,
            Request::Monitor { .. } => verb::MONITOR,
            Request::Stop { .. } => verb::STOP,
            Request::Signal { .. } => verb::SIGNAL,
            Request::OnExit { .. } => verb::ON_EXIT,
            Request::List => verb::LIST,
            Request::Ping => verb::PING,
            Request::Version => verb::VERSION,
            Request::Start { .. } => verb::START,
            Request::Restart { .. } => verb::RESTART,
            Request::Pause { .. } => verb::PAUSE,
            Request::Resume { .. } => verb::RESUME,
            Request::Status { .. } => verb::STATUS,
            Request::Tree { .. } => verb::TREE,
            Request::Config => verb::CONFIG,
            Request::Reload => verb::RELOAD,
            Request::History { .. } => verb::HISTORY,
            Request::Subscribe { .. } => verb::SUBSCRIBE,
            Request::Logs { .. } => verb::LOGS,
            Request::FollowLogs { .. } => verb::FOLLOW_LOGS,
            Request::Power(p) => p.verb(),
            Request::Bind(_) => verb::BIND,
            Request::ReExec { .. } => verb::REEXEC,
        }
    }

    /// Checks the number of fds attached to this request: `Run` and `StartDaemon` take 0 to
    /// [`MAX_FDS_PER_REQUEST`], `MonitorFD` exactly one, the others none.
    pub fn check_fds(&self, got: usize) -> Result<(), RequestError> {
        let ok = match self {
            Request::Run(_) | Request::StartDaemon(_) => got <= MAX_FDS_PER_REQUEST,
            Request::MonitorFd => got == 1,
            _ => got == 0,
        };
        if ok {
            Ok(())
        } else {
            Err(RequestError::Fds {
                verb: self.verb(),
                got,
            })
        }
    }

    /// The request's fields.
    pub fn to_fields(&self) -> Fields {
        let mut out: Fields = vec![self.verb().as_bytes().to_vec()];
        let num = |n: u64| n.to_string().into_bytes();
        match self {
            Request::Run(c) | Request::StartDaemon(c) => out.extend(c.to_fields()),
            Request::Monitor { pid } => out.push(num(*pid as u64)),
            Request::OnExit { target, command } => {
                out.push(target.to_field());
                out.extend(command.to_fields());
            }
            Request::Stop { target, grace_ms } => {
                out.push(target.to_field());
                out.extend(grace_ms.map(num));
            }
            Request::Signal {
                target,
                signal,
                group,
            } => {
                out.push(target.to_field());
                out.push(
                    signal::name(*signal)
                        .unwrap_or_else(|| signal.to_string())
                        .into_bytes(),
                );
                if *group {
                    out.push(verb::GROUP.as_bytes().to_vec());
                }
            }
            Request::Start { name } | Request::Restart { name } => out.push(name.clone()),
            Request::Pause { target } | Request::Resume { target } => out.push(target.to_field()),
            Request::Status { names } => out.extend(names.iter().cloned()),
            Request::Tree { name } => out.extend(name.iter().cloned()),
            Request::History { filter, max } => {
                out.push(filter.subject.clone());
                out.push(filter.kinds.to_field());
                out.push(max.map(|n| num(n as u64)).unwrap_or_default());
            }
            Request::Subscribe { filter } => {
                out.push(filter.subject.clone());
                out.push(filter.kinds.to_field());
            }
            Request::Bind(addr) => out.extend(addr.to_fields()),
            Request::ReExec { path } => out.extend(path.iter().cloned()),
            Request::Logs { name, level, max } | Request::FollowLogs { name, level, max } => {
                out.push(name.clone());
                out.push(num(u64::from(*level)));
                out.push(max.map(|n| num(n as u64)).unwrap_or_default());
            }
            Request::MonitorFd
            | Request::List
            | Request::Ping
            | Request::Version
            | Request::Config
            | Request::Reload
            | Request::Power(_) => {}
        }
        if matches!(
            self,
            Request::History { .. }
                | Request::Subscribe { .. }
                | Request::Logs { .. }
                | Request::FollowLogs { .. }
        ) {
            // Empty fields at the end say nothing: leave them out.
            while out.len() > 1 && out.last().is_some_and(Vec::is_empty) {
                out.pop();
            }
        }
        out
    }

    /// Checks the names, targets, patterns and counts of a request built in code, as the parser
    /// would read them.
    fn check_names(&self) -> Result<(), RequestError> {
        match self {
            Request::Stop { target, .. }
            | Request::Signal { target, .. }
            | Request::OnExit { target, .. }
            | Request::Pause { target }
            | Request::Resume { target } => target.check(),
            Request::Start { name } | Request::Restart { name } => {
                service_name(name, "name").map(drop)
            }
            Request::Status { names } => names
                .iter()
                .try_for_each(|n| service_name(n, "name").map(drop)),
            Request::Tree { name } => name
                .iter()
                .try_for_each(|n| service_name(n, "name").map(drop)),
            Request::History { filter, max } => {
                event::check_pattern(&filter.subject).map_err(RequestError::BadPattern)?;
                match max {
                    Some(n) if !(1..=MAX_HISTORY).contains(n) => {
                        Err(RequestError::BadNumber("count"))
                    }
                    _ => Ok(()),
                }
            }
            Request::Subscribe { filter } => {
                event::check_pattern(&filter.subject).map_err(RequestError::BadPattern)
            }
            Request::Bind(addr) => addr.check().map_err(RequestError::Bind),
            Request::Logs { name, level, max } | Request::FollowLogs { name, level, max } => {
                service_name(name, "name")?;
                if *level > crate::log::LEVEL_DEBUG {
                    return Err(RequestError::BadLevel);
                }
                match max {
                    Some(n) if *n > MAX_LOG_ROWS => Err(RequestError::BadNumber("count")),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// The request as one line, `\n` included. Fails on a NUL byte, which no field can carry, on a
    /// service name or a subject pattern that breaks its rule or a count out of range (so that
    /// what is sent reads back as itself), or when the line would exceed [`MAX_REQUEST_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, RequestError> {
        self.check_names()?;
        let fields = self.to_fields();
        if fields.iter().any(|f| f.contains(&0)) {
            return Err(RequestError::Nul);
        }
        let line = record::join(&fields);
        if line.len() > MAX_REQUEST_LEN {
            return Err(RequestError::TooLong);
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::EnvEntry;

    fn parse(line: &str) -> Result<Request, RequestError> {
        Request::parse(line.as_bytes())
    }

    #[test]
    fn seed_requests() {
        assert_eq!(
            parse("Run,/bin/sh,-c,echo $A,A=1"),
            Ok(Request::Run(Command {
                argv: vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"echo $A".to_vec()],
                env: vec![EnvEntry::set("A", "1")],
            }))
        );
        assert_eq!(
            parse("StartDaemon,/usr/bin/sleep,100"),
            Ok(Request::StartDaemon(Command::new([
                "/usr/bin/sleep",
                "100"
            ])))
        );
        assert_eq!(parse("MonitorFD"), Ok(Request::MonitorFd));
    }

    #[test]
    fn extensions() {
        assert_eq!(parse("Monitor,42"), Ok(Request::Monitor { pid: 42 }));
        assert_eq!(
            parse("Stop,7"),
            Ok(Request::Stop {
                target: Target::Id(7),
                grace_ms: None
            })
        );
        assert_eq!(
            parse("Stop,7,250"),
            Ok(Request::Stop {
                target: Target::Id(7),
                grace_ms: Some(250)
            })
        );
        assert_eq!(
            parse("Signal,7,HUP"),
            Ok(Request::Signal {
                target: Target::Id(7),
                signal: 1,
                group: false
            })
        );
        assert_eq!(
            parse("Signal,7,9,group"),
            Ok(Request::Signal {
                target: Target::Id(7),
                signal: 9,
                group: true
            })
        );
        assert_eq!(parse("List"), Ok(Request::List));
        assert_eq!(parse("Ping"), Ok(Request::Ping));
        assert_eq!(parse("Version"), Ok(Request::Version));
    }

    fn service(name: &str) -> Target {
        Target::Service(name.as_bytes().to_vec())
    }

    #[test]
    fn service_requests() {
        let name = |n: &str| n.as_bytes().to_vec();
        let cases = [
            ("Start,db", Request::Start { name: name("db") }),
            (
                "Restart,getty@tty1",
                Request::Restart {
                    name: name("getty@tty1"),
                },
            ),
            (
                "Stop,web",
                Request::Stop {
                    target: service("web"),
                    grace_ms: None,
                },
            ),
            (
                "Stop,web,0",
                Request::Stop {
                    target: service("web"),
                    grace_ms: Some(0),
                },
            ),
            (
                "Stop,007",
                Request::Stop {
                    target: Target::Id(7),
                    grace_ms: None,
                },
            ),
            (
                "Signal,worker1,USR1,group",
                Request::Signal {
                    target: service("worker1"),
                    signal: 10,
                    group: true,
                },
            ),
            (
                "Pause,web",
                Request::Pause {
                    target: service("web"),
                },
            ),
            (
                "Pause,3",
                Request::Pause {
                    target: Target::Id(3),
                },
            ),
            (
                "Resume,1a",
                Request::Resume {
                    target: service("1a"),
                },
            ),
            ("Status", Request::Status { names: vec![] }),
            (
                "Status,db,web,db",
                Request::Status {
                    names: vec![name("db"), name("web"), name("db")],
                },
            ),
            ("Tree", Request::Tree { name: None }),
            (
                "Tree,db",
                Request::Tree {
                    name: Some(name("db")),
                },
            ),
            ("Config", Request::Config),
            ("Reload", Request::Reload),
            ("Poweroff", Request::Power(Power::Poweroff)),
            ("Reboot", Request::Power(Power::Reboot)),
            ("Halt", Request::Power(Power::Halt)),
            ("ReExec", Request::ReExec { path: None }),
            (
                "ReExec,/usr/sbin/archon",
                Request::ReExec {
                    path: Some(b"/usr/sbin/archon".to_vec()),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want.clone()), "{line}");
            assert!(want.check_fds(0).is_ok());
            assert!(want.check_fds(1).is_err());
        }
    }

    #[test]
    fn targets() {
        assert_eq!(Target::from_field(b"42"), Ok(Target::Id(42)));
        assert_eq!(Target::from_field(b"0"), Ok(Target::Id(0)));
        assert_eq!(
            Target::from_field(b"18446744073709551615"),
            Ok(Target::Id(u64::MAX))
        );
        assert_eq!(
            Target::from_field(b"18446744073709551616"),
            Err(RequestError::BadNumber("id"))
        );
        assert_eq!(Target::from_field(b"db"), Ok(service("db")));
        assert_eq!(
            Target::from_field(b""),
            Err(RequestError::Missing("target"))
        );
        assert!(matches!(
            Target::from_field(b"-1"),
            Err(RequestError::BadName(_))
        ));
        assert_eq!(service("web").to_field(), b"web");
        assert_eq!(Target::Id(9).to_field(), b"9");
        assert_eq!(Target::from(9).to_string(), "9");
        assert_eq!(service("web").to_string(), "web");
    }

    #[test]
    fn errors_are_named() {
        let cases: &[(&str, &str)] = &[
            ("", "empty request"),
            ("Frobnicate,1", "unknown request: Frobnicate"),
            ("ping", "unknown request: ping"),
            (",Ping", "unknown request: \"\""),
            ("Run", "missing command"),
            ("Run,", "missing command"),
            ("MonitorFD,3", "too many fields for MonitorFD"),
            ("Monitor", "missing pid"),
            ("Monitor,0", "bad pid"),
            ("Monitor,-5", "bad pid"),
            ("Monitor,2147483648", "bad pid"),
            ("Stop", "missing target"),
            ("Stop,", "missing target"),
            ("Stop,99999999999999999999", "bad id"),
            ("Stop,-1", "bad name: a name may not start with '-'"),
            (
                "Stop,a b",
                "bad name: ' ' is not allowed in a name (only letters, digits and _ . @ : -)",
            ),
            ("Stop,1,99999999999", "bad grace period"),
            ("Stop,db,x", "bad grace period"),
            ("Stop,1,2,3", "too many fields for Stop"),
            ("Signal", "missing target"),
            ("Signal,1", "missing signal"),
            ("Signal,.x,TERM", "bad name: a name may not start with '.'"),
            ("Signal,1,SIGNOPE", "bad signal"),
            ("Signal,1,9,all", "bad signal scope: only 'group' is known"),
            ("Ping,x", "too many fields for Ping"),
            ("Start", "missing name"),
            ("Start,", "missing name"),
            (
                "Start,12",
                "bad name: a name may not be all digits (that is a process id)",
            ),
            ("Start,a,b", "too many fields for Start"),
            ("Restart", "missing name"),
            (
                "Restart,/bin/sh",
                "bad name: '/' is not allowed in a name (only letters, digits and _ . @ : -)",
            ),
            ("Pause", "missing target"),
            ("Pause,1,2", "too many fields for Pause"),
            ("Resume", "missing target"),
            ("Resume,x,y", "too many fields for Resume"),
            ("Status,db,", "missing name"),
            (
                "Status,db,3",
                "bad name: a name may not be all digits (that is a process id)",
            ),
            ("Tree,", "missing name"),
            ("Tree,a,b", "too many fields for Tree"),
            ("Config,x", "too many fields for Config"),
            ("Reload,now", "too many fields for Reload"),
            ("Poweroff,now", "too many fields for Poweroff"),
            ("Reboot,", "too many fields for Reboot"),
            ("Halt,x", "too many fields for Halt"),
            ("ReExec,", "missing path"),
            ("ReExec,archon", "the path must be absolute"),
            ("ReExec,/a,/b", "too many fields for ReExec"),
            ("start,db", "unknown request: start"),
        ];
        for (line, reason) in cases {
            let got = parse(line).map_err(|e| e.to_string());
            assert_eq!(got, Err(reason.to_string()), "{line:?}");
        }
        let long = "X".repeat(100);
        assert_eq!(
            parse(&long).map_err(|e| e.to_string()),
            Err(format!("unknown request: {}...", "X".repeat(32)))
        );
    }

    #[test]
    fn fd_rules() {
        let run = Request::Run(Command::new(["x"]));
        assert!(run.check_fds(0).is_ok() && run.check_fds(3).is_ok());
        assert_eq!(
            run.check_fds(4).map_err(|e| e.to_string()),
            Err("too many fds: Run takes at most 3, got 4".into())
        );
        assert!(Request::MonitorFd.check_fds(1).is_ok());
        assert!(Request::MonitorFd.check_fds(0).is_err());
        assert!(Request::MonitorFd.check_fds(2).is_err());
        assert_eq!(
            Request::Ping.check_fds(1).map_err(|e| e.to_string()),
            Err("Ping takes no fds, got 1".into())
        );
    }

    #[test]
    fn encode_refuses_nul_and_overlong() {
        assert_eq!(
            Request::Run(Command::new(["a\0b"])).encode(),
            Err(RequestError::Nul)
        );
        let big = Request::Run(Command::new(["x".repeat(MAX_REQUEST_LEN)]));
        assert_eq!(big.encode(), Err(RequestError::TooLong));
        assert_eq!(Request::Ping.encode(), Ok(b"Ping\n".to_vec()));
        assert_eq!(
            Request::Signal {
                target: Target::Id(3),
                signal: 15,
                group: true
            }
            .encode(),
            Ok(b"Signal,3,SIGTERM,group\n".to_vec())
        );
    }

    #[test]
    fn encode_writes_service_requests_and_refuses_bad_names() {
        let name = |n: &str| n.as_bytes().to_vec();
        let cases: [(Request, &[u8]); 9] = [
            (Request::Start { name: name("db") }, b"Start,db\n"),
            (
                Request::Stop {
                    target: service("web"),
                    grace_ms: Some(500),
                },
                b"Stop,web,500\n",
            ),
            (
                Request::Signal {
                    target: service("web"),
                    signal: 1,
                    group: false,
                },
                b"Signal,web,SIGHUP\n",
            ),
            (
                Request::Pause {
                    target: Target::Id(4),
                },
                b"Pause,4\n",
            ),
            (
                Request::Status {
                    names: vec![name("a"), name("b")],
                },
                b"Status,a,b\n",
            ),
            (Request::Status { names: vec![] }, b"Status\n"),
            (Request::Tree { name: None }, b"Tree\n"),
            (Request::Config, b"Config\n"),
            (Request::Reload, b"Reload\n"),
        ];
        for (request, line) in cases {
            assert_eq!(request.encode().as_deref(), Ok(line), "{request:?}");
        }
        for bad in [
            Request::Start { name: name("12") },
            Request::Restart { name: name("") },
            Request::Stop {
                target: service("a,b"),
                grace_ms: None,
            },
            Request::Resume {
                target: service("7"),
            },
            Request::Status {
                names: vec![name("ok"), name(".no")],
            },
            Request::Tree {
                name: Some(name("x\ny")),
            },
        ] {
            assert!(
                matches!(
                    bad.encode(),
                    Err(RequestError::BadName(_) | RequestError::Missing(_))
                ),
                "{bad:?}"
            );
        }
    }
    #[test]
    fn event_requests() {
        use crate::event::EventKind;
        use crate::reply::ServiceKind;
        let filter = |subject: &str, kinds: KindSet| Filter {
            subject: subject.as_bytes().to_vec(),
            kinds,
        };
        let exits = KindSet::ANY.with_event(EventKind::Exit);
        let cases = [
            (
                "History",
                Request::History {
                    filter: Filter::any(),
                    max: None,
                },
            ),
            (
                "History,web*",
                Request::History {
                    filter: filter("web*", KindSet::ANY),
                    max: None,
                },
            ),
            (
                "History,,exit,10",
                Request::History {
                    filter: filter("", exits),
                    max: Some(10),
                },
            ),
            (
                "History,?,exit|daemon,65536",
                Request::History {
                    filter: filter("?", exits.with_subject(ServiceKind::Daemon)),
                    max: Some(MAX_HISTORY),
                },
            ),
            (
                "Subscribe",
                Request::Subscribe {
                    filter: Filter::any(),
                },
            ),
            (
                "Subscribe,*,exit",
                Request::Subscribe {
                    filter: filter("*", exits),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want.clone()), "{line}");
            assert_eq!(
                want.encode(),
                Ok(format!("{line}\n").into_bytes()),
                "{line}"
            );
            assert!(want.check_fds(1).is_err());
        }
        // Empty fields count as missing, and are left out when written.
        let all = Request::History {
            filter: Filter::any(),
            max: None,
        };
        assert_eq!(parse("History,,,"), Ok(all.clone()));
        assert_eq!(all.encode(), Ok(b"History\n".to_vec()));
        let errors: &[(&str, &str)] = &[
            (
                "History,a/b",
                "bad subject pattern: '/' is not allowed (only name bytes, '*' and '?')",
            ),
            (
                "History,*,nope",
                "bad kind: 'nope' is no event kind or subject kind",
            ),
            ("History,*,exit|", "bad kind: an empty word between '|'"),
            ("History,*,exit,0", "bad count"),
            ("History,*,exit,65537", "bad count"),
            ("History,*,exit,-1", "bad count"),
            ("History,*,exit,1,x", "too many fields for History"),
            ("Subscribe,*,exit,1", "too many fields for Subscribe"),
            (
                "Subscribe,[a]",
                "bad subject pattern: '[' is not allowed (only name bytes, '*' and '?')",
            ),
        ];
        for (line, reason) in errors {
            let got = parse(line).map_err(|e| e.to_string());
            assert_eq!(got, Err(reason.to_string()), "{line:?}");
        }
        for bad in [
            Request::History {
                filter: filter("a,b", KindSet::ANY),
                max: None,
            },
            Request::History {
                filter: Filter::any(),
                max: Some(0),
            },
            Request::Subscribe {
                filter: filter("x y", KindSet::ANY),
            },
        ] {
            assert!(bad.encode().is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod on_exit_tests {
    use super::*;

    #[test]
    fn on_exit_reads_a_target_then_a_command_in_either_form() {
        let parse = |l: &str| Request::parse(l.as_bytes());
        let want = Request::OnExit {
            target: Target::Id(3),
            command: Command {
                argv: vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"echo $X".to_vec()],
                env: vec![crate::EnvEntry::set("X", "1")],
            },
        };
        assert_eq!(parse("OnExit,3,/bin/sh,-c,echo $X,X=1"), Ok(want.clone()));
        assert_eq!(
            want.encode(),
            Ok(b"OnExit,3,/bin/sh,-c,echo $X,X=1\n".to_vec())
        );
        let explicit = Request::OnExit {
            target: Target::Id(4),
            command: Command::new(["/bin/echo", "A=1"]),
        };
        assert_eq!(parse("OnExit,4,,2,/bin/echo,A=1"), Ok(explicit.clone()));
        assert_eq!(
            explicit.encode(),
            Ok(b"OnExit,4,,2,/bin/echo,A=1\n".to_vec())
        );
        // A name reads as a target: archon, not the grammar, says a service takes none.
        assert!(matches!(
            parse("OnExit,web,/bin/true"),
            Ok(Request::OnExit {
                target: Target::Service(_),
                ..
            })
        ));
        assert!(want.check_fds(0).is_ok());
        assert_eq!(
            want.check_fds(1).map_err(|e| e.to_string()),
            Err("OnExit takes no fds, got 1".into())
        );
        for (line, reason) in [
            ("OnExit", "missing target"),
            ("OnExit,", "missing target"),
            ("OnExit,3", "missing command"),
            ("OnExit,3,", "missing command"),
            ("OnExit,3,,0,x", "explicit form: bad argument count"),
            ("OnExit,3,,1,", "empty program name"),
            ("OnExit,99999999999999999999,x", "bad id"),
            ("OnExit,-1,x", "bad name: a name may not start with '-'"),
        ] {
            assert_eq!(
                parse(line).map_err(|e| e.to_string()),
                Err(reason.to_string()),
                "{line}"
            );
        }
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn logs_requests_read_and_write_back() {
        let parse = |l: &str| Request::parse(l.as_bytes());
        let logs = |level, max| Request::Logs {
            name: b"web".to_vec(),
            level,
            max,
        };
        assert_eq!(parse("Logs,web"), Ok(logs(7, None)));
        assert_eq!(parse("Logs,web,err,10"), Ok(logs(3, Some(10))));
        assert_eq!(parse("Logs,web,,0"), Ok(logs(7, Some(0))));
        assert_eq!(logs(3, Some(10)).encode(), Ok(b"Logs,web,3,10\n".to_vec()));
        assert_eq!(logs(7, None).encode(), Ok(b"Logs,web,7\n".to_vec()));
        assert_eq!(
            parse("FollowLogs,web,warning"),
            Ok(Request::FollowLogs {
                name: b"web".to_vec(),
                level: 4,
                max: None
            })
        );
        for (line, err) in [
            ("Logs", RequestError::Missing("name")),
            ("Logs,web,8", RequestError::BadLevel),
            ("Logs,web,,65537", RequestError::BadNumber("count")),
            (
                "FollowLogs,web,1,2,3",
                RequestError::ExtraFields("FollowLogs"),
            ),
        ] {
            assert_eq!(parse(line), Err(err), "{line}");
        }
        assert_eq!(logs(9, None).encode(), Err(RequestError::BadLevel));
    }
}
