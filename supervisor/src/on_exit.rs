//! Exit actions: a command a client asked archon to run when a process it started or watches
//! ends (`OnExit`, the seed's "run the associated script upon termination").
//!
//! An action waits in its process's record in the [`crate::table`] until the process ends; then
//! it is a `Run` that nobody waits for, admitted to the same pool as any `Run`, listed with kind
//! `run` and with events of its own. What ended reaches it through its environment
//! ([`command`]). This module is pure: the values and the words, no system call.

use archon_proto::limits::{MAX_EXIT_ACTIONS, MAX_EXIT_ACTIONS_PER_PROCESS};
use archon_proto::{
    Cause, Command, EnvEntry, Event, EventKind, Id, Kind, ServiceKind, ServiceState, Status,
};

/// The variable that holds the id of the process that ended.
pub const ENV_ID: &str = "ARCHON_ID";
/// The variable that holds its kind: `daemon`, `monitor` or `run`.
pub const ENV_KIND: &str = "ARCHON_KIND";
/// The variable that holds its pid.
pub const ENV_PID: &str = "ARCHON_PID";
/// The variable that says how it ended: `exited`, `killed` or `unknown`.
pub const ENV_EXIT: &str = "ARCHON_EXIT";
/// The variable that holds its status as `List` writes it: the exit code, the signal's name, or
/// `unknown`.
pub const ENV_STATUS: &str = "ARCHON_STATUS";

/// A command to run when a process ends, and who asked for it (the cause of what it does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitAction {
    /// What to run.
    pub cmd: Command,
    /// The client whose `OnExit` it is.
    pub by: Cause,
}

/// What ended, as its actions are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOf {
    /// Its id.
    pub id: Id,
    /// How it came under archon's watch.
    pub kind: Kind,
    /// Its pid.
    pub pid: i32,
    /// How it ended.
    pub status: Status,
}

/// Why an `OnExit` is refused; its `Display` is the reason of the `Error` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No record of that id: never given, or its record has left the ended ring.
    NoSuchProcess(Id),
    /// [`MAX_EXIT_ACTIONS_PER_PROCESS`] wait for its end already.
    TooManyFor(Id),
    /// [`MAX_EXIT_ACTIONS`] wait, over every process.
    TooMany,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoSuchProcess(id) => write!(f, "no such process: {id}"),
            Refused::TooManyFor(id) => write!(
                f,
                "too many exit actions for {id} (limit {MAX_EXIT_ACTIONS_PER_PROCESS})"
            ),
            Refused::TooMany => {
                write!(
                    f,
                    "too many exit actions waiting (limit {MAX_EXIT_ACTIONS})"
                )
            }
        }
    }
}

/// `ARCHON_EXIT`'s word for a status.
pub fn exit_word(status: Status) -> &'static str {
    match status {
        Status::Exited(_) => "exited",
        Status::Signaled(_) => "killed",
        Status::Unknown => "unknown",
    }
}

/// The command to run for `action` once `end` has happened: the action's own, with the
/// variables that say what ended set last, so that they are archon's word whatever the
/// request's fields say.
pub fn command(action: &ExitAction, end: &EndOf) -> Command {
    let mut cmd = action.cmd.clone();
    cmd.env.extend([
        EnvEntry::set(ENV_ID, end.id.to_string()),
        EnvEntry::set(ENV_KIND, end.kind.to_string()),
        EnvEntry::set(ENV_PID, end.pid.to_string()),
        EnvEntry::set(ENV_EXIT, exit_word(end.status)),
        EnvEntry::set(ENV_STATUS, end.status.to_field()),
    ]);
    cmd
}

/// The reason of the `spawn` event of an action: whose end it follows.
pub fn spawn_reason(end: &EndOf) -> String {
    format!("exit action of {} ({})", end.id, end.status)
}

/// The event that says an action of `end`'s process could not be run (`why`): a `fail` of that
/// process, which stays `exited`, caused by the client that asked for the action.
pub fn failed_event(end: &EndOf, why: &str, by: Cause, now_ms: u64) -> Event {
    Event {
        seq: 0,
        time_ms: now_ms,
        subject: end.id.to_string().into_bytes(),
        kind: ServiceKind::from(end.kind),
        what: EventKind::Fail,
        old: Some(ServiceState::Exited),
        new: Some(ServiceState::Exited),
        pid: Some(end.pid),
        status: None,
        reason: format!("exit action not run: {why}").into_bytes(),
        cause: by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(cmd: &Command) -> Vec<(String, Option<String>)> {
        cmd.env
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.name).into_owned(),
                    e.value
                        .as_ref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn the_environment_says_what_ended_and_has_the_last_word() {
        let action = ExitAction {
            cmd: Command {
                argv: vec![b"/bin/true".to_vec()],
                env: vec![EnvEntry::set("A", "1"), EnvEntry::set(ENV_STATUS, "forged")],
            },
            by: Cause::Archon,
        };
        let cases = [
            (Status::Exited(3), "exited", "3"),
            (Status::Signaled(9), "killed", "SIGKILL"),
            (Status::Unknown, "unknown", "unknown"),
        ];
        for (status, exit, field) in cases {
            let end = EndOf {
                id: 7,
                kind: Kind::Daemon,
                pid: 4242,
                status,
            };
            let cmd = command(&action, &end);
            assert_eq!(cmd.argv, action.cmd.argv);
            let env = env_of(&cmd);
            let some = |n: &str, v: &str| (n.to_string(), Some(v.to_string()));
            assert_eq!(
                env,
                vec![
                    some("A", "1"),
                    some(ENV_STATUS, "forged"),
                    some(ENV_ID, "7"),
                    some(ENV_KIND, "daemon"),
                    some(ENV_PID, "4242"),
                    some(ENV_EXIT, exit),
                    some(ENV_STATUS, field),
                ],
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_failed_action_is_a_fail_of_the_process_that_ended() {
        let end = EndOf {
            id: 3,
            kind: Kind::Monitor,
            pid: 99,
            status: Status::Exited(0),
        };
        let by = Cause::Client { uid: 0, pid: 5 };
        let e = failed_event(&end, "the run queue is full", by, 1000);
        assert_eq!(e.subject, b"3");
        assert_eq!(e.kind, ServiceKind::Monitor);
        assert_eq!(e.what, EventKind::Fail);
        assert_eq!((e.old, e.new), (Some(ServiceState::Exited), e.old));
        assert_eq!(e.pid, Some(99));
        assert_eq!(e.cause, by);
        assert_eq!(e.reason, b"exit action not run: the run queue is full");
        assert_eq!(spawn_reason(&end), "exit action of 3 (exited with code 0)");
    }

    #[test]
    fn refusals_name_the_limit() {
        assert_eq!(
            Refused::TooManyFor(4).to_string(),
            format!("too many exit actions for 4 (limit {MAX_EXIT_ACTIONS_PER_PROCESS})")
        );
        assert_eq!(
            Refused::TooMany.to_string(),
            format!("too many exit actions waiting (limit {MAX_EXIT_ACTIONS})")
        );
        assert_eq!(Refused::NoSuchProcess(9).to_string(), "no such process: 9");
    }
}
