//! Starting a child the way `posix_spawn` does: prepare everything in archon, then
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` on a stack of its own, and exec; or, for
//! configured services, the same clone without `CLONE_VFORK`, so that archon goes on with the next
//! while the kernel loads this one's program ("pipelined").
//!
//! The child shares archon's memory until it execs, so a child costs no copy of archon's page
//! tables and no copy-on-write faults afterwards (fork semantics made a `Run` of /bin/true twice
//! as slow as `posix_spawn`).
//!
//! - **vfork** ([`Spawner::spawn_with`]): archon is suspended until the child has exec'd, so the
//!   exec's outcome is known when the clone returns: the child writes which step failed and its
//!   errno into archon's memory if it cannot exec, then exits 127. The price is posix_spawn's:
//!   archon waits while the kernel loads the program, one child after the other. `Run` and
//!   `StartDaemon` use it, since their replies say whether the program runs.
//! - **pipelined** ([`Spawner::spawn_pipelined`]): the child runs on a stack from a small pool
//!   ([`MAX_PIPELINED`] at most) while archon carries on, and reports over a close-on-exec pipe,
//!   the classic way: a failure record (step, errno) then `_exit(127)`; on success the kernel
//!   closes the write end at the exec and archon reads EOF with no data. Everything the child
//!   reads stays in a [`PendingExec`] (a heap block archon does not touch, and the stack) until
//!   that EOF. With every stack in use, or off x86_64, it is a vfork spawn.
//!
//! All allocation happens before the clone ([`Exec::prepare`], [`SpawnOptions`]); between clone
//! and exec the child makes only plain system calls ([`child_side`]): it resets every signal to
//! its default, unblocks them, joins its cgroup (when clone3 could not place it there), starts
//! its own session and process group, puts its stdio and extra fds in place, marks every other
//! fd close-on-exec, sets its resource limits, nice value, umask, groups and user, changes
//! directory, asks for SIGKILL when archon dies ([`PARENT_DEATH_SIGNAL`]), writes its own pid
//! into `LISTEN_PID` when it is passed sockets ([`Exec::prepare_listening`]), and tries each
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
//!
//! # Why a pipelined child may run beside archon in archon's memory
//!
//! A `CLONE_VM` child without `CLONE_VFORK` is, to the memory, a second thread of archon's that
//! archon does not know about. It is sound because of what the child touches and what it shares:
//!
//! - **Memory it writes**: its own stack, which is the pool's and which archon leaves alone until
//!   the pipe's EOF. Nothing else: it reports over the pipe, not into archon's memory, and it
//!   makes every system call with the `syscall` instruction ([`raw_syscall`]), never through
//!   glibc. The child runs with archon's thread pointer (no `CLONE_SETTLS`), so glibc's wrappers
//!   would set *archon's* errno, concurrently with archon (an exec that fails along `PATH` sets
//!   ENOENT a few times), and might touch other thread-local state. Off x86_64
//!   [`raw_syscall`] is glibc's `syscall()`, which is why only x86_64 pipelines.
//! - **Memory it reads**: the [`PendingExec`]'s heap block (the [`Exec`]'s C strings and pointer
//!   arrays, the [`SpawnOptions`] with its directory, groups, limits and extra fds, and the plan
//!   over them), written before the clone and not written again, and freed, like the stack
//!   reused, only once the pipe is at EOF. EOF means the child no longer uses archon's memory:
//!   the kernel closes close-on-exec fds after it has switched the child to the new program's
//!   memory (`begin_new_exec`: `exec_mmap`, then `do_close_on_exec`), and a child that exits
//!   drops archon's memory before its fds (`do_exit`: `exit_mm`, then `exit_files`). The write
//!   end is the child's alone: archon closes its copy right after the clone, before it clones
//!   anything else, and a child that could not exec may be killed but never forks.
//! - **What it does not share**: its fd table (no `CLONE_FILES`: a copy, so archon may close its
//!   copies of the fds it passes), its signal handlers (no `CLONE_SIGHAND`: a copy of archon's,
//!   which it resets to the defaults before it unblocks signals; its mask is inherited with
//!   everything blocked, so no handler of archon's ever runs on its stack), its directory, umask
//!   and credentials (no `CLONE_FS`, no `CLONE_THREAD`). The kernel gives it no rseq area, robust
//!   futex list, alternate signal stack or tid to clear of archon's (`rseq_fork` and
//!   `copy_process` for `CLONE_VM` without `CLONE_VFORK`; no `CLONE_CHILD_CLEARTID`), so the
//!   kernel writes none of archon's memory on its behalf either.
//! - **Ordering**: archon writes the record before `clone3`, and the child starts after it; the
//!   outcome is read from the pipe, not from memory.
//!
//! A [`PendingExec`] dropped before its EOF (which the loop avoids: a unit whose exec is pending
//! is neither forgotten nor freed) leaks its record and stack rather than free what the child may
//! still read.

use std::cell::Cell;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use archon_proto::Command;

/// `PATH` for a child whose environment has none.
pub const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most fds a child can be given besides its stdio ([`SpawnOptions::extra_fds`]): a service's
/// sockets and its ready pipe. The child keeps their temporary copies in an array on its stack.
pub const MAX_EXTRA_FDS: usize = archon_lua::model::MAX_SOCKETS + 1;

/// The start of the `LISTEN_PID` entry the child completes with its pid.
const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// The room for the digits of `LISTEN_PID` in the entry archon prepares: the 10 digits of the
/// largest pid (`i32::MAX`); the child writes its digits and a NUL over it and the entry's NUL.
const LISTEN_PID_ROOM: &[u8] = b"0000000000";

/// The `LISTEN_PID` entry's room, in bytes: the prefix, the digits, and the NUL.
const LISTEN_PID_LEN: usize = LISTEN_PID_PREFIX.len() + LISTEN_PID_ROOM.len() + 1;

/// The signal every child gets when archon dies (`PR_SET_PDEATHSIG`), so that nothing archon
/// started outlives it when it is killed: SIGKILL, since a child that could ignore or handle it
/// would stay behind with no supervisor. A stop at archon's own shutdown is gentler (SIGTERM,
/// then SIGKILL after the grace); this is for when there is no shutdown.
pub const PARENT_DEATH_SIGNAL: i32 = libc::SIGKILL;

/// Size of the stack the child runs on until it execs (it needs a few hundred bytes).
const CHILD_STACK_SIZE: usize = 64 * 1024;

/// The page below the child's stack, left inaccessible so an overflow faults.
const GUARD_SIZE: usize = 4096;

/// Most pipelined children between clone and exec at once, each on a stack of its own (64 KiB
/// of address space each, of which a child touches a page or two). A spawn that finds every
/// stack in use is a vfork spawn.
pub const MAX_PIPELINED: usize = 64;

/// Whether this build can pipeline: [`raw_syscall`] is the `syscall` instruction only on x86_64.
const CAN_PIPELINE: bool = cfg!(target_arch = "x86_64");

/// `CLONE_PIDFD`, from `linux/sched.h`.
const CLONE_PIDFD: u64 = 0x1000;

/// `CLONE_INTO_CGROUP`, from `linux/sched.h` (Linux 5.7). Defined by hand: libc's constant for
/// gnu targets has the wrong value.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The flags of a vfork clone: share memory and wait for the exec.
const CLONE_VM_VFORK: u64 = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;

/// The flags of a pipelined clone: share memory, and go on.
const CLONE_VM: u64 = libc::CLONE_VM as u64;

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

/// A command made ready to exec: C strings and the pointer arrays over them. The arrays point
/// into the strings' own heap buffers, which stay put when an `Exec` moves (as in std's
/// A command made ready to exec: every string the child reads, and the pointer arrays over them.
///
/// The strings (the candidate paths, argv, envp) are NUL-terminated one after the other in one
/// allocation, and the pointers in another: with thousands of services starting at once, each
/// command in flight is two blocks, not a hundred small strings whose holes scatter the heap
/// once they are freed.
pub struct Exec {
    /// A raw allocation (a boxed slice, freed on drop), so that the pointers into it may write:
    /// read through `ptrs`, and written by a child only at `listen_pid`.
    strings: NonNull<[u8]>,
    /// Into `strings`: the candidate paths (`n_candidates` of them, no terminator), then argv
    /// and envp, each null-terminated; envp starts at `envp_at`.
    ptrs: Box<[*const libc::c_char]>,
    n_candidates: usize,
    envp_at: usize,
    /// Where in `strings` the digits of the `LISTEN_PID` entry go, which the child writes
    /// between clone and exec ([`Exec::prepare_listening`]).
    listen_pid: Option<usize>,
}

impl Drop for Exec {
    fn drop(&mut self) {
        // SAFETY: made by Box::into_raw in `build`, and dropped once: no child reads it any
        // more (a vfork child has exec'd; a pipelined one's Exec is dropped at its pipe's EOF).
        drop(unsafe { Box::from_raw(self.strings.as_ptr()) });
    }
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
        Exec::build(cmd, base, false)
    }

    /// As [`Exec::prepare`], with a `LISTEN_PID` entry (in place of any the command has) whose
    /// digits the child writes itself, from `getpid`, between clone and exec: the one moment
    /// its pid is known and its environment still archon's to write.
    pub fn prepare_listening(
        cmd: &Command,
        base: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Exec, PrepareError> {
        Exec::build(cmd, base, true)
    }

    fn build(
        cmd: &Command,
        base: &[(Vec<u8>, Vec<u8>)],
        listen_pid: bool,
    ) -> Result<Exec, PrepareError> {
        let mut env: Vec<(&[u8], &[u8])> = base
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        for entry in &cmd.env {
            env.retain(|(n, _)| *n != entry.name.as_slice());
            if let Some(v) = &entry.value {
                env.push((entry.name.as_slice(), v.as_slice()));
            }
        }
        let listen_name = &LISTEN_PID_PREFIX[..LISTEN_PID_PREFIX.len() - 1];
        if listen_pid {
            env.retain(|(n, _)| *n != listen_name);
            env.push((listen_name, LISTEN_PID_ROOM));
        }
        let program = cmd.argv.first().ok_or(PrepareError)?;
        let candidates = if program.contains(&b'/') {
            vec![program.clone()]
        } else {
            let path = env
                .iter()
                .find(|(n, _)| *n == b"PATH")
                .map_or(DEFAULT_PATH, |(_, v)| v);
            search_candidates(path, program)
        };
        // Each string as its parts (an env entry is name, "=", value), all NUL-free.
        let parts: Vec<[&[u8]; 3]> = candidates
            .iter()
            .map(|c| [c.as_slice(), b"", b""])
            .chain(cmd.argv.iter().map(|a| [a.as_slice(), b"", b""]))
            .chain(env.iter().map(|&(n, v)| [n, b"=", v]))
            .collect();
        if parts.iter().flatten().any(|p| p.contains(&0)) {
            return Err(PrepareError);
        }
        let size = parts.iter().flatten().map(|p| p.len()).sum::<usize>() + parts.len();
        let mut buf = Vec::with_capacity(size);
        let mut starts = Vec::with_capacity(parts.len());
        for p in &parts {
            starts.push(buf.len());
            for piece in p {
                buf.extend_from_slice(piece);
            }
            buf.push(0);
        }
        let strings = NonNull::from(Box::leak(buf.into_boxed_slice()));
        let base_ptr = strings.as_ptr().cast::<u8>();
        let (n_candidates, n_argv) = (candidates.len(), cmd.argv.len());
        // SAFETY: every start is within the allocation of `size` bytes.
        let at = |i: usize| -> *const libc::c_char { unsafe { base_ptr.add(starts[i]) }.cast() };
        let mut ptrs = Vec::with_capacity(parts.len() + 2);
        ptrs.extend((0..n_candidates + n_argv).map(at));
        ptrs.push(std::ptr::null());
        let envp_at = ptrs.len();
        ptrs.extend((n_candidates + n_argv..parts.len()).map(at));
        ptrs.push(std::ptr::null());
        Ok(Exec {
            ptrs: ptrs.into_boxed_slice(),
            strings,
            n_candidates,
            envp_at,
            // The entry pushed last.
            listen_pid: listen_pid
                .then(|| starts.last().map(|s| s + LISTEN_PID_PREFIX.len()))
                .flatten(),
        })
    }

    /// The strings `ptrs[range]` points to.
    fn strings_of(&self, range: std::ops::Range<usize>) -> Vec<&[u8]> {
        self.ptrs[range]
            .iter()
            .filter(|p| !p.is_null())
            // SAFETY: every non-null pointer points at a NUL-terminated string in `strings`,
            // which lives as long as `self`.
            .map(|&p| unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes())
            .collect()
    }

    /// The candidate paths, in the order the child tries them.
    #[cfg(test)]
    fn candidates(&self) -> Vec<&[u8]> {
        self.strings_of(0..self.n_candidates)
    }

    /// The environment, as `NAME=value` strings.
    #[cfg(test)]
    fn envp(&self) -> Vec<&[u8]> {
        self.strings_of(self.envp_at..self.ptrs.len())
    }

    /// The program as the command names it (`argv[0]`), for messages.
    fn program(&self) -> String {
        self.strings_of(self.n_candidates..self.n_candidates + 1)
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned())
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
#[derive(Debug, Default, Clone)]
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

impl CloneFailure {
    fn into_spawn_error(self, opts: &SpawnOptions) -> SpawnError {
        match self {
            CloneFailure::Cgroup(errno) => SpawnError::Setup {
                step: Step::Cgroup(opts.cgroup.map(fd_path).unwrap_or_default()),
                errno,
            },
            CloneFailure::Other(e) => SpawnError::Clone(e),
        }
    }
}

/// A stack a child runs on until it execs, with an inaccessible guard page below it; unmapped
/// when dropped.
struct Stack {
    base: NonNull<libc::c_void>,
    /// The count of mapped stacks this one belongs to.
    mapped: Rc<Cell<usize>>,
}

impl Stack {
    /// Maps a stack, counted in `mapped`.
    fn map(mapped: &Rc<Cell<usize>>) -> io::Result<Stack> {
        // SAFETY: an anonymous private mapping, owned by the Stack and unmapped in Drop.
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
        let base = match NonNull::new(base) {
            Some(b) if base != libc::MAP_FAILED => b,
            _ => return Err(io::Error::last_os_error()),
        };
        mapped.set(mapped.get() + 1);
        let stack = Stack {
            base,
            mapped: Rc::clone(mapped),
        };
        // SAFETY: the first page of our own mapping.
        if unsafe { libc::mprotect(base.as_ptr(), GUARD_SIZE, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The lowest usable address of the stack.
    fn low(&self) -> *mut libc::c_void {
        self.base.as_ptr().wrapping_byte_add(GUARD_SIZE)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; its owner drops it only when no child runs on it (a vfork
        // child has exec'd or exited, a pipelined one's pipe is at EOF).
        unsafe { libc::munmap(self.base.as_ptr(), GUARD_SIZE + CHILD_STACK_SIZE) };
        self.mapped.set(self.mapped.get().saturating_sub(1));
    }
}

/// Starts children: the stack vfork children run on (one serves them all, since archon is
/// suspended until its child is done with it), and the pool of pipelined children's stacks.
pub struct Spawner {
    stack: Stack,
    /// Pipelined children's stacks that no child uses, for the next.
    free: Vec<Stack>,
    /// How many pipelined children's stacks are mapped, free or in a [`PendingExec`].
    mapped: Rc<Cell<usize>>,
    /// At most this many of them: [`MAX_PIPELINED`] (tests lower it).
    limit: usize,
    /// False: always glibc's clone (tests use it to exercise the fallback).
    clone3: bool,
    /// archon's pid, which a child checks its parent against once it has asked for the
    /// parent-death signal.
    parent: libc::pid_t,
    /// The open files limit (soft, hard) children get back, when archon raised its own.
    children_nofile: Option<(u64, u64)>,
}

/// A child started by [`Spawner::spawn_pipelined`].
pub enum Spawned {
    /// Its program runs: no stack was free, so it was a vfork spawn and the outcome is known.
    Running(Child),
    /// It may still be on its way to the exec: [`Spawner::poll_exec`] tells the outcome.
    Pending(Child, PendingExec),
}

/// What a pipelined child reads until it execs: one heap block at a fixed address, written
/// before the clone and never again (see the module's notes).
struct Prepared {
    exec: Exec,
    opts: SpawnOptions,
    plan: ChildPlan,
}

/// A pipelined child whose exec's outcome is not known yet: what it reads (its [`Prepared`]
/// block and its stack), and the read end of the pipe it reports on. Register the pipe with the
/// poll ([`AsFd`]); when it turns readable, [`Spawner::poll_exec`] reads it.
pub struct PendingExec {
    /// The read end: non-blocking, close-on-exec.
    pipe: OwnedFd,
    /// What the child may still be using: taken at EOF.
    held: Option<(NonNull<Prepared>, Stack)>,
    /// The failure record as read so far, and how many bytes came.
    record: [u8; REPORT_SIZE],
    got: usize,
    /// The cgroup's path when the child joins it itself, for a message (its fd is archon's only
    /// until the clone).
    cgroup_path: String,
}

/// The size of the failure record a pipelined child writes: a [`Report`].
const REPORT_SIZE: usize = std::mem::size_of::<Report>();

impl AsFd for PendingExec {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

impl PendingExec {
    /// Reads the pipe until it is empty: true at EOF, when the child no longer uses anything of
    /// archon's. A read error other than EINTR or EAGAIN (none is expected on a pipe) counts as
    /// "not yet": freeing too early is the one thing that must not happen.
    fn drain(&mut self) -> bool {
        let mut buf = [0u8; REPORT_SIZE];
        loop {
            // SAFETY: reading into a buffer of buf.len() bytes.
            let n =
                unsafe { libc::read(self.pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return false;
            }
            if n == 0 {
                return true;
            }
            for &b in buf.iter().take(n as usize) {
                if let Some(slot) = self.record.get_mut(self.got) {
                    *slot = b;
                }
                self.got = self.got.saturating_add(1);
            }
        }
    }

    /// The outcome once the pipe is at EOF: nothing read, the exec succeeded; a whole record, the
    /// step that failed. Anything else (a write of 12 bytes to a pipe is atomic, so nothing else
    /// is expected) is an exec that failed with EIO.
    fn outcome(&self, prepared: &Prepared) -> Result<(), SpawnError> {
        if self.got == 0 {
            return Ok(());
        }
        let [s0, s1, s2, s3, i0, i1, i2, i3, e0, e1, e2, e3] = self.record;
        let report = if self.got == REPORT_SIZE {
            Report {
                stage: u32::from_ne_bytes([s0, s1, s2, s3]),
                index: u32::from_ne_bytes([i0, i1, i2, i3]),
                errno: i32::from_ne_bytes([e0, e1, e2, e3]),
            }
        } else {
            Report {
                stage: Stage::Exec as u32,
                index: 0,
                errno: libc::EIO,
            }
        };
        Err(SpawnError::Setup {
            step: report.step(&prepared.exec, &prepared.opts, || self.cgroup_path.clone()),
            errno: report.errno,
        })
    }
}

impl Drop for PendingExec {
    /// Frees what the child used if the pipe is at EOF; otherwise leaks it, since the child may
    /// still read it.
    fn drop(&mut self) {
        let Some((prepared, stack)) = self.held.take() else {
            return;
        };
        if self.drain() {
            // SAFETY: made by Box::leak in spawn_pipelined; the child is done with it (EOF).
            drop(unsafe { Box::from_raw(prepared.as_ptr()) });
            drop(stack);
        } else {
            std::mem::forget(stack);
        }
    }
}

impl Spawner {
    /// Maps the vfork children's stack; the pool's stacks are mapped as they are first needed.
    pub fn new() -> io::Result<Spawner> {
        Ok(Spawner {
            stack: Stack::map(&Rc::new(Cell::new(0)))?,
            free: Vec::new(),
            mapped: Rc::new(Cell::new(0)),
            limit: MAX_PIPELINED,
            clone3: true,
            // SAFETY: getpid has no memory effects.
            parent: unsafe { libc::getpid() },
            children_nofile: None,
        })
    }

    /// Children start with this open files limit (soft, hard): the one archon was given before
    /// it raised its own (a service's `rlimits` still apply after it).
    pub fn set_children_nofile(&mut self, limit: (u64, u64)) {
        self.children_nofile = Some(limit);
    }

    /// The open files limit children get, if set.
    pub fn children_nofile(&self) -> Option<(u64, u64)> {
        self.children_nofile
    }

    /// Gives back the memory of stacks no child runs on: the pool's free stacks are unmapped
    /// (mapped again when a burst of starts needs them) and the pages the vfork stack touched
    /// are dropped.
    pub fn trim(&mut self) {
        self.free.clear();
        // SAFETY: the vfork stack's usable part, above its guard page, which no child runs on
        // while archon runs (a vfork child has exec'd or exited when the clone returns).
        unsafe {
            libc::madvise(
                self.stack.base.as_ptr().cast::<u8>().add(GUARD_SIZE).cast(),
                CHILD_STACK_SIZE,
                libc::MADV_DONTNEED,
            );
        }
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
        let mut report = Report::default();
        let report_ptr: *mut Report = &mut report;
        let plan = ChildPlan::new(
            exec,
            stdio,
            opts,
            fd_base,
            self.parent,
            self.children_nofile,
            Reporter::Memory(report_ptr),
        );

        let old_mask = block_all_signals();
        let result = self.clone_child(&plan, &self.stack, true);
        restore_signals(&old_mask);
        let (pid, pidfd) = result.map_err(|e| e.into_spawn_error(opts))?;
        // SAFETY: CLONE_VFORK: the child has exec'd or exited, and no longer touches this memory.
        let report = unsafe { std::ptr::read_volatile(report_ptr) };
        if report.errno != 0 {
            return Err(SpawnError::Setup {
                step: report.step(exec, opts, || opts.cgroup.map(fd_path).unwrap_or_default()),
                errno: report.errno,
            });
        }
        Ok(Child { pid, pidfd })
    }

    /// True when the next [`Spawner::spawn_pipelined`] can pipeline: a stack is free or may be
    /// mapped. When not, settling the pending execs that are over frees theirs.
    pub fn can_pipeline(&self) -> bool {
        CAN_PIPELINE && (!self.free.is_empty() || self.mapped.get() < self.limit)
    }

    /// Starts `exec` as [`Spawner::spawn_with`] does, but without waiting for the exec when a
    /// stack is free: `exec` and `opts` move into the [`PendingExec`], which holds them, and the
    /// stack, until [`Spawner::poll_exec`] has the outcome. Borrowed fds in `opts` (extra fds, the
    /// cgroup) may be closed once this returns: the child has its own copies. When no stack is
    /// free, the child is started the vfork way and the outcome is known at once.
    pub fn spawn_pipelined(
        &mut self,
        exec: Exec,
        stdio: [RawFd; 3],
        opts: SpawnOptions,
    ) -> Result<Spawned, SpawnError> {
        let fd_base = check_extra_fds(&opts.extra_fds)?;
        let Some(stack) = self.take_stack() else {
            return self.spawn_with(&exec, stdio, &opts).map(Spawned::Running);
        };
        let (read, write) = match outcome_pipe(fd_base) {
            Ok(ends) => ends,
            Err(_) => {
                self.free.push(stack);
                return self.spawn_with(&exec, stdio, &opts).map(Spawned::Running);
            }
        };
        let plan = ChildPlan::new(
            &exec,
            stdio,
            &opts,
            fd_base,
            self.parent,
            self.children_nofile,
            Reporter::Pipe(write.as_raw_fd()),
        );
        let prepared = NonNull::from(Box::leak(Box::new(Prepared { exec, opts, plan })));
        let ptr = prepared.as_ptr();
        // SAFETY: the block was just made and nothing else points into it: the plan's options
        // pointer is set to the options where they now live, before any child exists.
        unsafe { (*ptr).plan.opts = &raw const (*ptr).opts };
        // SAFETY: from here on the block is only read, by archon and the child alike (but for
        // the plan's join_cgroup, a Cell that clone_child sets before the child exists).
        let prepared_ref: &Prepared = unsafe { &*ptr };

        let old_mask = block_all_signals();
        let result = self.clone_child(&prepared_ref.plan, &stack, false);
        restore_signals(&old_mask);
        // The child has its copy; archon's goes now, so that EOF means the child's is gone.
        drop(write);
        match result {
            Ok((pid, pidfd)) => {
                let cgroup_path = match prepared_ref.opts.cgroup {
                    Some(fd) if prepared_ref.plan.join_cgroup.get() >= 0 => fd_path(fd),
                    _ => String::new(),
                };
                Ok(Spawned::Pending(
                    Child { pid, pidfd },
                    PendingExec {
                        pipe: read,
                        held: Some((prepared, stack)),
                        record: [0; REPORT_SIZE],
                        got: 0,
                        cgroup_path,
                    },
                ))
            }
            Err(e) => {
                // No child was made: nothing else reads the block.
                // SAFETY: made by Box::leak above, and no longer referenced.
                let prepared = unsafe { Box::from_raw(ptr) };
                self.free.push(stack);
                Err(e.into_spawn_error(&prepared.opts))
            }
        }
    }

    /// Reads what a pipelined child has reported, without blocking: `None` while its pipe is
    /// open (it is on its way to the exec), or once told before. At EOF, the outcome: `Ok` when
    /// the program runs, the failed step otherwise (that child has exited 127, or is about to;
    /// it is reaped as any other child); its stack goes back to the pool and its block is freed.
    pub fn poll_exec(&mut self, pending: &mut PendingExec) -> Option<Result<(), SpawnError>> {
        pending.held.as_ref()?;
        if !pending.drain() {
            return None;
        }
        let (prepared, stack) = pending.held.take()?;
        // SAFETY: made by Box::leak in spawn_pipelined; the child is done with it (EOF).
        let prepared = unsafe { Box::from_raw(prepared.as_ptr()) };
        let outcome = pending.outcome(&prepared);
        self.free.push(stack);
        Some(outcome)
    }

    /// A stack for a pipelined child: a free one, or a new one while fewer than the limit are
    /// mapped. `None` when archon cannot pipeline.
    fn take_stack(&mut self) -> Option<Stack> {
        if !self.can_pipeline() {
            return None;
        }
        self.free.pop().or_else(|| Stack::map(&self.mapped).ok())
    }

    /// Clones a child that runs `plan` on `stack`: as vfork does (archon waits for its exec or
    /// exit), or pipelined.
    fn clone_child(
        &self,
        plan: &ChildPlan,
        stack: &Stack,
        vfork: bool,
    ) -> Result<(i32, OwnedFd), CloneFailure> {
        let arg = (plan as *const ChildPlan).cast_mut().cast::<libc::c_void>();
        let share = if vfork { CLONE_VM_VFORK } else { CLONE_VM };
        // SAFETY: opts points to the options the plan was made for, alive for this call.
        let (cgroup, cgroup_procs) = unsafe { ((*plan.opts).cgroup, (*plan.opts).cgroup_procs) };
        #[cfg(target_arch = "x86_64")]
        if self.clone3
            && !NO_CLONE3.load(Ordering::Relaxed)
            && !(cgroup.is_some() && NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed))
        {
            let mut pidfd: RawFd = -1;
            let mut args = CloneArgs {
                flags: CLONE_PIDFD | share,
                pidfd: &mut pidfd as *mut RawFd as u64,
                exit_signal: libc::SIGCHLD as u64,
                stack: stack.low() as u64,
                stack_size: CHILD_STACK_SIZE as u64,
                ..CloneArgs::default()
            };
            if let Some(fd) = cgroup {
                args.flags |= CLONE_INTO_CGROUP;
                args.cgroup = fd as u64;
            }
            // SAFETY: the child runs child_entry on its own stack, in archon's memory, reading
            // the plan (which outlives its use: see spawn_with and spawn_pipelined);
            // child_entry never returns.
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
        // glibc's clone cannot place the child: it writes itself into cgroup.procs. (An fd
        // opened here may close when this returns: the child has its own copy.)
        let _opened: Option<OwnedFd> = match (cgroup, cgroup_procs) {
            (None, _) => None,
            (Some(_), Some(procs)) => {
                plan.join_cgroup.set(procs);
                None
            }
            (Some(dir), None) => {
                let procs = open_procs(dir).map_err(CloneFailure::Cgroup)?;
                plan.join_cgroup.set(procs.as_raw_fd());
                Some(procs)
            }
        };
        let mut pidfd: libc::c_int = -1;
        let top = stack.low().wrapping_byte_add(CHILD_STACK_SIZE);
        // SAFETY: as above; glibc's clone runs child_entry on `top` and stores the pidfd through
        // the parent_tid argument (CLONE_PIDFD).
        let pid = unsafe {
            libc::clone(
                child_entry,
                top,
                (share | CLONE_PIDFD) as libc::c_int | libc::SIGCHLD,
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

/// The pipe a pipelined child reports on: (read end, write end), both close-on-exec and
/// non-blocking, the write end at `fd_base` or above, where no extra fd the child puts in place
/// can land on it (see [`check_extra_fds`]).
fn outcome_pipe(fd_base: RawFd) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid [c_int; 2].
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these fds; nobody else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if write.as_raw_fd() >= fd_base {
        return Ok((read, write));
    }
    // SAFETY: fcntl on our own fd; returns a new fd or -1.
    let moved = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_DUPFD_CLOEXEC, fd_base) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl just returned this fd; nobody else owns it.
    Ok((read, unsafe { OwnedFd::from_raw_fd(moved) }))
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
    /// The step a report names, with what the message shows of it (`cgroup`: the cgroup's path).
    fn step(&self, exec: &Exec, opts: &SpawnOptions, cgroup: impl FnOnce() -> String) -> Step {
        let index = self.index as usize;
        let creds = opts.creds.as_ref();
        match self.stage {
            s if s == Stage::Cgroup as u32 => Step::Cgroup(cgroup()),
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

/// Where a child reports a failed step.
#[derive(Clone, Copy)]
enum Reporter {
    /// Into archon's memory: a vfork child, while archon is suspended.
    Memory(*mut Report),
    /// Into the write end of a close-on-exec pipe, in the child's fd table: a pipelined child,
    /// which must write nothing of archon's.
    Pipe(RawFd),
}

/// What the child needs, all prepared before the clone: plain values, and pointers into an
/// [`Exec`] and a [`SpawnOptions`] that outlive the child's use of them (the caller's, for a
/// vfork child; the [`PendingExec`]'s, for a pipelined one).
struct ChildPlan {
    /// The candidate paths, `n_paths` of them.
    paths: *const *const libc::c_char,
    n_paths: usize,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdio: [RawFd; 3],
    opts: *const SpawnOptions,
    /// Above every extra fd's source and target (see [`check_extra_fds`]).
    fd_base: RawFd,
    /// archon's pid.
    parent: libc::pid_t,
    /// The open files limit the child sets first, as archon was given it.
    nofile: Option<libc::rlimit64>,
    /// The digits of the `LISTEN_PID=` entry of `envp` the child writes with its pid
    /// (`LISTEN_PID_LEN` - prefix bytes), or null.
    listen_pid: *mut u8,
    /// An fd of `cgroup.procs` the child writes itself into, or -1: set only on the glibc clone
    /// path, since clone3 places the child as it creates it.
    join_cgroup: Cell<RawFd>,
    report: Reporter,
}

impl ChildPlan {
    fn new(
        exec: &Exec,
        stdio: [RawFd; 3],
        opts: &SpawnOptions,
        fd_base: RawFd,
        parent: libc::pid_t,
        nofile: Option<(u64, u64)>,
        report: Reporter,
    ) -> ChildPlan {
        ChildPlan {
            paths: exec.ptrs.as_ptr(),
            n_paths: exec.n_candidates,
            // SAFETY: both offsets are within `ptrs` (argv's terminator comes before envp).
            argv: unsafe { exec.ptrs.as_ptr().add(exec.n_candidates) },
            envp: unsafe { exec.ptrs.as_ptr().add(exec.envp_at) },
            stdio,
            opts,
            fd_base,
            parent,
            nofile: nofile.map(|(soft, hard)| libc::rlimit64 {
                rlim_cur: soft,
                rlim_max: hard,
            }),
            // SAFETY: the offset is within the strings, as `build` made it.
            listen_pid: exec.listen_pid.map_or(std::ptr::null_mut(), |at| unsafe {
                exec.strings.as_ptr().cast::<u8>().add(at)
            }),
            join_cgroup: Cell::new(-1),
            report,
        }
    }
}

/// `syscall(nr, args...)` that returns the result or `-errno` and writes no memory of archon's
/// (see [`raw_syscall`]). Up to four arguments, each cast to `usize`.
macro_rules! sys {
    ($nr:expr) => {
        raw_syscall($nr, [0; 6])
    };
    ($nr:expr, $a:expr) => {
        raw_syscall($nr, [$a as usize, 0, 0, 0, 0, 0])
    };
    ($nr:expr, $a:expr, $b:expr) => {
        raw_syscall($nr, [$a as usize, $b as usize, 0, 0, 0, 0])
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr) => {
        raw_syscall($nr, [$a as usize, $b as usize, $c as usize, 0, 0, 0])
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {
        raw_syscall(
            $nr,
            [$a as usize, $b as usize, $c as usize, $d as usize, 0, 0],
        )
    };
}

/// A system call by the `syscall` instruction: its result, or `-errno`. Unlike glibc's
/// wrappers it sets no errno: a pipelined child runs with archon's thread pointer, so glibc's
/// errno would be archon's.
///
/// # Safety
/// The arguments must be what system call `nr` expects; memory it writes must be the caller's.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall(nr: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the kernel preserves every register but rax, rcx and r11; what memory the call
    // reads and writes is the caller's to vouch for.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere, glibc's `syscall()`, which sets errno: only vfork children run it (archon is
/// suspended meanwhile; [`CAN_PIPELINE`] is false), as every child did before pipelining.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn raw_syscall(nr: libc::c_long, a: [usize; 6]) -> isize {
    // SAFETY: as the caller vouches.
    unsafe {
        let ret = libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
        if ret < 0 {
            -(*libc::__errno_location() as isize)
        } else {
            ret as isize
        }
    }
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the ChildPlan that spawn_with or spawn_pipelined keeps alive until the
    // child has exec'd or exited.
    child_side(unsafe { &*arg.cast::<ChildPlan>() })
}

/// The child, between clone and exec: plain system calls only ([`raw_syscall`]), no allocation, no
/// locks. It shares archon's memory, and writes none of it but its own stack (and, a vfork
/// child, the report).
///
/// The user changes through the raw system calls: glibc's setuid family signals every thread of
/// the process to change them all ("setxid broadcast"), and this child shares archon's memory
/// (and so glibc's idea of its threads) but not archon's threads.
fn child_side(plan: &ChildPlan) -> ! {
    // SAFETY: each call below is async-signal-safe and touches only memory prepared before the
    // clone (or the child's own stack); the process ends in execve or exit_group. opts points to
    // the options the plan was made for, alive until the child has exec'd or exited.
    unsafe {
        let opts = &*plan.opts;
        // The raw system calls: glibc's wrappers refuse signals 32 and 33 (its own), which a
        // parent's posix_spawn may have left ignored, and ignored dispositions survive exec.
        // An all-zero kernel sigaction is SIG_DFL with no flags and an empty mask.
        let dfl = [0u64; 4];
        let none = 0u64;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                sys!(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize
                );
            }
        }
        sys!(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize
        );

        // First, so that everything the child does is accounted to its cgroup. "0" is the
        // writing process.
        let procs = plan.join_cgroup.get();
        if procs >= 0 {
            let r = sys!(libc::SYS_write, procs, b"0\n".as_ptr(), 2usize);
            if r != 2 {
                fail(plan, Stage::Cgroup, 0, r);
            }
        }

        let r = sys!(libc::SYS_setsid);
        if r < 0 {
            fail(plan, Stage::Session, 0, r);
        }
        // Sources are fds >= 3 or archon's own fd 2, and targets are filled 0, 1, 2 in order, so
        // no dup overwrites a source still needed.
        for (target, &src) in plan.stdio.iter().enumerate() {
            let r = if src == target as RawFd {
                sys!(libc::SYS_fcntl, src, libc::F_SETFD, 0)
            } else {
                sys!(libc::SYS_dup3, src, target, 0)
            };
            if r < 0 {
                fail(plan, Stage::Stdio, target, r);
            }
        }
        // Extra fds: a copy of each source above every source and target first (close-on-exec),
        // so that filling one target cannot overwrite a source still needed; then each copy to
        // its number, which dup3 leaves open across exec.
        let mut copies = [-1 as RawFd; MAX_EXTRA_FDS];
        for (i, &(src, _)) in opts.extra_fds.iter().enumerate().take(MAX_EXTRA_FDS) {
            let r = sys!(libc::SYS_fcntl, src, libc::F_DUPFD_CLOEXEC, plan.fd_base);
            if r < 0 {
                fail(plan, Stage::Fd, i, r);
            }
            copies[i] = r as RawFd;
        }
        // Everything archon opens is already close-on-exec; this makes sure of it for fds that
        // came from elsewhere. (The fd table is the child's own: CLONE_FILES is not set.) Old
        // kernels lack close_range, which the close-on-exec rule covers.
        sys!(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC
        );
        for (i, &(_, target)) in opts.extra_fds.iter().enumerate().take(MAX_EXTRA_FDS) {
            // A copy is never its target (copies are at fd_base or above, targets below).
            let r = sys!(libc::SYS_dup3, copies[i], target, 0);
            if r != target as isize {
                fail(plan, Stage::Fd, i, r);
            }
        }

        // Limits and priority while still privileged: raising a hard limit or lowering the nice
        // value needs capabilities the user may lack. First the open files limit archon was
        // given (lowering it cannot fail; a failure would leave archon's, which is no reason
        // not to run).
        if let Some(lim) = plan.nofile.as_ref() {
            sys!(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_NOFILE,
                lim as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>()
            );
        }
        // The OOM killer's regard archon was started with, not process 1's -1000 (see
        // `sys::protect_from_oom_killer`); a failure leaves it protected, no reason not to run.
        if let Some(adj) = crate::sys::children_oom_score_adj() {
            let fd = sys!(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC
            );
            if fd >= 0 {
                sys!(libc::SYS_write, fd, adj.as_ptr(), adj.len());
                sys!(libc::SYS_close, fd);
            }
        }
        for (i, &(resource, soft, hard)) in opts.rlimits.iter().enumerate() {
            let lim = libc::rlimit64 {
                rlim_cur: soft,
                rlim_max: hard,
            };
            let r = sys!(
                libc::SYS_prlimit64,
                0,
                resource,
                &lim as *const libc::rlimit64,
                std::ptr::null_mut::<libc::rlimit64>()
            );
            if r != 0 {
                fail(plan, Stage::Rlimit, i, r);
            }
        }
        if let Some(nice) = opts.nice {
            let r = sys!(
                libc::SYS_setpriority,
                libc::PRIO_PROCESS,
                0,
                nice as libc::c_long
            );
            if r != 0 {
                fail(plan, Stage::Nice, 0, r);
            }
        }
        if let Some(mask) = opts.umask {
            sys!(libc::SYS_umask, mask);
        }
        if let Some(c) = &opts.creds {
            let r = sys!(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr());
            if r != 0 {
                fail(plan, Stage::Groups, 0, r);
            }
            let r = sys!(libc::SYS_setresgid, c.gid, c.gid, c.gid);
            if r != 0 {
                fail(plan, Stage::Gid, 0, r);
            }
            let r = sys!(libc::SYS_setresuid, c.uid, c.uid, c.uid);
            if r != 0 {
                fail(plan, Stage::Uid, 0, r);
            }
        }
        if let Some(dir) = &opts.cwd {
            let r = sys!(libc::SYS_chdir, dir.as_ptr());
            if r != 0 {
                fail(plan, Stage::Chdir, 0, r);
            }
        }

        // Die with archon. After the user change, which clears the setting (so does the exec of
        // a set-user-ID program or one with file capabilities: such a child does not die with
        // archon). archon may have been killed since the clone (a vfork parent can be), and
        // then no signal will ever come: the parent is no longer archon, and the child goes.
        let r = sys!(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL);
        if r != 0 {
            fail(plan, Stage::ParentDeath, 0, r);
        }
        if sys!(libc::SYS_getppid) != plan.parent as isize {
            sys!(libc::SYS_exit_group, 127);
        }

        if !plan.listen_pid.is_null() {
            let pid = sys!(libc::SYS_getpid) as u32;
            // SAFETY: the room `build` left in the strings, which nothing else reads or writes
            // until the exec (archon is suspended, or holds them untouched in a PendingExec).
            let digits = std::slice::from_raw_parts_mut(
                plan.listen_pid,
                LISTEN_PID_LEN - LISTEN_PID_PREFIX.len(),
            );
            write_decimal(pid, digits);
        }

        let mut saw_eacces = false;
        let mut last = libc::ENOENT;
        for i in 0..plan.n_paths {
            let path = *plan.paths.add(i);
            last = -sys!(libc::SYS_execve, path, plan.argv, plan.envp) as i32;
            match last {
                libc::EACCES => saw_eacces = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
        }
        if saw_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
            last = libc::EACCES;
        }
        fail(plan, Stage::Exec, 0, -(last as isize))
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

/// Reports the failed stage and its errno (`ret`: the failed call's result, `-errno`, or a short
/// count) and exits 127 (the shell's "command not found").
unsafe fn fail(plan: &ChildPlan, stage: Stage, index: usize, ret: isize) -> ! {
    let errno = if ret < 0 { -ret as i32 } else { libc::EIO };
    let report = Report {
        stage: stage as u32,
        index: index as u32,
        errno: if errno == 0 { libc::EIO } else { errno },
    };
    // SAFETY: a vfork child writes archon's memory while archon is suspended, so the write does
    // not race; a pipelined child writes its stack's copy to its pipe (at most PIPE_BUF bytes:
    // one atomic write). exit_group is async-signal-safe.
    unsafe {
        match plan.report {
            Reporter::Memory(to) => std::ptr::write_volatile(to, report),
            Reporter::Pipe(fd) => {
                sys!(
                    libc::SYS_write,
                    fd,
                    &report as *const Report,
                    std::mem::size_of::<Report>()
                );
            }
        }
        sys!(libc::SYS_exit_group, 127);
        // exit_group does not return.
        std::hint::unreachable_unchecked()
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
        assert_eq!(e.envp(), vec![&b"A=1"[..], b"PATH=/x:/y"]);
        assert_eq!(e.candidates(), vec![&b"/x/tool"[..], b"/y/tool"]);
        assert_eq!(e.program(), "tool");
        let abs = Exec::prepare(&Command::new(["/bin/true"]), &[])?;
        assert_eq!(abs.candidates(), vec![&b"/bin/true"[..]]);
        assert!(Exec::prepare(&Command::new(["/bin/a\0b"]), &[]).is_err());
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

    /// How a test starts its child.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        Vfork,
        Pipelined,
    }

    /// The modes this build has: pipelining only on x86_64.
    const MODES: &[Mode] = if CAN_PIPELINE {
        &[Mode::Vfork, Mode::Pipelined]
    } else {
        &[Mode::Vfork]
    };

    /// Blocks until `fd` is readable (or at EOF).
    fn wait_readable(fd: BorrowedFd<'_>) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no timeout.
        while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {}
    }

    /// Waits for a pending exec's outcome, as the loop does: readable, then poll_exec.
    fn settle(spawner: &mut Spawner, pending: &mut PendingExec) -> Result<(), SpawnError> {
        loop {
            wait_readable(pending.as_fd());
            if let Some(outcome) = spawner.poll_exec(pending) {
                return outcome;
            }
        }
    }

    /// Starts `exec` in `mode`: the child once its program runs, or why it does not.
    fn start(
        spawner: &mut Spawner,
        mode: Mode,
        exec: Exec,
        stdio: [RawFd; 3],
        opts: &SpawnOptions,
    ) -> Result<Child, SpawnError> {
        match mode {
            Mode::Vfork => spawner.spawn_with(&exec, stdio, opts),
            Mode::Pipelined => match spawner.spawn_pipelined(exec, stdio, opts.clone())? {
                Spawned::Pending(child, mut pending) => {
                    settle(spawner, &mut pending).map(|()| child)
                }
                Spawned::Running(_) => unreachable!("a stack was free: it should pipeline"),
            },
        }
    }

    /// Runs a shell script with `opts`, its stdout on a pipe: its exit status and output.
    fn run(
        spawner: &mut Spawner,
        mode: Mode,
        script: &str,
        opts: &SpawnOptions,
    ) -> Result<(Status, String), SpawnError> {
        let exec = sh(script).map_err(SpawnError::Clone)?;
        let (r, w) = pipe().map_err(SpawnError::Clone)?;
        let child = start(spawner, mode, exec, [0, w.as_raw_fd(), 2], opts)?;
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
        for &mode in MODES {
            for clone3 in [true, false] {
                spawner.clone3 = clone3;
                let got = run(&mut spawner, mode, "exit 7", &SpawnOptions::default())?;
                assert_eq!(got.0, Status::Exited(7), "{mode:?}, clone3: {clone3}");
            }
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
        for &mode in MODES {
            let (status, out) = run(
                &mut spawner,
                mode,
                "echo $(cut -d' ' -f6 /proc/$$/stat) $$; exec grep -E '^Sig(Ign|Blk)' /proc/self/status",
                &SpawnOptions::default(),
            )?;
            assert_eq!(status, Status::Exited(0));
            let mut lines = out.lines();
            let ids: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
            assert_eq!(ids.len(), 2, "{out}");
            assert_eq!(
                ids[0], ids[1],
                "{mode:?}: the child leads its own session: {out}"
            );
            for line in lines {
                assert!(
                    line.ends_with("0000000000000000"),
                    "{mode:?}: no signal ignored or blocked: {line}"
                );
            }
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
        for &mode in MODES {
            for clone3 in [true, false] {
                spawner.clone3 = clone3;
                let (status, out) = run(&mut spawner, mode, script, &opts)?;
                assert_eq!(status, Status::Exited(0), "{out}");
                assert_eq!(
                    out,
                    "/usr\n1234\n2345\n2345 5 20 3456\n0027\n123\n456\n5\n\
                     Uid:\t1234\t1234\t1234\t1234\nGid:\t2345\t2345\t2345\t2345\n",
                    "{mode:?}, clone3: {clone3}"
                );
            }
            // No options: archon's own directory and user, and the groups left alone.
            let (_, out) = run(&mut spawner, mode, "pwd; id -u", &SpawnOptions::default())?;
            let cwd = std::env::current_dir().map_err(SpawnError::Clone)?;
            assert_eq!(out, format!("{}\n0\n", cwd.display()), "{mode:?}");
        }
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
        let opts = SpawnOptions::default();
        let cmd = Command {
            argv: vec![
                b"/bin/sh".to_vec(),
                b"-c".to_vec(),
                b"echo $LISTEN_PID $$".to_vec(),
            ],
            env: vec![archon_proto::EnvEntry::set("LISTEN_PID", "1")],
        };
        let exec = Exec::prepare_listening(&cmd, &[])
            .map_err(|_| SpawnError::Clone(io::Error::other("prepare")))?;
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
        for &mode in MODES {
            for clone3 in [true, false] {
                spawner.clone3 = clone3;
                let (status, out) = run(&mut spawner, mode, &script, &opts)?;
                assert_eq!(status, Status::Exited(1), "the test finds no leak: {out}");
                assert_eq!(out, "");
            }
        }
        drop((w1, w2));
        let runs = MODES.len() * 2;
        assert_eq!(read_all(&r1), "one\nthree\n".repeat(runs));
        assert_eq!(read_all(&r2), "two\n".repeat(runs));
        Ok(())
    }

    #[test]
    fn bad_extra_fds_are_refused_before_any_clone() -> io::Result<()> {
        let mut spawner = Spawner::new()?;
        for &mode in MODES {
            let try_fds = |spawner: &mut Spawner, extra_fds| -> io::Result<Option<SpawnError>> {
                let opts = SpawnOptions {
                    extra_fds,
                    ..SpawnOptions::default()
                };
                Ok(start(spawner, mode, sh("exit 0")?, [0, 1, 2], &opts).err())
            };
            let err = try_fds(&mut spawner, vec![(2, 1)])?;
            assert!(
                matches!(
                    err,
                    Some(SpawnError::Setup {
                        step: Step::Fd(1),
                        errno: libc::EINVAL
                    })
                ),
                "{mode:?}: {err:?}"
            );
            let err = try_fds(&mut spawner, vec![(5, 3); MAX_EXTRA_FDS + 1])?;
            assert!(
                matches!(
                    err,
                    Some(SpawnError::Setup {
                        step: Step::Fd(3),
                        errno: libc::EINVAL
                    })
                ),
                "{mode:?}: {err:?}"
            );
            // Refused before a stack is taken, too.
            assert_eq!(spawner.mapped.get(), 0, "{mode:?}");
            // An fd that is not open fails in the child, at its step.
            let err = try_fds(&mut spawner, vec![(i32::MAX - 1, 9)])?;
            assert!(
                matches!(
                    err,
                    Some(SpawnError::Setup {
                        step: Step::Fd(9),
                        errno: libc::EBADF
                    })
                ),
                "{mode:?}: {err:?}"
            );
        }
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
        for &mode in MODES {
            let mut fails = |opts: &SpawnOptions| {
                let exec = sh("exit 0").ok()?;
                match start(&mut spawner, mode, exec, [0, 1, 2], opts) {
                    Err(SpawnError::Setup { step, errno }) => Some((step, errno)),
                    Err(SpawnError::Clone(_)) | Ok(_) => None,
                }
            };
            let opts = SpawnOptions {
                cwd: Some(c"/nonexistent/dir".into()),
                ..SpawnOptions::default()
            };
            assert_eq!(
                fails(&opts),
                Some((Step::Chdir("/nonexistent/dir".into()), libc::ENOENT)),
                "{mode:?}"
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
                Some((Step::Rlimit(libc::RLIMIT_NOFILE as i32), libc::EINVAL)),
                "{mode:?}"
            );
            if !is_root() {
                eprintln!("skipped: the user and group steps need root");
                continue;
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
            assert_eq!(fails(&opts), Some((Step::Groups, libc::EINVAL)), "{mode:?}");
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
            assert_eq!(got, Some((Step::Uid(1000), libc::EPERM)), "{mode:?}");
            let got = without_capability(6, || fails(&opts))?; // CAP_SETGID
            assert_eq!(got, Some((Step::Groups, libc::EPERM)), "{mode:?}");
            // And archon's own thread is unchanged.
            assert_eq!(fails(&opts), None, "{mode:?}");
        }
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
        for &mode in MODES {
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
                let script = "exec grep '^0::' /proc/self/cgroup";
                let (status, out) =
                    run(&mut spawner, mode, script, &opts).map_err(|e| e.to_string())?;
                assert_eq!(status, Status::Exited(0));
                assert_eq!(out, want, "{mode:?}, clone3: {clone3}, procs fd: {procs:?}");
                if clone3
                    && (NO_CLONE3.load(Ordering::Relaxed)
                        || NO_CLONE_INTO_CGROUP.load(Ordering::Relaxed))
                {
                    eprintln!(
                        "clone3 cannot place a child here: only glibc's clone path was tested"
                    );
                }
            }
            // Without the option the child stays in archon's cgroup.
            let (_, out) = run(
                &mut spawner,
                mode,
                "exec grep '^0::' /proc/self/cgroup",
                &SpawnOptions::default(),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(out, format!("0::{own}\n"), "{mode:?}");
        }
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
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        for &mode in MODES {
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
                let exec = sh("exit 0").map_err(|e| e.to_string())?;
                match start(&mut spawner, mode, exec, [0, 1, 2], &opts) {
                    Err(
                        e @ SpawnError::Setup {
                            step: Step::Cgroup(_),
                            ..
                        },
                    ) => {
                        let msg = e.to_string();
                        eprintln!("{mode:?}, clone3: {clone3}, procs fd: {procs:?}: {msg}");
                        assert!(
                            msg.starts_with(&format!(
                                "cannot enter cgroup {}",
                                cg.path().display()
                            )),
                            "{msg}"
                        );
                    }
                    Err(e) => unreachable!("{mode:?}, clone3: {clone3}: {e}"),
                    Ok(_) => {
                        unreachable!("{mode:?}, clone3: {clone3}: started in a removed cgroup")
                    }
                }
            }
        }
        Ok(())
    }

    /// `exec` started pipelined: the child and its pending exec (a stack must be free).
    fn pipelined(spawner: &mut Spawner, exec: Exec) -> Result<(Child, PendingExec), SpawnError> {
        match spawner.spawn_pipelined(exec, [0, 1, 2], SpawnOptions::default())? {
            Spawned::Pending(child, pending) => Ok((child, pending)),
            Spawned::Running(_) => unreachable!("a stack was free: it should pipeline"),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_pipelined_exec_that_succeeds_reads_eof_and_gives_its_stack_back() -> Result<(), SpawnError>
    {
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        let (child, mut pending) =
            pipelined(&mut spawner, sh("exit 7").map_err(SpawnError::Clone)?)?;
        assert_eq!((spawner.mapped.get(), spawner.free.len()), (1, 0));
        settle(&mut spawner, &mut pending)?;
        assert!(pending.held.is_none() && pending.got == 0, "EOF, no data");
        assert_eq!((spawner.mapped.get(), spawner.free.len()), (1, 1));
        // Told once.
        assert!(spawner.poll_exec(&mut pending).is_none());
        assert_eq!(wait(&child.pidfd), Status::Exited(7));
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_pipelined_exec_that_fails_reports_the_step_and_errno_then_exits_127() -> io::Result<()> {
        let mut spawner = Spawner::new()?;
        let prepare = |argv: &str| {
            Exec::prepare(&Command::new([argv]), &[]).map_err(|_| io::Error::other("prepare"))
        };
        for (argv, errno) in [
            ("/nonexistent/program", libc::ENOENT),
            ("/etc/passwd", libc::EACCES),
        ] {
            let (child, mut pending) =
                pipelined(&mut spawner, prepare(argv)?).map_err(io::Error::other)?;
            match settle(&mut spawner, &mut pending) {
                Err(SpawnError::Setup { step, errno: e }) => {
                    assert_eq!((step, e), (Step::Exec(argv.into()), errno));
                }
                Ok(()) => unreachable!("{argv} was executed"),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
            assert_eq!(pending.got, REPORT_SIZE);
            assert_eq!(wait(&child.pidfd), Status::Exited(127), "{argv}");
        }
        // A PATH search that finds nothing executable: the reason a vfork spawn gives.
        let (_, mut pending) = pipelined(&mut spawner, prepare("no-such-program-archon")?)
            .map_err(io::Error::other)?;
        let err = settle(&mut spawner, &mut pending)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("cannot execute no-such-program-archon: No such file or directory")
        );
        // One stack served them all, one after the other.
        assert_eq!((spawner.mapped.get(), spawner.free.len()), (1, 1));
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn pipelined_stacks_are_reused_and_bounded_and_then_it_is_vfork() -> Result<(), SpawnError> {
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        spawner.limit = 2;
        let exec = || sh("exit 0").map_err(SpawnError::Clone);
        let (a, mut pa) = pipelined(&mut spawner, exec()?)?;
        let (b, mut pb) = pipelined(&mut spawner, exec()?)?;
        assert_eq!(spawner.mapped.get(), 2);
        assert!(
            !spawner.can_pipeline(),
            "both stacks are held until their outcome is read"
        );
        // A third waits for its exec, as vfork does: its outcome is known, and no stack is mapped.
        match spawner.spawn_pipelined(exec()?, [0, 1, 2], SpawnOptions::default())? {
            Spawned::Running(c) => assert_eq!(wait(&c.pidfd), Status::Exited(0)),
            Spawned::Pending(..) => unreachable!("no stack was free"),
        }
        assert_eq!(spawner.mapped.get(), 2);
        settle(&mut spawner, &mut pa)?;
        settle(&mut spawner, &mut pb)?;
        assert_eq!(spawner.free.len(), 2);
        let low: Vec<usize> = spawner.free.iter().map(|s| s.low() as usize).collect();
        // The next ones run on those stacks: none is mapped anew.
        let (c, mut pc) = pipelined(&mut spawner, exec()?)?;
        let (d, mut pd) = pipelined(&mut spawner, exec()?)?;
        for p in [&pc, &pd] {
            let used = p.held.as_ref().map(|(_, s)| s.low() as usize);
            assert!(
                used.is_some_and(|u| low.contains(&u)),
                "{used:?} in {low:?}"
            );
        }
        assert_eq!((spawner.mapped.get(), spawner.free.len()), (2, 0));
        settle(&mut spawner, &mut pc)?;
        settle(&mut spawner, &mut pd)?;
        for child in [a, b, c, d] {
            assert_eq!(wait(&child.pidfd), Status::Exited(0));
        }
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_pending_exec_dropped_after_its_eof_unmaps_its_stack() -> Result<(), SpawnError> {
        let mut spawner = Spawner::new().map_err(SpawnError::Clone)?;
        let (child, pending) = pipelined(&mut spawner, sh("exit 0").map_err(SpawnError::Clone)?)?;
        // The child has exited: its pipe is at EOF, so dropping frees its block and stack.
        assert_eq!(wait(&child.pidfd), Status::Exited(0));
        assert_eq!(spawner.mapped.get(), 1);
        drop(pending);
        assert_eq!((spawner.mapped.get(), spawner.free.len()), (0, 0));
        Ok(())
    }

    #[test]
    fn the_report_pipe_is_above_every_extra_fd() -> io::Result<()> {
        let (read, write) = outcome_pipe(900)?;
        assert!(write.as_raw_fd() >= 900, "{}", write.as_raw_fd());
        // SAFETY: fcntl on our own fds.
        let flags = unsafe {
            [
                libc::fcntl(read.as_raw_fd(), libc::F_GETFD),
                libc::fcntl(write.as_raw_fd(), libc::F_GETFD),
                libc::fcntl(read.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK,
            ]
        };
        assert_eq!(
            flags,
            [libc::FD_CLOEXEC, libc::FD_CLOEXEC, libc::O_NONBLOCK]
        );
        Ok(())
    }
}
