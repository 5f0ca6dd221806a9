//! The client's one error type: what can go wrong between a caller and archon.
//!
//! Callers tell the cases apart by variant, and an `io::Error` inside by its `ErrorKind` or raw
//! errno, never by the text; `Display` is for people.

use std::fmt;
use std::io;
use std::path::PathBuf;

use archon_proto::socket::NoSocketPath;
use archon_proto::{Reply, ReplyError, RequestError};

/// Why a request got no usable answer.
#[derive(Debug)]
pub enum Error {
    /// No socket path can be worked out: none given, and neither `$ARCHON_SOCKET` nor
    /// `$XDG_RUNTIME_DIR` is set (and the caller is not root).
    NoSocketPath(NoSocketPath),
    /// Connecting to archon's socket failed.
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// What `connect(2)` said.
        source: io::Error,
    },
    /// The request cannot be written: a field holds a NUL byte, or the line would be longer
    /// than the protocol's limit.
    Encode(RequestError),
    /// More descriptors than one message can carry (the kernel's `SCM_MAX_FD`).
    TooManyFds(usize),
    /// Sending or receiving failed.
    Io(io::Error),
    /// No reply came within the timeout set with
    /// [`Client::set_read_timeout`](crate::Client::set_read_timeout) (or a send blocked past
    /// the write timeout). The bytes read so far are kept: receiving again goes on with the
    /// same reply.
    TimedOut,
    /// archon closed the connection before a reply was complete.
    Closed,
    /// The reply breaks the protocol's grammar. The connection is out of step afterwards:
    /// drop the client.
    Malformed(ReplyError),
    /// A well-formed reply that does not answer the request sent (`Pong` to a `Run`).
    Unexpected(Reply),
    /// archon answered `Error,<reason>`: nothing was done.
    Refused(Vec<u8>),
}

impl Error {
    /// The error for a reply that is not the answer a request wanted: [`Error::Refused`] with the
    /// reason for `Error`, [`Error::Unexpected`] for anything else.
    pub fn from_reply(reply: Reply) -> Error {
        match reply {
            Reply::Error(reason) => Error::Refused(reason),
            other => Error::Unexpected(other),
        }
    }

    /// The reason archon gave, when it answered `Error`.
    pub fn refusal(&self) -> Option<&[u8]> {
        match self {
            Error::Refused(reason) => Some(reason),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSocketPath(e) => write!(f, "{e}"),
            Error::Connect { path, source } => {
                write!(f, "cannot connect to {}: {source}", path.display())?;
                // The two ways a socket path can name no listening archon.
                match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                        write!(f, "; is archon running?")
                    }
                    _ => Ok(()),
                }
            }
            Error::Encode(e) => write!(f, "cannot write the request: {e}"),
            Error::TooManyFds(n) => write!(
                f,
                "too many fds for one message: {n} (limit {})",
                archon_proto::limits::MAX_FDS_PER_MESSAGE
            ),
            Error::Io(e) => write!(f, "{e}"),
            Error::TimedOut => write!(f, "timed out waiting for archon"),
            Error::Closed => write!(f, "archon closed the connection before replying"),
            Error::Malformed(e) => write!(f, "{e}"),
            Error::Unexpected(reply) => write!(
                f,
                "unexpected reply: {}",
                String::from_utf8_lossy(reply.encode().trim_ascii_end())
            ),
            Error::Refused(reason) => write!(f, "archon: {}", String::from_utf8_lossy(reason)),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::NoSocketPath(e) => Some(e),
            Error::Connect { source, .. } => Some(source),
            Error::Encode(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Malformed(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    /// An I/O error on an established connection; a timeout becomes [`Error::TimedOut`].
    fn from(e: io::Error) -> Self {
        match e.kind() {
            // SO_RCVTIMEO and SO_SNDTIMEO expire as EAGAIN on a blocking socket.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::TimedOut,
            _ => Error::Io(e),
        }
    }
}

impl From<NoSocketPath> for Error {
    fn from(e: NoSocketPath) -> Self {
        Error::NoSocketPath(e)
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        Error::Encode(e)
    }
}

impl From<ReplyError> for Error {
    fn from(e: ReplyError) -> Self {
        Error::Malformed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_name_the_path_and_hint_by_kind() {
        let e = Error::Connect {
            path: "/tmp/x.sock".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("cannot connect to /tmp/x.sock: "),
            "{text}"
        );
        assert!(text.ends_with("; is archon running?"), "{text}");
        let e = Error::Connect {
            path: "/tmp/x.sock".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!e.to_string().contains("running"), "{e}");
    }

    #[test]
    fn timeouts_are_their_own_case() {
        assert!(matches!(
            Error::from(io::Error::from_raw_os_error(libc::EAGAIN)),
            Error::TimedOut
        ));
        assert!(matches!(
            Error::from(io::Error::from_raw_os_error(libc::EPIPE)),
            Error::Io(e) if e.kind() == io::ErrorKind::BrokenPipe
        ));
    }

    #[test]
    fn refusals_show_the_reason() {
        let e = Error::Refused(b"no such process: 9".to_vec());
        assert_eq!(e.to_string(), "archon: no such process: 9");
        assert_eq!(e.refusal(), Some(&b"no such process: 9"[..]));
        assert_eq!(Error::Closed.refusal(), None);
        assert!(matches!(
            Error::from_reply(Reply::error("busy")),
            Error::Refused(r) if r == b"busy"
        ));
        assert!(matches!(
            Error::from_reply(Reply::Pong),
            Error::Unexpected(Reply::Pong)
        ));
    }
}
