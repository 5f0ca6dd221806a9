//! Figures about archon as the kernel sees it: how often an idle archon wakes up (its context
//! switches, from `/proc`) and which syscalls it makes (`strace -c`), and the instructions it
//! executes per `Ping` (`valgrind --tool=callgrind`). A figure that needs a missing tool is
//! skipped, with a note.

use std::ffi::OsString;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::archon::Archon;

/// How long strace may take to attach, and to write its summary once interrupted, at least…
const STRACE_TIMEOUT: Duration = Duration::from_secs(10);
/// …and per process it attaches to (the service bench attaches to thousands).
const STRACE_TIMEOUT_PER_PROCESS: Duration = Duration::from_millis(5);

/// How long archon is given to finish with the last client before it counts as idle.
const SETTLE: Duration = Duration::from_millis(200);

/// Pause between two checks while waiting for strace.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// Whether `program --version` runs.
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A figure, or why it was not measured.
pub enum Probe<T> {
    /// Measured.
    Done(T),
    /// Not measured: why.
    Skipped(String),
}

/// What archon does while nobody talks to it.
pub struct Idle {
    /// Its context switches (voluntary and not) during the first window, without strace.
    pub wakeups: u64,
    /// Where it sleeps (`/proc/PID/wchan`).
    pub wchan: String,
    /// The syscalls strace saw during the second window: (name, calls), most first.
    pub syscalls: Probe<Vec<(String, u64)>>,
}

/// Watches the idle `pid` for `window` through `/proc`, then for `window` again with strace.
pub fn idle(pid: u32, dir: &Path, window: Duration) -> Result<Idle, String> {
    // Let archon see the end of the last connection first.
    std::thread::sleep(SETTLE);
    let before = context_switches(pid)?;
    std::thread::sleep(window);
    let wakeups = context_switches(pid)?.saturating_sub(before);
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    Ok(Idle {
        wakeups,
        wchan: wchan.trim().to_string(),
        syscalls: syscalls(&[pid], dir, window)?,
    })
}

/// The context switches of process `pid` so far (its threads': archon has one).
fn context_switches(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(status
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.ends_with("ctxt_switches")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum())
}

/// Syscalls counted by `strace -c -f` attached to the processes `pids` for `window`, once it
/// has attached to all of them: (name, calls), most first.
pub fn syscalls(
    pids: &[u32],
    dir: &Path,
    window: Duration,
) -> Result<Probe<Vec<(String, u64)>>, String> {
    if !have("strace") {
        return Ok(Probe::Skipped("strace not found".to_string()));
    }
    let out = dir.join("strace.txt");
    let err = dir.join("strace.err");
    let err_file = File::create(&err).map_err(|e| format!("{}: {e}", err.display()))?;
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f"]);
    for pid in pids {
        cmd.arg("-p").arg(pid.to_string());
    }
    let mut strace = cmd
        .arg("-o")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .map_err(|e| format!("strace: {e}"))?;
    let timeout = STRACE_TIMEOUT + STRACE_TIMEOUT_PER_PROCESS * pids.len() as u32;
    // strace says "Process N attached" for each process (or why it could not attach to one).
    let attached = wait_for(&mut strace, timeout, || {
        std::fs::read_to_string(&err).is_ok_and(|t| {
            t.lines()
                .filter(|l| l.contains("attached") || l.contains("attach:"))
                .count()
                >= pids.len()
        })
    });
    if !attached {
        let _ = strace.kill();
        let _ = strace.wait();
        let why = std::fs::read_to_string(&err).unwrap_or_default();
        let why = why.lines().last().unwrap_or_default();
        return Ok(Probe::Skipped(format!("strace did not attach: {why}")));
    }
    std::thread::sleep(window);
    if let Ok(spid) = libc::pid_t::try_from(strace.id()) {
        // SAFETY: kill takes plain integers; spid is our child, not yet reaped.
        unsafe { libc::kill(spid, libc::SIGINT) };
    }
    if !wait_for(&mut strace, timeout, || false) {
        let _ = strace.kill();
        let _ = strace.wait();
        return Err("strace did not exit on SIGINT".to_string());
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(Probe::Done(parse_strace_summary(&text)))
}

/// Waits until `done()` or until `child` exits (true when one of them happened in time).
fn wait_for(child: &mut Child, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() || matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(POLL_PAUSE);
    }
    false
}

/// The rows of `strace -c`'s table: `% time  seconds  usecs/call  calls  [errors]  syscall`.
fn parse_strace_summary(text: &str) -> Vec<(String, u64)> {
    let mut rows: Vec<(String, u64)> = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let calls = cols.get(3)?.parse().ok()?;
            let name = cols.last()?;
            (*name != "total").then(|| (name.to_string(), calls))
        })
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    rows
}

/// User-space instructions archon executes per `Ping`, counted by callgrind around `pings`
/// sequential round trips on one connection (after a warm-up), with archon started anew under
/// valgrind.
pub fn instructions_per_ping(archon: &Path, dir: &Path, pings: u64) -> Result<Probe<u64>, String> {
    if !have("valgrind") || !have("callgrind_control") {
        return Ok(Probe::Skipped("valgrind (callgrind) not found".to_string()));
    }
    let out = dir.join("callgrind.out");
    let mut file_option = OsString::from("--callgrind-out-file=");
    file_option.push(&out);
    let wrapper = [
        OsString::from("valgrind"),
        OsString::from("--tool=callgrind"),
        file_option,
    ];
    let archon = Archon::start(archon, &wrapper, dir, "callgrind")?;
    let mut conn = archon.connect()?;
    for _ in 0..200 {
        conn.expect(b"Ping\n", b"Pong")?;
    }
    let pid = archon.pid().to_string();
    callgrind_control(&["--zero", &pid])?;
    for _ in 0..pings {
        conn.expect(b"Ping\n", b"Pong")?;
    }
    callgrind_control(&["--dump=archon-bench", &pid])?;
    drop(conn);
    archon.stop()?;
    let dumps = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in dumps.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if !text.contains("Trigger: dump archon-bench") {
            continue;
        }
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or("callgrind's dump has no total")?;
        return Ok(Probe::Done(total / pings.max(1)));
    }
    Err("callgrind wrote no dump".to_string())
}

fn callgrind_control(args: &[&str]) -> Result<(), String> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("callgrind_control {}: {status}", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_rows() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
  0.00    0.000000           0         1         1 restart_syscall
  0.00    0.000000           0         3           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.000000           0         4         1 total
";
        assert_eq!(
            parse_strace_summary(text),
            vec![
                ("epoll_wait".to_string(), 3),
                ("restart_syscall".to_string(), 1)
            ]
        );
        assert!(parse_strace_summary("").is_empty());
    }
}
