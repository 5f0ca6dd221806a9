//! archon-bench: starts its own archon on a temp socket, measures it, and prints one markdown
//! table: round trips against a direct `posix_spawn`, Run throughput with 1 and 16 clients,
//! events through 1 and 100 subscribers, 1000 daemons (start, List, memory, Stop), the syscalls
//! of an idle archon and the instructions of a `Ping`. Nothing here asserts anything about time: the figures are for reading.
//!
//! Usage: `archon-bench [--archon PATH]` (default: the `archon` next to this program);
//! `bench/run` builds both in release and runs it.
//!
//! `archon-bench [--archon PATH] services [...]` is the other bench: archon beside runit, s6,
//! daemontools and supervisord with 100 to 10,000 services (`bench/services` installs them and
//! runs it; see `services/mod.rs`). `archon-bench [--archon PATH] shim` measures what the bind
//! shim adds to a `bind()` (see `shim.rs`; `bench/run shim`). `archon-bench [--archon PATH]
//! handlers` measures what a Lua handler costs per event (see `handlers.rs`).

mod archon;
mod conn;
mod cpu;
mod direct;
mod events;
mod handlers;
mod probes;
mod services;
mod shim;
mod stats;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use archon_proto::limits::DEFAULT_MAX_RUNS;
use archon_proto::{Command, Request};

use crate::archon::{Archon, TempDir};
use crate::conn::{Conn, number};
use crate::direct::Spawner;
use crate::probes::Probe;
use crate::stats::{Summary, count, duration, kib, rate, time_each};
use crate::table::{Row, render};

/// Pings timed (after `PING_WARMUP` untimed).
const PINGS: usize = 5_000;
const PING_WARMUP: usize = 1_000;
/// `Run,/bin/true` round trips timed, each paired with a direct spawn.
const RUNS: usize = 1_000;
const RUN_WARMUP: usize = 100;
/// Runs for the one-client throughput.
const RUNS_ONE_CLIENT: usize = 1_000;
/// Clients, and runs per client, for the parallel throughput.
const CLIENTS: usize = 16;
const RUNS_PER_CLIENT: usize = 125;
/// Daemons started (`sleep 1000`), and `List` round trips timed with all of them up.
const DAEMONS: usize = 1_000;
const LISTS: usize = 10;
/// How long strace watches the idle archon.
const IDLE_WINDOW: Duration = Duration::from_secs(2);
/// Pings counted by callgrind.
const COUNTED_PINGS: u64 = 1_000;

/// Exit code for a bad command line (as archon's).
const EXIT_USAGE: u8 = 100;

fn main() -> ExitCode {
    // The worker of the shim bench: this program as the process that binds.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "bind-loop") {
        return match shim::bind_loop(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("archon-bench bind-loop: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (archon, services) = match parse_args() {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "archon-bench: {e}\nusage: archon-bench [--archon PATH] [services ... | shim | handlers]"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match services {
        Some(Bench::Services(args)) => services::run(&archon, &args),
        Some(Bench::Shim) => shim::run(&archon),
        Some(Bench::Handlers) => handlers::run(&archon),
        None => bench(&archon),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("archon-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A bench other than the main one.
enum Bench {
    /// `services ...`, with its arguments.
    Services(Vec<std::ffi::OsString>),
    /// `shim`.
    Shim,
    /// `handlers`.
    Handlers,
}

/// The archon binary to measure, and the other bench asked for; `None` after `--help`.
type Args = (PathBuf, Option<Bench>);

fn parse_args() -> Result<Option<Args>, String> {
    let mut archon = None;
    let mut services = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--archon") => {
                archon = Some(PathBuf::from(args.next().ok_or("--archon needs a path")?))
            }
            Some("services") => services = Some(Bench::Services(args.by_ref().collect())),
            Some("shim") => services = Some(Bench::Shim),
            Some("handlers") => services = Some(Bench::Handlers),
            Some("-h" | "--help") => {
                println!(
                    "usage: archon-bench [--archon PATH] [shim | handlers]\nprints a markdown table of archon's figures (shim: of the bind shim's cost; handlers: of a Lua handler's)\n\n{}",
                    services::USAGE
                );
                return Ok(None);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let archon = match archon {
        Some(path) => path,
        None => {
            let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            me.with_file_name("archon")
        }
    };
    Ok(Some((archon, services)))
}

fn bench(archon_bin: &std::path::Path) -> Result<(), String> {
    let dir = TempDir::new()?;
    let archon = Archon::start(archon_bin, &[], dir.path(), "archon")?;
    let rss_start = archon.rss_kib()?;
    let mut conn = archon.connect()?;
    let version = conn.fields(b"Version\n")?;
    let version =
        String::from_utf8_lossy(version.get(1).map_or(&b"?"[..], |v| &v[..])).into_owned();

    // Printed with the table at the end, so that a failure leaves no half table on stdout.
    let header = format!(
        "## archon bench\n\n- machine: {}\n- archon {version} (release), defaults (--max-runs \
         {DEFAULT_MAX_RUNS}); one connection per client, replies read as raw lines; sequential \
         round trips unless said otherwise\n",
        machine()
    );

    let mut rows = Vec::new();
    for _ in 0..PING_WARMUP {
        conn.expect(b"Ping\n", b"Pong")?;
    }
    let archon_cpu = cpu::process(archon.pid())?;
    let ping = time_each(0, PINGS, || conn.expect(b"Ping\n", b"Pong"))?;
    let archon_cpu = cpu::process(archon.pid())?.saturating_sub(archon_cpu);
    rows.push(Row::timed("Ping round trip", &ping, ping.rate(), "ops"));
    rows.push(Row::value(
        "… per Ping: archon's CPU",
        duration(archon_cpu / PINGS as u32),
    ));

    // The callgrind figure, measured last with an archon of its own, goes here.
    let after_ping = rows.len();

    let run_line = Request::Run(Command::new(["/bin/true"]))
        .encode()
        .map_err(|e| format!("encode Run: {e}"))?;
    rows.extend(run_vs_direct(&archon, &mut conn, &run_line)?);
    rows.extend(run_throughput(&archon, &mut conn, &run_line)?);
    rows.extend(events::events(&archon)?);
    drop(conn);

    rows.push(Row::value("archon RSS, idle at start", kib(rss_start)));
    rows.extend(daemons(&archon, dir.path())?);
    archon.stop()?;

    rows.insert(
        after_ping,
        match probes::instructions_per_ping(archon_bin, dir.path(), COUNTED_PINGS)? {
            Probe::Done(per_ping) => Row::value(
                "… per Ping: archon's user-space instructions (callgrind)",
                count(per_ping as f64),
            )
            .n(count(COUNTED_PINGS as f64)),
            Probe::Skipped(why) => Row::value(
                "… per Ping: archon's instructions (callgrind)",
                format!("skipped: {why}"),
            ),
        },
    );

    println!("{header}");
    print!("{}", render(&rows));
    Ok(())
}

/// CPUs, kernel, CPU model, and the load when the bench started (the machine may be shared).
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".to_string());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs (nproc), Linux {} {}, {model}; load average at start {}",
        kernel.trim(),
        std::env::consts::ARCH,
        load.join(" ")
    )
}

/// `Run,/bin/true` round trips interleaved with direct starts of `/bin/true` by the bench
/// itself (`posix_spawn`, and `fork` + `execve`), each waited for, so that a change in the
/// machine's load weighs on all alike. Also the CPU time each costs, parent and child: what is
/// left of the round trip is waiting (for the scheduler, mostly).
fn run_vs_direct(archon: &Archon, conn: &mut Conn, run_line: &[u8]) -> Result<Vec<Row>, String> {
    let spawner = Spawner::new(&["/bin/true"])?;
    for _ in 0..RUN_WARMUP {
        conn.expect(run_line, b"ExitStatus,0")?;
        spawner.posix_spawn_wait()?;
        spawner.fork_exec_wait()?;
    }
    let pid = archon.pid();
    let archon_before = (
        cpu::process(pid)?,
        cpu::reaped_children(pid)?,
        cpu::minor_faults(pid)?,
    );
    let mut via_archon = Vec::with_capacity(RUNS);
    let mut spawned = Vec::with_capacity(RUNS);
    let mut forked = Vec::with_capacity(RUNS);
    // The bench's (parent's) CPU time and page faults, and its children's CPU time, for
    // posix_spawn and for fork.
    let mut spawn_cost = Cost::default();
    let mut fork_cost = Cost::default();
    let timed = |op: &dyn Fn() -> Result<(), String>, cost: &mut Cost| {
        let before = (
            cpu::this_thread(),
            cpu::own_children(),
            cpu::this_thread_faults(),
        );
        let t = Instant::now();
        op()?;
        let elapsed = t.elapsed();
        cost.cpu += cpu::this_thread().saturating_sub(before.0);
        cost.children_cpu += cpu::own_children().saturating_sub(before.1);
        cost.faults += cpu::this_thread_faults().saturating_sub(before.2);
        Ok::<_, String>(elapsed)
    };
    for _ in 0..RUNS {
        let t = Instant::now();
        conn.expect(run_line, b"ExitStatus,0")?;
        via_archon.push(t.elapsed());
        spawned.push(timed(&|| spawner.posix_spawn_wait(), &mut spawn_cost)?);
        forked.push(timed(&|| spawner.fork_exec_wait(), &mut fork_cost)?);
    }
    let archon_cost = Cost {
        cpu: cpu::process(pid)?.saturating_sub(archon_before.0),
        children_cpu: cpu::reaped_children(pid)?.saturating_sub(archon_before.1),
        faults: cpu::minor_faults(pid)?.saturating_sub(archon_before.2),
    };
    let via_archon = Summary::of(via_archon);
    let spawned = Summary::of(spawned);
    let forked = Summary::of(forked);
    let ratio =
        |a: Duration, b: Duration| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64().max(1e-9));
    let extra = via_archon.median.saturating_sub(spawned.median);
    Ok(vec![
        Row::timed(
            "Run,/bin/true round trip",
            &via_archon,
            via_archon.rate(),
            "runs",
        ),
        Row::value(
            "… per Run: archon's CPU (page faults) + child's CPU",
            archon_cost.per(RUNS),
        ),
        Row::timed(
            "posix_spawn+waitpid /bin/true, direct",
            &spawned,
            spawned.rate(),
            "runs",
        ),
        Row::value(
            "… per spawn: bench's CPU (page faults) + child's CPU",
            spawn_cost.per(RUNS),
        ),
        Row::value(
            "ratio Run / posix_spawn",
            format!("+{} per run (medians)", duration(extra)),
        )
        .quantiles(
            ratio(via_archon.median, spawned.median),
            ratio(via_archon.p99, spawned.p99),
        ),
        Row::timed(
            "fork+execve+waitpid /bin/true, direct",
            &forked,
            forked.rate(),
            "runs",
        ),
        Row::value(
            "… per fork: bench's CPU (page faults) + child's CPU",
            fork_cost.per(RUNS),
        ),
    ])
}

/// What starting programs cost the parent (CPU time, minor page faults) and the children (CPU).
#[derive(Default)]
struct Cost {
    cpu: Duration,
    faults: u64,
    children_cpu: Duration,
}

impl Cost {
    /// Per start, for `n` starts: `parent CPU (faults) + children CPU`.
    fn per(&self, n: usize) -> String {
        let n32 = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        format!(
            "{} ({:.0}) + {}",
            duration(self.cpu / n32),
            self.faults as f64 / n.max(1) as f64,
            duration(self.children_cpu / n32)
        )
    }
}

/// Run throughput: one client, round trip after round trip; then `CLIENTS` threads with a
/// connection each, started together.
fn run_throughput(archon: &Archon, conn: &mut Conn, run_line: &[u8]) -> Result<Vec<Row>, String> {
    let t = Instant::now();
    let one = time_each(0, RUNS_ONE_CLIENT, || {
        conn.expect(run_line, b"ExitStatus,0")
    })?;
    let one_wall = t.elapsed();

    let mut conns = (0..CLIENTS)
        .map(|_| archon.connect())
        .collect::<Result<Vec<_>, _>>()?;
    let start = Barrier::new(CLIENTS + 1);
    let (results, wall) = std::thread::scope(|s| {
        let workers: Vec<_> = conns
            .iter_mut()
            .map(|c| {
                let start = &start;
                s.spawn(move || -> Result<Vec<Duration>, String> {
                    let warmup =
                        (0..RUN_WARMUP / 10).try_for_each(|_| c.expect(run_line, b"ExitStatus,0"));
                    // Every thread reaches the barrier, or the others wait for ever.
                    start.wait();
                    warmup?;
                    let mut samples = Vec::with_capacity(RUNS_PER_CLIENT);
                    for _ in 0..RUNS_PER_CLIENT {
                        let t = Instant::now();
                        c.expect(run_line, b"ExitStatus,0")?;
                        samples.push(t.elapsed());
                    }
                    Ok(samples)
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        let results: Vec<_> = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".to_string()))
            })
            .collect();
        (results, t.elapsed())
    });
    let mut samples = Vec::with_capacity(CLIENTS * RUNS_PER_CLIENT);
    for r in results {
        samples.extend(r?);
    }
    let many = Summary::of(samples);
    Ok(vec![
        Row::timed(
            "Run throughput, 1 client",
            &one,
            rate(one.n, one_wall),
            "runs",
        )
        .total(duration(one_wall)),
        Row::timed(
            format!("Run throughput, {CLIENTS} clients in parallel"),
            &many,
            rate(many.n, wall),
            "runs",
        )
        .n(format!("{CLIENTS}×{RUNS_PER_CLIENT}"))
        .total(duration(wall)),
    ])
}

/// `DAEMONS` × `StartDaemon,sleep,1000`, `List` with all of them, archon's memory, its syscalls
/// while idle, then a `Stop` of each, pipelined on one connection.
fn daemons(archon: &Archon, dir: &std::path::Path) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut conn = archon.connect()?;
    let mut ids = Vec::with_capacity(DAEMONS);
    let mut samples = Vec::with_capacity(DAEMONS);
    for _ in 0..DAEMONS {
        let t = Instant::now();
        let reply = conn.fields(b"StartDaemon,sleep,1000\n")?;
        samples.push(t.elapsed());
        match (reply.first().map(|f| &f[..]), number(reply.get(1))) {
            (Some(b"Ok"), Some(id)) => ids.push(id),
            _ => {
                let reply: Vec<_> = reply.iter().map(|f| String::from_utf8_lossy(f)).collect();
                return Err(format!("StartDaemon got {:?}", reply.join(",")));
            }
        }
    }
    let started = Summary::of(samples);
    rows.push(Row::timed(
        format!("StartDaemon sleep 1000, {DAEMONS} of them"),
        &started,
        started.rate(),
        "starts",
    ));

    let mut running = 0;
    let mut listed = 0;
    let list = time_each(2, LISTS, || {
        let head = conn.fields(b"List\n")?;
        let n = match (head.first().map(|f| &f[..]), number(head.get(1))) {
            (Some(b"List"), Some(n)) => n,
            _ => return Err("List: no List,<n> header".to_string()),
        };
        running = 0;
        for _ in 0..n {
            let row = conn.reply_fields()?;
            let field = |i: usize| row.get(i).map(|f| &f[..]);
            if field(2) == Some(b"daemon") && field(4) == Some(b"running") {
                running += 1;
            }
        }
        listed = n;
        Ok(())
    })?;
    if running != DAEMONS {
        return Err(format!(
            "List shows {running} daemons running, expected {DAEMONS}"
        ));
    }
    rows.push(Row::timed(
        format!("List, {listed} rows ({running} daemons running)"),
        &list,
        list.rate(),
        "lists",
    ));
    rows.push(Row::value(
        format!("archon RSS with {DAEMONS} daemons"),
        kib(archon.rss_kib()?),
    ));

    // Idle: no request in flight, no connection open, 1000 pidfds in the poll set.
    drop(conn);
    let idle = probes::idle(archon.pid(), dir, IDLE_WINDOW)?;
    rows.push(Row::value(
        format!(
            "idle archon: wakeups in {} s (context switches)",
            IDLE_WINDOW.as_secs()
        ),
        format!("{}, asleep in {}", idle.wakeups, idle.wchan),
    ));
    let syscalls = match idle.syscalls {
        Probe::Done(calls) if calls.is_empty() => "0".to_string(),
        Probe::Done(calls) => {
            let total: u64 = calls.iter().map(|c| c.1).sum();
            let names: Vec<String> = calls
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            format!("{total} ({})", names.join(", "))
        }
        Probe::Skipped(why) => format!("skipped: {why}"),
    };
    rows.push(Row::value(
        format!(
            "idle archon: syscalls in {} s (strace -c -f)",
            IDLE_WINDOW.as_secs()
        ),
        syscalls,
    ));

    let mut conn = archon.connect()?;
    let stops: Vec<u8> = ids
        .iter()
        .flat_map(|id| format!("Stop,{id}\n").into_bytes())
        .collect();
    let t = Instant::now();
    conn.send(&stops)?;
    for id in &ids {
        let reply = conn.reply_fields()?;
        if reply.first().map(|f| &f[..]) != Some(b"Ok") || number(reply.get(1)) != Some(*id) {
            let reply: Vec<_> = reply.iter().map(|f| String::from_utf8_lossy(f)).collect();
            return Err(format!("Stop,{id} got {:?}", reply.join(",")));
        }
    }
    let wall = t.elapsed();
    rows.push(
        Row::value(
            format!("Stop all {DAEMONS} (pipelined, one connection)"),
            format!("{} stops/s", count(rate(DAEMONS, wall))),
        )
        .n(count(DAEMONS as f64))
        .total(duration(wall)),
    );
    rows.push(Row::value(
        "archon RSS after the stops",
        kib(archon.rss_kib()?),
    ));
    Ok(rows)
}
