//! Re-execution: archon hands its state to a new image of its program (an upgrade) without
//! restarting a service, changing a pid, closing a socket or losing an event.
//!
//! The old image writes its [`State`] to a memfd, in a versioned record format of its own (below),
//! and first asks the new program to read it: `<exe> --check-restore <args>` with the memfd as
//! stdin must print [`CHECK_OK`] and exit 0 within [`CHECK_TIMEOUT`]. Only then does it clear
//! close-on-exec on exactly the fds the state names, block the signals it handles (the mask and
//! pending signals survive `execve`, so none is lost or acted on by a default action before the
//! new image has handlers), and exec `<exe> --restore <memfd> <args>`. If the check or the
//! `execve` fails, the old image puts everything back as it was and answers `Error`.
//!
//! The new image reads the state before it opens anything: every fd the state names must be open
//! then, and is handed out once, to its one owner, by an [`FdBank`]; the fds no part of the state
//! claims are closed. The configuration is read again from its file and units are matched by name
//! (see [`crate::service::Carried`]); the rest is restored by the loop (`event_loop/reexec.rs`).
//!
//! The format: a record is a line of fields, each written `<length>:<bytes>` (binary-safe: log
//! lines and unread requests are bytes), ended by `\n`. The first record is
//! `archon-state,<FORMAT>`, the last `end`: a state cut short is refused, never half restored.
//! Numbers are decimal, an empty field is "none". Nothing here panics on any input.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use archon_proto::{Cause, Command, Id, Kind, LogLine, LogStream, ProcState, ProcessRow, Status};

use crate::service::{Carried, TimerKind};
use crate::table::{ReplyTo, Waiter};

/// The version of the format; a new image refuses a state of another version.
pub const FORMAT: u64 = 1;

/// What `--check-restore` prints when the new program can take the state over.
pub const CHECK_OK: &[u8] = b"archon: can restore\n";

/// How long the new program may take to check the state.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The option that gives the new image its state: `--restore <fd>`.
pub const RESTORE_ARG: &str = "--restore";

/// The option that asks a program to check a state on its stdin.
pub const CHECK_ARG: &str = "--check-restore";

const MAGIC: &[u8] = b"archon-state";

/// The largest id or counter a state may hold (2^63 - 1): counting on from it cannot overflow.
const MAX_COUNTER: u64 = i64::MAX as u64;

/// A state that cannot be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state: {}", self.0)
    }
}

/// A number as a field.
pub fn num(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Reads the fields of one record in order.
pub struct Cursor<'a> {
    fields: &'a [&'a [u8]],
    at: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    /// The fields of a `what` record.
    pub fn new(fields: &'a [&'a [u8]], what: &'static str) -> Cursor<'a> {
        Cursor {
            fields,
            at: 0,
            what,
        }
    }

    /// The error for a bad `field` of this record.
    pub fn bad(&self, field: &str) -> FormatError {
        FormatError(format!("{} record: bad {field}", self.what))
    }

    /// True once every field has been read.
    pub fn is_empty(&self) -> bool {
        self.at >= self.fields.len()
    }

    /// The next field.
    pub fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let f = self
            .fields
            .get(self.at)
            .ok_or_else(|| FormatError(format!("{} record: too short", self.what)))?;
        self.at += 1;
        Ok(f)
    }

    /// The next field, as `f` reads it.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&[u8]) -> Option<T>,
        what: &str,
    ) -> Result<T, FormatError> {
        let b = self.bytes()?;
        f(b).ok_or_else(|| self.bad(what))
    }

    /// The next field as `f` reads it, or `None` when it is empty.
    pub fn opt_with<T>(
        &mut self,
        f: impl FnOnce(&[u8]) -> Option<T>,
        what: &str,
    ) -> Result<Option<T>, FormatError> {
        let b = self.bytes()?;
        if b.is_empty() {
            return Ok(None);
        }
        f(b).map(Some).ok_or_else(|| self.bad(what))
    }

    /// The next field, a number.
    pub fn num<T: FromStr>(&mut self) -> Result<T, FormatError> {
        self.with(parse_num, "number")
    }

    /// The next field, a number or empty.
    pub fn opt_num<T: FromStr>(&mut self) -> Result<Option<T>, FormatError> {
        self.opt_with(parse_num, "number")
    }

    /// The next field, `0` or `1`.
    pub fn flag(&mut self) -> Result<bool, FormatError> {
        match self.bytes()? {
            b"0" => Ok(false),
            b"1" => Ok(true),
            _ => Err(self.bad("flag")),
        }
    }

    /// The next field, UTF-8 text.
    pub fn text(&mut self) -> Result<String, FormatError> {
        self.with(|b| std::str::from_utf8(b).ok().map(str::to_string), "text")
    }

    /// The fields not read yet.
    pub fn rest(&mut self) -> &'a [&'a [u8]] {
        let rest = self.fields.get(self.at..).unwrap_or(&[]);
        self.at = self.fields.len();
        rest
    }

    /// Every field has been read.
    pub fn done(&self) -> Result<(), FormatError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(FormatError(format!("{} record: too long", self.what)))
        }
    }
}

fn parse_num<T: FromStr>(b: &[u8]) -> Option<T> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(|c| c.is_ascii_digit() || *c == b'-') {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Appends one record.
fn put<F: AsRef<[u8]>>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = F>) {
    for f in fields {
        let f = f.as_ref();
        out.extend_from_slice(f.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(f);
    }
    out.push(b'\n');
}

/// Splits a state into its records.
fn records(data: &[u8]) -> Result<Vec<Vec<&[u8]>>, FormatError> {
    let truncated = || FormatError("cut short".to_string());
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let mut rec = Vec::new();
        loop {
            match data.get(pos) {
                None => return Err(truncated()),
                Some(b'\n') if !rec.is_empty() => {
                    pos += 1;
                    break;
                }
                Some(_) => {}
            }
            let colon = data[pos..]
                .iter()
                .take(12)
                .position(|&c| c == b':')
                .ok_or_else(|| FormatError(format!("no field length at byte {pos}")))?;
            let len: usize = parse_num(&data[pos..pos + colon])
                .ok_or_else(|| FormatError(format!("bad field length at byte {pos}")))?;
            let start = pos + colon + 1;
            let end = start.checked_add(len).ok_or_else(truncated)?;
            let field = data.get(start..end).ok_or_else(truncated)?;
            rec.push(field);
            pos = end;
        }
        out.push(rec);
    }
    Ok(out)
}

/// archon's two listening sockets and the lock of its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenRecord {
    /// The control socket's path.
    pub path: PathBuf,
    /// The control socket.
    pub control: RawFd,
    /// The lock file beside it, locked.
    pub lock: RawFd,
    /// The bind socket.
    pub bind: RawFd,
    /// The bind socket's path.
    pub bind_path: PathBuf,
}

/// A client connection (not a stream: subscribers and followers are closed by a re-exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// Its number.
    pub id: u64,
    /// The socket.
    pub fd: RawFd,
    /// The number its next request gets.
    pub next_seq: u64,
    /// Its reply slots from the oldest unanswered request on: filled (bytes) or pending.
    pub slots: Vec<Option<Vec<u8>>>,
    /// Bytes read and not yet taken as requests.
    pub inbuf: Vec<u8>,
    /// Bytes of replies not yet sent.
    pub out: Vec<u8>,
    /// The peer has closed its sending side.
    pub read_closed: bool,
    /// It closes once its replies are out.
    pub closing: bool,
    /// It came through the bind socket.
    pub bind_only: bool,
}

/// A process of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRecord {
    /// What `List` says of it.
    pub row: ProcessRow,
    /// Its pidfd, if archon holds one.
    pub pidfd: Option<RawFd>,
    /// Replies owed when it ends.
    pub waiters: Vec<Waiter>,
    /// The SIGKILL of a stop in progress, in this many ms.
    pub kill_in_ms: Option<u64>,
    /// Who asked for the stop in progress.
    pub stop_by: Cause,
    /// What to run when it ends (`OnExit`), in the order asked: who asked, and the command.
    pub on_exit: Vec<(Cause, Command)>,
}

/// A unit's notify socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyRecord {
    /// The socket.
    pub fd: RawFd,
    /// Its file.
    pub path: PathBuf,
    /// The file's device and inode.
    pub file_id: (u64, u64),
}

/// A unit's log pipes and the lines kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The read ends of stdout's pipe and stderr's.
    pub reads: [RawFd; 2],
    /// The write ends archon keeps, of stdout's pipe and stderr's: only where `/proc` could not
    /// open one from the read end (see [`crate::logs`]). The fields are `read write` of stdout,
    /// then of stderr, a write end empty when there is none.
    pub writes: [Option<RawFd>; 2],
    /// Each stream's line not yet ended, and the level of a cut line going on.
    pub partial: [(Vec<u8>, Option<u8>); 2],
    /// The lines of its ring, oldest first.
    pub lines: Vec<LogLine>,
}

/// What the loop holds for a unit, and the manager's view of it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRecord {
    /// Its name, matched against the configuration.
    pub name: String,
    /// The manager's view.
    pub life: Carried,
    /// The pidfd of its main process.
    pub pidfd: Option<RawFd>,
    /// Its notify socket.
    pub notify: Option<NotifyRecord>,
    /// The read end of its ready pipe.
    pub ready: Option<RawFd>,
    /// Its armed timers: which, and in how many ms.
    pub timers: Vec<(TimerKind, u64)>,
    /// Its output.
    pub log: Option<LogRecord>,
    /// For a service up as an acceptor (`accept = true`): its instances.
    pub accept: Option<Vec<InstanceRecord>>,
}

/// An instance of an `accept = true` service (one per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Its number, which its pidfd's token carries.
    pub number: u64,
    /// Its process.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: Option<RawFd>,
    /// Who connected, for its events.
    pub peer: String,
}

/// A socket of the configuration that archon holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRecord {
    /// The service that declares it.
    pub service: String,
    /// Its name in the declaration.
    pub name: String,
    /// The socket.
    pub fd: RawFd,
}

/// Everything a new image of archon takes over.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Who asked for the re-exec.
    pub cause: Cause,
    /// The `ReExec` request's reply slot, when a client asked.
    pub reply_to: Option<ReplyTo>,
    /// The sockets archon listens on.
    pub listen: ListenRecord,
    /// The number the next connection gets.
    pub next_client: u64,
    /// The connections kept.
    pub clients: Vec<ClientRecord>,
    /// The number the next event gets.
    pub next_seq: u64,
    /// The history, oldest first, each event as its line.
    pub history: Vec<Vec<u8>>,
    /// The id the next process gets.
    pub next_proc: Id,
    /// The main command of an entrypoint, once started.
    pub main: Option<Id>,
    /// The open files limit (soft, hard) archon was started with, which children get: the new
    /// image starts with the raised one.
    pub children_nofile: Option<(u64, u64)>,
    /// The process table: live processes, and the records of ended ones.
    pub procs: Vec<ProcRecord>,
    /// The units.
    pub units: Vec<UnitRecord>,
    /// The sockets of the configuration.
    pub sockets: Vec<SocketRecord>,
}

const TIMERS: [(TimerKind, &str); 5] = [
    (TimerKind::Backoff, "backoff"),
    (TimerKind::ReadyTimeout, "ready-timeout"),
    (TimerKind::Watchdog, "watchdog"),
    (TimerKind::StopTimeout, "stop-timeout"),
    (TimerKind::Health, "health"),
];

fn timer_name(k: TimerKind) -> &'static str {
    TIMERS
        .iter()
        .find(|(t, _)| *t == k)
        .map_or("backoff", |(_, n)| n)
}

fn opt_fd(fd: Option<RawFd>) -> Vec<u8> {
    fd.map(|f| num(f as u64)).unwrap_or_default()
}

fn cause_fields(c: Cause) -> [Vec<u8>; 2] {
    c.to_fields()
}

fn read_cause(c: &mut Cursor<'_>) -> Result<Cause, FormatError> {
    let (uid, pid) = (c.bytes()?, c.bytes()?);
    Cause::from_fields(uid, pid).ok_or_else(|| c.bad("cause"))
}

fn read_fd(c: &mut Cursor<'_>) -> Result<RawFd, FormatError> {
    c.num::<RawFd>()
        .and_then(|fd| if fd >= 0 { Ok(fd) } else { Err(c.bad("fd")) })
}

/// A process id: 1 or more (0 and the negative ones name groups, or every process, to kill).
pub fn read_pid(c: &mut Cursor<'_>) -> Result<i32, FormatError> {
    c.num::<i32>()
        .and_then(|pid| if pid > 0 { Ok(pid) } else { Err(c.bad("pid")) })
}

/// [`read_pid`], or empty.
pub fn read_opt_pid(c: &mut Cursor<'_>) -> Result<Option<i32>, FormatError> {
    match c.opt_num::<i32>()? {
        Some(pid) if pid <= 0 => Err(c.bad("pid")),
        pid => Ok(pid),
    }
}

fn read_opt_fd(c: &mut Cursor<'_>) -> Result<Option<RawFd>, FormatError> {
    match c.opt_num::<RawFd>()? {
        Some(fd) if fd < 0 => Err(c.bad("fd")),
        fd => Ok(fd),
    }
}

fn path_field(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn read_path(c: &mut Cursor<'_>) -> Result<PathBuf, FormatError> {
    let b = c.bytes()?;
    if b.is_empty() || b.contains(&0) {
        return Err(c.bad("path"));
    }
    Ok(PathBuf::from(OsStr::from_bytes(b)))
}

impl State {
    /// The state in the format above.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, [MAGIC.to_vec(), num(FORMAT)]);
        let [uid, pid] = cause_fields(self.cause);
        let mut origin = vec![b"origin".to_vec(), uid, pid];
        if let Some(to) = self.reply_to {
            origin.extend([num(to.client), num(to.seq)]);
        }
        put(&mut out, origin);
        let l = &self.listen;
        put(
            &mut out,
            [
                b"listen".as_slice(),
                path_field(&l.path),
                &num(l.control as u64),
                &num(l.lock as u64),
                &num(l.bind as u64),
                path_field(&l.bind_path),
            ],
        );
        put(
            &mut out,
            [
                b"counters".to_vec(),
                num(self.next_client),
                num(self.next_seq),
                num(self.next_proc),
                self.main.map(num).unwrap_or_default(),
                self.children_nofile
                    .map(|(s, _)| num(s))
                    .unwrap_or_default(),
                self.children_nofile
                    .map(|(_, h)| num(h))
                    .unwrap_or_default(),
            ],
        );
        for line in &self.history {
            put(&mut out, [b"event".as_slice(), line]);
        }
        for c in &self.clients {
            let flags = |b: bool| num(u64::from(b));
            put(
                &mut out,
                [
                    b"client".to_vec(),
                    num(c.id),
                    num(c.fd as u64),
                    num(c.next_seq),
                    flags(c.read_closed),
                    flags(c.closing),
                    flags(c.bind_only),
                    c.inbuf.clone(),
                    c.out.clone(),
                ],
            );
            for slot in &c.slots {
                match slot {
                    Some(bytes) => put(&mut out, [b"slot".as_slice(), b"1", bytes]),
                    None => put(&mut out, [b"slot".as_slice(), b"0", b""]),
                }
            }
        }
        for p in &self.procs {
            let r = &p.row;
            let [uid, pid] = cause_fields(p.stop_by);
            let mut f = vec![
                b"proc".to_vec(),
                num(r.id),
                r.kind.as_str().as_bytes().to_vec(),
                num(r.pid as u64),
                r.state.as_str().as_bytes().to_vec(),
                num(r.started_ms),
                r.status.map(Status::to_field).unwrap_or_default(),
                opt_fd(p.pidfd),
                p.kill_in_ms.map(num).unwrap_or_default(),
                uid,
                pid,
                num(p.waiters.len() as u64),
            ];
            for w in &p.waiters {
                let (kind, to) = match w {
                    Waiter::Run(to) => ("run", to),
                    Waiter::Stop(to) => ("stop", to),
                };
                f.extend([kind.as_bytes().to_vec(), num(to.client), num(to.seq)]);
            }
            f.extend(r.argv.iter().cloned());
            put(&mut out, f);
            for (by, cmd) in &p.on_exit {
                let [uid, pid] = cause_fields(*by);
                let mut f = vec![b"proc-exit".to_vec(), num(r.id), uid, pid];
                f.extend(cmd.to_explicit_fields());
                put(&mut out, f);
            }
        }
        for u in &self.units {
            let name = u.name.as_bytes();
            let mut f = vec![b"unit".to_vec(), name.to_vec()];
            f.extend(u.life.to_fields());
            put(&mut out, f);
            let fds = [
                b"unit-fds".to_vec(),
                name.to_vec(),
                opt_fd(u.pidfd),
                opt_fd(u.ready),
            ];
            put(&mut out, fds);
            if let Some(n) = &u.notify {
                put(
                    &mut out,
                    [
                        b"unit-notify".as_slice(),
                        name,
                        &num(n.fd as u64),
                        path_field(&n.path),
                        &num(n.file_id.0),
                        &num(n.file_id.1),
                    ],
                );
            }
            for (kind, ms) in &u.timers {
                put(
                    &mut out,
                    [
                        b"unit-timer".as_slice(),
                        name,
                        timer_name(*kind).as_bytes(),
                        &num(*ms),
                    ],
                );
            }
            if let Some(instances) = &u.accept {
                put(&mut out, [b"unit-accept".as_slice(), name]);
                for i in instances {
                    put(
                        &mut out,
                        [
                            b"unit-instance".as_slice(),
                            name,
                            &num(i.number),
                            &num(i.pid as u64),
                            &opt_fd(i.pidfd),
                            i.peer.as_bytes(),
                        ],
                    );
                }
            }
            if let Some(log) = &u.log {
                let mut f = vec![b"unit-log".to_vec(), name.to_vec()];
                for (&read, &write) in log.reads.iter().zip(&log.writes) {
                    f.extend([num(read as u64), opt_fd(write)]);
                }
                for (bytes, going_on) in &log.partial {
                    f.push(bytes.clone());
                    f.push(going_on.map(|l| num(u64::from(l))).unwrap_or_default());
                }
                put(&mut out, f);
                for l in &log.lines {
                    put(
                        &mut out,
                        [
                            b"unit-line".as_slice(),
                            name,
                            &num(l.time_ms),
                            l.stream.as_str().as_bytes(),
                            &num(u64::from(l.level)),
                            &num(u64::from(l.cut)),
                            &l.text,
                        ],
                    );
                }
            }
        }
        for s in &self.sockets {
            put(
                &mut out,
                [
                    b"socket".as_slice(),
                    s.service.as_bytes(),
                    s.name.as_bytes(),
                    &num(s.fd as u64),
                ],
            );
        }
        put(&mut out, [b"end"]);
        out
    }

    /// Reads a state: an error for anything but a whole state of this [`FORMAT`] whose fds are
    /// each named once.
    pub fn decode(data: &[u8]) -> Result<State, FormatError> {
        let recs = records(data)?;
        let Some((head, body)) = recs.split_first() else {
            return Err(FormatError("empty".to_string()));
        };
        let mut c = Cursor::new(head, "header");
        if c.bytes()? != MAGIC {
            return Err(FormatError("not an archon state".to_string()));
        }
        let version: u64 = c.num()?;
        if version != FORMAT {
            return Err(FormatError(format!(
                "format {version}, this archon reads format {FORMAT}"
            )));
        }
        c.done()?;
        match body.last().map(Vec::as_slice) {
            Some([end]) if *end == b"end" => {}
            _ => return Err(FormatError("cut short (no end record)".to_string())),
        }
        let body = &body[..body.len() - 1];
        let mut st = State {
            cause: Cause::Archon,
            reply_to: None,
            listen: ListenRecord {
                path: PathBuf::new(),
                control: -1,
                lock: -1,
                bind: -1,
                bind_path: PathBuf::new(),
            },
            next_client: 1,
            clients: Vec::new(),
            next_seq: 1,
            history: Vec::new(),
            next_proc: 1,
            main: None,
            children_nofile: None,
            procs: Vec::new(),
            units: Vec::new(),
            sockets: Vec::new(),
        };
        let (mut seen_listen, mut seen_counters) = (false, false);
        for rec in body {
            let Some((tag, fields)) = rec.split_first() else {
                continue;
            };
            match *tag {
                b"origin" => {
                    let mut c = Cursor::new(fields, "origin");
                    st.cause = read_cause(&mut c)?;
                    if !c.is_empty() {
                        st.reply_to = Some(ReplyTo {
                            client: c.num()?,
                            seq: c.num()?,
                        });
                    }
                    c.done()?;
                }
                b"listen" => {
                    let mut c = Cursor::new(fields, "listen");
                    st.listen = ListenRecord {
                        path: read_path(&mut c)?,
                        control: read_fd(&mut c)?,
                        lock: read_fd(&mut c)?,
                        bind: read_fd(&mut c)?,
                        bind_path: read_path(&mut c)?,
                    };
                    c.done()?;
                    seen_listen = true;
                }
                b"counters" => {
                    let mut c = Cursor::new(fields, "counters");
                    st.next_client = c.num()?;
                    st.next_seq = c.num()?;
                    st.next_proc = c.num()?;
                    st.main = c.opt_num()?;
                    st.children_nofile = match (c.opt_num()?, c.opt_num()?) {
                        (Some(soft), Some(hard)) => Some((soft, hard)),
                        _ => None,
                    };
                    c.done()?;
                    seen_counters = true;
                }
                b"event" => {
                    let mut c = Cursor::new(fields, "event");
                    let line = c.bytes()?;
                    c.done()?;
                    let body = line.strip_suffix(b"\n").unwrap_or(line);
                    archon_proto::Event::from_fields(&archon_proto::record::split(body))
                        .map_err(|e| FormatError(format!("event record: {e}")))?;
                    st.history.push(line.to_vec());
                }
                b"client" => {
                    let mut c = Cursor::new(fields, "client");
                    st.clients.push(ClientRecord {
                        id: c.num()?,
                        fd: read_fd(&mut c)?,
                        next_seq: c.num()?,
                        read_closed: c.flag()?,
                        closing: c.flag()?,
                        bind_only: c.flag()?,
                        inbuf: c.bytes()?.to_vec(),
                        out: c.bytes()?.to_vec(),
                        slots: Vec::new(),
                    });
                    c.done()?;
                }
                b"slot" => {
                    let mut c = Cursor::new(fields, "slot");
                    let filled = c.flag()?;
                    let bytes = c.bytes()?;
                    c.done()?;
                    let client = st
                        .clients
                        .last_mut()
                        .ok_or_else(|| FormatError("a slot before any client".to_string()))?;
                    client.slots.push(filled.then(|| bytes.to_vec()));
                }
                b"proc" => st.procs.push(read_proc(fields)?),
                b"proc-exit" => {
                    let mut c = Cursor::new(fields, "proc-exit");
                    let id: u64 = c.num()?;
                    let by = read_cause(&mut c)?;
                    let rest: Vec<Vec<u8>> = c.rest().iter().map(|f| f.to_vec()).collect();
                    let cmd = Command::from_fields(&rest).map_err(|e| {
                        FormatError(format!("proc-exit: bad command: {}", e.reason()))
                    })?;
                    let proc = st
                        .procs
                        .last_mut()
                        .filter(|p| p.row.id == id)
                        .ok_or_else(|| FormatError("proc-exit: not after its proc".to_string()))?;
                    proc.on_exit.push((by, cmd));
                }
                b"unit" => {
                    let mut c = Cursor::new(fields, "unit");
                    let name = c.text()?;
                    let life = Carried::from_fields(&mut c)?;
                    st.units.push(UnitRecord {
                        name,
                        life,
                        pidfd: None,
                        notify: None,
                        ready: None,
                        timers: Vec::new(),
                        log: None,
                        accept: None,
                    });
                }
                b"unit-fds" | b"unit-notify" | b"unit-timer" | b"unit-log" | b"unit-line"
                | b"unit-accept" | b"unit-instance" => read_unit_part(&mut st, tag, fields)?,
                b"socket" => {
                    let mut c = Cursor::new(fields, "socket");
                    st.sockets.push(SocketRecord {
                        service: c.text()?,
                        name: c.text()?,
                        fd: read_fd(&mut c)?,
                    });
                    c.done()?;
                }
                other => {
                    return Err(FormatError(format!(
                        "unknown record {}",
                        String::from_utf8_lossy(other)
                    )));
                }
            }
        }
        if !seen_listen || !seen_counters {
            return Err(FormatError("no listen or counters record".to_string()));
        }
        // Each counter goes on by one from what it was: one near its end would overflow.
        let counters = [st.next_client, st.next_seq, st.next_proc]
            .into_iter()
            .chain(st.clients.iter().flat_map(|c| [c.id, c.next_seq]))
            .chain(st.procs.iter().map(|p| p.row.id))
            .chain(
                st.units
                    .iter()
                    .flat_map(|u| u.accept.iter().flatten().map(|i| i.number)),
            );
        if counters.into_iter().any(|n| n > MAX_COUNTER) {
            return Err(FormatError(format!(
                "a counter or an id past {MAX_COUNTER}"
            )));
        }
        let mut fds = st.fds();
        fds.sort_unstable();
        if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
            return Err(FormatError(format!("fd {} is named twice", w[0])));
        }
        if fds.first().is_some_and(|&fd| fd < 3) {
            return Err(FormatError("an fd below 3 is named".to_string()));
        }
        Ok(st)
    }

    /// Every fd the state names.
    pub fn fds(&self) -> Vec<RawFd> {
        let l = &self.listen;
        let mut fds = vec![l.control, l.lock, l.bind];
        fds.extend(self.clients.iter().map(|c| c.fd));
        fds.extend(self.procs.iter().filter_map(|p| p.pidfd));
        for u in &self.units {
            fds.extend(u.pidfd);
            fds.extend(u.ready);
            fds.extend(u.notify.as_ref().map(|n| n.fd));
            if let Some(log) = &u.log {
                fds.extend(log.reads);
                fds.extend(log.writes.iter().flatten());
            }
            for i in u.accept.iter().flatten() {
                fds.extend(i.pidfd);
            }
        }
        fds.extend(self.sockets.iter().map(|s| s.fd));
        fds
    }
}

fn read_proc(fields: &[&[u8]]) -> Result<ProcRecord, FormatError> {
    let mut c = Cursor::new(fields, "proc");
    let id = c.num()?;
    let kind = c.with(Kind::from_field, "kind")?;
    let pid = read_pid(&mut c)?;
    let state = c.with(ProcState::from_field, "state")?;
    let started_ms = c.num()?;
    let status = c.opt_with(Status::from_field, "status")?;
    let pidfd = read_opt_fd(&mut c)?;
    let kill_in_ms = c.opt_num()?;
    let stop_by = read_cause(&mut c)?;
    let n: usize = c.num()?;
    let mut waiters = Vec::new();
    for _ in 0..n {
        let kind = c.bytes()?;
        let to = ReplyTo {
            client: c.num()?,
            seq: c.num()?,
        };
        waiters.push(match kind {
            b"run" => Waiter::Run(to),
            b"stop" => Waiter::Stop(to),
            _ => return Err(c.bad("waiter")),
        });
    }
    let argv = c.rest().iter().map(|a| a.to_vec()).collect();
    Ok(ProcRecord {
        row: ProcessRow {
            id,
            kind,
            pid,
            state,
            started_ms,
            status,
            argv,
        },
        pidfd,
        waiters,
        kill_in_ms,
        stop_by,
        on_exit: Vec::new(),
    })
}

fn read_unit_part(st: &mut State, tag: &[u8], fields: &[&[u8]]) -> Result<(), FormatError> {
    let mut c = Cursor::new(fields, "unit part");
    let name = c.bytes()?;
    let unit = st
        .units
        .iter_mut()
        .rev()
        .find(|u| u.name.as_bytes() == name)
        .ok_or_else(|| FormatError("a unit part before its unit".to_string()))?;
    match tag {
        b"unit-fds" => {
            unit.pidfd = read_opt_fd(&mut c)?;
            unit.ready = read_opt_fd(&mut c)?;
        }
        b"unit-accept" => unit.accept = Some(Vec::new()),
        b"unit-instance" => {
            let rec = InstanceRecord {
                number: c.num()?,
                pid: read_pid(&mut c)?,
                pidfd: read_opt_fd(&mut c)?,
                peer: c.text()?,
            };
            unit.accept
                .as_mut()
                .ok_or_else(|| FormatError("an instance before its acceptor".to_string()))?
                .push(rec);
        }
        b"unit-notify" => {
            unit.notify = Some(NotifyRecord {
                fd: read_fd(&mut c)?,
                path: read_path(&mut c)?,
                file_id: (c.num()?, c.num()?),
            });
        }
        b"unit-timer" => {
            let kind = c.with(
                |b| {
                    TIMERS
                        .iter()
                        .find(|(_, n)| n.as_bytes() == b)
                        .map(|(k, _)| *k)
                },
                "timer",
            )?;
            unit.timers.push((kind, c.num()?));
        }
        b"unit-log" => {
            let (r0, w0) = (read_fd(&mut c)?, read_opt_fd(&mut c)?);
            let (r1, w1) = (read_fd(&mut c)?, read_opt_fd(&mut c)?);
            let mut partial = [(Vec::new(), None), (Vec::new(), None)];
            for p in partial.iter_mut() {
                *p = (c.bytes()?.to_vec(), c.opt_num::<u8>()?);
            }
            unit.log = Some(LogRecord {
                reads: [r0, r1],
                writes: [w0, w1],
                partial,
                lines: Vec::new(),
            });
        }
        _ => {
            let line = LogLine {
                time_ms: c.num()?,
                stream: c.with(
                    |b| {
                        [LogStream::Stdout, LogStream::Stderr]
                            .into_iter()
                            .find(|s| s.as_str().as_bytes() == b)
                    },
                    "stream",
                )?,
                level: c.num::<u8>()?.min(archon_proto::log::LEVEL_DEBUG),
                cut: c.flag()?,
                text: c.bytes()?.to_vec(),
            };
            unit.log
                .as_mut()
                .ok_or_else(|| FormatError("a log line before its pipes".to_string()))?
                .lines
                .push(line);
        }
    }
    c.done()
}

// ----- the kernel's side -----

/// archon's own program, as it was started (to be taken before an upgrade replaces the file: the
/// path still names the new file then, where `/proc/self/exe` says `(deleted)`). Without `/proc`
/// (the machine's init before its early mounts), `argv[0]` when it is an absolute path: the
/// kernel starts `/init` by its path.
pub fn own_exe() -> Option<PathBuf> {
    let Ok(exe) = std::env::current_exe() else {
        let argv0 = PathBuf::from(std::env::args_os().next()?);
        return argv0.is_absolute().then_some(argv0);
    };
    let bytes = exe.as_os_str().as_bytes();
    Some(match bytes.strip_suffix(b" (deleted)") {
        Some(p) => PathBuf::from(OsStr::from_bytes(p)),
        None => exe,
    })
}

/// The arguments archon was started with, without a `--restore <fd>` of its own making.
pub fn original_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == RESTORE_ARG) {
        args.drain(..2.min(args.len()));
    }
    args
}

/// A memfd holding `bytes`, read from its start (close-on-exec).
pub fn write_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated string; memfd_create returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"archon-state".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    Ok(OwnedFd::from(f))
}

/// Everything in `fd` from its start.
pub fn read_all(fd: OwnedFd) -> io::Result<Vec<u8>> {
    // SAFETY: lseek on an fd we own; a pipe (which cannot seek) is read from where it is.
    unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_SET) };
    let mut f = std::fs::File::from(fd);
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Asks `exe` whether it can take over the state in `memfd`: `exe --check-restore <args>`, with
/// the state as stdin, must print [`CHECK_OK`] and exit 0 within [`CHECK_TIMEOUT`]. archon waits
/// for it (the loop stands still meanwhile).
pub fn check(exe: &Path, args: &[OsString], memfd: &OwnedFd) -> Result<(), String> {
    let stdin = memfd
        .try_clone()
        .map_err(|e| format!("cannot copy the state's fd: {e}"))?;
    // SAFETY: lseek on an fd we own (the copy shares the offset with the original).
    unsafe { libc::lseek(stdin.as_raw_fd(), 0, libc::SEEK_SET) };
    let mut child = std::process::Command::new(exe)
        .arg(CHECK_ARG)
        .args(args)
        .stdin(std::process::Stdio::from(stdin))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot execute {}: {e}", exe.display()))?;
    let ended = match crate::sys::pidfd_open(child.id() as i32) {
        Ok(pidfd) => wait_readable(&pidfd, CHECK_TIMEOUT),
        // No pidfd (out of fds): asked every few ms instead, within the same time.
        Err(_) => wait_polling(&mut child, CHECK_TIMEOUT),
    };
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "{} did not check the state within {} s",
            exe.display(),
            CHECK_TIMEOUT.as_secs()
        ));
    }
    let mut said = Vec::new();
    if let Some(out) = child.stdout.take() {
        // What it said before it exited is in the pipe; a process it left behind may hold the
        // pipe open, so nothing more is waited for.
        let fd = OwnedFd::from(out);
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        let mut f = std::fs::File::from(fd);
        let mut buf = [0u8; 256];
        while said.len() < 4096 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => said.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for {}: {e}", exe.display()))?;
    if status.success() && said == CHECK_OK {
        return Ok(());
    }
    if said.starts_with(CHECK_OK) || status.success() {
        return Err(format!(
            "{} is not an archon that can restore",
            exe.display()
        ));
    }
    Err(format!(
        "{} cannot take the state over ({status}; see archon's log)",
        exe.display()
    ))
}

/// Waits until `child` has ended, asking every 5 ms, at most `timeout`: false when the time ran
/// out. Its status stays in `child` for a later `wait`.
fn wait_polling(child: &mut std::process::Child, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if std::time::Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Waits until `fd` is readable, at most `timeout`: false when the time ran out.
fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
            return true;
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return n != 0;
        }
    }
}

/// Sets or clears close-on-exec on `fds`; the first error, after trying them all.
pub fn set_cloexec(fds: &[RawFd], on: bool) -> io::Result<()> {
    let mut first = Ok(());
    for &fd in fds {
        // SAFETY: fcntl on a number: at worst EBADF.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
        if r < 0 && first.is_ok() {
            first = Err(io::Error::last_os_error());
        }
    }
    first
}

/// Blocks `sigs`; the mask as it was.
pub fn block_signals(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, filled by sigemptyset; sigprocmask writes the old mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

/// Sets the signal mask back to `old`.
pub fn set_mask(old: &libc::sigset_t) {
    // SAFETY: a mask sigprocmask gave.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Unblocks every signal (the new image, once its handlers are in place).
pub fn unblock_all() {
    // SAFETY: an empty set, filled by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Executes `exe --restore <memfd> <args>`; returns only on failure, with why.
pub fn exec(exe: &Path, memfd: RawFd, args: &[OsString]) -> io::Error {
    let cstr = |b: &[u8]| CString::new(b.to_vec()).map_err(|_| io::ErrorKind::InvalidInput);
    let mut argv = Vec::with_capacity(args.len() + 3);
    for a in [
        exe.as_os_str().as_bytes(),
        RESTORE_ARG.as_bytes(),
        memfd.to_string().as_bytes(),
    ]
    .into_iter()
    .chain(args.iter().map(|a| a.as_bytes()))
    {
        match cstr(a) {
            Ok(c) => argv.push(c),
            Err(e) => return e.into(),
        }
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and a NULL-terminated array that outlive the call; the
    // environment is archon's own.
    unsafe { libc::execv(argv[0].as_ptr(), ptrs.as_ptr()) };
    io::Error::last_os_error()
}

/// Marks every fd from 3 on close-on-exec: what a new image inherited is owned from the start
/// by what takes it, and nothing leaks into its children.
pub fn cloexec_inherited() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags (Linux 5.11).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32) };
    if r == 0 {
        return;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<RawFd> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd >= 3)
            .collect();
        let _ = set_cloexec(&fds, true);
    }
}

/// Closes every fd from 3 on: a new image that cannot take the state over starts afresh.
pub fn close_inherited() {
    // SAFETY: close_range closes fds only; nothing of archon's is open yet but stdio.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// The fds a new image inherited, each handed out once to the value that owns it; those left
/// close with the bank.
pub struct FdBank {
    open: Vec<RawFd>,
}

impl FdBank {
    /// The fds of `fds` that are open now (to be made before archon opens anything, so that none
    /// of its own can be taken for one of these).
    pub fn new(fds: &[RawFd]) -> FdBank {
        let open = fds
            .iter()
            .copied()
            // SAFETY: F_GETFD only reads the flags: at worst EBADF.
            .filter(|&fd| fd >= 3 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
            .collect();
        FdBank { open }
    }

    /// Takes `fd`: `None` when it was not inherited or has been taken.
    pub fn take(&mut self, fd: RawFd) -> Option<OwnedFd> {
        let i = self.open.iter().position(|&f| f == fd)?;
        self.open.swap_remove(i);
        // SAFETY: an fd this process inherited, open, and named once in the state: nothing else
        // owns it.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// [`take`](Self::take) for an optional fd.
    pub fn take_opt(&mut self, fd: Option<RawFd>) -> Option<OwnedFd> {
        fd.and_then(|fd| self.take(fd))
    }

    /// How many fds nothing took.
    pub fn left(&self) -> usize {
        self.open.len()
    }
}

impl Drop for FdBank {
    fn drop(&mut self) {
        for fd in self.open.drain(..) {
            // SAFETY: inherited, open, and taken by nothing.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{Event, EventKind, ServiceKind};

    fn sample() -> State {
        let event = Event {
            seq: 7,
            time_ms: 1_000,
            subject: b"web".to_vec(),
            kind: ServiceKind::Service,
            what: EventKind::Spawn,
            old: None,
            new: None,
            pid: Some(12),
            status: None,
            reason: b"a, reason\nwith a newline".to_vec(),
            cause: Cause::Archon,
        };
        State {
            cause: Cause::Client { uid: 0, pid: 99 },
            reply_to: Some(ReplyTo { client: 4, seq: 2 }),
            listen: ListenRecord {
                path: "/run/archon/archon.sock".into(),
                control: 3,
                lock: 4,
                bind: 5,
                bind_path: "/run/archon/archon.sock.bind".into(),
            },
            next_client: 9,
            clients: vec![ClientRecord {
                id: 4,
                fd: 6,
                next_seq: 3,
                slots: vec![Some(b"Pong\n".to_vec()), None],
                inbuf: b"Ping\nList\0\xff".to_vec(),
                out: b"Ok\n".to_vec(),
                read_closed: false,
                closing: true,
                bind_only: false,
            }],
            next_seq: 8,
            history: vec![event.encode()],
            next_proc: 3,
            main: Some(2),
            children_nofile: Some((1024, 4096)),
            procs: vec![ProcRecord {
                row: ProcessRow {
                    id: 2,
                    kind: Kind::Daemon,
                    pid: 1234,
                    state: ProcState::Stopping,
                    started_ms: 17,
                    status: None,
                    argv: vec![b"sleep".to_vec(), b"1,000".to_vec()],
                },
                pidfd: Some(7),
                waiters: vec![Waiter::Stop(ReplyTo { client: 4, seq: 1 })],
                kill_in_ms: Some(300),
                stop_by: Cause::Client { uid: 0, pid: 99 },
                on_exit: vec![
                    (
                        Cause::Client { uid: 0, pid: 98 },
                        Command::new(["/bin/sh", "-c", "echo $ARCHON_ID", ""]),
                    ),
                    (
                        Cause::Client { uid: 1000, pid: 97 },
                        Command {
                            argv: vec![b"mail".to_vec()],
                            env: vec![
                                archon_proto::EnvEntry::set("A", "1,2"),
                                archon_proto::EnvEntry::unset("B"),
                            ],
                        },
                    ),
                ],
            }],
            units: vec![unit()],
            sockets: vec![SocketRecord {
                service: "web".into(),
                name: "http".into(),
                fd: 8,
            }],
        }
    }

    /// A unit with every part a record can carry: its life, fds, notify socket, timers, log
    /// pipes and lines.
    fn unit() -> UnitRecord {
        UnitRecord {
            name: "web".into(),
            life: Carried::sample(),
            pidfd: Some(9),
            notify: Some(NotifyRecord {
                fd: 10,
                path: "/run/archon/notify/web".into(),
                file_id: (3, 77),
            }),
            ready: Some(11),
            timers: vec![(TimerKind::Backoff, 100), (TimerKind::Health, 0)],
            log: Some(LogRecord {
                reads: [12, 14],
                writes: [Some(13), None],
                partial: [(b"half a li".to_vec(), Some(3)), (Vec::new(), None)],
                lines: vec![LogLine {
                    time_ms: 1_500,
                    stream: LogStream::Stderr,
                    level: 4,
                    cut: true,
                    text: b"a line, \n with \xff".to_vec(),
                }],
            }),
            accept: Some(vec![InstanceRecord {
                number: 1,
                pid: 4321,
                pidfd: Some(16),
                peer: "127.0.0.1:40312".into(),
            }]),
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let st = sample();
        assert_eq!(State::decode(&st.encode()), Ok(st.clone()));
        let mut fds = st.fds();
        fds.sort_unstable();
        assert_eq!(fds, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16]);
        let tags: Vec<Vec<u8>> = records(&st.encode())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.first().map(|t| t.to_vec()))
            .collect();
        for tag in [
            "origin",
            "listen",
            "counters",
            "event",
            "client",
            "slot",
            "proc",
            "proc-exit",
            "unit",
            "unit-fds",
            "unit-notify",
            "unit-timer",
            "unit-log",
            "unit-line",
            "unit-accept",
            "unit-instance",
            "socket",
            "end",
        ] {
            assert!(
                tags.contains(&tag.as_bytes().to_vec()),
                "the sample has no {tag}"
            );
        }
    }

    /// Each record dropped, doubled, or moved to the front: an error or a state, never a panic;
    /// each field of each record replaced by an odd value likewise.
    #[test]
    fn records_dropped_doubled_moved_or_with_odd_fields_are_no_panic() {
        let good = sample().encode();
        let recs = records(&good).unwrap_or_default();
        let rebuild = |recs: &[Vec<&[u8]>]| {
            let mut out = Vec::new();
            for r in recs {
                put(&mut out, r.iter());
            }
            out
        };
        for i in 0..recs.len() {
            let mut r = recs.clone();
            r.remove(i);
            let _ = State::decode(&rebuild(&r));
            let mut r = recs.clone();
            r.insert(i, recs[i].clone());
            let _ = State::decode(&rebuild(&r));
            let mut r = recs.clone();
            let moved = r.remove(i);
            r.insert(1, moved);
            let _ = State::decode(&rebuild(&r));
        }
        let odd: [&[u8]; 10] = [
            b"",
            b"-1",
            b"0",
            b"18446744073709551615",
            b"18446744073709551616",
            b"-9223372036854775809",
            b"2147483648",
            b"x",
            b"\xff\x00",
            b"99999999999999999999",
        ];
        for i in 0..recs.len() {
            for j in 0..recs[i].len() {
                for v in odd {
                    let mut r = recs.clone();
                    r[i][j] = v;
                    let _ = State::decode(&rebuild(&r));
                }
            }
        }
    }

    #[test]
    fn without_a_pidfd_the_check_is_waited_for_within_its_time() {
        let spawn = |prog: &str, arg: &str| std::process::Command::new(prog).arg(arg).spawn();
        let Ok(mut quick) = spawn("/bin/sleep", "0") else {
            return;
        };
        assert!(wait_polling(&mut quick, Duration::from_secs(10)));
        assert!(quick.wait().is_ok_and(|s| s.success()));
        let Ok(mut slow) = spawn("/bin/sleep", "10") else {
            return;
        };
        assert!(!wait_polling(&mut slow, Duration::from_millis(50)));
        let _ = slow.kill();
        let _ = slow.wait();
    }

    #[test]
    fn a_counter_or_an_id_at_its_end_is_refused() {
        for change in [
            |st: &mut State| st.next_seq = u64::MAX,
            |st: &mut State| st.next_client = u64::MAX,
            |st: &mut State| st.next_proc = MAX_COUNTER + 1,
            |st: &mut State| st.clients[0].id = u64::MAX,
            |st: &mut State| st.clients[0].next_seq = u64::MAX,
            |st: &mut State| st.procs[0].row.id = u64::MAX,
            |st: &mut State| {
                if let Some(i) = st.units[0].accept.as_mut().and_then(|a| a.first_mut()) {
                    i.number = u64::MAX;
                }
            },
        ] {
            let mut st = sample();
            change(&mut st);
            assert!(State::decode(&st.encode()).is_err(), "{st:?}");
        }
        let mut st = sample();
        st.next_seq = MAX_COUNTER;
        assert!(State::decode(&st.encode()).is_ok());
    }

    #[test]
    fn a_pid_below_1_is_refused() {
        let mut st = sample();
        st.procs[0].row.pid = 0;
        assert!(State::decode(&st.encode()).is_err(), "a proc of pid 0");
        st.procs[0].row.pid = -1;
        assert!(State::decode(&st.encode()).is_err(), "a proc of pid -1");
        let good = sample().encode();
        for bad in [&b"3:-1"[..], b"1:0"] {
            let text =
                String::from_utf8_lossy(&good).replace("2:42", &String::from_utf8_lossy(bad));
            assert!(
                State::decode(text.as_bytes()).is_err(),
                "a unit of pid {bad:?}"
            );
        }
    }

    #[test]
    fn a_state_cut_short_anywhere_is_refused() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(State::decode(&bytes[..n]).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = sample().encode();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            // xorshift: a byte changed, a length grown, a record dropped.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bad = good.clone();
            let i = (seed as usize) % bad.len();
            bad[i] = (seed >> 32) as u8;
            let _ = State::decode(&bad);
        }
        for bad in [
            &b""[..],
            b"\n",
            b"12:archon-state1:1\n3:end\n",
            b"12:archon-state1:2\n3:end\n",
            b"99999999999999999999:x\n",
            b"3:end",
            b"x:y\n",
        ] {
            assert!(State::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_fd_named_twice_is_refused() {
        let mut st = sample();
        st.sockets[0].fd = 6;
        let e = State::decode(&st.encode());
        assert_eq!(e, Err(FormatError("fd 6 is named twice".to_string())));
        st.sockets[0].fd = 2;
        assert!(State::decode(&st.encode()).is_err());
    }

    #[test]
    fn the_bank_hands_an_fd_out_once() {
        let a = std::fs::File::open("/dev/null").map(OwnedFd::from);
        let Ok(a) = a else { return };
        let raw = a.as_raw_fd();
        std::mem::forget(a);
        let mut bank = FdBank::new(&[raw, 100_000]);
        assert_eq!(bank.left(), 1, "a closed fd is not in the bank");
        assert!(bank.take(100_000).is_none());
        let got = bank.take(raw);
        assert!(got.is_some());
        assert!(bank.take(raw).is_none(), "taken once");
    }
}
