//! The handle C holds, an opaque `archon *`: a connection, the last raw reply, and whether the
//! connection is still in step.
//!
//! Replies are paired with requests by their order alone, so after a failure that leaves a
//! reply unread or half-read (a timeout, an I/O error, a malformed reply) every later reply
//! would answer the wrong call. The handle remembers such a failure and refuses further
//! requests, rather than hand a caller someone else's answer.

use std::io;
use std::os::fd::BorrowedFd;

use archon_ctl::{Client, Error, RawLine};
use archon_proto::Reply;

use crate::result::{ArchonResult, Failure};

/// A connection to archon (`archon *` in C, opaque): from `archon_connect`, ended by
/// `archon_close`. One thread at a time may use it.
#[derive(Debug)]
pub struct Archon {
    client: Client,
    /// The bytes of the last reply to `archon_request`, as received.
    reply: Vec<u8>,
    /// Why the connection is out of step, once it is.
    broken: Option<String>,
}

impl Archon {
    /// A handle on a connected client.
    pub(crate) fn new(client: Client) -> Archon {
        Archon {
            client,
            reply: Vec::new(),
            broken: None,
        }
    }

    /// The client, for what sends nothing (timeouts).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The last raw reply, as received (empty before the first).
    pub(crate) fn last_reply(&self) -> &[u8] {
        &self.reply
    }

    /// Makes a request with `op`, unless the connection is out of step; marks it so when `op`
    /// fails in a way that leaves it so.
    pub(crate) fn call<T>(
        &mut self,
        op: impl FnOnce(&mut Client) -> Result<T, Error>,
    ) -> Result<T, Failure> {
        if let Some(why) = &self.broken {
            return Err(Failure::new(
                ArchonResult::Io,
                format!("the connection is unusable after an earlier error ({why}); close it"),
            ));
        }
        op(&mut self.client).map_err(|e| {
            if leaves_out_of_step(&e) {
                self.broken = Some(e.to_string());
            }
            Failure::from(e)
        })
    }

    /// Sends `line`, one request as the user wrote it (a `\n` added when missing), with `fds`
    /// attached, and reads its reply, kept as received for [`last_reply`](Self::last_reply).
    pub(crate) fn raw(&mut self, line: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Reply, Failure> {
        let framed = RawLine::new(line);
        if framed.unterminated {
            return Err(Failure::invalid(
                "the line ends inside a quoted field: archon would wait for its end",
            ));
        }
        if framed.verbs.len() != 1 {
            return Err(Failure::invalid(format!(
                "the line holds {} requests; send one per call",
                framed.verbs.len()
            )));
        }
        self.reply.clear();
        let received = self.call(|client| {
            let sent = client.send_line(&framed.bytes, fds);
            match sent {
                // archon answers a line that is too long, then closes without reading the
                // rest: its reply is still there to read.
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    client.receive().map_err(|_| Error::Io(e))
                }
                Err(e) => Err(e),
                Ok(()) => client.receive(),
            }
        })?;
        self.reply = received.raw;
        Ok(received.reply)
    }
}

/// Whether a failed request leaves a reply unread or half-read, or the stream unusable.
fn leaves_out_of_step(e: &Error) -> bool {
    match e {
        Error::Io(_) | Error::TimedOut | Error::Closed | Error::Malformed(_) => true,
        // Nothing was sent (a request that cannot be written), or a whole reply was read.
        Error::NoSocketPath(_)
        | Error::Connect { .. }
        | Error::Encode(_)
        | Error::TooManyFds(_)
        | Error::Unexpected(_)
        | Error::Refused(_) => false,
    }
}
