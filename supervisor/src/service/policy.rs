//! The rules a service's restarts follow, as plain functions: what counts as a clean exit, whether
//! a policy restarts, how long to back off, when restarts are flapping.

use std::collections::VecDeque;
use std::time::Duration;

use archon_lua::{Backoff, Flap, Restart};
use archon_proto::Status;

/// An exit that is not a failure: code 0, or the signals a clean stop sends (as systemd counts
/// them for `Restart=on-failure`).
pub fn clean_exit(status: Status) -> bool {
    match status {
        Status::Exited(code) => code == 0,
        Status::Signaled(sig) => {
            matches!(
                sig,
                libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGPIPE
            )
        }
        Status::Unknown => false,
    }
}

/// Whether `policy` restarts after an exit; `failed` says whether the exit was a failure.
pub fn restarts(policy: Restart, failed: bool) -> bool {
    match policy {
        Restart::Always => true,
        Restart::OnFailure => failed,
        Restart::Never => false,
    }
}

/// The pause before restart number `consecutive` (0 = the first after a stable run: none), then
/// `initial`, times `multiplier` for each further one, capped at `max`.
pub fn backoff_delay(b: &Backoff, consecutive: u32) -> Duration {
    if consecutive == 0 {
        return Duration::ZERO;
    }
    let exp = consecutive.saturating_sub(1).min(64) as i32;
    let ms = b.initial_ms as f64 * b.multiplier.max(1.0).powi(exp);
    let ms = if ms.is_finite() {
        ms.min(b.max_ms as f64)
    } else {
        b.max_ms as f64
    };
    Duration::from_millis(ms.max(0.0) as u64)
}

/// Records a restart at `now_ms` and says whether there have now been more than the flap limit
/// allows within its window. The record keeps at most `restarts + 1` entries.
pub fn flapping(recent: &mut VecDeque<u64>, now_ms: u64, flap: &Flap) -> bool {
    while recent
        .front()
        .is_some_and(|&t| now_ms.saturating_sub(t) >= flap.within_ms)
    {
        recent.pop_front();
    }
    recent.push_back(now_ms);
    while recent.len() > flap.restarts as usize + 1 {
        recent.pop_front();
    }
    recent.len() > flap.restarts as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            initial_ms: 100,
            max_ms: 1000,
            multiplier: 2.0,
            reset_after_ms: 10_000,
        }
    }

    #[test]
    fn clean_exits_are_code_zero_and_stop_signals() {
        let cases = [
            (Status::Exited(0), true),
            (Status::Exited(1), false),
            (Status::Signaled(libc::SIGTERM), true),
            (Status::Signaled(libc::SIGPIPE), true),
            (Status::Signaled(libc::SIGKILL), false),
            (Status::Signaled(libc::SIGSEGV), false),
            (Status::Unknown, false),
        ];
        for (status, clean) in cases {
            assert_eq!(clean_exit(status), clean, "{status:?}");
        }
    }

    #[test]
    fn policies() {
        let cases = [
            (Restart::Always, false, true),
            (Restart::Always, true, true),
            (Restart::OnFailure, false, false),
            (Restart::OnFailure, true, true),
            (Restart::Never, true, false),
            (Restart::Never, false, false),
        ];
        for (policy, failed, restart) in cases {
            assert_eq!(restarts(policy, failed), restart, "{policy:?} {failed}");
        }
    }

    #[test]
    fn backoff_is_immediate_then_exponential_then_capped() {
        let b = backoff();
        let got: Vec<u64> = (0..7)
            .map(|n| backoff_delay(&b, n).as_millis() as u64)
            .collect();
        assert_eq!(got, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_delay(&b, u32::MAX), Duration::from_millis(1000));
        let huge = Backoff {
            multiplier: f64::MAX,
            ..backoff()
        };
        assert_eq!(backoff_delay(&huge, 3), Duration::from_millis(1000));
    }

    #[test]
    fn flapping_counts_restarts_in_the_window() {
        let flap = Flap {
            restarts: 3,
            within_ms: 1000,
        };
        let mut recent = VecDeque::new();
        assert!(!flapping(&mut recent, 0, &flap));
        assert!(!flapping(&mut recent, 100, &flap));
        assert!(!flapping(&mut recent, 200, &flap));
        assert!(flapping(&mut recent, 300, &flap), "a 4th within 1 s");
        let mut recent = VecDeque::new();
        for t in [0, 600, 1200, 1800, 2400] {
            assert!(!flapping(&mut recent, t, &flap), "spread out at {t}");
        }
        assert!(recent.len() <= 4);
    }
}
