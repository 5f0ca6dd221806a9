//! The kernel's side of an entrypoint (`archon -- CMD ARGS`): the main command is started with
//! archon's own stdin, stdout and stderr, listed like a daemon (so `List`, `Status`, `Stop` and
//! `Signal` reach it), sent the signals archon receives, and its end starts the shutdown whose
//! outcome is its status. The rules are in [`crate::entry`].

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;

use archon_proto::{Command, Id, Kind, Status};

use super::{Cause, Outcome, ShutdownCause, Supervisor, exec_failure};
use crate::entry;
use crate::spawn::{Exec, SpawnError, Step};
use crate::sys;
use crate::{debug, error, info};

/// The main command: what to run, and its id once it runs.
#[derive(Debug)]
pub(super) struct MainCommand {
    argv: Vec<Vec<u8>>,
    pub(super) id: Option<Id>,
}

impl MainCommand {
    /// The command `argv` (not empty: the command line refuses `--` alone).
    pub(super) fn new(argv: Vec<OsString>) -> MainCommand {
        MainCommand {
            argv: argv.into_iter().map(OsString::into_vec).collect(),
            id: None,
        }
    }
}

impl Supervisor {
    /// Starts the main command, if there is one. When it cannot be started, archon shuts down
    /// with the exit code the shell would give (127 not found, 126 not executable).
    pub(super) fn start_main(&mut self) {
        let Some(argv) = self
            .main
            .as_ref()
            .filter(|m| m.id.is_none())
            .map(|m| m.argv.clone())
        else {
            // None, or carried across a re-exec: running already.
            return;
        };
        let cmd = Command {
            argv,
            env: Vec::new(),
        };
        let started = Exec::prepare(&cmd, &self.base_env)
            .map_err(|e| (Outcome::MainNotStarted, e.to_string()))
            .and_then(|exec| {
                // Its stdio is archon's: an entrypoint's output is its command's.
                self.spawner.spawn(&exec, [0, 1, 2]).map_err(|e| match e {
                    SpawnError::Setup {
                        step: Step::Exec(_),
                        errno,
                    } => (
                        Outcome::MainNotExecuted(errno),
                        exec_failure(&cmd.argv, errno),
                    ),
                    e => (Outcome::MainNotStarted, e.to_string()),
                })
            });
        match started {
            Ok(child) => {
                let pid = child.pid;
                let id = self.track(Kind::Daemon, child, &cmd.argv, Cause::Archon);
                if let Some(m) = self.main.as_mut() {
                    m.id = Some(id);
                }
                info!(
                    "main command started as {id}: pid {pid} {}",
                    String::from_utf8_lossy(&cmd.argv.join(&b' '))
                );
                let kept: Vec<String> = entry::KEPT
                    .iter()
                    .map(|(sig, why)| {
                        let name = archon_proto::signal::name(*sig).unwrap_or_default();
                        format!("{name} ({why})")
                    })
                    .collect();
                debug!(
                    "forwarding every signal to it{} but {}",
                    if self.opts.forward_to_group {
                        " and its process group"
                    } else {
                        ""
                    },
                    kept.join(", ")
                );
            }
            Err((outcome, reason)) => {
                error!("main command: {reason}");
                self.outcome.get_or_insert(outcome);
                self.begin_shutdown(ShutdownCause::MainEnded);
            }
        }
    }

    /// True when `id` is the main command.
    pub(super) fn is_main(&self, id: Id) -> bool {
        self.main.as_ref().is_some_and(|m| m.id == Some(id))
    }

    /// The main command has ended: archon stops everything else and exits with its status.
    pub(super) fn main_ended(&mut self, status: Status) {
        info!(
            "main command {status}: exit code {}",
            entry::exit_code(status)
        );
        if let Some(m) = self.main.as_mut() {
            m.id = None;
        }
        self.outcome.get_or_insert(Outcome::MainEnded(status));
        self.begin_shutdown(ShutdownCause::MainEnded);
    }

    /// Forwards `sig`, sent by `sender` (when the kernel says), to the main command while it
    /// runs; false when archon is to act on it itself.
    pub(super) fn forward(&mut self, sig: i32, sender: Option<i32>) -> bool {
        if !entry::forwards(sig) {
            return false;
        }
        let Some(id) = self.main.as_ref().and_then(|m| m.id) else {
            return false;
        };
        let name = archon_proto::signal::name(sig).unwrap_or_else(|| sig.to_string());
        if sender.is_some_and(|pid| pid == std::process::id() as i32) {
            // A SIGPIPE of a write of archon's own (its log on a closed pipe): not CMD's.
            debug!("not forwarding {name}: archon raised it itself");
            return true;
        }
        let Some(p) = self.table.get(id).filter(|p| p.is_live()) else {
            return false;
        };
        let Some(pidfd) = p.pidfd.as_ref() else {
            return false;
        };
        let result = if self.opts.forward_to_group {
            sys::signal_group(pidfd.as_fd(), p.row.pid, sig)
        } else {
            sys::pidfd_send_signal(pidfd.as_fd(), sig, 0)
        };
        match result {
            Ok(()) => debug!("forwarded {name} to the main command (pid {})", p.row.pid),
            Err(e) => debug!("cannot forward {name} to the main command: {e}"),
        }
        true
    }
}
