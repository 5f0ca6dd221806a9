//! The emergency path of the machine's init: when archon cannot go on (it panicked, its
//! configuration is broken at boot, it cannot start, `reboot(2)` failed), it must not exit, for
//! the kernel panics when process 1 does. Instead it says why on its standard error (the console
//! at boot) and in the kernel's log (`/dev/kmsg`), starts an emergency shell, `/bin/sh`, on the
//! console's terminal if there is one, and goes on reaping every orphan. When that shell exits, the
//! machine reboots. Without a shell, archon only reaps, for ever; SIGKILL-proof, as process 1 is.
//!
//! Everything here is plain system calls: the state of the rest of archon is not to be trusted.

use std::ffi::{CStr, CString};
use std::io::Write;

use crate::{error, pid1::halt};

/// The emergency shell.
const SHELL: &CStr = c"/bin/sh";

/// Where the shell talks to a person, when the terminal behind it is not known.
const CONSOLE: &CStr = c"/dev/console";

/// The terminals behind `/dev/console`, the last one the main one (`console=` of the kernel's
/// command line). `/dev/console` itself cannot be a controlling terminal: a shell there has no
/// job control and no Ctrl-C.
const CONSOLE_ACTIVE: &str = "/sys/class/tty/console/active";

/// The kernel's log, for a message that outlives the console's scrollback (`dmesg`).
const KMSG: &str = "/dev/kmsg";

/// `<2>`: the kernel log level of the emergency message (`KERN_CRIT`).
const KMSG_LEVEL: &str = "<2>";

/// Makes a panic anywhere in archon take the emergency path instead of unwinding out of `main`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        emergency(&format!("archon panicked: {info}"));
    }));
}

/// Says why on the console and in the kernel's log, starts the emergency shell, and reaps for
/// ever. Never returns.
pub fn emergency(reason: &str) -> ! {
    error!("emergency: {reason}");
    // In the kernel's log once: the line above went there already when archon's log does.
    if !crate::log::to_kmsg() {
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open(KMSG) {
            let _ = writeln!(kmsg, "{KMSG_LEVEL}archon: emergency: {reason}");
        }
    }
    let shell = start_shell();
    match shell {
        Some(pid) => error!(
            "emergency: {} started on the console (pid {pid}); the machine reboots when it exits",
            SHELL.to_string_lossy()
        ),
        None => error!(
            "emergency: no {} to start: archon only reaps from now on",
            SHELL.to_string_lossy()
        ),
    }
    reap_forever(shell)
}

/// Forks the emergency shell on the console; its pid, or `None` when there is no shell or no
/// fork.
fn start_shell() -> Option<libc::pid_t> {
    // SAFETY: access only reads the path.
    if unsafe { libc::access(SHELL.as_ptr(), libc::X_OK) } != 0 {
        return None;
    }
    let terminal = console_terminal();
    let argv = [SHELL.as_ptr(), std::ptr::null()];
    // SAFETY: archon is single-threaded; the child makes only plain system calls on values
    // prepared before the fork, then executes the shell or exits.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        return (pid > 0).then_some(pid);
    }
    // SAFETY: the child: plain system calls only, then exec or _exit.
    unsafe {
        libc::setsid();
        // Without O_NOCTTY: the terminal becomes the shell's controlling terminal.
        let mut fd = libc::open(terminal.as_ptr(), libc::O_RDWR);
        if fd < 0 {
            fd = libc::open(CONSOLE.as_ptr(), libc::O_RDWR);
        }
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
        for sig in 1..32 {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execv(SHELL.as_ptr(), argv.as_ptr());
        libc::_exit(127)
    }
}

/// The terminal behind the console (`/dev/ttyS0`), else `/dev/console`.
fn console_terminal() -> CString {
    std::fs::read_to_string(CONSOLE_ACTIVE)
        .ok()
        .and_then(|active| {
            let name = active.split_whitespace().last()?.to_string();
            CString::new(format!("/dev/{name}")).ok()
        })
        .unwrap_or_else(|| CONSOLE.to_owned())
}

/// Does nothing: its being there makes SIGCHLD end `sigsuspend`.
extern "C" fn on_sigchld(_: libc::c_int) {}

/// Reaps every child as it ends, waiting in `sigsuspend` in between; reboots once `shell` has
/// ended.
fn reap_forever(mut shell: Option<libc::pid_t>) -> ! {
    // SAFETY: a handler that does nothing, and a mask: SIGCHLD stays blocked except inside
    // sigsuspend, so none is lost between a waitpid that found nothing and the wait.
    unsafe {
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_NOCLDSTOP;
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
    }
    loop {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if Some(pid) == shell {
                shell = None;
                error!("emergency: the shell has ended: rebooting");
                let e = halt::reboot_now();
                error!("emergency: cannot reboot ({e}): archon only reaps from now on");
            }
        }
        // SAFETY: an empty mask: waits for any handled signal, SIGCHLD included.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigsuspend(&none);
        }
    }
}
