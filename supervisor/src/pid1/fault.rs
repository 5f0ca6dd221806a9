//! Faults of process 1: a fault archon cannot handle in Rust (a stack overflow, a bad pointer, an
//! illegal instruction, an abort on a double panic or a failed allocation) raises a signal whose
//! default action would end archon, and with it the machine (the kernel panics) or the container.
//! As process 1, archon catches SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT and SIGSYS on an
//! alternate signal stack of its own (so that a stack overflow can be handled), says what
//! happened on its standard error and, as the machine's init, in the kernel's log, and executes
//! its own program anew in emergency mode: `archon --emergency <why> [--control-fd <fd>]` (see
//! [`super::emergency`]). `execve` keeps pid 1, so every process stays archon's child; the
//! memory, which may be corrupt, is dropped, and nothing of it is carried over.
//!
//! Every fd is kept across that `execve` (close-on-exec is cleared on all of them): the new image
//! keeps the control socket (its fd is named on the command line) and the read ends of the
//! services' output pipes (so that a service writing to its stdout does not die of SIGPIPE), and
//! closes the rest at once. A panic of process 1 takes the same path ([`exec_emergency`] from the
//! panic hook).
//!
//! The handler does only async-signal-safe things: no allocation, no lock, raw system calls on
//! values prepared at start-up ([`install`]). When the `execve` fails, or when the fault happens
//! in emergency mode already, it never returns into the fault: it reaps children for ever, in the
//! handler itself.
//!
//! Rust's own SIGSEGV/SIGBUS handler (which reports "has overflowed its stack") is replaced
//! deliberately: this handler tells a stack overflow from another fault the same way, by the
//! fault's address (just below the main thread's stack), and says so.

use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// The option that starts the emergency mode: `--emergency <why>`.
pub const EMERGENCY_ARG: &str = "--emergency";

/// The option of the emergency mode that names the inherited control socket.
pub const CONTROL_FD_ARG: &str = "--control-fd";

/// The signals a fault raises.
pub const FAULT_SIGNALS: [i32; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGABRT,
    libc::SIGSYS,
];

/// The size of the alternate signal stack.
const ALT_STACK: usize = 64 * 1024;

/// How far below the main thread's lowest stack address a fault still counts as a stack
/// overflow: the kernel's `stack_guard_gap` (256 pages), within which nothing else is mapped.
const GUARD_GAP: usize = 256 * 4096;

/// archon's own program, as a C string for `execve`.
static EXE: OnceLock<CString> = OnceLock::new();

/// The kernel's log, open for writing (the machine's init only).
static KMSG: OnceLock<OwnedFd> = OnceLock::new();

/// The listening control socket, once the loop has it (its owner is the loop: this is its
/// number only).
static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);

/// True in emergency mode: a fault there is not re-executed again.
static IN_EMERGENCY: AtomicBool = AtomicBool::new(false);

/// The lowest address of the main thread's stack; 0 when not known.
static STACK_LOW: AtomicUsize = AtomicUsize::new(0);

/// The alternate signal stack, mapped once for archon's life.
static ALT_STACK_BASE: AtomicUsize = AtomicUsize::new(0);

/// Installs the fault handlers on an alternate stack; `kmsg` also opens the kernel's log for
/// their message (the machine's init). In emergency mode (`emergency`) a fault is not re-executed again: the handler
/// reaps for ever instead. Failures are returned, each one said in the log by the caller.
pub fn install(kmsg: bool, emergency: bool) -> Result<(), String> {
    IN_EMERGENCY.store(emergency, Ordering::SeqCst);
    if let Some(exe) =
        crate::reexec::own_exe().and_then(|p| CString::new(p.into_os_string().into_vec()).ok())
    {
        let _ = EXE.set(exe);
    }
    if kmsg && KMSG.get().is_none() {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = KMSG.set(OwnedFd::from(f));
        }
    }
    STACK_LOW.store(main_stack_low().unwrap_or(0), Ordering::SeqCst);
    alt_stack()?;
    for sig in FAULT_SIGNALS {
        // SAFETY: a handler of the right signature, every signal blocked while it runs, on the
        // alternate stack set up above.
        let ret = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault
                as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigfillset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if ret != 0 {
            return Err(format!(
                "sigaction({}): {}",
                signal_name(sig).to_string_lossy(),
                std::io::Error::last_os_error()
            ));
        }
    }
    if EXE.get().is_none() {
        return Err("archon's own path is unknown: /proc/self/exe will be tried".to_string());
    }
    Ok(())
}

/// Records the listening control socket's fd: the emergency mode serves it.
pub fn set_control_socket(fd: RawFd) {
    CONTROL_FD.store(fd, Ordering::SeqCst);
}

/// Maps the alternate signal stack and makes it the thread's (once).
fn alt_stack() -> Result<(), String> {
    if ALT_STACK_BASE.load(Ordering::SeqCst) != 0 {
        return Ok(());
    }
    // SAFETY: a fresh anonymous private mapping; it is never unmapped.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!(
            "map the signal stack: {}",
            std::io::Error::last_os_error()
        ));
    }
    let stack = libc::stack_t {
        ss_sp: base,
        ss_flags: 0,
        ss_size: ALT_STACK,
    };
    // SAFETY: the mapping above, which lives for the rest of the process.
    if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaltstack: {}", std::io::Error::last_os_error()));
    }
    ALT_STACK_BASE.store(base as usize, Ordering::SeqCst);
    Ok(())
}

/// The lowest address the main thread's stack may grow to (its size limit), as the C library
/// tells it.
fn main_stack_low() -> Option<usize> {
    // SAFETY: attr is initialised by pthread_getattr_np before it is read, and destroyed after.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size = 0;
        let ret = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (ret == 0 && !addr.is_null()).then_some(addr as usize)
    }
}

/// What raised a fault signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A fault at this address, just below the main thread's stack.
    StackOverflow(usize),
    /// A fault at this address.
    Fault(usize),
    /// Sent by another process (`kill`): its pid, 0 for one outside archon's PID namespace.
    Sent(i32),
    /// Raised by archon itself (`abort`, `raise`).
    Raised,
}

impl Cause {
    /// What the kernel's `siginfo` says: `code` (`si_code`), `addr` (`si_addr`, for a fault),
    /// `sender` (`si_pid`, for a sent signal); `me` is archon's pid and `stack_low` the lowest
    /// address of its main stack (0 if not known).
    pub fn of(code: i32, addr: usize, sender: i32, me: i32, stack_low: usize) -> Cause {
        if code > 0 {
            // Raised by the kernel for a fault (SEGV_MAPERR, BUS_ADRERR, ILL_ILLOPC...).
            let below_stack = stack_low != 0
                && addr < stack_low.saturating_add(4096)
                && addr >= stack_low.saturating_sub(GUARD_GAP);
            return if below_stack {
                Cause::StackOverflow(addr)
            } else {
                Cause::Fault(addr)
            };
        }
        if sender != me && matches!(code, libc::SI_USER | libc::SI_QUEUE) {
            Cause::Sent(sender)
        } else {
            Cause::Raised
        }
    }

    /// True when `sig` with this cause is a fault of archon's own. A SIGABRT another process
    /// sent is not: as a container's entrypoint archon forwards it to its main command (see
    /// `entry.rs`), and otherwise process 1 ignores it, as it did before it had a handler. The
    /// other fault signals are never forwarded, and one sent takes the emergency path as a real
    /// fault does.
    pub fn is_fault(self, sig: i32) -> bool {
        !(sig == libc::SIGABRT && matches!(self, Cause::Sent(_)))
    }

    /// The `<why>` of `--emergency <why>`.
    pub fn word(self, sig: i32) -> &'static CStr {
        match self {
            Cause::StackOverflow(_) => c"stack-overflow",
            _ => signal_name(sig),
        }
    }
}

/// A signal's name, for the handled ones and a few more.
pub fn signal_name(sig: i32) -> &'static CStr {
    match sig {
        libc::SIGSEGV => c"SIGSEGV",
        libc::SIGBUS => c"SIGBUS",
        libc::SIGILL => c"SIGILL",
        libc::SIGFPE => c"SIGFPE",
        libc::SIGABRT => c"SIGABRT",
        libc::SIGSYS => c"SIGSYS",
        libc::SIGTRAP => c"SIGTRAP",
        _ => c"a fatal signal",
    }
}

/// A line built without allocating: what does not fit is cut.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl Line {
    /// Appends bytes.
    pub fn push(&mut self, bytes: &[u8]) -> &mut Line {
        let room = self.buf.len() - self.len;
        let n = bytes.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    /// Appends a number in decimal.
    pub fn dec(&mut self, mut n: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    /// Appends a number in hexadecimal, `0x` first.
    pub fn hex(&mut self, mut n: u64) -> &mut Line {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        self.push(b"0x").push(&digits[i..])
    }

    /// What was written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The message of a fault: `<prefix>fatal: <what>`, a newline last. `then` says what happens
/// next.
pub fn message(out: &mut Line, prefix: &[u8], sig: i32, cause: Cause, then: &[u8]) {
    out.push(prefix).push(b"archon: fatal: ");
    let name = signal_name(sig).to_bytes();
    match cause {
        Cause::StackOverflow(addr) => {
            out.push(b"stack overflow (")
                .push(name)
                .push(b" at ")
                .hex(addr as u64)
                .push(b")");
        }
        Cause::Fault(addr) => {
            out.push(name).push(b" at address ").hex(addr as u64);
        }
        Cause::Sent(0) => {
            out.push(name)
                .push(b" sent from outside archon's PID namespace");
        }
        Cause::Sent(pid) => {
            out.push(name).push(b" sent by pid ").dec(pid as u64);
        }
        Cause::Raised => {
            out.push(name);
            if sig == libc::SIGABRT {
                out.push(b" (abort: a double panic or no memory left)");
            }
        }
    }
    out.push(b": ").push(then).push(b"\n");
}

/// Writes all of `bytes` to `fd`, as far as it goes (async-signal-safe).
fn write_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: a valid buffer; write is async-signal-safe.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The fault handler (see the module's documentation).
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; si_addr and si_pid read the
    // union as the si_code says it was filled (a fault's address, a sender's pid), and a field
    // of the wrong member only reads bytes of the union.
    let (code, addr, sender) = unsafe {
        match info.as_ref() {
            Some(i) => (i.si_code, i.si_addr() as usize, i.si_pid()),
            None => (0, 0, 0),
        }
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let cause = Cause::of(code, addr, sender, me, STACK_LOW.load(Ordering::Relaxed));
    if !cause.is_fault(sig) {
        return;
    }
    let emergency = IN_EMERGENCY.load(Ordering::Relaxed);
    let then: &[u8] = if emergency {
        b"in emergency mode already: archon only reaps from now on"
    } else {
        b"executing archon --emergency"
    };
    let mut line = Line::default();
    message(&mut line, b"", sig, cause, then);
    write_all(2, line.as_bytes());
    if let Some(kmsg) = KMSG.get() {
        let mut line = Line::default();
        message(&mut line, b"<2>", sig, cause, then);
        write_all(kmsg.as_raw_fd(), line.as_bytes());
    }
    if !emergency {
        let err = exec_emergency_raw(cause.word(sig));
        let mut line = Line::default();
        line.push(b"archon: cannot execute archon --emergency (errno ")
            .dec(err as u64)
            .push(b"): archon only reaps from now on\n");
        write_all(2, line.as_bytes());
    }
    reap_forever()
}

/// Executes `archon --emergency <why>` in place of this image: the panic hook's way (see the
/// module's documentation). Returns only when `execve` failed.
pub fn exec_emergency(why: &CStr) -> std::io::Error {
    // SAFETY: every signal is blocked first, as in the fault handler: nothing runs between the
    // fds losing close-on-exec and the execve. The new image sets its own mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    let errno = exec_emergency_raw(why);
    // Still this image: what it starts next (the emergency shell) must not inherit every fd.
    set_close_on_exec(true);
    std::io::Error::from_raw_os_error(errno)
}

/// Clears close-on-exec on every fd, then executes `archon --emergency <why>
/// [--control-fd <fd>]`, by the saved path, then by `/proc/self/exe`; the errno of the failure.
/// Async-signal-safe: no allocation.
fn exec_emergency_raw(why: &CStr) -> i32 {
    set_close_on_exec(false);
    let control = CONTROL_FD.load(Ordering::Relaxed);
    let mut digits = Line::default();
    digits.dec(control.max(0) as u64).push(b"\0");
    let exe: *const libc::c_char = match EXE.get() {
        Some(exe) => exe.as_ptr(),
        None => c"/proc/self/exe".as_ptr(),
    };
    let mut argv = emergency_argv(exe, why, (control >= 0).then_some(&digits));
    for path in [exe, c"/proc/self/exe".as_ptr()] {
        argv[0] = path;
        // SAFETY: NUL-terminated strings and a NULL-terminated array, all alive across the call;
        // the C library's execv is execve with the current environment.
        unsafe { libc::execv(path, argv.as_ptr()) };
    }
    errno()
}

/// [`EMERGENCY_ARG`] as a C string.
const EMERGENCY_C: &CStr = c"--emergency";

/// [`CONTROL_FD_ARG`] as a C string.
const CONTROL_FD_C: &CStr = c"--control-fd";

/// Sets (`on`) or clears close-on-exec on every open fd above 2, found in `/proc/self/fd` (with
/// `getdents64` into a buffer on the stack), else by trying every fd below 65536.
fn set_close_on_exec(on: bool) {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: open, getdents64, fcntl and close on plain values; the buffer outlives the calls.
    unsafe {
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            for fd in 3..65536 {
                libc::fcntl(fd, libc::F_SETFD, flags);
            }
            return;
        }
        let mut buf = [0u64; 512];
        loop {
            let n = libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            );
            if n <= 0 {
                break;
            }
            let bytes = std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize);
            let mut at = 0;
            while at + 19 < bytes.len() {
                let reclen = u16::from_ne_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                let name = &bytes[at + 19..(at + reclen).min(bytes.len())];
                if let Some(fd) = parse_fd(name) {
                    if fd > 2 && fd != dir {
                        libc::fcntl(fd, libc::F_SETFD, flags);
                    }
                }
                at += reclen;
            }
        }
        libc::close(dir);
    }
}

/// The fd a `/proc/self/fd` entry names (its name ends at the first NUL).
fn parse_fd(name: &[u8]) -> Option<RawFd> {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = &name[..end];
    if name.is_empty() || name.len() > 9 {
        return None;
    }
    let mut n: RawFd = 0;
    for &b in name {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + RawFd::from(b - b'0');
    }
    Some(n)
}

/// Reaps children for ever with raw system calls (every signal blocked): the last resort, when
/// there is no emergency mode to go to.
pub fn reap_forever() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: wait4 with a valid status pointer and no rusage.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::__WALL, std::ptr::null_mut()) };
        if pid < 0 && errno() == libc::ECHILD {
            // No child at all: nothing can become one but through a process archon starts, and
            // it starts none now. Sleep; a reparented orphan is reaped on the next turn.
            let nap = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            // SAFETY: a valid timespec; no remainder wanted.
            unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
        }
    }
}

/// The command line of the emergency mode, without allocating: `<exe> --emergency <why>
/// [--control-fd <fd>]`, NULL-terminated; `control` holds the fd's digits and a NUL.
fn emergency_argv(
    exe: *const libc::c_char,
    why: &CStr,
    control: Option<&Line>,
) -> [*const libc::c_char; 6] {
    let mut argv = [
        exe,
        EMERGENCY_C.as_ptr(),
        why.as_ptr(),
        std::ptr::null(),
        std::ptr::null(),
        std::ptr::null(),
    ];
    if let Some(digits) = control {
        argv[3] = CONTROL_FD_C.as_ptr();
        argv[4] = digits.as_bytes().as_ptr().cast();
    }
    argv
}

/// What `--emergency <why> [--control-fd <fd>]` says, from the arguments after the program's
/// name; `None` when they are not that.
pub fn parse_emergency_args(args: &[OsString]) -> Option<(String, Option<OwnedFd>)> {
    let (first, rest) = args.split_first()?;
    if first != EMERGENCY_ARG {
        return None;
    }
    let why = rest.first()?.to_string_lossy().into_owned();
    let control = match &rest[1..] {
        [opt, fd] if opt == CONTROL_FD_ARG => {
            let fd: RawFd = fd.to_str()?.parse().ok().filter(|&fd| fd > 2)?;
            // SAFETY: F_GETFD only checks that the fd is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                None
            } else {
                // SAFETY: the previous image left this fd open for this image alone, which owns
                // it from here on.
                Some(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        }
        [] => None,
        _ => return None,
    };
    Some((why, control))
}

/// A fault made on purpose, for the tests: the hidden request `DebugFault,<kind>` of a debug
/// build (see `control.rs`). `null` reads through an address near null, `overflow` recurses
/// until the stack overflows, `abort` aborts, `panic` panics. Returns for an unknown kind.
#[cfg(debug_assertions)]
#[allow(clippy::panic)]
pub fn debug_fault(kind: &[u8]) {
    #[allow(unconditional_recursion)]
    fn recurse(n: u64) -> u64 {
        let frame = [n; 64];
        std::hint::black_box(&frame);
        recurse(n + 1).wrapping_add(frame[0])
    }
    match kind {
        // SAFETY: none: the point is the fault. Not null itself, which Rust's debug checks
        // would catch before the processor does.
        b"null" => unsafe {
            std::hint::black_box(std::ptr::read_volatile(std::hint::black_box(
                16 as *const u8,
            )));
        },
        b"overflow" => {
            std::hint::black_box(recurse(0));
        }
        b"abort" => std::process::abort(),
        b"panic" => panic!("DebugFault,panic"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(sig: i32, cause: Cause) -> String {
        let mut line = Line::default();
        message(&mut line, b"", sig, cause, b"next");
        String::from_utf8_lossy(line.as_bytes()).into_owned()
    }

    #[test]
    fn the_messages() {
        assert_eq!(
            text(libc::SIGSEGV, Cause::Fault(16)),
            "archon: fatal: SIGSEGV at address 0x10: next\n"
        );
        assert_eq!(
            text(libc::SIGSEGV, Cause::StackOverflow(0x7ffe_0000_0ff8)),
            "archon: fatal: stack overflow (SIGSEGV at 0x7ffe00000ff8): next\n"
        );
        assert_eq!(
            text(libc::SIGBUS, Cause::Sent(4321)),
            "archon: fatal: SIGBUS sent by pid 4321: next\n"
        );
        assert_eq!(
            text(libc::SIGSEGV, Cause::Sent(0)),
            "archon: fatal: SIGSEGV sent from outside archon's PID namespace: next\n"
        );
        assert_eq!(
            text(libc::SIGABRT, Cause::Raised),
            "archon: fatal: SIGABRT (abort: a double panic or no memory left): next\n"
        );
        let mut line = Line::default();
        line.dec(0).push(b" ").hex(0).push(b" ").dec(u64::MAX);
        assert_eq!(line.as_bytes(), b"0 0x0 18446744073709551615");
        // What does not fit is cut, never written past the buffer.
        let mut long = Line::default();
        for _ in 0..100 {
            long.push(b"0123456789");
        }
        assert_eq!(long.as_bytes().len(), 256);
    }

    /// `SEGV_MAPERR` of the kernel's `siginfo.h`: an address not mapped.
    const SEGV_MAPERR: i32 = 1;

    #[test]
    fn the_causes() {
        let low = 0x7ffe_0000_0000;
        // A fault just below the stack's limit is an overflow; elsewhere it is not.
        assert_eq!(
            Cause::of(SEGV_MAPERR, low - 8, 0, 1, low),
            Cause::StackOverflow(low - 8)
        );
        assert_eq!(Cause::of(SEGV_MAPERR, 16, 0, 1, low), Cause::Fault(16));
        assert_eq!(Cause::of(SEGV_MAPERR, 16, 0, 1, 0), Cause::Fault(16));
        assert_eq!(Cause::of(libc::SI_USER, 0, 77, 1, low), Cause::Sent(77));
        assert_eq!(Cause::of(libc::SI_USER, 0, 0, 1, low), Cause::Sent(0));
        // abort() is raised by archon itself (tgkill).
        assert_eq!(Cause::of(libc::SI_TKILL, 0, 1, 1, low), Cause::Raised);
        assert_eq!(
            Cause::StackOverflow(0).word(libc::SIGSEGV),
            c"stack-overflow"
        );
        assert_eq!(Cause::Sent(2).word(libc::SIGBUS), c"SIGBUS");
        // A SIGABRT sent is not a fault (it is forwarded to a main command); one raised is.
        assert!(!Cause::Sent(0).is_fault(libc::SIGABRT));
        assert!(Cause::Raised.is_fault(libc::SIGABRT));
        assert!(Cause::Sent(0).is_fault(libc::SIGSEGV));
        assert!(Cause::Fault(16).is_fault(libc::SIGSEGV));
    }

    #[test]
    fn the_emergency_command_line() {
        let read = |argv: &[*const libc::c_char]| -> Vec<String> {
            argv.iter()
                .take_while(|p| !p.is_null())
                // SAFETY: the pointers are NUL-terminated strings alive in this test.
                .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
                .collect()
        };
        let mut digits = Line::default();
        digits.dec(5).push(b"\0");
        let exe = c"/sbin/archon";
        let argv = emergency_argv(exe.as_ptr(), c"SIGSEGV", Some(&digits));
        assert_eq!(
            read(&argv),
            [
                "/sbin/archon",
                "--emergency",
                "SIGSEGV",
                "--control-fd",
                "5"
            ]
        );
        assert!(argv[5].is_null(), "NULL-terminated");
        let argv = emergency_argv(exe.as_ptr(), c"panic", None);
        assert_eq!(read(&argv), ["/sbin/archon", "--emergency", "panic"]);
        assert_eq!(EMERGENCY_C.to_str().ok(), Some(EMERGENCY_ARG));
        assert_eq!(CONTROL_FD_C.to_str().ok(), Some(CONTROL_FD_ARG));
        // Read back: a closed fd is no control socket; fds 0-2 never are.
        let parse = |args: &[&str]| {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            parse_emergency_args(&args).map(|(why, fd)| (why, fd.is_some()))
        };
        assert_eq!(
            parse(&["--emergency", "panic"]),
            Some(("panic".into(), false))
        );
        assert_eq!(
            parse(&["--emergency", "SIGSEGV", "--control-fd", "999999"]),
            Some(("SIGSEGV".into(), false))
        );
        assert_eq!(
            parse(&["--emergency", "x", "--control-fd", "1"]),
            None,
            "stdio is no control socket"
        );
        assert_eq!(parse(&["--emergency"]), None);
        assert_eq!(parse(&["--socket", "x"]), None);
        assert_eq!(parse(&["--emergency", "x", "--other"]), None);
        assert_eq!(parse_fd(b"17\0\0"), Some(17));
        assert_eq!(parse_fd(b".\0"), None);
        assert_eq!(parse_fd(b"..\0"), None);
    }
}
