//! Re-exec, named after archon(8)'s RE-EXEC: `ReExec` (and SIGQUIT) hand archon's state to a
//! new image of its program. After it: the same pids for every service, the history from
//! before, crashes still restarted, the same listening sockets (no connection refused
//! meanwhile), daemons and monitored processes still watched, log lines from before and after,
//! replies owed to connections still paid, and archon idle again. A program that is not an
//! archon is refused and archon carries on; as process 1 of a PID namespace it re-executes as
//! process 1; a client that is not root is refused.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use archon_tests::archon_proto::{EventKind, ServiceState, Status};
use archon_tests::*;

/// Services in the big test.
const SERVICES: usize = 100;

/// `ReExec[,<path>]` on a fresh connection: the reply's text.
fn reexec(a: &Archon, path: Option<&str>) -> Result<String> {
    let mut fields = vec!["ReExec"];
    fields.extend(path);
    a.conn()?.request_fields(&fields)
}

/// Every service's pid, by name.
fn pids(a: &Archon) -> Result<BTreeMap<String, i32>> {
    let mut out = BTreeMap::new();
    for row in a.status()? {
        if let Some(pid) = row.pid.filter(|_| !row.kind.is_process()) {
            out.insert(row_name(&row), pid);
        }
    }
    Ok(out)
}

/// The reasons of archon's own `reexec` events.
fn reexec_events(a: &Archon) -> Result<Vec<String>> {
    Ok(a.conn()?
        .history(&["archon", "reexec"])?
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.reason).into_owned())
        .collect())
}

/// A hundred services: the same pids after, the history from before, a crash after is
/// restarted, and the lines a service wrote before (a partial one too) and after are there.
#[test]
fn a_hundred_services_keep_their_pids_and_a_crash_after_is_restarted() -> Result {
    let mut lua = String::new();
    for i in 0..SERVICES - 1 {
        lua.push_str(&format!(
            "service \"s{i}\" {{ argv = {{\"/bin/sleep\", \"1000\"}} }}\n"
        ));
    }
    // Says a line and half of one, and ends both on SIGUSR1.
    lua.push_str(
        "service \"talker\" { argv = {\"/bin/sh\", \"-c\", \"trap 'echo line-after; echo done' \
         USR1; echo line-before; printf half-; while :; do sleep 1 & wait $!; done\"} }\n",
    );
    let a = start_with_config(&lua)?;
    wait_until("every service to run", LONG_BOUND, || {
        pids(&a).is_ok_and(|p| p.len() == SERVICES)
    })?;
    wait_until("the talker's first line", BOUND, || {
        a.conn()
            .and_then(|mut c| c.request("Logs,talker"))
            .is_ok_and(|r| r.contains("line-before"))
    })?;
    let before = pids(&a)?;
    let history_before = a.conn()?.history(&[])?;
    let archon_pid = a.pid();

    let t0 = Instant::now();
    let reply = reexec(&a, None)?;
    let took = t0.elapsed();
    ensure!(reply.starts_with("Ok,"), "ReExec: {reply}");
    println!("re-exec with {SERVICES} services: {} ms", took.as_millis());

    ensure_eq!(a.pid(), archon_pid);
    ensure_eq!(pids(&a)?, before, "every service keeps its pid");
    for row in a.status()? {
        ensure!(
            row.kind.is_process() || (row.state == ServiceState::Ready && row.restarts == 0),
            "{} after the re-exec: {:?}, {} restarts",
            row_name(&row),
            row.state,
            row.restarts
        );
    }
    let history = a.conn()?.history(&[])?;
    for e in &history_before {
        ensure!(
            history.iter().any(|h| h.seq == e.seq && h == e),
            "event {} from before is kept",
            e.seq
        );
    }
    ensure!(
        history.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "the numbering goes on without a gap or a repeat"
    );
    ensure!(
        history.len() > history_before.len(),
        "events after the re-exec"
    );
    let reasons = reexec_events(&a)?;
    ensure!(
        reasons.iter().any(|r| r.starts_with("begins"))
            && reasons.iter().any(|r| r.starts_with("done")),
        "the re-exec's events: {reasons:?}"
    );
    let done = a.conn()?.history(&["archon", "reexec"])?;
    ensure!(
        done.iter()
            .all(|e| e.cause != archon_tests::archon_proto::Cause::Archon),
        "caused by the client: {done:?}"
    );

    // A crash after the re-exec is restarted.
    let victim = before["s7"];
    kill_pid(victim, libc::SIGKILL);
    let row = a.wait_service("s7", "a new process", LONG_BOUND, |r| {
        r.pid.is_some_and(|p| p != victim) && r.state == ServiceState::Ready
    })?;
    ensure_eq!(row.restarts, 1);
    ensure_eq!(row.last, Some(Status::Signaled(libc::SIGKILL)));

    // Lines from before, the half line ended after, and lines after.
    ensure!(
        a.request("Signal,talker,USR1")?.starts_with("Ok"),
        "the signal"
    );
    let logs = wait_for("the talker's lines after", BOUND, || {
        let r = a.conn().ok()?.request("Logs,talker").ok()?;
        r.contains("done").then_some(r)
    })?;
    for want in ["line-before", "half-line-after", "done"] {
        let end = format!(",{want}");
        ensure!(logs.lines().any(|l| l.ends_with(&end)), "{want} in {logs}");
    }
    stays_asleep(a.pid(), "after the re-exec")
}

/// A socket the configuration declares is the very socket after a re-exec (the service's fd
/// and archon's are one), and a client that connects all along is never refused.
#[test]
fn a_service_socket_is_the_same_and_refuses_no_connection() -> Result {
    let cfg = ConfigFile::new()?;
    cfg.write(
        r#"
service "echo" {
  argv = {"/usr/bin/python3", "-c", [[
import os, socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(b"%d\n" % os.getpid())
    c.close()
]]},
  sockets = {{name = "main", tcp = "127.0.0.1:0"}},
}
"#,
    )?;
    let a = cfg.start(Archon::builder())?;
    let pid = a
        .wait_state("echo", ServiceState::Ready)?
        .pid
        .context("echo's pid")?;
    let port = port_of(&a)?;
    let socket_of = |p: i32| -> Vec<String> {
        fd_targets(p)
            .into_iter()
            .filter_map(|t| t.split_once(" -> ").map(|(_, s)| s.to_string()))
            .filter(|t| t.starts_with("socket:"))
            .collect()
    };
    let held_before = socket_of(a.pid());
    let its = socket_of(pid);
    let shared: Vec<&String> = its.iter().filter(|s| held_before.contains(s)).collect();
    ensure!(!shared.is_empty(), "archon holds echo's socket: {its:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let worker = {
        let (stop, ok, refused) = (stop.clone(), ok.clone(), refused.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(mut c) => {
                        let mut s = String::new();
                        let _ = c.set_read_timeout(Some(BOUND));
                        if c.read_to_string(&mut s).is_ok() && !s.is_empty() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        })
    };
    // archon's own socket too: a client that connects throughout is always answered.
    let (pongs, missed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let pinger = {
        let (stop, pongs, missed) = (stop.clone(), pongs.clone(), missed.clone());
        let socket = a.socket().to_path_buf();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let answered = Conn::connect(&socket)
                    .and_then(|mut c| c.request("Ping"))
                    .is_ok_and(|r| r == "Pong");
                let counter = if answered { &pongs } else { &missed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let reply = reexec(&a, None)?;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let _ = pinger.join();
    ensure_eq!(missed.load(Ordering::Relaxed), 0, "pings not answered");
    ensure!(pongs.load(Ordering::Relaxed) > 0, "pings answered");
    ensure!(reply.starts_with("Ok,"), "ReExec: {reply}");
    ensure_eq!(refused.load(Ordering::Relaxed), 0, "connections refused");
    ensure!(ok.load(Ordering::Relaxed) > 0, "connections served");
    ensure_eq!(a.service("echo")?.pid, Some(pid), "echo was not restarted");
    let held_after = socket_of(a.pid());
    for s in shared {
        ensure!(
            held_after.contains(s),
            "archon still holds {s}: {held_after:?}"
        );
    }
    ensure_eq!(
        port_of(&a)?,
        port,
        "the same port in the configuration dump"
    );
    Ok(())
}

/// The port of echo's socket, from the `Config` dump.
fn port_of(a: &Archon) -> Result<u16> {
    let settings = a.conn()?.config()?;
    let sockets = settings
        .iter()
        .find(|s| s.name == b"echo" && s.key == b"sockets")
        .map(|s| String::from_utf8_lossy(&s.value).into_owned())
        .context("echo's sockets setting")?;
    sockets
        .split("tcp = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .context(format!("a port in {sockets}"))
}

fn kill_pid(pid: i32, sig: i32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, sig) };
}

/// A `StartDaemon`'d process and a monitored one are still watched: their ends are seen after
/// the re-exec; a `Run` in progress gets its `ExitStatus` from the new image, and requests
/// queued behind `ReExec` on its connection are answered by it.
#[test]
fn daemons_monitored_processes_and_owed_replies_survive() -> Result {
    let a = Archon::start()?;
    let (daemon, daemon_pid) = parse_started(&a.request("StartDaemon,/bin/sleep,1000")?)?;
    let mut stray = Command::new("/bin/sleep")
        .arg("1000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("spawn a process to monitor")?;
    let stray_pid = stray.id() as i32;
    let (monitored, _) = parse_started(&a.request(&format!("Monitor,{stray_pid}"))?)?;
    let mut run = a.conn()?;
    run.send(b"Run,/bin/sh,-c,sleep 0.6; exit 7\n")?;
    let mut subscriber = a.conn()?;
    let next = subscriber.subscribe(&[])?;
    std::thread::sleep(Duration::from_millis(100));

    let mut c = a.conn()?;
    c.send(b"ReExec\nPing\n")?;
    let reply = c.reply_text()?;
    ensure!(reply.starts_with("Ok,"), "ReExec: {reply}");
    ensure_eq!(c.reply_text()?, "Pong", "the request behind ReExec");
    ensure_eq!(run.reply_text()?, "ExitStatus,7", "the Run's reply");
    // A subscriber sees the re-exec begin, then its stream ends; History has the rest.
    loop {
        let e = subscriber.stream_event()?;
        if e.what == EventKind::Reexec {
            ensure!(e.reason.starts_with(b"begins"), "{e:?}");
            break;
        }
    }
    subscriber.expect_eof()?;
    let missed = a.conn()?.history(&[])?;
    ensure!(
        missed
            .iter()
            .any(|e| e.seq >= next && e.what == EventKind::Reexec && e.reason.starts_with(b"done")),
        "the history has what the subscriber missed"
    );

    // A child started now gets the open files limit archon was started with, as before.
    let (_, later) = parse_started(&a.request("StartDaemon,/bin/sleep,1000")?)?;
    let nofile = |pid: i32| -> Result<String> {
        let limits = fs::read_to_string(format!("/proc/{pid}/limits")).context("limits")?;
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(str::to_string)
            .context("Max open files")
    };
    ensure_eq!(
        nofile(later)?,
        nofile(daemon_pid)?,
        "the children's open files limit"
    );
    let row = a.row(daemon)?.context("the daemon's row")?;
    ensure_eq!(
        (row.pid, row.state.to_string()),
        (daemon_pid, "running".to_string())
    );
    kill_pid(daemon_pid, libc::SIGKILL);
    wait_for("the daemon's end", BOUND, || {
        a.row(daemon).ok()?.filter(|r| r.status.is_some())
    })?;
    ensure_eq!(
        a.row(daemon)?.and_then(|r| r.status),
        Some(Status::Signaled(libc::SIGKILL))
    );
    kill_pid(stray_pid, libc::SIGKILL);
    let _ = stray.wait();
    wait_for("the monitored process's end", BOUND, || {
        a.row(monitored).ok()?.filter(|r| r.status.is_some())
    })?;
    let kinds: Vec<EventKind> = a
        .conn()?
        .history(&[&daemon.to_string()])?
        .into_iter()
        .map(|e| e.what)
        .collect();
    ensure_eq!(
        kinds,
        vec![EventKind::Spawn, EventKind::Exit],
        "the daemon's events"
    );
    Ok(())
}

/// A path that is no archon (a program that exits 0, one that does not exist, a relative
/// one) is refused with an `Error`, and archon carries on as it was.
#[test]
fn a_program_that_is_not_archon_is_refused_and_archon_carries_on() -> Result {
    let a = start_with_config("service \"s\" { argv = {\"/bin/sleep\", \"1000\"} }\n")?;
    let pid = a.wait_state("s", ServiceState::Ready)?.pid;
    let (daemon, _) = parse_started(&a.request("StartDaemon,/bin/sleep,1000")?)?;
    for (path, want) in [
        ("/bin/true", "is not an archon that can restore"),
        ("/bin/sh", "cannot take the state over"),
        ("/nonexistent/archon", "cannot execute /nonexistent/archon"),
    ] {
        let reply = reexec(&a, Some(path))?;
        ensure!(
            reply.starts_with("Error,") && reply.contains(want),
            "{path}: {reply}"
        );
    }
    ensure_eq!(
        reexec(&a, Some("archon"))?,
        "Error,the path must be absolute"
    );
    ensure_eq!(a.request("Ping")?, "Pong");
    ensure_eq!(a.service("s")?.pid, pid, "the service was not touched");
    ensure!(
        a.row(daemon)?.is_some_and(|r| r.status.is_none()),
        "the daemon runs on"
    );
    let reasons = reexec_events(&a)?;
    ensure_eq!(
        reasons.iter().filter(|r| r.starts_with("failed")).count(),
        3,
        "{reasons:?}"
    );
    // Everything handed over is close-on-exec again: a child started now inherits nothing.
    let (_, child) = parse_started(&a.request("StartDaemon,/bin/sleep,1000")?)?;
    wait_in_nanosleep(child)?;
    let fds = fd_targets(child);
    ensure!(fds.len() <= 3, "the child inherited {fds:?}");
    // And the real one still works.
    ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");
    ensure_eq!(a.service("s")?.pid, pid);
    Ok(())
}

/// A re-exec that cannot be done changes nothing: a `Run` waiting for a slot goes on waiting
/// and runs once the slot is free, and no `begins` event is recorded.
#[test]
fn a_refused_reexec_leaves_a_waiting_run_waiting() -> Result {
    let a = Archon::with_args(["--max-runs", "1"])?;
    let mut running = a.conn()?;
    running.send(b"Run,/bin/sh,-c,sleep 0.5; exit 3\n")?;
    wait_until("the Run to start", BOUND, || {
        a.list().is_ok_and(|l| l.iter().any(|r| r.status.is_none()))
    })?;
    let mut waiting = a.conn()?;
    waiting.send(b"Run,/bin/sh,-c,exit 4\n")?;
    std::thread::sleep(Duration::from_millis(100));
    for path in ["/nonexistent/archon", "/bin/true"] {
        let reply = reexec(&a, Some(path))?;
        ensure!(reply.starts_with("Error,"), "{path}: {reply}");
    }
    ensure_eq!(running.reply_text()?, "ExitStatus,3");
    ensure_eq!(waiting.reply_text()?, "ExitStatus,4", "the waiting Run ran");
    let reasons = reexec_events(&a)?;
    ensure!(
        reasons.iter().all(|r| r.starts_with("failed")),
        "{reasons:?}"
    );
    Ok(())
}

/// A client that is neither root is refused, whatever uid archon runs as.
#[test]
fn a_client_that_is_not_root_is_refused() -> Result {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root (another uid)");
        return Ok(());
    }
    let sockdir = TempDir::new()?;
    fs::set_permissions(sockdir.path(), fs::Permissions::from_mode(0o777))?;
    let socket = sockdir.join("archon.sock");
    let a = Archon::builder()
        .socket(&socket)
        .under(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            false,
        )
        .start()?;
    let mut c = Conn::from_stream(connect_as(65534, 65534, &socket)?)?;
    ensure_eq!(c.request("ReExec")?, "Error,permission denied");
    ensure_eq!(c.request("Ping")?, "Pong", "the connection goes on");
    ensure!(reexec_events(&a)?.is_empty(), "no re-exec began");
    Ok(())
}

/// As process 1 of a PID namespace, archon re-executes as process 1 (by request and by
/// SIGQUIT), its services keep their pids, and it still powers the namespace off.
#[test]
fn reexec_as_process_1_of_a_pid_namespace() -> Result {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: needs root (PID namespaces)");
        return Ok(());
    }
    let cfg = ConfigFile::with(
        "service \"a\" { argv = {\"/bin/sleep\", \"1000\"} }\n\
         service \"b\" { argv = {\"/bin/sleep\", \"1000\"} }\n",
    )?;
    let mut a = cfg.start(Archon::builder().pid1())?;
    wait_until("both services to run", LONG_BOUND, || {
        pids(&a).is_ok_and(|p| p.len() == 2)
    })?;
    let before = pids(&a)?;
    ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");
    ensure_eq!(pids(&a)?, before);
    let nspid = status_field(a.pid(), "NSpid")?;
    ensure_eq!(nspid.split_whitespace().last(), Some("1"), "process 1");
    a.signal(nix::sys::signal::Signal::SIGQUIT)?;
    wait_until("the second re-exec", BOUND, || {
        reexec_events(&a).is_ok_and(|r| r.iter().filter(|r| r.starts_with("done")).count() == 2)
    })?;
    ensure_eq!(pids(&a)?, before);
    ensure!(a.try_exit()?.is_none(), "archon is still there");
    ensure_eq!(a.request("Poweroff")?, "Ok,poweroff");
    let status = a.wait_exit(LONG_BOUND)?;
    ensure!(
        status.code().is_none(),
        "the namespace ended by reboot(2): {status}"
    );
    Ok(())
}

/// An entrypoint's main command is still its main command after a re-exec: its end is still
/// archon's exit code.
#[test]
fn an_entrypoint_keeps_its_main_command() -> Result {
    let mut a = Archon::builder()
        .main_command(["/bin/sh", "-c", "sleep 1000 & wait $!; exit 5"])
        .start()?;
    let main = wait_for("the main command", BOUND, || {
        a.list().ok()?.into_iter().find(|r| r.status.is_none())
    })?;
    ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");
    let rows = a.list()?;
    ensure!(
        rows.iter()
            .any(|r| r.id == main.id && r.pid == main.pid && r.status.is_none()),
        "the main command is still listed: {rows:?}"
    );
    ensure_eq!(
        a.request(&format!("Signal,{},TERM", main.id))?,
        format!("Ok,{}", main.id)
    );
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(
        status.code(),
        Some(143),
        "the main command's status ({status})"
    );
    Ok(())
}

/// Timers are carried as the time left of them: a service in backoff starts again after a
/// re-exec, and a stop in progress (its reply owed to a connection) ends with SIGKILL when its
/// timeout, armed before, is over.
#[test]
fn timers_and_a_stop_in_progress_are_carried() -> Result {
    let a = start_with_config(
        "service \"flaky\" { argv = {\"/bin/sh\", \"-c\", \"sleep 0.2; exit 1\"}, \
         restart = \"always\", backoff = {initial = \"1s\"} }\n\
         service \"stubborn\" { argv = {\"/bin/sh\", \"-c\", \"trap '' TERM; \
         while :; do sleep 1 & wait $!; done\"}, stop_timeout = \"1s\" }\n",
    )?;
    a.wait_state("stubborn", ServiceState::Ready)?;
    a.wait_state("flaky", ServiceState::Backoff)?;
    let mut stop = a.conn()?;
    stop.send(b"Stop,stubborn\n")?;
    a.wait_state("stubborn", ServiceState::Stopping)?;
    ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");
    let row = a.wait_service("flaky", "a restart after its backoff", LONG_BOUND, |r| {
        r.restarts >= 1 && r.state != ServiceState::Backoff
    })?;
    ensure!(row.restarts >= 1, "flaky restarted: {row:?}");
    ensure_eq!(
        stop.reply_text()?,
        "Ok,stubborn,SIGKILL",
        "the stop's reply, after its timeout"
    );
    ensure_eq!(a.service("stubborn")?.state, ServiceState::Stopped);
    Ok(())
}

/// The notify sockets and ready pipes are handed over: a service that says it is ready only
/// after the re-exec (`READY=1`, or a line on its ready fd) is seen ready by the new image, and
/// one whose watchdog is kicked through its notify socket is not restarted.
#[test]
fn readiness_after_a_reexec_reaches_the_new_image() -> Result {
    let client = bin("notify_client")?.display().to_string();
    let cfg = ConfigFile::new()?;
    let go = cfg.file("go");
    cfg.write(
        &r#"
service "rusty" { argv = {"@BIN@", "@GO@", "warming up", "serving"}, ready = "notify" }
service "kicker" { argv = {"@BIN@", "@DIR@/kicker-go", "kicker warming up", "kicking",
                           "@DIR@/kicks"},
                   ready = "notify", watchdog = "1s" }
service "piped" { argv = {"/bin/sh", "-c",
                          "while [ ! -e @GO@ ]; do sleep 0.05; done; echo ready >&3; exec sleep 100"},
                  ready = "fd" }
"#
        .replace("@BIN@", &client)
        .replace("@GO@", &go)
        .replace("@DIR@", &cfg.dir().display().to_string()),
    )?;
    fs::write(cfg.dir().join("kicker-go"), "").context("kicker's go")?;
    let a = cfg.start(Archon::builder())?;
    let kicker = a.wait_state("kicker", ServiceState::Ready)?;
    for name in ["rusty", "piped"] {
        a.wait_service(name, "running, not ready", LONG_BOUND, |r| {
            r.state == ServiceState::Running && r.pid.is_some()
        })?;
    }
    let before = pids(&a)?;
    ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");
    fs::write(&go, "").context("go")?;
    for name in ["rusty", "piped"] {
        let row = a.wait_state(name, ServiceState::Ready)?;
        ensure_eq!(
            row.pid,
            before.get(name).copied(),
            "{name} kept its process"
        );
        ensure_eq!(row.restarts, 0, "{name}");
    }
    // Two watchdog periods: kicked through the handed-over socket, it is not restarted.
    std::thread::sleep(Duration::from_millis(2500));
    let row = a.service("kicker")?;
    ensure_eq!(
        (row.state, row.pid, row.restarts),
        (ServiceState::Ready, kicker.pid, 0),
        "the watchdog's service after the re-exec"
    );
    Ok(())
}

/// The new image reads the configuration again: one that no longer declares a service that
/// runs is refused before anything is handed over (the new program says why in the log), and
/// a `Run` waiting for a slot is answered, not lost.
#[test]
fn a_configuration_that_drops_a_running_service_is_refused() -> Result {
    let cfg = ConfigFile::with(
        "service \"a\" { argv = {\"/bin/sleep\", \"1000\"} }\n\
         service \"b\" { argv = {\"/bin/sleep\", \"1000\"} }\n",
    )?;
    let a = cfg.start(Archon::builder().args(["--max-runs", "1"]))?;
    wait_until("both services to run", LONG_BOUND, || {
        pids(&a).is_ok_and(|p| p.len() == 2)
    })?;
    let before = pids(&a)?;
    a.config()
        .write("service \"a\" { argv = {\"/bin/sleep\", \"1000\"} }\n")?;
    let reply = reexec(&a, None)?;
    ensure!(
        reply.starts_with("Error,") && reply.contains("cannot take the state over"),
        "{reply}"
    );
    ensure!(
        a.log_text().contains("no longer declares b, which runs"),
        "the new program's reason in the log"
    );
    ensure_eq!(pids(&a)?, before);

    // Back as it was, with a Run running and one waiting for the only slot.
    a.config().write(
        "service \"a\" { argv = {\"/bin/sleep\", \"1000\"} }\n\
         service \"b\" { argv = {\"/bin/sleep\", \"1000\"} }\n",
    )?;
    let mut running = a.conn()?;
    running.send(b"Run,/bin/sh,-c,sleep 0.5; exit 3\n")?;
    let mut waiting = a.conn()?;
    waiting.send(b"Run,/bin/true\n")?;
    std::thread::sleep(Duration::from_millis(100));
    ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");
    ensure_eq!(
        waiting.reply_text()?,
        "Error,archon is re-executing: ask again"
    );
    ensure_eq!(running.reply_text()?, "ExitStatus,3");
    ensure_eq!(pids(&a)?, before);
    Ok(())
}

/// Health checks go on after a re-exec, also when one was in flight (it is dropped and the
/// next one runs at once): the service stays healthy and is not restarted.
#[test]
fn health_checks_go_on_after_a_reexec() -> Result {
    let cfg = ConfigFile::new()?;
    let checks = cfg.file("checks");
    cfg.write(&format!(
        "service \"checked\" {{ argv = {{\"/bin/sleep\", \"1000\"}},\n\
         health = {{command = {{\"/bin/sh\", \"-c\", \"sleep 0.3; echo ok >> {checks}\"}},\n\
         interval = 0.05, timeout = 2}} }}\n"
    ))?;
    let a = cfg.start(Archon::builder())?;
    let row = a.wait_service("checked", "healthy", LONG_BOUND, |r| {
        r.health == Some(archon_tests::archon_proto::Health::Healthy)
    })?;
    let count = || fs::read_to_string(&checks).map_or(0, |t| t.lines().count());
    for _ in 0..3 {
        // In the middle of a check: one has just ended, the next began 0.05 s later and runs
        // for 0.3 s.
        let n = count();
        wait_until("a check to end", LONG_BOUND, || count() > n)?;
        std::thread::sleep(Duration::from_millis(150));
        ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");
    }
    let after = count();
    wait_until("three checks after the re-execs", LONG_BOUND, || {
        count() >= after + 3
    })?;
    let now = a.service("checked")?;
    ensure_eq!(
        (now.pid, now.restarts, now.health),
        (
            row.pid,
            0,
            Some(archon_tests::archon_proto::Health::Healthy)
        ),
        "after the re-execs"
    );
    Ok(())
}

/// What came after re-exec was written is carried too: a daemon's exit action (`OnExit`) runs
/// when it ends after the re-exec, an on-demand service's socket is watched by the new image
/// (a connection starts the service), and the configuration's Lua handlers run in the new
/// image.
#[test]
fn exit_actions_on_demand_sockets_and_handlers_go_on_after_a_reexec() -> Result {
    let cfg = ConfigFile::new()?;
    let dir = cfg.dir().display().to_string();
    cfg.write(
        &r#"
service "lazy" { argv = {"/bin/sh", "-c", "echo started > @DIR@/lazy; exec sleep 1000"},
                 sockets = {{unix = "@DIR@/lazy.sock"}}, on_demand = true }
service "crashy" { argv = {"/bin/sleep", "1000"} }
on("exit", "crash*", function(ev)
  archon.run("echo " .. ev.subject .. " " .. tostring(ev.signal) .. " >> @DIR@/handled")
end)
"#
        .replace("@DIR@", &dir),
    )?;
    let a = cfg.start(Archon::builder())?;
    let crashy = a.wait_state("crashy", ServiceState::Ready)?;
    a.wait_service("lazy", "waiting for a connection", BOUND, |r| {
        r.state == ServiceState::Stopped && r.reason.starts_with(b"waiting")
    })?;
    let (daemon, daemon_pid) = parse_started(&a.request("StartDaemon,/bin/sleep,1000")?)?;
    let acted = a.config().file("acted");
    let on_exit = a.conn()?.request_fields(&[
        "OnExit",
        &daemon.to_string(),
        "/bin/sh",
        "-c",
        &format!("echo \"$ARCHON_ID $ARCHON_EXIT $ARCHON_STATUS\" > {acted}"),
    ])?;
    ensure!(on_exit.starts_with("Ok"), "OnExit: {on_exit}");

    ensure!(reexec(&a, None)?.starts_with("Ok,"), "the re-exec");

    // The exit action, asked of the old image, is run by the new one.
    kill_pid(daemon_pid, libc::SIGTERM);
    let text = wait_line_in(&acted)?;
    ensure_eq!(
        text,
        format!("{daemon} killed SIGTERM"),
        "the exit action's line"
    );
    // The on-demand service's socket: a connection starts it.
    let _conn = std::os::unix::net::UnixStream::connect(a.config().dir().join("lazy.sock"))
        .context("connect to lazy's socket")?;
    ensure_eq!(
        wait_line_in(a.config().file("lazy"))?,
        "started",
        "lazy started"
    );
    a.wait_state("lazy", ServiceState::Ready)?;
    // The handler.
    kill_pid(crashy.pid.context("crashy's pid")?, libc::SIGKILL);
    ensure_eq!(
        wait_line_in(a.config().file("handled"))?,
        "crashy SIGKILL",
        "the handler's line"
    );
    Ok(())
}
