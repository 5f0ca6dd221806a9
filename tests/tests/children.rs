//! What a child of archon gets: stdio from the request's fds, only fds 0-2, its own session and
//! process group, default signals, archon's cwd and the documented environment; and every process
//! that becomes archon's child is reaped.

use std::os::fd::AsRawFd;

use archon_tests::*;

/// The target of `/proc/PID/fd/FD`.
fn fd_target(pid: i32, fd: i32) -> Result<String> {
    Ok(std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .context(format!("readlink /proc/{pid}/fd/{fd}"))?
        .display()
        .to_string())
}

#[test]
fn child_has_only_fds_0_to_2() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (_, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    wait_in_nanosleep(pid)?;
    ensure_eq!(
        open_fds(pid)?,
        vec![0, 1, 2],
        "fds of the daemon: {:?}",
        fd_targets(pid)
    );
    // With all three stdio fds attached, still nothing else.
    let null = dev_null()?;
    let (_r1, w1) = pipe()?;
    let (_r2, w2) = pipe()?;
    let reply = c.request_with_fds(
        "StartDaemon,/bin/sleep,100",
        &[null.as_raw_fd(), w1.as_raw_fd(), w2.as_raw_fd()],
    )?;
    let (_, pid) = parse_started(&reply)?;
    wait_in_nanosleep(pid)?;
    ensure_eq!(
        open_fds(pid)?,
        vec![0, 1, 2],
        "fds of the daemon: {:?}",
        fd_targets(pid)
    );
    Ok(())
}

#[test]
fn default_stdin_is_dev_null_and_output_goes_to_archons_stderr() -> Result {
    let a = Archon::start()?;
    let (_, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100")?)?;
    ensure_eq!(fd_target(pid, 0)?, "/dev/null");
    let log = fd_target(a.pid(), 2)?;
    ensure_eq!(fd_target(pid, 1)?, log.clone(), "stdout");
    ensure_eq!(fd_target(pid, 2)?, log, "stderr");
    ensure_eq!(
        a.request("Run,/bin/echo,marker-from-a-child")?,
        "ExitStatus,0"
    );
    ensure!(
        a.log_text().contains("marker-from-a-child\n"),
        "the child's output is not in archon's stderr"
    );
    Ok(())
}

#[test]
fn stdin_and_stdout_fds_are_passed() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (in_r, in_w) = pipe()?;
    nix::unistd::write(&in_w, b"hello through archon\n")?;
    drop(in_w);
    let (out_r, out_w) = pipe()?;
    let reply = c.request_with_fds("Run,/bin/cat", &[in_r.as_raw_fd(), out_w.as_raw_fd()])?;
    drop((in_r, out_w));
    ensure_eq!(reply, "ExitStatus,0");
    ensure_eq!(read_text(&out_r, BOUND)?, "hello through archon\n");
    Ok(())
}

#[test]
fn one_fd_is_stdin_only() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (in_r, in_w) = pipe()?;
    nix::unistd::write(&in_w, b"42\n")?;
    drop(in_w);
    let reply = c.request_with_fds("Run,/bin/sh,-c,read x; exit $x", &[in_r.as_raw_fd()])?;
    ensure_eq!(reply, "ExitStatus,42");
    Ok(())
}

#[test]
fn three_fds_are_stdin_stdout_stderr() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let null = dev_null()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let req = line(&["Run", "/bin/sh", "-c", "echo out; echo err >&2; exit 3"]);
    c.send_with_fds(
        &req,
        &[null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
    )?;
    drop((null, out_w, err_w));
    ensure_eq!(c.reply_text()?, "ExitStatus,3");
    ensure_eq!(read_text(&out_r, BOUND)?, "out\n", "stdout");
    ensure_eq!(read_text(&err_r, BOUND)?, "err\n", "stderr");
    Ok(())
}

#[test]
fn daemon_stdout_fd_is_passed() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let null = dev_null()?;
    let (out_r, out_w) = pipe()?;
    let req = line(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "echo up; exec /bin/sleep 100",
    ]);
    c.send_with_fds(&req, &[null.as_raw_fd(), out_w.as_raw_fd()])?;
    drop((null, out_w));
    let (id, _) = parse_started(&c.reply_text()?)?;
    ensure_eq!(read_line(&out_r)?, "up");
    // Stopping it closes the last write end: archon kept no copy.
    ensure_eq!(
        c.request(&format!("Stop,{id}"))?,
        format!("Ok,{id},SIGTERM")
    );
    ensure_eq!(read_text(&out_r, BOUND)?, "");
    Ok(())
}

#[test]
fn exec_failure_closes_the_attached_fds() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (out_r, out_w) = pipe()?;
    let null = dev_null()?;
    let reply = c.request_with_fds(
        "Run,/nonexistent/program",
        &[null.as_raw_fd(), out_w.as_raw_fd()],
    )?;
    drop(out_w);
    ensure!(reply.starts_with("Error,"), "got {reply:?}");
    read_to_eof(&out_r, BOUND).context("the stdout fd of a failed Run")?;
    Ok(())
}

#[test]
fn child_leads_its_own_session_and_process_group() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (_, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    let st = stat(pid).context("the daemon is gone")?;
    ensure_eq!(st.session, pid, "session");
    ensure_eq!(st.pgrp, pid, "process group");
    // A Run too: its pid, group and session, as the shell sees them.
    let (reply, out) = run_captured(
        &mut c,
        &[
            "Run",
            "/bin/sh",
            "-c",
            "echo $$ $(cut -d' ' -f5,6 /proc/$$/stat)",
        ],
    )?;
    ensure_eq!(reply, "ExitStatus,0");
    let words: Vec<&str> = out.split_whitespace().collect();
    ensure!(
        words.len() == 3 && words.iter().all(|w| *w == words[0]),
        "pid, group, session of a Run: {out:?}"
    );
    Ok(())
}

/// Signals 32 and 33, which glibc keeps for itself (SIGCANCEL, SIGSETXID), in `SigIgn`'s bits.
const GLIBC_INTERNAL: u64 = (1 << 31) | (1 << 32);

fn sig_set(pid: i32, key: &str) -> Result<u64> {
    Ok(u64::from_str_radix(&status_field(pid, key)?, 16)?)
}

#[test]
fn child_has_default_signal_mask_and_dispositions() -> Result {
    // The test (Rust) ignores SIGPIPE and passes that on to archon: the child must not inherit it.
    let a = Archon::start()?;
    ensure!(
        sig_set(a.pid(), "SigIgn")? & (1 << 12) != 0,
        "archon was expected to start with SIGPIPE ignored (the test's own setting)"
    );
    let (_, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100")?)?;
    ensure_eq!(sig_set(pid, "SigBlk")?, 0, "blocked signals");
    ensure_eq!(
        sig_set(pid, "SigIgn")? & !GLIBC_INTERNAL,
        0,
        "ignored signals (SigIgn {})",
        status_field(pid, "SigIgn")?
    );
    Ok(())
}

#[test]
fn child_does_not_inherit_ignored_signals_32_and_33() -> Result {
    // Processes started with posix_spawn (as Rust's std starts archon here) begin with signals 32
    // and 33 ignored; glibc's sigaction() refuses to touch them, so only a raw rt_sigaction can
    // give the child their default disposition back.
    let a = Archon::start()?;
    let (_, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100")?)?;
    ensure_eq!(
        sig_set(pid, "SigIgn")? & GLIBC_INTERNAL,
        0,
        "signals 32 and 33 ignored in the child (archon's own SigIgn: {})",
        status_field(a.pid(), "SigIgn")?
    );
    Ok(())
}

#[test]
fn child_cwd_is_archons_cwd() -> Result {
    let a = Archon::start()?;
    let (_, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100")?)?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))?;
    let archon_cwd = std::fs::read_link(format!("/proc/{}/cwd", a.pid()))?;
    ensure_eq!(cwd, archon_cwd);
    ensure_eq!(cwd, a.dir().canonicalize()?, "archon runs in its temp dir");
    Ok(())
}

#[test]
fn child_environment_is_archons_minus_service_manager_variables() -> Result {
    let a = Archon::builder()
        .env("LISTEN_FDS", "3")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "x")
        .env("WATCHDOG_USEC", "60000000")
        .env("WATCHDOG_PID", "1")
        .env("ARCHON_TEST_KEEP", "kept")
        .start()?;
    let (_, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100,ADDED=1")?)?;
    let env = environ(pid)?;
    for gone in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "NOTIFY_SOCKET",
    ] {
        ensure!(
            !env.iter().any(|e| e.starts_with(&format!("{gone}="))),
            "{gone} reached the child: {env:?}"
        );
    }
    for want in [
        "ARCHON_TEST_KEEP=kept".to_string(),
        "ADDED=1".to_string(),
        format!("ARCHON_SOCKET={}", a.socket().display()),
    ] {
        ensure!(env.contains(&want), "{want} missing from {env:?}");
    }
    Ok(())
}

#[test]
fn program_is_found_without_path_in_archons_environment() -> Result {
    let a = Archon::builder().env_clear().start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("Run,true")?, "ExitStatus,0");
    ensure_eq!(c.request("Run,sh,-c,exit 4")?, "ExitStatus,4");
    Ok(())
}

#[test]
fn double_forked_grandchild_is_reaped() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    // The subshell starts a sleep and exits at once: the sleep is orphaned, then ends.
    let (reply, out) = run_captured(
        &mut c,
        &[
            "Run",
            "/bin/sh",
            "-c",
            "( /bin/sleep 0.3 >/dev/null 2>&1 & echo $! ); exit 0",
        ],
    )?;
    ensure_eq!(reply, "ExitStatus,0");
    let gc: i32 = out
        .trim()
        .parse()
        .context(format!("grandchild pid in {out:?}"))?;
    // While it lives, its parent is archon (subreaper); once it ends, nothing is left of it.
    if let Some(st) = stat(gc).filter(|s| s.state != 'Z') {
        ensure_eq!(st.ppid, a.pid(), "the orphan's parent");
    }
    wait_gone(gc, "the orphaned grandchild")?;
    a.ensure_no_zombies()
}

#[test]
fn orphans_of_a_daemon_are_reaped() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    // A daemon that leaves many short-lived orphans behind, and lives on.
    let script = "for i in 1 2 3 4 5 6 7 8; do ( /bin/sleep 0.1 & ); done; exec /bin/sleep 100";
    let (_, pid) = parse_started(&c.request_fields(&["StartDaemon", "/bin/sh", "-c", script])?)?;
    wait_until("the daemon to exec its sleep", BOUND, || {
        cmdline(pid).is_some_and(|v| v == ["/bin/sleep", "100"])
    })?;
    wait_until("the orphans to end and be reaped", BOUND, || {
        children_of(a.pid()).iter().all(|&k| k == pid)
    })
    .context(format!("archon's children: {:?}", children_of(a.pid())))?;
    a.ensure_no_zombies()
}
