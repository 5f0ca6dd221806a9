//! Client connections: reading requests with their fds, and writing replies in request order.
//!
//! Each connection has an input buffer framed by [`Framer`], and a queue of reply slots, one per
//! request, filled in any order and written in order. A connection that has [`MAX_PIPELINED`]
//! requests unanswered, or [`MAX_REPLY_BACKLOG`] bytes of replies unread, is not read until that
//! drains, so a client that stops reading costs bounded memory and never stalls anyone else.
//!
//! A connection that has asked `Subscribe` becomes a stream: its reply is followed by event
//! lines ([`Client::push_stream`]) and no more requests are read from it; it ends only when the
//! peer closes it (see [`crate::events`] for how much may wait unread).
//!
//! fds come as `SCM_RIGHTS` with the bytes they were sent with; they belong to the request that
//! holds the last byte of the read that returned them (see [`Client::read_some`]). They are
//! received close-on-exec and owned from the start, so every path that does not use them closes
//! them.
//!
//! A reply may carry fds too (the socket a `Bind` asks for): they go once, as `SCM_RIGHTS` on a
//! `sendmsg` of that reply's bytes alone, from its first byte. The kernel ends a read right after
//! bytes that came with fds, so a client finds them with the reply that holds the last byte of
//! the read that returned them: the same rule as for requests. archon's copies close once sent,
//! or with the connection.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use archon_proto::limits::{
    MAX_FDS_PER_MESSAGE, MAX_PIPELINED, MAX_REPLY_BACKLOG, MAX_REPLY_BACKLOG_HARD,
};
use archon_proto::{Frame, Framer, Request, RequestError};

/// How many bytes one read asks for.
const READ_CHUNK: usize = 16 * 1024;

/// Size, in u64 words, of the control buffer of one read: room for [`MAX_FDS_PER_MESSAGE`] fds,
/// on the stack rather than allocated for every read.
// SAFETY: CMSG_SPACE is a pure computation.
const CMSG_WORDS: usize =
    unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) }
        as usize
        / 8
        + 1;

/// The peer's credentials, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its pid (in archon's namespace).
    pub pid: i32,
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
}

/// Reads the credentials of a connected Unix socket's peer.
pub fn peer_credentials(fd: RawFd) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len describe a valid ucred buffer.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// `SO_PEERPIDFD` (Linux 6.5), from `asm-generic/socket.h`: the architectures archon is built
/// for use the generic value (Alpha, MIPS, PA-RISC and SPARC have their own).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
))]
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd of the process that connected a Unix socket, as its credentials were recorded then
/// (`SO_PEERPIDFD`): unlike the pid, it cannot come to name another process. `None` on kernels
/// before 6.5 (or other architectures).
pub fn peer_pidfd(fd: RawFd) -> Option<OwnedFd> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    ))]
    {
        let mut pidfd: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: pidfd and len describe a valid c_int buffer.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&mut pidfd as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if ret == 0 && pidfd >= 0 {
            // SAFETY: the kernel made this pidfd (close-on-exec) for us; nobody else owns it.
            return Some(unsafe { OwnedFd::from_raw_fd(pidfd) });
        }
        None
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )))]
    {
        let _ = fd;
        None
    }
}

/// Sends `bytes` without blocking and without SIGPIPE; what does not fit is dropped. For the one
/// line said to a connection that is refused.
pub fn send_and_forget(fd: RawFd, bytes: &[u8]) {
    // SAFETY: sending from a valid buffer.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
}

/// A request read from a connection, or the reason it cannot be.
#[derive(Debug)]
pub struct Incoming {
    /// Its place on the connection: the reply fills this slot.
    pub seq: u64,
    /// The request, or what is wrong with it.
    pub request: Result<Request, RequestError>,
    /// The fds that came with it.
    pub fds: Vec<OwnedFd>,
}

/// What a read from the socket gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Some bytes.
    Data,
    /// The peer will send nothing more.
    Eof,
    /// Nothing now.
    WouldBlock,
}

/// A filled reply slot: the reply's bytes and the fds that go with its first byte.
struct Slot {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// One client connection.
pub struct Client {
    /// The socket.
    pub stream: mio::net::UnixStream,
    /// Who is on the other end.
    pub peer: Peer,
    inbuf: Vec<u8>,
    framer: Framer,
    /// fds received, with the offset in `inbuf` of the first byte they came with.
    fds: VecDeque<(usize, Vec<OwnedFd>)>,
    next_seq: u64,
    /// Reply slots from the oldest unanswered request on; `None` while the reply is pending.
    slots: VecDeque<Option<Slot>>,
    out: Vec<u8>,
    out_pos: usize,
    /// fds to send with the bytes of `out` from the first offset to the second (a reply), in
    /// order.
    out_fds: VecDeque<(usize, usize, Vec<OwnedFd>)>,
    /// The peer has closed its sending side.
    pub read_closed: bool,
    /// Writing failed: the connection is dead.
    pub broken: bool,
    /// The socket took everything last time: a send may succeed. Cleared when a send would
    /// block, set again when the poll says the socket is writable, so that a client that does not
    /// read costs no failing send per reply.
    writable: bool,
    /// Close once every reply is out (after a line over the limit, or an unterminated one).
    closing: bool,
    /// A `Subscribe` made it a stream of events: no more requests are taken, and it lasts until
    /// the peer closes it.
    streaming: bool,
    /// It came through the bind socket: it takes one request, a `Bind`, and closes once that
    /// is answered.
    pub bind_only: bool,
    /// For a connection to the bind socket, the timer that closes it when it stays too long.
    pub deadline: Option<crate::timers::TimerKey>,
}

impl Client {
    /// A new connection.
    pub fn new(stream: mio::net::UnixStream, peer: Peer) -> Client {
        Client {
            stream,
            peer,
            inbuf: Vec::new(),
            framer: Framer::default(),
            fds: VecDeque::new(),
            next_seq: 0,
            slots: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
            out_fds: VecDeque::new(),
            read_closed: false,
            broken: false,
            writable: true,
            closing: false,
            streaming: false,
            bind_only: false,
            deadline: None,
        }
    }

    /// What a re-exec carries of this connection (see [`crate::reexec`]); `None` for a stream
    /// (subscribers and followers are closed by a re-exec: they reconnect, and `History` has
    /// what they missed). fds received with requests not yet taken, and those of replies not
    /// yet sent, are not carried.
    pub fn carry(&self, id: u64) -> Option<crate::reexec::ClientRecord> {
        if self.streaming || self.broken {
            return None;
        }
        Some(crate::reexec::ClientRecord {
            id,
            fd: self.stream.as_raw_fd(),
            next_seq: self.next_seq,
            slots: self
                .slots
                .iter()
                .map(|s| s.as_ref().map(|s| s.bytes.clone()))
                .collect(),
            inbuf: self.inbuf.clone(),
            out: self.out[self.out_pos..].to_vec(),
            read_closed: self.read_closed,
            closing: self.closing,
            bind_only: self.bind_only,
        })
    }

    /// A connection carried across a re-exec.
    pub fn restored(
        stream: mio::net::UnixStream,
        peer: Peer,
        rec: &crate::reexec::ClientRecord,
    ) -> Client {
        let mut c = Client::new(stream, peer);
        c.next_seq = rec.next_seq;
        c.slots = rec
            .slots
            .iter()
            .map(|s| {
                s.as_ref().map(|bytes| Slot {
                    bytes: bytes.clone(),
                    fds: Vec::new(),
                })
            })
            .collect();
        c.inbuf = rec.inbuf.clone();
        c.out = rec.out.clone();
        c.read_closed = rec.read_closed;
        c.closing = rec.closing;
        c.bind_only = rec.bind_only;
        c
    }

    /// Bytes queued for the peer and not yet sent: replies, and a stream's events.
    pub fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
            + self
                .slots
                .iter()
                .flatten()
                .map(|s| s.bytes.len())
                .sum::<usize>()
    }

    /// True when archon may take another request from this connection now.
    fn may_take(&self) -> bool {
        !self.closing
            && !self.streaming
            && !self.broken
            && self.slots.len() < MAX_PIPELINED
            && self.backlog() < MAX_REPLY_BACKLOG
    }

    /// True when reading more from the socket is useful now.
    pub fn wants_read(&self) -> bool {
        self.may_take() && !self.read_closed
    }

    /// True when the connection has nothing left to do and can be closed.
    pub fn finished(&self) -> bool {
        self.broken
            || (!self.streaming
                && (self.read_closed || self.closing)
                && self.slots.is_empty()
                && self.out_pos == self.out.len())
    }

    /// The next complete request in the buffer, if archon may take one now.
    pub fn take_request(&mut self) -> Option<Incoming> {
        if !self.may_take() {
            return None;
        }
        let (request, consumed) = match self.framer.next_frame(&self.inbuf) {
            Frame::Incomplete => {
                let error = if self.read_closed {
                    self.framer.finish(&self.inbuf)
                } else {
                    None
                };
                let error = error?;
                // An unterminated line at end of stream: answered, never executed.
                let len = self.inbuf.len();
                self.closing = true;
                (Err(RequestError::Frame(error)), len)
            }
            Frame::Record { body, consumed } => {
                // A debug build's hidden request for the tests: a real fault of archon's own
                // (see `pid1::fault::debug_fault`); not in a release build, and only from root
                // on archon's own socket (the bind socket is open to every user).
                #[cfg(debug_assertions)]
                if let Some(kind) = self.inbuf[..body].strip_prefix(b"DebugFault,") {
                    if self.peer.uid == 0 && !self.bind_only {
                        crate::pid1::fault::debug_fault(kind);
                    }
                }
                (Request::parse(&self.inbuf[..body]), consumed)
            }
            Frame::Invalid { consumed, error } => (Err(RequestError::Frame(error)), consumed),
            Frame::TooLong => {
                // The stream cannot be resynchronised: answer and close.
                self.closing = true;
                (Err(RequestError::TooLong), self.inbuf.len())
            }
        };
        let mut fds = Vec::new();
        while self.fds.front().is_some_and(|(at, _)| *at < consumed) {
            if let Some((_, chunk)) = self.fds.pop_front() {
                fds.extend(chunk);
            }
        }
        for (at, _) in self.fds.iter_mut() {
            *at -= consumed;
        }
        self.inbuf.drain(..consumed);
        if self.bind_only {
            // One request on the bind socket: closed once it is answered.
            self.closing = true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots.push_back(None);
        Some(Incoming { seq, request, fds })
    }

    /// Reads once from the socket (with any fds).
    pub fn read_some(&mut self) -> io::Result<ReadOutcome> {
        let start = self.inbuf.len();
        self.inbuf.reserve(READ_CHUNK);
        let spare = self.inbuf.spare_capacity_mut();
        let mut iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // u64 elements keep the buffer aligned for cmsghdr.
        let mut cmsg_buf = [0u64; CMSG_WORDS];
        // SAFETY: an all-zero msghdr is valid; the fields are set below.
        let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
        let n = loop {
            // SAFETY: msg points at valid buffers for the duration of the call.
            let n = unsafe {
                libc::recvmsg(
                    self.stream.as_raw_fd(),
                    &mut msg,
                    libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
                _ => return Err(err),
            }
        };
        let fds = received_fds(&msg);
        // SAFETY: recvmsg initialised n bytes of the spare capacity.
        unsafe { self.inbuf.set_len(start + n) };
        if !fds.is_empty() {
            // The kernel adds earlier unread bytes to a read that returns fds and stops right
            // after the bytes sent with them: the fds belong to the request that holds the last
            // byte read. (A read of nothing but fds cannot happen on a stream socket.)
            self.fds.push_back((start + n.saturating_sub(1), fds));
        }
        if n == 0 {
            self.read_closed = true;
            return Ok(ReadOutcome::Eof);
        }
        Ok(ReadOutcome::Data)
    }

    /// [`fill_with_fds`](Self::fill_with_fds) without fds.
    #[cfg(test)]
    pub fn fill(&mut self, seq: u64, reply: Vec<u8>) -> bool {
        self.fill_with_fds(seq, reply, Vec::new())
    }

    /// Fills the reply slot of request `seq`, with `fds` to send along with the reply's first
    /// byte (a reply that carries fds is never empty); they close once sent, or with the
    /// connection. Returns false if the connection must be closed because its unread replies
    /// exceed [`MAX_REPLY_BACKLOG_HARD`]. One reply larger than that (a `Config` dump of
    /// thousands of services) is let through when what was unread before it is within
    /// [`MAX_REPLY_BACKLOG`]: archon reads no more requests from the connection until it has
    /// been read, so that costs at most one such reply.
    pub fn fill_with_fds(&mut self, seq: u64, reply: Vec<u8>, fds: Vec<OwnedFd>) -> bool {
        let before = self.backlog();
        let head = self.next_seq - self.slots.len() as u64;
        if let Some(slot) = seq
            .checked_sub(head)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            *slot = Some(Slot { bytes: reply, fds });
        }
        while let Some(Some(_)) = self.slots.front() {
            if let Some(Some(slot)) = self.slots.pop_front() {
                if self.out_pos == self.out.len() {
                    self.out.clear();
                    self.out_pos = 0;
                }
                if !slot.fds.is_empty() && !slot.bytes.is_empty() {
                    let start = self.out.len();
                    self.out_fds
                        .push_back((start, start + slot.bytes.len(), slot.fds));
                }
                self.out.extend_from_slice(&slot.bytes);
            }
        }
        before <= MAX_REPLY_BACKLOG || self.backlog() <= MAX_REPLY_BACKLOG_HARD
    }

    /// Makes the connection a stream of events (after its `Subscribe`'s reply slot is filled):
    /// no request is taken from it any more.
    pub fn start_stream(&mut self) {
        self.streaming = true;
    }

    /// Queues bytes of the stream after everything queued before them. While earlier replies
    /// are pending, they wait in the last reply slot, the `Subscribe`'s own, behind its `Ok`;
    /// else at the end of the output, which is compacted first once half of it has been sent,
    /// so that a reader that never quite catches up does not make it grow.
    pub fn push_stream(&mut self, bytes: &[u8]) {
        if let Some(Some(slot)) = self.slots.back_mut() {
            slot.bytes.extend_from_slice(bytes);
            return;
        }
        if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            for (start, end, _) in self.out_fds.iter_mut() {
                *start -= self.out_pos;
                *end -= self.out_pos;
            }
            self.out_pos = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// The poll says the socket has room again.
    pub fn set_writable(&mut self) {
        self.writable = true;
    }

    /// Writes what it can of the queued replies.
    pub fn flush(&mut self) {
        while self.out_pos < self.out.len() && !self.broken && self.writable {
            // fds go with their reply's bytes alone: a send stops before the next reply that
            // carries fds, and that reply goes in a send of its own.
            let (with_fds, end) = match self.out_fds.front() {
                Some((start, end, _)) if *start == self.out_pos => (true, *end),
                Some((start, _, _)) => (false, *start),
                None => (false, self.out.len()),
            };
            let rest = &self.out[self.out_pos..end];
            let n = if with_fds {
                let fds: Vec<RawFd> = self
                    .out_fds
                    .front()
                    .map(|(_, _, f)| f.iter().map(AsRawFd::as_raw_fd).collect())
                    .unwrap_or_default();
                send_with_fds(self.stream.as_raw_fd(), rest, &fds)
            } else {
                // SAFETY: sending from a valid buffer.
                unsafe {
                    libc::send(
                        self.stream.as_raw_fd(),
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                    )
                }
            };
            if n > 0 && with_fds {
                // The peer has them now; archon's copies close.
                self.out_fds.pop_front();
            }
            if n >= 0 {
                self.out_pos += n as usize;
                continue;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => self.writable = false,
                _ => self.broken = true,
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Reads and discards what the peer has sent, up to a bound, so that closing does not reset
    /// the connection before the peer has read archon's last reply.
    pub fn drain_input(&mut self) {
        let mut scratch = [0u8; 4096];
        for _ in 0..64 {
            // SAFETY: reading into a valid buffer.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
        }
    }
}

/// Sends `bytes` with `fds` as one `SCM_RIGHTS` message, without blocking and without SIGPIPE:
/// what `send` returns.
fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> isize {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let payload = std::mem::size_of_val(fds);
    let mut cmsg_buf = [0u64; CMSG_WORDS];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    if space > std::mem::size_of_val(&cmsg_buf) {
        // More fds than one message carries: never asked for (a reply carries one).
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = libc::EINVAL };
        return -1;
    }
    // SAFETY: an all-zero msghdr is valid; the one cmsg written stays inside cmsg_buf, which is
    // aligned for cmsghdr; the buffers outlive the call.
    unsafe {
        let mut msg: libc::msghdr = MaybeUninit::zeroed().assume_init();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() {
            return -1;
        }
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    }
}

/// The fds of every SCM_RIGHTS message in `msg`, now owned.
fn received_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside the control buffer recvmsg filled, and every fd in an
    // SCM_RIGHTS payload is new in this process and owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream as StdStream;

    fn send_with_fd(sock: &StdStream, line: &[u8], fd: RawFd) {
        let mut iov = libc::iovec {
            iov_base: line.as_ptr() as *mut _,
            iov_len: line.len(),
        };
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(4) } as usize;
        let mut buf = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is valid; the cmsg written stays inside buf.
        unsafe {
            let mut msg: libc::msghdr = MaybeUninit::zeroed().assume_init();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = buf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
            assert_eq!(
                libc::sendmsg(sock.as_raw_fd(), &msg, 0),
                line.len() as isize
            );
        }
    }

    /// Reads what is there, with the fds that come along.
    fn recv_all(sock: &StdStream) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut buf = [0u8; 256];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_WORDS];
        // SAFETY: an all-zero msghdr is valid; the buffers outlive the call.
        let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        let fds = received_fds(&msg);
        (buf[..n.max(0) as usize].to_vec(), fds)
    }

    fn inode(fd: RawFd) -> u64 {
        // SAFETY: an all-zero stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: as above.
        unsafe { libc::fstat(fd, &mut st) };
        st.st_ino
    }

    #[test]
    fn a_reply_carries_its_fds_with_its_first_byte_once() -> io::Result<()> {
        let (a, b) = StdStream::pair()?;
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        let mut client = Client::new(
            mio::net::UnixStream::from_std(b),
            Peer {
                pid: 0,
                uid: 0,
                gid: 0,
            },
        );
        let (r, w) = std::os::unix::net::UnixStream::pair()?;
        let want = inode(r.as_raw_fd());
        // Three requests; the second's reply carries an fd, and is ready before the first.
        for _ in 0..3 {
            client.slots.push_back(None);
            client.next_seq += 1;
        }
        assert!(client.fill_with_fds(1, b"Ok\n".to_vec(), vec![OwnedFd::from(r)]));
        client.flush();
        assert_eq!(recv_all(&a).0, b"", "nothing before the first reply");
        assert!(client.fill(0, b"Pong\n".to_vec()));
        assert!(client.fill(2, b"Pong\n".to_vec()));
        client.flush();
        // The kernel ends a read right after bytes that came with fds (and may add earlier
        // bytes to it): the fds belong to the reply that holds the last byte.
        let (bytes, fds) = recv_all(&a);
        assert_eq!(bytes, b"Pong\nOk\n");
        assert_eq!(
            fds.iter().map(|f| inode(f.as_raw_fd())).collect::<Vec<_>>(),
            vec![want]
        );
        let (bytes, fds) = recv_all(&a);
        assert_eq!((bytes, fds.len()), (b"Pong\n".to_vec(), 0));
        assert!(
            client.out_fds.is_empty(),
            "archon's copy is closed once sent"
        );
        drop(w);
        Ok(())
    }

    #[test]
    fn the_peer_pidfd_names_the_process_that_connected() -> io::Result<()> {
        let (a, _b) = StdStream::pair()?;
        let Some(pidfd) = peer_pidfd(a.as_raw_fd()) else {
            eprintln!("SO_PEERPIDFD is not supported here (Linux 6.5): nothing to check");
            return Ok(());
        };
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .map(str::trim);
        assert_eq!(pid, Some(std::process::id().to_string().as_str()), "{info}");
        Ok(())
    }

    #[test]
    fn fds_go_to_the_request_they_were_sent_with() -> io::Result<()> {
        let (mut a, b) = StdStream::pair()?;
        b.set_nonblocking(true)?;
        let mut client = Client::new(
            mio::net::UnixStream::from_std(b),
            Peer {
                pid: 0,
                uid: 0,
                gid: 0,
            },
        );
        a.write_all(b"Ping\n")?;
        send_with_fd(&a, b"Run,/bin/true\n", 0);
        a.write_all(b"Ping\n")?;
        while client.read_some()? == ReadOutcome::Data {}
        let got: Vec<(Option<&'static str>, usize)> = std::iter::from_fn(|| client.take_request())
            .map(|i| (i.request.ok().map(|r| r.verb()), i.fds.len()))
            .collect();
        assert_eq!(
            got,
            vec![(Some("Ping"), 0), (Some("Run"), 1), (Some("Ping"), 0)]
        );
        Ok(())
    }
}
