//! archon: an init-grade process supervisor, driven over a Unix socket with a CSV line protocol.
//!
//! `main` reads the command line, sets up, and runs the loop; it alone chooses the exit code:
//! 0 after a shutdown asked by SIGTERM or SIGINT, 1 after a critical service failed, 78 for a
//! broken configuration file, 100 for a usage error, 111 when archon cannot start (no socket
//! path, socket in use, a system call failing during setup). With a main command (`-- CMD`),
//! its exit code: its own, 128 + N after death by signal N, 127 or 126 when it could not be
//! executed (see [`entry`]).

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
mod memory;
mod notify;
mod procstat;
mod service;
mod sockets;
mod spawn;
mod sys;
mod table;
mod timers;

use std::process::ExitCode;

use event_loop::Outcome;

/// Exit code for a command line archon cannot use.
const EXIT_USAGE: u8 = 100;
/// Exit code when archon cannot start.
const EXIT_CANNOT_START: u8 = 111;
/// Exit code for a configuration file with an error (`EX_CONFIG` of sysexits.h).
const EXIT_CONFIG: u8 = 78;

/// `--check FILE`: prints what the file declares, or its first error.
fn check(path: &std::path::Path) -> ExitCode {
    match archon_lua::load_file(path) {
        Ok(config) => {
            for s in &config.services {
                let kind = match s.kind {
                    archon_lua::UnitKind::Service => "service",
                    archon_lua::UnitKind::Task => "task",
                };
                println!("{kind} {}", s.name);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("archon: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn main() -> ExitCode {
    // Before anything is opened, so that nothing lands on fds 0-2 by accident.
    sys::ensure_stdio_open();
    let opts = match args::parse(std::env::args_os().skip(1)) {
        Ok(args::Parsed::Run(opts)) => opts,
        Ok(args::Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(args::Parsed::Check(path)) => return check(&path),
        Ok(args::Parsed::Version) => {
            println!("archon {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprint!("archon: {e}\n{}", args::USAGE);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    log::init(opts.log_level);
    let mut supervisor = match event_loop::Supervisor::new(opts) {
        Ok(s) => s,
        Err(e @ event_loop::StartError::Config(_)) => {
            error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_CANNOT_START);
        }
    };
    event_loop::notify_ready();
    let outcome = supervisor.run();
    debug!("socket {} removed", supervisor.socket_path().display());
    ExitCode::from(match outcome {
        Outcome::Stopped => 0,
        Outcome::Critical(code) => code,
        Outcome::MainEnded(status) => entry::exit_code(status),
        Outcome::MainNotExecuted(errno) => entry::exec_failure_code(errno),
        Outcome::MainNotStarted => EXIT_CANNOT_START,
    })
}
