//! `sigcatch FILE [EXIT_SIGNAL]`: a main command for the entrypoint tests that records every
//! signal it receives, one number a line, in FILE.
//!
//! It blocks every signal and takes them with `sigwaitinfo`, so that none of them, not even
//! SIGTSTP or SIGTTIN, acts on it, and a signal is recorded however it would otherwise end or
//! stop a process. It appends `ready` once its signals are blocked, and exits 0 after recording
//! EXIT_SIGNAL (a number), if given.

use std::fs::OpenOptions;
use std::io::Write;
use std::mem::MaybeUninit;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: sigcatch FILE [EXIT_SIGNAL]");
        return ExitCode::from(2);
    };
    let exit_on: Option<i32> = args.next().and_then(|a| a.parse().ok());
    let mut file = match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sigcatch: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut all = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `all` is a sigset_t buffer, filled before it is read.
    let all = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        all.assume_init()
    };
    // SAFETY: blocks signals for this (only) thread; the set is valid.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut()) } != 0 {
        eprintln!("sigcatch: sigprocmask: {}", std::io::Error::last_os_error());
        return ExitCode::from(2);
    }
    if writeln!(file, "ready").is_err() {
        return ExitCode::from(2);
    }
    loop {
        // SAFETY: waits for one of the blocked signals; no siginfo is asked for.
        let sig = unsafe { libc::sigwaitinfo(&all, std::ptr::null_mut()) };
        if sig < 0 {
            continue; // EINTR
        }
        if writeln!(file, "{sig}").is_err() {
            return ExitCode::from(2);
        }
        if Some(sig) == exit_on {
            return ExitCode::SUCCESS;
        }
    }
}
