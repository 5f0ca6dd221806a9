//! Health checks and the watchdog: a non-blocking TCP connect probe, the verdict on a command
//! check's exit, the pure [`HealthTracker`] that turns check results into healthy/unhealthy
//! (Docker's semantics), and the pure [`Watchdog`] deadline that `WATCHDOG=1` pushes back.
//!
//! The loop owns the clock and the timers: nothing here reads the time or blocks. A command check
//! is a child the loop spawns (stdio on /dev/null) and kills at its timeout; only the verdict on
//! how it ended lives here ([`command_outcome`]).
#![allow(dead_code)] // wired into the loop by the lead

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use archon_proto::Status;
use mio::event::Source;
use mio::{Interest, Registry, Token};

/// The shortest interval between two checks, whatever the configuration says: a zero interval
/// would make the loop spin.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(10);

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

/// How a service's health is checked (durations already parsed from the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Time from the end of one check to the start of the next (and from the start of the
    /// service to the first check).
    pub interval: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive counted failures that make the service unhealthy (0 is taken as 1).
    pub retries: u32,
    /// Time after the start during which failures do not count, until the first success.
    pub start_period: Duration,
}

/// A service's health, as `Status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check has succeeded yet, and not enough have failed to say unhealthy.
    Starting,
    /// The last state change was a success.
    Healthy,
    /// `retries` counted failures in a row.
    Unhealthy,
}

/// What one check's result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The health is as it was.
    NoChange,
    /// It has just become healthy (from starting or unhealthy).
    Healthy,
    /// It has just become unhealthy: restart per policy.
    Unhealthy,
}

/// Turns check results into a health, as Docker does: a success makes it healthy and clears the
/// failure count; a failure counts unless the service is still starting (no success yet) within
/// its start period; `retries` counted failures in a row make it unhealthy. Start a new tracker
/// for each start of the service.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    policy: HealthPolicy,
    started: Instant,
    health: Health,
    failures: u32,
}

impl HealthTracker {
    /// A tracker for a service that started at `started`.
    pub fn new(policy: HealthPolicy, started: Instant) -> HealthTracker {
        HealthTracker {
            policy,
            started,
            health: Health::Starting,
            failures: 0,
        }
    }

    /// Takes the result of the check that started at `at` (Docker measures the start period
    /// against the check's start).
    pub fn on_result(&mut self, at: Instant, ok: bool) -> Verdict {
        if ok {
            self.failures = 0;
            return self.become_(Health::Healthy);
        }
        let in_start_period = self.health == Health::Starting
            && at.saturating_duration_since(self.started) < self.policy.start_period;
        if in_start_period {
            return Verdict::NoChange;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.policy.retries.max(1) {
            return self.become_(Health::Unhealthy);
        }
        Verdict::NoChange
    }

    fn become_(&mut self, health: Health) -> Verdict {
        if self.health == health {
            return Verdict::NoChange;
        }
        self.health = health;
        match health {
            Health::Healthy => Verdict::Healthy,
            Health::Unhealthy => Verdict::Unhealthy,
            Health::Starting => Verdict::NoChange,
        }
    }

    /// When the first check is due.
    pub fn first_check(&self) -> Instant {
        self.started + self.interval()
    }

    /// When the next check is due, the previous one having ended at `now`.
    pub fn next_check(&self, now: Instant) -> Instant {
        now + self.interval()
    }

    /// When a check that started at `started` times out.
    pub fn check_deadline(&self, started: Instant) -> Instant {
        started + self.policy.timeout
    }

    fn interval(&self) -> Duration {
        self.policy.interval.max(MIN_CHECK_INTERVAL)
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Counted failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The watchdog of a `ready = "notify"` service: it must send `WATCHDOG=1` at least every
/// `timeout`, counted from its start (as systemd, which arms it when the service starts, before
/// it is ready). `WATCHDOG_USEC=` from the service replaces the timeout; 0 disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    timeout: Option<Duration>,
    last_kick: Instant,
}

impl Watchdog {
    /// A watchdog armed at `now` (the spawn).
    pub fn new(timeout: Duration, now: Instant) -> Watchdog {
        Watchdog {
            timeout: (!timeout.is_zero()).then_some(timeout),
            last_kick: now,
        }
    }

    /// `WATCHDOG=1` arrived at `now`.
    pub fn kick(&mut self, now: Instant) {
        self.last_kick = now;
    }

    /// `WATCHDOG_USEC=<usec>` arrived at `now`: the new timeout runs from now (0 disables).
    pub fn set_timeout_usec(&mut self, usec: u64, now: Instant) {
        self.timeout = (usec != 0).then(|| Duration::from_micros(usec));
        self.last_kick = now;
    }

    /// When it expires unless kicked; `None` when disabled.
    pub fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| self.last_kick + t)
    }

    /// True when the deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }
}

/// The environment a watchdog'ed service gets: `WATCHDOG_USEC` (microseconds), and
/// `WATCHDOG_PID` only when `pid` is known.
///
/// archon passes `None`: the environment is built before the clone, so the child's pid is not
/// known. systemd's `sd_watchdog_enabled(3)` and the `sd-notify` crate check `WATCHDOG_PID`
/// only when it is set, so the service still sees its watchdog. The cost: processes it starts
/// inherit `WATCHDOG_USEC` and think they have one too, unless it unsets it (as
/// `sd_watchdog_enabled(1, ...)` does).
pub fn watchdog_env(timeout_ms: u64, pid: Option<i32>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut env = vec![(
        b"WATCHDOG_USEC".to_vec(),
        timeout_ms.saturating_mul(1000).to_string().into_bytes(),
    )];
    if let Some(pid) = pid {
        env.push((b"WATCHDOG_PID".to_vec(), pid.to_string().into_bytes()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(retries: u32, start_period: Duration) -> HealthPolicy {
        HealthPolicy {
            interval: 10 * S,
            timeout: 5 * S,
            retries,
            start_period,
        }
    }

    /// A name, a policy, results (seconds after the start, ok), the verdicts they give, the
    /// health and failure count after them.
    type Case = (
        &'static str,
        HealthPolicy,
        &'static [(u64, bool)],
        &'static [Verdict],
        Health,
        u32,
    );

    /// Feeds results (seconds after the start, ok) and returns the verdicts and final health.
    fn run(policy: HealthPolicy, results: &[(u64, bool)]) -> (Vec<Verdict>, Health, u32) {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::new(policy, t0);
        let verdicts = results
            .iter()
            .map(|&(secs, ok)| tracker.on_result(t0 + Duration::from_secs(secs), ok))
            .collect();
        (verdicts, tracker.health(), tracker.failures())
    }

    #[test]
    fn tracker_table() {
        use Verdict::{Healthy as H, NoChange as N, Unhealthy as U};
        let zero = Duration::ZERO;
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("nothing yet", policy(3, zero), &[], &[], Health::Starting, 0),
            ("first success", policy(3, zero), &[(10, true)], &[H], Health::Healthy, 0),
            ("successes change nothing more", policy(3, zero),
                &[(10, true), (20, true)], &[H, N], Health::Healthy, 0),
            ("retries failures from start", policy(3, zero),
                &[(10, false), (20, false), (30, false)], &[N, N, U], Health::Unhealthy, 3),
            ("one failure short", policy(3, zero),
                &[(10, false), (20, false)], &[N, N], Health::Starting, 2),
            ("a success resets the count", policy(3, zero),
                &[(10, false), (20, false), (30, true), (40, false), (50, false)],
                &[N, N, H, N, N], Health::Healthy, 2),
            ("healthy then unhealthy", policy(2, zero),
                &[(10, true), (20, false), (30, false)], &[H, N, U], Health::Unhealthy, 2),
            ("more failures once unhealthy", policy(1, zero),
                &[(10, false), (20, false)], &[U, N], Health::Unhealthy, 2),
            ("unhealthy recovers", policy(1, zero),
                &[(10, false), (20, true)], &[U, H], Health::Healthy, 0),
            ("retries 0 taken as 1", policy(0, zero), &[(10, false)], &[U], Health::Unhealthy, 1),
            ("failures in the start period do not count", policy(2, 60 * S),
                &[(10, false), (20, false), (30, false), (59, false)],
                &[N, N, N, N], Health::Starting, 0),
            ("they count after it", policy(2, 60 * S),
                &[(10, false), (60, false), (70, false)], &[N, N, U], Health::Unhealthy, 2),
            ("a success ends the start period", policy(2, 60 * S),
                &[(10, true), (20, false), (30, false)], &[H, N, U], Health::Unhealthy, 2),
        ];
        for (name, policy, results, verdicts, health, failures) in cases {
            let (got, got_health, got_failures) = run(*policy, results);
            assert_eq!(&got[..], *verdicts, "{name}");
            assert_eq!(got_health, *health, "{name}");
            assert_eq!(got_failures, *failures, "{name}");
        }
    }

    #[test]
    fn tracker_schedule() {
        let t0 = Instant::now();
        let tracker = HealthTracker::new(policy(3, Duration::ZERO), t0);
        assert_eq!(tracker.first_check(), t0 + 10 * S);
        assert_eq!(tracker.next_check(t0 + 12 * S), t0 + 22 * S);
        assert_eq!(tracker.check_deadline(t0 + 12 * S), t0 + 17 * S);
        let mut p = policy(3, Duration::ZERO);
        p.interval = Duration::ZERO;
        let spinning = HealthTracker::new(p, t0);
        assert_eq!(spinning.next_check(t0), t0 + MIN_CHECK_INTERVAL);
    }

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

    #[test]
    fn watchdog_deadlines() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(3 * S, t0);
        assert_eq!(w.deadline(), Some(t0 + 3 * S));
        assert!(!w.expired(t0 + 2 * S));
        assert!(w.expired(t0 + 3 * S));
        w.kick(t0 + 2 * S);
        assert_eq!(w.deadline(), Some(t0 + 5 * S));
        assert!(!w.expired(t0 + 4 * S));
        w.set_timeout_usec(10_000_000, t0 + 4 * S);
        assert_eq!(w.deadline(), Some(t0 + 14 * S));
        w.set_timeout_usec(0, t0 + 5 * S);
        assert_eq!(w.deadline(), None);
        assert!(!w.expired(t0 + 1000 * S));
        assert_eq!(Watchdog::new(Duration::ZERO, t0).deadline(), None);
    }

    #[test]
    fn watchdog_environment() {
        assert_eq!(
            watchdog_env(1500, None),
            vec![(b"WATCHDOG_USEC".to_vec(), b"1500000".to_vec())]
        );
        assert_eq!(
            watchdog_env(2, Some(42)),
            vec![
                (b"WATCHDOG_USEC".to_vec(), b"2000".to_vec()),
                (b"WATCHDOG_PID".to_vec(), b"42".to_vec())
            ]
        );
        assert_eq!(
            watchdog_env(u64::MAX, None)[0].1,
            u64::MAX.to_string().into_bytes()
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
