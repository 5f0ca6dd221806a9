//! Opening a pidfd, the descriptor `MonitorFD` carries.
//!
//! `pidfd_open(2)` (Linux 5.3) has no wrapper in libc's or nix's safe API, so it is called by
//! number. The descriptor is close-on-exec, as every pidfd is.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Opens a pidfd for process `pid`. Fails with `ESRCH` when there is no such process and
/// `EINVAL` for a pid that cannot be one (0 or negative).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let flags: libc::c_uint = 0;
    // SAFETY: pidfd_open takes a pid and flags by value and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn opens_our_own_pidfd() {
        match pidfd_open(std::process::id() as i32) {
            Ok(fd) => {
                // SAFETY: F_GETFD reads the descriptor's flags.
                let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
                assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "flags {flags}");
            }
            // A kernel older than 5.3, or a sandbox that forbids the call.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            Err(e) => unreachable!("pidfd_open(self): {e}"),
        }
    }

    #[test]
    fn refuses_impossible_pids() {
        for pid in [0, -1] {
            assert_eq!(
                pidfd_open(pid).map_err(|e| e.raw_os_error()).err(),
                Some(Some(libc::EINVAL))
            );
        }
    }
}
