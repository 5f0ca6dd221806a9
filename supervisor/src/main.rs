//! archon: an init-grade process supervisor, driven over a Unix socket with a CSV line protocol.
//!
//! `main` reads the command line, sets up, and runs the loop; it alone chooses the exit code:
//! 0 after a shutdown asked by SIGTERM or SIGINT, 1 after a critical service failed, 78 for a
//! broken configuration file, 100 for a usage error, 111 when archon cannot start (no socket
//! path, socket in use, a system call failing during setup), 130 after `Poweroff` or `Halt` and
//! 129 after `Reboot` when archon is not process 1 (see [`pid1::exit_code`]). With a main
//! command (`-- CMD`), its exit code: its own, 128 + N after death by signal N, 127 or 126 when
//! it could not be executed (see [`entry`]).
//!
//! As process 1 archon may end by `reboot(2)` instead (see [`pid1`]), and as the machine's init
//! it never returns from `main`: where it would exit, it takes the emergency path.

mod args;
mod cgroup;
mod control;
mod entry;
mod event_loop;
mod events;
mod health;
mod leftovers;
mod listen;
mod log;
mod logs;
mod memory;
mod notify;
mod on_exit;
mod pid1;
mod procstat;
mod reexec;
mod service;
mod sockets;
mod spawn;
mod sys;
mod table;
mod timers;

use std::process::ExitCode;

use event_loop::Outcome;
use pid1::Role;

/// Exit code for a command line archon cannot use.
const EXIT_USAGE: u8 = 100;
/// Exit code when archon cannot start.
const EXIT_CANNOT_START: u8 = 111;
/// Exit code for a configuration file with an error (`EX_CONFIG` of sysexits.h).
const EXIT_CONFIG: u8 = 78;

/// `--check FILE`: prints what the file declares, or its first error; the exit code.
fn check(path: &std::path::Path) -> u8 {
    match archon_lua::load_file(path) {
        Ok(config) => {
            for s in &config.services {
                let kind = match s.kind {
                    archon_lua::UnitKind::Service => "service",
                    archon_lua::UnitKind::Task => "task",
                };
                println!("{kind} {}", s.name);
            }
            0
        }
        Err(e) => {
            eprintln!("archon: {e}");
            EXIT_CONFIG
        }
    }
}

fn main() -> ExitCode {
    // Before anything is opened, so that nothing lands on fds 0-2 by accident.
    sys::ensure_stdio_open();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args
        .first()
        .is_some_and(|a| a == pid1::fault::EMERGENCY_ARG)
    {
        return emergency_mode(&args);
    }
    let mut role = pid1::Role::detect();
    if role.is_pid1() {
        // From here on a panic or a fault does not end process 1: the kernel panics when the
        // machine's init exits, and a container ends with its init.
        pid1::emergency::install_panic_hook();
        protect_pid1(role, false);
    }
    let end = run(&mut role);
    if role == Role::Machine {
        pid1::emergency::emergency(&format!(
            "archon cannot go on as the machine's init (it would exit {}): {}",
            end.code, end.why
        ));
    }
    ExitCode::from(end.code)
}

/// `archon --emergency <why> [--control-fd <fd>]`: the emergency mode process 1 executes after a
/// fault or a panic (see [`pid1::fault`]); refused to anything but process 1.
fn emergency_mode(args: &[std::ffi::OsString]) -> ExitCode {
    if !sys::is_pid1() {
        eprintln!(
            "archon: {} is internal: process 1 executes it after a fault (see archon(8))",
            pid1::fault::EMERGENCY_ARG
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let (why, control) = pid1::fault::parse_emergency_args(args)
        .unwrap_or_else(|| ("an unknown fault".into(), None));
    pid1::emergency::mode(&why, control)
}

/// What process 1 does against an end by accident: fault handlers that take the emergency path
/// (see [`pid1::fault`]), and an `oom_score_adj` of -1000, so that the kernel's OOM killer, whose
/// SIGKILL nothing can catch, never picks archon (its children get the value archon started with
/// back, see [`sys::protect_from_oom_killer`]). Done first thing, and again once the log is set
/// up (`say`) to say what failed; again after the early mounts, which bring `/proc` and `/dev`.
fn protect_pid1(role: Role, say: bool) {
    // The first time opens nothing: a re-executed image takes what it inherited first.
    let faults = pid1::fault::install(say && role == Role::Machine, false);
    let oom = sys::protect_from_oom_killer();
    if say {
        if let Err(e) = faults {
            warn!("faults of process 1 may not take the emergency path: {e}");
        }
        if let Err(e) = oom {
            debug!("oom_score_adj stays as it is: {e}");
        }
    }
}

/// How archon ends when it exits: the exit code, and why, for the emergency path of the
/// machine's init.
struct End {
    code: u8,
    why: String,
}

impl End {
    fn code(code: u8) -> End {
        End {
            code,
            why: String::new(),
        }
    }

    fn failed(code: u8, why: impl std::fmt::Display) -> End {
        End {
            code,
            why: why.to_string(),
        }
    }
}

/// What the first arguments ask of a re-exec (see [`reexec`]).
enum Handover {
    /// An ordinary start.
    None,
    /// `--restore <fd>`: take over the state in `fd`.
    Restore(String),
    /// `--check-restore`: check the state on stdin, say so, and exit.
    Check,
}

/// `--check-restore`: reads the state on stdin and the configuration, and prints
/// [`reexec::CHECK_OK`] when this archon can take them over; the exit code.
fn check_restore(opts: &args::Options) -> u8 {
    let stdin = std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned();
    let state = stdin
        .and_then(reexec::read_all)
        .map_err(|e| e.to_string())
        .and_then(|bytes| reexec::State::decode(&bytes).map_err(|e| e.to_string()));
    let state = match state {
        Ok(s) => s,
        Err(e) => {
            eprintln!("archon: --check-restore: {e}");
            return 1;
        }
    };
    let euid = nix::unistd::geteuid().as_raw();
    let declared: Vec<String> = match event_loop::config_source(opts, euid) {
        Some(source) => match event_loop::evaluate_config(&source) {
            Ok(c) => c.config.services.into_iter().map(|s| s.name).collect(),
            Err(e) => {
                eprintln!("archon: --check-restore: {e}");
                return EXIT_CONFIG;
            }
        },
        None => Vec::new(),
    };
    // A running unit the file no longer declares would be kept as a bare process: refused, so
    // that the file is fixed (or reloaded) first.
    let lost: Vec<&str> = state
        .units
        .iter()
        .filter(|u| u.life.pid().is_some() && !declared.contains(&u.name))
        .map(|u| u.name.as_str())
        .collect();
    if !lost.is_empty() {
        eprintln!(
            "archon: --check-restore: the configuration no longer declares {}, which runs: \
             reload first",
            lost.join(", ")
        );
        return EXIT_CONFIG;
    }
    print!("{}", String::from_utf8_lossy(reexec::CHECK_OK));
    0
}

/// Reads the state a previous image handed over in `fd`; the fds it names, in a bank made
/// before anything is opened.
fn read_handover(fd: &str) -> Result<(reexec::State, reexec::FdBank), String> {
    let fd: i32 = fd
        .parse()
        .ok()
        .filter(|&fd| fd >= 3)
        .ok_or_else(|| format!("--restore: bad fd {fd:?}"))?;
    let mut bank = reexec::FdBank::new(&[fd]);
    let memfd = bank
        .take(fd)
        .ok_or_else(|| format!("--restore: fd {fd} is not open"))?;
    let bytes = reexec::read_all(memfd).map_err(|e| format!("--restore: {e}"))?;
    let state = reexec::State::decode(&bytes).map_err(|e| e.to_string())?;
    let bank = reexec::FdBank::new(&state.fds());
    reexec::cloexec_inherited();
    Ok((state, bank))
}

/// Everything but the end of the machine's init; `role` is updated once `/proc` tells more.
fn run(role: &mut Role) -> End {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let handover = match argv.first().and_then(|a| a.to_str()) {
        Some(reexec::RESTORE_ARG) if argv.len() >= 2 => {
            let fd = argv[1].to_string_lossy().into_owned();
            argv.drain(..2);
            Handover::Restore(fd)
        }
        Some(reexec::CHECK_ARG) => {
            argv.remove(0);
            Handover::Check
        }
        _ => Handover::None,
    };
    // The state is read before anything is opened: its fds are this image's only.
    let restore = match handover {
        Handover::Restore(ref fd) => Some(read_handover(fd)),
        _ => None,
    };
    let opts = match args::parse(argv) {
        Ok(args::Parsed::Run(opts)) => opts,
        Ok(args::Parsed::Help) => {
            print!("{}", args::USAGE);
            return End::code(0);
        }
        Ok(args::Parsed::Check(path)) => return End::code(check(&path)),
        Ok(args::Parsed::Version) => {
            println!("archon {}", env!("CARGO_PKG_VERSION"));
            return End::code(0);
        }
        Err(e) => {
            eprint!("archon: {e}\n{}", args::USAGE);
            return End::failed(EXIT_USAGE, e);
        }
    };
    if let Handover::Check = handover {
        return End::code(check_restore(&opts));
    }
    log::init(opts.log_level);
    let restore = match restore {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) if role.is_pid1() => {
            // Process 1 must not exit: it starts afresh (what ran is reaped as orphans).
            error!("re-exec: cannot take over: {e}: starting afresh");
            reexec::close_inherited();
            None
        }
        Some(Err(e)) => {
            error!("re-exec: cannot take over: {e}");
            return End::failed(EXIT_CANNOT_START, e);
        }
        None => None,
    };
    if role.is_pid1() {
        // Once what a re-exec handed over is taken (or closed): the kernel's log is opened now.
        protect_pid1(*role, true);
    }
    if let Some(restore) = restore {
        return serve(role, opts, Some(restore));
    }
    if *role == Role::Machine || opts.early_mounts {
        early_boot(role);
        log::init(opts.log_level);
    }
    info!("archon {}: {}", env!("CARGO_PKG_VERSION"), role.describe());
    if *role == Role::Machine {
        if let Err(e) = pid1::halt::ctrl_alt_del_to_sigint() {
            warn!("Ctrl-Alt-Del will reboot at once, not through archon: {e}");
        }
    }
    serve(role, opts, None)
}

/// Runs the loop, set up afresh or from a previous image's state, and ends as it says.
fn serve(
    role: &mut Role,
    opts: args::Options,
    restore: Option<(reexec::State, reexec::FdBank)>,
) -> End {
    let restoring = restore.is_some();
    let made = match restore {
        Some((state, bank)) => {
            match event_loop::Supervisor::restore(opts.clone(), *role, state, bank) {
                Err(e) if role.is_pid1() => {
                    // What it had taken is closed again: process 1 starts afresh rather than
                    // exit (what ran is reaped as orphans).
                    error!("re-exec: cannot take over: {e}: starting afresh");
                    event_loop::Supervisor::new(opts, *role)
                }
                made => made,
            }
        }
        None => event_loop::Supervisor::new(opts, *role),
    };
    if restoring {
        // Blocked by the previous image across the exec; the handlers are in place now.
        reexec::unblock_all();
    }
    let mut supervisor = match made {
        Ok(s) => s,
        Err(e @ event_loop::StartError::Config(_)) => {
            error!("{e}");
            return End::failed(EXIT_CONFIG, e);
        }
        Err(e) => {
            error!("{e}");
            return End::failed(EXIT_CANNOT_START, e);
        }
    };
    event_loop::notify_ready();
    let outcome = supervisor.run();
    debug!("socket {} removed", supervisor.socket_path().display());
    drop(supervisor);
    pid1::fault::set_control_socket(-1);
    if let Some(power) = pid1::power_at_end(*role, outcome.power()) {
        let e = pid1::halt::go_down(*role == Role::Machine, power);
        error!("cannot {power}: reboot(2): {e}");
        return End::failed(pid1::exit_code(power), format!("reboot(2): {e}"));
    }
    End::code(match outcome {
        Outcome::Stopped => 0,
        Outcome::Critical(code) => code,
        Outcome::MainEnded(status) => entry::exit_code(status),
        Outcome::MainNotExecuted(errno) => entry::exec_failure_code(errno),
        Outcome::MainNotStarted => EXIT_CANNOT_START,
        Outcome::Power(power) => pid1::exit_code(power),
    })
}

/// The early boot: mounts what is missing of the early file systems, tells again what archon
/// is now that `/proc` is there, and gives archon the console as stdio if it has none.
fn early_boot(role: &mut Role) {
    for m in pid1::mounts::mount_missing() {
        match m.result {
            Ok(()) => info!("mounted {} on {}", m.mount.fstype, m.mount.target),
            Err(e) => warn!("cannot mount {} on {}: {e}", m.mount.fstype, m.mount.target),
        }
    }
    *role = pid1::Role::detect();
    sys::console_stdio();
    if role.is_pid1() {
        // Again, with /proc and /dev there now: archon's own path, the kernel's log.
        protect_pid1(*role, true);
    }
}
