//! CPU time and page faults, to tell where the time of a `Run` goes: in archon, in its child,
//! or in neither (waiting for the scheduler).

use std::time::Duration;

/// CPU time of process `pid`'s main thread (archon has one): `se.sum_exec_runtime` of
/// `/proc/PID/sched`, in ms with µs precision; else `utime + stime` of `/proc/PID/stat`.
pub fn process(pid: u32) -> Result<Duration, String> {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap_or_default();
    let runtime = sched.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        let ms: f64 =
            (key.trim() == "se.sum_exec_runtime").then(|| value.trim().parse().ok())??;
        Some(Duration::from_secs_f64(ms / 1e3))
    });
    match runtime {
        Some(d) => Ok(d),
        None => Ok(stat_ticks(pid, 11)? + stat_ticks(pid, 12)?),
    }
}

/// CPU time of the children process `pid` has reaped: `cutime + cstime` of `/proc/PID/stat`
/// (clock-tick resolution, 10 ms: read it over many children).
pub fn reaped_children(pid: u32) -> Result<Duration, String> {
    Ok(stat_ticks(pid, 13)? + stat_ticks(pid, 14)?)
}

/// Minor page faults of process `pid` so far (`minflt` of `/proc/PID/stat`): after a fork,
/// each page the parent or the child writes before the child execs is copied in one.
pub fn minor_faults(pid: u32) -> Result<u64, String> {
    stat_field(pid, 7)
}

/// Field `index` of `/proc/PID/stat`, counted from the one after the command name (the
/// state is 0, utime 11, stime 12, cutime 13, cstime 14), in clock ticks, as a duration.
fn stat_ticks(pid: u32, index: usize) -> Result<Duration, String> {
    let ticks = stat_field(pid, index)?;
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// Field `index` of `/proc/PID/stat`, counted from the one after the command name.
fn stat_field(pid: u32, index: usize) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name is in parentheses and may hold spaces and parentheses itself.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_name
        .split_whitespace()
        .nth(index)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| format!("{path}: no field {index}"))
}

/// CPU time of the calling thread, precise.
pub fn this_thread() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Minor page faults of the calling thread so far.
pub fn this_thread_faults() -> u64 {
    rusage(libc::RUSAGE_THREAD).ru_minflt.max(0) as u64
}

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid out-pointer.
    unsafe { libc::getrusage(who, &mut usage) };
    usage
}

/// CPU time of the children this process has reaped, in µs resolution.
pub fn own_children() -> Duration {
    let usage = rusage(libc::RUSAGE_CHILDREN);
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() -> Result<(), String> {
        let me = std::process::id();
        let before = this_thread();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(this_thread() > before);
        // The test runs in a thread of its own: the main thread's figure has not grown, but the
        // main thread has run.
        assert!(process(me)? > Duration::ZERO);
        assert!(reaped_children(me).is_ok());
        let faults = (minor_faults(me)?, this_thread_faults());
        let touched = std::hint::black_box(vec![1u8; 8 << 20]);
        assert!(
            this_thread_faults() > faults.1,
            "{} pages touched",
            touched.len() / 4096
        );
        assert!(minor_faults(me)? > faults.0);
        Ok(())
    }
}
