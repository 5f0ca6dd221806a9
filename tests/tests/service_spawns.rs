//! Starting many services at once, against the real archon started on a Lua file (archon(8),
//! "Starting a process": services start without archon waiting for each exec, on a pool of 64
//! stacks): more services than stacks all run, each in its own process; a program that cannot
//! be executed among them fails alone, with the reason a `Run` gives, and leaves no zombie; a
//! shutdown that comes while their execs may still be pending stops everything.

use std::collections::BTreeSet;

use archon_tests::archon_proto::ServiceState;
use archon_tests::*;
use nix::sys::signal::Signal;

/// More than the 64 stacks of the pool, so that some starts find none free.
const MANY: usize = 150;

/// `MANY` services that sleep, service `s<i>` for `<base + i>` seconds (which tells its processes
/// from other tests'), with `ghost` (a missing program) among them.
fn many_with_a_ghost(base: usize) -> String {
    let mut lua = String::new();
    for i in 0..MANY {
        if i == MANY / 2 {
            lua.push_str("service \"ghost\" { argv = {\"/nonexistent/ghost\"} }\n");
        }
        lua.push_str(&format!(
            "service \"s{i}\" {{ argv = {{\"/bin/sleep\", \"{}\"}} }}\n",
            base + i
        ));
    }
    lua
}

#[test]
fn more_services_than_exec_stacks_all_run_and_a_missing_program_fails_alone() -> Result {
    let base = 73_000;
    let a = start_with_config(&many_with_a_ghost(base))?;
    let ghost = a.wait_state("ghost", ServiceState::Failed)?;
    ensure_eq!(
        reason(&ghost),
        "cannot execute /nonexistent/ghost: No such file or directory",
        "{}",
        show_row(&ghost)
    );
    ensure_eq!(ghost.pid, None, "{}", show_row(&ghost));
    let mut pids = BTreeSet::new();
    for i in 0..MANY {
        let name = format!("s{i}");
        let row = a.wait_state(&name, ServiceState::Ready)?;
        let pid = row.pid.context(format!("no pid: {}", show_row(&row)))?;
        ensure_eq!(
            cmdline(pid),
            Some(vec!["/bin/sleep".to_string(), (base + i).to_string()]),
            "{name} runs its own program"
        );
        ensure_eq!(row.restarts, 0, "{}", show_row(&row));
        pids.insert(pid);
    }
    ensure_eq!(pids.len(), MANY, "one process each");
    // The ghost's child exited 127 and was reaped; it was no event of the ghost's.
    a.wait_no_zombies()?;
    let ghost = a.service("ghost")?;
    ensure_eq!(ghost.state, ServiceState::Failed, "{}", show_row(&ghost));
    ensure_eq!(
        ghost.last,
        None,
        "no exit status of its own: {}",
        show_row(&ghost)
    );
    ensure!(
        !a.log_text().contains("ghost: exited"),
        "the ghost's child was not reported as an exit:\n{}",
        a.log_text()
    );
    Ok(())
}

#[test]
fn a_shutdown_while_services_start_stops_them_all() -> Result {
    let base = 75_000;
    let mut a = start_with_config(&many_with_a_ghost(base))?;
    // archon listens before it starts its services: the signal comes while many execs may be
    // pending, or after; either way everything stops and archon exits 0.
    a.signal(Signal::SIGTERM)?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(0), "archon's exit ({status})");
    let left: Vec<i32> = all_procs()
        .into_iter()
        .filter(|p| {
            cmdline(p.pid).is_some_and(|argv| {
                argv.first().is_some_and(|p| p == "/bin/sleep")
                    && argv
                        .get(1)
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| (base..base + MANY).contains(&n))
            })
        })
        .map(|p| p.pid)
        .collect();
    ensure!(left.is_empty(), "services left running: {left:?}");
    ensure!(
        a.log_text().contains("all processes stopped; exiting"),
        "{}",
        a.log_text()
    );
    Ok(())
}
