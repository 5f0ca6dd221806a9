//! Starting a child the way `posix_spawn` does: prepare everything in archon, then
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` on a stack of its own, and exec.
//!
//! The child shares archon's memory until it execs, and archon is suspended until then, so a
//! child costs no copy of archon's page tables and no copy-on-write faults afterwards (fork
//! semantics made a `Run` of /bin/true twice as slow as `posix_spawn`), and the exec's outcome is
//! known when the clone returns: the child writes its errno into archon's memory if no exec
//! succeeds, then exits 127. The price is posix_spawn's: archon waits while the kernel loads the
//! program, which a program on a hung network file system would stretch.
//!
//! All allocation happens before the clone ([`Exec::prepare`]); between clone and exec the child
//! makes only plain system calls ([`child_side`]): it resets every signal to its default, unblocks
//! them, starts its own session and process group, puts its stdio in place, marks every other fd
//! close-on-exec, and tries each candidate path the way `execvp` does. Signals are blocked in
//! archon across the clone, so no handler of archon's can run on the child's side.
//!
//! On x86_64 the clone is `clone3` through a small trampoline (clone3 is what can place a child
//! in a cgroup as it is created); elsewhere, or where a seccomp filter refuses clone3, it is
//! glibc's `clone`.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use archon_proto::Command;

/// `PATH` for a child whose environment has none.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Size of the stack the child runs on until it execs (it needs a few hundred bytes).
const CHILD_STACK_SIZE: usize = 64 * 1024;

/// The page below the child's stack, left inaccessible so an overflow faults.
const GUARD_SIZE: usize = 4096;

/// `CLONE_PIDFD`, from `linux/sched.h`.
const CLONE_PIDFD: u64 = 0x1000;

/// The flags of every clone: share memory and wait for the exec, like vfork.
const CLONE_VM_VFORK: u64 = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;

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
/// Docker's default profile): from then on archon uses glibc's clone.
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

/// A child just started: its program is running.
pub struct Child {
    /// Its pid.
    pub pid: i32,
    /// Its pidfd, which archon owns from now on.
    pub pidfd: OwnedFd,
}

/// Why no child runs the program.
#[derive(Debug)]
pub enum SpawnError {
    /// No exec succeeded: the errno. The child has exited 127 and is reaped as an orphan.
    Exec(i32),
    /// No child could be made.
    Clone(io::Error),
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

/// The stack children run on until they exec: mapped once, with a guard page below it. One
/// stack serves every child, since archon is suspended until the child is done with it.
pub struct Spawner {
    base: *mut libc::c_void,
}

impl Spawner {
    /// Maps the child stack.
    pub fn new() -> io::Result<Spawner> {
        // SAFETY: an anonymous private mapping, owned by the Spawner and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                GUARD_SIZE + CHILD_STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let spawner = Spawner { base };
        // SAFETY: the first page of our own mapping.
        if unsafe { libc::mprotect(base, GUARD_SIZE, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(spawner)
    }

    /// The lowest usable address of the stack.
    fn stack_low(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(GUARD_SIZE)
    }

    /// Starts `exec` with `stdio` as its fds 0, 1 and 2 (borrowed: archon keeps its own copies).
    /// When this returns, the program runs, or it could not be executed.
    pub fn spawn(&mut self, exec: &Exec, stdio: [RawFd; 3]) -> Result<Child, SpawnError> {
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
        let mut exec_errno: i32 = 0;
        let plan = ChildPlan {
            paths: &paths,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            stdio,
            errno: &mut exec_errno,
        };

        let old_mask = block_all_signals();
        let result = self.clone_child(&plan);
        restore_signals(&old_mask);
        let (pid, pidfd) = result.map_err(SpawnError::Clone)?;
        // SAFETY: CLONE_VFORK: the child has exec'd or exited, and no longer touches this memory.
        let errno = unsafe { std::ptr::read_volatile(plan.errno) };
        if errno != 0 {
            return Err(SpawnError::Exec(errno));
        }
        Ok(Child { pid, pidfd })
    }

    fn clone_child(&mut self, plan: &ChildPlan<'_>) -> io::Result<(i32, OwnedFd)> {
        let arg = (plan as *const ChildPlan<'_>)
            .cast_mut()
            .cast::<libc::c_void>();
        #[cfg(target_arch = "x86_64")]
        if !NO_CLONE3.load(Ordering::Relaxed) {
            let mut pidfd: RawFd = -1;
            let args = CloneArgs {
                flags: CLONE_PIDFD | CLONE_VM_VFORK,
                pidfd: &mut pidfd as *mut RawFd as u64,
                exit_signal: libc::SIGCHLD as u64,
                stack: self.stack_low() as u64,
                stack_size: CHILD_STACK_SIZE as u64,
                ..CloneArgs::default()
            };
            // SAFETY: the child runs child_entry on its own stack, in archon's memory, while
            // archon is suspended (CLONE_VFORK); child_entry never returns.
            let ret = unsafe { clone3_trampoline(&args, child_entry, arg) };
            if ret > 0 {
                // SAFETY: CLONE_PIDFD stored a new close-on-exec pidfd that we now own.
                return Ok((ret as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }));
            }
            let errno = (-ret) as i32;
            if !matches!(errno, libc::ENOSYS | libc::EPERM) {
                return Err(io::Error::from_raw_os_error(errno));
            }
            NO_CLONE3.store(true, Ordering::Relaxed);
        }
        let mut pidfd: libc::c_int = -1;
        let top = self.stack_low().wrapping_byte_add(CHILD_STACK_SIZE);
        // SAFETY: as above; glibc's clone runs child_entry on `top` and stores the pidfd through
        // the parent_tid argument (CLONE_PIDFD).
        let pid = unsafe {
            libc::clone(
                child_entry,
                top,
                (CLONE_VM_VFORK | CLONE_PIDFD) as libc::c_int | libc::SIGCHLD,
                arg,
                &mut pidfd as *mut libc::c_int,
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: CLONE_PIDFD stored a new close-on-exec pidfd that we now own.
        Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used by any child (they have all exec'd or exited).
        unsafe { libc::munmap(self.base, GUARD_SIZE + CHILD_STACK_SIZE) };
    }
}

/// `clone3` with the child going straight to `entry(arg)` on the stack in `args`: after the
/// system call the child has no Rust frame to return to, so the call and the jump are one piece
/// of assembly, as in libc's own clone. Returns the pid, or `-errno`.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_trampoline(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> isize {
    let ret: isize;
    // SAFETY: the syscall preserves every register but rax, rcx and r11; `entry` and `arg` are
    // kept out of those (rcx and r11 are plain outputs, so no input shares them). In the child
    // rax is 0 and rsp is the top of the new stack, 16-byte aligned, as `call` needs.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, {arg}",
            "call {entry}",
            "ud2",
            "2:",
            entry = in(reg) entry,
            arg = in(reg) arg,
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    ret
}

/// What the child needs, all prepared before the clone.
struct ChildPlan<'a> {
    paths: &'a [*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: [RawFd; 3],
    /// Where the child reports the errno of a failed exec, in archon's memory.
    errno: *mut i32,
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the ChildPlan that spawn keeps alive until the child has exec'd or exited.
    child_side(unsafe { &*arg.cast::<ChildPlan<'_>>() })
}

/// The child, between clone and exec: plain system calls only, no allocation, no locks. It
/// shares archon's memory, and writes to none of it but `plan.errno` (and errno itself, in the
/// thread archon is suspended in).
fn child_side(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: each call below is async-signal-safe and touches only memory prepared before the
    // clone; the process ends in execve or _exit.
    unsafe {
        // The raw system calls: glibc's wrappers refuse signals 32 and 33 (its own), which a
        // parent's posix_spawn may have left ignored, and ignored dispositions survive exec.
        // An all-zero kernel sigaction is SIG_DFL with no flags and an empty mask.
        let dfl = [0u64; 4];
        let none = 0u64;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );

        if libc::setsid() < 0 {
            fail(plan);
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
                fail(plan);
            }
        }
        // Everything archon opens is already close-on-exec; this makes sure of it for fds that
        // came from elsewhere. (The fd table is the child's own: CLONE_FILES is not set.) Old
        // kernels lack close_range, which the close-on-exec rule covers.
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
        fail(plan)
    }
}

/// Reports errno to archon and exits 127 (the shell's "command not found").
unsafe fn fail(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: archon is suspended until this child exits, so the write does not race; errno's
    // location and _exit are async-signal-safe.
    unsafe {
        let err = *libc::__errno_location();
        std::ptr::write_volatile(plan.errno, if err == 0 { libc::EIO } else { err });
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

    /// Waits for the child of a pidfd and decodes its status.
    fn wait(pidfd: &OwnedFd) -> archon_proto::Status {
        use std::os::fd::AsRawFd;
        let mut si = MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: si is a valid siginfo_t; P_PIDFD = 3.
        let ret = unsafe {
            libc::waitid(
                3,
                pidfd.as_raw_fd() as libc::id_t,
                si.as_mut_ptr(),
                libc::WEXITED,
            )
        };
        assert_eq!(ret, 0, "waitid: {}", io::Error::last_os_error());
        // SAFETY: waitid filled it.
        let si = unsafe { si.assume_init() };
        // SAFETY: a SIGCHLD siginfo.
        let status = unsafe { si.si_status() };
        match si.si_code {
            libc::CLD_EXITED => archon_proto::Status::Exited(status as u8),
            _ => archon_proto::Status::Signaled(status),
        }
    }

    fn sh(script: &str) -> Result<Exec, PrepareError> {
        Exec::prepare(
            &Command::new(["/bin/sh", "-c", script]),
            &[(b"PATH".to_vec(), DEFAULT_PATH.to_vec())],
        )
    }

    fn spawn_and_wait(
        spawner: &mut Spawner,
        exec: &Exec,
        stdio: [RawFd; 3],
    ) -> Result<archon_proto::Status, String> {
        match spawner.spawn(exec, stdio) {
            Ok(child) => {
                assert!(child.pid > 0);
                Ok(wait(&child.pidfd))
            }
            Err(e) => Err(format!("{e:?}")),
        }
    }

    #[test]
    fn spawns_through_clone3_and_through_glibc_clone() -> io::Result<()> {
        let mut spawner = Spawner::new()?;
        let exit7 = sh("exit 7").map_err(|_| io::Error::other("prepare"))?;
        let stdio = [0, 1, 2];
        for fallback in [false, true] {
            NO_CLONE3.store(fallback, Ordering::Relaxed);
            let got = spawn_and_wait(&mut spawner, &exit7, stdio);
            NO_CLONE3.store(false, Ordering::Relaxed);
            assert_eq!(
                got,
                Ok(archon_proto::Status::Exited(7)),
                "fallback: {fallback}"
            );
        }
        Ok(())
    }

    #[test]
    fn exec_failure_is_known_when_spawn_returns() -> io::Result<()> {
        let mut spawner = Spawner::new()?;
        for (argv, errno) in [
            ("/nonexistent/program", libc::ENOENT),
            ("/etc/passwd", libc::EACCES),
        ] {
            let exec = Exec::prepare(&Command::new([argv]), &[])
                .map_err(|_| io::Error::other("prepare"))?;
            match spawner.spawn(&exec, [0, 1, 2]) {
                Err(SpawnError::Exec(e)) => assert_eq!(e, errno, "{argv}"),
                Ok(_) => unreachable!("{argv} was executed"),
                Err(SpawnError::Clone(e)) => return Err(e),
            }
        }
        // A PATH search that finds nothing executable.
        let exec = Exec::prepare(&Command::new(["no-such-program-archon"]), &[])
            .map_err(|_| io::Error::other("prepare"))?;
        assert!(matches!(
            spawner.spawn(&exec, [0, 1, 2]),
            Err(SpawnError::Exec(libc::ENOENT))
        ));
        Ok(())
    }

    #[test]
    fn child_gets_stdio_session_and_default_signals() -> io::Result<()> {
        let mut spawner = Spawner::new()?;
        let mut fds = [0; 2];
        // SAFETY: fds is a valid [c_int; 2].
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 just returned these fds.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The shell prints its session id, its pid, and the lines of its status that list ignored
        // and blocked signals.
        let exec =
            sh("echo $(cut -d' ' -f6 /proc/$$/stat) $$; grep -E '^Sig(Ign|Blk)' /proc/$$/status")
                .map_err(|_| io::Error::other("prepare"))?;
        use std::os::fd::AsRawFd;
        let got = spawn_and_wait(&mut spawner, &exec, [0, w.as_raw_fd(), 2]);
        drop(w);
        assert_eq!(got, Ok(archon_proto::Status::Exited(0)));
        let out =
            std::fs::read_to_string(format!("/proc/self/fd/{}", r.as_raw_fd())).unwrap_or_default();
        let mut lines = out.lines();
        let ids: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        assert_eq!(ids.len(), 2, "{out}");
        assert_eq!(ids[0], ids[1], "the child leads its own session: {out}");
        for line in lines {
            assert!(
                line.ends_with("0000000000000000"),
                "no signal ignored or blocked: {line}"
            );
        }
        Ok(())
    }
}
