//! The container entrypoint's rules: `archon [options] -- CMD ARGS` runs CMD as its main process,
//! forwards signals to it and exits with its status, as tini and dumb-init do.
//!
//! This module only decides: which signals are forwarded and which archon keeps, and what exit
//! code the main command's end gives. The loop does the kernel's side (`event_loop/entry.rs`).

use archon_proto::Status;

/// The signals archon forwards to the main command (or its process group): every signal from 1
/// to 31 but those in [`KEPT`]. Each has a handler in archon, which matters when archon is
/// process 1 of a PID namespace: the kernel drops a signal sent to such a process unless it has
/// a handler, so a `docker kill --signal=USR1` would otherwise never reach CMD.
pub const FORWARDED: [i32; 20] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGABRT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGSTKFLT,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGURG,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGWINCH,
    libc::SIGIO,
    libc::SIGPWR,
];

/// The signals from 1 to 31 that archon does not forward, and why.
pub const KEPT: [(i32, &str); 11] = [
    (libc::SIGKILL, "cannot be caught"),
    (libc::SIGSTOP, "cannot be caught"),
    (libc::SIGCHLD, "archon's own: it reaps"),
    // A process that writes to its terminal from a background process group gets SIGTTOU (and
    // SIGTTIN for a read). Caught, the write would be retried and the signal sent again, for
    // ever; archon ignores both, as tini does, so its log lines never stop it.
    (libc::SIGTTIN, "ignored"),
    (libc::SIGTTOU, "ignored"),
    // The kernel raises these in a process for a fault of its own execution. One raised in
    // archon is archon's fault: as process 1 it takes the emergency path (see `pid1::fault`),
    // elsewhere it ends archon. (SIGABRT, forwarded above, is a fault only when archon raised
    // it itself.)
    (libc::SIGILL, "a fault of archon's own"),
    (libc::SIGTRAP, "a fault of archon's own"),
    (libc::SIGBUS, "a fault of archon's own"),
    (libc::SIGFPE, "a fault of archon's own"),
    (libc::SIGSEGV, "a fault of archon's own"),
    (libc::SIGSYS, "a fault of archon's own"),
];

/// The exit code for a main command that could not be found (`ENOENT`, `ENOTDIR`), as the
/// shell's.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The exit code for a main command that was found but could not be executed (`EACCES`,
/// `ENOEXEC`, ...), as the shell's.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;

/// Exit codes of processes killed by a signal start here: 128 + the signal's number.
const SIGNAL_BASE: u8 = 128;

/// The exit code for the main command's end: its own code, or 128 + N for death by signal N.
pub fn exit_code(status: Status) -> u8 {
    match status {
        Status::Exited(code) => code,
        Status::Signaled(sig) => u8::try_from(sig)
            .ok()
            .and_then(|s| SIGNAL_BASE.checked_add(s))
            .unwrap_or(u8::MAX),
        // Not a status archon's own reaped child can have (it reaps with WEXITED only).
        Status::Unknown => 1,
    }
}

/// The exit code for a main command whose exec failed with `errno`.
pub fn exec_failure_code(errno: i32) -> u8 {
    match errno {
        libc::ENOENT | libc::ENOTDIR => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    }
}

/// True when archon forwards `sig` to the main command.
pub fn forwards(sig: i32) -> bool {
    FORWARDED.contains(&sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_from_1_to_31_is_forwarded_or_kept_once() {
        for sig in 1..=31 {
            let kept = KEPT.iter().filter(|(s, _)| *s == sig).count();
            let forwarded = FORWARDED.iter().filter(|&&s| s == sig).count();
            assert_eq!(kept + forwarded, 1, "signal {sig}");
        }
        // signal-hook refuses these; a handler for them must never be asked for.
        for sig in signal_hook::consts::FORBIDDEN {
            assert!(!forwards(*sig), "signal {sig}");
        }
        assert!(!forwards(libc::SIGCHLD));
        assert!(forwards(libc::SIGTERM) && forwards(libc::SIGHUP) && forwards(libc::SIGWINCH));
    }

    #[test]
    fn exit_codes_as_the_shell_gives_them() {
        for code in 0..=255 {
            assert_eq!(exit_code(Status::Exited(code)), code);
        }
        assert_eq!(exit_code(Status::Signaled(libc::SIGTERM)), 143);
        assert_eq!(exit_code(Status::Signaled(libc::SIGKILL)), 137);
        assert_eq!(exit_code(Status::Signaled(1)), 129);
        assert_eq!(exit_code(Status::Signaled(64)), 192);
        assert_eq!(exit_code(Status::Signaled(200)), 255, "no wrap-around");
        assert_eq!(exec_failure_code(libc::ENOENT), 127);
        assert_eq!(exec_failure_code(libc::ENOTDIR), 127);
        assert_eq!(exec_failure_code(libc::EACCES), 126);
        assert_eq!(exec_failure_code(libc::ENOEXEC), 126);
    }
}
