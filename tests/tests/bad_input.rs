//! Bad input: every case gets its defined reply and changes nothing else: archon goes on serving,
//! no fd is leaked, no child is lost.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use archon_tests::archon_proto::limits::{MAX_CLIENTS, MAX_REQUEST_LEN};
use archon_tests::archon_proto::{FrameError, Kind, ProcState, Status};
use archon_tests::*;

/// The reason of a reply that must be `Error,<reason>`, compared field-wise (the reason may be
/// quoted on the wire).
fn ensure_error(reply: &str, want: &str) -> Result {
    ensure_eq!(error_reason(reply)?, want, "reason of {reply:?}");
    Ok(())
}

/// `n` pipes: the read ends, and the write ends to attach to a request.
fn pipes(n: usize) -> Result<(Vec<OwnedFd>, Vec<OwnedFd>)> {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for _ in 0..n {
        let (r, w) = pipe()?;
        reads.push(r);
        writes.push(w);
    }
    Ok((reads, writes))
}

/// Fails unless every pipe's write end is closed everywhere (archon closed the copy it received).
fn ensure_all_closed(reads: &[OwnedFd]) -> Result {
    for (i, r) in reads.iter().enumerate() {
        read_to_eof(r, BOUND).context(format!("fd #{i} attached to the request is still open"))?;
    }
    Ok(())
}

fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}

#[test]
fn unknown_verb_is_error_and_the_connection_goes_on() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(
        c.request("Frobnicate,1")?,
        "Error,unknown request: Frobnicate"
    );
    ensure_eq!(c.request("ping")?, "Error,unknown request: ping");
    ensure_eq!(c.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn empty_line_is_error() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("\n")?, "Error,empty request");
    ensure_eq!(c.request("\r\n")?, "Error,empty request");
    ensure_eq!(c.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn stray_quote_is_answered_at_once() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let touched = a.path("touched");
    let f = touched.display().to_string();
    // A quote inside an unquoted field; the line ends, the reply comes without more input.
    c.send(format!("Run,/bin/touch,{f}\"x\n").as_bytes())?;
    ensure_error(&c.reply_text()?, FrameError::StrayQuote.reason())?;
    // Text after a closing quote.
    c.send(format!("Run,/bin/touch,\"{f}\"x\n").as_bytes())?;
    ensure_error(&c.reply_text()?, FrameError::AfterQuote.reason())?;
    ensure_eq!(c.request("Ping")?, "Pong", "the next line is read afresh");
    ensure!(!touched.exists(), "a malformed Run was executed");
    Ok(())
}

#[test]
fn open_quote_is_answered_at_half_close() -> Result {
    let a = Archon::start()?;
    let touched = a.path("touched");
    let mut c = a.conn()?;
    // The quote swallows the newlines: everything after it is one unfinished field.
    c.send(format!("Run,/bin/touch,\"{}\nPing\n", touched.display()).as_bytes())?;
    c.wait_consumed()?;
    ensure_eq!(a.request("Ping")?, "Pong", "another client");
    ensure!(!c.has_data()?, "a reply came before the quote was closed");
    c.shutdown_write()?;
    ensure_error(&c.reply_text()?, FrameError::UnbalancedQuote.reason())?;
    c.expect_eof()?;
    ensure!(!touched.exists(), "the unterminated Run was executed");
    Ok(())
}

#[test]
fn nul_byte_is_error() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(c.request("Pi\0ng")?, "Error,NUL byte in request");
    ensure_eq!(
        c.request("Run,\"/bin/\0true\"")?,
        "Error,NUL byte in request",
        "quoted"
    );
    ensure_eq!(c.request("Ping")?, "Pong");
    Ok(())
}

/// `Run,/bin/sh,-c,exit 5,X=xxx...` padded to `len` bytes, `\n` included.
fn padded_run(len: usize) -> Vec<u8> {
    let base = line(&["Run", "/bin/sh", "-c", "exit 5", "X="]).len();
    let pad = "x".repeat(len - base);
    line(&["Run", "/bin/sh", "-c", "exit 5", &format!("X={pad}")])
}

#[test]
fn line_at_the_limit_is_accepted() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let req = padded_run(MAX_REQUEST_LEN);
    ensure_eq!(req.len(), MAX_REQUEST_LEN);
    c.send(&req)?;
    ensure_eq!(c.reply_text()?, "ExitStatus,5");
    ensure_eq!(c.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn line_over_the_limit_gets_a_reply_then_eof() -> Result {
    let a = Archon::start()?;
    let want = format!("Error,request too long (limit {MAX_REQUEST_LEN} bytes)");
    // One byte over, as a valid request.
    let mut c = a.conn()?;
    // archon may close before it has read everything: a failed write is no failure here.
    let _ = c.send(&padded_run(MAX_REQUEST_LEN + 1));
    ensure_eq!(c.reply_text()?, want);
    c.expect_eof()?;
    // Endless garbage without a newline.
    let mut c = a.conn()?;
    let _ = c.send(&vec![b'a'; 3 * MAX_REQUEST_LEN]);
    ensure_eq!(c.reply_text()?, want);
    c.expect_eof()?;
    // Endless quoted field.
    let mut c = a.conn()?;
    let mut req = b"Run,\"".to_vec();
    req.resize(2 * MAX_REQUEST_LEN, b'\n');
    let _ = c.send(&req);
    ensure_eq!(c.reply_text()?, want);
    c.expect_eof()?;
    ensure_eq!(a.request("Ping")?, "Pong", "archon goes on serving");
    Ok(())
}

#[test]
fn disconnect_mid_line_executes_nothing() -> Result {
    let a = Archon::start()?;
    let touched = a.path("touched");
    let sockets_before = socket_count(a.pid());
    let mut c = a.conn()?;
    c.send(format!("Run,/bin/touch,{}", touched.display()).as_bytes())?;
    c.wait_consumed()?;
    drop(c);
    // archon has seen the end of the stream once it has closed its side of the connection.
    wait_until("archon to close the connection", BOUND, || {
        socket_count(a.pid()) <= sockets_before
    })?;
    ensure_eq!(a.request("Run,/bin/true")?, "ExitStatus,0");
    ensure!(!touched.exists(), "the unterminated Run was executed");
    let rows = a.list()?;
    ensure_eq!(rows.len(), 1, "only the /bin/true run: {rows:?}");
    Ok(())
}

#[test]
fn half_close_mid_line_is_error_and_executes_nothing() -> Result {
    let a = Archon::start()?;
    let touched = a.path("touched");
    let mut c = a.conn()?;
    c.send(format!("Run,/bin/touch,{}", touched.display()).as_bytes())?;
    c.shutdown_write()?;
    ensure_error(&c.reply_text()?, FrameError::Unterminated.reason())?;
    c.expect_eof()?;
    ensure_eq!(a.request("List")?, "List,0");
    ensure!(!touched.exists(), "the unterminated Run was executed");
    Ok(())
}

#[test]
fn disconnect_before_run_ends_lets_it_complete_and_be_reaped() -> Result {
    let a = Archon::start()?;
    let done = a.path("done");
    let script = format!("/bin/sleep 0.3; touch '{}'", done.display());
    let mut c = a.conn()?;
    c.send(&line(&["Run", "/bin/sh", "-c", &script]))?;
    c.wait_consumed()?;
    drop(c);
    wait_until("the Run of the departed client to finish", BOUND, || {
        done.exists()
    })?;
    let row = wait_for("the Run to be reaped", BOUND, || {
        a.list()
            .ok()?
            .into_iter()
            .find(|r| r.kind == Kind::Run && r.state == ProcState::Exited)
    })?;
    ensure_eq!(
        row.status,
        Some(archon_tests::archon_proto::Status::Exited(0))
    );
    a.wait_no_zombies()?;
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn fds_where_none_are_taken_are_refused_and_closed() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    let (reads, writes) = pipes(1)?;
    ensure_error(
        &c.request_with_fds("Ping", &raw(&writes))?,
        "Ping takes no fds, got 1",
    )?;
    drop(writes);
    ensure_all_closed(&reads)?;
    let (reads, writes) = pipes(2)?;
    ensure_error(
        &c.request_with_fds("List", &raw(&writes))?,
        "List takes no fds, got 2",
    )?;
    drop(writes);
    ensure_all_closed(&reads)?;
    // A Stop with an fd does nothing.
    let (id, pid) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    let (reads, writes) = pipes(1)?;
    ensure_error(
        &c.request_with_fds(&format!("Stop,{id}"), &raw(&writes))?,
        "Stop takes no fds, got 1",
    )?;
    drop(writes);
    ensure_all_closed(&reads)?;
    ensure!(alive(pid), "the daemon was stopped by a refused request");
    ensure_eq!(c.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn monitor_fd_without_exactly_one_pidfd_is_refused() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    ensure_eq!(
        c.request("MonitorFD")?,
        "Error,MonitorFD needs a pidfd attached"
    );
    let child = ChildGuard::sleep(100)?;
    let p1 = pidfd_open(child.pid())?;
    let p2 = pidfd_open(child.pid())?;
    ensure_error(
        &c.request_with_fds("MonitorFD", &[p1.as_raw_fd(), p2.as_raw_fd()])?,
        "MonitorFD takes exactly one pidfd, got 2",
    )?;
    // Not a pidfd: refused, and the fd is closed.
    let (reads, writes) = pipes(1)?;
    let reply = c.request_with_fds("MonitorFD", &raw(&writes))?;
    ensure!(reply.starts_with("Error,"), "a pipe as pidfd: {reply:?}");
    drop(writes);
    ensure_all_closed(&reads)?;
    let rows = c.list()?;
    ensure!(rows.is_empty(), "a refused MonitorFD left a row: {rows:?}");
    ensure_eq!(c.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn four_or_more_fds_are_refused_and_all_closed() -> Result {
    let a = Archon::start()?;
    let touched = a.path("touched");
    let fds_before = non_socket_fds(a.pid());
    let mut c = a.conn()?;
    for (verb, n) in [("Run", 4), ("StartDaemon", 5), ("Run", 40)] {
        let (reads, writes) = pipes(n)?;
        let req = format!("{verb},/bin/touch,{}", touched.display());
        ensure_error(
            &c.request_with_fds(&req, &raw(&writes))?,
            &format!("too many fds: {verb} takes at most 3, got {n}"),
        )?;
        drop(writes);
        ensure_all_closed(&reads)?;
    }
    ensure_eq!(c.request("Ping")?, "Pong");
    c.close_and_wait()?;
    let fds_after = non_socket_fds(a.pid());
    ensure_eq!(fds_after, fds_before, "archon's fds other than sockets");
    ensure!(!touched.exists(), "a refused Run was executed");
    Ok(())
}

/// Raises this process's soft RLIMIT_NOFILE to at least `n` (harmless for the other tests).
fn raise_nofile(n: u64) -> Result {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < n {
        ensure!(hard >= n, "RLIMIT_NOFILE hard limit {hard} < {n}");
        setrlimit(Resource::RLIMIT_NOFILE, n, hard)?;
    }
    Ok(())
}

#[test]
fn burst_over_max_clients_gets_too_many_clients_then_service_resumes() -> Result {
    raise_nofile(4096)?;
    let a = Archon::start()?;
    let mut conns = Vec::new();
    for i in 0..MAX_CLIENTS {
        let mut c = a.conn()?;
        ensure_eq!(c.request("Ping")?, "Pong", "client #{i}");
        conns.push(c);
    }
    let mut extra = a.conn()?;
    let _ = extra.send(b"Ping\n");
    ensure_eq!(extra.reply_text()?, "Error,too many clients");
    extra.expect_eof()?;
    // The others are still served.
    for (i, c) in conns.iter_mut().enumerate().step_by(51) {
        ensure_eq!(c.request("Ping")?, "Pong", "client #{i} after the refusal");
    }
    drop(conns);
    wait_until("a new client to be served", BOUND, || {
        a.conn()
            .and_then(|mut c| c.request("Ping"))
            .is_ok_and(|r| r == "Pong")
    })?;
    Ok(())
}

#[test]
fn peer_with_another_uid_is_refused() -> Result {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root to connect as another uid");
        return Ok(());
    }
    use std::os::unix::fs::PermissionsExt;
    let a = Archon::start()?;
    // Let uid 65534 reach the socket, so that only archon's own check stands in its way.
    std::fs::set_permissions(a.dir(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(a.socket(), std::fs::Permissions::from_mode(0o666))?;
    let mut c = Conn::from_stream(connect_as(65534, 65534, a.socket())?)?;
    let _ = c.send(b"Ping\n");
    ensure_eq!(c.reply_text()?, "Error,permission denied");
    c.expect_eof()?;
    ensure_eq!(
        a.request("Ping")?,
        "Pong",
        "archon's own uid is still served"
    );
    Ok(())
}

#[test]
fn no_fd_is_left_open_after_a_mixed_workload() -> Result {
    let a = Archon::start()?;
    let before = non_socket_fds(a.pid());
    let mut c = a.conn()?;
    // Runs with stdio attached, one that cannot be executed.
    let (reads, writes) = pipes(3)?;
    ensure_eq!(
        c.request_with_fds("Run,/bin/sh,-c,echo x; echo y >&2", &raw(&writes))?,
        "ExitStatus,0"
    );
    drop((reads, writes));
    let (reads, writes) = pipes(2)?;
    let reply = c.request_with_fds("Run,/nonexistent/program", &raw(&writes))?;
    ensure!(reply.starts_with("Error,"), "got {reply:?}");
    drop((reads, writes));
    // A daemon with stdio, stopped.
    let (reads, writes) = pipes(3)?;
    let (id, _) = parse_started(&c.request_with_fds("StartDaemon,/bin/sleep,100", &raw(&writes))?)?;
    drop((reads, writes));
    // archon keeps a stopped process's pidfd until its grace period ends (to SIGKILL what is
    // left of its group then): a short one.
    ensure_eq!(
        c.request(&format!("Stop,{id},100"))?,
        format!("Ok,{id},SIGTERM")
    );
    // A monitored child of the test, ended and reaped.
    let mut child = ChildGuard::sleep(100)?;
    let pidfd = pidfd_open(child.pid())?;
    let (mid, _) = parse_started(&c.request_with_fds("MonitorFD", &[pidfd.as_raw_fd()])?)?;
    drop(pidfd);
    child.child.kill()?;
    child.child.wait()?;
    wait_until("the monitored child to be seen ending", BOUND, || {
        a.row(mid)
            .ok()
            .flatten()
            .is_some_and(|r| r.state == ProcState::Exited && r.status != Some(Status::Unknown))
    })
    .context(format!("row: {:?}", a.row(mid)))?;
    // Refused requests with fds.
    let (reads, writes) = pipes(5)?;
    let reply = c.request_with_fds("Run,/bin/true", &raw(&writes))?;
    ensure!(reply.starts_with("Error,"), "got {reply:?}");
    drop((reads, writes));
    c.close_and_wait()?;
    wait_until("archon's fds to be those it started with", BOUND, || {
        non_socket_fds(a.pid()) == before
    })
    .context(format!(
        "before: {before:?}\nnow: {:?}",
        non_socket_fds(a.pid())
    ))?;
    Ok(())
}
