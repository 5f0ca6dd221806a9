//! The loop's side of archon as process 1: `Poweroff`, `Reboot` and `Halt` requests, and the
//! last phase of a shutdown that goes down by `reboot(2)`. Once every service and every process
//! archon started has stopped, and its orphans are reaped, whatever is left in the PID
//! namespace (a process that another one left behind and that is not archon's child, one that
//! entered the namespace from outside) gets SIGTERM and SIGCONT, then SIGKILL when the stop
//! grace is over, through `kill(-1)`; archon waits for them on a pidfd each, found in `/proc`,
//! and reaps those that are its own. The rules of the phases are [`Leftovers`]'; the decisions
//! of what archon is and how it ends are in [`crate::pid1`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use archon_proto::{Power, Reply};
use mio::Interest;
use mio::unix::SourceFd;

use super::{EVERYONE, Outcome, ShutdownCause, Supervisor};
use crate::leftovers::{Leftovers, Phase, REAP_AFTER_KILL};
use crate::pid1::halt;
use crate::table::ReplyTo;
use crate::timers::{TimerEvent, TimerKey};
use crate::{info, sys, warn};

/// The last phase of process 1's shutdown: every process left in its namespace being ended.
pub(super) struct Everyone {
    /// SIGTERM, then SIGKILL, each with its deadline.
    phase: Leftovers,
    /// The end of the current phase.
    timer: TimerKey,
    /// A pidfd for each process that was left when the phase began: each wakes the loop as its
    /// process ends.
    watched: Vec<OwnedFd>,
}

impl Supervisor {
    /// `Poweroff`, `Reboot` or `Halt`: root only. The reply goes out before anything stops.
    pub(super) fn power_request(&mut self, to: ReplyTo, power: Power) {
        let Some(peer) = self.clients.get(&to.client).map(|c| c.peer) else {
            return;
        };
        if peer.uid != 0 {
            info!(
                "refused {power} from uid {} (pid {}): root only",
                peer.uid, peer.pid
            );
            return self.reply(to, Reply::error("permission denied"));
        }
        info!("{power} asked by pid {}", peer.pid);
        self.reply(to, Reply::going_down(power));
        self.begin_shutdown(ShutdownCause::Power(power, None));
    }

    /// How archon goes down once everything has stopped: a power off, reboot or halt as
    /// process 1, `None` to exit.
    fn final_power(&self) -> Option<Power> {
        crate::pid1::power_at_end(self.role, self.outcome.and_then(Outcome::power))
    }

    /// True once nothing is left in archon's PID namespace but archon, or archon has given up
    /// waiting; at once when archon is to exit rather than go down by `reboot(2)`. Begins the
    /// phase the first time it is asked.
    pub(super) fn everyone_gone(&mut self) -> bool {
        if self.final_power().is_none() {
            return true;
        }
        let now = Instant::now();
        let grace = self.opts.stop_grace;
        let Some(s) = self.shutdown.as_mut() else {
            return true;
        };
        if s.everyone.is_none() {
            if !halt::anyone_left() {
                return true;
            }
            info!(
                "every process left: SIGTERM, SIGKILL in {} ms",
                grace.as_millis()
            );
            for sig in [libc::SIGTERM, libc::SIGCONT] {
                if let Err(e) = halt::signal_everyone(sig) {
                    warn!("cannot signal every process: {e}");
                }
            }
            // The orphans' phases are over: their timer has nothing left to do.
            self.timers.cancel(s.leftovers_timer);
            let phase = Leftovers::new(false, grace, now);
            let timer = self.timers.arm(phase.deadline(), TimerEvent::Everyone);
            s.everyone = Some(Everyone {
                phase,
                timer,
                watched: Vec::new(),
            });
            self.watch_everyone();
        }
        self.reap_children();
        let left = halt::anyone_left();
        let Some(e) = self.shutdown.as_mut().and_then(|s| s.everyone.as_mut()) else {
            return true;
        };
        if left && !e.phase.given_up(now) {
            return false;
        }
        if left {
            warn!(
                "going on with processes that did not end within {} ms of SIGKILL: {:?}",
                REAP_AFTER_KILL.as_millis(),
                halt::others().unwrap_or_default()
            );
        } else {
            info!("every process has ended");
        }
        let timer = e.timer;
        self.timers.cancel(timer);
        self.unwatch_everyone();
        true
    }

    /// The SIGTERM phase is over: SIGKILL to every process left. (The SIGKILL phase's end is
    /// seen by [`Self::everyone_gone`].)
    pub(super) fn next_everyone_phase(&mut self) {
        let now = Instant::now();
        let Some(e) = self.shutdown.as_mut().and_then(|s| s.everyone.as_mut()) else {
            return;
        };
        if e.phase.phase() == Phase::Killing {
            return;
        }
        e.phase.advance(now);
        e.timer = self.timers.arm(e.phase.deadline(), TimerEvent::Everyone);
        warn!(
            "processes left that did not end on SIGTERM: SIGKILL to {:?}",
            halt::others().unwrap_or_default()
        );
        if let Err(e) = halt::signal_everyone(libc::SIGKILL) {
            warn!("cannot signal every process: {e}");
        }
        self.watch_everyone();
    }

    /// Watches a pidfd of each process left (those already watched are watched anew), so that
    /// the loop wakes as each ends: most are not archon's children, whose end no SIGCHLD tells.
    fn watch_everyone(&mut self) {
        self.unwatch_everyone();
        let mut watched = Vec::new();
        for pid in halt::others().unwrap_or_default() {
            let Ok(fd) = sys::pidfd_open(pid) else {
                continue; // gone already
            };
            let raw = fd.as_raw_fd();
            if self
                .poll
                .registry()
                .register(&mut SourceFd(&raw), EVERYONE, Interest::READABLE)
                .is_ok()
            {
                watched.push(fd);
            }
        }
        if let Some(e) = self.shutdown.as_mut().and_then(|s| s.everyone.as_mut()) {
            e.watched = watched;
        }
    }

    fn unwatch_everyone(&mut self) {
        let Some(e) = self.shutdown.as_mut().and_then(|s| s.everyone.as_mut()) else {
            return;
        };
        for fd in std::mem::take(&mut e.watched) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
    }
}
