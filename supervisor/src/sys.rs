//! Thin wrappers over the system calls archon needs that libc and nix do not wrap: pidfds,
//! `waitid(P_PIDFD)`, `PIDFD_GET_INFO`, the child subreaper, and a few helpers around them.
//!
//! Nothing here decides anything; each function is one call (or a documented fallback) with its
//! error as an `io::Error`.

use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use archon_proto::Status;

/// `pidfd_send_signal` flag (Linux 6.9): signal the process group the pidfd's process leads.
pub const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// `waitid` id type for a pidfd (Linux 5.4).
const P_PIDFD: libc::idtype_t = 3;

/// `PIDFD_GET_INFO` request masks (Linux 6.13; the exit status since 6.15).
const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_EXIT: u64 = 1 << 3;

/// The first version of `struct pidfd_info` (`PIDFD_INFO_SIZE_VER0`, 64 bytes). The kernel takes
/// the size from the ioctl number, so this smaller struct stays valid as the struct grows.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

/// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)`, defined by hand: libc and nix lack it.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a pidfd for `pid` (close-on-exec, as every pidfd is).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` through a pidfd: race-free, the pidfd pins the process.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: a null siginfo means "as kill(2) would"; the fd is borrowed for the call.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    })
    .map(drop)
}

/// Sends `sig` to the process group that the pidfd's process leads (whose pgid is its pid),
/// through the pidfd where the kernel can (6.9+), else with `kill(-pid)`.
pub fn signal_group(pidfd: BorrowedFd<'_>, pid: i32, sig: i32) -> io::Result<()> {
    match pidfd_send_signal(pidfd, sig, PIDFD_SIGNAL_PROCESS_GROUP) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // SAFETY: kill has no memory effects.
            cvt(unsafe { libc::kill(-pid, sig) }.into()).map(drop)
        }
        other => other,
    }
}

/// Sends `sig` to the process and everything in its process group when it leads one, else to the
/// process alone. A child archon has just started is not yet a group leader (it calls setsid
/// before exec): it gets the signal itself, pending until it unblocks signals with its handlers
/// reset, so a stop that races its start is not lost.
pub fn signal_tree(pidfd: BorrowedFd<'_>, pid: i32, sig: i32) -> io::Result<()> {
    if getpgid(pid).ok() == Some(pid) {
        signal_group(pidfd, pid, sig)
    } else {
        pidfd_send_signal(pidfd, sig, 0)
    }
}

/// True when `fd` is a pidfd (of a live or an ended process).
pub fn is_pidfd(fd: BorrowedFd<'_>) -> bool {
    match pidfd_send_signal(fd, 0, 0) {
        Ok(()) => true,
        Err(e) => matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EPERM)),
    }
}

fn pidfd_info(pidfd: BorrowedFd<'_>, mask: u64) -> io::Result<PidfdInfo> {
    let mut info = PidfdInfo {
        mask,
        ..PidfdInfo::default()
    };
    // SAFETY: the ioctl writes at most size_of::<PidfdInfo>() bytes, encoded in its number.
    let ret = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO,
            &mut info as *mut PidfdInfo,
        )
    };
    cvt(ret.into())?;
    Ok(info)
}

/// The pid a pidfd refers to, in archon's pid namespace; `None` when the process has been reaped.
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    match pidfd_info(pidfd, PIDFD_INFO_PID) {
        Ok(info) if info.mask & PIDFD_INFO_PID != 0 => return Ok(i32::try_from(info.pid).ok()),
        Ok(_) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(_) => {} // older kernel: read fdinfo instead
    }
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
    Ok((pid > 0).then_some(pid))
}

/// How the pidfd's process ended, when the kernel can tell (Linux 6.15+, and only once its parent
/// has reaped it).
pub fn pidfd_exit_status(pidfd: BorrowedFd<'_>) -> Option<Status> {
    let info = pidfd_info(pidfd, PIDFD_INFO_EXIT).ok()?;
    (info.mask & PIDFD_INFO_EXIT != 0).then(|| status_from_wait(info.exit_code))
}

/// Decodes a `wait(2)` status word.
pub fn status_from_wait(w: i32) -> Status {
    if libc::WIFEXITED(w) {
        Status::Exited(libc::WEXITSTATUS(w) as u8)
    } else if libc::WIFSIGNALED(w) {
        Status::Signaled(libc::WTERMSIG(w))
    } else {
        Status::Unknown
    }
}

fn status_from_siginfo(si: &libc::siginfo_t) -> Status {
    // SAFETY: waitid filled a SIGCHLD siginfo, whose union holds si_status.
    let value = unsafe { si.si_status() };
    match si.si_code {
        libc::CLD_EXITED => Status::Exited(value as u8),
        libc::CLD_KILLED | libc::CLD_DUMPED => Status::Signaled(value),
        _ => Status::Unknown,
    }
}

fn waitid(idtype: libc::idtype_t, id: libc::id_t, flags: i32) -> io::Result<Option<(i32, Status)>> {
    let mut si = MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: si is a valid siginfo_t buffer; the kernel fills it.
        let ret = unsafe { libc::waitid(idtype, id, si.as_mut_ptr(), flags) };
        if ret == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    // SAFETY: zeroed, then possibly filled by waitid: a valid siginfo_t either way.
    let si = unsafe { si.assume_init() };
    // SAFETY: after waitid, si_pid is the field of the SIGCHLD union member (0: nothing ready).
    let pid = unsafe { si.si_pid() };
    Ok((pid != 0).then(|| (pid, status_from_siginfo(&si))))
}

/// Reaps the child a pidfd refers to, if it has ended.
pub fn reap_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<Status>> {
    Ok(waitid(
        P_PIDFD,
        pidfd.as_raw_fd() as libc::id_t,
        libc::WEXITED | libc::WNOHANG,
    )?
    .map(|(_, s)| s))
}

/// The pid of some ended child, without reaping it; `None` when none has ended.
pub fn peek_ended_child() -> Option<i32> {
    match waitid(
        libc::P_ALL,
        0,
        libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
    ) {
        Ok(found) => found.map(|(pid, _)| pid),
        Err(_) => None, // ECHILD: no children at all
    }
}

/// Reaps the ended child `pid`.
pub fn reap_pid(pid: i32) -> Option<Status> {
    waitid(
        libc::P_PID,
        pid as libc::id_t,
        libc::WEXITED | libc::WNOHANG,
    )
    .ok()
    .flatten()
    .map(|(_, s)| s)
}

/// Makes archon the reaper of its descendants' orphans.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }.into()).map(drop)
}

/// Raises the soft limit on open files to the hard limit: archon holds a pidfd per process and
/// a socket per client. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<(u64, (u64, u64))> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }.into())?;
    let original = (lim.rlim_cur, lim.rlim_max);
    // Root may raise the hard limit too, up to the kernel's nr_open: a service costs archon up
    // to five fds (its pidfd, its log pipes), and ten thousand services need more than the
    // usual hard limit.
    let ceiling = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_NOFILE);
    // SAFETY: geteuid has no memory effects.
    let target = if unsafe { libc::geteuid() } == 0 {
        lim.rlim_max.max(ceiling)
    } else {
        lim.rlim_max
    };
    for max in [target, lim.rlim_max] {
        if lim.rlim_cur >= max && lim.rlim_max >= max {
            break;
        }
        let raised = libc::rlimit {
            rlim_cur: max,
            rlim_max: max.max(lim.rlim_max),
        };
        // SAFETY: raised is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok((raised.rlim_cur, original));
        }
    }
    Ok((lim.rlim_cur, original))
}

/// The most open files archon asks for as root (`RLIMIT_NOFILE`), when the kernel allows it.
const MAX_NOFILE: u64 = 1 << 20;

/// Makes sure fds 0, 1 and 2 are open (on /dev/null when they were closed), so that nothing
/// archon opens later lands on them and becomes a child's stdio by accident.
pub fn ensure_stdio_open() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: opening /dev/null; the lowest free fd is `fd`, and it is left open on purpose.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// Gives the console (else /dev/null) to whichever of fds 0, 1 and 2 is closed: at boot, when
/// the kernel found no /dev/console to give init, archon may have it once /dev is mounted.
pub fn console_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: opening a path; the lowest free fd is `fd`, and it is left open on purpose.
            unsafe {
                if libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) < 0 {
                    libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                }
            }
        }
    }
}

/// archon's children, live or ended and not yet reaped, from /proc: each thread's `children`
/// file where the kernel has them (`CONFIG_PROC_CHILDREN`), else one scan of every process's
/// parent. None when /proc is not that of archon's PID namespace.
pub fn children_of_self() -> Vec<i32> {
    let mut out = Vec::new();
    let me = std::process::id();
    if !own_proc() {
        // The /proc of another PID namespace (`unshare --pid` without `--mount-proc`): its pids
        // are not archon's to signal.
        return out;
    }
    let mut found_file = false;
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                found_file = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !found_file {
        out.extend(
            crate::procstat::all_processes()
                .into_iter()
                .filter(|&(_, ppid, _)| u32::try_from(ppid) == Ok(me))
                .map(|(pid, _, _)| pid),
        );
    }
    out
}

/// True when `/proc` is the `/proc` of archon's own PID namespace: its `self` is archon. Not so
/// when nothing is mounted there, or one of another namespace is (`unshare --pid` without
/// `--mount-proc`), whose pids are not archon's.
pub fn own_proc() -> bool {
    fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
}

/// True while archon has a child at all, live or ended and not yet reaped (`waitid` without
/// waiting: `ECHILD` says there is none). Unlike /proc, this cannot miss one.
pub fn has_children() -> bool {
    !matches!(
        waitid(
            libc::P_ALL,
            0,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD)
    )
}

/// Ignores `sig` (`SIG_IGN`). A child gets the default back (see `spawn`).
pub fn ignore_signal(sig: i32) -> io::Result<()> {
    // SAFETY: SIG_IGN installs no handler; the struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_IGN;
        cvt(libc::sigaction(sig, &action, std::ptr::null_mut()).into()).map(drop)
    }
}

/// True when archon is process 1 of its PID namespace: the init of a container, or of the
/// machine. Orphans of the whole namespace are its to reap, and the kernel drops every signal
/// sent to it for which it has no handler (SIGKILL and SIGSTOP from an ancestor namespace
/// excepted).
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// The `oom_score_adj` archon's children get back (see [`protect_from_oom_killer`]).
static CHILDREN_OOM_SCORE_ADJ: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// The `oom_score_adj` of process 1: the kernel's OOM killer never picks it.
const PID1_OOM_SCORE_ADJ: &[u8] = b"-1000";

/// Sets archon's `oom_score_adj` to -1000, as systemd does for itself: the OOM killer's SIGKILL
/// is the one end of process 1 nothing can catch. Its children get the value archon had before
/// back ([`children_oom_score_adj`]): the value is inherited, and a service must stay a fair
/// target. Needs `CAP_SYS_RESOURCE` (not given in most containers).
pub fn protect_from_oom_killer() -> io::Result<()> {
    const PATH: &str = "/proc/self/oom_score_adj";
    let was = fs::read(PATH)?;
    let was = was.trim_ascii();
    if was == PID1_OOM_SCORE_ADJ {
        return Ok(());
    }
    fs::write(PATH, PID1_OOM_SCORE_ADJ)?;
    let _ = CHILDREN_OOM_SCORE_ADJ.set(was.to_vec());
    Ok(())
}

/// The `oom_score_adj` a child sets first, as decimal digits: the one archon had before it
/// protected itself; `None` when it did not.
pub fn children_oom_score_adj() -> Option<&'static [u8]> {
    CHILDREN_OOM_SCORE_ADJ.get().map(Vec::as_slice)
}

/// The process group of `pid`.
pub fn getpgid(pid: i32) -> io::Result<i32> {
    // SAFETY: getpgid has no memory effects.
    cvt(unsafe { libc::getpgid(pid) }.into()).map(|g| g as i32)
}

/// `setsockopt` of one `int` option.
pub fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a valid c_int for the duration of the call.
    cvt(libc::c_long::from(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    }))
    .map(drop)
}

/// The `sockaddr_un` for a filesystem path (NUL-terminated inside `sun_path`).
pub fn sockaddr_un(path: &std::path::Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in socket path"))?;
    let bytes = bytes.as_bytes_with_nul();
    if bytes.len() > addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(addr)
}

/// Binds a Unix socket `fd` at `addr`, its file made mode 0600 (less the umask): the mode the
/// socket inode has at bind is the one its file gets, so nobody reaches it through wider
/// permissions before the caller sets those it wants.
pub fn bind_unix(fd: &OwnedFd, addr: &libc::sockaddr_un) -> io::Result<()> {
    // SAFETY: fchmod on an fd we own.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) }.into())?;
    // SAFETY: addr is a valid sockaddr_un of the length given.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    }
    .into())
    .map(drop)
}

/// Binds a Unix socket `fd` to `name` in the abstract namespace (no file: the address is a NUL
/// byte and the name, and its length says where the name ends).
pub fn bind_abstract(fd: &OwnedFd, name: &[u8]) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "abstract socket name too long",
        ));
    }
    for (dst, &src) in addr.sun_path[1..].iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + name.len();
    // SAFETY: addr is a valid sockaddr_un, of which len bytes are the address.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    }
    .into())
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        // _IOWR(0xFF, 11, struct pidfd_info) with the 64-byte VER0 struct.
        assert_eq!(std::mem::size_of::<PidfdInfo>(), 64);
        assert_eq!(PIDFD_GET_INFO, 0xC040_FF0B);
    }

    #[test]
    fn wait_status_decoding() {
        assert_eq!(status_from_wait(0x0700), Status::Exited(7));
        assert_eq!(status_from_wait(9), Status::Signaled(9));
        assert_eq!(status_from_wait(0x80 | 11), Status::Signaled(11)); // core dumped
    }
}
