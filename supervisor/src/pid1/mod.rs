//! archon as process 1: the init of the machine, started by the kernel, or of a PID namespace (a
//! container's init). This module decides what archon is ([`Role`]), what each signal means to
//! it ([`signal_action`]) and how its end goes ([`power_at_end`], [`exit_code`]); the kernel's
//! side is in [`mounts`] (the early file systems), [`halt`] (every process's end, sync, read-only
//! remounts, `reboot(2)`) and [`emergency`] (what archon does when it cannot go on).
//!
//! The machine's init must never exit: the kernel panics when it does. The init of any other PID
//! namespace may: the kernel then kills the rest of the namespace.

use std::os::unix::fs::MetadataExt;

use archon_proto::Power;

pub mod emergency;
pub mod fault;
pub mod halt;
pub mod mounts;

/// `PROC_PID_INIT_INO` of the kernel's `include/linux/proc_ns.h`: the inode number that
/// `/proc/self/ns/pid` has in the initial PID namespace, and in no other (fixed since Linux 3.8).
pub const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// The file whose inode tells the initial PID namespace from the others.
const PID_NS_FILE: &str = "/proc/self/ns/pid";

/// What archon is to the system it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not process 1: a service manager among other processes. It never calls `reboot(2)` or
    /// signals processes it did not start.
    Process,
    /// Process 1 of a PID namespace that is not the initial one: a container's init. `reboot(2)`
    /// ends the namespace, and exiting is allowed.
    Container,
    /// Process 1 of the initial PID namespace: the machine's init. It never returns from `main`.
    Machine,
}

impl Role {
    /// What archon is, as far as it can tell now. As process 1 without `/proc` it takes itself
    /// for the machine's init: the kernel starts init without `/proc`, a container runtime mounts
    /// one, and taking a container for the machine is the safe mistake (archon does not exit, and
    /// `reboot(2)` ends the container all the same). Asked again once `/proc` is mounted.
    pub fn detect() -> Role {
        if !crate::sys::is_pid1() {
            return Role::Process;
        }
        match std::fs::metadata(PID_NS_FILE) {
            Ok(m) => Role::of_pid1_in(m.ino()),
            Err(_) => Role::Machine,
        }
    }

    /// The role of process 1 in the PID namespace whose `/proc/self/ns/pid` has inode `ino`.
    pub fn of_pid1_in(ino: u64) -> Role {
        if ino == PROC_PID_INIT_INO {
            Role::Machine
        } else {
            Role::Container
        }
    }

    /// True for process 1 of any PID namespace.
    pub fn is_pid1(self) -> bool {
        self != Role::Process
    }

    /// For the log.
    pub fn describe(self) -> &'static str {
        match self {
            Role::Process => "a process among others",
            Role::Container => "process 1 of a PID namespace (a container's init)",
            Role::Machine => "process 1 of the machine (its init)",
        }
    }
}

/// What a signal asks of archon when it has no main command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// Stop everything and exit.
    Exit,
    /// Stop everything, then power off, reboot or halt.
    Power(Power),
    /// Read the configuration file again.
    Reload,
    /// Hand archon's state to a new image of its program (see [`crate::reexec`]).
    ReExec,
    /// Nothing: logged.
    Ignore,
}

/// The signals process 1 handles beyond those every archon handles (SIGCHLD, SIGTERM, SIGINT,
/// SIGHUP, SIGUSR1, SIGUSR2): the kernel drops a signal sent to process 1 that has no handler,
/// so each one that means something must have one.
pub const INIT_SIGNALS: [i32; 1] = [libc::SIGPWR];

/// What `sig` asks of archon in `role`, following busybox init, sysvinit and s6-linux-init:
///
/// | signal           | machine's init | container's init | process   |
/// |------------------|----------------|------------------|-----------|
/// | SIGINT           | reboot         | exit             | exit      |
/// | SIGTERM          | reboot         | exit             | exit      |
/// | SIGUSR1          | halt           | halt             | ignored   |
/// | SIGUSR2, SIGPWR  | power off      | power off        | ignored   |
/// | SIGHUP           | reload         | reload           | reload    |
/// | SIGQUIT          | re-exec        | re-exec          | re-exec   |
///
/// The kernel sends SIGINT to the machine's init for Ctrl-Alt-Del (once archon has asked for
/// it), which reboots, as sysvinit's `ctrlaltdel` line usually says. SIGTERM reboots too, as
/// with busybox init and s6-linux-init (archon does not re-execute itself). A container's init
/// exits on both, as `docker stop` and Ctrl-C expect, and powers off (ends the namespace) on
/// SIGPWR, which is what LXC sends to stop a container. SIGQUIT re-executes archon in place (an
/// upgrade that restarts no service), as it makes busybox init run its `restart` action.
pub fn signal_action(role: Role, sig: i32) -> SignalAction {
    match (role, sig) {
        (_, libc::SIGHUP) => SignalAction::Reload,
        (_, libc::SIGQUIT) => SignalAction::ReExec,
        (Role::Machine, libc::SIGINT | libc::SIGTERM) => SignalAction::Power(Power::Reboot),
        (_, libc::SIGINT | libc::SIGTERM) => SignalAction::Exit,
        (Role::Process, _) => SignalAction::Ignore,
        (_, libc::SIGUSR1) => SignalAction::Power(Power::Halt),
        (_, libc::SIGUSR2 | libc::SIGPWR) => SignalAction::Power(Power::Poweroff),
        _ => SignalAction::Ignore,
    }
}

/// How archon's end goes once everything it started has stopped, given the power request it
/// got, if any: `None` to exit. The machine's init cannot exit: any other end (a critical unit
/// failed, the main command ended) powers the machine off.
pub fn power_at_end(role: Role, requested: Option<Power>) -> Option<Power> {
    match role {
        Role::Process => None,
        Role::Container => requested,
        Role::Machine => Some(requested.unwrap_or(Power::Poweroff)),
    }
}

/// Exit codes start here for a death by signal, as the shell counts them.
const SIGNAL_BASE: u8 = 128;

/// The exit code after a power request when archon exits instead of calling `reboot(2)` (it is
/// not process 1, or the call was refused): what a shell reports for process 1 of a PID namespace
/// that calls `reboot(2)`, which the kernel shows as a death by SIGHUP for a reboot and by SIGINT
/// for a power off or a halt. 129 and 130.
pub fn exit_code(power: Power) -> u8 {
    let sig = match power {
        Power::Reboot => libc::SIGHUP,
        Power::Poweroff | Power::Halt => libc::SIGINT,
    };
    SIGNAL_BASE + sig as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_namespace_is_the_machine() {
        assert_eq!(Role::of_pid1_in(0xEFFF_FFFC), Role::Machine);
        assert_eq!(Role::of_pid1_in(4_026_532_450), Role::Container);
        assert!(Role::Machine.is_pid1() && Role::Container.is_pid1());
        assert!(!Role::Process.is_pid1());
        // The tests never run as process 1 of anything.
        assert_eq!(Role::detect(), Role::Process);
    }

    #[test]
    fn the_signal_table() {
        use SignalAction::{Exit, Ignore, ReExec, Reload};
        let (reboot, halt, off) = (
            SignalAction::Power(Power::Reboot),
            SignalAction::Power(Power::Halt),
            SignalAction::Power(Power::Poweroff),
        );
        let table = [
            (libc::SIGINT, reboot, Exit, Exit),
            (libc::SIGTERM, reboot, Exit, Exit),
            (libc::SIGUSR1, halt, halt, Ignore),
            (libc::SIGUSR2, off, off, Ignore),
            (libc::SIGPWR, off, off, Ignore),
            (libc::SIGHUP, Reload, Reload, Reload),
            (libc::SIGQUIT, ReExec, ReExec, ReExec),
            (libc::SIGALRM, Ignore, Ignore, Ignore),
        ];
        for (sig, machine, container, process) in table {
            assert_eq!(signal_action(Role::Machine, sig), machine, "{sig}");
            assert_eq!(signal_action(Role::Container, sig), container, "{sig}");
            assert_eq!(signal_action(Role::Process, sig), process, "{sig}");
        }
        // Every signal that means something to process 1 has a handler.
        for sig in 1..=31 {
            let handled = [
                libc::SIGCHLD,
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGQUIT,
            ]
            .contains(&sig)
                || INIT_SIGNALS.contains(&sig);
            for role in [Role::Machine, Role::Container] {
                assert!(
                    handled || signal_action(role, sig) == Ignore,
                    "{role:?} {sig}"
                );
            }
        }
    }

    #[test]
    fn the_end() {
        use Power::*;
        assert_eq!(power_at_end(Role::Process, Some(Poweroff)), None);
        assert_eq!(power_at_end(Role::Container, Some(Reboot)), Some(Reboot));
        assert_eq!(power_at_end(Role::Container, None), None);
        assert_eq!(power_at_end(Role::Machine, Some(Halt)), Some(Halt));
        assert_eq!(power_at_end(Role::Machine, None), Some(Poweroff));
        assert_eq!(exit_code(Poweroff), 130);
        assert_eq!(exit_code(Halt), 130);
        assert_eq!(exit_code(Reboot), 129);
    }
}
