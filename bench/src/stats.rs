//! Samples to figures: median, 99th percentile, rate; and how they are printed.

use std::time::{Duration, Instant};

/// A set of timed operations, summarized.
#[derive(Clone, Copy)]
pub struct Summary {
    /// How many operations were timed.
    pub n: usize,
    /// Their median duration.
    pub median: Duration,
    /// Their 99th percentile (nearest rank).
    pub p99: Duration,
    /// Their total duration (for sequential operations, the wall time they took).
    pub total: Duration,
}

impl Summary {
    /// Summarizes `samples` (not empty).
    pub fn of(mut samples: Vec<Duration>) -> Summary {
        samples.sort_unstable();
        let total = samples.iter().sum();
        Summary {
            n: samples.len(),
            median: percentile(&samples, 0.5),
            p99: percentile(&samples, 0.99),
            total,
        }
    }

    /// Operations per second when they ran one after the other.
    pub fn rate(&self) -> f64 {
        rate(self.n, self.total)
    }
}

/// The `p` quantile of sorted `samples`, by nearest rank; zero when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// `n` operations in `wall`, per second.
pub fn rate(n: usize, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        n as f64 / wall.as_secs_f64()
    }
}

/// Runs `op` `warmup` times untimed, then `n` times timed one by one.
pub fn time_each(
    warmup: usize,
    n: usize,
    mut op: impl FnMut() -> Result<(), String>,
) -> Result<Summary, String> {
    for _ in 0..warmup {
        op()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op()?;
        samples.push(t.elapsed());
    }
    Ok(Summary::of(samples))
}

/// A duration with a unit that keeps three significant digits or so.
pub fn duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A count with thousands separated by commas, for reading at a glance.
pub fn count(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in KiB, as MiB.
pub fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(samples.into_iter().rev().collect());
        assert_eq!(s.n, 100);
        assert_eq!(s.median, Duration::from_micros(50));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.total, Duration::from_micros(5050));
        let one = Summary::of(vec![Duration::from_micros(7)]);
        assert_eq!((one.median, one.p99), (one.total, one.total));
    }

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(count(1234567.4), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(duration(Duration::from_nanos(12_345)), "12.3 µs");
        assert_eq!(duration(Duration::from_micros(1_500)), "1.50 ms");
        assert_eq!(kib(2048), "2.0 MiB");
    }
}
