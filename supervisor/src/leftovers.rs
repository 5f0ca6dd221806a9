//! What a shutdown does about archon's children that it did not start: orphans reparented to it
//! (it is a child subreaper, or process 1), among them whatever the main command of an
//! entrypoint left behind. archon's own processes and services stop by their own rules.
//!
//! Leftovers go through phases, each with a deadline. After the main command ended on its own,
//! they are first left alone for the stop grace: they may be ending already, on the signal that
//! ended the main command (tini#180). Then they get SIGTERM (and SIGCONT, so that a stopped one
//! can act on it), and SIGKILL when the grace is over again (tini#236). Any other shutdown starts
//! at SIGTERM. archon exits once none is left, or when the kill phase's own deadline passes: a
//! process in uninterruptible sleep, or one archon may not signal, does not hold it for ever.
//!
//! The rules are pure; the loop finds the leftovers (`/proc`), sends the signals and arms the
//! timer.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// How long archon waits for leftovers it has sent SIGKILL to before it exits without them.
pub const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

/// Where the leftovers of a shutdown are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Left to end on their own.
    Waiting,
    /// Sent SIGTERM and SIGCONT.
    Terminating,
    /// Sent SIGKILL.
    Killing,
}

impl Phase {
    /// The signals a leftover gets when it is found in this phase.
    pub fn signals(self) -> &'static [i32] {
        match self {
            Phase::Waiting => &[],
            Phase::Terminating => &[libc::SIGTERM, libc::SIGCONT],
            Phase::Killing => &[libc::SIGKILL],
        }
    }
}

/// The leftovers of one shutdown.
#[derive(Debug)]
pub struct Leftovers {
    phase: Phase,
    deadline: Instant,
    grace: Duration,
    /// Those sent this phase's signals already: a rescan finds only the new ones.
    signalled: HashSet<i32>,
}

impl Leftovers {
    /// A shutdown begins at `now`: the leftovers are left alone first (`wait_first`, when the
    /// main command has ended), or sent SIGTERM at once.
    pub fn new(wait_first: bool, grace: Duration, now: Instant) -> Leftovers {
        Leftovers {
            phase: if wait_first {
                Phase::Waiting
            } else {
                Phase::Terminating
            },
            deadline: now + grace,
            grace,
            signalled: HashSet::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the current phase ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The current phase's deadline has come: the next phase begins at `now`.
    pub fn advance(&mut self, now: Instant) {
        match self.phase {
            Phase::Waiting => self.enter(Phase::Terminating, now + self.grace),
            Phase::Terminating => self.kill_now(now),
            Phase::Killing => {}
        }
    }

    /// Skips to SIGKILL (a second SIGTERM or SIGINT during the shutdown).
    pub fn kill_now(&mut self, now: Instant) {
        if self.phase != Phase::Killing {
            self.enter(Phase::Killing, now + REAP_AFTER_KILL);
        }
    }

    fn enter(&mut self, phase: Phase, deadline: Instant) {
        self.phase = phase;
        self.deadline = deadline;
        self.signalled.clear();
    }

    /// Of the leftovers found now, those to send this phase's signals to: the ones not sent
    /// them yet.
    pub fn due(&mut self, found: &[i32]) -> Vec<i32> {
        if self.phase == Phase::Waiting {
            return Vec::new();
        }
        found
            .iter()
            .copied()
            .filter(|&pid| self.signalled.insert(pid))
            .collect()
    }

    /// True once archon may exit with leftovers still there: they were sent SIGKILL and the
    /// time to reap them has passed.
    pub fn given_up(&self, now: Instant) -> bool {
        self.phase == Phase::Killing && now >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(300);

    #[test]
    fn after_the_main_command_they_wait_then_get_term_then_kill() {
        let t0 = Instant::now();
        let mut l = Leftovers::new(true, GRACE, t0);
        assert_eq!((l.phase(), l.deadline()), (Phase::Waiting, t0 + GRACE));
        assert_eq!(l.due(&[10, 11]), Vec::<i32>::new(), "left alone");
        assert!(!l.given_up(t0 + GRACE * 100));

        let t1 = t0 + GRACE;
        l.advance(t1);
        assert_eq!((l.phase(), l.deadline()), (Phase::Terminating, t1 + GRACE));
        assert_eq!(l.phase().signals(), &[libc::SIGTERM, libc::SIGCONT]);
        assert_eq!(l.due(&[10, 11]), vec![10, 11]);
        // A rescan after a reap: 12 was reparented meanwhile, the others were signalled.
        assert_eq!(l.due(&[11, 12]), vec![12]);

        let t2 = t1 + GRACE;
        l.advance(t2);
        assert_eq!(
            (l.phase(), l.deadline()),
            (Phase::Killing, t2 + REAP_AFTER_KILL)
        );
        assert_eq!(l.phase().signals(), &[libc::SIGKILL]);
        assert_eq!(l.due(&[11, 12]), vec![11, 12], "each phase signals anew");
        assert!(!l.given_up(t2));
        assert!(l.given_up(t2 + REAP_AFTER_KILL));
        l.advance(t2 + REAP_AFTER_KILL);
        assert_eq!(l.phase(), Phase::Killing, "the last phase");
    }

    #[test]
    fn any_other_shutdown_starts_at_term_and_a_second_signal_kills() {
        let t0 = Instant::now();
        let mut l = Leftovers::new(false, GRACE, t0);
        assert_eq!((l.phase(), l.deadline()), (Phase::Terminating, t0 + GRACE));
        assert_eq!(l.due(&[7]), vec![7]);
        let t1 = t0 + Duration::from_millis(5);
        l.kill_now(t1);
        assert_eq!(
            (l.phase(), l.deadline()),
            (Phase::Killing, t1 + REAP_AFTER_KILL)
        );
        assert_eq!(l.due(&[7]), vec![7]);
        // Again: the deadline stays.
        l.kill_now(t1 + GRACE);
        assert_eq!(l.deadline(), t1 + REAP_AFTER_KILL);
        // A zero grace goes straight through.
        let mut l = Leftovers::new(true, Duration::ZERO, t0);
        l.advance(t0);
        assert_eq!((l.phase(), l.deadline()), (Phase::Terminating, t0));
    }
}
