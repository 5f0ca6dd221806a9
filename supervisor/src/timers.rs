//! Timers as the poll timeout: archon never wakes up on a period, only at the next deadline, and
//! with no deadline it sleeps in `poll` until something happens.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use archon_proto::Id;

use crate::service::{TimerKind, UnitId};

/// What a timer does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerEvent {
    /// The grace period of a stop is over: SIGKILL the process's group.
    Kill(Id),
    /// A timer the service manager asked for.
    Unit(UnitId, TimerKind),
    /// A unit's health check has run out of time.
    Probe(UnitId),
    /// The current phase of a shutdown's leftovers is over (see `leftovers`).
    Leftovers,
    /// The current phase of process 1's end is over: every process left gets SIGKILL, or is
    /// given up on.
    Everyone,
    /// A connection to the bind socket has been open too long.
    BindClient(u64),
    /// The period of a Lua `every` handler (by its index) is over.
    Handler(usize),
}

/// A timer's handle, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey(Instant, u64);

impl TimerKey {
    /// When it fires.
    pub fn deadline(self) -> Instant {
        self.0
    }
}

/// The pending timers, in deadline order.
#[derive(Debug, Default)]
pub struct Timers {
    pending: BTreeMap<TimerKey, TimerEvent>,
    seq: u64,
}

impl Timers {
    /// Arms `event` at `deadline`.
    pub fn arm(&mut self, deadline: Instant, event: TimerEvent) -> TimerKey {
        self.seq += 1;
        let key = TimerKey(deadline, self.seq);
        self.pending.insert(key, event);
        key
    }

    /// Cancels a timer (nothing if it has fired already).
    pub fn cancel(&mut self, key: TimerKey) {
        self.pending.remove(&key);
    }

    /// How long `poll` may sleep: until the next deadline, or forever (`None`).
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.pending
            .keys()
            .next()
            .map(|k| k.0.saturating_duration_since(now))
    }

    /// Removes and returns the first timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerEvent> {
        let (&key, _) = self.pending.iter().next()?;
        if key.0 > now {
            return None;
        }
        self.pending.remove(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_and_cancels() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        assert_eq!(t.timeout(t0), None, "idle: sleep forever");
        let late = t.arm(t0 + Duration::from_secs(2), TimerEvent::Kill(2));
        t.arm(t0 + Duration::from_secs(1), TimerEvent::Kill(1));
        let dropped = t.arm(t0 + Duration::from_millis(1500), TimerEvent::Kill(3));
        t.cancel(dropped);
        assert_eq!(t.timeout(t0), Some(Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_secs(5);
        assert_eq!(t.timeout(now), Some(Duration::ZERO));
        assert_eq!(t.pop_due(now), Some(TimerEvent::Kill(1)));
        assert_eq!(late.deadline(), t0 + Duration::from_secs(2));
        assert_eq!(t.pop_due(now), Some(TimerEvent::Kill(2)));
        assert_eq!(t.pop_due(now), None);
    }
}
