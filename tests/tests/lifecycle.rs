//! archon as a program: its socket (path, mode, lock, stale file), readiness under systemd,
//! shutdown on SIGTERM and SIGINT, exit codes, command line and log lines.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::process::Command;

use archon_tests::archon_proto::{Kind, ProcState};
use archon_tests::*;
use nix::sys::signal::Signal;

/// The parts of a shutdown test: a daemon that dies of TERM, one that ignores it, and a Run in
/// progress whose client waits for its reply.
fn shutdown_on(sig: Signal) -> Result {
    let mut a = Archon::with_args(["--stop-grace", "300"])?;
    let mut c = a.conn()?;
    let (_, plain) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    let (_, stubborn) = parse_started(&c.request_fields(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "trap '' TERM; exec /bin/sleep 100",
    ])?)?;
    wait_until("the stubborn daemon to exec", BOUND, || {
        cmdline(stubborn).is_some_and(|v| v == ["/bin/sleep", "100"])
    })?;
    let mut pending = a.conn()?;
    pending.send(b"Run,/bin/sleep,100\n")?;
    let run_pid = wait_for("the Run to be running", BOUND, || {
        a.list()
            .ok()?
            .into_iter()
            .find_map(|r| (r.kind == Kind::Run && r.state == ProcState::Running).then_some(r.pid))
    })?;
    // Only once the Run has executed its program is it sure to be in its own process group (a
    // Run is listed as running from its fork on).
    wait_until("the Run to exec its sleep", BOUND, || {
        cmdline(run_pid).is_some_and(|v| v == ["/bin/sleep", "100"])
    })?;
    a.signal(sig)?;
    ensure_eq!(
        pending.reply_text()?,
        "ExitStatus,143,SIGTERM",
        "the pending Run's reply"
    );
    pending.expect_eof()?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(0), "archon's exit status ({status})");
    ensure!(!a.socket().exists(), "the socket file was left behind");
    for (pid, what) in [
        (plain, "the daemon"),
        (stubborn, "the TERM-ignoring daemon"),
        (run_pid, "the Run"),
    ] {
        wait_until(format!("{what} (pid {pid}) to be stopped"), BOUND, || {
            !alive(pid)
        })?;
    }
    Ok(())
}

#[test]
fn sigterm_stops_children_and_exits_0() -> Result {
    shutdown_on(Signal::SIGTERM)
}

#[test]
fn sigint_stops_children_and_exits_0() -> Result {
    shutdown_on(Signal::SIGINT)
}

#[test]
fn second_sigterm_kills_at_once() -> Result {
    let mut a = Archon::with_args(["--stop-grace", "600000"])?;
    let mut c = a.conn()?;
    let (_, plain) = parse_started(&c.request("StartDaemon,/bin/sleep,100")?)?;
    let (_, stubborn) = parse_started(&c.request_fields(&[
        "StartDaemon",
        "/bin/sh",
        "-c",
        "trap '' TERM; exec /bin/sleep 100",
    ])?)?;
    wait_until("the stubborn daemon to exec", BOUND, || {
        cmdline(stubborn).is_some_and(|v| v == ["/bin/sleep", "100"])
    })?;
    a.signal(Signal::SIGTERM)?;
    // The shutdown is under way once the plain daemon has gone; the stubborn one would hold it
    // for ten minutes.
    wait_until("the plain daemon to be stopped", BOUND, || !alive(plain))?;
    ensure!(
        a.try_exit()?.is_none(),
        "archon did not wait for the grace period"
    );
    a.signal(Signal::SIGTERM)?;
    a.wait_exit(BOUND)?;
    wait_until("the stubborn daemon to be killed", BOUND, || {
        !alive(stubborn)
    })?;
    Ok(())
}

#[test]
fn second_archon_on_the_same_socket_exits_111() -> Result {
    let a = Archon::start()?;
    let mut b = Archon::builder().socket(a.socket()).no_wait().start()?;
    let status = b.wait_exit(BOUND)?;
    ensure_eq!(
        status.code(),
        Some(111),
        "the second archon's exit ({status})"
    );
    ensure!(
        b.log_text().contains("already running"),
        "the second archon's log says why: {:?}",
        b.log_text()
    );
    ensure_eq!(a.request("Ping")?, "Pong", "the first archon still serves");
    Ok(())
}

#[test]
fn stale_socket_file_is_replaced() -> Result {
    let dir = TempDir::new()?;
    let path = dir.join("archon.sock");
    drop(UnixListener::bind(&path)?);
    ensure!(path.exists(), "the stale socket file");
    let a = Archon::builder().socket(&path).start()?;
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn archon_restarts_on_the_socket_of_a_crashed_one() -> Result {
    let dir = TempDir::new()?;
    let path = dir.join("archon.sock");
    let mut first = Archon::builder().socket(&path).start()?;
    first.signal(Signal::SIGKILL)?;
    first.wait_exit(BOUND)?;
    ensure!(path.exists(), "a killed archon cannot remove its socket");
    let second = Archon::builder().socket(&path).start()?;
    ensure_eq!(second.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn socket_is_created_mode_0600() -> Result {
    let a = Archon::start()?;
    let meta = std::fs::metadata(a.socket())?;
    ensure!(meta.file_type().is_socket(), "not a socket: {meta:?}");
    ensure_eq!(meta.permissions().mode() & 0o7777, 0o600, "socket mode");
    Ok(())
}

#[test]
fn missing_socket_directory_is_created_mode_0711() -> Result {
    let dir = TempDir::new()?;
    let path = dir.join("sub").join("archon.sock");
    let a = Archon::builder().socket(&path).start()?;
    let meta = std::fs::metadata(dir.join("sub"))?;
    ensure_eq!(meta.permissions().mode() & 0o7777, 0o711, "directory mode");
    ensure_eq!(a.request("Ping")?, "Pong");
    // Another user passes through it to the bind socket (mode 0666), not to archon's (0600).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let nobody = 65534;
    let bind = dir.join("sub").join("archon.sock.bind");
    let mut c = Conn::from_stream(connect_as(nobody, nobody, &bind)?)?;
    ensure!(
        c.request("Ping")?.starts_with("Error,only Bind"),
        "the bind socket"
    );
    ensure!(
        connect_as(nobody, nobody, &path).is_err(),
        "archon's socket is 0600"
    );
    Ok(())
}

#[test]
fn socket_path_comes_from_archon_socket_env() -> Result {
    let a = Archon::builder().socket_via_env().start()?;
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn ready_is_notified_to_notify_socket_once_listening() -> Result {
    let dir = TempDir::new()?;
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(BOUND))?;
    let a = Archon::builder()
        .env("NOTIFY_SOCKET", &notify_path)
        .no_wait()
        .start()?;
    let mut buf = [0u8; 4096];
    let n = notify
        .recv(&mut buf)
        .context("no notification from archon")?;
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    ensure!(msg.lines().any(|l| l == "READY=1"), "notification {msg:?}");
    // Ready means listening: the first connection succeeds without a retry.
    let mut c = a.conn().context("connect right after READY=1")?;
    ensure_eq!(c.request("Ping")?, "Pong");
    // The variable is archon's, not its children's.
    let (_, out) = run_captured(
        &mut c,
        &[
            "Run",
            "/bin/sh",
            "-c",
            "printf %s \"${NOTIFY_SOCKET-unset}\"",
        ],
    )?;
    ensure_eq!(out, "unset");
    Ok(())
}

#[test]
fn log_lines_have_timestamp_pid_and_level() -> Result {
    let a = Archon::with_args(["--log-level", "debug"])?;
    ensure_eq!(a.request("Run,/bin/true")?, "ExitStatus,0");
    let log = a.log_text();
    let tag = format!(" archon[{}]: ", a.pid());
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&tag)).collect();
    ensure!(!lines.is_empty(), "no log line with {tag:?} in {log:?}");
    for l in lines {
        // 2026-11-21T23:27:00.123Z archon[PID]: LEVEL: message
        let b = l.as_bytes();
        let shape = b.len() > 24
            && b[..24].iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'.',
                23 => *c == b'Z',
                _ => c.is_ascii_digit(),
            })
            && l[24..].starts_with(&tag);
        ensure!(shape, "log line {l:?}");
        let rest = &l[24 + tag.len()..];
        let level = rest.split(':').next().unwrap_or_default();
        ensure!(
            ["error", "warn", "info", "debug"].contains(&level.to_ascii_lowercase().as_str()),
            "level of {l:?}"
        );
    }
    Ok(())
}

#[test]
fn usage_errors_exit_100() -> Result {
    let archon = archon_bin()?;
    for args in [
        &["--frobnicate"][..],
        &["--max-runs", "many"],
        &["--log-level", "loud"],
        &["--socket"],
    ] {
        let out = output_within(Command::new(&archon).args(args), BOUND)?;
        ensure_eq!(out.status.code(), Some(100), "archon {args:?}");
    }
    Ok(())
}

#[test]
fn version_and_help_exit_0() -> Result {
    let archon = archon_bin()?;
    let out = output_within(Command::new(&archon).arg("--version"), BOUND)?;
    ensure_eq!(out.status.code(), Some(0), "--version");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "--version prints {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = output_within(Command::new(&archon).arg("--help"), BOUND)?;
    ensure_eq!(out.status.code(), Some(0), "--help");
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("--socket"),
        "--help prints {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn unbindable_socket_path_exits_111() -> Result {
    let dir = TempDir::new()?;
    // A regular file stands where the socket's directory should be.
    std::fs::write(dir.join("file"), "")?;
    let mut a = Archon::builder()
        .socket(dir.join("file").join("archon.sock"))
        .no_wait()
        .start()?;
    let status = a.wait_exit(BOUND)?;
    ensure_eq!(status.code(), Some(111), "exit ({status})");
    Ok(())
}

#[test]
fn idle_archon_does_not_wake_up() -> Result {
    let a = Archon::start()?;
    let (_, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100")?)?;
    wait_in_nanosleep(pid)?;
    ensure_eq!(a.request("Ping")?, "Pong");
    stays_asleep(a.pid(), "while idle")?;
    Ok(())
}
