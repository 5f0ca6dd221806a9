//! The `archon` binary's command line, run for real. Also makes `cargo test --workspace` build the
//! binary that the black-box tests in `tests/` start.

use std::process::Command;

#[test]
fn version_and_usage_errors() -> std::io::Result<()> {
    let archon = env!("CARGO_BIN_EXE_archon");
    let out = Command::new(archon).arg("--version").output()?;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("archon {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(archon)
        .arg("--max-runs")
        .arg("zero")
        .output()?;
    assert_eq!(out.status.code(), Some(100), "usage errors exit 100");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-runs"));
    let out = Command::new(archon)
        .arg("--socket")
        .arg("/proc/archon-test/a.sock")
        .output()?;
    assert_eq!(out.status.code(), Some(111), "cannot start: exit 111");
    Ok(())
}
