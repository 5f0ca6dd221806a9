//! Starting a child the way `posix_spawn` does: prepare everything in archon, then
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` on a stack of its own, and exec.
//!
//! The child shares archon's memory until it execs, and archon is suspended until then, so a
//! child costs no copy of archon's page tables and no copy-on-write faults afterwards (fork
//! semantics made a `Run` of /bin/true twice as slow as `posix_spawn`), and the exec's outcome is
//! known when the clone returns: the child writes which step failed and its errno into archon's
//! memory if it cannot exec, then exits 127. The price is posix_spawn's: archon waits while the
//! kernel loads the program, which a program on a hung network file system would stretch.
//!
//! All allocation happens before the clone ([`Exec::prepare`], [`SpawnOptions`]); between clone
//! and exec the child makes only plain system calls ([`child_side`]): it resets every signal to
//! its default, unblocks them, joins its cgroup (when clone3 could not place it there), starts
//! its own session and process group, puts its stdio and extra fds in place, marks every other
//! fd close-on-exec, sets its resource limits, nice value, umask, groups and user, changes
//! directory, asks for SIGKILL when archon dies ([`PARENT_DEATH_SIGNAL`]), writes its own pid
//! into `LISTEN_PID` when it is passed sockets ([`SpawnOptions::listen_pid`]), and tries each
//! candidate path the way `execvp` does. Signals are blocked in archon across the clone, so no
//! handler of archon's can run on the child's side.
//!
//! The parent-death signal is sent when the *thread* that made the child ends, not the process:
//! children must be spawned from the thread that lives as long as archon (the loop's, the main
//! thread). A test that spawns from its own thread must wait for its children before it returns.
//!
//! On x86_64 the clone is `clone3` through a small trampoline (clone3 is what can place a child
//! in a cgroup as it is created, `CLONE_INTO_CGROUP`); elsewhere, or where a seccomp filter
//! refuses clone3, it is glibc's `clone`, and the child writes itself into the cgroup's
//! `cgroup.procs` first thing.

use std::cell::{Cell, UnsafeCell};
use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use archon_proto::Command;

/// `PATH` for a child whose environment has none.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most fds a child can be given besides its stdio ([`SpawnOptions::extra_fds`]): a service's
/// sockets and its ready pipe. The child keeps their temporary copies in an array on its stack.
pub const MAX_EXTRA_FDS: usize = archon_lua::model::MAX_SOCKETS + 1;

/// The start of the `LISTEN_PID` entry the child completes with its pid.
const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// The `LISTEN_PID` entry's room, in bytes: the prefix, the 10 digits of the largest pid
/// (`i32::MAX`), and the NUL.
const LISTEN_PID_LEN: usize = LISTEN_PID_PREFIX.len() + 10 + 1;

/// The signal every child gets when archon dies (`PR_SET_PDEATHSIG`), so that nothing archon
/// started outlives it when it is killed: SIGKILL, since a child that could ignore or handle it
/// would stay behind with no supervisor. A stop at archon's own shutdown is gentler (SIGTERM,
/// then SIGKILL after the grace); this is for when there is no shutdown.
pub const PARENT_DEATH_SIGNAL: i32 = libc::SIGKILL;

/// Size of the stack the child runs on until it execs (it needs a few hundred bytes).
const CHILD_STACK_SIZE: usize = 64 * 1024;

/// The page below the child's stack, left inaccessible so an overflow faults.
const GUARD_SIZE: usize = 4096;

/// `CLONE_PIDFD`, from `linux/sched.h`.
const CLONE_PIDFD: u64 = 0x1000;

/// `CLONE_INTO_CGROUP`, from `linux/sched.h` (Linux 5.7). Defined by hand: libc's constant for
/// gnu targets has the wrong value.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

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

/// Set once clone3 has refused `CLONE_INTO_CGROUP` (Linux 5.3 to 5.6): from then on a child that
/// goes into a cgroup is started with glibc's clone and joins the cgroup itself.
static NO_CLONE_INTO_CGROUP: AtomicBool = AtomicBool::new(false);

/// A command made ready to exec: C strings and the pointer arrays over them.
pub struct Exec {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// Why a command cannot be prepared.
#[derive(Debug)]
pub struct PrepareError;

impl fmt::Display for PrepareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NUL byte in the command")
    }
}

impl Exec {
    /// Prepares `cmd` with the base environment `base` (its entries applied in order). A
    /// service's own environment, `NOTIFY_SOCKET` and `WATCHDOG_USEC` are entries of `cmd.env`.
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

    /// The program as the command names it (`argv[0]`), for messages.
    fn program(&self) -> String {
        self.argv
            .first()
            .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
            .unwrap_or_default()
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

/// The user and groups a child runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// Real, effective and saved user id.
    pub uid: u32,
    /// Real, effective and saved group id.
    pub gid: u32,
    /// Supplementary groups (empty: none).
    pub groups: Vec<u32>,
}

/// How a child is set up besides its command and stdio, all prepared before the clone. The
/// default changes nothing: the child inherits archon's directory, user, umask, limits and nice
/// value, and is placed in archon's cgroup.
#[derive(Debug, Default)]
pub struct SpawnOptions {
    /// Directory to change to (after the user changes, so it is reached with the user's rights).
    pub cwd: Option<CString>,
    /// User, group and supplementary groups (`setgroups`, `setresgid`, `setresuid`, in that order).
    pub creds: Option<Creds>,
    /// File mode creation mask.
    pub umask: Option<u32>,
    /// Resource limits: (`libc::RLIMIT_*`, soft, hard), `u64::MAX` for infinity. Set before the
    /// user changes, so a hard limit can be raised.
    pub rlimits: Vec<(i32, u64, u64)>,
    /// Nice value, -20..=19 (set before the user changes, so it can be negative).
    pub nice: Option<i32>,
    /// A directory fd of the cgroup to start the child in (`O_PATH` is enough), borrowed.
    pub cgroup: Option<RawFd>,
    /// A writable fd of that cgroup's `cgroup.procs`, borrowed: used when clone3 cannot place
    /// the child (old kernel, seccomp); when `None` there, archon opens it for that spawn.
    pub cgroup_procs: Option<RawFd>,
    /// (fd in archon, fd number in the child), borrowed: the child gets each source at its
    /// number, which must be 3 or more (e.g. a ready pipe's write end at 3). Sources may be any
    /// open fd, including another pair's target number; at most [`MAX_EXTRA_FDS`].
    pub extra_fds: Vec<(RawFd, RawFd)>,
    /// Put `LISTEN_PID=<the child's pid>` in its environment (replacing one the command has):
    /// the pid is known only once the child exists, so the child writes its digits itself, from
    /// `getpid`, into an entry archon prepared with room for them, between clone and exec.
    pub listen_pid: bool,
}

/// A child just started: its program is running.
pub struct Child {
    /// Its pid.
    pub pid: i32,
    /// Its pidfd, which archon owns from now on.
    pub pidfd: OwnedFd,
}

/// The step of a child's setup that failed, with what it names in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Entering the cgroup (its path, when archon can tell).
    Cgroup(String),
    /// Starting a session (`setsid`).
    Session,
    /// Putting an fd in place as stdin, stdout or stderr.
    Stdio(RawFd),
    /// Putting an extra fd in place, at this number.
    Fd(RawFd),
    /// Setting this resource limit (`libc::RLIMIT_*`).
    Rlimit(i32),
    /// Setting this nice value.
    Nice(i32),
    /// Setting the supplementary groups.
    Groups,
    /// Setting this group id.
    Gid(u32),
    /// Setting this user id.
    Uid(u32),
    /// Changing to this directory.
    Chdir(String),
    /// Asking for the parent-death signal.
    ParentDeath,
    /// Executing this program (`argv[0]`).
    Exec(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Cgroup(p) if p.is_empty() => f.write_str("cannot enter cgroup"),
            Step::Cgroup(p) => write!(f, "cannot enter cgroup {p}"),
            Step::Session => f.write_str("cannot start a session"),
            Step::Stdio(fd) => write!(f, "cannot set up fd {fd}"),
            Step::Fd(fd) => write!(f, "cannot pass fd {fd}"),
            Step::Rlimit(r) => match rlimit_name(*r) {
                Some(name) => write!(f, "cannot set limit {name}"),
                None => write!(f, "cannot set limit {r}"),
            },
            Step::Nice(n) => write!(f, "cannot set nice value {n}"),
            Step::Groups => f.write_str("cannot set supplementary groups"),
            Step::Gid(g) => write!(f, "cannot set group {g}"),
            Step::Uid(u) => write!(f, "cannot set user {u}"),
            Step::Chdir(d) => write!(f, "cannot change directory to {d}"),
            Step::ParentDeath => f.write_str("cannot set the parent-death signal"),
            Step::Exec(p) => write!(f, "cannot execute {p}"),
        }
    }
}

/// The names the configuration gives resource limits, by `libc::RLIMIT_*` number.
pub const RLIMIT_NAMES: [(&str, i32); 15] = [
    ("as", libc::RLIMIT_AS as i32),
    ("core", libc::RLIMIT_CORE as i32),
    ("cpu", libc::RLIMIT_CPU as i32),
    ("data", libc::RLIMIT_DATA as i32),
    ("fsize", libc::RLIMIT_FSIZE as i32),
    ("locks", libc::RLIMIT_LOCKS as i32),
    ("memlock", libc::RLIMIT_MEMLOCK as i32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as i32),
    ("nice", libc::RLIMIT_NICE as i32),
    ("nofile", libc::RLIMIT_NOFILE as i32),
    ("nproc", libc::RLIMIT_NPROC as i32),
    ("rss", libc::RLIMIT_RSS as i32),
    ("rtprio", libc::RLIMIT_RTPRIO as i32),
    ("sigpending", libc::RLIMIT_SIGPENDING as i32),
    ("stack", libc::RLIMIT_STACK as i32),
];

/// The configuration's name of a resource limit.
pub fn rlimit_name(resource: i32) -> Option<&'static str> {
    RLIMIT_NAMES
        .iter()
        .find(|(_, r)| *r == resource)
        .map(|(n, _)| *n)
}

/// Why no child runs the program.
#[derive(Debug)]
pub enum SpawnError {
    /// A step of the child's setup failed, with its errno (or the options asked for what cannot
    /// be done, found before any clone). A child that was made has exited 127 and is reaped as an
    /// orphan.
    Setup {
        /// Which step.
        step: Step,
        /// Its errno.
        errno: i32,
    },
    /// No child could be made.
    Clone(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Setup { step, errno } => {
                write!(f, "{step}: {}", nix::errno::Errno::from_raw(*errno).desc())
            }
            SpawnError::Clone(e) => write!(f, "cannot start a process: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

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

/// The path of an fd, as /proc tells it (for messages).
fn fd_path(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why clone_child made no child.
enum CloneFailure {
    /// The kernel refused the cgroup (clone3), or its `cgroup.procs` could not be opened.
    Cgroup(i32),
    Other(io::Error),
}

/// The stack children run on until they exec: mapped once, with a guard page below it. One
/// stack serves every child, since archon is suspended until the child is done with it.
pub struct Spawner {
    base: *mut libc::c_void,
    /// False: always glibc's clone (tests use it to exercise the fallback).
    clone3: bool,
    /// archon's pid, which a child checks its parent against once it has asked for the
    /// parent-death signal.
    parent: libc::pid_t,
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
        let spawner = Spawner {
            base,
            clone3: true,
            // SAFETY: getpid has no memory effects.
            parent: unsafe { libc::getpid() },
        };
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
        self.spawn_with(exec, stdio, &SpawnOptions::default())
    }

    /// Starts `exec` as [`Spawner::spawn`] does, set up as `opts` says. When this returns, the
    /// program runs, or a step of its setup failed and the error says which.
    pub fn spawn_with(
        &mut self,
        exec: &Exec,
        stdio: [RawFd; 3],
        opts: &SpawnOptions,
    ) -> Result<Child, SpawnError> {
        let fd_base = check_extra_fds(&opts.extra_fds)?;
        let argv: Vec<*const libc::c_char> = exec
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        // Written by the child (they share memory until it execs): an UnsafeCell, read by nobody
        // in archon.
        let mut entry = [0u8; LISTEN_PID_LEN];
        for (dst, src) in entry.iter_mut().zip(LISTEN_PID_PREFIX) {
            *dst = *src;
        }
        let listen_pid = UnsafeCell::new(entry);
        let envp: Vec<*const libc::c_char> = exec
            .envp
            .iter()
            .filter(|e| !(opts.listen_pid && e.as_bytes().starts_with(LISTEN_PID_PREFIX)))
            .map(|e| e.as_ptr())
            .chain(
                opts.listen_pid
                    .then(|| listen_pid.get().cast::<libc::c_char>().cast_const()),
            )
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let paths: Vec<*const libc::c_char> = exec.candidates.iter().map(|c| c.as_ptr()).collect();
        let mut report = Report::default();
        let plan = ChildPlan {
            paths: &paths,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            stdio,
            opts,
            fd_base,
            parent: self.parent,
            join_cgroup: Cell::new(-1),
            listen_pid: if opts.listen_pid {
                listen_pid.get().cast::<u8>()
            } else {
                std::ptr::null_mut()
            },
            report: &mut report,
        };

        let old_mask = block_all_signals();
        let result = self.clone_child(&plan);
        restore_signals(&old_mask);
        let (pid, pidfd) = result.map_err(|e| match e {
            CloneFailure::Cgroup(errno) => SpawnError::Setup {
                step: Step::Cgroup(opts.cgroup.map(fd_path).unwrap_or_default()),
                errno,
            },
            CloneFailure::Other(e) => SpawnError::Clone(e),
        })?;
        // SAFETY: CLONE_VFORK: the child has exec'd or exited, and no longer touches this memory.
        let report = unsafe { std::ptr::read_volatile(plan.report) };
        if report.errno != 0 {
            return Err(SpawnError::Setup {
                step: report.step(exec, opts),
                errno: report.errno,
            });
        }
        Ok(Child { pid, pidfd })
    }

    fn clone_child(&mut self, plan: &ChildPlan<'_>) -> Result<(i32, OwnedFd), CloneFailure> {
        let arg = (plan as *const ChildPlan<'_>)
            .cast_mut()
            .cast::<libc::c_void>();
        let cgroup = plan.opts.cgroup;
        #[cfg(target_arch = "x86_64")]
        if self.clone3
            && !NO_CLONE3.load(Ordering::Relaxed)
            && !(cgroup.is_some() && NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed))
        {
            let mut pidfd: RawFd = -1;
            let mut args = CloneArgs {
                flags: CLONE_PIDFD | CLONE_VM_VFORK,
                pidfd: &mut pidfd as *mut RawFd as u64,
                exit_signal: libc::SIGCHLD as u64,
                stack: self.stack_low() as u64,
                stack_size: CHILD_STACK_SIZE as u64,
                ..CloneArgs::default()
            };
            if let Some(fd) = cgroup {
                args.flags |= CLONE_INTO_CGROUP;
                args.cgroup = fd as u64;
            }
            // SAFETY: the child runs child_entry on its own stack, in archon's memory, while
            // archon is suspended (CLONE_VFORK); child_entry never returns.
            let ret = unsafe { clone3_trampoline(&args, child_entry, arg) };
            if ret > 0 {
                // SAFETY: CLONE_PIDFD stored a new close-on-exec pidfd that we now own.
                return Ok((ret as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }));
            }
            match (-ret) as i32 {
                libc::ENOSYS | libc::EPERM => NO_CLONE3.store(true, Ordering::Relaxed),
                // A kernel that has clone3 but not CLONE_INTO_CGROUP rejects the flag (EINVAL)
                // or the larger struct with a non-zero field it does not know (E2BIG).
                libc::EINVAL | libc::E2BIG if cgroup.is_some() => {
                    NO_CLONE_INTO_CGROUP.store(true, Ordering::Relaxed)
                }
                // The cgroup is no directory of cgroup2 (EBADF), removed (ENODEV), not a leaf
                // a process can live in (EBUSY, EOPNOTSUPP), or not writable (EACCES, ENOENT).
                errno @ (libc::EBADF
                | libc::ENODEV
                | libc::EBUSY
                | libc::EOPNOTSUPP
                | libc::EACCES
                | libc::ENOENT)
                    if cgroup.is_some() =>
                {
                    return Err(CloneFailure::Cgroup(errno));
                }
                errno => return Err(CloneFailure::Other(io::Error::from_raw_os_error(errno))),
            }
        }
        // glibc's clone cannot place the child: it writes itself into cgroup.procs.
        let _opened: Option<OwnedFd> = match (cgroup, plan.opts.cgroup_procs) {
            (None, _) => None,
            (Some(_), Some(procs)) => {
                plan.join_cgroup.set(procs);
                None
            }
            (Some(dir), None) => {
                let procs = open_procs(dir).map_err(CloneFailure::Cgroup)?;
                plan.join_cgroup
                    .set(std::os::fd::AsRawFd::as_raw_fd(&procs));
                Some(procs)
            }
        };
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
            return Err(CloneFailure::Other(io::Error::last_os_error()));
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

/// Opens `cgroup.procs` of the cgroup directory `dir` for writing; the errno on failure.
fn open_procs(dir: RawFd) -> Result<OwnedFd, i32> {
    // SAFETY: openat with a borrowed directory fd and a C string; returns a new fd or -1.
    let fd = unsafe {
        libc::openat(
            dir,
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: openat just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks the extra fds and returns the lowest fd number above every source and target: the
/// child first copies each source at or above it, so that no target it fills overwrites a
/// source still needed.
fn check_extra_fds(extra: &[(RawFd, RawFd)]) -> Result<RawFd, SpawnError> {
    if let Some(&(_, target)) = extra.get(MAX_EXTRA_FDS) {
        return Err(SpawnError::Setup {
            step: Step::Fd(target),
            errno: libc::EINVAL,
        });
    }
    if let Some(&(src, target)) = extra.iter().find(|&&(s, t)| t < 3 || s < 0) {
        return Err(SpawnError::Setup {
            step: Step::Fd(target),
            errno: if src < 0 { libc::EBADF } else { libc::EINVAL },
        });
    }
    let highest = extra.iter().map(|&(s, t)| s.max(t)).max().unwrap_or(2);
    Ok(highest.saturating_add(1))
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

/// The setup steps in the order the child takes them, as it reports them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
enum Stage {
    Cgroup = 1,
    Session,
    Stdio,
    Fd,
    Rlimit,
    Nice,
    Groups,
    Gid,
    Uid,
    Chdir,
    ParentDeath,
    Exec,
}

/// What the child reports when it cannot exec: the stage, which item of it (an index into the
/// stdio array, extra fds or rlimits), and the errno. Zero errno: it exec'd.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Report {
    stage: u32,
    index: u32,
    errno: i32,
}

impl Report {
    /// The step a report names, with what the message shows of it.
    fn step(&self, exec: &Exec, opts: &SpawnOptions) -> Step {
        let index = self.index as usize;
        let creds = opts.creds.as_ref();
        match self.stage {
            s if s == Stage::Cgroup as u32 => {
                Step::Cgroup(opts.cgroup.map(fd_path).unwrap_or_default())
            }
            s if s == Stage::Session as u32 => Step::Session,
            s if s == Stage::Stdio as u32 => Step::Stdio(index as RawFd),
            s if s == Stage::Fd as u32 => Step::Fd(opts.extra_fds.get(index).map_or(-1, |p| p.1)),
            s if s == Stage::Rlimit as u32 => {
                Step::Rlimit(opts.rlimits.get(index).map_or(-1, |r| r.0))
            }
            s if s == Stage::Nice as u32 => Step::Nice(opts.nice.unwrap_or_default()),
            s if s == Stage::Groups as u32 => Step::Groups,
            s if s == Stage::Gid as u32 => Step::Gid(creds.map_or(0, |c| c.gid)),
            s if s == Stage::Uid as u32 => Step::Uid(creds.map_or(0, |c| c.uid)),
            s if s == Stage::Chdir as u32 => Step::Chdir(
                opts.cwd
                    .as_ref()
                    .map(|d| String::from_utf8_lossy(d.as_bytes()).into_owned())
                    .unwrap_or_default(),
            ),
            s if s == Stage::ParentDeath as u32 => Step::ParentDeath,
            _ => Step::Exec(exec.program()),
        }
    }
}

/// What the child needs, all prepared before the clone.
struct ChildPlan<'a> {
    paths: &'a [*const libc::c_char],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: [RawFd; 3],
    opts: &'a SpawnOptions,
    /// Above every extra fd's source and target (see [`check_extra_fds`]).
    fd_base: RawFd,
    /// archon's pid.
    parent: libc::pid_t,
    /// An fd of `cgroup.procs` the child writes itself into, or -1: set only on the glibc clone
    /// path, since clone3 places the child as it creates it.
    join_cgroup: Cell<RawFd>,
    /// The `LISTEN_PID=` entry of `envp` the child completes with its pid ([`LISTEN_PID_LEN`]
    /// bytes), or null.
    listen_pid: *mut u8,
    /// Where the child reports a failed step, in archon's memory.
    report: *mut Report,
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the ChildPlan that spawn keeps alive until the child has exec'd or exited.
    child_side(unsafe { &*arg.cast::<ChildPlan<'_>>() })
}

/// The child, between clone and exec: plain system calls only, no allocation, no locks. It
/// shares archon's memory, and writes to none of it but `plan.report` (and errno itself, in the
/// thread archon is suspended in).
///
/// The user changes through the raw system calls: glibc's setuid family signals every thread of
/// the process to change them all ("setxid broadcast"), and this child shares archon's memory
/// (and so glibc's idea of its threads) but not archon's threads.
fn child_side(plan: &ChildPlan<'_>) -> ! {
    let opts = plan.opts;
    // SAFETY: each call below is async-signal-safe and touches only memory prepared before the
    // clone (or the child's own stack); the process ends in execve or _exit.
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

        // First, so that everything the child does is accounted to its cgroup. "0" is the
        // writing process.
        let procs = plan.join_cgroup.get();
        if procs >= 0 && libc::write(procs, b"0\n".as_ptr().cast(), 2) != 2 {
            fail(plan, Stage::Cgroup, 0);
        }

        if libc::setsid() < 0 {
            fail(plan, Stage::Session, 0);
        }
        // Sources are fds >= 3 or archon's own fd 2, and targets are filled 0, 1, 2 in order, so
        // no dup2 overwrites a source still needed.
        for (target, &src) in plan.stdio.iter().enumerate() {
            let ok = if src == target as RawFd {
                libc::fcntl(src, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(src, target as RawFd) == target as RawFd
            };
            if !ok {
                fail(plan, Stage::Stdio, target);
            }
        }
        // Extra fds: a copy of each source above every source and target first (close-on-exec),
        // so that filling one target cannot overwrite a source still needed; then each copy to
        // its number, which dup2 leaves open across exec.
        let mut copies = [-1 as RawFd; MAX_EXTRA_FDS];
        for (i, &(src, _)) in opts.extra_fds.iter().enumerate().take(MAX_EXTRA_FDS) {
            copies[i] = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, plan.fd_base);
            if copies[i] < 0 {
                fail(plan, Stage::Fd, i);
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
        for (i, &(_, target)) in opts.extra_fds.iter().enumerate().take(MAX_EXTRA_FDS) {
            if libc::dup2(copies[i], target) != target {
                fail(plan, Stage::Fd, i);
            }
        }

        // Limits and priority while still privileged: raising a hard limit or lowering the nice
        // value needs capabilities the user may lack.
        for (i, &(resource, soft, hard)) in opts.rlimits.iter().enumerate() {
            let lim = libc::rlimit64 {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::syscall(
                libc::SYS_prlimit64,
                0 as libc::c_long,
                resource as libc::c_long,
                &lim as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>(),
            ) != 0
            {
                fail(plan, Stage::Rlimit, i);
            }
        }
        if let Some(nice) = opts.nice {
            if libc::syscall(
                libc::SYS_setpriority,
                libc::PRIO_PROCESS as libc::c_long,
                0 as libc::c_long,
                nice as libc::c_long,
            ) != 0
            {
                fail(plan, Stage::Nice, 0);
            }
        }
        if let Some(mask) = opts.umask {
            libc::umask(mask as libc::mode_t);
        }
        if let Some(c) = &opts.creds {
            if libc::syscall(
                libc::SYS_setgroups,
                c.groups.len() as libc::c_long,
                c.groups.as_ptr(),
            ) != 0
            {
                fail(plan, Stage::Groups, 0);
            }
            if libc::syscall(libc::SYS_setresgid, id(c.gid), id(c.gid), id(c.gid)) != 0 {
                fail(plan, Stage::Gid, 0);
            }
            if libc::syscall(libc::SYS_setresuid, id(c.uid), id(c.uid), id(c.uid)) != 0 {
                fail(plan, Stage::Uid, 0);
            }
        }
        if let Some(dir) = &opts.cwd {
            if libc::chdir(dir.as_ptr()) != 0 {
                fail(plan, Stage::Chdir, 0);
            }
        }

        // Die with archon. After the user change, which clears the setting (so does the exec of
        // a set-user-ID program or one with file capabilities: such a child does not die with
        // archon). archon may have been killed since the clone (a vfork parent can be), and
        // then no signal will ever come: the parent is no longer archon, and the child goes.
        if libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as libc::c_long,
            PARENT_DEATH_SIGNAL as libc::c_long,
        ) != 0
        {
            fail(plan, Stage::ParentDeath, 0);
        }
        if libc::syscall(libc::SYS_getppid) != libc::c_long::from(plan.parent) {
            libc::_exit(127);
        }

        if !plan.listen_pid.is_null() {
            let pid = libc::syscall(libc::SYS_getpid) as u32;
            let digits = std::slice::from_raw_parts_mut(
                plan.listen_pid.add(LISTEN_PID_PREFIX.len()),
                LISTEN_PID_LEN - LISTEN_PID_PREFIX.len(),
            );
            write_decimal(pid, digits);
        }

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
        fail(plan, Stage::Exec, 0)
    }
}

/// Writes `n` in decimal into `out`, then a NUL, without allocating or panicking (for the child
/// side): nothing is written when `out` has no room for it all.
fn write_decimal(mut n: u32, out: &mut [u8]) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        if let Some(d) = digits.get_mut(len) {
            *d = b'0' + (n % 10) as u8;
        }
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    if len >= out.len() {
        return;
    }
    for (dst, src) in out.iter_mut().zip(digits[..len].iter().rev()) {
        *dst = *src;
    }
    if let Some(end) = out.get_mut(len) {
        *end = 0;
    }
}

/// A user or group id as a system call argument: zero-extended, as the kernel reads it.
fn id(v: u32) -> libc::c_long {
    libc::c_long::from(v)
}

/// Reports the failed stage and errno to archon and exits 127 (the shell's "command not found").
unsafe fn fail(plan: &ChildPlan<'_>, stage: Stage, index: usize) -> ! {
    // SAFETY: archon is suspended until this child exits, so the write does not race; errno's
    // location and _exit are async-signal-safe.
    unsafe {
        let err = *libc::__errno_location();
        let report = Report {
            stage: stage as u32,
            index: index as u32,
            errno: if err == 0 { libc::EIO } else { err },
        };
        std::ptr::write_volatile(plan.report, report);
        libc::_exit(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{EnvEntry, Status};
    use std::os::fd::AsRawFd;

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

    #[test]
    fn messages_name_the_step() {
        let msg = |step, errno| SpawnError::Setup { step, errno }.to_string();
        assert_eq!(
            msg(Step::Chdir("/x".into()), libc::ENOENT),
            "cannot change directory to /x: No such file or directory"
        );
        assert_eq!(
            msg(Step::Uid(1000), libc::EPERM),
            "cannot set user 1000: Operation not permitted"
        );
        assert_eq!(
            msg(Step::Gid(50), libc::EPERM),
            "cannot set group 50: Operation not permitted"
        );
        assert_eq!(
            msg(Step::Cgroup(String::new()), libc::ENODEV),
            "cannot enter cgroup: No such device"
        );
        assert_eq!(
            msg(Step::Cgroup("/sys/fs/cgroup/a.svc".into()), libc::EACCES),
            "cannot enter cgroup /sys/fs/cgroup/a.svc: Permission denied"
        );
        assert_eq!(
            msg(Step::Rlimit(libc::RLIMIT_NOFILE as i32), libc::EINVAL),
            "cannot set limit nofile: Invalid argument"
        );
        assert_eq!(
            msg(Step::Fd(3), libc::EBADF),
            "cannot pass fd 3: Bad file number"
        );
        // The exec case reads as it always has (tests/ check it through the protocol).
        assert_eq!(
            msg(Step::Exec("prog".into()), libc::ENOENT),
            "cannot execute prog: No such file or directory"
        );
        assert_eq!(
            SpawnError::Clone(io::Error::from_raw_os_error(libc::EAGAIN)).to_string(),
            "cannot start a process: Resource temporarily unavailable (os error 11)"
        );
    }

    #[test]
    fn every_rlimit_has_one_name() {
        for (name, r) in RLIMIT_NAMES {
            assert_eq!(rlimit_name(r), Some(name));
        }
        assert_eq!(rlimit_name(-1), None);
    }

    /// Waits for the child of a pidfd and decodes its status.
    fn wait(pidfd: &OwnedFd) -> Status {
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
            libc::CLD_EXITED => Status::Exited(status as u8),
            _ => Status::Signaled(status),
        }
    }

    fn sh(script: &str) -> io::Result<Exec> {
        Exec::prepare(
            &Command::new(["/bin/sh", "-c", script]),
            &[(b"PATH".to_vec(), DEFAULT_PATH.to_vec())],
        )
        .map_err(|e| io::Error::other(e.to_string()))
    }

    /// A close-on-exec pipe: (read end, write end).
    fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid [c_int; 2].
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these fds.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// Everything written to a pipe until its last write end closes.
    fn read_all(r: &OwnedFd) -> String {
        std::fs::read_to_string(format!("/proc/self/fd/{}", r.as_raw_fd())).unwrap_or_default()
    }

    /// Runs a shell script with `opts`, its stdout on a pipe: its exit status and output.
    fn run(
        spawner: &mut Spawner,
        script: &str,
        opts: &SpawnOptions,
    ) -> Result<(Status, String), SpawnError> {
        let exec = sh(script).map_err(SpawnError::Clone)?;
        let (r, w) = pipe().map_err(SpawnError::Clone)?;
        let child = spawner.spawn_with(&exec, [0, w.as_raw_fd(), 2], opts)?;
        drop(w);
        assert!(child.pid > 0);
        let out = read_all(&r);
        Ok((wait(&child.pidfd), out))
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no memory effects.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn spawns_through_clone3_and_through_glibc_clone() -> Result<(), SpawnError> {
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        for clone3 in [true, false] {
            spawner.clone3 = clone3;
            let got = run(&mut spawner, "exit 7", &SpawnOptions::default())?;
            assert_eq!(got.0, Status::Exited(7), "clone3: {clone3}");
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
                Err(SpawnError::Setup { step, errno: e }) => {
                    assert_eq!((step, e), (Step::Exec(argv.into()), errno));
                }
                Ok(_) => unreachable!("{argv} was executed"),
                Err(SpawnError::Clone(e)) => return Err(e),
            }
        }
        // A PATH search that finds nothing executable.
        let exec = Exec::prepare(&Command::new(["no-such-program-archon"]), &[])
            .map_err(|_| io::Error::other("prepare"))?;
        let err = spawner.spawn(&exec, [0, 1, 2]).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("cannot execute no-such-program-archon: No such file or directory")
        );
        Ok(())
    }

    #[test]
    fn child_gets_stdio_session_and_default_signals() -> Result<(), SpawnError> {
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        // The shell prints its session id and its pid, then becomes grep, which prints the lines
        // of its status that list ignored and blocked signals, as it inherited them. (The shell
        // must not read its own status: dash blocks every signal for a moment while it waits
        // for a child.)
        let (status, out) = run(
            &mut spawner,
            "echo $(cut -d' ' -f6 /proc/$$/stat) $$; exec grep -E '^Sig(Ign|Blk)' /proc/self/status",
            &SpawnOptions::default(),
        )?;
        assert_eq!(status, Status::Exited(0));
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

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() -> Result<(), SpawnError> {
        // As another user too: a change of user clears the parent-death signal, so it must be
        // asked for after it.
        let mut cases = vec![None];
        if is_root() {
            cases.push(Some(Creds {
                uid: 1234,
                gid: 2345,
                groups: vec![],
            }));
        }
        for creds in cases {
            let as_user = creds.as_ref().map(|c| c.uid);
            // The thread starts a long sleep and ends: the child, reparented to another thread
            // of this process, gets the signal, and is reaped here.
            let pidfd = std::thread::spawn(move || -> Result<OwnedFd, SpawnError> {
                let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
                let exec = sh("exec sleep 30").map_err(SpawnError::Clone)?;
                let opts = SpawnOptions {
                    creds,
                    ..SpawnOptions::default()
                };
                Ok(spawner.spawn_with(&exec, [0, 1, 2], &opts)?.pidfd)
            })
            .join()
            .map_err(|_| SpawnError::Clone(io::Error::other("the spawning thread panicked")))??;
            assert_eq!(
                wait(&pidfd),
                Status::Signaled(PARENT_DEATH_SIGNAL),
                "as user {as_user:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_child_runs_as_the_options_say() -> Result<(), SpawnError> {
        if !is_root() {
            eprintln!("skipped: changing user needs root");
            return Ok(());
        }
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        let opts = SpawnOptions {
            cwd: Some(c"/usr".into()),
            creds: Some(Creds {
                uid: 1234,
                gid: 2345,
                groups: vec![5, 20, 3456],
            }),
            umask: Some(0o027),
            rlimits: vec![(libc::RLIMIT_NOFILE as i32, 123, 456)],
            nice: Some(5),
            ..SpawnOptions::default()
        };
        let script = "pwd; id -u; id -g; id -G; umask; ulimit -n; ulimit -Hn; nice; \
                      grep -E '^(Uid|Gid):' /proc/$$/status";
        for clone3 in [true, false] {
            spawner.clone3 = clone3;
            let (status, out) = run(&mut spawner, script, &opts)?;
            assert_eq!(status, Status::Exited(0), "{out}");
            assert_eq!(
                out,
                "/usr\n1234\n2345\n2345 5 20 3456\n0027\n123\n456\n5\n\
                 Uid:\t1234\t1234\t1234\t1234\nGid:\t2345\t2345\t2345\t2345\n",
                "clone3: {clone3}"
            );
        }
        // No options: archon's own directory and user, and the groups left alone.
        let (_, out) = run(&mut spawner, "pwd; id -u", &SpawnOptions::default())?;
        let cwd = std::env::current_dir().map_err(SpawnError::Clone)?;
        assert_eq!(out, format!("{}\n0\n", cwd.display()));
        Ok(())
    }

    #[test]
    fn decimals_are_written_with_their_nul() {
        let mut buf = [b'x'; 11];
        for (n, want) in [
            (0u32, "0"),
            (7, "7"),
            (42, "42"),
            (4_194_304, "4194304"),
            (u32::MAX, "4294967295"),
        ] {
            write_decimal(n, &mut buf);
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            assert_eq!(&buf[..end], want.as_bytes());
        }
        let mut small = [b'x'; 3];
        write_decimal(123, &mut small);
        assert_eq!(&small, b"xxx", "no room for the NUL: nothing written");
    }

    #[test]
    fn listen_pid_is_the_childs_own_pid() -> Result<(), SpawnError> {
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        let opts = SpawnOptions {
            listen_pid: true,
            ..SpawnOptions::default()
        };
        let cmd = Command {
            argv: vec![
                b"/bin/sh".to_vec(),
                b"-c".to_vec(),
                b"echo $LISTEN_PID $$".to_vec(),
            ],
            env: vec![archon_proto::EnvEntry::set("LISTEN_PID", "1")],
        };
        let exec =
            Exec::prepare(&cmd, &[]).map_err(|_| SpawnError::Clone(io::Error::other("prepare")))?;
        for clone3 in [true, false] {
            spawner.clone3 = clone3;
            let (r, w) = pipe().map_err(SpawnError::Clone)?;
            let child = spawner.spawn_with(&exec, [0, w.as_raw_fd(), 2], &opts)?;
            drop(w);
            let out = read_all(&r);
            assert_eq!(wait(&child.pidfd), Status::Exited(0));
            assert_eq!(out, format!("{0} {0}\n", child.pid), "clone3: {clone3}");
        }
        Ok(())
    }

    #[test]
    fn extra_fds_land_at_their_numbers_even_when_they_swap() -> Result<(), SpawnError> {
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        let (r1, w1) = pipe().map_err(SpawnError::Clone)?;
        let (r2, w2) = pipe().map_err(SpawnError::Clone)?;
        let (a, b) = (w1.as_raw_fd(), w2.as_raw_fd());
        // Each source is the other's target, and a third goes to a number that is free.
        let opts = SpawnOptions {
            extra_fds: vec![(a, b), (b, a), (a, 3)],
            ..SpawnOptions::default()
        };
        let script = format!(
            "echo one > /proc/self/fd/{b}; echo two > /proc/self/fd/{a}; echo three >&3; \
             test -e /proc/self/fd/{r} && echo leaked",
            r = r1.as_raw_fd().max(r2.as_raw_fd())
        );
        for clone3 in [true, false] {
            spawner.clone3 = clone3;
            let (status, out) = run(&mut spawner, &script, &opts)?;
            assert_eq!(status, Status::Exited(1), "the test finds no leak: {out}");
            assert_eq!(out, "");
        }
        drop((w1, w2));
        assert_eq!(read_all(&r1), "one\nthree\none\nthree\n");
        assert_eq!(read_all(&r2), "two\ntwo\n");
        Ok(())
    }

    #[test]
    fn bad_extra_fds_are_refused_before_any_clone() -> io::Result<()> {
        let mut spawner = Spawner::new()?;
        let exec = sh("exit 0")?;
        let try_fds = |spawner: &mut Spawner, extra_fds| {
            let opts = SpawnOptions {
                extra_fds,
                ..SpawnOptions::default()
            };
            spawner.spawn_with(&exec, [0, 1, 2], &opts).err()
        };
        let err = try_fds(&mut spawner, vec![(2, 1)]);
        assert!(matches!(
            err,
            Some(SpawnError::Setup {
                step: Step::Fd(1),
                errno: libc::EINVAL
            })
        ));
        let err = try_fds(&mut spawner, vec![(5, 3); MAX_EXTRA_FDS + 1]);
        assert!(matches!(
            err,
            Some(SpawnError::Setup {
                step: Step::Fd(3),
                errno: libc::EINVAL
            })
        ));
        // An fd that is not open fails in the child, at its step.
        let err = try_fds(&mut spawner, vec![(i32::MAX - 1, 9)]);
        assert!(matches!(
            err,
            Some(SpawnError::Setup {
                step: Step::Fd(9),
                errno: libc::EBADF
            })
        ));
        Ok(())
    }

    /// Runs `f` with capability `cap` out of this thread's effective set (capabilities belong to
    /// a thread, and a child inherits the cloning thread's), then puts it back.
    fn without_capability<T>(cap: u32, f: impl FnOnce() -> T) -> io::Result<T> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let mut saved = [Data::default(); 2];
        // SAFETY: capget/capset with a v3 header and two data structs, as the kernel expects.
        unsafe {
            if libc::syscall(libc::SYS_capget, &header, saved.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut lowered = saved;
            lowered[(cap / 32) as usize].effective &= !(1 << (cap % 32));
            if libc::syscall(libc::SYS_capset, &header, lowered.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let out = f();
            if libc::syscall(libc::SYS_capset, &header, saved.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(out)
        }
    }

    #[test]
    fn a_failed_step_is_named() -> io::Result<()> {
        let mut spawner = Spawner::new()?;
        let exec = sh("exit 0")?;
        let mut fails = |opts: &SpawnOptions| match spawner.spawn_with(&exec, [0, 1, 2], opts) {
            Err(SpawnError::Setup { step, errno }) => Some((step, errno)),
            Err(SpawnError::Clone(_)) | Ok(_) => None,
        };
        let opts = SpawnOptions {
            cwd: Some(c"/nonexistent/dir".into()),
            ..SpawnOptions::default()
        };
        assert_eq!(
            fails(&opts),
            Some((Step::Chdir("/nonexistent/dir".into()), libc::ENOENT))
        );
        let opts = SpawnOptions {
            rlimits: vec![
                (libc::RLIMIT_CORE as i32, 0, 0),
                (libc::RLIMIT_NOFILE as i32, 10, 5),
            ],
            ..SpawnOptions::default()
        };
        assert_eq!(
            fails(&opts),
            Some((Step::Rlimit(libc::RLIMIT_NOFILE as i32), libc::EINVAL))
        );
        if !is_root() {
            eprintln!("skipped: the user and group steps need root");
            return Ok(());
        }
        // More supplementary groups than the kernel takes (NGROUPS_MAX = 65536).
        let opts = SpawnOptions {
            creds: Some(Creds {
                uid: 1000,
                gid: 1000,
                groups: vec![1000; 65537],
            }),
            ..SpawnOptions::default()
        };
        assert_eq!(fails(&opts), Some((Step::Groups, libc::EINVAL)));
        // Without CAP_SETUID the groups and the group change, the user does not.
        let opts = SpawnOptions {
            creds: Some(Creds {
                uid: 1000,
                gid: 1000,
                groups: vec![],
            }),
            ..SpawnOptions::default()
        };
        let got = without_capability(7, || fails(&opts))?; // CAP_SETUID
        assert_eq!(got, Some((Step::Uid(1000), libc::EPERM)));
        let got = without_capability(6, || fails(&opts))?; // CAP_SETGID
        assert_eq!(got, Some((Step::Groups, libc::EPERM)));
        // And archon's own thread is unchanged.
        assert_eq!(fails(&opts), None);
        Ok(())
    }

    #[test]
    fn clone_into_cgroup_places_the_child_on_both_paths() -> Result<(), String> {
        let Some(t) = crate::cgroup::testing::tree()? else {
            return Ok(());
        };
        let cg = t.0.create("placed").map_err(|e| e.to_string())?;
        let dir = cg.open_dir().map_err(|e| e.to_string())?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cg.path().join("cgroup.procs"))
            .map_err(|e| e.to_string())?;
        // The child's cgroup as /proc shows it: archon's own, then the test tree, then placed.svc.
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let own = crate::cgroup::parse_own_cgroup(&own).ok_or("no 0:: line")?;
        let leaf = t.0.path().file_name().ok_or("no name")?.to_string_lossy();
        let want = format!("0::{}/{leaf}/placed.svc\n", own.trim_end_matches('/'));
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        for (clone3, procs) in [
            (true, None),
            (false, None),
            (false, Some(procs.as_raw_fd())),
        ] {
            spawner.clone3 = clone3;
            let opts = SpawnOptions {
                cgroup: Some(dir.as_raw_fd()),
                cgroup_procs: procs,
                ..SpawnOptions::default()
            };
            let (status, out) = run(&mut spawner, "exec grep '^0::' /proc/self/cgroup", &opts)
                .map_err(|e| e.to_string())?;
            assert_eq!(status, Status::Exited(0));
            assert_eq!(out, want, "clone3: {clone3}, procs fd: {procs:?}");
            if clone3
                && (NO_CLONE3.load(Ordering::Relaxed)
                    || NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed))
            {
                eprintln!("clone3 cannot place a child here: only glibc's clone path was tested");
            }
        }
        // Without the option the child stays in archon's cgroup.
        let (_, out) = run(
            &mut spawner,
            "exec grep '^0::' /proc/self/cgroup",
            &SpawnOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(out, format!("0::{own}\n"));
        Ok(())
    }

    #[test]
    fn a_removed_cgroup_fails_at_the_cgroup_step() -> Result<(), String> {
        let Some(t) = crate::cgroup::testing::tree()? else {
            return Ok(());
        };
        let cg = t.0.create("gone").map_err(|e| e.to_string())?;
        let dir = cg.open_dir().map_err(|e| e.to_string())?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cg.path().join("cgroup.procs"))
            .map_err(|e| e.to_string())?;
        cg.remove().map_err(|e| e.to_string())?;
        let exec = sh("exit 0").map_err(|e| e.to_string())?;
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        for (clone3, procs) in [
            (true, None),
            (false, None),
            (false, Some(procs.as_raw_fd())),
        ] {
            spawner.clone3 = clone3;
            let opts = SpawnOptions {
                cgroup: Some(dir.as_raw_fd()),
                cgroup_procs: procs,
                ..SpawnOptions::default()
            };
            match spawner.spawn_with(&exec, [0, 1, 2], &opts) {
                Err(
                    e @ SpawnError::Setup {
                        step: Step::Cgroup(_),
                        ..
                    },
                ) => {
                    let msg = e.to_string();
                    eprintln!("clone3: {clone3}, procs fd: {procs:?}: {msg}");
                    assert!(
                        msg.starts_with(&format!("cannot enter cgroup {}", cg.path().display())),
                        "{msg}"
                    );
                }
                Err(e) => unreachable!("clone3: {clone3}: {e}"),
                Ok(_) => unreachable!("clone3: {clone3}: started in a removed cgroup"),
            }
        }
        Ok(())
    }
}
