//! Captured logs: each service's stdout and stderr, through pipes archon holds across restarts,
//! cut into lines, kept in a ring bounded in bytes, appended to a rotated file if asked, and
//! streamed to the connections that follow them.
//!
//! archon makes a service's two pipes once, at its first start, and keeps their read ends
//! registered in the loop until the service is removed: every process of the service writes
//! into the same pipes as its fds 1 and 2, so a line buffered in a pipe when a process ends is
//! read after it, and a restart loses nothing (the s6-log property). Two pipes, not one, so that
//! each line says which stream it came from; the price is that the order between a stdout line
//! and a stderr line written within the same turn of the loop is not kept.
//!
//! archon does not keep the write ends: each spawn opens new ones from the read ends
//! (`/proc/self/fd/N` opened for writing is a new writer of the same pipe), the child gets them,
//! and archon closes its copies after the clone. Only the read ends stay in archon's fd table:
//! a child's clone copies that table and its exec closes every close-on-exec entry, so the
//! fewer fds archon holds per service, the faster a burst of thousands of starts (two of the
//! five fds per service gone). Between two processes a pipe has no writer: the read end is at
//! end-of-file once drained, which the loop, edge-triggered, hears of once. Where `/proc` cannot
//! reopen a pipe (not mounted yet, at boot), archon keeps that pipe's write end and gives every
//! process a copy of it, as it always did.
//!
//! The pure parts ([`Splitter`], [`Ring`], [`rotation`], [`Followers`]) are tested without a
//! pipe; [`ServiceLog`] holds the fds and the file.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use archon_lua::Log as LogConfig;
use archon_proto::limits::{MAX_LOG_LINE, MAX_LOGS_REPLY};
use archon_proto::log::{DEFAULT_LEVEL, level_name};
use archon_proto::{LogLine, LogStream, StreamItem};

use crate::events::{Offer, Pace};
use crate::service::UnitId;
use crate::table::ClientId;

/// Most bytes read from one pipe per turn of the loop (64 KiB, a pipe's default capacity):
/// a service that floods its output is served as fast as the others, not instead of them; the
/// rest is read on the next turn.
pub const LOG_READ_PER_TURN: usize = 64 * 1024;

/// What a kept line costs the ring beyond its text, in bytes: its record and the allocator's
/// share. The ring's budget counts each line as its length plus this.
pub const LINE_OVERHEAD: usize = 48;

/// The mode of a log file archon creates.
const FILE_MODE: u32 = 0o640;

/// A piece of output ready to be kept: one line, or the part of a long one that fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The text, without the `<N>` prefix and the line's end.
    pub text: &'a [u8],
    /// From the prefix of the line's first piece, else [`DEFAULT_LEVEL`].
    pub level: u8,
    /// Cut at [`MAX_LOG_LINE`]: the line goes on in the next piece.
    pub cut: bool,
}

impl Piece<'_> {
    /// The piece as a line of `stream` read at `now_ms`; a NUL, which the wire cannot carry,
    /// becomes `?`.
    fn line(&self, now_ms: u64, stream: LogStream, cut: bool) -> LogLine {
        LogLine {
            time_ms: now_ms,
            stream,
            level: self.level,
            text: self
                .text
                .iter()
                .map(|&b| if b == 0 { b'?' } else { b })
                .collect(),
            cut,
        }
    }
}

/// The level of a line from its sd-daemon prefix `<N>` (N from 0 to 7), and the text after it.
pub fn parse_prefix(line: &[u8]) -> (u8, &[u8]) {
    match line {
        [b'<', d @ b'0'..=b'7', b'>', rest @ ..] => (d - b'0', rest),
        _ => (DEFAULT_LEVEL, line),
    }
}

/// Cuts a byte stream into lines, holding at most [`MAX_LOG_LINE`] bytes of a partial one.
#[derive(Debug, Default)]
pub struct Splitter {
    partial: Vec<u8>,
    /// The level of the line whose first piece was cut, for the pieces that follow.
    going_on: Option<u8>,
}

impl Splitter {
    /// Feeds `bytes`; `emit` gets each line completed and each piece cut.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(Piece<'_>)) {
        while !bytes.is_empty() {
            let room = MAX_LOG_LINE - self.partial.len();
            match memchr::memchr(b'\n', bytes) {
                Some(i) if i <= room => {
                    let line = if self.partial.is_empty() {
                        &bytes[..i]
                    } else {
                        self.partial.extend_from_slice(&bytes[..i]);
                        &self.partial[..]
                    };
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    emit(piece(&mut self.going_on, line, false));
                    self.partial.clear();
                    bytes = &bytes[i + 1..];
                }
                _ if room == 0 => {
                    // Full, and more than a line end follows: cut here.
                    let full = std::mem::take(&mut self.partial);
                    emit(piece(&mut self.going_on, &full, true));
                    self.partial = full;
                    self.partial.clear();
                }
                _ => {
                    let take = room.min(bytes.len());
                    self.partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                }
            }
        }
    }

    /// The line not yet ended, and the level of a cut line going on (for a re-exec).
    pub fn carry(&self) -> (Vec<u8>, Option<u8>) {
        (self.partial.clone(), self.going_on)
    }

    /// A splitter as [`carry`](Self::carry) left it.
    pub fn restored(partial: Vec<u8>, going_on: Option<u8>) -> Splitter {
        let mut partial = partial;
        partial.truncate(MAX_LOG_LINE);
        Splitter { partial, going_on }
    }

    /// Bytes of a line not yet ended.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// The line not yet ended, as a last line (the service is going away).
    pub fn finish(&mut self, emit: impl FnOnce(Piece<'_>)) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            emit(piece(&mut self.going_on, &rest, false));
        }
    }
}

/// `line` as a piece: its level from its prefix, or from the line it goes on (`going_on`).
fn piece<'a>(going_on: &mut Option<u8>, line: &'a [u8], cut: bool) -> Piece<'a> {
    let (level, text) = match *going_on {
        Some(level) => (level, line),
        None => parse_prefix(line),
    };
    *going_on = cut.then_some(level);
    Piece { text, level, cut }
}

/// One line kept.
#[derive(Debug)]
struct Kept {
    time_ms: u64,
    text: Box<[u8]>,
    stream: LogStream,
    level: u8,
    cut: bool,
}

impl Kept {
    fn cost(&self) -> usize {
        self.text.len() + LINE_OVERHEAD
    }

    fn line(&self) -> LogLine {
        LogLine {
            time_ms: self.time_ms,
            stream: self.stream,
            level: self.level,
            text: self.text.to_vec(),
            cut: self.cut,
        }
    }
}

/// The newest lines of a service, within a budget in bytes; the oldest go first.
#[derive(Debug, Default)]
pub struct Ring {
    lines: VecDeque<Kept>,
    bytes: usize,
    budget: usize,
}

impl Ring {
    /// An empty ring of `budget` bytes.
    pub fn new(budget: usize) -> Ring {
        Ring {
            budget,
            ..Ring::default()
        }
    }

    /// A new budget: the oldest lines go until the rest fits.
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        self.evict(0);
    }

    fn evict(&mut self, room: usize) {
        while self.bytes + room > self.budget {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
        }
    }

    /// Keeps `line`, forgetting the oldest as needed; a line larger than the budget is not kept.
    pub fn push(&mut self, line: &LogLine) {
        let kept = Kept {
            time_ms: line.time_ms,
            text: line.text.as_slice().into(),
            stream: line.stream,
            level: line.level,
            cut: line.cut,
        };
        let cost = kept.cost();
        if cost > self.budget {
            return;
        }
        self.evict(cost);
        self.bytes += cost;
        self.lines.push_back(kept);
    }

    /// Every line kept, oldest first (for a re-exec).
    pub fn lines(&self) -> impl Iterator<Item = LogLine> + '_ {
        self.lines.iter().map(Kept::line)
    }

    /// The bytes the ring counts.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The newest lines at `level` or more severe, at most `max` and at most
    /// [`MAX_LOGS_REPLY`] bytes of rows, oldest first.
    pub fn tail(&self, level: u8, max: usize) -> Vec<LogLine> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for k in self.lines.iter().rev().filter(|k| k.level <= level) {
            if out.len() >= max {
                break;
            }
            let line = k.line();
            let len = line.encode().len();
            if bytes + len > MAX_LOGS_REPLY {
                break;
            }
            bytes += len;
            out.push(line);
        }
        out.reverse();
        out
    }
}

/// The rotated file `n` of `path`: `path.n` (1 is the newest).
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// The renames that rotate `path` keeping `keep` old files, in order: `(from, Some(to))`, or
/// `(file, None)` to remove it. The oldest goes, each other moves up one, `path` becomes
/// `path.1`.
pub fn rotation(path: &Path, keep: u32) -> Vec<(PathBuf, Option<PathBuf>)> {
    if keep == 0 {
        return vec![(path.to_path_buf(), None)];
    }
    let mut plan = vec![(rotated(path, keep), None)];
    for n in (1..keep).rev() {
        plan.push((rotated(path, n), Some(rotated(path, n + 1))));
    }
    plan.push((path.to_path_buf(), Some(rotated(path, 1))));
    plan
}

/// A log file: appended to, rotated past its size.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
    /// Lines of this turn, written with one `write`.
    buf: Vec<u8>,
}

impl LogFile {
    /// Opens (creates) `config`'s file for appending, close-on-exec.
    pub fn open(config: &LogConfig) -> io::Result<Option<LogFile>> {
        let Some(path) = config.file.clone() else {
            return Ok(None);
        };
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(Some(LogFile {
            path,
            file,
            size,
            max_size: config.max_size,
            keep: config.keep,
            buf: Vec::new(),
        }))
    }

    /// Whether this is the file `config` asks for.
    pub fn is(&self, config: &LogConfig) -> bool {
        config.file.as_deref() == Some(&self.path)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a line, rotating first if it would take the file past its size.
    pub fn push(&mut self, line: &LogLine) -> io::Result<()> {
        let text = format!(
            "{} {} {} ",
            crate::log::format_utc(line.time_ms),
            line.stream.as_str(),
            level_name(line.level)
        );
        let len = (text.len() + line.text.len() + 1) as u64;
        let used = self.size + self.buf.len() as u64;
        if used > 0 && used + len > self.max_size {
            self.flush()?;
            self.rotate()?;
        }
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.extend_from_slice(&line.text);
        self.buf.push(b'\n');
        Ok(())
    }

    /// Writes the lines added since the last flush.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.file.write_all(&self.buf);
        self.size += self.buf.len() as u64;
        self.buf.clear();
        r
    }

    fn rotate(&mut self) -> io::Result<()> {
        for (from, to) in rotation(&self.path, self.keep) {
            let r = match &to {
                Some(to) => std::fs::rename(&from, to),
                None => std::fs::remove_file(&from),
            };
            match r {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    // std opens every file close-on-exec.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)
}

/// One of a service's pipes: the read end archon watches, and the partial line.
#[derive(Debug)]
pub struct Pipe {
    /// Registered in the loop (non-blocking).
    pub read: mio::unix::pipe::Receiver,
    /// A write end archon keeps, only where `/proc` could not open one from the read end
    /// (blocking, close-on-exec): every process gets a copy of it.
    held: Option<OwnedFd>,
    splitter: Splitter,
}

impl Pipe {
    /// A new pipe, and a write end for the first process.
    fn new() -> io::Result<(Pipe, OwnedFd)> {
        let (sender, read) = mio::unix::pipe::new()?;
        // The service sees an ordinary, blocking fd; archon's reads stay non-blocking (the two
        // ends are separate open files).
        sender.set_nonblocking(false)?;
        let sender = OwnedFd::from(sender);
        let held = if reopens() || reopen(&read).is_ok() {
            None
        } else {
            Some(sender.try_clone()?)
        };
        let pipe = Pipe {
            read,
            held,
            splitter: Splitter::default(),
        };
        Ok((pipe, sender))
    }

    /// A new write end of the pipe, for a process about to start.
    fn writer(&self) -> io::Result<OwnedFd> {
        match &self.held {
            Some(w) => w.try_clone(),
            None => reopen(&self.read),
        }
    }
}

/// Set once `/proc/self/fd` has reopened a pipe: it is mounted, and stays so.
static REOPENS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn reopens() -> bool {
    REOPENS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A new write end of the pipe `read` is the read end of: blocking, close-on-exec.
fn reopen(read: &impl AsRawFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", read.as_raw_fd());
    let w = std::fs::OpenOptions::new().write(true).open(path)?;
    REOPENS.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(OwnedFd::from(w))
}

/// What a read of a pipe gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// The pipe is empty for now.
    Empty,
    /// The turn's budget is spent and there may be more.
    More,
}

/// Everything archon holds of one service's output.
#[derive(Debug)]
pub struct ServiceLog {
    /// stdout, then stderr.
    pub pipes: [Pipe; 2],
    ring: Ring,
    /// Boxed: most services have none, and thousands of services each have a `ServiceLog`.
    file: Option<Box<LogFile>>,
    /// The file asked for and not open (warned once until the next start).
    file_failed: bool,
}

/// The streams, in the order of [`ServiceLog::pipes`].
pub const STREAMS: [LogStream; 2] = [LogStream::Stdout, LogStream::Stderr];

impl ServiceLog {
    /// The pipes of a service, and its ring; and the write ends for its first process
    /// (stdout's, stderr's).
    pub fn new(config: &LogConfig) -> io::Result<(ServiceLog, [OwnedFd; 2])> {
        let (out, out_w) = Pipe::new()?;
        let (err, err_w) = Pipe::new()?;
        let log = ServiceLog {
            pipes: [out, err],
            ring: Ring::new(config.ring),
            file: None,
            file_failed: false,
        };
        Ok((log, [out_w, err_w]))
    }

    /// At each start: the ring's budget and the file as `config` has them now. A file that
    /// cannot be opened is the error (the lines stay in memory).
    pub fn configure(&mut self, config: &LogConfig) -> Result<(), String> {
        self.ring.set_budget(config.ring);
        if let Some(f) = self.file.as_mut() {
            if f.is(config) {
                f.max_size = config.max_size;
                f.keep = config.keep;
                return Ok(());
            }
            let _ = f.flush();
        }
        self.file = None;
        self.file_failed = false;
        match LogFile::open(config) {
            Ok(f) => {
                self.file = f.map(Box::new);
                Ok(())
            }
            Err(e) => {
                self.file_failed = true;
                let path = config.file.as_deref().unwrap_or(Path::new(""));
                Err(format!(
                    "cannot open the log file {}: {e}; its lines stay in memory only",
                    path.display()
                ))
            }
        }
    }

    /// New write ends of the pipes, for a process of the service to get as fds 1 and 2;
    /// archon closes them once it has started the process.
    pub fn writers(&self) -> io::Result<[OwnedFd; 2]> {
        Ok([self.pipes[0].writer()?, self.pipes[1].writer()?])
    }

    /// Reads at most [`LOG_READ_PER_TURN`] bytes of pipe `i` into `buf`, and hands each line to the
    /// ring, the file and `out`. An error writing the file is returned once; the file is then
    /// dropped.
    pub fn read(
        &mut self,
        i: usize,
        buf: &mut [u8],
        now_ms: u64,
        out: &mut Vec<LogLine>,
    ) -> (Drained, Option<String>) {
        let Some(pipe) = self.pipes.get_mut(i) else {
            return (Drained::Empty, None);
        };
        let stream = STREAMS[i];
        let want = buf.len().min(LOG_READ_PER_TURN);
        let n = loop {
            // SAFETY: reading into a valid buffer of at least `want` bytes.
            let n = unsafe { libc::read(pipe.read.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            if n >= 0 {
                break n as usize;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                // WouldBlock, or an error a pipe does not give: nothing to read now.
                return (Drained::Empty, None);
            }
        };
        if n == 0 {
            // End of file: no process of the service holds a write end now. The next one
            // gets new write ends, and the poll (edge-triggered) wakes the loop when it writes.
            return (Drained::Empty, None);
        }
        pipe.splitter
            .push(&buf[..n], |p| out.push(p.line(now_ms, stream, p.cut)));
        let err = self.keep(out);
        (
            if n == want {
                Drained::More
            } else {
                Drained::Empty
            },
            err,
        )
    }

    /// The partial lines, as last lines: the service is going away.
    pub fn finish(&mut self, now_ms: u64, out: &mut Vec<LogLine>) -> Option<String> {
        for (pipe, stream) in self.pipes.iter_mut().zip(STREAMS) {
            pipe.splitter
                .finish(|p| out.push(p.line(now_ms, stream, false)));
        }
        let err = self.keep(out);
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
        }
        err
    }

    fn keep(&mut self, lines: &[LogLine]) -> Option<String> {
        for line in lines {
            self.ring.push(line);
        }
        let f = self.file.as_mut()?;
        let r = lines
            .iter()
            .try_for_each(|l| f.push(l))
            .and_then(|()| f.flush());
        let e = r.err()?;
        let why = format!(
            "cannot write the log file {}: {e}; its lines stay in memory only",
            f.path().display()
        );
        self.file = None;
        self.file_failed = true;
        Some(why)
    }

    /// What a re-exec carries: the pipes' read ends, the write ends archon keeps (stdout's,
    /// then stderr's), their partial lines, and the ring's lines.
    pub fn carry(&self) -> crate::reexec::LogRecord {
        let [o, e] = &self.pipes;
        let held = |p: &Pipe| p.held.as_ref().map(|w| w.as_raw_fd());
        crate::reexec::LogRecord {
            reads: [o.read.as_raw_fd(), e.read.as_raw_fd()],
            writes: [held(o), held(e)],
            partial: [o.splitter.carry(), e.splitter.carry()],
            lines: self.ring.lines().collect(),
        }
    }

    /// A service's log carried across a re-exec: its pipes (the read end and the write end
    /// archon keeps, if any, of stdout, then of stderr), partial lines and ring; the file is
    /// opened again as `config` says.
    pub fn restored(
        pipes: [(OwnedFd, Option<OwnedFd>); 2],
        rec: &crate::reexec::LogRecord,
        config: &LogConfig,
    ) -> ServiceLog {
        let [(r0, w0), (r1, w1)] = pipes;
        let pipe = |read: OwnedFd,
                    held: Option<OwnedFd>,
                    (partial, going_on): &(Vec<u8>, Option<u8>)| Pipe {
            read: mio::unix::pipe::Receiver::from(read),
            held,
            splitter: Splitter::restored(partial.clone(), *going_on),
        };
        let mut ring = Ring::new(config.ring);
        for line in &rec.lines {
            ring.push(line);
        }
        let mut log = ServiceLog {
            pipes: [pipe(r0, w0, &rec.partial[0]), pipe(r1, w1, &rec.partial[1])],
            ring,
            file: None,
            file_failed: false,
        };
        if let Err(why) = log.configure(config) {
            crate::warn!("{why}");
        }
        log
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}

/// One connection that follows a service's lines.
#[derive(Debug)]
struct Follower {
    unit: UnitId,
    level: u8,
    pace: Pace,
    touched: bool,
}

/// The connections that `FollowLogs` turned into streams.
#[derive(Debug, Default)]
pub struct Followers {
    by_client: BTreeMap<ClientId, Follower>,
    touched: Vec<ClientId>,
}

impl Followers {
    /// Connection `id` gets the lines of `unit` at `level` or more severe from now on.
    pub fn follow(&mut self, id: ClientId, unit: UnitId, level: u8) {
        self.by_client.insert(
            id,
            Follower {
                unit,
                level,
                pace: Pace::default(),
                touched: false,
            },
        );
    }

    /// Connection `id` is gone.
    pub fn unfollow(&mut self, id: ClientId) {
        self.by_client.remove(&id);
    }

    /// Whether anyone follows `unit`.
    pub fn any_for(&self, unit: UnitId) -> bool {
        self.by_client.values().any(|f| f.unit == unit)
    }

    /// The followers of `unit` that want a line of `level`.
    pub fn wanting(&self, unit: UnitId, level: u8) -> Vec<ClientId> {
        self.by_client
            .iter()
            .filter(|(_, f)| f.unit == unit && level <= f.level)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether follower `id`, with `backlog` bytes unread, gets a line of `len` bytes (see
    /// [`Pace::offer`]); one that gets it is marked for the end-of-turn flush.
    pub fn offer(&mut self, id: ClientId, backlog: usize, len: usize) -> Offer {
        let Some(f) = self.by_client.get_mut(&id) else {
            return Offer::Drop;
        };
        let offer = f.pace.offer(backlog, len);
        if offer != Offer::Drop && !f.touched {
            f.touched = true;
            self.touched.push(id);
        }
        offer
    }

    /// The `Dropped,<n>` line for follower `id` when a count is due.
    pub fn catch_up(&mut self, id: ClientId, backlog: usize) -> Option<Vec<u8>> {
        let n = self.by_client.get_mut(&id)?.pace.catch_up(backlog)?;
        Some(StreamItem::Dropped(n).encode())
    }

    /// The followers given lines since the last call: to flush.
    pub fn take_touched(&mut self) -> Vec<ClientId> {
        for id in &self.touched {
            if let Some(f) = self.by_client.get_mut(id) {
                f.touched = false;
            }
        }
        std::mem::take(&mut self.touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &mut Splitter, bytes: &[u8]) -> Vec<(String, u8, bool)> {
        let mut out = Vec::new();
        s.push(bytes, |p| {
            out.push((String::from_utf8_lossy(p.text).into_owned(), p.level, p.cut))
        });
        out
    }

    #[test]
    fn lines_are_cut_at_their_ends_and_partial_ones_wait() {
        let mut s = Splitter::default();
        assert_eq!(
            split(&mut s, b"one\r\n<3>two\nthr"),
            [("one".into(), 6, false), ("two".into(), 3, false)]
        );
        assert_eq!(s.pending(), 3);
        assert_eq!(split(&mut s, b"ee"), []);
        assert_eq!(
            split(&mut s, b"\n\n"),
            [("three".into(), 6, false), ("".into(), 6, false)]
        );
        let mut last = Vec::new();
        split(&mut s, b"<4>tail");
        s.finish(|p| last.push((p.text.to_vec(), p.level)));
        assert_eq!(last, [(b"tail".to_vec(), 4)]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn a_long_line_is_cut_and_its_pieces_keep_its_level() {
        let mut s = Splitter::default();
        let mut long = b"<2>".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LOG_LINE * 2));
        long.extend(b"\n");
        let got = split(&mut s, &long);
        let shape: Vec<(usize, u8, bool)> = got.iter().map(|(t, l, c)| (t.len(), *l, *c)).collect();
        assert_eq!(
            shape,
            [
                (MAX_LOG_LINE - 3, 2, true),
                (MAX_LOG_LINE, 2, true),
                (3, 2, false)
            ]
        );
        // Exactly the limit, then its end: one whole line.
        let mut exact = vec![b'y'; MAX_LOG_LINE];
        exact.push(b'\n');
        let got = split(&mut s, &exact);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.len(), got[0].2), (MAX_LOG_LINE, false));
        // Fed a byte at a time, the same.
        let mut bytes = Splitter::default();
        let mut n = 0;
        for b in &long {
            n += split(&mut bytes, std::slice::from_ref(b)).len();
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn prefixes_are_one_digit_from_0_to_7() {
        assert_eq!(parse_prefix(b"<0>x"), (0, &b"x"[..]));
        assert_eq!(parse_prefix(b"<7>"), (7, &b""[..]));
        assert_eq!(parse_prefix(b"<8>x"), (DEFAULT_LEVEL, &b"<8>x"[..]));
        assert_eq!(parse_prefix(b"<12>x"), (DEFAULT_LEVEL, &b"<12>x"[..]));
        assert_eq!(parse_prefix(b" <3>x"), (DEFAULT_LEVEL, &b" <3>x"[..]));
    }

    fn line(text: &str, level: u8) -> LogLine {
        LogLine {
            time_ms: 1,
            stream: LogStream::Stdout,
            level,
            text: text.as_bytes().to_vec(),
            cut: false,
        }
    }

    fn texts(lines: &[LogLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(&l.text).into_owned())
            .collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_budget() {
        let cost = "line-0000".len() + LINE_OVERHEAD;
        let mut r = Ring::new(3 * cost);
        for i in 0..5 {
            r.push(&line(&format!("line-{i:04}"), if i == 3 { 3 } else { 6 }));
        }
        assert_eq!(r.bytes(), 3 * cost);
        assert_eq!(
            texts(&r.tail(7, usize::MAX)),
            ["line-0002", "line-0003", "line-0004"]
        );
        assert_eq!(texts(&r.tail(7, 1)), ["line-0004"]);
        assert_eq!(texts(&r.tail(3, usize::MAX)), ["line-0003"]);
        r.push(&line(&"z".repeat(4 * cost), 6));
        assert_eq!(r.tail(7, usize::MAX).len(), 3, "too large to keep");
        r.set_budget(cost);
        assert_eq!(texts(&r.tail(7, usize::MAX)), ["line-0004"]);
        let mut none = Ring::new(0);
        none.push(&line("x", 6));
        assert!(none.tail(7, usize::MAX).is_empty());
    }

    #[test]
    fn rotation_moves_each_file_up_one_and_drops_the_oldest() {
        let p = Path::new("/l/current");
        let show = |plan: Vec<(PathBuf, Option<PathBuf>)>| -> Vec<String> {
            plan.iter()
                .map(|(a, b)| match b {
                    Some(b) => format!("{} -> {}", a.display(), b.display()),
                    None => format!("rm {}", a.display()),
                })
                .collect()
        };
        assert_eq!(
            show(rotation(p, 3)),
            [
                "rm /l/current.3",
                "/l/current.2 -> /l/current.3",
                "/l/current.1 -> /l/current.2",
                "/l/current -> /l/current.1"
            ]
        );
        assert_eq!(
            show(rotation(p, 1)),
            ["rm /l/current.1", "/l/current -> /l/current.1"]
        );
        assert_eq!(show(rotation(p, 0)), ["rm /l/current"]);
    }

    #[test]
    fn followers_get_their_units_lines_at_their_level() {
        let mut f = Followers::default();
        f.follow(1, 10, 7);
        f.follow(2, 10, 3);
        f.follow(3, 11, 7);
        assert_eq!(f.wanting(10, 6), [1]);
        assert_eq!(f.wanting(10, 3), [1, 2]);
        assert!(f.any_for(11));
        f.unfollow(3);
        assert!(!f.any_for(11));
        assert_eq!(f.offer(1, 0, 10), Offer::Send { dropped: 0 });
        assert_eq!(f.take_touched(), [1]);
        assert_eq!(
            f.offer(1, archon_proto::limits::MAX_EVENT_BACKLOG, 10),
            Offer::Drop
        );
        assert_eq!(f.catch_up(1, 0), Some(b"Dropped,1\n".to_vec()));
    }
}
