//! The last steps of process 1: every process left in its PID namespace gets SIGTERM, then
//! SIGKILL (`kill(-1)`, which reaches all but process 1 itself); the machine's file systems are
//! synced and remounted read-only; then `reboot(2)` powers off, reboots or halts. In a PID
//! namespace other than the initial one, `reboot(2)` ends the namespace instead: the kernel kills
//! every process in it, and its parent sees process 1 killed by SIGHUP (a reboot) or SIGINT (a
//! power off or a halt).
//!
//! Each function refuses to act unless archon is process 1: anywhere else, `kill(-1)` reaches
//! every process of archon's user and `reboot(2)` would take down the machine archon merely runs
//! on.

use std::ffi::CString;
use std::io;

use archon_proto::Power;

use super::mounts;
use crate::{debug, info, procstat, sys};

/// The error of a call that only process 1 may make.
fn not_pid1() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

/// Sends `sig` to every process of archon's PID namespace but archon (`kill(-1, sig)`); nobody
/// to signal is no error.
pub fn signal_everyone(sig: i32) -> io::Result<()> {
    if !sys::is_pid1() {
        return Err(not_pid1());
    }
    // SAFETY: kill has no memory effects; -1 as process 1 is every other process of the PID
    // namespace.
    if unsafe { libc::kill(-1, sig) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// The processes left besides archon, when `/proc` is archon's own: live ones (a zombie has
/// ended), not kernel threads (which no signal ends). `None` without such a `/proc`.
pub fn others() -> Option<Vec<i32>> {
    if !sys::own_proc() {
        return None;
    }
    let me = std::process::id();
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter_map(|pid| {
                let stat = procstat::parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)?;
                let ended = matches!(stat.state, b'Z' | b'X');
                (!ended && !stat.is_kernel_thread()).then_some(stat.pid)
            })
            .collect(),
    )
}

/// True while a process other than archon is left in its PID namespace: from `/proc` when it is
/// archon's own, else by asking `kill(-1, 0)` (which counts zombies too).
pub fn anyone_left() -> bool {
    match others() {
        Some(pids) => !pids.is_empty(),
        None => sys::is_pid1() && probe_everyone(),
    }
}

/// `kill(-1, 0)`: true when there is someone to signal.
fn probe_everyone() -> bool {
    // SAFETY: signal 0 sends nothing; it only checks.
    unsafe { libc::kill(-1, 0) == 0 }
}

/// Remounts read-only every file system of `/proc/self/mountinfo`, the last mounted first, so
/// that nothing is left to write back when the power goes; a mount that refuses (busy, or a
/// kernel file system that cannot be) is left as it is. Returns how many were remounted and how
/// many refused.
fn remount_read_only() -> (usize, usize) {
    let points = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mounts::mount_points(&text))
        .unwrap_or_default();
    let (mut done, mut refused) = (0, 0);
    for point in points.iter().rev() {
        let Ok(target) = CString::new(point.as_str()) else {
            continue;
        };
        // SAFETY: target is a NUL-terminated path; the null pointers are allowed for a remount.
        let ret = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if ret == 0 {
            done += 1;
        } else {
            refused += 1;
            debug!(
                "cannot remount {point} read-only: {}",
                io::Error::last_os_error()
            );
        }
    }
    (done, refused)
}

/// The `reboot(2)` command for `power`.
fn command(power: Power) -> libc::c_int {
    match power {
        Power::Poweroff => libc::RB_POWER_OFF,
        Power::Reboot => libc::RB_AUTOBOOT,
        Power::Halt => libc::RB_HALT_SYSTEM,
    }
}

/// The last step, once every process has ended: as the machine's init, syncs and remounts the
/// file systems read-only, syncs again, and calls `reboot(2)`; as a container's init, calls
/// `reboot(2)` alone (its file systems are the host's to sync, and a remount would change them
/// for the host too). Returns only when `reboot(2)` failed, with its error.
pub fn go_down(machine: bool, power: Power) -> io::Error {
    if !sys::is_pid1() {
        return not_pid1();
    }
    if machine {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let (done, refused) = remount_read_only();
        info!("file systems synced; {done} remounted read-only, {refused} could not be");
        // SAFETY: as above.
        unsafe { libc::sync() };
    }
    info!("{power}");
    // SAFETY: reboot takes a command number; on success it does not return.
    unsafe { libc::reboot(command(power)) };
    io::Error::last_os_error()
}

/// Asks the kernel to send SIGINT to process 1 for Ctrl-Alt-Del, instead of rebooting at once
/// (`LINUX_REBOOT_CMD_CAD_OFF`). For the machine's init only.
pub fn ctrl_alt_del_to_sigint() -> io::Result<()> {
    if !sys::is_pid1() {
        return Err(not_pid1());
    }
    // SAFETY: reboot with RB_DISABLE_CAD only changes what Ctrl-Alt-Del does.
    if unsafe { libc::reboot(libc::RB_DISABLE_CAD) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_happens_unless_archon_is_process_1() {
        // The tests are never process 1: every call refuses, and nothing is signalled.
        assert_eq!(
            signal_everyone(0).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM))
        );
        assert_eq!(
            go_down(true, Power::Poweroff).raw_os_error(),
            Some(libc::EPERM)
        );
        assert_eq!(
            ctrl_alt_del_to_sigint().map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM))
        );
        assert_eq!(command(Power::Poweroff), libc::RB_POWER_OFF);
        assert_eq!(command(Power::Reboot), libc::RB_AUTOBOOT);
        assert_eq!(command(Power::Halt), libc::RB_HALT_SYSTEM);
    }

    #[test]
    fn others_are_live_processes_but_archon() {
        let Some(others) = others() else {
            return; // no /proc of our own: nothing to look at
        };
        let me = std::process::id() as i32;
        assert!(!others.contains(&me));
        // kthreadd, in the initial PID namespace, is a kernel thread.
        assert!(!others.contains(&2) || !sys::own_proc());
    }
}
