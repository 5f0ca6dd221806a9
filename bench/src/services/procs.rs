//! What `/proc` says about one process: its name, which benchmark service it is, its memory.
//! Every reader returns `None` for a process that is gone (it may die between two reads).

use std::io::Read;

/// The first service's `sleep` argument: service `i` (from 0) runs `/bin/sleep <SLEEP_BASE + i>`,
/// so that its command line names it, the same way under every supervisor. 86,400,000 s is
/// 1000 days: no `sleep` ends during a run.
pub const SLEEP_BASE: u32 = 86_400_000;

/// The program every service runs.
pub const SLEEP: &str = "/bin/sleep";

/// Bytes of `/proc/PID/cmdline` read at most: a service's command line is short.
const CMDLINE_MAX: u64 = 256;

/// The service a process is the `sleep` of: `Some(i)` when its command line is
/// `…sleep <SLEEP_BASE + i>`, `None` otherwise (another program, or not yet executed).
pub fn service_of(pid: u32) -> Option<u32> {
    let file = std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
    let mut cmdline = Vec::new();
    file.take(CMDLINE_MAX).read_to_end(&mut cmdline).ok()?;
    parse_service(&cmdline)
}

fn parse_service(cmdline: &[u8]) -> Option<u32> {
    let mut args = cmdline.strip_suffix(b"\0")?.split(|&b| b == 0);
    let program = args.next()?;
    let arg = args.next()?;
    if args.next().is_some() || !program.ends_with(b"sleep") {
        return None;
    }
    std::str::from_utf8(arg)
        .ok()?
        .parse::<u32>()
        .ok()?
        .checked_sub(SLEEP_BASE)
}

/// The proportional set size of process `pid` in KiB: its private memory, plus each shared
/// page divided by the number of processes that map it (`Pss:` of `/proc/PID/smaps_rollup`).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The parent of process `pid` (`/proc/PID/stat`, the field after the state).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces and parentheses itself.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The children of process `pid`'s main thread (`/proc/PID/task/PID/children`).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Every process on the machine.
pub fn all() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) -> Result<(), String> {
    let raw = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    // SAFETY: kill takes plain integers.
    if unsafe { libc::kill(raw, signal) } == 0 {
        Ok(())
    } else {
        Err(format!("kill {pid}: {}", std::io::Error::last_os_error()))
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of the kernel's process events' timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec.max(0) as u64 * 1_000_000_000 + ts.tv_nsec.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_named_by_its_sleep_argument() {
        assert_eq!(parse_service(b"/bin/sleep\x0086400007\0"), Some(7));
        assert_eq!(parse_service(b"sleep\x0086400000\0"), Some(0));
        assert_eq!(parse_service(b"/bin/sleep\x001000\0"), None);
        assert_eq!(parse_service(b"/bin/sh\x00./run\0"), None);
        assert_eq!(parse_service(b"/bin/sleep\x0086400007\x00x\0"), None);
        assert_eq!(parse_service(b""), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(pss_kib(me).is_some_and(|k| k > 0));
        assert!(parent(me).is_some_and(|p| p > 0));
        assert_eq!(service_of(me), None);
        assert!(all().contains(&me));
        let before = monotonic_ns();
        assert!(monotonic_ns() >= before);
    }
}
