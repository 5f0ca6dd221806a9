//! archonctl against the real archon: raw lines, sub-commands, exit codes.

use std::path::Path;
use std::process::{Command, Output};

use archon_tests::archon_proto::{Kind, ProcState};
use archon_tests::*;

/// Runs `archonctl --socket <socket> <args>` with none of the test's archon variables.
fn ctl(socket: &Path, args: &[&str]) -> Result<Output> {
    output_within(
        Command::new(archonctl_bin()?)
            .env_remove("ARCHON_SOCKET")
            .arg("--socket")
            .arg(socket)
            .args(args),
        BOUND,
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails unless `out` exited with `code`; shows what it printed.
fn ensure_code(out: &Output, code: i32, what: &str) -> Result {
    ensure_eq!(
        out.status.code(),
        Some(code),
        "{what}: stdout {:?}, stderr {:?}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn raw_run_line_prints_the_output_and_exits_with_its_code() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["Run,/bin/echo,hi"])?;
    ensure_code(&out, 0, "Run,/bin/echo,hi")?;
    // The command's output, then archon's reply (archon-protocol(7)).
    ensure_eq!(stdout(&out), "hi\nExitStatus,0\n");
    let out = ctl(a.socket(), &["Run,/bin/sh,-c,exit 7"])?;
    ensure_code(&out, 7, "a raw Run exiting 7")?;
    let out = ctl(a.socket(), &["Run,/bin/sh,-c,kill -KILL $$"])?;
    ensure_code(&out, 137, "a raw Run killed by SIGKILL")?;
    Ok(())
}

#[test]
fn run_subcommand_exits_with_the_commands_code() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["run", "--", "sh", "-c", "exit 3"])?;
    ensure_code(&out, 3, "run -- sh -c 'exit 3'")?;
    let out = ctl(a.socket(), &["run", "--", "/bin/true"])?;
    ensure_code(&out, 0, "run -- /bin/true")?;
    Ok(())
}

#[test]
fn run_subcommand_sends_argv_and_env_exactly() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["run", "--", "/bin/echo", "A=1", ""])?;
    ensure_code(&out, 0, "run -- echo A=1 ''")?;
    ensure_eq!(
        stdout(&out),
        "A=1 \n",
        "an assignment-like and an empty argument"
    );
    let out = ctl(
        a.socket(),
        &[
            "run",
            "-e",
            "A=x,y",
            "--",
            "/bin/sh",
            "-c",
            "printf %s \"$A\"",
        ],
    )?;
    ensure_code(&out, 0, "run -e A=x,y")?;
    ensure_eq!(stdout(&out), "x,y");
    Ok(())
}

#[test]
fn run_refused_by_archon_exits_125() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["run", "--", "/nonexistent/program"])?;
    ensure_code(&out, 125, "run of a missing program")?;
    Ok(())
}

#[test]
fn raw_line_prints_the_reply() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["StartDaemon,/bin/sleep,100"])?;
    ensure_code(&out, 0, "StartDaemon")?;
    let text = stdout(&out);
    let (id, pid) = parse_started(text.trim_end())?;
    ensure!(alive(pid), "the daemon of {text:?} is not running");
    let row = a.row(id)?.context(format!("no row {id}"))?;
    ensure_eq!(row.pid, pid);
    let out = ctl(a.socket(), &["Ping"])?;
    ensure_code(&out, 0, "Ping")?;
    ensure_eq!(stdout(&out), "Pong\n");
    Ok(())
}

#[test]
fn raw_line_answered_with_error_exits_1() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["Frobnicate,1"])?;
    ensure_code(&out, 1, "an unknown verb")?;
    ensure!(
        stdout(&out).contains("unknown request")
            || String::from_utf8_lossy(&out.stderr).contains("unknown request"),
        "the reason is shown: {out:?}"
    );
    Ok(())
}

#[test]
fn start_status_signal_stop() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["start", "--", "/bin/sleep", "100"])?;
    ensure_code(&out, 0, "start")?;
    let row = a
        .list()?
        .into_iter()
        .find(|r| r.kind == Kind::Daemon && r.state == ProcState::Running)
        .context("start left no running daemon")?;
    ensure_eq!(row.argv, vec![b"/bin/sleep".to_vec(), b"100".to_vec()]);
    ensure!(
        stdout(&out).contains(&row.pid.to_string()),
        "start prints the pid: {:?}",
        stdout(&out)
    );
    for sub in ["status", "list"] {
        let out = ctl(a.socket(), &[sub])?;
        ensure_code(&out, 0, sub)?;
        ensure!(
            stdout(&out).contains(&row.pid.to_string()),
            "{sub} shows the daemon's pid {}: {:?}",
            row.pid,
            stdout(&out)
        );
    }
    let id = row.id.to_string();
    let out = ctl(a.socket(), &["signal", &id, "0"])?;
    ensure_code(&out, 0, "signal ID 0")?;
    ensure!(alive(row.pid), "signal 0 hurt the daemon");
    let out = ctl(a.socket(), &["stop", &id, "--grace", "5000"])?;
    ensure_code(&out, 0, "stop")?;
    ensure!(!alive(row.pid), "stop returned before the daemon ended");
    let out = ctl(a.socket(), &["stop", &id])?;
    ensure_code(&out, 1, "stop of an ended process")?;
    Ok(())
}

#[test]
fn signal_subcommand_with_group() -> Result {
    let a = Archon::start()?;
    let reply = a.request("StartDaemon,/bin/sleep,100")?;
    let (id, pid) = parse_started(&reply)?;
    let out = ctl(a.socket(), &["signal", &id.to_string(), "KILL", "--group"])?;
    ensure_code(&out, 0, "signal ID KILL --group")?;
    wait_gone(pid, "the signalled daemon")?;
    Ok(())
}

#[test]
fn monitor_subcommand() -> Result {
    let a = Archon::start()?;
    for extra in [&[][..], &["--pidfd"]] {
        let child = ChildGuard::sleep(100)?;
        let mut args = vec!["monitor".to_string(), child.pid().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ctl(a.socket(), &args)?;
        ensure_code(&out, 0, &format!("{args:?}"))?;
        let rows: Vec<_> = a
            .list()?
            .into_iter()
            .filter(|r| r.kind == Kind::Monitor && r.pid == child.pid())
            .collect();
        ensure_eq!(rows.len(), 1, "monitor rows for pid {}", child.pid());
        ensure_eq!(rows[0].state, ProcState::Running);
    }
    Ok(())
}

#[test]
fn ping_and_version() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["ping"])?;
    ensure_code(&out, 0, "ping")?;
    let out = ctl(a.socket(), &["version"])?;
    ensure_code(&out, 0, "version")?;
    ensure!(
        stdout(&out).contains(env!("CARGO_PKG_VERSION")),
        "version prints {:?}",
        stdout(&out)
    );
    Ok(())
}

#[test]
fn socket_from_archon_socket_env() -> Result {
    let a = Archon::start()?;
    let out = output_within(
        Command::new(archonctl_bin()?)
            .env("ARCHON_SOCKET", a.socket())
            .arg("ping"),
        BOUND,
    )?;
    ensure_code(&out, 0, "ping with ARCHON_SOCKET")?;
    Ok(())
}

#[test]
fn no_archon_exits_111() -> Result {
    let dir = TempDir::new()?;
    let out = ctl(&dir.join("nobody.sock"), &["ping"])?;
    ensure_code(&out, 111, "ping without archon")?;
    let out = ctl(&dir.join("nobody.sock"), &["Run,/bin/true"])?;
    ensure_code(&out, 111, "a raw Run without archon")?;
    Ok(())
}

#[test]
fn usage_errors_exit_100() -> Result {
    let dir = TempDir::new()?;
    let sock = dir.join("nobody.sock");
    for args in [&["stop"][..], &["run"], &["signal", "1"], &["--frobnicate"]] {
        let out = ctl(&sock, args)?;
        ensure_code(&out, 100, &format!("archonctl {args:?}"))?;
    }
    Ok(())
}
