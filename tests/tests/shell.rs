//! archon from a shell, as the issue promises: `printf 'Ping\n' | socat - UNIX-CONNECT:path`.

use std::process::Command;

use archon_tests::*;

/// True when `socat` can be run; prints why the test is skipped otherwise.
fn have_socat() -> bool {
    let found = Command::new("socat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skipped: socat is not installed (CI installs it)");
    }
    found
}

fn shell(script: &str, socket: &std::path::Path) -> Result<String> {
    let out = output_within(
        Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(socket),
        BOUND,
    )?;
    ensure!(
        out.status.success(),
        "{script:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn socat_ping_gets_pong() -> Result {
    if !have_socat() {
        return Ok(());
    }
    let a = Archon::start()?;
    let out = shell("printf 'Ping\\n' | socat - UNIX-CONNECT:\"$1\"", a.socket())?;
    ensure_eq!(out, "Pong\n");
    Ok(())
}

#[test]
fn socat_run_gets_exit_status() -> Result {
    if !have_socat() {
        return Ok(());
    }
    let a = Archon::start()?;
    // -t: wait for the reply after stdin ends (socat's default is half a second).
    let out = shell(
        "printf 'Run,/bin/sh,-c,exit 3\\nVersion\\n' | socat -t 10 - UNIX-CONNECT:\"$1\"",
        a.socket(),
    )?;
    ensure_eq!(
        out,
        format!("ExitStatus,3\nVersion,{},1\n", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}
