//! Health checks: a non-blocking TCP connect probe and the verdict on a command check's exit.
//! What the results mean (start period, retries, unhealthy) is the service manager's rule, in
//! `service::Manager::health_result`, as is the watchdog.
//!
//! The loop owns the clock and the timers: nothing here reads the time or blocks. A command check
//! is a child the loop spawns (stdio on /dev/null) and kills at its timeout; only the verdict on
//! how it ended lives here ([`command_outcome`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use archon_proto::Status;
use mio::event::Source;
use mio::{Interest, Registry, Token};

/// A TCP connect check in flight: a non-blocking `connect` (close-on-exec socket).
///
/// Register it with mio for [`Interest::WRITABLE`] (a refused connection is reported too, as an
/// error event on the same token), arm a timer for the check's timeout, and call
/// [`TcpProbe::outcome`] on every event until it returns `Some`. Deregister and drop it then, or
/// at the timeout (a failure: "timed out").
#[derive(Debug)]
pub struct TcpProbe {
    stream: mio::net::TcpStream,
    outcome: Option<Result<(), String>>,
}

impl TcpProbe {
    /// Starts connecting to `addr`. An error here (e.g. `ENETUNREACH`, or a refusal the kernel
    /// knew at once) is the check's failure.
    pub fn start(addr: SocketAddr) -> io::Result<TcpProbe> {
        Ok(TcpProbe {
            stream: mio::net::TcpStream::connect(addr)?,
            outcome: None,
        })
    }

    /// How the connect ended: `Some(Ok)` connected, `Some(Err(reason))` failed, `None` not yet
    /// (a spurious wake-up: wait for the next event). Once `Some`, always the same.
    pub fn outcome(&mut self) -> Option<Result<(), String>> {
        if self.outcome.is_none() {
            self.outcome = self.poll_outcome();
        }
        self.outcome.clone()
    }

    /// mio's recipe: a pending socket error means failure; else a peer address means connected,
    /// and `ENOTCONN` means still connecting.
    fn poll_outcome(&self) -> Option<Result<(), String>> {
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Err(e.to_string())),
            Ok(None) => {}
        }
        match self.stream.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e.to_string())),
        }
    }
}

impl Source for TcpProbe {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.stream.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.stream.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.stream.deregister(registry)
    }
}

/// The verdict on a command check that ended: exit 0 is healthy, anything else is a failure
/// with its reason ("exited with code 1", "killed by SIGKILL").
pub fn command_outcome(status: Status) -> Result<(), String> {
    match status {
        Status::Exited(0) => Ok(()),
        other => Err(other.to_string()),
    }
}

/// The reason given for a check the loop gave up on at its timeout.
pub fn timed_out(timeout: Duration) -> String {
    format!("timed out after {} ms", timeout.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_verdicts() {
        assert_eq!(command_outcome(Status::Exited(0)), Ok(()));
        assert_eq!(
            command_outcome(Status::Exited(1)),
            Err("exited with code 1".to_string())
        );
        assert_eq!(
            command_outcome(Status::Signaled(9)),
            Err("killed by SIGKILL".to_string())
        );
        assert!(command_outcome(Status::Unknown).is_err());
        assert_eq!(
            timed_out(Duration::from_millis(5000)),
            "timed out after 5000 ms"
        );
    }

    /// Polls until the probe has an outcome (a guard, not a time limit: it fails instead of
    /// hanging if the kernel never answers).
    fn wait_outcome(probe: &mut TcpProbe) -> io::Result<Result<(), String>> {
        let mut poll = mio::Poll::new()?;
        poll.registry()
            .register(probe, Token(7), Interest::WRITABLE)?;
        let mut events = mio::Events::with_capacity(4);
        for _ in 0..100 {
            if let Some(outcome) = probe.outcome() {
                poll.registry().deregister(probe)?;
                return Ok(outcome);
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        }
        Err(io::Error::other("no outcome after 100 polls"))
    }

    #[test]
    fn tcp_probe_connects_to_a_listener() -> io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut probe = TcpProbe::start(listener.local_addr()?)?;
        assert_eq!(wait_outcome(&mut probe)?, Ok(()));
        // The outcome is final.
        assert_eq!(probe.outcome(), Some(Ok(())));
        // The connection really reached the listener.
        let (_conn, peer) = listener.accept()?;
        assert_eq!(Some(peer), probe.stream.local_addr().ok());
        Ok(())
    }

    #[test]
    fn tcp_probe_reports_a_refusal() -> io::Result<()> {
        // A port nobody listens on: bound, then closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let outcome = match TcpProbe::start(addr) {
            Err(e) => Err(e.to_string()), // the kernel knew at once
            Ok(mut probe) => {
                let outcome = wait_outcome(&mut probe)?;
                assert_eq!(probe.outcome(), Some(outcome.clone()));
                outcome
            }
        };
        let Err(reason) = outcome else {
            unreachable!("connected to a closed port");
        };
        assert!(reason.contains("refused"), "{reason}");
        Ok(())
    }

    #[test]
    fn tcp_probe_socket_is_close_on_exec() -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let probe = TcpProbe::start(listener.local_addr()?)?;
        // SAFETY: F_GETFD only queries.
        let flags = unsafe { libc::fcntl(probe.stream.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0);
        Ok(())
    }
}
