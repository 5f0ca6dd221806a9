//! Starting a child: prepare everything in archon, `clone3(CLONE_PIDFD)`, and exec.
//!
//! All allocation happens before the clone ([`Exec::prepare`]); between clone and exec the child
//! makes only plain system calls ([`child_side`]): it resets every signal to its default, unblocks
//! them, starts its own session and process group, puts its stdio in place, marks every other fd
//! close-on-exec, and tries each candidate path the way `execvp` does. If no exec succeeds it
//! writes its errno to a close-on-exec pipe and exits 127; end of file on that pipe means the
//! program was executed. Signals are blocked in archon across the clone so that a signal aimed at
//! the new child before its handlers are reset cannot run archon's handler in the child.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use archon_proto::Command;

use crate::sys;

/// `PATH` for a child whose environment has none.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `CLONE_PIDFD`, from `linux/sched.h`.
const CLONE_PIDFD: u64 = 0x1000;

/// `struct clone_args` (`CLONE_ARGS_SIZE_VER2`, Linux 5.7). Older kernels accept the larger size
/// as long as the fields they do not know are zero.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Set once clone3 has failed with ENOSYS or EPERM (old kernel, or a seccomp filter such as
/// Docker's default profile): from then on archon forks and opens the pidfd after.
static NO_CLONE3: AtomicBool = AtomicBool::new(false);

/// A command made ready to exec: C strings and the pointer arrays over them.
pub struct Exec {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// Why a command cannot be prepared.
#[derive(Debug)]
pub struct PrepareError;

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NUL byte in the command")
    }
}

impl Exec {
    /// Prepares `cmd` with the base environment `base` (its entries applied in order).
    pub fn prepare(cmd: &Command, base: &[(Vec<u8>, Vec<u8>)]) -> Result<Exec, PrepareError> {
        let mut env: Vec<(Vec<u8>, Vec<u8>)> = base.to_vec();
        for entry in &cmd.env {
            env.retain(|(n, _)| *n != entry.name);
            if let Some(v) = &entry.value {
                env.push((entry.name.clone(), v.clone()));
            }
        }
        let program = cmd.argv.first().ok_or(PrepareError)?;
        let candidates = if program.contains(&b'/') {
            vec![program.clone()]
        } else {
            let path = env
                .iter()
                .find(|(n, _)| n == b"PATH")
                .map_or(DEFAULT_PATH, |(_, v)| v.as_slice());
            search_candidates(path, program)
        };
        let cstr = |b: Vec<u8>| CString::new(b).map_err(|_| PrepareError);
        Ok(Exec {
            candidates: candidates.into_iter().map(cstr).collect::<Result<_, _>>()?,
            argv: cmd
                .argv
                .iter()
                .cloned()
                .map(cstr)
                .collect::<Result<_, _>>()?,
            envp: env
                .into_iter()
                .map(|(mut n, v)| {
                    n.push(b'=');
                    n.extend(v);
                    cstr(n)
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The paths `execvp` would try for `program` along `path` (an empty entry is the current
/// directory).
pub fn search_candidates(path: &[u8], program: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut p = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            p.push(b'/');
            p.extend_from_slice(program);
            p
        })
        .collect()
}

/// A child just started.
pub struct Child {
    /// Its pid.
    pub pid: i32,
    /// Its pidfd, which archon owns from now on.
    pub pidfd: OwnedFd,
    /// The read end of the exec-status pipe: end of file once the program runs, or the errno of
    /// the failed exec (4 bytes, native endian).
    pub exec_status: OwnedFd,
}

/// What the exec-status pipe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The program is running (or ran).
    Executed,
    /// No exec succeeded: the errno.
    Failed(i32),
    /// Nothing to read yet.
    Pending,
}

/// Reads the exec-status pipe without blocking.
pub fn exec_outcome(pipe: &OwnedFd) -> ExecOutcome {
    let mut buf = [0u8; 4];
    match sys::read_nonblocking(std::os::fd::AsFd::as_fd(pipe), &mut buf) {
        Ok(0) => ExecOutcome::Executed,
        Ok(4) => ExecOutcome::Failed(i32::from_ne_bytes(buf)),
        Ok(_) => ExecOutcome::Failed(libc::EIO),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ExecOutcome::Pending,
        Err(e) => ExecOutcome::Failed(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Blocks every signal, returning the previous mask.
fn block_all_signals() -> libc::sigset_t {
    let mut all = MaybeUninit::<libc::sigset_t>::zeroed();
    let mut old = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: both sets are valid sigset_t buffers.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        old.assume_init()
    }
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: old is the mask returned by block_all_signals.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Starts `exec` with `stdio` as its fds 0, 1 and 2 (borrowed: archon keeps its own copies).
pub fn spawn(exec: &Exec, stdio: [RawFd; 3]) -> io::Result<Child> {
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe is a valid [c_int; 2].
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two fds.
    let (status_r, status_w) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };

    let argv: Vec<*const libc::c_char> = exec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = exec
        .envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let paths: Vec<*const libc::c_char> = exec.candidates.iter().map(|c| c.as_ptr()).collect();
    let plan = ChildPlan {
        paths: &paths,
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio,
        status_w: status_w.as_raw_fd(),
    };

    let old_mask = block_all_signals();
    let result = clone_child(&plan);
    restore_signals(&old_mask);
    drop(status_w);
    let (pid, pidfd) = result?;
    Ok(Child {
        pid,
        pidfd,
        exec_status: status_r,
    })
}

/// Clones; in the child runs [`child_side`], which never returns.
fn clone_child(plan: &ChildPlan<'_>) -> io::Result<(i32, OwnedFd)> {
    if !NO_CLONE3.load(Ordering::Relaxed) {
        let mut pidfd: RawFd = -1;
        let args = CloneArgs {
            flags: CLONE_PIDFD,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM gives the child a copy of this single-threaded process;
        // it runs child_side, which makes only async-signal-safe calls and never returns.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match ret {
            0 => child_side(plan),
            pid if pid > 0 => {
                // SAFETY: CLONE_PIDFD stored a new close-on-exec pidfd that we now own.
                return Ok((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }));
            }
            _ => {
                let err = io::Error::last_os_error();
                if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
                    return Err(err);
                }
                NO_CLONE3.store(true, Ordering::Relaxed);
            }
        }
    }
    // SAFETY: as above; fork runs libc's atfork handlers, then the child runs child_side.
    let pid = unsafe { libc::fork() };
    match pid {
        0 => child_side(plan),
        pid if pid > 0 => match sys::pidfd_open(pid) {
            // The child cannot have been reaped yet: archon reaps only in its loop.
            Ok(fd) => Ok((pid, fd)),
            Err(e) => {
                // SAFETY: our own child; killing and reaping it leaves nothing behind.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                Err(e)
            }
        },
        _ => Err(io::Error::last_os_error()),
    }
}

/// What the child needs, all prepared before the clone.
struct ChildPlan<'a> {
    paths: &'a [*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: [RawFd; 3],
    status_w: RawFd,
}

/// The child, between clone and exec: plain system calls only, no allocation, no locks.
fn child_side(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: each call below is async-signal-safe and touches only memory prepared before the
    // clone; the process ends in execve or _exit.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        if libc::setsid() < 0 {
            fail(plan.status_w);
        }
        // Sources are fds >= 3 or archon's own fd 2, and targets are filled 0, 1, 2 in order, so
        // no dup2 overwrites a source still needed.
        for (target, &src) in plan.stdio.iter().enumerate() {
            let target = target as RawFd;
            let ok = if src == target {
                libc::fcntl(target, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(src, target) == target
            };
            if !ok {
                fail(plan.status_w);
            }
        }
        // Everything archon opens is already close-on-exec; this makes sure of it for fds that
        // came from elsewhere. Old kernels lack it, which the close-on-exec rule covers.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );

        let mut saw_eacces = false;
        let mut last = libc::ENOENT;
        for &path in plan.paths {
            libc::execve(path, plan.argv, plan.envp);
            last = *libc::__errno_location();
            match last {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
        }
        if saw_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
            last = libc::EACCES;
        }
        *libc::__errno_location() = last;
        fail(plan.status_w)
    }
}

/// Reports errno on the status pipe and exits 127 (the shell's "command not found").
unsafe fn fail(status_w: RawFd) -> ! {
    // SAFETY: errno location and write are async-signal-safe; _exit never returns.
    unsafe {
        let err = (*libc::__errno_location()).to_ne_bytes();
        libc::write(status_w, err.as_ptr().cast(), err.len());
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::EnvEntry;

    #[test]
    fn path_search_like_execvp() {
        assert_eq!(
            search_candidates(b"/usr/bin::/bin", b"sleep"),
            vec![
                b"/usr/bin/sleep".to_vec(),
                b"./sleep".to_vec(),
                b"/bin/sleep".to_vec()
            ]
        );
    }

    #[test]
    fn environment_is_base_then_entries() -> Result<(), PrepareError> {
        let base = vec![
            (b"PATH".to_vec(), b"/opt".to_vec()),
            (b"HOME".to_vec(), b"/root".to_vec()),
        ];
        let cmd = Command {
            argv: vec![b"tool".to_vec()],
            env: vec![
                EnvEntry::unset("HOME"),
                EnvEntry::set("A", "1"),
                EnvEntry::set("PATH", "/x:/y"),
            ],
        };
        let e = Exec::prepare(&cmd, &base)?;
        let envp: Vec<&[u8]> = e.envp.iter().map(|c| c.as_bytes()).collect();
        assert_eq!(envp, vec![&b"A=1"[..], b"PATH=/x:/y"]);
        let cands: Vec<&[u8]> = e.candidates.iter().map(|c| c.as_bytes()).collect();
        assert_eq!(cands, vec![&b"/x/tool"[..], b"/y/tool"]);
        let abs = Exec::prepare(&Command::new(["/bin/true"]), &[])?;
        assert_eq!(abs.candidates.len(), 1);
        Ok(())
    }
}
