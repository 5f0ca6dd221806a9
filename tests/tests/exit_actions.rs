//! Exit actions (`OnExit`, archon-protocol(7)), against the real archon: a command run when a
//! process started by `StartDaemon` or watched by `MonitorFD`/`Monitor` ends, with what ended in
//! its environment; at once for a process that has ended already; its own events; the limits,
//! and bad requests that change nothing.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::Path;

use archon_tests::archon_proto::limits::{MAX_EXIT_ACTIONS, MAX_EXIT_ACTIONS_PER_PROCESS};
use archon_tests::archon_proto::{Event, EventKind, Kind, ProcState, ServiceKind, ServiceState};
use archon_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// An `OnExit` line whose action writes its `ARCHON_*` variables to `file`, whole or not at
/// all.
fn env_dump(id: u64, file: &Path) -> Vec<u8> {
    let f = file.display();
    line(&[
        "OnExit",
        &id.to_string(),
        "/bin/sh",
        "-c",
        &format!("env | grep ^ARCHON_ > {f}.tmp && mv {f}.tmp {f}"),
    ])
}

/// Waits for the file an [`env_dump`] action writes, and reads its `NAME=value` lines.
fn wait_env(file: &Path) -> Result<BTreeMap<String, String>> {
    wait_until(format!("{} to be written", file.display()), BOUND, || {
        file.exists()
    })?;
    let text = std::fs::read_to_string(file).context("read the action's output")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The `(ARCHON_ID, ARCHON_KIND, ARCHON_PID, ARCHON_EXIT, ARCHON_STATUS)` an action saw.
fn what_ended(env: &BTreeMap<String, String>) -> [String; 5] {
    ["ID", "KIND", "PID", "EXIT", "STATUS"]
        .map(|k| env.get(&format!("ARCHON_{k}")).cloned().unwrap_or_default())
}

fn shown(events: &[Event]) -> String {
    events.iter().map(show_event).collect::<Vec<_>>().join("\n")
}

/// Sends `line` and returns the reply.
fn ask(c: &mut Conn, line: &[u8]) -> Result<String> {
    c.send(line)?;
    c.reply_text()
}

#[test]
fn a_daemon_killed_by_a_signal_runs_its_action_with_what_ended() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    let out = a.path("ended.env");
    ensure_eq!(ask(&mut c, &env_dump(id, &out))?, format!("Ok,{id}"));
    ensure!(!out.exists(), "the action waits for the end");
    kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill the daemon")?;
    let env = wait_env(&out)?;
    ensure_eq!(
        what_ended(&env),
        [
            id.to_string(),
            "daemon".into(),
            pid.to_string(),
            "killed".into(),
            "SIGKILL".into()
        ],
        "{env:?}"
    );
    // The action is a `run` of its own, listed, with its spawn and exit events, caused by the
    // client that asked for it and saying whose end it follows.
    let action = wait_for("the action's exit event", BOUND, || {
        let events = a.conn().and_then(|mut c| c.history(&["*", "run"])).ok()?;
        events
            .iter()
            .any(|e| e.what == EventKind::Exit)
            .then_some(events)
    })?;
    ensure_eq!(
        action
            .iter()
            .map(|e| (e.what, e.kind, e.old, e.new))
            .collect::<Vec<_>>(),
        vec![
            (
                EventKind::Spawn,
                ServiceKind::Run,
                None,
                Some(ServiceState::Running)
            ),
            (
                EventKind::Exit,
                ServiceKind::Run,
                Some(ServiceState::Running),
                Some(ServiceState::Exited)
            ),
        ],
        "{}",
        shown(&action)
    );
    let spawn = &action[0];
    ensure_eq!(spawn.cause, this_client(), "{}", show_event(spawn));
    ensure_eq!(
        String::from_utf8_lossy(&spawn.reason),
        format!("exit action of {id} (killed by SIGKILL)")
    );
    let daemon_exit = c.history(&[&id.to_string(), "exit"])?;
    ensure!(
        daemon_exit.len() == 1 && daemon_exit[0].seq < spawn.seq,
        "the daemon's exit comes before its action's spawn: {}\n{}",
        shown(&daemon_exit),
        show_event(spawn)
    );
    let row = c
        .list()?
        .into_iter()
        .find(|r| r.id.to_string().as_bytes() == spawn.subject.as_slice())
        .context("the action is listed")?;
    ensure_eq!((row.kind, row.state), (Kind::Run, ProcState::Exited));
    ensure_eq!(row.argv.first().map(Vec::as_slice), Some(&b"/bin/sh"[..]));
    a.wait_no_zombies()
}

#[test]
fn a_daemon_that_exits_runs_every_action_in_order() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let gate = a.path("go");
    let (id, pid) = parse_started(&c.request(&format!(
        "StartDaemon,/bin/sh,-c,while [ ! -e {} ]; do sleep 0.01; done; exit 7",
        gate.display()
    ))?)?;
    let log = a.path("order");
    for word in ["one", "two", "three"] {
        let reply = ask(
            &mut c,
            &line(&[
                "OnExit",
                &id.to_string(),
                "/bin/sh",
                "-c",
                &format!(
                    "echo {word} $ARCHON_EXIT $ARCHON_STATUS >> {}",
                    log.display()
                ),
            ]),
        )?;
        ensure_eq!(reply, format!("Ok,{id}"));
    }
    std::fs::write(&gate, b"").context("open the gate")?;
    wait_gone(pid, "the daemon")?;
    wait_until("three lines", BOUND, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 3)
    })?;
    // They run side by side: each says what ended, in whatever order they got there.
    let mut lines: Vec<String> = std::fs::read_to_string(&log)?
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    ensure_eq!(
        lines,
        vec!["one exited 7", "three exited 7", "two exited 7"]
    );
    // They started in the order asked.
    let spawns: Vec<u64> = c
        .history(&["*", "spawn|run"])?
        .iter()
        .filter_map(|e| String::from_utf8_lossy(&e.subject).parse().ok())
        .collect();
    ensure_eq!(spawns.len(), 3, "{spawns:?}");
    ensure!(
        spawns.windows(2).all(|w| w[0] < w[1]),
        "in the order asked: {spawns:?}"
    );
    Ok(())
}

/// A process the test started and archon watches ends: its action runs. The test is its parent
/// and reaps it; archon may not have the status yet when it sees the end (`unknown`).
fn monitored_end_runs_the_action(by_pidfd: bool) -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let mut child = ChildGuard::sleep(100)?;
    let pid = child.pid();
    let reply = if by_pidfd {
        let fd = pidfd_open(pid)?;
        c.request_with_fds("MonitorFD", &[fd.as_raw_fd()])?
    } else {
        c.request(&format!("Monitor,{pid}"))?
    };
    let (id, watched) = parse_started(&reply)?;
    ensure_eq!(watched, pid);
    let out = a.path("monitored.env");
    ensure_eq!(ask(&mut c, &env_dump(id, &out))?, format!("Ok,{id}"));
    child.child.kill().context("kill the child")?;
    child.child.wait().context("reap the child")?;
    let env = wait_env(&out)?;
    let [got_id, kind, got_pid, exit, status] = what_ended(&env);
    ensure_eq!(
        (got_id, kind, got_pid),
        (id.to_string(), "monitor".to_string(), pid.to_string()),
        "{env:?}"
    );
    ensure!(
        (exit.as_str(), status.as_str()) == ("killed", "SIGKILL")
            || (exit.as_str(), status.as_str()) == ("unknown", "unknown"),
        "how a watched process ended, as far as archon knew: {exit} {status}"
    );
    Ok(())
}

#[test]
fn a_process_watched_by_monitor_fd_runs_its_action_when_it_ends() -> Result {
    monitored_end_runs_the_action(true)
}

#[test]
fn a_process_watched_by_monitor_runs_its_action_when_it_ends() -> Result {
    monitored_end_runs_the_action(false)
}

#[test]
fn an_action_for_a_process_that_has_ended_runs_at_once() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sh,-c,exit 3")?)?;
    wait_until("the daemon to be listed as ended", BOUND, || {
        a.row(id)
            .ok()
            .flatten()
            .is_some_and(|r| r.state == ProcState::Exited)
    })?;
    let out = a.path("late.env");
    ensure_eq!(ask(&mut c, &env_dump(id, &out))?, format!("Ok,{id}"));
    let env = wait_env(&out)?;
    ensure_eq!(
        what_ended(&env),
        [
            id.to_string(),
            "daemon".into(),
            pid.to_string(),
            "exited".into(),
            "3".into()
        ],
        "{env:?}"
    );
    Ok(())
}

#[test]
fn bad_on_exit_requests_are_refused_and_change_nothing() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    let before_list = c.list()?;
    let before_history = c.history(&[])?;
    let null = dev_null()?;
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            line(&["OnExit", "999", "/bin/true"]),
            "no such process: 999".into(),
        ),
        (
            line(&["OnExit", "web", "/bin/true"]),
            "OnExit takes a process id, not a service: web (a service's exits go to its \
             configuration's handlers)"
                .into(),
        ),
        (line(&["OnExit"]), "missing target".into()),
        (line(&["OnExit", &id.to_string()]), "missing command".into()),
        (
            line(&["OnExit", &id.to_string(), "", "5", "/bin/true"]),
            "explicit form: bad argument count".into(),
        ),
        (
            line(&["OnExit", "-3", "/bin/true"]),
            "bad name: a name may not start with '-'".into(),
        ),
    ];
    for (request, reason) in &cases {
        let reply = ask(&mut c, request)?;
        ensure_eq!(
            error_reason(&reply)?,
            *reason,
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    let with_fd = c.request_with_fds(&format!("OnExit,{id},/bin/true"), &[null.as_raw_fd()])?;
    ensure_eq!(error_reason(&with_fd)?, "OnExit takes no fds, got 1");
    // Up to the limit for one process, then refused.
    let count = a.path("count");
    let append = line(&[
        "OnExit",
        &id.to_string(),
        "/bin/sh",
        "-c",
        &format!("echo x >> {}", count.display()),
    ]);
    for _ in 0..MAX_EXIT_ACTIONS_PER_PROCESS {
        ensure_eq!(ask(&mut c, &append)?, format!("Ok,{id}"));
    }
    ensure_eq!(
        error_reason(&ask(&mut c, &append)?)?,
        format!("too many exit actions for {id} (limit {MAX_EXIT_ACTIONS_PER_PROCESS})")
    );
    ensure_eq!(c.list()?, before_list, "no process came or went");
    ensure_eq!(
        c.history(&[])?,
        before_history,
        "no event: an exit action waits silently"
    );
    // Its end runs the actions accepted, and none of those refused.
    kill(Pid::from_raw(pid), Signal::SIGTERM).context("end the daemon")?;
    wait_until("the actions to run", BOUND, || {
        a.list().is_ok_and(|rows| {
            rows.iter()
                .filter(|r| r.kind == Kind::Run && r.state == ProcState::Exited)
                .count()
                == MAX_EXIT_ACTIONS_PER_PROCESS
        })
    })?;
    ensure_eq!(
        std::fs::read_to_string(&count)?.lines().count(),
        MAX_EXIT_ACTIONS_PER_PROCESS
    );
    ensure_eq!(c.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn exit_actions_waiting_are_bounded_in_all() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let daemons = MAX_EXIT_ACTIONS / MAX_EXIT_ACTIONS_PER_PROCESS;
    let mut ids = Vec::new();
    for _ in 0..daemons {
        ids.push(parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?.0);
    }
    let mut requests = Vec::new();
    for id in &ids {
        for _ in 0..MAX_EXIT_ACTIONS_PER_PROCESS {
            requests.extend(line(&["OnExit", &id.to_string(), "/bin/true"]));
        }
    }
    c.send(&requests)?;
    for id in &ids {
        for _ in 0..MAX_EXIT_ACTIONS_PER_PROCESS {
            ensure_eq!(c.reply_text()?, format!("Ok,{id}"));
        }
    }
    let (extra, _) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    ensure_eq!(
        error_reason(&c.request(&format!("OnExit,{extra},/bin/true"))?)?,
        format!("too many exit actions waiting (limit {MAX_EXIT_ACTIONS})")
    );
    // An end gives its actions' places back.
    let stopped = ids[0];
    ensure_eq!(
        c.request(&format!("Stop,{stopped},0"))?,
        format!("Ok,{stopped},SIGTERM")
    );
    ensure_eq!(
        c.request(&format!("OnExit,{extra},/bin/true"))?,
        format!("Ok,{extra}")
    );
    Ok(())
}

#[test]
fn an_action_that_cannot_be_executed_is_reported_and_archon_goes_on() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    let out = a.path("after.env");
    ensure_eq!(
        c.request(&format!("OnExit,{id},/nonexistent/notify"))?,
        format!("Ok,{id}")
    );
    ensure_eq!(ask(&mut c, &env_dump(id, &out))?, format!("Ok,{id}"));
    kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill the daemon")?;
    // The one after it runs all the same.
    wait_env(&out)?;
    let fail = c.history(&[&id.to_string(), "fail"])?;
    ensure_eq!(fail.len(), 1, "{}", shown(&fail));
    let e = &fail[0];
    ensure_eq!(
        (e.kind, e.old, e.new, e.pid, e.cause),
        (
            ServiceKind::Daemon,
            Some(ServiceState::Exited),
            Some(ServiceState::Exited),
            Some(pid),
            this_client()
        ),
        "{}",
        show_event(e)
    );
    let reason = String::from_utf8_lossy(&e.reason).into_owned();
    ensure!(
        reason.starts_with("exit action not run: cannot execute /nonexistent/notify: "),
        "{reason}"
    );
    ensure!(
        a.log_text()
            .contains(&format!("exit action of {id} not run: cannot execute")),
        "archon's log says so: {}",
        a.log_text()
    );
    ensure_eq!(c.request("Ping")?, "Pong");
    a.wait_no_zombies()
}

#[test]
fn archonctl_on_exit_gives_a_daemon_an_action() -> Result {
    let a = Archon::start()?;
    let (id, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100")?)?;
    let out = a.path("ctl.txt");
    let ctl = |args: &[&str]| {
        output_within(
            std::process::Command::new(archonctl_bin()?)
                .env_remove("ARCHON_SOCKET")
                .arg("--socket")
                .arg(a.socket())
                .args(args),
            BOUND,
        )
    };
    let script = format!(
        "echo \"$WHO $ARCHON_EXIT $ARCHON_STATUS\" > {}",
        out.display()
    );
    let done = ctl(&[
        "on-exit",
        &id.to_string(),
        "-e",
        "WHO=ctl",
        "--",
        "/bin/sh",
        "-c",
        &script,
    ])?;
    ensure_eq!(done.status.code(), Some(0), "{done:?}");
    let refused = ctl(&["on-exit", "999", "/bin/true"])?;
    ensure_eq!(refused.status.code(), Some(1), "{refused:?}");
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("no such process: 999"),
        "{refused:?}"
    );
    kill(Pid::from_raw(pid), Signal::SIGTERM).context("end the daemon")?;
    ensure_eq!(wait_line_in(&out)?, "ctl killed SIGTERM");
    Ok(())
}
