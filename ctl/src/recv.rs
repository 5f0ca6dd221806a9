//! Reading from archon's socket with the descriptors that come along (`SCM_RIGHTS`), as a reply
//! to `Bind` brings the socket asked for.
//!
//! archon sends a reply's descriptors with that reply's bytes alone, and the kernel ends a read
//! right after bytes that came with descriptors: they belong to the reply that holds the last
//! byte of the read that returned them, the same rule archon applies to requests. The caller
//! keeps the stream offset of that byte with them ([`Chunk::fds`]).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use archon_proto::limits::MAX_FDS_PER_MESSAGE;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// What one read brought.
pub(crate) struct Chunk {
    /// How many bytes were read into the buffer; 0 at the end of the stream.
    pub len: usize,
    /// The descriptors that came with them, owned (close-on-exec).
    pub fds: Vec<OwnedFd>,
}

/// Reads once from `sock` into `buf`, with any descriptors; retries when a signal interrupts.
pub(crate) fn recv_chunk(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Chunk> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            // SAFETY: each is a new descriptor in this process, owned by no one.
                            fds.extend(
                                list.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                }
                return Ok(Chunk {
                    len: msg.bytes,
                    fds,
                });
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
