//! The `archonctl` binary's command line, run for real. Also makes `cargo test --workspace` build the
//! binary that the black-box tests in `tests/` start.

use std::process::Command;

#[test]
fn version_usage_and_no_archon() -> std::io::Result<()> {
    let ctl = env!("CARGO_BIN_EXE_archonctl");
    let out = Command::new(ctl).arg("--version").output()?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(ctl).arg("stop").output()?;
    assert_eq!(
        out.status.code(),
        Some(100),
        "a sub-command without its argument is a usage error"
    );
    let out = Command::new(ctl)
        .args(["--socket", "/nonexistent/archon.sock", "ping"])
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(111),
        "no archon to talk to: exit 111"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/archon.sock"));
    Ok(())
}
