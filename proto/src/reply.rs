//! Replies: what archon answers, one per request, in request order on each connection.
//!
//! Every reply is one record, except `List`: its first record is `List,<n>`, and `n` records
//! `Process,...` follow, so a client knows where the reply ends without waiting.

use std::fmt;

use crate::record::{self, Fields};
use crate::request::{Id, parse_pid, parse_u64};
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

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant,)* }

        impl $name {
            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// Reads the word on the wire.
            pub fn from_field(field: &[u8]) -> Option<Self> {
                match field { $(f if f == $text.as_bytes() => Some($name::$variant),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
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
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// `Ok[,<field>...]`: done. `StartDaemon`, `MonitorFD` and `Monitor` add `<id>,<pid>`; `Stop`
    /// adds `<id>,<status>`; `Signal` adds `<id>`.
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

fn bad(what: &str) -> ReplyError {
    ReplyError(what.to_string())
}

fn millis_to_field(ms: u64) -> Vec<u8> {
    format!("{}.{:03}", ms / 1000, ms % 1000).into_bytes()
}

fn millis_from_field(field: &[u8]) -> Option<u64> {
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
        }
    }

    /// The reply's records.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Reads a reply record by record, as a client does: most replies are done after one record, a
/// `List` after its rows.
#[derive(Debug, Default)]
pub struct ReplyParser {
    list: Option<(usize, Vec<ProcessRow>)>,
}

impl ReplyParser {
    /// A parser waiting for the first record of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next record's fields; returns the reply once it is complete.
    pub fn push(&mut self, fields: &[Vec<u8>]) -> Result<Option<Reply>, ReplyError> {
        if let Some((want, rows)) = &mut self.list {
            rows.push(parse_row(fields)?);
            if rows.len() == *want {
                let rows = std::mem::take(rows);
                self.list = None;
                return Ok(Some(Reply::List(rows)));
            }
            return Ok(None);
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
                let n = match rest {
                    [n] => parse_u64(n)
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| bad("row count"))?,
                    _ => return Err(bad("List takes one field")),
                };
                if n > 0 {
                    self.list = Some((n, Vec::with_capacity(n.min(1024))));
                    return Ok(None);
                }
                Reply::List(Vec::new())
            }
            _ => return Err(bad("unknown reply kind")),
        };
        Ok(Some(reply))
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
