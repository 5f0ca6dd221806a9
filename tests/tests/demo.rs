//! `archon --demo`, the README's first command: the demonstration configuration built into the
//! binary supervises real processes as `examples/demo.lua` says it does, reloads, and stops.

use std::time::Duration;

use archon_tests::archon_proto::{ServiceKind, ServiceState, Status};
use archon_tests::*;
use nix::sys::signal::Signal;

#[test]
fn the_built_in_demo_runs_what_examples_demo_lua_declares() -> Result {
    let mut a = Archon::builder().arg("--demo").start()?;
    // `setup` is a task that has finished; `db` said it was ready over NOTIFY_SOCKET, `cache`
    // on fd 3; `web` requires db and runs; the workers come after web.
    let web = a.wait_state("web", ServiceState::Ready)?;
    ensure!(web.pid.is_some(), "web runs: {}", show_row(&web));
    let setup = a.service("setup")?;
    ensure_eq!(setup.kind, ServiceKind::Task);
    ensure_eq!(setup.state, ServiceState::Done, "{}", show_row(&setup));
    ensure_eq!(setup.last, Some(Status::Exited(0)), "{}", show_row(&setup));
    let db = a.service("db")?;
    ensure_eq!(db.ready, Some(true), "{}", show_row(&db));
    let cache = a.wait_state("cache", ServiceState::Ready)?;
    ensure_eq!(cache.ready, Some(true), "{}", show_row(&cache));
    for w in ["worker1", "worker2", "worker3"] {
        let row = a.wait_state(w, ServiceState::Ready)?;
        ensure!(row.pid.is_some_and(alive), "{w} runs: {}", show_row(&row));
    }
    // `flaky` exits 3 after two seconds and is restarted.
    let flaky = a.wait_service("flaky", "a restart", LONG_BOUND, |r| r.restarts >= 1)?;
    ensure_eq!(flaky.last, Some(Status::Exited(3)), "{}", show_row(&flaky));
    // The built-in file is what Reload reads again: nothing changed, nothing restarts.
    let web_pid = web.pid;
    let reply = a.request("Reload")?;
    ensure!(reply.starts_with("Ok"), "Reload: {reply}");
    ensure_eq!(a.service("web")?.pid, web_pid, "web kept its process");
    // SIGTERM stops everything and archon exits 0.
    a.signal(Signal::SIGTERM)?;
    let status = a.wait_exit(Duration::from_secs(30))?;
    ensure_eq!(status.code(), Some(0), "archon's exit: {status:?}");
    for pid in [web_pid, db.pid, cache.pid].into_iter().flatten() {
        wait_gone(pid, "a demo service after archon's exit")?;
    }
    Ok(())
}

#[test]
fn demo_and_config_together_are_a_usage_error() -> Result {
    let out = output_within(
        std::process::Command::new(archon_bin()?).args(["--demo", "--config", "/dev/null"]),
        BOUND,
    )?;
    ensure_eq!(out.status.code(), Some(100), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("--demo"), "stderr: {err}");
    Ok(())
}
