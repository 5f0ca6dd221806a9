//! A connection to archon: send requests (with descriptors), read replies in order.
//!
//! Plain blocking I/O on one `UnixStream`, no threads and no global state, so that a C library
//! and an `LD_PRELOAD` shim can sit on it. Every request gets exactly one reply, in request order,
//! so requests may be pipelined: [`Client::send`] several, then [`Client::receive`] as many.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use archon_proto::reply::ready;
use archon_proto::socket::socket_path;
use archon_proto::{
    BindAddr, Command, Event, Filter, Id, LogLine, Power, ProcessRow, ReloadCounts, Reply,
    ReplyError, Request, ServiceRow, Setting, Status, Target, TreeNode,
};

use crate::error::Error;
use crate::raw::with_newline;
use crate::reader::{Received, ReceivedItem, ReplyReader};
use crate::recv::recv_chunk;
use crate::send::send_line;

/// Size of each `read` from the socket, in bytes: most replies fit in one.
const READ_CHUNK: usize = 8 * 1024;

/// The socket path: `explicit` if given and not empty, else `$ARCHON_SOCKET`, else
/// `/run/archon/archon.sock` for root and `$XDG_RUNTIME_DIR/archon.sock` for anyone else.
pub fn resolve_socket(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let var = |name: &str| -> Option<OsString> { std::env::var_os(name) };
    Ok(socket_path(explicit.map(Path::as_os_str), var, euid)?)
}

/// One connection to archon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    reader: ReplyReader,
    path: Option<PathBuf>,
    /// Bytes read from the stream, and bytes of the replies returned: where each reply ends.
    read: u64,
    returned: u64,
    /// Descriptors received, each batch with the stream offset of the last byte of its read.
    fds: VecDeque<(u64, Vec<OwnedFd>)>,
}

impl Client {
    /// Connects to archon's socket, found by [`resolve_socket`].
    pub fn connect(socket: Option<&Path>) -> Result<Client, Error> {
        let path = resolve_socket(socket)?;
        Client::connect_to(&path)
    }

    /// Connects to the socket at `path`, as given.
    pub fn connect_to(path: &Path) -> Result<Client, Error> {
        // std opens the socket close-on-exec: a program that later execs leaks nothing.
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut client = Client::from_stream(stream);
        client.path = Some(path.to_path_buf());
        Ok(client)
    }

    /// A client on a stream that is already connected (a socketpair, a test's listener).
    pub fn from_stream(stream: UnixStream) -> Client {
        Client {
            stream,
            reader: ReplyReader::new(),
            path: None,
            read: 0,
            returned: 0,
            fds: VecDeque::new(),
        }
    }

    /// The socket's path, when the client connected by path.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Makes [`receive`](Self::receive) fail with [`Error::TimedOut`] when no byte comes for
    /// `timeout`; `None` waits for ever (the default). A `Run` can take as long as its command.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.stream.set_read_timeout(timeout).map_err(Error::Io)
    }

    /// Makes a send that blocks for `timeout` fail with [`Error::TimedOut`] (archon stops reading
    /// a connection that has many requests unanswered); `None` waits for ever (the default).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.stream.set_write_timeout(timeout).map_err(Error::Io)
    }

    /// Sends `request`, with `fds` attached: `Run` and `StartDaemon` take up to three (stdin,
    /// stdout, stderr), `MonitorFD` exactly one pidfd. The descriptors stay the caller's; archon
    /// gets its own copies.
    pub fn send(&mut self, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let line = request.encode()?;
        send_line(self.stream.as_fd(), &line, fds)
    }

    /// Sends `line` as it is, with a `\n` appended when it does not end with one, and `fds`
    /// attached. Nothing is checked: archon answers a bad line with `Error`, and it answers more
    /// than [`MAX_FDS_PER_REQUEST`](archon_proto::limits::MAX_FDS_PER_REQUEST) descriptors
    /// with `Error` too (the library sends them, so that this can be tested).
    pub fn send_line(&mut self, line: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        if line.last() == Some(&b'\n') {
            send_line(self.stream.as_fd(), line, fds)
        } else {
            send_line(self.stream.as_fd(), &with_newline(line), fds)
        }
    }

    /// Shuts down the sending side: archon sees the end of the stream, answers what it has
    /// (an unterminated last line with `Error`), and the replies can still be read.
    pub fn shutdown_write(&self) -> Result<(), Error> {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(Error::Io)
    }

    /// Reads the next reply (a `List` with all its rows), typed and as received. Descriptors
    /// that came with it are closed.
    pub fn receive(&mut self) -> Result<Received, Error> {
        self.receive_with_fds().map(|(received, _)| received)
    }

    /// Reads the next reply, with the descriptors that came with it (a `Bind`'s socket), owned
    /// by the caller and close-on-exec.
    pub fn receive_with_fds(&mut self) -> Result<(Received, Vec<OwnedFd>), Error> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(received) = self.reader.next_reply()? {
                self.returned += received.raw.len() as u64;
                let mut fds = Vec::new();
                while self.fds.front().is_some_and(|(at, _)| *at < self.returned) {
                    if let Some((_, batch)) = self.fds.pop_front() {
                        fds.extend(batch);
                    }
                }
                return Ok((received, fds));
            }
            let got = recv_chunk(self.stream.as_fd(), &mut chunk)?;
            if got.len == 0 {
                return Err(Error::Closed);
            }
            self.read += got.len as u64;
            if !got.fds.is_empty() {
                self.fds.push_back((self.read - 1, got.fds));
            }
            self.reader.feed(&chunk[..got.len]);
        }
    }

    /// Sends `request` and reads its reply. An `Error` reply is returned as a reply, not as
    /// [`Error::Refused`].
    pub fn request(&mut self, request: &Request, fds: &[BorrowedFd<'_>]) -> Result<Reply, Error> {
        self.send(request, fds)?;
        Ok(self.receive()?.reply)
    }

    /// Runs `command` and waits for it to end: how it ended, or [`Error::Refused`] with archon's
    /// reason (it cannot be executed, or `busy`). `stdio` (up to three) become its stdin, stdout
    /// and stderr.
    pub fn run(&mut self, command: &Command, stdio: &[BorrowedFd<'_>]) -> Result<Status, Error> {
        match self.request(&Request::Run(command.clone()), stdio)? {
            Reply::ExitStatus(status) => Ok(status),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Starts `command` as a daemon that archon monitors: its id and pid, once it has been
    /// executed. `stdio` (up to three) become its stdin, stdout and stderr.
    pub fn start_daemon(
        &mut self,
        command: &Command,
        stdio: &[BorrowedFd<'_>],
    ) -> Result<(Id, i32), Error> {
        let reply = self.request(&Request::StartDaemon(command.clone()), stdio)?;
        id_and_pid(reply)
    }

    /// Asks archon to watch the process `pidfd` refers to: its id and pid.
    pub fn monitor_fd(&mut self, pidfd: BorrowedFd<'_>) -> Result<(Id, i32), Error> {
        let reply = self.request(&Request::MonitorFd, &[pidfd])?;
        id_and_pid(reply)
    }

    /// Asks archon to watch process `pid` (archon opens its pidfd): its id and pid.
    pub fn monitor(&mut self, pid: i32) -> Result<(Id, i32), Error> {
        let reply = self.request(&Request::Monitor { pid }, &[])?;
        id_and_pid(reply)
    }

    /// Has archon run `command` when process `id` ends (`OnExit`), with what ended in its
    /// environment (`ARCHON_ID`, `ARCHON_KIND`, `ARCHON_PID`, `ARCHON_EXIT`, `ARCHON_STATUS`); at
    /// once when it has ended already.
    pub fn on_exit(&mut self, id: Id, command: &Command) -> Result<(), Error> {
        let request = Request::OnExit {
            target: Target::Id(id),
            command: command.clone(),
        };
        done(self.request(&request, &[])?)
    }

    /// Stops process `id`: SIGTERM to its process group, SIGKILL after `grace_ms` milliseconds
    /// (archon's `--stop-grace` when `None`). Returns how it ended, once it has.
    pub fn stop(&mut self, id: Id, grace_ms: Option<u64>) -> Result<Status, Error> {
        let request = Request::Stop {
            target: Target::Id(id),
            grace_ms,
        };
        match self.request(&request, &[])? {
            Reply::Ok(fields) => match fields.get(1) {
                Some(status) => Status::from_field(status)
                    .ok_or_else(|| malformed("Stop's status is not a status")),
                None => Err(malformed("Stop's Ok has no status")),
            },
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Stops `target`, a process or a service (a service's dependents are stopped first), with
    /// `grace_ms` between SIGTERM and SIGKILL (archon's default, or the service's `stop_timeout`,
    /// when `None`). Returns how its main process ended, once it has; `None` when a service was
    /// not running.
    pub fn stop_target(
        &mut self,
        target: &Target,
        grace_ms: Option<u64>,
    ) -> Result<Option<Status>, Error> {
        let request = Request::Stop {
            target: target.clone(),
            grace_ms,
        };
        match self.request(&request, &[])? {
            Reply::Ok(fields) => match fields.get(1).map(Vec::as_slice) {
                Some(none) if none == ready::NONE.as_bytes() => Ok(None),
                Some(status) => Status::from_field(status)
                    .map(Some)
                    .ok_or_else(|| malformed("Stop's status is not a status")),
                None => Err(malformed("Stop's Ok has no status")),
            },
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Starts service or task `name`, and what it requires that is not running. Returns once it
    /// is ready (a service) or done (a task); [`Error::Refused`] when it does not get there.
    pub fn start(&mut self, name: &[u8]) -> Result<(), Error> {
        let request = Request::Start {
            name: name.to_vec(),
        };
        done(self.request(&request, &[])?)
    }

    /// Restarts service `name`; returns once it is ready again.
    pub fn restart(&mut self, name: &[u8]) -> Result<(), Error> {
        let request = Request::Restart {
            name: name.to_vec(),
        };
        done(self.request(&request, &[])?)
    }

    /// Stops (SIGSTOP, or freezes the cgroup of) the whole tree of `target`.
    pub fn pause(&mut self, target: &Target) -> Result<(), Error> {
        let request = Request::Pause {
            target: target.clone(),
        };
        done(self.request(&request, &[])?)
    }

    /// Lets what [`pause`](Self::pause) stopped go on.
    pub fn resume(&mut self, target: &Target) -> Result<(), Error> {
        let request = Request::Resume {
            target: target.clone(),
        };
        done(self.request(&request, &[])?)
    }

    /// Sends signal number `signal` to `target`'s (main) process, or to its process group when
    /// `group`.
    pub fn signal_target(
        &mut self,
        target: &Target,
        signal: i32,
        group: bool,
    ) -> Result<(), Error> {
        let request = Request::Signal {
            target: target.clone(),
            signal,
            group,
        };
        done(self.request(&request, &[])?)
    }

    /// One row per service, task and process; or, when `names` is not empty, per service named.
    pub fn status<N: AsRef<[u8]>>(&mut self, names: &[N]) -> Result<Vec<ServiceRow>, Error> {
        let request = Request::Status {
            names: names.iter().map(|n| n.as_ref().to_vec()).collect(),
        };
        match self.request(&request, &[])? {
            Reply::Status(rows) => Ok(rows),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Every process of every service, or of service `name`.
    pub fn tree(&mut self, name: Option<&[u8]>) -> Result<Vec<TreeNode>, Error> {
        let request = Request::Tree {
            name: name.map(<[u8]>::to_vec),
        };
        match self.request(&request, &[])? {
            Reply::Tree(nodes) => Ok(nodes),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// The effective configuration: every field of every service, defaults filled in.
    pub fn config(&mut self) -> Result<Vec<Setting>, Error> {
        match self.request(&Request::Config, &[])? {
            Reply::Config(settings) => Ok(settings),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Reads the configuration file again and applies what changed: what it did. A broken file
    /// is [`Error::Refused`] with `file:line: what`, and nothing changes.
    pub fn reload(&mut self) -> Result<ReloadCounts, Error> {
        match self.request(&Request::Reload, &[])? {
            Reply::Ok(fields) => ReloadCounts::from_fields(&fields)
                .ok_or_else(|| malformed("Reload's Ok does not hold four counts")),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// The events archon keeps that `filter` matches, the newest `max` of them (all when
    /// `None`), oldest first.
    pub fn history(&mut self, filter: &Filter, max: Option<usize>) -> Result<Vec<Event>, Error> {
        let request = Request::History {
            filter: filter.clone(),
            max,
        };
        match self.request(&request, &[])? {
            Reply::History(events) => Ok(events),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Turns the connection into a stream of the events `filter` matches, from now on. Replies
    /// to requests sent before and not yet received are lost.
    pub fn subscribe(mut self, filter: &Filter) -> Result<Subscription, Error> {
        let request = Request::Subscribe {
            filter: filter.clone(),
        };
        match self.request(&request, &[])? {
            Reply::Ok(fields) => {
                let next_seq = fields
                    .first()
                    .and_then(|f| decimal(f))
                    .ok_or_else(|| malformed("Subscribe's Ok has no event number"))?;
                Ok(Subscription {
                    client: self,
                    next_seq,
                })
            }
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// The lines of service `name`'s output archon keeps, at `level` or more severe, the newest
    /// `max` of them (all that fit in a reply when `None`), oldest first.
    pub fn logs(
        &mut self,
        name: &[u8],
        level: u8,
        max: Option<usize>,
    ) -> Result<Vec<LogLine>, Error> {
        let request = Request::Logs {
            name: name.to_vec(),
            level,
            max,
        };
        match self.request(&request, &[])? {
            Reply::Logs(lines) => Ok(lines),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Turns the connection into a stream of service `name`'s lines at `level` or more severe:
    /// the newest `max` kept first, then each new one ([`StreamItem::Log`](archon_proto::StreamItem::Log) items, and
    /// [`StreamItem::Dropped`](archon_proto::StreamItem::Dropped) where some were lost). Its [`Subscription::next_seq`] is 0.
    pub fn follow_logs(
        mut self,
        name: &[u8],
        level: u8,
        max: Option<usize>,
    ) -> Result<Subscription, Error> {
        let request = Request::FollowLogs {
            name: name.to_vec(),
            level,
            max,
        };
        match self.request(&request, &[])? {
            Reply::Ok(_) => Ok(Subscription {
                client: self,
                next_seq: 0,
            }),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Sends signal number `signal` to process `id`, or to its process group when `group`.
    pub fn signal(&mut self, id: Id, signal: i32, group: bool) -> Result<(), Error> {
        let request = Request::Signal {
            target: Target::Id(id),
            signal,
            group,
        };
        match self.request(&request, &[])? {
            Reply::Ok(_) => Ok(()),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Every process archon supervises, and the ones that ended recently.
    pub fn list(&mut self) -> Result<Vec<ProcessRow>, Error> {
        match self.request(&Request::List, &[])? {
            Reply::List(rows) => Ok(rows),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Asks archon to stop everything and power off, reboot or halt (root only). It answers
    /// before anything stops; an archon that is not process 1 exits instead.
    pub fn power(&mut self, power: Power) -> Result<(), Error> {
        match self.request(&Request::Power(power), &[])? {
            Reply::Ok(_) => Ok(()),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Asks archon to re-execute its program (or `path`, absolute) and hand everything over to
    /// the new image (root only): the new image's version once it has taken over. archon
    /// answers `Error`, and carries on as it was, when the new program cannot take over.
    pub fn reexec(&mut self, path: Option<&[u8]>) -> Result<Vec<u8>, Error> {
        let request = Request::ReExec {
            path: path.map(<[u8]>::to_vec),
        };
        match self.request(&request, &[])? {
            Reply::Ok(mut fields) if fields.len() == 1 => Ok(fields.remove(0)),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// Checks that archon answers.
    pub fn ping(&mut self) -> Result<(), Error> {
        match self.request(&Request::Ping, &[])? {
            Reply::Pong => Ok(()),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// archon's version and its protocol's version.
    pub fn version(&mut self) -> Result<(Vec<u8>, u32), Error> {
        match self.request(&Request::Version, &[])? {
            Reply::Version { archon, protocol } => Ok((archon, protocol)),
            other => Err(refused_or_unexpected(other)),
        }
    }

    /// The socket archon holds at `addr` for the caller's service (archon tells the service by
    /// the caller's process; see archon-protocol(7)): bound, and listening unless UDP,
    /// close-on-exec. [`Error::Refused`] when archon holds none there for it. On the bind
    /// socket (`$ARCHON_BIND_SOCKET`, which any user may use) a connection takes this one
    /// request: connect again for another.
    pub fn bind(&mut self, addr: &BindAddr) -> Result<OwnedFd, Error> {
        self.send(&Request::Bind(addr.clone()), &[])?;
        let (received, fds) = self.receive_with_fds()?;
        match received.reply {
            Reply::Ok(_) => fds
                .into_iter()
                .next()
                .ok_or_else(|| malformed("Bind's Ok came without a socket")),
            other => Err(refused_or_unexpected(other)),
        }
    }
}

impl AsFd for Client {
    /// The connection's socket, to wait on it with `poll(2)`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// A connection that `Subscribe` made a stream of events: it takes no more requests.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    next_seq: u64,
}

impl Subscription {
    /// The number of the first event the stream can bring: events before it are in the history
    /// only, so that a caller who reads `History` after subscribing can leave out what the
    /// stream will bring.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Makes [`next_item`](Self::next_item) fail with [`Error::TimedOut`] when nothing comes for
    /// `timeout`; `None` waits for ever (the default).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.client.set_read_timeout(timeout)
    }

    /// Waits for the next item: an event, or a count of events lost because the caller read too
    /// slowly. [`Error::Closed`] when archon closes the stream (it exits).
    pub fn next_item(&mut self) -> Result<ReceivedItem, Error> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(item) = self.client.reader.next_item()? {
                return Ok(item);
            }
            match self.client.stream.read(&mut chunk) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => self.client.reader.feed(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for Subscription {
    /// The connection's socket, to wait on it with `poll(2)`.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.client.as_fd()
    }
}

fn malformed(what: &str) -> Error {
    Error::Malformed(ReplyError(what.to_string()))
}

fn refused_or_unexpected(reply: Reply) -> Error {
    Error::from_reply(reply)
}

/// `Ok[,...]` with nothing needed from its fields.
fn done(reply: Reply) -> Result<(), Error> {
    match reply {
        Reply::Ok(_) => Ok(()),
        other => Err(refused_or_unexpected(other)),
    }
}

/// `Ok,<id>,<pid>[,...]`: fields after the pid are an extension and are ignored.
fn id_and_pid(reply: Reply) -> Result<(Id, i32), Error> {
    let fields = match reply {
        Reply::Ok(fields) => fields,
        other => return Err(refused_or_unexpected(other)),
    };
    let (Some(id), Some(pid)) = (fields.first(), fields.get(1)) else {
        return Err(malformed("Ok without <id>,<pid>"));
    };
    let id = decimal(id).ok_or_else(|| malformed("id is not a number"))?;
    let pid = decimal(pid)
        .and_then(|p| i32::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| malformed("pid is not a pid"))?;
    Ok((id, pid))
}

/// A decimal number: digits only, no sign.
fn decimal(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Display;
    use std::io::{BufRead, BufReader, IoSliceMut, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixListener;
    use std::thread::{self, JoinHandle};

    use archon_proto::{EnvEntry, Kind, ProcState};
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

    /// Fail instead of hang: no test waits longer than this for a byte.
    const GUARD: Duration = Duration::from_secs(20);

    fn ok<T, E: Display>(r: Result<T, E>, what: &str) -> T {
        match r {
            Ok(v) => v,
            Err(e) => unreachable!("{what}: {e}"),
        }
    }

    fn pair() -> (Client, UnixStream) {
        let (a, b) = ok(UnixStream::pair(), "socketpair");
        ok(a.set_read_timeout(Some(GUARD)), "timeout");
        ok(b.set_read_timeout(Some(GUARD)), "timeout");
        (Client::from_stream(a), b)
    }

    fn join(server: JoinHandle<Result<(), String>>) {
        match server.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => unreachable!("fake server: {e}"),
            Err(_) => unreachable!("fake server panicked"),
        }
    }

    /// One `recvmsg`: the bytes and the descriptors that came with them.
    fn recv_once(sock: &UnixStream, max: usize) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
        let mut buf = vec![0u8; max];
        let mut space = nix::cmsg_space!([RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("recvmsg: {e}"))?;
        let n = msg.bytes;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors for us; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        buf.truncate(n);
        Ok((buf, fds))
    }

    /// What a descriptor refers to: (device, inode).
    fn ident(fd: BorrowedFd<'_>) -> (u64, u64) {
        let m = ok(
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            "stat fd",
        );
        (m.dev(), m.ino())
    }

    /// A fake archon: for each (line, reply), reads one line, checks it, writes the reply; then
    /// closes the connection.
    fn serve(
        sock: UnixStream,
        script: Vec<(&'static str, &'static str)>,
    ) -> JoinHandle<Result<(), String>> {
        thread::spawn(move || {
            let mut reader = BufReader::new(sock.try_clone().map_err(|e| e.to_string())?);
            let mut sock = sock;
            for (want, reply) in script {
                let mut line = Vec::new();
                reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| e.to_string())?;
                if line != want.as_bytes() {
                    return Err(format!(
                        "got {:?}, want {want:?}",
                        String::from_utf8_lossy(&line)
                    ));
                }
                sock.write_all(reply.as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    #[test]
    fn fds_travel_with_the_line() {
        let (mut client, server) = pair();
        let pipes = [
            ok(io::pipe(), "pipe"),
            ok(io::pipe(), "pipe"),
            ok(io::pipe(), "pipe"),
        ];
        let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
        let request = Request::Run(Command::new(["/bin/echo", "a,b"]));
        ok(client.send(&request, &fds), "send");
        let (bytes, got) = ok(recv_once(&server, 4096), "recv");
        assert_eq!(bytes, b"Run,/bin/echo,\"a,b\"\n");
        assert_eq!(got.len(), 3);
        for (sent, received) in fds.iter().zip(&got) {
            assert_eq!(ident(*sent), ident(received.as_fd()));
        }
    }

    #[test]
    fn a_long_line_carries_its_fds_once() {
        let (mut client, server) = pair();
        // A small send buffer makes the kernel cut the line into many pieces.
        ok(setsockopt(&client, sockopt::SndBuf, &4096), "SO_SNDBUF");
        let arg = "x".repeat(60_000);
        let line = format!("Run,/bin/echo,{arg}\n");
        let reader = thread::spawn(move || -> Result<(Vec<u8>, Vec<usize>), String> {
            let mut all = Vec::new();
            let mut fds_at = Vec::new();
            while all.last() != Some(&b'\n') {
                let (bytes, fds) = recv_once(&server, 65536)?;
                if bytes.is_empty() {
                    return Err("EOF".into());
                }
                if !fds.is_empty() {
                    fds_at.push(all.len());
                }
                all.extend(bytes);
            }
            Ok((all, fds_at))
        });
        let (r, _w) = ok(io::pipe(), "pipe");
        ok(
            client.send_line(line.trim_end().as_bytes(), &[r.as_fd()]),
            "send",
        );
        let (all, fds_at) = match reader.join() {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => unreachable!("reader: {e}"),
            Err(_) => unreachable!("reader panicked"),
        };
        assert!(all == line.as_bytes(), "{} bytes received", all.len());
        assert_eq!(fds_at, vec![0], "the fd comes once, with the first byte");
    }

    #[test]
    fn a_list_split_over_many_reads_is_assembled() {
        let (mut client, server) = pair();
        let rows = vec![
            ProcessRow {
                id: 1,
                kind: Kind::Daemon,
                pid: 42,
                state: ProcState::Running,
                started_ms: 1_763_769_600_250,
                status: None,
                argv: vec![
                    b"sh".to_vec(),
                    b"-c".to_vec(),
                    b"echo \"x,y\"\nsleep 9".to_vec(),
                ],
            },
            ProcessRow {
                id: 2,
                kind: Kind::Run,
                pid: 43,
                state: ProcState::Exited,
                started_ms: 3,
                status: Some(Status::Exited(7)),
                argv: vec![b"true".to_vec()],
            },
        ];
        let bytes = Reply::List(rows.clone()).encode();
        let server = thread::spawn(move || -> Result<(), String> {
            let mut line = Vec::new();
            BufReader::new(&server)
                .read_until(b'\n', &mut line)
                .map_err(|e| e.to_string())?;
            if line != b"List\n" {
                return Err(format!("got {line:?}"));
            }
            for piece in bytes.chunks(5) {
                (&server).write_all(piece).map_err(|e| e.to_string())?;
                // Not a timing assertion: only makes separate reads likely.
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        });
        assert_eq!(ok(client.list(), "list"), rows);
        join(server);
    }

    #[test]
    fn pipelined_replies_come_in_order_with_their_bytes() {
        let (mut client, mut server) = pair();
        for r in [Request::Ping, Request::Version, Request::List] {
            ok(client.send(&r, &[]), "send");
        }
        let wire = b"Pong\nVersion,0.1.0,1\r\nList,0\nError,\"a,\"\"b\"\"\"\n";
        ok(server.write_all(wire), "write");
        let mut raw = Vec::new();
        let mut replies = Vec::new();
        for _ in 0..4 {
            let r = ok(client.receive(), "receive");
            raw.extend_from_slice(&r.raw);
            replies.push(r.reply);
        }
        assert_eq!(raw, wire);
        assert_eq!(
            replies,
            vec![
                Reply::Pong,
                Reply::Version {
                    archon: b"0.1.0".to_vec(),
                    protocol: 1
                },
                Reply::List(vec![]),
                Reply::Error(b"a,\"b\"".to_vec()),
            ]
        );
    }

    #[test]
    fn conveniences_speak_the_explicit_form_and_read_their_replies() {
        let (mut client, server) = pair();
        let server = serve(
            server,
            vec![
                ("StartDaemon,sleep,100\n", "Ok,4,1234,extension\n"),
                ("Run,,2,/bin/echo,A=1,HOME\n", "Error,busy\n"),
                ("Run,/bin/sh,-c,exit 3,B=2\n", "ExitStatus,3\n"),
                ("Stop,4,250\n", "Ok,4,SIGTERM\n"),
                ("Stop,5\n", "Ok,5\n"),
                ("Signal,4,SIGHUP,group\n", "Ok,4\n"),
                ("Monitor,99\n", "Error,no such process\n"),
                ("Ping\n", "Pong\n"),
                ("Version\n", "Version,0.1.0,1\n"),
                ("List\n", "Pong\n"),
                ("Ping\n", "Pon"),
            ],
        );
        assert_eq!(
            ok(
                client.start_daemon(&Command::new(["sleep", "100"]), &[]),
                "start"
            ),
            (4, 1234)
        );
        let tricky = Command {
            argv: vec![b"/bin/echo".to_vec(), b"A=1".to_vec()],
            env: vec![EnvEntry::unset("HOME")],
        };
        assert!(matches!(
            client.run(&tricky, &[]),
            Err(Error::Refused(r)) if r == b"busy"
        ));
        let simple = Command {
            argv: vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"exit 3".to_vec()],
            env: vec![EnvEntry::set("B", "2")],
        };
        assert_eq!(ok(client.run(&simple, &[]), "run"), Status::Exited(3));
        assert_eq!(ok(client.stop(4, Some(250)), "stop"), Status::Signaled(15));
        assert!(matches!(client.stop(5, None), Err(Error::Malformed(_))));
        ok(client.signal(4, 1, true), "signal");
        assert!(matches!(
            client.monitor(99),
            Err(Error::Refused(r)) if r == b"no such process"
        ));
        ok(client.ping(), "ping");
        assert_eq!(ok(client.version(), "version"), (b"0.1.0".to_vec(), 1));
        assert!(matches!(client.list(), Err(Error::Unexpected(Reply::Pong))));
        assert!(matches!(client.ping(), Err(Error::Closed)));
        join(server);
    }

    #[test]
    fn service_calls_speak_their_requests_and_read_their_replies() {
        let (mut client, server) = pair();
        let server = serve(
            server,
            vec![
                ("Start,db\n", "Ok,db\n"),
                ("Start,web\n", "Error,no such service: web\n"),
                ("Restart,db\n", "Ok,db\n"),
                ("Stop,db,250\n", "Ok,db,-\n"),
                ("Stop,web\n", "Ok,web,SIGTERM\n"),
                ("Stop,4\n", "Ok,4,0\n"),
                ("Stop,web\n", "Ok,web,nonsense\n"),
                ("Pause,db\n", "Ok,db\n"),
                ("Resume,4\n", "Ok,4\n"),
                ("Signal,db,SIGHUP,group\n", "Ok,db\n"),
                (
                    "Status\n",
                    "Status,1\nService,db,service,ready,5,1.000,0,,yes,-,100,20,,tcp:127.0.0.1:5\n",
                ),
                ("Status,db,web\n", "Status,0\n"),
                ("Tree,db\n", "Tree,1\nNode,db,5,1,redis-server\n"),
                ("Tree\n", "Tree,0\n"),
                (
                    "Config\n",
                    "Config,1\nSetting,db,restart,\"\"\"always\"\"\"\n",
                ),
                ("Reload\n", "Ok,1,0,2,3\n"),
                (
                    "Reload\n",
                    "Error,/etc/archon/archon.lua:3: unknown field 'x'\n",
                ),
                ("Reload\n", "Ok,1\n"),
                ("Status\n", "Pong\n"),
            ],
        );
        let db = Target::Service(b"db".to_vec());
        let web = Target::Service(b"web".to_vec());
        ok(client.start(b"db"), "start");
        assert!(matches!(
            client.start(b"web"),
            Err(Error::Refused(r)) if r == b"no such service: web"
        ));
        ok(client.restart(b"db"), "restart");
        assert_eq!(ok(client.stop_target(&db, Some(250)), "stop"), None);
        assert_eq!(
            ok(client.stop_target(&web, None), "stop"),
            Some(Status::Signaled(15))
        );
        assert_eq!(
            ok(client.stop_target(&Target::Id(4), None), "stop"),
            Some(Status::Exited(0))
        );
        assert!(matches!(
            client.stop_target(&web, None),
            Err(Error::Malformed(_))
        ));
        ok(client.pause(&db), "pause");
        ok(client.resume(&Target::Id(4)), "resume");
        ok(client.signal_target(&db, 1, true), "signal");
        let rows = ok(client.status::<&[u8]>(&[]), "status");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, b"db");
        assert_eq!(rows[0].rss_kib, Some(100));
        assert!(ok(client.status(&["db", "web"]), "status").is_empty());
        let nodes = ok(client.tree(Some(b"db")), "tree");
        assert_eq!(
            nodes,
            vec![TreeNode {
                name: b"db".to_vec(),
                pid: 5,
                ppid: 1,
                comm: b"redis-server".to_vec(),
            }]
        );
        assert!(ok(client.tree(None), "tree").is_empty());
        assert_eq!(
            ok(client.config(), "config"),
            vec![Setting {
                name: b"db".to_vec(),
                key: b"restart".to_vec(),
                value: b"\"always\"".to_vec(),
            }]
        );
        assert_eq!(
            ok(client.reload(), "reload"),
            ReloadCounts {
                started: 1,
                stopped: 0,
                restarted: 2,
                unchanged: 3
            }
        );
        assert!(matches!(client.reload(), Err(Error::Refused(_))));
        assert!(matches!(client.reload(), Err(Error::Malformed(_))));
        assert!(matches!(
            client.status::<&[u8]>(&[]),
            Err(Error::Unexpected(Reply::Pong))
        ));
        join(server);
    }

    #[test]
    fn history_and_a_subscription_read_their_events() {
        use archon_proto::{KindSet, StreamItem};
        let (mut client, server) = pair();
        let event5 = "Event,5,1.000,web,service,exit,ready,backoff,42,SIGKILL,killed,,\n";
        let server = serve(
            server,
            vec![
                (
                    "History,web*,exit,10\n",
                    "History,1\nEvent,4,1.000,web,service,exit,ready,backoff,42,SIGKILL,,,\n",
                ),
                ("History,a\n", "Error,nope\n"),
                (
                    "Subscribe,,exit|daemon\n",
                    "Ok,5\nEvent,5,1.000,web,service,exit,ready,backoff,42,SIGKILL,killed,,\n\
                     Dropped,3\n",
                ),
            ],
        );
        let exits = KindSet::ANY.with_event(archon_proto::EventKind::Exit);
        let filter = Filter {
            subject: b"web*".to_vec(),
            kinds: exits,
        };
        let events = ok(client.history(&filter, Some(10)), "history");
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].seq, events[0].status),
            (4, Some(Status::Signaled(9)))
        );
        let a = Filter {
            subject: b"a".to_vec(),
            kinds: KindSet::ANY,
        };
        assert!(matches!(client.history(&a, None), Err(Error::Refused(_))));
        let filter = Filter {
            subject: Vec::new(),
            kinds: exits.with_subject(archon_proto::ServiceKind::Daemon),
        };
        let mut sub = ok(client.subscribe(&filter), "subscribe");
        assert_eq!(sub.next_seq(), 5);
        let first = ok(sub.next_item(), "next");
        assert!(matches!(first.item, StreamItem::Event(ref e) if e.seq == 5));
        assert_eq!(first.raw, event5.as_bytes());
        assert_eq!(ok(sub.next_item(), "next").item, StreamItem::Dropped(3));
        join(server);
        assert!(matches!(sub.next_item(), Err(Error::Closed)));
    }

    #[test]
    fn a_bad_name_is_not_sent() {
        let (mut client, _server) = pair();
        assert!(matches!(
            client.start(b"12"),
            Err(Error::Encode(archon_proto::RequestError::BadName(_)))
        ));
        assert!(matches!(
            client.stop_target(&Target::Service(b"a b".to_vec()), None),
            Err(Error::Encode(_))
        ));
    }

    #[test]
    fn monitor_fd_sends_one_pidfd() {
        let (mut client, server) = pair();
        let pidfd = match crate::pidfd_open(std::process::id() as i32) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return,
            Err(e) => unreachable!("pidfd_open: {e}"),
        };
        let server = thread::spawn(move || -> Result<usize, String> {
            let (bytes, fds) = recv_once(&server, 4096)?;
            if bytes != b"MonitorFD\n" {
                return Err(format!("got {bytes:?}"));
            }
            (&server)
                .write_all(b"Ok,1,77\n")
                .map_err(|e| e.to_string())?;
            Ok(fds.len())
        });
        assert_eq!(ok(client.monitor_fd(pidfd.as_fd()), "monitor_fd"), (1, 77));
        assert!(matches!(server.join(), Ok(Ok(1))));
    }

    #[test]
    fn a_raw_line_gets_its_newline() {
        let (mut client, server) = pair();
        ok(client.send_line(b"Run,\"a\nb\"", &[]), "send");
        ok(client.send_line(b"Ping\n", &[]), "send");
        ok(client.shutdown_write(), "shutdown");
        let mut all = Vec::new();
        ok((&server).read_to_end(&mut all), "read");
        assert_eq!(all, b"Run,\"a\nb\"\nPing\n");
    }

    #[test]
    fn a_silent_archon_times_out_and_the_reply_can_still_come() {
        let (mut client, mut server) = pair();
        ok(
            client.set_read_timeout(Some(Duration::from_millis(20))),
            "timeout",
        );
        ok(server.write_all(b"Po"), "write");
        assert!(matches!(client.receive(), Err(Error::TimedOut)));
        ok(client.set_read_timeout(Some(GUARD)), "timeout");
        ok(server.write_all(b"ng\n"), "write");
        assert_eq!(ok(client.receive(), "receive").reply, Reply::Pong);
    }

    fn temp_socket(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("archon-ctl-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn connect_failures_name_the_path() {
        let path = temp_socket("absent");
        match Client::connect(Some(&path)) {
            Err(Error::Connect { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn connects_by_path() {
        let path = temp_socket("listen");
        let _ = std::fs::remove_file(&path);
        let listener = ok(UnixListener::bind(&path), "bind");
        let server = thread::spawn(move || -> Result<(), String> {
            let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
            join(serve(sock, vec![("Ping\n", "Pong\n")]));
            Ok(())
        });
        let mut client = ok(Client::connect(Some(&path)), "connect");
        assert_eq!(client.path(), Some(path.as_path()));
        ok(client.ping(), "ping");
        join(server);
        let _ = std::fs::remove_file(&path);
    }
}
