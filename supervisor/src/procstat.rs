//! Per-process figures from /proc for `Status` and `Tree`: parent, name, CPU time and start time
//! (`/proc/PID/stat`), resident memory (`/proc/PID/statm`), and the descendants of a process
//! found by one scan of /proc (for a service without a cgroup).
//!
//! The parsers are pure and tested on fixed text; reading is one `read` per file, and a process
//! that ends meanwhile is simply absent from the answer.

use std::collections::HashMap;
use std::fs;
use std::sync::OnceLock;

/// What `/proc/PID/stat` says of a process, the fields archon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatLine {
    /// Its pid (field 1).
    pub pid: i32,
    /// Its name, `comm` (field 2, without the parentheses; may itself hold parentheses and
    /// spaces; not UTF-8 bytes are replaced).
    pub comm: String,
    /// Its state letter (field 3): R, S, D, T, t, Z, X, I...
    pub state: u8,
    /// Its parent's pid (field 4).
    pub ppid: i32,
    /// The kernel's `PF_*` flags (field 9).
    pub flags: u64,
    /// CPU time in user mode plus kernel mode, in clock ticks (fields 14 and 15).
    pub cpu_ticks: u64,
    /// When it started, in clock ticks after boot (field 22): with the pid, an identity that
    /// survives pid reuse.
    pub start_ticks: u64,
}

/// `PF_KTHREAD` of the kernel's `include/linux/sched.h`: the process is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

impl StatLine {
    /// True for a kernel thread (kthreadd and its children), which no signal ends.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses `/proc/PID/stat`. The name sits between the first `(` and the last `)`, since the
/// name itself may hold both.
pub fn parse_stat(text: &[u8]) -> Option<StatLine> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid = std::str::from_utf8(&text[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = String::from_utf8_lossy(&text[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    // Fields from 3 (state) on; field n is at index n - 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let num = |n: usize| field(n).and_then(|f| f.parse::<u64>().ok());
    let state = *field(3)?.as_bytes().first()?;
    Some(StatLine {
        pid,
        comm,
        state,
        ppid: field(4)?.parse().ok()?,
        flags: num(9)?,
        cpu_ticks: num(14)?.saturating_add(num(15)?),
        start_ticks: num(22)?,
    })
}

/// The resident set of `/proc/PID/statm` (its second field), in pages.
pub fn parse_statm_resident(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text)
        .ok()?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux), the unit of
/// [`StatLine::cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf only queries.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
    })
}

/// The page size in KiB, the unit of statm's figures.
pub fn page_kib() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf only queries.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(p).ok().filter(|&p| p >= 1024).unwrap_or(4096) / 1024
    })
}

/// Clock ticks as milliseconds.
pub fn ticks_to_ms(ticks: u64) -> u64 {
    let per_second = ticks_per_second();
    ticks.saturating_mul(1000) / per_second
}

/// A process's figures at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// What its `stat` says.
    pub stat: StatLine,
    /// Its resident memory, in KiB.
    pub rss_kib: u64,
}

/// Samples process `pid`; `None` when it does not exist (any more).
pub fn sample(pid: i32) -> Option<Stat> {
    let stat = parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?)?;
    // A zombie has no memory and its statm reads as zeros, or fails once it is reaped.
    let pages = fs::read(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| parse_statm_resident(&t))
        .unwrap_or(0);
    Some(Stat {
        stat,
        rss_kib: pages.saturating_mul(page_kib()),
    })
}

/// The parent of process `pid`; `None` when it does not exist (any more).
pub fn ppid(pid: i32) -> Option<i32> {
    parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?).map(|s| s.ppid)
}

/// A process in a tree: (pid, parent pid, name).
pub type Node = (i32, i32, String);

/// Every process on the system as (pid, ppid, comm), by one scan of /proc.
pub fn all_processes() -> Vec<Node> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let s = parse_stat(&fs::read(format!("/proc/{pid}/stat")).ok()?)?;
            Some((s.pid, s.ppid, s.comm))
        })
        .collect()
}

/// The descendants of `root` (not `root` itself), parents before their children, each
/// generation in pid order, from one scan of /proc.
pub fn descendants(root: i32) -> Vec<Node> {
    descendants_in(root, all_processes())
}

/// The descendants of `root` among `procs`, parents before children. A pid is listed once
/// even if the snapshot, taken while processes come and go, shows a loop.
pub fn descendants_in(root: i32, mut procs: Vec<Node>) -> Vec<Node> {
    procs.sort_by_key(|n| n.0);
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, n) in procs.iter().enumerate() {
        children.entry(n.1).or_default().push(i);
    }
    let mut taken = vec![false; procs.len()];
    let mut order = Vec::new();
    let mut next = 0;
    let mut parent = root;
    loop {
        for &i in children.get(&parent).map_or(&[][..], Vec::as_slice) {
            if !taken[i] && procs[i].0 != root {
                taken[i] = true;
                order.push(i);
            }
        }
        let Some(&i) = order.get(next) else { break };
        parent = procs[i].0;
        next += 1;
    }
    let mut slots: Vec<Option<Node>> = procs.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_a_hostile_name() {
        // A name with a space, parentheses and a closing parenthesis followed by digits.
        let text = b"4242 (a) b) 1 2 (x) S 17 4242 4242 0 -1 4194560 120 0 0 0 \
                     250 31 0 0 20 0 1 0 987654 10559488 512 18446744073709551615\n";
        let s = parse_stat(text);
        assert!(s.as_ref().is_some_and(|s| !s.is_kernel_thread()));
        assert_eq!(
            s,
            Some(StatLine {
                pid: 4242,
                comm: "a) b) 1 2 (x".into(),
                state: b'S',
                ppid: 17,
                flags: 4_194_560,
                cpu_ticks: 281,
                start_ticks: 987_654,
            })
        );
    }

    #[test]
    fn stat_of_a_kernel_thread_and_broken_lines() {
        let kthread = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 3 0 0 20 0 1 0 1 0 0 \
                        18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(kthread);
        assert_eq!(
            s.map(|s| (s.ppid, s.is_kernel_thread(), s.comm, s.cpu_ticks)),
            Some((0, true, "kthreadd".into(), 3))
        );
        assert_eq!(parse_stat(b""), None);
        assert_eq!(parse_stat(b"12 (sh"), None);
        assert_eq!(parse_stat(b"12 (sh) S 1 2 3"), None, "too few fields");
        assert_eq!(
            parse_stat(b"x (sh) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 5 0 0"),
            None
        );
        // Non-UTF-8 bytes in the name are replaced, the rest still parses.
        let odd = b"7 (\xff\xfe) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            parse_stat(odd).map(|s| (s.comm, s.cpu_ticks, s.start_ticks)),
            Some(("\u{fffd}\u{fffd}".into(), 3, 5))
        );
    }

    #[test]
    fn statm_resident_pages() {
        assert_eq!(parse_statm_resident(b"2578 512 448 6 0 190 0\n"), Some(512));
        assert_eq!(parse_statm_resident(b"0 0 0 0 0 0 0\n"), Some(0));
        assert_eq!(parse_statm_resident(b"2578"), None);
    }

    #[test]
    fn ticks_and_pages() {
        assert!(ticks_per_second() > 0);
        assert_eq!(ticks_to_ms(ticks_per_second() * 3), 3000);
        assert!(page_kib() >= 4);
    }

    fn node(pid: i32, ppid: i32) -> Node {
        (pid, ppid, format!("p{pid}"))
    }

    #[test]
    fn descendants_come_parents_first() {
        let procs = vec![
            node(1, 0),
            node(50, 10),
            node(10, 1),
            node(11, 10),
            node(60, 11),
            node(20, 1),
            node(12, 10),
            node(99, 60),
        ];
        let pids = |v: Vec<Node>| v.into_iter().map(|n| n.0).collect::<Vec<_>>();
        assert_eq!(
            pids(descendants_in(10, procs.clone())),
            vec![11, 12, 50, 60, 99]
        );
        assert_eq!(pids(descendants_in(60, procs.clone())), vec![99]);
        assert_eq!(pids(descendants_in(99, procs.clone())), Vec::<i32>::new());
        assert_eq!(pids(descendants_in(7, procs)), Vec::<i32>::new());
        // A loop in a racy snapshot ends; the root is never its own descendant.
        let looped = vec![node(5, 6), node(6, 5), node(7, 6)];
        assert_eq!(pids(descendants_in(5, looped)), vec![6, 7]);
    }

    #[test]
    fn the_test_process_itself() {
        let me = std::process::id() as i32;
        let s = sample(me);
        assert!(s.is_some());
        let Some(s) = s else { return };
        // SAFETY: getppid has no memory effects.
        assert_eq!(s.stat.ppid, unsafe { libc::getppid() });
        assert_eq!(s.stat.pid, me);
        let comm = fs::read_to_string("/proc/self/comm").unwrap_or_default();
        assert_eq!(s.stat.comm, comm.trim_end());
        assert!(s.rss_kib > 0);
        assert!(s.stat.start_ticks > 0);
        assert_eq!(sample(i32::MAX), None);
    }

    #[test]
    fn descendants_of_a_real_child() -> Result<(), String> {
        use crate::spawn::{Exec, Spawner};
        use std::os::fd::AsRawFd;
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        let script = "sleep 1000 >/dev/null & (sleep 1000 >/dev/null & echo started; wait) & wait";
        let exec = Exec::prepare(&archon_proto::Command::new(["/bin/sh", "-c", script]), &[])
            .map_err(|e| e.to_string())?;
        let mut fds = [0; 2];
        // SAFETY: fds is a valid [c_int; 2].
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 just returned these fds.
        let (r, w) = unsafe {
            use std::os::fd::{FromRawFd, OwnedFd};
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        let child = spawner
            .spawn(&exec, [0, w.as_raw_fd(), 2])
            .map_err(|e| e.to_string())?;
        drop(w);
        // The first line; the shell keeps the pipe open until it ends.
        let mut line = [0u8; 8];
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(r.as_raw_fd(), line.as_mut_ptr().cast(), line.len()) };
        assert_eq!(&line[..n.max(0) as usize], b"started\n");

        let tree = descendants(child.pid);
        let me = std::process::id() as i32;
        let mine: Vec<i32> = descendants(me).into_iter().map(|n| n.0).collect();
        // SAFETY: the child leads its own process group (it called setsid): kill it all.
        unsafe { libc::kill(-child.pid, libc::SIGKILL) };
        let mut si = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: waitid on our own child's pidfd (P_PIDFD = 3).
        unsafe {
            libc::waitid(
                3,
                child.pidfd.as_raw_fd() as u32,
                si.as_mut_ptr(),
                libc::WEXITED,
            )
        };

        // sleep, the subshell, and the subshell's sleep: three, parents first.
        assert_eq!(tree.len(), 3, "{tree:?}");
        let direct: Vec<&Node> = tree.iter().filter(|n| n.1 == child.pid).collect();
        assert_eq!(direct.len(), 2, "{tree:?}");
        let grandchild = &tree[2];
        assert!(direct.iter().any(|n| n.0 == grandchild.1), "{tree:?}");
        // The child and its tree are among the test process's descendants too.
        assert!(mine.contains(&child.pid));
        assert!(
            tree.iter().all(|n| mine.contains(&n.0)),
            "{tree:?} {mine:?}"
        );
        Ok(())
    }
}
