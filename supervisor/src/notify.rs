//! Readiness reported by services: a per-service `NOTIFY_SOCKET` speaking systemd's `sd_notify`
//! protocol, and the ready-fd pipe of the s6/dinit/nitro convention.
//!
//! The socket side is thin: [`NotifySocket`] binds, receives datagrams with their sender's
//! credentials, closes every fd sent along, and hands the bytes to [`parse`], a pure function
//! that turns them into [`Notice`]s. What a notice means for the service (ready, watchdog kick,
//! main pid) is decided elsewhere.
//!
//! The socket is a filesystem path (never an abstract `@name`): its mode and owner are what keep
//! other users out, and every client (`sd_notify(3)`, `systemd-notify`, the `sd-notify` crate)
//! accepts an absolute path.
//!
//! The kernel queues at most `net.unix.max_dgram_qlen` (10 by default) unread datagrams per
//! socket; past that a client's (blocking) `sd_notify` waits for archon to read. Datagrams carry
//! no order across senders, and who may send is settled by the file's mode and owner, so the
//! sender's pid is information, not a permission.

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::{Interest, Registry, Token};

/// The largest datagram archon accepts, in bytes: systemd's `NOTIFY_BUFFER_MAX` (`PIPE_BUF`).
/// A longer one is dropped whole, as systemd does, rather than acted on in part.
pub const MAX_DATAGRAM: usize = 4096;

/// Datagrams taken by one [`NotifySocket::recv_all`], so that a service that floods its socket
/// is served as fast as the others, not instead of them.
pub const RECV_BATCH: usize = 64;

/// fds the control buffer has room for. archon keeps none (`FDSTORE=1` is not supported): the ones
/// that fit are closed at once, and the kernel closes the ones that do not fit (`MSG_CTRUNC`).
const FDS_RECEIVED: usize = 8;

/// The control buffer of one read, in u64 words (aligned for `cmsghdr`): the sender's
/// credentials, then room for [`FDS_RECEIVED`] fds.
// SAFETY: CMSG_SPACE is a pure computation.
const CMSG_WORDS: usize = unsafe {
    libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
        + libc::CMSG_SPACE((FDS_RECEIVED * std::mem::size_of::<RawFd>()) as u32)
} as usize
    / 8
    + 1;

/// One line of a notification, as `sd_notify(3)` defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1`: start-up is complete.
    Ready,
    /// `RELOADING=1`: reloading its configuration; `READY=1` follows when done.
    Reloading,
    /// `STOPPING=1`: shutting down.
    Stopping,
    /// `STATUS=<text>`: free text for status displays (UTF-8; empty clears it).
    Status(String),
    /// `MAINPID=<pid>`: the service's main process is this one (> 0).
    MainPid(i32),
    /// `WATCHDOG=1`: the watchdog keep-alive.
    Watchdog,
    /// `WATCHDOG=trigger`: the service asks to be treated as if its watchdog had expired.
    WatchdogTrigger,
    /// `WATCHDOG_USEC=<µs>`: the service resets its watchdog timeout (0 disables it).
    WatchdogUsec(u64),
    /// `ERRNO=<n>`: the service failed with this errno (>= 0).
    Errno(i32),
    /// `EXTEND_TIMEOUT_USEC=<µs>`: the service asks for more time for what it is doing.
    ExtendTimeoutUsec(u64),
    /// Any other `KEY=value` line (`FDSTORE`, `BARRIER`, `MONOTONIC_USEC`...): its key.
    Other(String),
}

/// Parses one notification datagram: `KEY=VALUE` lines separated by newlines.
///
/// The datagram ends at its first NUL byte, as for systemd, which reads it as a C string. Notices
/// come in the order of their lines, duplicates kept. A line without `=`, with a key that is empty
/// or not made of ASCII letters, digits and `_`, or with a known key and a value it does not take
/// (`READY=0`, `MAINPID=x`, a non-UTF-8 `STATUS=`) is ignored. Values are taken exactly: no whitespace is trimmed, numbers are plain ASCII digits.
pub fn parse(datagram: &[u8]) -> Vec<Notice> {
    let text = match memchr_nul(datagram) {
        Some(end) => &datagram[..end],
        None => datagram,
    };
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn memchr_nul(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == 0)
}

fn parse_line(line: &[u8]) -> Option<Notice> {
    let eq = line.iter().position(|&b| b == b'=')?;
    let (key, value) = (&line[..eq], &line[eq + 1..]);
    if key.is_empty() || !key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    match key {
        b"READY" => (value == b"1").then_some(Notice::Ready),
        b"RELOADING" => (value == b"1").then_some(Notice::Reloading),
        b"STOPPING" => (value == b"1").then_some(Notice::Stopping),
        b"STATUS" => std::str::from_utf8(value)
            .ok()
            .map(|s| Notice::Status(s.to_owned())),
        b"MAINPID" => digits::<i32>(value).filter(|&p| p > 0).map(Notice::MainPid),
        b"WATCHDOG" => match value {
            b"1" => Some(Notice::Watchdog),
            b"trigger" => Some(Notice::WatchdogTrigger),
            _ => None,
        },
        b"WATCHDOG_USEC" => digits::<u64>(value).map(Notice::WatchdogUsec),
        b"ERRNO" => digits::<i32>(value).map(Notice::Errno),
        b"EXTEND_TIMEOUT_USEC" => digits::<u64>(value).map(Notice::ExtendTimeoutUsec),
        // ASCII, checked above.
        _ => Some(Notice::Other(String::from_utf8_lossy(key).into_owned())),
    }
}

/// A non-negative number written in plain ASCII digits (no sign, no spaces), that fits in `T`.
fn digits<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// One datagram received on a notify socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's pid in archon's namespace, from `SCM_CREDENTIALS`: `None` when the kernel
    /// gave none, or 0 (a process in a pid namespace archon cannot see). As root a sender may
    /// claim another pid: `systemd-notify` claims its parent's.
    pub sender_pid: Option<i32>,
    /// What it said, in order.
    pub notices: Vec<Notice>,
}

/// What one [`NotifySocket::recv_all`] received.
#[derive(Debug, Default)]
pub struct Received {
    /// The datagrams, in arrival order (empty ones and oversized ones are not included).
    pub messages: Vec<Message>,
    /// [`RECV_BATCH`] datagrams were taken without seeing the socket empty: more may be pending,
    /// and since mio is edge-triggered no new event will say so. Call again on a later turn.
    pub more: bool,
    /// Datagrams dropped for being longer than [`MAX_DATAGRAM`].
    pub oversized: usize,
    /// The read that ended the batch failed (not `WouldBlock`); never seen in practice.
    pub error: Option<io::Error>,
}

/// A per-service `NOTIFY_SOCKET`: a bound, non-blocking, close-on-exec Unix datagram socket
/// with `SO_PASSCRED`. Dropping it removes its file (if the file is still this socket's).
///
/// Register it with mio for [`Interest::READABLE`] and call [`NotifySocket::recv_all`] on every
/// readable event (and again while [`Received::more`] is set).
#[derive(Debug)]
pub struct NotifySocket {
    socket: mio::net::UnixDatagram,
    path: PathBuf,
    /// The bound file's device and inode, so that drop removes only this socket's file.
    file_id: (u64, u64),
}

impl NotifySocket {
    /// Binds a notify socket at `path` (made absolute), replacing a stale socket file there.
    ///
    /// The file is created mode 0600 (less the umask) with no window where it is wider: the mode
    /// is set on the socket before `bind`, which Linux copies to the file. With `owner` =
    /// `Some((uid, gid))` the file is then given to the service's user, so that it, and root,
    /// alone may send. The directory must let that user reach the file (search permission).
    ///
    /// A path that exists and is not a socket is left alone: `AlreadyExists`. A path longer than
    /// `sun_path` allows (107 bytes): `InvalidInput`.
    pub fn bind(path: &Path, owner: Option<(u32, u32)>) -> io::Result<NotifySocket> {
        let path = std::path::absolute(path)?;
        let addr = crate::sys::sockaddr_un(&path)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => fs::remove_file(&path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // SAFETY: socket takes integer arguments and returns a new fd or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Before bind: a datagram that arrives before SO_PASSCRED is set has no credentials, and
        // the mode given to the socket inode is the one bind gives the file (less the umask).
        crate::sys::setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
        crate::sys::bind_unix(&fd, &addr)?;
        let std_socket = std::os::unix::net::UnixDatagram::from(fd);
        let meta = fs::symlink_metadata(&path)?;
        let bound = NotifySocket {
            socket: mio::net::UnixDatagram::from_std(std_socket),
            path,
            file_id: (meta.dev(), meta.ino()),
        };
        if let Some((uid, gid)) = owner {
            // On error, dropping `bound` removes the file.
            std::os::unix::fs::lchown(&bound.path, Some(uid), Some(gid))?;
        }
        Ok(bound)
    }

    /// The socket's absolute path: the value of `NOTIFY_SOCKET` for the service.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes up to [`RECV_BATCH`] pending datagrams, parsed, closing every fd sent along.
    pub fn recv_all(&mut self) -> Received {
        self.recv_batch(RECV_BATCH)
    }

    fn recv_batch(&mut self, limit: usize) -> Received {
        let mut out = Received::default();
        for _ in 0..limit {
            match self.recv_one() {
                Ok(Some(Datagram::Message(m))) => out.messages.push(m),
                Ok(Some(Datagram::Empty)) => {}
                Ok(Some(Datagram::Oversized)) => out.oversized += 1,
                Ok(None) => return out,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
        out.more = true;
        out
    }

    /// One datagram, or `None` when none is pending.
    fn recv_one(&mut self) -> io::Result<Option<Datagram>> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_WORDS];
        // SAFETY: an all-zero msghdr is valid; the fields are set below.
        let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
        let n = loop {
            // SAFETY: msg points at valid buffers for the duration of the call. MSG_TRUNC makes
            // the call return the datagram's real length.
            let n = unsafe {
                libc::recvmsg(
                    self.socket.as_raw_fd(),
                    &mut msg,
                    libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(err),
            }
        };
        // The fds are owned from here and closed when this drops, on every path.
        let (sender_pid, _fds) = control_data(&msg);
        if n > buf.len() || msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Ok(Some(Datagram::Oversized));
        }
        if n == 0 {
            return Ok(Some(Datagram::Empty));
        }
        Ok(Some(Datagram::Message(Message {
            sender_pid,
            notices: parse(&buf[..n]),
        })))
    }
}

/// One received datagram, before batching.
enum Datagram {
    Message(Message),
    Empty,
    Oversized,
}

impl NotifySocket {
    /// What a re-exec carries of it.
    pub fn carry(&self) -> crate::reexec::NotifyRecord {
        crate::reexec::NotifyRecord {
            fd: self.socket.as_raw_fd(),
            path: self.path.clone(),
            file_id: self.file_id,
        }
    }

    /// A notify socket carried across a re-exec (non-blocking, `SO_PASSCRED` set, as bound).
    pub fn adopt(fd: OwnedFd, rec: &crate::reexec::NotifyRecord) -> NotifySocket {
        let std_socket = std::os::unix::net::UnixDatagram::from(fd);
        NotifySocket {
            socket: mio::net::UnixDatagram::from_std(std_socket),
            path: rec.path.clone(),
            file_id: rec.file_id,
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        // A socket bound at the same path since (a restart) is not this one's to remove.
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.file_id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

impl Source for NotifySocket {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.socket.deregister(registry)
    }
}

/// The sender's pid and the fds (now owned) in a received message's control data.
fn control_data(msg: &libc::msghdr) -> (Option<i32>, Vec<OwnedFd>) {
    let mut pid = None;
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside the control buffer recvmsg filled; every fd in an
    // SCM_RIGHTS payload is new in this process and owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                    for i in 0..len / std::mem::size_of::<RawFd>() {
                        let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                    if len >= std::mem::size_of::<libc::ucred>() =>
                {
                    let cred = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                    pid = (cred.pid > 0).then_some(cred.pid);
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    (pid, fds)
}

/// What reading a ready pipe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOutcome {
    /// The service wrote a line (or [`READY_LINE_MAX`] bytes without one): it is ready.
    Ready,
    /// Nothing conclusive yet: wait for the next readable event.
    NotYet,
    /// Every copy of the write end was closed before the service said it was ready.
    Closed,
}

/// Bytes a service may write to its ready fd without a newline before that counts as ready:
/// archon keeps none of them (it only looks for the newline), and the wait must end somewhere.
/// A service that wrote this much has reached the point of writing to its ready fd, which is
/// what the convention asks (dinit counts any write); the newline marks only where the message
/// ends.
pub const READY_LINE_MAX: usize = 4096;

/// The read end of a ready-fd pipe (the s6 notification-fd convention: the service writes a
/// line to fd N when it is ready). Non-blocking, close-on-exec.
///
/// Register it with mio for [`Interest::READABLE`] and call [`ReadyPipe::read`] on every event;
/// an EOF is reported as readable too.
#[derive(Debug)]
pub struct ReadyPipe {
    receiver: mio::unix::pipe::Receiver,
    /// Bytes read so far without a newline.
    seen: usize,
    /// The verdict once reached: it does not change.
    done: Option<ReadyOutcome>,
}

impl ReadyPipe {
    /// A new pipe: the read end, and the write end for the child. The write end is blocking (the
    /// service sees an ordinary fd) and close-on-exec: the spawner `dup2`s it to the service's
    /// ready fd, which clears the flag on the copy. archon must drop its write end once the child
    /// is spawned, or it will never see [`ReadyOutcome::Closed`].
    pub fn new() -> io::Result<(ReadyPipe, OwnedFd)> {
        let (sender, receiver) = mio::unix::pipe::new()?;
        sender.set_nonblocking(false)?;
        Ok((
            ReadyPipe {
                receiver,
                seen: 0,
                done: None,
            },
            OwnedFd::from(sender),
        ))
    }

    /// Its read end's fd (for a re-exec).
    pub fn fd(&self) -> RawFd {
        self.receiver.as_raw_fd()
    }

    /// A ready pipe carried across a re-exec: nothing read yet.
    pub fn adopt(fd: OwnedFd) -> ReadyPipe {
        ReadyPipe {
            receiver: mio::unix::pipe::Receiver::from(fd),
            seen: 0,
            done: None,
        }
    }

    /// Reads what is pending, until a verdict or until the pipe is empty.
    pub fn read(&mut self) -> ReadyOutcome {
        if let Some(done) = self.done {
            return done;
        }
        let mut buf = [0u8; 512];
        loop {
            // At most READY_LINE_MAX bytes are ever read: the loop is bounded even if the writer
            // keeps writing.
            let want = buf.len().min(READY_LINE_MAX - self.seen);
            // SAFETY: reading into a valid buffer of at least `want` bytes.
            let n = unsafe { libc::read(self.receiver.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return ReadyOutcome::NotYet,
                    // A read error on a pipe is not expected; it can say nothing more.
                    _ => return self.decide(ReadyOutcome::Closed),
                }
            }
            let n = n as usize;
            if n == 0 {
                return self.decide(ReadyOutcome::Closed);
            }
            if buf[..n].contains(&b'\n') {
                return self.decide(ReadyOutcome::Ready);
            }
            self.seen += n;
            if self.seen >= READY_LINE_MAX {
                return self.decide(ReadyOutcome::Ready);
            }
        }
    }

    fn decide(&mut self, outcome: ReadyOutcome) -> ReadyOutcome {
        self.done = Some(outcome);
        outcome
    }
}

impl Source for ReadyPipe {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.receiver.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.receiver.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.receiver.deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixDatagram;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A directory under /tmp, removed with everything in it when dropped. World-searchable, so
    /// that a service's user can reach a socket inside.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> io::Result<TempDir> {
            static SEQ: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "archon-notify-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
            Ok(TempDir(path))
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Sends one datagram to `path` with `fds` as SCM_RIGHTS, as a client would.
    fn send_with_fds(path: &Path, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut _,
            iov_len: bytes.len(),
        };
        let payload = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
        let mut buf = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is valid; the cmsg written stays inside buf.
        let ret = unsafe {
            let mut msg: libc::msghdr = MaybeUninit::zeroed().assume_init();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                msg.msg_control = buf.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
                for (i, fd) in fds.iter().enumerate() {
                    let at = libc::CMSG_DATA(c).cast::<RawFd>().add(i);
                    std::ptr::write_unaligned(at, fd.as_raw_fd());
                }
            }
            libc::sendmsg(sock.as_raw_fd(), &msg, 0)
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn send(path: &Path, bytes: &[u8]) -> io::Result<()> {
        send_with_fds(path, bytes, &[])
    }

    fn fd_flags(fd: RawFd) -> (libc::c_int, libc::c_int) {
        // SAFETY: F_GETFD and F_GETFL only query.
        unsafe {
            (
                libc::fcntl(fd, libc::F_GETFD),
                libc::fcntl(fd, libc::F_GETFL),
            )
        }
    }

    /// Receives on `socket` until `done` says the messages so far are enough, or `child` has
    /// ended and nothing more is pending. Returns every message. A generous guard (60 s) fails
    /// the test instead of hanging it.
    fn serve(
        socket: &mut NotifySocket,
        mut child: Option<&mut std::process::Child>,
        done: impl Fn(&[Message]) -> bool,
    ) -> io::Result<Vec<Message>> {
        let mut poll = mio::Poll::new()?;
        poll.registry()
            .register(socket, Token(1), Interest::READABLE)?;
        let mut events = mio::Events::with_capacity(8);
        let mut messages = Vec::new();
        let mut ended = false;
        for _ in 0..600 {
            let got = socket.recv_all();
            assert!(got.error.is_none(), "{:?}", got.error);
            messages.extend(got.messages);
            if done(&messages) || (ended && !got.more) {
                poll.registry().deregister(socket)?;
                return Ok(messages);
            }
            if got.more {
                continue;
            }
            if let Some(child) = child.as_mut() {
                ended = child.try_wait()?.is_some();
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        }
        Err(io::Error::other(format!(
            "gave up waiting; got {messages:?}"
        )))
    }

    // ---- parse ----

    #[test]
    fn parse_known_keys() {
        use Notice::*;
        let text = |s: &str| Status(s.to_string());
        let other = |s: &str| Other(s.to_string());
        let cases: Vec<(&[u8], Notice)> = vec![
            (b"READY=1", Ready),
            (b"READY=1\n", Ready),
            (b"RELOADING=1", Reloading),
            (b"STOPPING=1", Stopping),
            (b"STATUS=Serving 3 clients", text("Serving 3 clients")),
            (b"STATUS=", text("")),
            (b"STATUS=a=b", text("a=b")),
            (
                "STATUS=d\u{e9}j\u{e0} vu".as_bytes(),
                text("d\u{e9}j\u{e0} vu"),
            ),
            (b"MAINPID=4242", MainPid(4242)),
            (b"WATCHDOG=1", Watchdog),
            (b"WATCHDOG=trigger", WatchdogTrigger),
            (b"WATCHDOG_USEC=30000000", WatchdogUsec(30_000_000)),
            (b"WATCHDOG_USEC=0", WatchdogUsec(0)),
            (b"ERRNO=2", Errno(2)),
            (b"ERRNO=0", Errno(0)),
            (b"EXTEND_TIMEOUT_USEC=5000000", ExtendTimeoutUsec(5_000_000)),
            (b"FDSTORE=1", other("FDSTORE")),
            (b"BARRIER=1", other("BARRIER")),
            (b"X_CUSTOM=", other("X_CUSTOM")),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input),
                vec![want],
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn parse_several_lines_in_order_with_duplicates() {
        use Notice::*;
        assert_eq!(
            parse(b"READY=1\nSTATUS=up\nMAINPID=7\nSTATUS=still up\nWATCHDOG=1\n"),
            vec![
                Ready,
                Status("up".into()),
                MainPid(7),
                Status("still up".into()),
                Watchdog
            ]
        );
        assert_eq!(parse(b"\n\nREADY=1\n\n"), vec![Ready]);
    }

    #[test]
    fn parse_ignores_malformed_lines() {
        let ignored: &[&[u8]] = &[
            b"",
            b"\n",
            b"READY",
            b"READY=",
            b"READY=0",
            b"READY=1 ",
            b" READY=1",
            b"READY=1\r",
            b"READY=true",
            b"=1",
            b"=",
            b"STOPPING=yes",
            b"RELOADING=2",
            b"MAINPID=",
            b"MAINPID=0",
            b"MAINPID=-1",
            b"MAINPID=+5",
            b"MAINPID= 5",
            b"MAINPID=5x",
            b"MAINPID=2147483648",
            b"MAINPID=99999999999999999999999",
            b"WATCHDOG=0",
            b"WATCHDOG=2",
            b"WATCHDOG=TRIGGER",
            b"WATCHDOG_USEC=-1",
            b"WATCHDOG_USEC=1.5",
            b"WATCHDOG_USEC=18446744073709551616",
            b"ERRNO=-1",
            b"ERRNO=abc",
            b"EXTEND_TIMEOUT_USEC=",
            b"STATUS=\xff\xfe",
            b"just some text",
        ];
        for input in ignored {
            assert_eq!(parse(input), vec![], "{}", String::from_utf8_lossy(input));
        }
        // Good lines around bad ones still count.
        assert_eq!(parse(b"garbage\nREADY=1\nMAINPID=x"), vec![Notice::Ready]);
    }

    #[test]
    fn parse_edges() {
        // Limits of the numbers.
        assert_eq!(
            parse(b"MAINPID=2147483647"),
            vec![Notice::MainPid(i32::MAX)]
        );
        assert_eq!(
            parse(b"WATCHDOG_USEC=18446744073709551615"),
            vec![Notice::WatchdogUsec(u64::MAX)]
        );
        // Leading zeros are digits.
        assert_eq!(parse(b"MAINPID=007"), vec![Notice::MainPid(7)]);
        // A NUL ends the datagram, as in systemd's C string.
        assert_eq!(parse(b"READY=1\0\nSTOPPING=1"), vec![Notice::Ready]);
        assert_eq!(parse(b"\0READY=1"), vec![]);
        // Keys are ASCII letters, digits and '_'.
        assert_eq!(parse(b"K\xff=1\nK-2=1\nK.3=1\nK 4=1"), vec![]);
        assert_eq!(
            parse(b"x_Custom9=1"),
            vec![Notice::Other("x_Custom9".into())]
        );
        // The status text keeps what follows the first '='.
        assert_eq!(parse(b"STATUS= a=b "), vec![Notice::Status(" a=b ".into())]);
    }

    #[test]
    fn parse_never_panics_on_random_bytes() {
        // A deterministic xorshift over an alphabet that hits every branch.
        let alphabet: &[u8] = b"=\n\x0019RDYEATUSMINPWCHOG_trigr-+ \xff";
        let words: &[&[u8]] = &[
            b"READY",
            b"STATUS",
            b"MAINPID",
            b"WATCHDOG",
            b"WATCHDOG_USEC",
            b"ERRNO",
            b"EXTEND_TIMEOUT_USEC",
            b"STOPPING",
            b"RELOADING",
            b"=1\n",
            b"=trigger\n",
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut total = 0;
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes = Vec::with_capacity(len);
            while bytes.len() < len {
                let r = next();
                if r % 3 == 0 {
                    bytes.extend_from_slice(words[(r >> 8) as usize % words.len()]);
                } else {
                    bytes.push(alphabet[(r >> 8) as usize % alphabet.len()]);
                }
            }
            let notices = parse(&bytes);
            // Never more notices than lines.
            assert!(notices.len() <= bytes.iter().filter(|&&b| b == b'\n').count() + 1);
            total += notices.len();
        }
        // The generator does produce valid lines.
        assert!(total > 0);
    }

    // ---- the socket ----

    #[test]
    fn bind_makes_a_private_close_on_exec_nonblocking_socket() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("svc.notify");
        let socket = NotifySocket::bind(&path, None)?;
        let meta = fs::symlink_metadata(&path)?;
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(socket.path(), path.as_path());
        let (fd_flags, fl_flags) = fd_flags(socket.socket.as_raw_fd());
        assert!(fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0);
        assert!(fl_flags >= 0 && fl_flags & libc::O_NONBLOCK != 0);
        drop(socket);
        assert!(!path.exists(), "drop removes the socket file");
        Ok(())
    }

    #[test]
    fn bind_makes_a_relative_path_absolute() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("rel.notify");
        let socket = NotifySocket::bind(&path, None)?;
        assert!(socket.path().is_absolute());
        // A path that is not absolute is taken against the current directory.
        let cwd = std::env::current_dir()?;
        if let Ok(rel) = path.strip_prefix(&cwd) {
            drop(socket);
            let socket = NotifySocket::bind(rel, None)?;
            assert_eq!(socket.path(), path.as_path());
        }
        Ok(())
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_file() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("stale.notify");
        // A socket file left behind by a dead archon.
        let stale = UnixDatagram::bind(&path)?;
        drop(stale);
        assert!(path.exists());
        let mut socket = NotifySocket::bind(&path, None)?;
        send(&path, b"READY=1")?;
        assert_eq!(socket.recv_all().messages.len(), 1);

        let file = dir.join("file");
        fs::write(&file, b"keep me")?;
        let err = NotifySocket::bind(&file, None).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::AlreadyExists));
        assert_eq!(fs::read(&file)?, b"keep me");
        Ok(())
    }

    #[test]
    fn bind_refuses_a_path_too_long_for_sun_path() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join(&"x".repeat(120));
        let err = NotifySocket::bind(&path, None).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        assert!(!path.exists());
        Ok(())
    }

    #[test]
    fn drop_leaves_a_newer_socket_at_the_same_path() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("restart.notify");
        let old = NotifySocket::bind(&path, None)?;
        let mut new = NotifySocket::bind(&path, None)?;
        drop(old);
        assert!(
            path.exists(),
            "the old socket's drop removed the new one's file"
        );
        send(&path, b"READY=1")?;
        assert_eq!(new.recv_all().messages.len(), 1);
        drop(new);
        assert!(!path.exists());
        Ok(())
    }

    #[test]
    fn recv_gives_sender_and_notices_in_order() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("recv.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        assert!(socket.recv_all().messages.is_empty());
        send(&path, b"READY=1\nSTATUS=up")?;
        send(&path, b"")?; // empty: skipped
        send(&path, b"WATCHDOG=1")?;
        let got = socket.recv_all();
        assert!(!got.more && got.oversized == 0 && got.error.is_none());
        let me = Some(std::process::id() as i32);
        assert_eq!(
            got.messages,
            vec![
                Message {
                    sender_pid: me,
                    notices: vec![Notice::Ready, Notice::Status("up".into())]
                },
                Message {
                    sender_pid: me,
                    notices: vec![Notice::Watchdog]
                },
            ]
        );
        Ok(())
    }

    #[test]
    fn recv_is_bounded_per_call() -> TestResult {
        // The kernel queues at most net.unix.max_dgram_qlen (10 by default) datagrams per
        // socket, fewer than RECV_BATCH: the bound is checked with a smaller one.
        let dir = TempDir::new()?;
        let path = dir.join("batch.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        for i in 0..5 {
            send(&path, format!("STATUS={i}").as_bytes())?;
        }
        let first = socket.recv_batch(3);
        assert_eq!(first.messages.len(), 3);
        assert!(first.more);
        let second = socket.recv_batch(3);
        assert!(!second.more);
        let texts: Vec<_> = second.messages.iter().map(|m| m.notices.clone()).collect();
        assert_eq!(
            texts,
            vec![
                vec![Notice::Status("3".into())],
                vec![Notice::Status("4".into())]
            ]
        );
        // Exactly the limit pending: more is set (the call cannot know), and the next call
        // finds nothing.
        for i in 0..3 {
            send(&path, format!("STATUS={i}").as_bytes())?;
        }
        assert!(socket.recv_batch(3).more);
        let last = socket.recv_batch(3);
        assert!(last.messages.is_empty() && !last.more);
        Ok(())
    }

    #[test]
    fn oversized_datagrams_are_dropped_whole() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("big.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        // Exactly the limit: accepted.
        let mut fits = b"READY=1\nSTATUS=".to_vec();
        fits.resize(MAX_DATAGRAM, b'x');
        send(&path, &fits)?;
        // One byte more: dropped, READY=1 included.
        let mut big = b"READY=1\nSTATUS=".to_vec();
        big.resize(MAX_DATAGRAM + 1, b'y');
        send(&path, &big)?;
        let mut huge = b"READY=1\n".to_vec();
        huge.resize(200_000, b'z');
        send(&path, &huge)?;
        send(&path, b"STOPPING=1")?;
        let got = socket.recv_all();
        assert_eq!(got.oversized, 2);
        assert_eq!(got.messages.len(), 2);
        let status_len = match got.messages[0].notices.as_slice() {
            [Notice::Ready, Notice::Status(s)] => s.len(),
            other => unreachable!("{other:?}"),
        };
        assert_eq!(status_len, MAX_DATAGRAM - b"READY=1\nSTATUS=".len());
        assert_eq!(got.messages[1].notices, vec![Notice::Stopping]);
        Ok(())
    }

    /// True when every copy of the pipe's write end is closed within `wait_ms`: a read of the
    /// (non-blocking) read end gives EOF rather than EAGAIN. Other tests in this process fork
    /// (spawn tests, `Command`), and a child holds a copy of every fd, close-on-exec or not,
    /// until it execs: so the positive check waits a little for that window to pass.
    fn write_end_closed(read: &OwnedFd, wait_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the pipe never gets data, so it wakes on hang-up only.
        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        let mut byte = 0u8;
        // SAFETY: reading one byte into a valid buffer.
        let n = unsafe { libc::read(read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        n == 0
    }

    fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us these fds.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    #[test]
    fn fds_sent_along_are_closed() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("fds.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        // A few fds (within the control buffer), and more than it holds, up to the kernel's
        // SCM_MAX_FD of 253: either way no copy may stay open in archon.
        for count in [1, 3, FDS_RECEIVED, FDS_RECEIVED + 1, 253] {
            let (read, write) = nonblocking_pipe()?;
            let copies = vec![write.as_fd(); count];
            send_with_fds(&path, b"FDSTORE=1\nREADY=1", &copies)?;
            drop(write);
            assert!(!write_end_closed(&read, 0), "the datagram holds copies");
            let got = socket.recv_all();
            assert_eq!(got.messages.len(), 1, "{count} fds");
            assert_eq!(
                got.messages[0].notices,
                vec![Notice::Other("FDSTORE".into()), Notice::Ready]
            );
            assert!(
                write_end_closed(&read, 5_000),
                "{count} fds: a copy stayed open"
            );
        }
        // Along with an oversized datagram too.
        let (read, write) = nonblocking_pipe()?;
        send_with_fds(&path, &vec![b'x'; MAX_DATAGRAM + 1], &[write.as_fd()])?;
        drop(write);
        assert_eq!(socket.recv_all().oversized, 1);
        assert!(write_end_closed(&read, 5_000));
        Ok(())
    }

    #[test]
    fn fd_table_is_unchanged_after_receiving_fds() -> TestResult {
        // Other tests open fds concurrently, so this runs alone in a child process.
        if std::env::var_os(CHILD_FD_COUNT).is_none() {
            let out = Command::new(std::env::current_exe()?)
                .args([
                    "notify::tests::fd_table_is_unchanged_after_receiving_fds",
                    "--exact",
                    "--test-threads=1",
                ])
                .env(CHILD_FD_COUNT, "1")
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}");
            assert!(stdout.contains("1 passed"), "{stdout}");
            return Ok(());
        }
        let dir = TempDir::new()?;
        let path = dir.join("count.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        let (read, write) = nonblocking_pipe()?;
        let count = || fs::read_dir("/proc/self/fd").map(|d| d.count());
        let before = count()?;
        for n in [1, 8, 100] {
            send_with_fds(&path, b"FDSTORE=1", &vec![write.as_fd(); n])?;
        }
        assert_eq!(socket.recv_all().messages.len(), 3);
        assert_eq!(count()?, before);
        drop((read, write));
        Ok(())
    }

    /// Set in a child run of this test binary that plays a part (a client, or an fd count).
    const CHILD_FD_COUNT: &str = "ARCHON_TEST_NOTIFY_FD_COUNT";
    const CHILD_SD_NOTIFY: &str = "ARCHON_TEST_NOTIFY_SD_NOTIFY";

    #[test]
    fn registered_socket_wakes_the_poll() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("poll.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        let mut poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut socket, Token(3), Interest::READABLE)?;
        send(&path, b"READY=1")?;
        let mut events = mio::Events::with_capacity(4);
        let mut woke = false;
        for _ in 0..100 {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            if events
                .iter()
                .any(|e| e.token() == Token(3) && e.is_readable())
            {
                woke = true;
                break;
            }
        }
        assert!(woke);
        assert_eq!(socket.recv_all().messages[0].notices, vec![Notice::Ready]);
        poll.registry().deregister(&mut socket)?;
        Ok(())
    }

    // ---- real clients ----

    /// Debian's systemd-notify (systemd 252). It sends READY=1/STATUS= with credentials
    /// claiming its parent's pid (root may; as another user it falls back to its own), then a
    /// second datagram, BARRIER=1 with a pipe's write end and its own credentials, and waits
    /// (up to 5 s) for the manager to close that fd: its exit status says whether archon did.
    #[test]
    fn systemd_notify_is_understood() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("sd.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        let mut child = Command::new("/usr/bin/systemd-notify")
            .args(["--ready", "--status=x"])
            .env("NOTIFY_SOCKET", &path)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id() as i32;
        let messages = serve(&mut socket, Some(&mut child), |_| false)?;
        let out = child.wait_with_output()?;
        assert!(
            out.status.success(),
            "barrier not released: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parent = Some(std::process::id() as i32);
        assert_eq!(
            messages,
            vec![
                Message {
                    sender_pid: parent,
                    notices: vec![Notice::Ready, Notice::Status("x".into())]
                },
                // The barrier is sent with its own credentials.
                Message {
                    sender_pid: Some(pid),
                    notices: vec![Notice::Other("BARRIER".into())]
                },
            ]
        );
        Ok(())
    }

    #[test]
    fn systemd_notify_pid_and_no_block() -> TestResult {
        let dir = TempDir::new()?;
        let path = dir.join("sdpid.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        // --pid=self: MAINPID= and credentials are systemd-notify's own; --no-block: no barrier.
        let mut child = Command::new("/usr/bin/systemd-notify")
            .args(["--pid=self", "--no-block", "WATCHDOG=1", "STOPPING=1"])
            .env("NOTIFY_SOCKET", &path)
            .spawn()?;
        let pid = child.id() as i32;
        let status = child.wait()?;
        assert!(status.success());
        let got = socket.recv_all();
        assert_eq!(
            got.messages,
            vec![Message {
                sender_pid: Some(pid),
                notices: vec![Notice::MainPid(pid), Notice::Watchdog, Notice::Stopping]
            }]
        );
        Ok(())
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no failure mode.
        unsafe { libc::geteuid() == 0 }
    }

    /// A service that runs as another user: the socket is given to it, and it alone (and root)
    /// may send.
    #[test]
    fn owner_may_send_and_other_users_may_not() -> TestResult {
        if !is_root() {
            eprintln!("skipped: needs root to change users");
            return Ok(());
        }
        let dir = TempDir::new()?;
        let path = dir.join("user.notify");
        let mut socket = NotifySocket::bind(&path, Some((65534, 65534)))?;
        let meta = fs::symlink_metadata(&path)?;
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (65534, 65534, 0o600)
        );
        let as_user = |uid: u32| {
            let mut cmd = Command::new("/usr/bin/setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--clear-groups", "/usr/bin/systemd-notify", "--ready"])
                .env("NOTIFY_SOCKET", &path)
                .stderr(Stdio::piped());
            cmd
        };
        // The owner: its claim of its parent's pid is refused by the kernel, so systemd-notify
        // sends with its own credentials (setpriv execs it: same pid).
        let mut child = as_user(65534).spawn()?;
        let pid = child.id() as i32;
        let messages = serve(&mut socket, Some(&mut child), |_| false)?;
        let out = child.wait_with_output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            messages.first(),
            Some(&Message {
                sender_pid: Some(pid),
                notices: vec![Notice::Ready]
            })
        );
        // Someone else.
        let out = as_user(65533).arg("--no-block").output()?;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Permission denied"), "{stderr}");
        assert!(socket.recv_all().messages.is_empty());
        Ok(())
    }

    /// The sd-notify crate, in a child run of this test binary (NOTIFY_SOCKET is process-wide).
    /// The child also reports what `sd_notify::watchdog_enabled` makes of the environment archon
    /// gives (WATCHDOG_USEC without WATCHDOG_PID).
    #[test]
    fn sd_notify_crate_is_understood() -> TestResult {
        if std::env::var_os(CHILD_SD_NOTIFY).is_some() {
            use sd_notify::NotifyState;
            let watchdog = sd_notify::watchdog_enabled().map_or(0, |d| d.as_micros());
            let status = format!("watchdog={watchdog}");
            sd_notify::notify(&[
                NotifyState::Ready,
                NotifyState::Status(&status),
                NotifyState::MainPid(std::process::id()),
                NotifyState::Watchdog,
            ])?;
            return Ok(());
        }
        let dir = TempDir::new()?;
        let path = dir.join("crate.notify");
        let mut socket = NotifySocket::bind(&path, None)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "notify::tests::sd_notify_crate_is_understood",
            "--exact",
            "--test-threads=1",
        ])
        .env(CHILD_SD_NOTIFY, "1")
        .env("NOTIFY_SOCKET", &path)
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped());
        // What archon gives a service with `watchdog = 1.5`: WATCHDOG_USEC alone.
        cmd.env("WATCHDOG_USEC", "1500000");
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let messages = serve(&mut socket, Some(&mut child), |m| !m.is_empty())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}"
        );
        assert_eq!(
            messages,
            vec![Message {
                sender_pid: Some(pid),
                notices: vec![
                    Notice::Ready,
                    Notice::Status("watchdog=1500000".into()),
                    Notice::MainPid(pid),
                    Notice::Watchdog
                ]
            }]
        );
        Ok(())
    }

    // ---- ready pipe ----

    #[test]
    fn ready_pipe_ends_have_the_right_flags() -> TestResult {
        let (pipe, write) = ReadyPipe::new()?;
        let (rfd, rfl) = fd_flags(pipe.receiver.as_raw_fd());
        assert!(rfd & libc::FD_CLOEXEC != 0 && rfl & libc::O_NONBLOCK != 0);
        let (wfd, wfl) = fd_flags(write.as_raw_fd());
        assert!(
            wfd & libc::FD_CLOEXEC != 0,
            "the write end is close-on-exec"
        );
        assert!(wfl & libc::O_NONBLOCK == 0, "the service's end is blocking");
        Ok(())
    }

    #[test]
    fn ready_pipe_outcomes() -> TestResult {
        // A line in one write.
        let (mut pipe, write) = ReadyPipe::new()?;
        assert_eq!(pipe.read(), ReadyOutcome::NotYet);
        let mut w = fs::File::from(write);
        w.write_all(b"ready\n")?;
        assert_eq!(pipe.read(), ReadyOutcome::Ready);
        drop(w);
        assert_eq!(pipe.read(), ReadyOutcome::Ready, "the verdict is final");

        // A line in pieces; a bare newline is a line.
        let (mut pipe, write) = ReadyPipe::new()?;
        let mut w = fs::File::from(write);
        w.write_all(b"rea")?;
        assert_eq!(pipe.read(), ReadyOutcome::NotYet);
        w.write_all(b"dy")?;
        assert_eq!(pipe.read(), ReadyOutcome::NotYet);
        w.write_all(b"\n")?;
        assert_eq!(pipe.read(), ReadyOutcome::Ready);

        // Closed before a line.
        let (mut pipe, write) = ReadyPipe::new()?;
        let mut w = fs::File::from(write);
        w.write_all(b"almost")?;
        drop(w);
        assert_eq!(pipe.read(), ReadyOutcome::Closed);
        assert_eq!(pipe.read(), ReadyOutcome::Closed);

        // Closed with nothing written.
        let (mut pipe, write) = ReadyPipe::new()?;
        drop(write);
        assert_eq!(pipe.read(), ReadyOutcome::Closed);

        // A line then EOF in the same read: ready.
        let (mut pipe, write) = ReadyPipe::new()?;
        let mut w = fs::File::from(write);
        w.write_all(b"\n")?;
        drop(w);
        assert_eq!(pipe.read(), ReadyOutcome::Ready);
        Ok(())
    }

    #[test]
    fn ready_pipe_without_newline_is_bounded() -> TestResult {
        let (mut pipe, write) = ReadyPipe::new()?;
        let mut w = fs::File::from(write);
        w.write_all(&vec![b'x'; READY_LINE_MAX - 1])?;
        assert_eq!(pipe.read(), ReadyOutcome::NotYet);
        // More than the limit is pending: the read stops at the limit.
        w.write_all(&vec![b'x'; 10_000])?;
        assert_eq!(pipe.read(), ReadyOutcome::Ready);
        assert_eq!(pipe.seen, READY_LINE_MAX);
        Ok(())
    }

    /// A real child writes a line to fd 3, as a service with `ready = "fd"` would.
    #[test]
    fn ready_pipe_with_a_child() -> TestResult {
        use std::os::unix::process::CommandExt;
        let (mut pipe, write) = ReadyPipe::new()?;
        let raw = write.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 0.05; echo ready >&3; exec sleep 1000"]);
        // SAFETY: dup2 is async-signal-safe; it clears close-on-exec on fd 3.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(write); // archon's copy: else Closed could never be seen
        let mut poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut pipe, Token(5), Interest::READABLE)?;
        let mut events = mio::Events::with_capacity(4);
        let mut outcome = pipe.read();
        for _ in 0..600 {
            if outcome != ReadyOutcome::NotYet {
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            outcome = pipe.read();
        }
        child.kill()?;
        child.wait()?;
        assert_eq!(outcome, ReadyOutcome::Ready);
        poll.registry().deregister(&mut pipe)?;
        Ok(())
    }

    /// The child exits without writing: the pipe says so, and mio wakes for the EOF.
    #[test]
    fn ready_pipe_child_exits_without_a_line() -> TestResult {
        use std::os::unix::process::CommandExt;
        let (mut pipe, write) = ReadyPipe::new()?;
        let raw = write.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "exit 3"]);
        // SAFETY: dup2 is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(write);
        let mut poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut pipe, Token(6), Interest::READABLE)?;
        let mut events = mio::Events::with_capacity(4);
        let mut woke = false;
        for _ in 0..600 {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            if events.iter().any(|e| e.token() == Token(6)) {
                woke = true;
                break;
            }
        }
        child.wait()?;
        assert!(woke);
        assert_eq!(pipe.read(), ReadyOutcome::Closed);
        Ok(())
    }
}
