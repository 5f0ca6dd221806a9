//! One cell of the table: one supervisor with N services, started in a cgroup of its own,
//! measured, and killed with everything it started.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cgroup::Cgroup;
use super::execs::Execs;
use super::procs;
use super::setup::{Kind, Launch, sleep_arg};
use crate::conn::Conn;
use crate::probes::{self, Probe};
use crate::stats::percentile;

/// After all services run, how long the bench waits before it measures memory and kills the
/// first service: runsv and daemontools' supervise delay the restart of a service that ran
/// less than a second (see the notes), and that is not what is measured.
const SETTLE: Duration = Duration::from_millis(1_200);
/// After a restart is seen, how long later `execve`s of the same process are still taken
/// (a `run` script is executed first, then `sleep` in the same process).
const EXEC_GRACE: Duration = Duration::from_millis(30);
/// Without the kernel's exec events: pause between two looks for the restarted `sleep`.
const POLL_PAUSE: Duration = Duration::from_micros(100);
/// Pause between two looks into the supervisor's log while waiting for all services.
const LOG_PAUSE: Duration = Duration::from_millis(500);
/// Shortest pause between two scans of the cgroup while waiting for all services.
const SCAN_PAUSE: Duration = Duration::from_millis(5);
/// How long archon may take to listen on its socket (StartDaemon mode).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The supervisors' search path (they find their helpers, runsv, s6-supervise, supervise, in it).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Limits and sample counts of a cell.
pub struct Limits {
    /// Time for all services to run, then for the restart samples.
    pub budget: Duration,
    /// Restart samples (distinct services, each killed once).
    pub samples: usize,
    /// How long a killed service may take to run again before the bench gives up on it.
    pub sample_timeout: Duration,
    /// The idle window strace watches.
    pub idle: Duration,
}

/// A figure, or what the cell says instead.
pub enum Measured<T> {
    Done(T),
    Not(String),
}

impl<T> Measured<T> {
    /// Not measured because an earlier figure failed.
    fn dash() -> Measured<T> {
        Measured::Not("—".to_string())
    }
}

/// Restart latencies.
pub struct Restarts {
    pub median: Duration,
    pub p90: Duration,
    pub n: usize,
}

/// Everything measured in one cell.
pub struct Cell {
    /// From the start of the supervisor until every service's `sleep` has executed.
    pub up: Measured<Duration>,
    /// Sum of the PSS of the supervisor's own processes (KiB), and how many there are.
    pub memory: Measured<(u64, usize)>,
    pub restarts: Measured<Restarts>,
    /// Syscalls in the idle window: the total, and (name, calls), most first.
    pub syscalls: Measured<(u64, Vec<(String, u64)>)>,
    /// What the reader should know about this cell.
    pub notes: Vec<String>,
}

impl Cell {
    /// Adds a note.
    pub fn note(mut self, note: String) -> Cell {
        self.notes.push(note);
        self
    }

    pub fn failed(why: String) -> Cell {
        Cell {
            up: Measured::Not(why),
            memory: Measured::dash(),
            restarts: Measured::dash(),
            syscalls: Measured::dash(),
            notes: Vec::new(),
        }
    }
}

/// Measures `kind` with `n` services as `launch` says, in the new cgroup `cgroup`, writing its
/// log and strace's files in `dir`. Leaves the processes running: the caller kills the cgroup.
pub fn measure(
    kind: Kind,
    n: u32,
    launch: &Launch,
    cgroup: &Cgroup,
    execs: Option<&Execs>,
    limits: &Limits,
    dir: &Path,
) -> Result<Cell, String> {
    let log = dir.join(format!("{}.log", kind.name()));
    if let Some(execs) = execs {
        execs.take_all();
        execs.lost();
    }
    let deadline = Instant::now() + limits.budget;
    let t0 = procs::monotonic_ns();
    let mut child = spawn(launch, cgroup, n, &log)?;
    let restarts_apply = launch.socket.is_none();
    if let Some(socket) = &launch.socket {
        if let Err(e) = start_daemons(socket, n, &mut child) {
            return Ok(Cell::failed(format!("failed: {e}")));
        }
    }

    // (1) All up: every service's sleep is in the cgroup.
    let mut exec_at: HashMap<u32, u64> = HashMap::new();
    let mut sleeps: HashMap<u32, u32> = HashMap::new();
    let scan_done;
    let mut log_checked = Instant::now();
    loop {
        if let Some(execs) = execs {
            exec_at.extend(execs.take_all().into_iter().map(|e| (e.pid, e.at_ns)));
        }
        let scan = Instant::now();
        sleeps = scan_sleeps(cgroup, &sleeps);
        let distinct: HashSet<u32> = sleeps.values().copied().collect();
        if distinct.len() >= n as usize {
            scan_done = procs::monotonic_ns();
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(refusal(&log).unwrap_or_else(|| {
                Cell::failed(format!("exited ({status})")).note(last_line(&log))
            }));
        }
        if log_checked.elapsed() > LOG_PAUSE {
            if let Some(refused) = refusal(&log) {
                return Ok(refused);
            }
            log_checked = Instant::now();
        }
        if Instant::now() > deadline {
            return Ok(Cell::failed(format!(
                "timeout: {} of {n} up after {} s",
                distinct.len(),
                limits.budget.as_secs(),
            ))
            .note(last_line(&log)));
        }
        std::thread::sleep(scan.elapsed().max(SCAN_PAUSE));
    }
    let mut notes = Vec::new();
    let up = {
        if let Some(execs) = execs {
            exec_at.extend(execs.take_all().into_iter().map(|e| (e.pid, e.at_ns)));
        }
        let last_exec = sleeps
            .keys()
            .map(|pid| exec_at.get(pid).copied())
            .collect::<Option<Vec<u64>>>()
            .and_then(|at| at.into_iter().max());
        match last_exec {
            Some(at) if execs.is_some_and(|e| !e.lost()) => at.saturating_sub(t0),
            _ => {
                notes.push("all up timed by /proc scans (no exec events)".to_string());
                scan_done.saturating_sub(t0)
            }
        }
    };
    let up = Duration::from_nanos(up);
    std::thread::sleep(SETTLE);

    // (2) Memory: every process in the cgroup that is not a service's sleep.
    let members = cgroup.pids();
    let own: Vec<u32> = members
        .iter()
        .copied()
        .filter(|&pid| procs::service_of(pid).is_none())
        .collect();
    let pss: u64 = own.iter().filter_map(|&pid| procs::pss_kib(pid)).sum();
    let memory = Measured::Done((pss, own.len()));

    // (3) Restarts after SIGKILL.
    let restarts = if restarts_apply {
        restart_samples(n, cgroup, execs, limits, deadline, &mut notes)
    } else {
        Measured::Not("n/a (StartDaemon)".to_string())
    };

    // (4) Idle syscalls, in every own process (those of now: restarts do not change them).
    std::thread::sleep(SETTLE);
    let own: Vec<u32> = cgroup
        .pids()
        .into_iter()
        .filter(|&pid| procs::service_of(pid).is_none())
        .collect();
    let syscalls = match probes::syscalls(&own, dir, limits.idle)? {
        Probe::Done(calls) => Measured::Done((calls.iter().map(|c| c.1).sum(), calls)),
        Probe::Skipped(why) => Measured::Not(why),
    };
    if let Ok(Some(status)) = child.try_wait() {
        notes.push(format!("it exited during the run ({status})"));
    }
    Ok(Cell {
        up: Measured::Done(up),
        memory,
        restarts,
        syscalls,
        notes,
    })
}

/// Starts the supervisor: moved into `cgroup` before it executes, in a session of its own,
/// with room for a few fds per service, its output into `log`.
fn spawn(launch: &Launch, cgroup: &Cgroup, n: u32, log: &Path) -> Result<Child, String> {
    let (program, args) = launch.argv.split_first().ok_or("empty command line")?;
    let procs_file = cgroup.procs_for_writing()?;
    let procs_fd = procs_file.as_raw_fd();
    // As many as the hard limit allows (raising it needs CAP_SYS_RESOURCE, which a container
    // may not give even to root).
    let nofile = libc::rlim_t::from(n)
        .saturating_mul(4)
        .max(1 << 16)
        .min(hard_nofile());
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&launch.cwd)
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: the closure makes only plain system calls (write, setrlimit, setsid) on values
    // prepared before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    drop(procs_file);
    Ok(child)
}

/// The bench's hard limit of open files.
pub fn hard_nofile() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_max
    } else {
        1024
    }
}

/// The services' sleeps in the cgroup: pid -> service. A pid already known as a sleep that
/// is still in the cgroup is the same process (a sleep does not exec again).
fn scan_sleeps(cgroup: &Cgroup, known: &HashMap<u32, u32>) -> HashMap<u32, u32> {
    cgroup
        .pids()
        .into_iter()
        .filter_map(|pid| {
            let service = known
                .get(&pid)
                .copied()
                .or_else(|| procs::service_of(pid))?;
            Some((pid, service))
        })
        .collect()
}

/// archon without `--config`: N `StartDaemon` requests, pipelined in windows of as many as
/// archon reads ahead.
fn start_daemons(socket: &Path, n: u32, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    let mut conn = loop {
        match Conn::connect(socket) {
            Ok(conn) => break conn,
            Err(e) => {
                if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                    return Err(format!("connect {}: {e}", socket.display()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let window = archon_proto::limits::MAX_PIPELINED as u32;
    let mut i = 0;
    while i < n {
        let end = (i + window).min(n);
        let lines: Vec<u8> = (i..end)
            .flat_map(|s| format!("StartDaemon,{},{}\n", procs::SLEEP, sleep_arg(s)).into_bytes())
            .collect();
        conn.send(&lines)?;
        for _ in i..end {
            let reply = conn.reply_fields()?;
            if reply.first().map(|f| &f[..]) != Some(b"Ok") {
                let reply: Vec<_> = reply.iter().map(|f| String::from_utf8_lossy(f)).collect();
                return Err(format!("StartDaemon got {:?}", reply.join(",")));
            }
        }
        i = end;
    }
    Ok(())
}

/// Kills the sleep of `limits.samples` distinct services, one after the other, and times
/// each until the service's new sleep has executed.
fn restart_samples(
    n: u32,
    cgroup: &Cgroup,
    execs: Option<&Execs>,
    limits: &Limits,
    deadline: Instant,
    notes: &mut Vec<String>,
) -> Measured<Restarts> {
    let mut by_service: HashMap<u32, u32> = scan_sleeps(cgroup, &HashMap::new())
        .into_iter()
        .map(|(pid, service)| (service, pid))
        .collect();
    let count = limits.samples.min(n as usize).max(1);
    let mut samples = Vec::with_capacity(count);
    for k in 0..count {
        if Instant::now() > deadline {
            notes.push(format!(
                "restarts: {k} of {count} samples within the budget"
            ));
            break;
        }
        // Spread over the services, each killed once.
        let service = (k as u64 * u64::from(n) / count as u64) as u32;
        let Some(&old) = by_service.get(&service) else {
            return Measured::Not(format!("service s{service} has no sleep"));
        };
        let outcome = match execs {
            Some(execs) => restart_by_events(execs, cgroup, old, service, limits.sample_timeout),
            None => restart_by_polling(old, service, limits.sample_timeout),
        };
        match outcome {
            Ok((new, latency)) => {
                samples.push(latency);
                by_service.insert(service, new);
            }
            Err(e) => return Measured::Not(e),
        }
    }
    if samples.is_empty() {
        return Measured::Not("no sample".to_string());
    }
    if execs.is_none() {
        notes.push(format!(
            "restarts timed by polling every {} µs (no exec events)",
            POLL_PAUSE.as_micros()
        ));
    }
    samples.sort_unstable();
    Measured::Done(Restarts {
        median: percentile(&samples, 0.5),
        p90: percentile(&samples, 0.9),
        n: samples.len(),
    })
}

/// SIGKILL to `old`, the sleep of `service`; the time from just before the kill to the
/// kernel's timestamp of the last `execve` of the process that runs the service's sleep next.
fn restart_by_events(
    execs: &Execs,
    cgroup: &Cgroup,
    old: u32,
    service: u32,
    timeout: Duration,
) -> Result<(u32, Duration), String> {
    execs.take_all();
    let t0 = procs::monotonic_ns();
    procs::kill(old, libc::SIGKILL)?;
    let limit = Instant::now() + timeout;
    let mut until = limit;
    let mut found: Option<(u32, u64)> = None;
    while let Some(exec) = execs.next(until) {
        match found {
            Some((pid, _)) if exec.pid == pid => found = Some((pid, exec.at_ns)),
            Some(_) => {}
            None => {
                if exec.pid != old
                    && procs::service_of(exec.pid) == Some(service)
                    && cgroup.contains(exec.pid)
                {
                    found = Some((exec.pid, exec.at_ns));
                    until = Instant::now() + EXEC_GRACE;
                }
            }
        }
    }
    if execs.lost() {
        return Err("exec events lost".to_string());
    }
    let (pid, at) = found.ok_or_else(|| {
        format!(
            "s{service} not running {} s after SIGKILL",
            timeout.as_secs()
        )
    })?;
    Ok((pid, Duration::from_nanos(at.saturating_sub(t0))))
}

/// The same without exec events: looks at the children of the killed sleep's parent every
/// `POLL_PAUSE` until one runs the service's sleep.
fn restart_by_polling(
    old: u32,
    service: u32,
    timeout: Duration,
) -> Result<(u32, Duration), String> {
    let parent = procs::parent(old).ok_or_else(|| format!("no parent for pid {old}"))?;
    let t0 = Instant::now();
    procs::kill(old, libc::SIGKILL)?;
    while t0.elapsed() < timeout {
        if let Some(new) = procs::children(parent)
            .into_iter()
            .find(|&c| c != old && procs::service_of(c) == Some(service))
        {
            return Ok((new, t0.elapsed()));
        }
        std::thread::sleep(POLL_PAUSE);
    }
    Err(format!(
        "s{service} not running {} s after SIGKILL",
        timeout.as_secs()
    ))
}

/// A supervisor that refuses to supervise N services says so in its log: the cell then says
/// "refused", and a note quotes the log.
fn refusal(log: &Path) -> Option<Cell> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().find(|l| {
        // runsvdir and svscan: a static table of 1000 services (MAXSERVICES, SERVICES).
        l.contains("too many")
            // supervisord: three pipes per child, more fds than the hard limit allows.
            || l.contains("minimum number of file descriptors")
    })?;
    let cell = if line.contains("too many") {
        "refused: more than 1,000 services"
    } else {
        "refused: not enough fds"
    };
    Some(Cell::failed(cell.to_string()).note(format!("its log: {}", line.trim())))
}

/// The last line of the supervisor's log, as a note.
fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().last().unwrap_or("(empty)");
    format!("its log ends with: {}", line.trim())
}
