//! Requests: what a client asks, parsed from and written to one record.

use std::fmt;

use crate::command::{Command, CommandError};
use crate::frame::FrameError;
use crate::limits::{MAX_FDS_PER_REQUEST, MAX_REQUEST_LEN, MAX_STOP_GRACE_MS};
use crate::record::{self, Fields};
use crate::signal;

/// What a supervised process is called in requests and replies: a number archon gives it, never
/// reused while archon runs.
pub type Id = u64;

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
    /// `Stop,<id>[,<grace-ms>]`: SIGTERM to the process (its process group when it leads one),
    /// SIGKILL after the grace period; the reply comes when it has ended.
    Stop {
        /// The process to stop.
        id: Id,
        /// Time between SIGTERM and SIGKILL, in milliseconds; archon's default when `None`.
        grace_ms: Option<u64>,
    },
    /// `Signal,<id>,<signal>[,group]`: send a signal to the process, or to its process group.
    Signal {
        /// The process.
        id: Id,
        /// The signal's number (0 only checks that the process exists).
        signal: i32,
        /// Send it to the process group the process leads, not to the process alone.
        group: bool,
    },
    /// `List`: every supervised process, and the recently ended ones.
    List,
    /// `Ping`: answered `Pong`.
    Ping,
    /// `Version`: answered `Version,<archon version>,<protocol version>`.
    Version,
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
    /// [`super::Request::List`]
    pub const LIST: &str = "List";
    /// [`super::Request::Ping`]
    pub const PING: &str = "Ping";
    /// [`super::Request::Version`]
    pub const VERSION: &str = "Version";
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
    /// The request carries fds that it does not take, or more than it takes.
    Fds {
        /// The verb.
        verb: &'static str,
        /// How many fds came.
        got: usize,
    },
    /// A field holds a NUL byte (only when writing a request).
    Nul,
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
                let id = args.first().ok_or(RequestError::Missing("id"))?;
                let grace_ms = match args.get(1) {
                    None => None,
                    Some(g) => Some(
                        parse_u64(g)
                            .filter(|&g| g <= MAX_STOP_GRACE_MS)
                            .ok_or(RequestError::BadNumber("grace period"))?,
                    ),
                };
                Request::Stop {
                    id: parse_u64(id).ok_or(RequestError::BadNumber("id"))?,
                    grace_ms,
                }
            }
            b"Signal" => {
                no_more(args, 3, verb::SIGNAL)?;
                let id = args.first().ok_or(RequestError::Missing("id"))?;
                let sig = args.get(1).ok_or(RequestError::Missing("signal"))?;
                let group = match args.get(2).map(Vec::as_slice) {
                    None => false,
                    Some(b"group") => true,
                    Some(_) => return Err(RequestError::BadSignalScope),
                };
                Request::Signal {
                    id: parse_u64(id).ok_or(RequestError::BadNumber("id"))?,
                    signal: signal::parse(sig).ok_or(RequestError::BadSignal)?,
                    group,
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
            Request::List => verb::LIST,
            Request::Ping => verb::PING,
            Request::Version => verb::VERSION,
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
            Request::Stop { id, grace_ms } => {
                out.push(num(*id));
                out.extend(grace_ms.map(num));
            }
            Request::Signal { id, signal, group } => {
                out.push(num(*id));
                out.push(
                    signal::name(*signal)
                        .unwrap_or_else(|| signal.to_string())
                        .into_bytes(),
                );
                if *group {
                    out.push(verb::GROUP.as_bytes().to_vec());
                }
            }
            Request::MonitorFd | Request::List | Request::Ping | Request::Version => {}
        }
        out
    }

    /// The request as one line, `\n` included. Fails on a NUL byte, which no field can carry, or
    /// when the line would exceed [`MAX_REQUEST_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, RequestError> {
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
                id: 7,
                grace_ms: None
            })
        );
        assert_eq!(
            parse("Stop,7,250"),
            Ok(Request::Stop {
                id: 7,
                grace_ms: Some(250)
            })
        );
        assert_eq!(
            parse("Signal,7,HUP"),
            Ok(Request::Signal {
                id: 7,
                signal: 1,
                group: false
            })
        );
        assert_eq!(
            parse("Signal,7,9,group"),
            Ok(Request::Signal {
                id: 7,
                signal: 9,
                group: true
            })
        );
        assert_eq!(parse("List"), Ok(Request::List));
        assert_eq!(parse("Ping"), Ok(Request::Ping));
        assert_eq!(parse("Version"), Ok(Request::Version));
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
            ("Stop", "missing id"),
            ("Stop,x", "bad id"),
            ("Stop,1,99999999999", "bad grace period"),
            ("Stop,1,2,3", "too many fields for Stop"),
            ("Signal,1", "missing signal"),
            ("Signal,1,SIGNOPE", "bad signal"),
            ("Signal,1,9,all", "bad signal scope: only 'group' is known"),
            ("Ping,x", "too many fields for Ping"),
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
                id: 3,
                signal: 15,
                group: true
            }
            .encode(),
            Ok(b"Signal,3,SIGTERM,group\n".to_vec())
        );
    }
}
