//! A service for the black-box tests that reports to archon through the `sd-notify` crate, as a
//! Rust daemon would, rather than through `systemd-notify`.
//!
//! `notify_client GO STATUS_BEFORE STATUS_AFTER [KICKS]`:
//! 1. sends `STATUS=<STATUS_BEFORE>`;
//! 2. waits until the file `GO` exists (the test creates it), so the test can look at the
//!    service before it is ready;
//! 3. sends `READY=1` and `STATUS=<STATUS_AFTER>` in one message;
//! 4. with `KICKS`, and a watchdog that `sd_notify::watchdog_enabled` finds in its environment,
//!    writes the watchdog's period in microseconds as the first line of `KICKS`, then sends
//!    `WATCHDOG=1` every quarter of it and adds a line `kick` to `KICKS` after each;
//! 5. sleeps until it is killed.
//!
//! Exits 2 on a usage error, 1 when a notification or a file cannot be written.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use sd_notify::NotifyState;

/// How often the file `GO` is looked for.
const GO_POLL: Duration = Duration::from_millis(10);

/// How long to sleep at a time once there is nothing left to do.
const IDLE: Duration = Duration::from_secs(3600);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (go, before, after, kicks) = match args.as_slice() {
        [go, before, after] => (go, before, after, None),
        [go, before, after, kicks] => (go, before, after, Some(kicks)),
        _ => {
            eprintln!("usage: notify_client GO STATUS_BEFORE STATUS_AFTER [KICKS]");
            return ExitCode::from(2);
        }
    };
    match run(Path::new(go), before, after, kicks.map(Path::new)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notify_client: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(go: &Path, before: &str, after: &str, kicks: Option<&Path>) -> std::io::Result<()> {
    sd_notify::notify(&[NotifyState::Status(before)])?;
    while !go.exists() {
        std::thread::sleep(GO_POLL);
    }
    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(after)])?;
    if let (Some(path), Some(period)) = (kicks, sd_notify::watchdog_enabled()) {
        let mut log = OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(log, "{}", period.as_micros())?;
        loop {
            std::thread::sleep(period / 4);
            sd_notify::notify(&[NotifyState::Watchdog])?;
            writeln!(log, "kick")?;
        }
    }
    loop {
        std::thread::sleep(IDLE);
    }
}
