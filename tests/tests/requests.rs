//! Each request and its reply, against the real archon: Run, StartDaemon, MonitorFD, Monitor,
//! Stop, Signal, List, Ping, Version.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use archon_tests::archon_proto::{Kind, ProcState, Status};
use archon_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------

#[test]
fn run_replies_exit_status() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("Run,/bin/true")?, "ExitStatus,0");
    ensure_eq!(c.request("Run,/bin/false")?, "ExitStatus,1");
    ensure_eq!(c.request("Run,/bin/sh,-c,exit 255")?, "ExitStatus,255");
    Ok(())
}

#[test]
fn exit_codes_0_to_255_pass_through() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let mut requests = Vec::new();
    for n in 0..=255 {
        requests.extend(line(&["Run", "/bin/sh", "-c", &format!("exit {n}")]));
    }
    c.send(&requests)?;
    for n in 0..=255 {
        ensure_eq!(c.reply_text()?, format!("ExitStatus,{n}"), "exit {n}");
    }
    a.wait_no_zombies()
}

#[test]
fn killed_by_signal_gives_128_plus_n_and_name() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    for (sig, want) in [
        ("KILL", "ExitStatus,137,SIGKILL"),
        ("TERM", "ExitStatus,143,SIGTERM"),
        ("USR1", "ExitStatus,138,SIGUSR1"),
        ("HUP", "ExitStatus,129,SIGHUP"),
    ] {
        let script = format!("kill -{sig} $$");
        ensure_eq!(
            c.request_fields(&["Run", "/bin/sh", "-c", &script])?,
            want,
            "sh killing itself with {sig}"
        );
    }
    Ok(())
}

#[test]
fn run_env_simple_form_sets_trailing_assignments() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    // The seed's example, as written.
    let (reply, out) = run_captured_line(&mut c, b"Run,/bin/sh,-c,echo $A,A=1\n")?;
    ensure_eq!(reply, "ExitStatus,0");
    ensure_eq!(out, "1\n");
    // Several assignments, one with a space, applied in order (the last one wins).
    let (reply, out) = run_captured(
        &mut c,
        &[
            "Run",
            "/bin/sh",
            "-c",
            "printf '%s|%s' \"$A\" \"$B\"",
            "A=1",
            "B=x y",
            "A=2",
        ],
    )?;
    ensure_eq!(reply, "ExitStatus,0");
    ensure_eq!(out, "2|x y");
    Ok(())
}

#[test]
fn run_env_explicit_form_takes_argv_as_is() -> Result {
    let a = Archon::builder()
        .env("ARCHON_TEST_VAR", "present")
        .start()?;
    let mut c = a.conn()?;
    // The example of the protocol: echo's argument looks like an assignment but is argv.
    let (reply, out) = run_captured_line(&mut c, b"Run,,2,/bin/echo,A=1,B=2\n")?;
    ensure_eq!(reply, "ExitStatus,0");
    ensure_eq!(out, "A=1\n");
    // ... and B=2 is in its environment.
    let (reply, out) = run_captured(
        &mut c,
        &["Run", "", "3", "/bin/sh", "-c", "echo \"$B\"", "B=2"],
    )?;
    ensure_eq!(reply, "ExitStatus,0");
    ensure_eq!(out, "2\n");
    // An empty argument and an assignment-like one reach the program exactly.
    let (reply, out) = run_captured(
        &mut c,
        &[
            "Run",
            "",
            "6",
            "/bin/sh",
            "-c",
            "printf '[%s]' \"$@\"",
            "sh",
            "",
            "A=1",
        ],
    )?;
    ensure_eq!(reply, "ExitStatus,0");
    ensure_eq!(out, "[][A=1]");
    // A bare NAME removes a variable of archon's own environment.
    let script = "printf %s \"${ARCHON_TEST_VAR-unset}\"";
    let (_, out) = run_captured(&mut c, &["Run", "", "3", "/bin/sh", "-c", script])?;
    ensure_eq!(out, "present", "the variable archon was started with");
    let (reply, out) = run_captured(
        &mut c,
        &["Run", "", "3", "/bin/sh", "-c", script, "ARCHON_TEST_VAR"],
    )?;
    ensure_eq!(reply, "ExitStatus,0");
    ensure_eq!(out, "unset");
    Ok(())
}

#[test]
fn run_sets_archon_socket_for_the_child() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (_, out) = run_captured(
        &mut c,
        &["Run", "/bin/sh", "-c", "printf %s \"$ARCHON_SOCKET\""],
    )?;
    ensure_eq!(out, a.socket().display().to_string());
    Ok(())
}

#[test]
fn run_searches_the_childs_path() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("Run,true")?, "ExitStatus,0");
    ensure_eq!(c.request("Run,sh,-c,exit 4")?, "ExitStatus,4");
    let reply = c.request("Run,true,PATH=/nonexistent")?;
    ensure!(
        reply.starts_with("Error,"),
        "argv0 must be searched in the child's PATH (/nonexistent): got {reply:?}"
    );
    Ok(())
}

#[test]
fn run_of_missing_program_is_error() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let reply = c.request("Run,/nonexistent/program")?;
    ensure!(!error_reason(&reply)?.is_empty(), "empty reason: {reply:?}");
    let reply = c.request("Run,no-such-program-anywhere")?;
    ensure!(reply.starts_with("Error,"), "PATH search miss: {reply:?}");
    ensure_eq!(c.request("Ping")?, "Pong", "the connection goes on");
    Ok(())
}

#[test]
fn run_of_non_executable_is_error() -> Result {
    let a = Archon::start()?;
    let file = a.path("not-executable");
    std::fs::write(&file, "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let mut c = a.conn()?;
    let reply = c.request_fields(&["Run", &file.display().to_string()])?;
    ensure!(reply.starts_with("Error,"), "a mode 0644 file: {reply:?}");
    let reply = c.request_fields(&["Run", &a.dir().display().to_string()])?;
    ensure!(reply.starts_with("Error,"), "a directory: {reply:?}");
    a.wait_no_zombies()
}

// ---------------------------------------------------------------------------------------------
// StartDaemon
// ---------------------------------------------------------------------------------------------

#[test]
fn start_daemon_replies_ok_id_pid_once_executed() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    // The reply comes once the exec has passed its point of no return: the pid runs sleep from
    // then on. The kernel fills /proc/PID/cmdline a moment after that point, so wait for it.
    let want = Some(vec!["/bin/sleep".to_string(), "100".to_string()]);
    wait_until(
        format!("argv of pid {pid} to be sleep's"),
        Duration::from_secs(10),
        || cmdline(pid) == want,
    )?;
    let st = stat(pid).context(format!("pid {pid} does not exist"))?;
    ensure!(st.state != 'Z', "the daemon is a zombie");
    ensure_eq!(st.ppid, a.pid(), "the daemon's parent");
    let (id2, pid2) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    ensure!(id2 != id && pid2 != pid, "two daemons, same id or pid");
    ensure!(alive(pid), "the first daemon died");
    Ok(())
}

#[test]
fn start_daemon_of_missing_program_is_error() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let reply = c.request("StartDaemon,/nonexistent/program,1")?;
    ensure!(reply.starts_with("Error,"), "got {reply:?}");
    let file = a.path("not-executable");
    std::fs::write(&file, "#!/bin/sh\nexit 0\n")?;
    let reply = c.request_fields(&["StartDaemon", &file.display().to_string()])?;
    ensure!(reply.starts_with("Error,"), "a mode 0644 file: {reply:?}");
    a.wait_no_zombies()
}

// ---------------------------------------------------------------------------------------------
// MonitorFD and Monitor
// ---------------------------------------------------------------------------------------------

#[test]
fn monitor_fd_watches_a_child_of_the_test_and_records_its_signal() -> Result {
    let a = Archon::start()?;
    let mut child = ChildGuard::sleep(100)?;
    let pidfd = pidfd_open(child.pid())?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request_with_fds("MonitorFD", &[pidfd.as_raw_fd()])?)?;
    ensure_eq!(pid, child.pid(), "the pid in Ok,<id>,<pid>");
    let row = a.row(id)?.context(format!("List has no row {id}"))?;
    ensure_eq!(row.kind, Kind::Monitor);
    ensure_eq!(row.pid, pid);
    ensure_eq!(row.state, ProcState::Running);
    ensure_eq!(row.status, None);
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    child.child.wait()?;
    let row = wait_for(
        "List to show the monitored process as exited",
        BOUND,
        || {
            a.row(id)
                .ok()
                .flatten()
                .filter(|r| r.state == ProcState::Exited)
        },
    )?;
    ensure_eq!(
        row.status,
        Some(Status::Signaled(9)),
        "status of a SIGKILLed process"
    );
    Ok(())
}

#[test]
fn monitor_fd_status_arrives_when_the_parent_reaps_late() -> Result {
    let a = Archon::start()?;
    let mut child = ChildGuard::sleep(100)?;
    let pidfd = pidfd_open(child.pid())?;
    let fds_before = non_socket_fds(a.pid());
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request_with_fds("MonitorFD", &[pidfd.as_raw_fd()])?)?;
    drop(pidfd);
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    // Ended but not reaped: a zombie, whose exit status the kernel does not give yet.
    wait_until("archon to see the process end", BOUND, || {
        a.row(id)
            .ok()
            .flatten()
            .is_some_and(|r| r.state == ProcState::Exited)
    })?;
    ensure_eq!(stat(pid).map(|s| s.state), Some('Z'), "still unreaped");
    child.child.wait()?;
    let row = wait_for("the status once the parent has reaped", BOUND, || {
        a.row(id)
            .ok()
            .flatten()
            .filter(|r| r.status != Some(Status::Unknown))
    })
    .context(format!("row: {:?}", a.row(id)))?;
    ensure_eq!(row.status, Some(Status::Signaled(9)));
    c.close_and_wait()?;
    wait_until("archon to let go of the pidfd", BOUND, || {
        non_socket_fds(a.pid()) == fds_before
    })
    .context(format!("{:?}", non_socket_fds(a.pid())))?;
    Ok(())
}

#[test]
fn monitor_pid_watches_a_process_and_records_its_exit_code() -> Result {
    let a = Archon::start()?;
    let (r, w) = pipe()?;
    let mut child = ChildGuard {
        child: Command::new("/bin/sh")
            .args(["-c", "read x; exit 7"])
            .stdin(Stdio::from(r))
            .stdout(Stdio::null())
            .spawn()?,
    };
    let pid = child.pid();
    let (id, got) = parse_started(&a.request(&format!("Monitor,{pid}"))?)?;
    ensure_eq!(got, pid);
    let row = a.row(id)?.context(format!("List has no row {id}"))?;
    ensure_eq!(row.kind, Kind::Monitor);
    ensure_eq!(row.state, ProcState::Running);
    nix::unistd::write(&w, b"go\n")?;
    let status = child.child.wait()?;
    ensure_eq!(status.code(), Some(7), "the child's own view");
    let row = wait_for(
        "List to show the monitored process as exited",
        BOUND,
        || {
            a.row(id)
                .ok()
                .flatten()
                .filter(|r| r.state == ProcState::Exited)
        },
    )?;
    ensure_eq!(row.status, Some(Status::Exited(7)));
    Ok(())
}

#[test]
fn monitor_of_missing_pid_is_error() -> Result {
    let a = Archon::start()?;
    // Above any pid_max Linux allows.
    let reply = a.request("Monitor,2147483647")?;
    ensure!(reply.starts_with("Error,"), "got {reply:?}");
    ensure_eq!(a.request("Monitor,0")?, "Error,bad pid");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stop
// ---------------------------------------------------------------------------------------------

/// Children of `pid` whose argv is `argv`, once there are `n` of them.
fn wait_children(pid: i32, argv: &[&str], n: usize) -> Result<Vec<i32>> {
    let want: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    wait_for(format!("{n} children {argv:?} of {pid}"), BOUND, || {
        let kids: Vec<i32> = children_of(pid)
            .into_iter()
            .filter(|&k| cmdline(k).as_ref() == Some(&want))
            .collect();
        (kids.len() == n).then_some(kids)
    })
}

/// Waits until `pid` has executed `argv` (a shell's `exec` has happened).
fn wait_exec(pid: i32, argv: &[&str]) -> Result {
    let want: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    wait_until(format!("pid {pid} to execute {argv:?}"), BOUND, || {
        cmdline(pid).as_ref() == Some(&want)
    })
}

#[test]
fn stop_terms_the_whole_process_group() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request_fields(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "/bin/sleep 100 & /bin/sleep 100 & wait",
    ])?)?;
    let kids = wait_children(pid, &["/bin/sleep", "100"], 2)?;
    for &k in &kids {
        ensure_eq!(stat(k).map(|s| s.pgrp), Some(pid), "group of {k}");
    }
    ensure_eq!(
        c.request(&format!("Stop,{id}"))?,
        format!("Ok,{id},SIGTERM")
    );
    ensure!(!exists(pid), "Stop replied before the process was reaped");
    for k in kids {
        wait_gone(k, "a sleep in the stopped group")?;
    }
    let row = a.row(id)?.context("the stopped row is kept")?;
    ensure_eq!(row.state, ProcState::Exited);
    ensure_eq!(row.status, Some(Status::Signaled(15)));
    a.wait_no_zombies()
}

#[test]
fn stop_kills_after_the_grace_when_term_is_ignored() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request_fields(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "trap '' TERM; exec /bin/sleep 100",
    ])?)?;
    wait_exec(pid, &["/bin/sleep", "100"])?;
    let ign = u64::from_str_radix(&status_field(pid, "SigIgn")?, 16)?;
    ensure!(
        ign & (1 << 14) != 0,
        "the daemon should ignore SIGTERM (SigIgn {ign:x})"
    );
    ensure_eq!(
        c.request(&format!("Stop,{id},200"))?,
        format!("Ok,{id},SIGKILL")
    );
    wait_gone(pid, "the stopped daemon")?;
    Ok(())
}

#[test]
fn stop_grace_defaults_to_the_command_line() -> Result {
    let a = Archon::with_args(["--stop-grace", "200"])?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request_fields(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "trap '' TERM; exec /bin/sleep 100",
    ])?)?;
    wait_exec(pid, &["/bin/sleep", "100"])?;
    ensure_eq!(
        c.request(&format!("Stop,{id}"))?,
        format!("Ok,{id},SIGKILL")
    );
    Ok(())
}

#[test]
fn stop_replies_the_exit_code() -> Result {
    let a = Archon::start()?;
    let ready = a.path("ready");
    let script = format!(
        "trap 'exit 3' TERM; touch '{}'; while :; do /bin/sleep 0.05; done",
        ready.display()
    );
    let mut c = a.conn()?;
    let (id, _) = parse_started(&c.request_fields(&["StartDaemon", "/bin/sh", "-c", &script])?)?;
    wait_until("the daemon's trap to be set", BOUND, || ready.exists())?;
    ensure_eq!(c.request(&format!("Stop,{id}"))?, format!("Ok,{id},3"));
    Ok(())
}

#[test]
fn stop_of_unknown_or_ended_process_is_error() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let reply = c.request("Stop,999999")?;
    ensure!(reply.starts_with("Error,"), "unknown id: {reply:?}");
    let (id, _) = parse_started(&c.request("StartDaemon,/bin/true")?)?;
    wait_until("the daemon to end", BOUND, || {
        a.row(id)
            .ok()
            .flatten()
            .is_some_and(|r| r.state == ProcState::Exited)
    })?;
    let reply = c.request(&format!("Stop,{id}"))?;
    ensure!(reply.starts_with("Error,"), "ended process: {reply:?}");
    ensure_eq!(c.request("Stop,99999999999999999999")?, "Error,bad id");
    ensure_eq!(c.request("Stop,x")?, "Error,no such service: x");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Signal
// ---------------------------------------------------------------------------------------------

#[test]
fn signal_by_name_or_number_reaches_the_process() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    for (sig, status) in [("term", 15), ("SIGHUP", 1), ("9", 9), ("Usr2", 12)] {
        let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
        ensure_eq!(c.request(&format!("Signal,{id},0"))?, format!("Ok,{id}"));
        ensure!(alive(pid), "signal 0 must not hurt");
        ensure_eq!(
            c.request(&format!("Signal,{id},{sig}"))?,
            format!("Ok,{id}")
        );
        let row = wait_for(format!("the daemon to die of {sig}"), BOUND, || {
            a.row(id)
                .ok()
                .flatten()
                .filter(|r| r.state == ProcState::Exited)
        })?;
        ensure_eq!(
            row.status,
            Some(Status::Signaled(status)),
            "after Signal {sig}"
        );
    }
    ensure_eq!(c.request("Signal,1,SIGNOPE")?, "Error,bad signal");
    let reply = c.request("Signal,999999,TERM")?;
    ensure!(reply.starts_with("Error,"), "unknown id: {reply:?}");
    Ok(())
}

#[test]
fn signal_without_group_reaches_only_the_process() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request_fields(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "/bin/sleep 100 & wait",
    ])?)?;
    let kid = wait_children(pid, &["/bin/sleep", "100"], 1)?[0];
    ensure_eq!(c.request(&format!("Signal,{id},KILL"))?, format!("Ok,{id}"));
    wait_gone(pid, "the signalled shell")?;
    ensure!(
        alive(kid),
        "the shell's child in its group was signalled too"
    );
    // Orphaned, it is now archon's (PR_SET_CHILD_SUBREAPER).
    wait_until("the orphan to be reparented to archon", BOUND, || {
        stat(kid).is_some_and(|s| s.ppid == a.pid())
    })?;
    Ok(())
}

#[test]
fn signal_with_group_reaches_the_whole_group() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (id, pid) = parse_started(&c.request_fields(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "/bin/sleep 100 & wait",
    ])?)?;
    let kid = wait_children(pid, &["/bin/sleep", "100"], 1)?[0];
    ensure_eq!(
        c.request(&format!("Signal,{id},KILL,group"))?,
        format!("Ok,{id}")
    );
    wait_gone(pid, "the signalled shell")?;
    wait_gone(kid, "the shell's child")?;
    a.wait_no_zombies()
}

// ---------------------------------------------------------------------------------------------
// List, Ping, Version
// ---------------------------------------------------------------------------------------------

#[test]
fn list_rows_describe_each_process() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("List")?, "List,0", "a fresh archon");
    let t0 = now_ms();
    let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    ensure_eq!(c.request("Run,/bin/sh,-c,exit 7")?, "ExitStatus,7");
    let t1 = now_ms();
    let text = c.request("List")?;
    ensure!(text.starts_with("List,2\n"), "header: {text:?}");
    let rows = c.list()?;
    ensure_eq!(rows.len(), 2, "rows: {rows:?}");
    let d = rows
        .iter()
        .find(|r| r.id == id)
        .context(format!("no row {id}: {rows:?}"))?;
    ensure_eq!(d.kind, Kind::Daemon);
    ensure_eq!(d.pid, pid);
    ensure_eq!(d.state, ProcState::Running);
    ensure_eq!(d.status, None);
    ensure_eq!(d.argv, vec![b"/bin/sleep".to_vec(), b"100".to_vec()]);
    ensure!(
        d.started_ms + 1000 >= t0 && d.started_ms <= t1 + 1000,
        "start time {} not between {t0} and {t1}",
        d.started_ms
    );
    let r = rows
        .iter()
        .find(|r| r.kind == Kind::Run)
        .context("no run row")?;
    ensure_eq!(r.state, ProcState::Exited);
    ensure_eq!(r.status, Some(Status::Exited(7)));
    ensure_eq!(
        r.argv,
        vec![b"/bin/sh".to_vec(), b"-c".to_vec(), b"exit 7".to_vec()]
    );
    ensure!(r.id != id, "two processes with id {id}");
    Ok(())
}

#[test]
fn list_keeps_at_most_128_ended_processes_dropping_the_oldest() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    // One after the other, so that the order they started in is the order they ended in.
    for n in 0..130 {
        ensure_eq!(
            c.request_fields(&["Run", "/bin/sh", "-c", "exit 0", &n.to_string()])?,
            "ExitStatus,0"
        );
    }
    let rows = c.list()?;
    ensure_eq!(rows.len(), 128);
    let mut kept: Vec<u32> = rows
        .iter()
        .filter_map(|r| String::from_utf8_lossy(r.argv.get(3)?).parse().ok())
        .collect();
    kept.sort_unstable();
    ensure_eq!(kept, (2..130).collect::<Vec<u32>>(), "which runs are kept");
    Ok(())
}

#[test]
fn ping_replies_pong() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("Ping")?, "Pong");
    ensure_eq!(c.request("Ping\r\n")?, "Pong", "CRLF accepted");
    Ok(())
}

#[test]
fn version_replies_archon_and_protocol_versions() -> Result {
    let a = Archon::start()?;
    ensure_eq!(
        a.request("Version")?,
        format!("Version,{},1", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}

#[test]
fn stop_right_after_a_run_starts_still_sends_term() -> Result {
    // A Run is stoppable from its fork on, before the child has made its own process group: the
    // SIGTERM must reach it all the same (not be lost until the SIGKILL of the grace period).
    // The Run and the Stop arrive together on two connections, so that archon handles them in one
    // turn of its loop, while the child is still on its way to exec.
    for attempt in 0..20 {
        let a = Archon::with_args(["--log-level", "debug"])?;
        let mut run = a.conn()?;
        let mut stop = a.conn()?;
        run.send(b"Run,/bin/sleep,100\n")?;
        stop.send(b"Stop,1,5000\n")?;
        let reply = stop.reply_text()?;
        if reply.starts_with("Error,") {
            // The Stop came first: nothing to stop yet. Try again.
            continue;
        }
        ensure_eq!(
            reply,
            "Ok,1,SIGTERM",
            "attempt {attempt}: Stop right after the Run"
        );
        ensure_eq!(
            run.reply_text()?,
            "ExitStatus,143,SIGTERM",
            "attempt {attempt}"
        );
    }
    Ok(())
}

#[test]
fn malformed_commands_are_errors() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("Run")?, "Error,missing command");
    ensure_eq!(c.request("StartDaemon,")?, "Error,missing command");
    ensure_eq!(
        c.request("Run,,x,/bin/true")?,
        "Error,explicit form: bad argument count"
    );
    ensure_eq!(
        c.request("Run,,0,/bin/true")?,
        "Error,explicit form: bad argument count"
    );
    ensure_eq!(
        c.request("Run,,3,/bin/true")?,
        "Error,explicit form: bad argument count"
    );
    ensure_eq!(c.request("Run,,1,")?, "Error,empty program name");
    ensure_eq!(
        c.request("Run,,1,/bin/true,=x")?,
        "Error,explicit form: empty environment variable name"
    );
    ensure_eq!(c.request("List")?, "List,0", "nothing was started");
    Ok(())
}

#[test]
fn stop_of_a_monitored_process_that_leads_no_group_signals_only_it() -> Result {
    use std::os::unix::process::CommandExt;
    let a = Archon::start()?;
    // A shell leading its own group, with a sleep in that group: the sleep leads nothing. When
    // the sleep ends, the shell lives on (as another sleep, same pid) unless it was signalled.
    let shell = ChildGuard::spawn(
        Command::new("/bin/sh")
            .args(["-c", "/bin/sleep 100 & wait; exec /bin/sleep 99"])
            .process_group(0),
    )?;
    let sleep = wait_for("the shell's sleep", BOUND, || {
        children_of(shell.pid())
            .into_iter()
            .find(|&k| cmdline(k).is_some_and(|v| v == ["/bin/sleep", "100"]))
    })?;
    let (id, _) = parse_started(&a.request(&format!("Monitor,{sleep}"))?)?;
    let reply = a.request(&format!("Stop,{id},5000"))?;
    ensure!(
        reply == format!("Ok,{id},SIGTERM") || reply == format!("Ok,{id},unknown"),
        "Stop of the monitored sleep: {reply:?}"
    );
    wait_until("the shell to go on after its sleep", BOUND, || {
        cmdline(shell.pid()).is_some_and(|v| v == ["/bin/sleep", "99"]) || !alive(shell.pid())
    })?;
    ensure!(
        alive(shell.pid()),
        "the shell leading the sleep's group was signalled too"
    );
    ensure!(!alive(sleep), "the stopped sleep lives on");
    Ok(())
}
