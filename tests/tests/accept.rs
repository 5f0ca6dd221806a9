//! Per-connection instances, named after archon.lua(5)'s `accept`: archon accepts each
//! connection on the sockets of an `accept = true` service and starts an instance per
//! connection, with the connection as its stdin, stdout and fd 3 and the peer in its
//! environment (ucspi style); at `max_connections` it stops accepting (connections wait in the
//! backlog, and archon does not spin: counted in context switches, as the idle tests do); a stop
//! or a reload that removes the service kills its instances and stops accepting; the
//! connections leave no fd behind in archon.
//!
//! Every client here connects over loopback or to sockets in the test's own directory.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use archon_tests::archon_proto::{ServiceRow, ServiceState};
use archon_tests::*;

/// Writes `lua` (with `@DIR@` replaced by the config's directory) and starts archon on it.
fn start(lua: &str) -> Result<Configured> {
    let cfg = ConfigFile::new()?;
    cfg.write(&lua.replace("@DIR@", &cfg.dir().display().to_string()))?;
    cfg.start(Archon::builder())
}

/// The port of the first `tcp:` socket of `row`.
fn tcp_port(row: &ServiceRow) -> Result<u16> {
    let sockets = String::from_utf8_lossy(&row.sockets).into_owned();
    sockets
        .split(' ')
        .find_map(|s| s.strip_prefix("tcp:"))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .filter(|&p| p != 0)
        .context(format!("a tcp port in {sockets:?}"))
}

/// Waits until `name`'s Status reason says it runs `n` instances.
fn wait_instances(a: &Archon, name: &str, n: usize) -> Result<ServiceRow> {
    a.wait_service(name, format!("{n} instances"), LONG_BOUND, |r| {
        reason(r).contains(&format!(" {n} instances"))
            || reason(r).starts_with(&format!("{n} instances"))
    })
}

/// Sends `line` and reads the one line that comes back.
fn ask<S: Read + Write>(s: &mut S, line: &str) -> Result<String> {
    s.write_all(format!("{line}\n").as_bytes())
        .context("write")?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .context("read the answer")?;
    Ok(answer.trim_end().to_string())
}

/// Fails unless nothing comes on `s` for a while (no instance serves it).
fn unanswered(s: &TcpStream, what: &str) -> Result {
    s.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = [0u8; 64];
    match (&*s).read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
        other => fail(format!("{what}: expected no answer, got {other:?}")),
    }
}

/// The number of fds archon has open.
fn fd_count(pid: i32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .context("/proc/PID/fd")?
        .count())
}

#[test]
fn each_connection_gets_an_instance_with_the_peer_in_its_environment() -> Result {
    let a = start(
        r#"
service "echo" { argv = {"/bin/sh", "-c",
                   "read l; echo \"got $l from $PROTO $TCPREMOTEIP:$TCPREMOTEPORT to $TCPLOCALIP:$TCPLOCALPORT $UNIXREMOTEPID $UNIXREMOTEEUID $UNIXREMOTEEGID $UNIXLOCALPATH fds=$LISTEN_FDS $LISTEN_FDNAMES\"; echo on3 >&3"},
                 accept = true,
                 sockets = {{name = "net", tcp = "127.0.0.1:0"}, {name = "local", unix = "@DIR@/echo.sock"}} }
"#,
    )?;
    let row = a.wait_state("echo", ServiceState::Ready)?;
    ensure_eq!(row.pid, None, "an acceptor has no main process");
    ensure_eq!(reason(&row), "accepting connections: 0 instances of 64");
    let port = tcp_port(&row)?;

    let mut tcp = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let me = tcp.local_addr()?;
    tcp.write_all(b"hello\n").context("write")?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).context("read the answer")?;
    // The second line came through fd 3: the connection too.
    ensure_eq!(
        answer,
        format!(
            "got hello from TCP 127.0.0.1:{} to 127.0.0.1:{port}     fds=1 net\non3\n",
            me.port()
        )
    );

    let path = a.config().dir().join("echo.sock");
    let mut unix = UnixStream::connect(&path).context("connect echo.sock")?;
    let answer = ask(&mut unix, "there")?;
    // SAFETY: getuid and getgid have no memory effects.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    ensure_eq!(
        answer,
        format!(
            "got there from UNIX : to : {} {uid} {gid} {} fds=1 local",
            std::process::id(),
            path.display()
        )
    );

    // Both instances ended; the service still accepts, and the history tells of each.
    let row = wait_instances(&a, "echo", 0)?;
    ensure_eq!(row.state, ServiceState::Ready);
    let history = a.request("History,echo")?;
    ensure!(
        history.contains(&format!("a connection from {me}")),
        "the TCP instance's events: {history}"
    );
    ensure!(
        history.contains(&format!(
            "a connection from pid {} uid {uid}",
            std::process::id()
        )),
        "the Unix instance's events: {history}"
    );
    ensure!(
        history.matches(",exit,ready,ready,").count() == 2,
        "two instance exits: {history}"
    );
    Ok(())
}

#[test]
fn twenty_concurrent_connections_get_twenty_instances() -> Result {
    let a = start(
        r#"
service "echo" { argv = {"/bin/sh", "-c", "read l; echo \"$$ $l\""}, accept = true,
                 sockets = {{tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let port = tcp_port(&a.wait_state("echo", ServiceState::Ready)?)?;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TcpStream::connect(("127.0.0.1", port)).context("connect")?);
    }
    let row = wait_instances(&a, "echo", 20)?;
    ensure!(
        row.rss_kib.is_some(),
        "the instances' memory: {}",
        show_row(&row)
    );
    let mut pids = std::collections::BTreeSet::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let answer = ask(c, &i.to_string())?;
        let (pid, n) = answer.split_once(' ').context(format!("{answer:?}"))?;
        ensure_eq!(n, i.to_string());
        pids.insert(pid.to_string());
    }
    ensure_eq!(pids.len(), 20, "a process per connection: {pids:?}");
    wait_instances(&a, "echo", 0)?;
    a.wait_no_zombies()?;
    Ok(())
}

#[test]
fn at_max_connections_a_connection_waits_without_archon_spinning() -> Result {
    let a = start(
        r#"
service "echo" { argv = {"/bin/sh", "-c", "read l; echo \"$$ $l\""}, accept = true,
                 max_connections = 2, sockets = {{tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let port = tcp_port(&a.wait_state("echo", ServiceState::Ready)?)?;
    let mut one = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let _two = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let row = wait_instances(&a, "echo", 2)?;
    ensure_eq!(
        reason(&row),
        "2 instances, its max_connections: not accepting until one ends"
    );
    // The third waits in the backlog: connected, not served, and archon sleeps.
    let mut three = TcpStream::connect(("127.0.0.1", port)).context("connect a third")?;
    three.write_all(b"three\n").context("write")?;
    unanswered(&three, "the third connection at the limit")?;
    stays_asleep(a.pid(), "while a connection waits at max_connections")?;
    // One ends: the third is served.
    ask(&mut one, "one")?;
    three.set_read_timeout(None)?;
    let mut answer = String::new();
    BufReader::new(&three)
        .read_line(&mut answer)
        .context("the third's answer")?;
    ensure!(
        answer.ends_with(" three\n"),
        "the third's answer {answer:?}"
    );
    Ok(())
}

#[test]
fn a_stop_kills_the_instances_and_stops_accepting() -> Result {
    let a = start(
        r#"
service "hold" { argv = {"/bin/sh", "-c", "echo up; read l; echo \"$l\""}, accept = true,
                 sockets = {{tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let port = tcp_port(&a.wait_state("hold", ServiceState::Ready)?)?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
        let mut up = String::new();
        BufReader::new(&c).read_line(&mut up).context("up")?;
        ensure_eq!(up, "up\n");
        clients.push(c);
    }
    wait_instances(&a, "hold", 3)?;
    let reply = a.request("Stop,hold")?;
    ensure!(reply.starts_with("Ok,hold,"), "Stop: {reply}");
    let row = a.service("hold")?;
    ensure_eq!(row.state, ServiceState::Stopped, "{}", show_row(&row));
    // Each instance was killed: its connection is closed without an answer.
    for c in &mut clients {
        c.set_read_timeout(Some(BOUND))?;
        let mut rest = String::new();
        c.read_to_string(&mut rest).context("read to the end")?;
        ensure_eq!(rest, "", "a killed instance's connection");
    }
    // Stopped, archon does not accept: a connection waits in the backlog...
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    unanswered(&waiting, "a connection to a stopped acceptor")?;
    stays_asleep(a.pid(), "while a stopped acceptor has a connection waiting")?;
    // ...until it is started again.
    ensure_eq!(a.request("Start,hold")?, "Ok,hold");
    waiting.set_read_timeout(Some(BOUND))?;
    let mut up = String::new();
    BufReader::new(&waiting).read_line(&mut up).context("up")?;
    ensure_eq!(up, "up\n");
    wait_instances(&a, "hold", 1)?;

    // A reload that removes it kills its instance, and its socket is closed.
    a.config()
        .write(r#"service "other" { argv = {"/bin/sleep", "100"} }"#)?;
    ensure_eq!(a.request("Reload")?, "Ok,1,1,0,0");
    let mut rest = String::new();
    waiting
        .read_to_string(&mut rest)
        .context("read to the end")?;
    ensure_eq!(rest, "", "the removed service's instance was killed");
    a.wait_service("other", "hold gone", LONG_BOUND, |_| true)?;
    wait_until("hold to be forgotten", LONG_BOUND, || {
        a.try_service("hold").is_ok_and(|r| r.is_none())
    })?;
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the removed service's port refuses connections"
    );
    Ok(())
}

#[test]
fn a_hundred_connections_leave_no_fd_behind() -> Result {
    let a = start(
        r#"
service "hi" { argv = {"/bin/echo", "hi"}, accept = true, sockets = {{tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let port = tcp_port(&a.wait_state("hi", ServiceState::Ready)?)?;
    // One connection first, so that what is made once (log pipes, the cgroup) is made.
    let mut first = String::new();
    TcpStream::connect(("127.0.0.1", port))?.read_to_string(&mut first)?;
    ensure_eq!(first, "hi\n");
    wait_instances(&a, "hi", 0)?;
    // Once archon has closed its side of the last Status's connection.
    std::thread::sleep(Duration::from_millis(300));
    let before = fd_count(a.pid())?;
    for i in 0..100 {
        let mut answer = String::new();
        TcpStream::connect(("127.0.0.1", port))
            .context(format!("connection {i}"))?
            .read_to_string(&mut answer)
            .context(format!("connection {i}"))?;
        ensure_eq!(answer, "hi\n", "connection {i}");
    }
    wait_instances(&a, "hi", 0)?;
    a.wait_no_zombies()?;
    // The connection of the last Status may not be closed yet on archon's side: the count
    // must come back to where it was, and stay there if nothing leaked.
    let settled = wait_until("archon's fds back to where they were", BOUND, || {
        fd_count(a.pid()).is_ok_and(|n| n == before)
    });
    ensure!(
        settled.is_ok(),
        "archon's open fds after 100 connections: {} (were {before})",
        fd_count(a.pid())?
    );
    Ok(())
}

#[test]
fn instances_survive_a_reexec_and_archon_goes_on_accepting() -> Result {
    let a = start(
        r#"
service "echo" { argv = {"/bin/sh", "-c", "echo $$; read l; echo \"$$ $l\""}, accept = true,
                 max_connections = 3, sockets = {{tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let port = tcp_port(&a.wait_state("echo", ServiceState::Ready)?)?;
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
        let mut pid = String::new();
        BufReader::new(&c).read_line(&mut pid).context("its pid")?;
        held.push((c, pid.trim_end().to_string()));
    }
    wait_instances(&a, "echo", 2)?;
    let reply = a.request("ReExec")?;
    ensure!(reply.starts_with("Ok,"), "ReExec: {reply}");
    // The same instances, still counted; their ends are seen by the new image.
    let row = wait_instances(&a, "echo", 2)?;
    ensure_eq!(row.state, ServiceState::Ready);
    let history = a.request("History,archon")?;
    ensure!(
        !history.contains("problems"),
        "a re-exec without problems: {history}"
    );
    // The new image accepts: a third connection gets an instance, then the limit holds.
    let mut third = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let mut pid = String::new();
    BufReader::new(&third)
        .read_line(&mut pid)
        .context("the third's pid")?;
    let row = wait_instances(&a, "echo", 3)?;
    ensure_eq!(
        reason(&row),
        "3 instances, its max_connections: not accepting until one ends"
    );
    let fourth = TcpStream::connect(("127.0.0.1", port)).context("connect a fourth")?;
    unanswered(&fourth, "the fourth connection at the limit")?;
    for (c, pid) in &mut held {
        let answer = ask(c, "after")?;
        ensure_eq!(
            answer,
            format!("{pid} after"),
            "an instance from before the re-exec"
        );
    }
    ensure!(ask(&mut third, "x")?.ends_with(" x"), "the third instance");
    // Their ends freed room: the fourth is served.
    fourth.set_read_timeout(Some(BOUND))?;
    let mut fourth = BufReader::new(fourth);
    let mut line = String::new();
    fourth.read_line(&mut line).context("the fourth's pid")?;
    ensure!(!line.trim_end().is_empty(), "the fourth is served");
    fourth.get_mut().write_all(b"y\n").context("write")?;
    line.clear();
    fourth.read_line(&mut line).context("the fourth's answer")?;
    ensure!(line.ends_with(" y\n"), "the fourth's answer {line:?}");
    wait_instances(&a, "echo", 0)?;
    Ok(())
}
