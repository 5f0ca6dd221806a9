//! Asking archon: one connection to its bind socket, one `Bind` line, one reply with the socket
//! attached. Raw system calls on stack buffers only: this runs inside the host program's
//! `bind()`, which may be called from a signal handler or between `fork` and `exec`, so nothing
//! here allocates, takes a lock, or touches the host's state but its errno (which the caller
//! restores). Every wait is bounded by [`TIMEOUT`].

use std::os::fd::RawFd;

use archon_proto::bind::{MAX_BIND_LINE, Target, Transport, is_ok_line, write_line};

/// How long the shim waits for archon, to connect and then for each reply read: archon answers
/// at once from its loop, so this bounds only a stopped or hung archon. Past it the host's
/// `bind()` is the real one.
pub const TIMEOUT: libc::timeval = libc::timeval {
    tv_sec: 5,
    tv_usec: 0,
};

/// The longest reply read, in bytes: `Ok` or an `Error` with its reason. A longer one is an
/// `Error` and is not read to its end.
const REPLY_ROOM: usize = 512;

/// Most fds a reply may bring that the shim can receive at once; it keeps one and closes the
/// rest (the kernel closes any beyond these).
const FDS_ROOM: usize = 4;

/// The control buffer for [`FDS_ROOM`] fds, in u64 words (aligned for `cmsghdr`).
// SAFETY: CMSG_SPACE is a pure computation.
const CMSG_WORDS: usize =
    unsafe { libc::CMSG_SPACE((FDS_ROOM * std::mem::size_of::<RawFd>()) as u32) } as usize / 8 + 1;

/// A raw system call's result: the value, or `None` (errno says why).
fn sys(ret: libc::c_long) -> Option<libc::c_long> {
    (ret >= 0).then_some(ret)
}

fn errno() -> i32 {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() }
}

/// An fd the shim opened, closed when dropped (whatever path leaves).
pub struct Fd(pub RawFd);

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: closing an fd this value owns.
            unsafe { libc::syscall(libc::SYS_close, self.0) };
        }
    }
}

impl Fd {
    /// Gives the fd up: the caller owns it now.
    pub fn take(mut self) -> RawFd {
        std::mem::replace(&mut self.0, -1)
    }
}

/// Asks archon's bind socket at `socket` (a path) for the socket at `transport`/`target`: the
/// socket, or `None` when archon cannot be reached, says no, or answers anything but `Ok` with
/// one fd.
pub fn ask(socket: &[u8], transport: Transport, target: Target<'_>) -> Option<Fd> {
    let mut line = [0u8; MAX_BIND_LINE];
    let len = write_line(transport, target, &mut line)?;
    let conn = connect(socket)?;
    send_all(conn.0, line.get(..len)?)?;
    receive(conn.0)
}

/// A connected, close-on-exec Unix stream socket with [`TIMEOUT`] on its sends and receives
/// (for a Unix socket, the send timeout also bounds `connect`).
fn connect(path: &[u8]) -> Option<Fd> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.is_empty() || path.len() >= addr.sun_path.len() || path.contains(&0) {
        return None;
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket takes integers.
    let fd = sys(unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let fd = Fd(fd as RawFd);
    for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
        // SAFETY: TIMEOUT is a valid timeval for the duration of the call.
        sys(unsafe {
            libc::syscall(
                libc::SYS_setsockopt,
                fd.0,
                libc::SOL_SOCKET,
                opt,
                &TIMEOUT as *const libc::timeval,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    loop {
        // SAFETY: addr is a valid sockaddr_un of at least len bytes.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_connect,
                fd.0,
                &addr as *const libc::sockaddr_un,
                len as libc::socklen_t,
            )
        };
        if ret == 0 {
            return Some(fd);
        }
        // A Unix connect that a signal interrupts has not connected: it may be tried again.
        if errno() != libc::EINTR {
            return None;
        }
    }
}

fn send_all(fd: RawFd, mut bytes: &[u8]) -> Option<()> {
    while !bytes.is_empty() {
        // SAFETY: sending from a valid buffer; MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                bytes.as_ptr(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
                std::ptr::null::<libc::sockaddr>(),
                0,
            )
        };
        match sys(ret) {
            Some(n) if n > 0 => bytes = bytes.get(n as usize..)?,
            Some(_) => return None,
            None if errno() == libc::EINTR => {}
            None => return None,
        }
    }
    Some(())
}

/// Reads the reply line with its fds; the socket when it is `Ok` with one.
fn receive(conn: RawFd) -> Option<Fd> {
    let mut buf = [0u8; REPLY_ROOM];
    let mut len = 0;
    let mut socket: Option<Fd> = None;
    loop {
        let room = buf.get_mut(len..)?;
        if room.is_empty() {
            return None;
        }
        let mut iov = libc::iovec {
            iov_base: room.as_mut_ptr().cast(),
            iov_len: room.len(),
        };
        let mut cmsg = [0u64; CMSG_WORDS];
        // SAFETY: an all-zero msghdr is valid; the fields are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
        // SAFETY: msg points at valid buffers for the duration of the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_recvmsg,
                conn,
                &mut msg as *mut libc::msghdr,
                libc::MSG_CMSG_CLOEXEC,
            )
        };
        let n = match sys(ret) {
            Some(n) => n as usize,
            None if errno() == libc::EINTR => continue,
            None => return None,
        };
        // Owned from here: closed on every path that does not hand them on.
        take_fds(&msg, &mut socket);
        if n == 0 {
            return None;
        }
        let start = len;
        len += n;
        if buf.get(start..len)?.contains(&b'\n') {
            let line = buf.get(..len)?;
            return if is_ok_line(line) { socket } else { None };
        }
    }
}

/// Takes the fds of every `SCM_RIGHTS` message of `msg`: the first one into `keep` if it is
/// empty; the others are closed.
fn take_fds(msg: &libc::msghdr, keep: &mut Option<Fd>) {
    // SAFETY: the CMSG_* walk stays inside the control buffer recvmsg filled; every fd in an
    // SCM_RIGHTS payload is new in this process and owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = Fd(std::ptr::read_unaligned(data.cast::<RawFd>().add(i)));
                    if keep.is_none() {
                        *keep = Some(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}
