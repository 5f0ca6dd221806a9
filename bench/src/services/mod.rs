//! `archon-bench services`: archon beside runit (runsvdir), s6 (s6-svscan), daemontools (svscan)
//! and supervisord, each with N services of `sleep` (N = 100, 1000, 10000): time until all run,
//! the memory of the supervisor's own processes, restart latency after SIGKILL, and syscalls
//! while idle. One markdown table per N, each figure also as a ratio to archon's.
//!
//! Each supervisor runs in a temp dir and a cgroup of its own, and is killed with all it
//! started (`cgroup.kill`) before the next one starts. Needs root: cgroups, the kernel's
//! process events, strace.

mod cell;
mod cgroup;
mod execs;
mod procs;
mod setup;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::archon::TempDir;
use crate::stats::{count, duration, kib};
use crate::table::markdown;
use cell::{Cell, Limits, Measured};
use cgroup::Cgroup;
use execs::Execs;
use setup::{ArchonMode, Kind};

/// The service counts of a full run, and of `--quick`.
const COUNTS: [u32; 3] = [100, 1_000, 10_000];
const QUICK_COUNTS: [u32; 2] = [100, 1_000];
/// Restart samples per cell, full and `--quick`.
const SAMPLES: usize = 50;
const QUICK_SAMPLES: usize = 20;
/// Time a cell has for all services to run, and then for its restart samples.
const BUDGET: Duration = Duration::from_secs(120);
/// How long a killed service may take to run again.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the service directories go when it exists: a tmpfs, as `/run` is, where Debian's
/// runit keeps its `supervise` dirs; 10,000 directories are written and removed in a blink
/// instead of seconds of disk writes on a loaded machine.
const SHM: &str = "/dev/shm";
/// The idle window strace watches.
const IDLE: Duration = Duration::from_secs(10);

/// What the sources of the others say about their delays and limits (checked against the
/// figures: s6 and supervisord restart after 1 s, runit and daemontools in milliseconds).
const HOW_THEY_RESTART: &str = "\
How each one restarts, and its limits (from their sources):

- runit 2.1.2: `runsv` restarts a service at once, unless it ran less than a second: then it \
sleeps out that second. `runsvdir` keeps a static table of 1000 services (`MAXSERVICES`) and \
refuses more; it sleeps a second before it scans a directory modified within the current \
second (the bench dates the directory an hour back, as a boot would find it).
- s6 2.11: `s6-supervise` waits a second after a service went down before it starts it again \
(whatever its uptime). `s6-svscan` takes at most `-c` services (1000 by default; the bench \
passes enough).
- daemontools 0.76: `supervise` sleeps a second after every start, so a restart is at once \
unless the service died within its first second. `svscan` keeps a static table of 1000 \
services (`SERVICES`) and refuses more.
- supervisord 4.2: its loop polls with a timeout of 1 s and looks at its processes before it \
reaps them, so a restart waits for the next pass: about 1 s, 2 s when the child's pipes \
closed before the child could be reaped. It keeps 3 pipes per child and refuses to start \
when `minfds` (the bench sets 3 N + 1024) exceeds the hard limit of open files.
";

pub const USAGE: &str = "\
usage: archon-bench [--archon PATH] services [--quick] [--n N,...] [--only NAME,...]
                    [--samples K] [--budget SECONDS] [--idle SECONDS]

  --quick          N = 100 and 1000 only, 20 restart samples (about 5 min instead of 12)
  --n N,...        the service counts (default 100,1000,10000)
  --only NAME,...  archon, runit, s6, daemontools, supervisord (default: all)
  --samples K      restart samples per cell (default 50)
  --budget S       seconds a cell has for all up and the restarts (default 120)
  --idle S         seconds of idle strace (default 10)
Needs root. Prints one markdown table per N on stdout, progress on stderr.
";

struct Options {
    counts: Vec<u32>,
    kinds: Vec<Kind>,
    limits: Limits,
}

fn parse(args: &[OsString]) -> Result<Option<Options>, String> {
    let mut opts = Options {
        counts: COUNTS.to_vec(),
        kinds: Kind::ALL.to_vec(),
        limits: Limits {
            budget: BUDGET,
            samples: SAMPLES,
            sample_timeout: SAMPLE_TIMEOUT,
            idle: IDLE,
        },
    };
    let mut samples = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_str().ok_or("arguments must be UTF-8")?;
        let mut value = || {
            args.next()
                .and_then(|v| v.to_str())
                .ok_or(format!("{arg} needs a value"))
        };
        let number = |v: &str| -> Result<u64, String> {
            v.parse().map_err(|_| format!("{arg}: not a number: {v:?}"))
        };
        match arg {
            "--quick" => {
                opts.counts = QUICK_COUNTS.to_vec();
                opts.limits.samples = samples.unwrap_or(QUICK_SAMPLES);
            }
            "--n" => {
                opts.counts = value()?
                    .split(',')
                    .map(|v| number(v).map(|n| n.clamp(1, 100_000) as u32))
                    .collect::<Result<_, _>>()?;
            }
            "--only" => {
                opts.kinds = value()?
                    .split(',')
                    .map(|name| Kind::from_name(name).ok_or(format!("unknown supervisor {name}")))
                    .collect::<Result<_, _>>()?;
            }
            "--samples" => {
                let k = number(value()?)?.clamp(1, 10_000) as usize;
                samples = Some(k);
                opts.limits.samples = k;
            }
            "--budget" => opts.limits.budget = Duration::from_secs(number(value()?)?.max(1)),
            "--idle" => opts.limits.idle = Duration::from_secs(number(value()?)?.max(1)),
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(Some(opts))
}

/// Runs the service bench with the archon at `archon`; `args` are those after `services`.
pub fn run(archon: &Path, args: &[OsString]) -> Result<(), String> {
    let Some(opts) = parse(args)? else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the service bench needs root (cgroups, process events, strace)".to_string());
    }
    cgroup::become_subreaper()?;
    let mode = archon_mode(archon)?;
    let execs = match Execs::subscribe() {
        Ok(execs) => Some(execs),
        Err(e) => {
            eprintln!("archon-bench: no exec events ({e}): timing by /proc polling instead");
            None
        }
    };
    let started = Instant::now();
    println!("{}", header(archon, mode, execs.is_some(), &opts));
    let tmp = match Path::new(SHM).is_dir() {
        true => TempDir::new_in(Path::new(SHM))?,
        false => TempDir::new()?,
    };
    let mut notes = Vec::new();
    for &n in &opts.counts {
        let load = load_average();
        let mut rows = Vec::new();
        for &kind in &opts.kinds {
            eprintln!(
                "archon-bench: {} with {n} services ({} s so far)",
                kind.name(),
                started.elapsed().as_secs()
            );
            let cell = match installed(kind) {
                Some(missing) => Cell::not_installed(&missing),
                None => run_cell(
                    kind,
                    n,
                    archon,
                    mode,
                    execs.as_ref(),
                    &opts.limits,
                    tmp.path(),
                )
                .unwrap_or_else(Cell::error),
            };
            for note in &cell.notes {
                notes.push(format!("{}, N = {n}: {note}", kind.label()));
            }
            if let Measured::Done((total, calls)) = &cell.syscalls {
                if *total > 0 {
                    let top: Vec<String> = calls
                        .iter()
                        .take(4)
                        .map(|(name, n)| format!("{name} {}", count(*n as f64)))
                        .collect();
                    notes.push(format!(
                        "{}, N = {n}: idle syscalls {}",
                        kind.label(),
                        top.join(", ")
                    ));
                }
            }
            rows.push((kind, cell));
        }
        println!(
            "### N = {} (load average before: {load})\n\n{}",
            count(f64::from(n)),
            table(&rows, mode)
        );
    }
    if !notes.is_empty() {
        println!("Notes on this run:\n");
        for note in notes {
            println!("- {note}");
        }
        println!();
    }
    println!("{HOW_THEY_RESTART}");
    eprintln!("archon-bench: done in {} s", started.elapsed().as_secs());
    Ok(())
}

/// One supervisor with `n` services: prepared, measured, killed, cleaned up, checked.
fn run_cell(
    kind: Kind,
    n: u32,
    archon: &Path,
    mode: ArchonMode,
    execs: Option<&Execs>,
    limits: &Limits,
    tmp: &Path,
) -> Result<Cell, String> {
    let t = Instant::now();
    let dir = tmp.join(format!("{}-{n}", kind.name()));
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let launch = setup::prepare(kind, n, &dir, archon, mode)?;
    let prepared = t.elapsed();
    let cgroup = Cgroup::create(&format!(
        "archon-bench.{}.{}-{n}",
        std::process::id(),
        kind.name()
    ))?;
    let t = Instant::now();
    let cell = cell::measure(kind, n, &launch, &cgroup, execs, limits, &dir);
    let measured = t.elapsed();
    let t = Instant::now();
    let cgroup_path = cgroup.path().display().to_string();
    // Kills everything in it and removes it.
    drop(cgroup);
    cgroup::reap_all();
    let mut cell = cell?;
    // Nothing may outlive the cell: a sleep of ours anywhere on the machine is a leak.
    let left: Vec<u32> = procs::all()
        .into_iter()
        .filter(|&pid| procs::service_of(pid).is_some_and(|s| s < n))
        .collect();
    if !left.is_empty() {
        for &pid in &left {
            let _ = procs::kill(pid, libc::SIGKILL);
        }
        cell.notes.push(format!(
            "{} sleeps outlived the kill of {cgroup_path}: killed one by one",
            left.len()
        ));
    }
    if Path::new(&cgroup_path).exists() {
        cell.notes
            .push(format!("{cgroup_path} could not be removed"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "archon-bench: {} with {n}: prepared in {:.1} s, measured in {:.1} s, cleaned up in {:.1} s",
        kind.name(),
        prepared.as_secs_f64(),
        measured.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    Ok(cell)
}

/// The load averages over 1, 5 and 15 minutes: the machine may be shared.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Some(why)` when the supervisor's program is not installed.
fn installed(kind: Kind) -> Option<String> {
    let program = match kind {
        Kind::Archon => return None,
        Kind::Runit => "runsvdir",
        Kind::S6 => "s6-svscan",
        Kind::Daemontools => "svscan",
        Kind::Supervisord => "supervisord",
    };
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    (!found).then(|| format!("{program} not installed"))
}

/// Whether this archon reads a configuration file (`--config` in its `--help`).
fn archon_mode(archon: &Path) -> Result<ArchonMode, String> {
    let out = Command::new(archon)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} --help: {e}", archon.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(if help.contains("--config") {
        ArchonMode::Config
    } else {
        ArchonMode::StartDaemon
    })
}

/// The first line of `program --version`, or the Debian package's version.
fn version(kind: Kind, archon: &Path) -> String {
    let run = |program: &Path, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    match kind.package() {
        None => run(archon, &["--version"]),
        Some(package) => {
            let v = run(
                &PathBuf::from("dpkg-query"),
                &["-W", "-f", "${Version}", package],
            );
            if v.is_empty() {
                format!("{package} (version unknown)")
            } else {
                format!("{package} {v}")
            }
        }
    }
}

fn header(archon: &Path, mode: ArchonMode, events: bool, opts: &Options) -> String {
    let versions: Vec<String> = opts.kinds.iter().map(|&k| version(k, archon)).collect();
    let archon_how = match mode {
        ArchonMode::Config => "archon reads the N services from a Lua file (`--config`)",
        ArchonMode::StartDaemon => {
            "**this archon has no `--config` yet**: the bench sends it N `StartDaemon` requests \
             (pipelined, 64 at a time) right after it listens; a StartDaemon'ed process is not \
             restarted, so archon has no restart figure"
        }
    };
    let timing = if events {
        "by the kernel's timestamp of the `execve` (proc connector), not by polling"
    } else {
        "by polling /proc (no proc connector here)"
    };
    format!(
        "## Service bench: archon beside runit, s6, daemontools and supervisord\n\n\
         - machine: {}; hard limit of open files {}\n\
         - {}\n\
         - {archon_how}\n\
         - each service is `/bin/sleep <its own number>`; runit, s6 and daemontools run it \
         from a `run` script (`#!/bin/sh`, `exec /bin/sleep …`: one more `execve` per start), \
         archon and supervisord execute it directly\n\
         - **all up**: from the supervisor's start until every service's `sleep` has executed, \
         {timing}\n\
         - **memory**: sum of `Pss` (`/proc/PID/smaps_rollup`) over the supervisor's own \
         processes (everything in its cgroup but the sleeps), and how many there are\n\
         - **restart**: SIGKILL to one service's `sleep` until its new `sleep` has executed; \
         {} distinct services, each killed once, after all have run for over a second; median \
         and 90th percentile\n\
         - **idle syscalls**: `strace -c -f` attached to every own process for {} s, nothing \
         happening; the sum of calls\n\
         - (×): the figure divided by archon's (above 1: archon is ahead); each cell has {} s \
         for all up and restarts\n",
        crate::machine(),
        count(cell::hard_nofile() as f64),
        versions.join(", "),
        opts.limits.samples,
        opts.limits.idle.as_secs(),
        opts.limits.budget.as_secs(),
    )
}

/// The markdown table of one N.
fn table(rows: &[(Kind, Cell)], mode: ArchonMode) -> String {
    let archon = rows
        .iter()
        .find(|(k, _)| *k == Kind::Archon)
        .map(|(_, c)| c);
    let base = |f: fn(&Cell) -> Option<f64>| archon.and_then(f);
    let up = |c: &Cell| match c.up {
        Measured::Done(d) => Some(d.as_secs_f64()),
        Measured::Not(_) => None,
    };
    let memory = |c: &Cell| match c.memory {
        Measured::Done((k, _)) => Some(k as f64),
        Measured::Not(_) => None,
    };
    let restart = |c: &Cell| match &c.restarts {
        Measured::Done(r) => Some(r.median.as_secs_f64()),
        Measured::Not(_) => None,
    };
    let syscalls = |c: &Cell| match &c.syscalls {
        Measured::Done((t, _)) => Some(*t as f64),
        Measured::Not(_) => None,
    };
    let with_ratio =
        |text: String, value: Option<f64>, base: Option<f64>, kind: Kind| match (value, base) {
            (Some(v), Some(b)) if kind != Kind::Archon && b > 0.0 => {
                format!("{text} ({})", ratio(v / b))
            }
            _ => text,
        };
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|(kind, c)| {
            let k = *kind;
            let name = if k == Kind::Archon && mode == ArchonMode::StartDaemon {
                "archon (StartDaemon)".to_string()
            } else {
                k.label().to_string()
            };
            vec![
                name,
                with_ratio(measured(&c.up, |d| duration(*d)), up(c), base(up), k),
                with_ratio(
                    measured(&c.memory, |(k, procs)| {
                        format!("{} in {}", kib(*k), plural(*procs, "process", "processes"))
                    }),
                    memory(c),
                    base(memory),
                    k,
                ),
                with_ratio(
                    measured(&c.restarts, |r| {
                        let n = if r.n < 10 {
                            format!(", n = {}", r.n)
                        } else {
                            String::new()
                        };
                        format!("{} (p90 {}){n}", duration(r.median), duration(r.p90))
                    }),
                    restart(c),
                    base(restart),
                    k,
                ),
                with_ratio(
                    measured(&c.syscalls, |(t, _)| count(*t as f64)),
                    syscalls(c),
                    base(syscalls),
                    k,
                ),
            ]
        })
        .collect();
    markdown(
        &[
            "supervisor",
            "all up",
            "memory (PSS)",
            "restart after SIGKILL",
            "idle syscalls",
        ],
        &lines,
    )
}

fn measured<T>(m: &Measured<T>, show: impl Fn(&T) -> String) -> String {
    match m {
        Measured::Done(v) => show(v),
        Measured::Not(why) => why.clone(),
    }
}

fn ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.1}×")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", count(n as f64), if n == 1 { one } else { many })
}

impl Cell {
    fn not_installed(why: &str) -> Cell {
        Cell::failed(why.to_string())
    }

    fn error(e: String) -> Cell {
        Cell::failed(format!("error: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_means_two_counts_and_fewer_samples() -> Result<(), String> {
        let opts = parse(&["--quick".into()])?.ok_or("no options")?;
        assert_eq!(opts.counts, vec![100, 1_000]);
        assert_eq!(opts.limits.samples, QUICK_SAMPLES);
        let opts =
            parse(&["--samples".into(), "7".into(), "--quick".into()])?.ok_or("no options")?;
        assert_eq!(opts.limits.samples, 7);
        let opts = parse(&[
            "--only".into(),
            "s6,archon".into(),
            "--n".into(),
            "5".into(),
        ])?
        .ok_or("no options")?;
        assert_eq!(opts.kinds, vec![Kind::S6, Kind::Archon]);
        assert_eq!(opts.counts, vec![5]);
        assert!(parse(&["--only".into(), "systemd".into()]).is_err());
        assert!(parse(&["--n".into()]).is_err());
        Ok(())
    }

    #[test]
    fn ratios_keep_two_digits() {
        assert_eq!(ratio(3.04), "3.0×");
        assert_eq!(ratio(31.4), "31×");
        assert_eq!(plural(1, "process", "processes"), "1 process");
        assert_eq!(plural(1001, "process", "processes"), "1,001 processes");
    }
}
