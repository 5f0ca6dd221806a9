//! Writing one request line, with descriptors attached as `SCM_RIGHTS`.
//!
//! archon gives descriptors to the request that holds the last byte of the read that brought
//! them (the kernel ends such a read right after the bytes sent with the descriptors), so they go
//! in one `sendmsg` with the whole line, and with nothing after it: a caller sending several
//! records sends the one that carries descriptors on its own. The kernel may take fewer bytes than offered
//! (a full socket buffer); the rest follows without descriptors, which went with the first part.
//! `MSG_NOSIGNAL`: a closed connection is an `EPIPE` error to report, not a `SIGPIPE` that kills
//! the caller (a C program or a preloaded shim does not expect that from a library).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use archon_proto::limits::MAX_FDS_PER_MESSAGE;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, send, sendmsg};

use crate::error::Error;

/// Writes all of `line` to `sock`, with `fds` attached to its first byte.
pub(crate) fn send_line(
    sock: BorrowedFd<'_>,
    line: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Error> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Error::TooManyFds(fds.len()));
    }
    if line.is_empty() {
        // Descriptors cannot travel on a stream socket without at least one byte.
        return Ok(());
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let sock = sock.as_raw_fd();
    let mut sent = retry(|| {
        sendmsg::<()>(
            sock,
            &[IoSlice::new(line)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
    })?;
    while sent < line.len() {
        sent += retry(|| send(sock, &line[sent..], MsgFlags::MSG_NOSIGNAL))?;
    }
    Ok(())
}

/// Calls `op` until it is not interrupted by a signal; zero bytes written is an error, so that a
/// loop around it always progresses.
fn retry(mut op: impl FnMut() -> nix::Result<usize>) -> Result<usize, Error> {
    loop {
        match op() {
            Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
}
