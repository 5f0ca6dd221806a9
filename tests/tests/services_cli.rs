//! archonctl's service sub-commands against the real archon, named after archonctl(1): what
//! `start` means with one word or with a command, `daemon`, `list`, and the names that are
//! usage errors. What archon does with a service is tested beside the service model.

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

/// The ids of the running daemons whose argv is `argv`.
fn daemons(a: &Archon, argv: &[&str]) -> Result<Vec<u64>> {
    let argv: Vec<Vec<u8>> = argv.iter().map(|s| s.as_bytes().to_vec()).collect();
    Ok(a.list()?
        .into_iter()
        .filter(|r| r.kind == Kind::Daemon && r.state == ProcState::Running && r.argv == argv)
        .map(|r| r.id)
        .collect())
}

#[test]
fn a_name_that_breaks_the_rule_is_a_usage_error() -> Result {
    // No archon: a usage error is found before connecting.
    let dir = TempDir::new()?;
    let sock = dir.join("nobody.sock");
    for args in [
        &["status", "3"][..],
        &["status", "db", "a/b"],
        &["restart", "7"],
        &["restart", "-x"],
        &["stop", "a b"],
        &["pause", ".hidden"],
        &["resume", "a,b"],
        &["signal", "x/y", "TERM"],
        &["tree", "12"],
        &["tree", "a", "b"],
        &["config", "extra"],
        &["reload", "now"],
        &["list", "--csv"],
    ] {
        let out = ctl(&sock, args)?;
        ensure_code(&out, 100, &format!("archonctl {args:?}"))?;
    }
    let name = "a".repeat(65);
    let out = ctl(&sock, &["restart", &name])?;
    ensure_code(&out, 100, "a name of 65 bytes")?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("at most 64 bytes"),
        "the rule is named: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn daemon_and_start_with_a_command_start_daemons() -> Result {
    let a = Archon::start()?;
    for (args, argv) in [
        (
            &["daemon", "/bin/sleep", "100"][..],
            &["/bin/sleep", "100"][..],
        ),
        (&["daemon", "sleep"], &["sleep"]),
        (&["start", "sleep", "101"], &["sleep", "101"]),
        (&["start", "/bin/sleep", "102"], &["/bin/sleep", "102"]),
        (&["start", "--", "true"], &["true"]),
    ] {
        let before = a.list()?.len();
        let out = ctl(a.socket(), args)?;
        ensure_code(&out, 0, &format!("archonctl {args:?}"))?;
        let rows = a.list()?;
        ensure_eq!(rows.len(), before + 1, "{args:?} starts one process");
        let row = rows
            .iter()
            .max_by_key(|r| r.id)
            .context("no process after a start")?;
        ensure_eq!(row.kind, Kind::Daemon, "{args:?}");
        let want: Vec<Vec<u8>> = argv.iter().map(|s| s.as_bytes().to_vec()).collect();
        ensure_eq!(row.argv, want, "{args:?}");
        ensure_eq!(
            stdout(&out),
            format!("{} {}\n", row.id, row.pid),
            "{args:?} prints ID PID"
        );
    }
    // Stopped by id, as before services.
    for id in daemons(&a, &["/bin/sleep", "100"])? {
        let out = ctl(a.socket(), &["stop", &id.to_string(), "--grace", "5000"])?;
        ensure_code(&out, 0, "stop ID")?;
        ensure_eq!(stdout(&out), format!("{id} SIGTERM\n"));
    }
    Ok(())
}

#[test]
fn start_of_one_word_asks_for_that_service() -> Result {
    let a = Archon::start()?;
    let before = a.list()?.len();
    // `sleep` is a valid service name, and archon declares no service of that name (this archon
    // has no configuration): a refusal, and nothing is started.
    let out = ctl(a.socket(), &["start", "sleep"])?;
    ensure_code(&out, 1, "start sleep")?;
    ensure_eq!(stdout(&out), "", "a refused start prints nothing on stdout");
    ensure!(!out.stderr.is_empty(), "the refusal is on stderr");
    ensure_eq!(a.list()?.len(), before, "start NAME started a process");
    Ok(())
}

#[test]
fn list_shows_the_processes() -> Result {
    let a = Archon::start()?;
    let out = ctl(a.socket(), &["daemon", "/bin/sleep", "100"])?;
    ensure_code(&out, 0, "daemon")?;
    let ids = daemons(&a, &["/bin/sleep", "100"])?;
    ensure_eq!(ids.len(), 1);
    let out = ctl(a.socket(), &["list"])?;
    ensure_code(&out, 0, "list")?;
    let text = stdout(&out);
    ensure!(
        text.starts_with("ID  KIND"),
        "list prints the process table: {text:?}"
    );
    ensure!(
        text.lines()
            .any(|l| l.starts_with(&format!("{}  ", ids[0])) && l.ends_with("/bin/sleep 100")),
        "list shows the daemon: {text:?}"
    );
    Ok(())
}
