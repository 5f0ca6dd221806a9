//! Services that misbehave, against the real archon started on a Lua file: a missing binary, a
//! crash loop (the first restart at once, then backoff, then failed, archon's memory flat), a
//! service that ignores SIGTERM, a daemon that escapes with setsid, a critical service that
//! fails, a dependency that fails, a missed watchdog, a failing health check (a command, a TCP
//! port nobody listens on), a service never ready.
//!
//! Configurations name files in the config's own directory as `@DIR@`.

use std::collections::BTreeSet;
use std::fs;

use archon_tests::archon_proto::{Health, ServiceRow, ServiceState, Status};
use archon_tests::*;

/// Writes `lua` (with `@DIR@` replaced by the config's directory) and starts archon on it.
fn start(lua: &str) -> Result<Configured> {
    let cfg = ConfigFile::new()?;
    cfg.write(&lua.replace("@DIR@", &cfg.dir().display().to_string()))?;
    cfg.start(Archon::builder())
}

/// The pid of a service that has one.
fn pid_of(row: &ServiceRow) -> Result<i32> {
    row.pid
        .context(format!("no pid in a running row: {}", show_row(row)))
}

#[test]
fn a_missing_binary_fails_with_the_reason_and_others_run_on() -> Result {
    let a = start(
        r#"
service "ghost" { argv = {"/nonexistent", "x"}, backoff = {initial = 0.05} }
service "fine" { argv = {"/bin/sleep", "100"} }
"#,
    )?;
    let fine = pid_of(&a.wait_state("fine", ServiceState::Ready)?)?;
    let ghost = a.wait_state("ghost", ServiceState::Failed)?;
    ensure!(
        reason(&ghost).contains("cannot execute /nonexistent: No such file or directory"),
        "the reason: {}",
        show_row(&ghost)
    );
    ensure_eq!(ghost.pid, None, "{}", show_row(&ghost));
    let row = a.service("fine")?;
    ensure_eq!(row.state, ServiceState::Ready, "{}", show_row(&row));
    ensure_eq!(pid_of(&row)?, fine, "fine was restarted");
    ensure_eq!(row.restarts, 0, "{}", show_row(&row));
    a.wait_no_zombies()?;
    Ok(())
}

#[test]
fn a_crash_loop_backs_off_then_fails() -> Result {
    let a = start(
        r#"
service "crashy" { argv = {"/bin/sh", "-c", "exit 3"},
                   backoff = {initial = 0.05, multiplier = 2, max = 1} }
"#,
    )?;
    let mut states = BTreeSet::new();
    let mut restarts = Vec::new();
    let mut backoff_reasons = BTreeSet::new();
    let failed = a.wait_service("crashy", "failed", LONG_BOUND, |r| {
        states.insert(r.state.as_str());
        if restarts.last() != Some(&r.restarts) {
            restarts.push(r.restarts);
        }
        if r.state == ServiceState::Backoff {
            backoff_reasons.insert(reason(r));
        }
        r.state == ServiceState::Failed
    })?;
    ensure!(
        states.contains("backoff"),
        "backoff never showed in Status (states seen: {states:?})"
    );
    ensure!(
        backoff_reasons
            .iter()
            .all(|r| r.contains("exited with code 3")),
        "the reasons while in backoff: {backoff_reasons:?}"
    );
    ensure!(
        restarts.windows(2).all(|w| w[0] < w[1]),
        "the restart count went down: {restarts:?}"
    );
    ensure!(
        failed.restarts >= 5,
        "failed after {} restarts, the flap limit is 5: {}",
        failed.restarts,
        show_row(&failed)
    );
    ensure_eq!(
        failed.last,
        Some(Status::Exited(3)),
        "{}",
        show_row(&failed)
    );
    ensure_eq!(failed.pid, None, "{}", show_row(&failed));
    let why = reason(&failed);
    ensure!(
        why.contains("exited with code 3") && why.contains("more than 5 restarts within 10s"),
        "the reason: {}",
        show_row(&failed)
    );
    // Failed is final: no more restarts.
    let again = a.service("crashy")?;
    ensure_eq!(again.restarts, failed.restarts, "{}", show_row(&again));
    Ok(())
}

#[test]
fn the_first_restart_after_a_crash_is_immediate_the_next_backs_off() -> Result {
    // The backoff is an hour: had the first restart gone through it, the service would sit in
    // backoff after one restart and one run, and no clock is needed to tell.
    let a = start(
        r#"
service "crashy" { argv = {"/bin/sh", "-c", "echo $$ >> @DIR@/pids; exit 3"},
                   backoff = {initial = "1h", max = "1h"} }
"#,
    )?;
    let row = a.wait_service("crashy", "backoff", LONG_BOUND, |r| {
        r.state == ServiceState::Backoff
    })?;
    ensure_eq!(
        row.restarts,
        2,
        "in backoff after this many restarts (1: the first restart waited): {}",
        show_row(&row)
    );
    ensure_eq!(
        (row.pid, row.last),
        (None, Some(Status::Exited(3))),
        "{}",
        show_row(&row)
    );
    ensure!(
        reason(&row).contains("exited with code 3"),
        "the reason: {}",
        show_row(&row)
    );
    let pids = fs::read_to_string(a.config().dir().join("pids")).context("the pids file")?;
    ensure_eq!(pids.lines().count(), 2, "the runs so far: {pids:?}");
    // archon's log says the same: one restart at once, then one in an hour.
    let log = a.log_text();
    let said = |end: &str| log.lines().filter(|l| l.ends_with(end)).count();
    ensure_eq!(
        (
            said("crashy: restarting"),
            said("crashy: restarting in 3600s")
        ),
        (1, 1),
        "restarts in archon's log: {log}"
    );
    Ok(())
}

#[test]
fn archons_memory_stays_flat_across_a_crash_loop() -> Result {
    let a = start(
        r#"
service "crashy" { argv = {"/bin/sh", "-c", "exit 1"},
                   backoff = {initial = 0.005, multiplier = 1, max = 0.005},
                   flap = {restarts = 300, within = 3600} }
"#,
    )?;
    // Once the loop is warm (buffers grown to their working size), then at its end.
    a.wait_service("crashy", "30 restarts", LONG_BOUND, |r| r.restarts >= 30)?;
    let before = vm_rss_kib(a.pid())?;
    let failed = a.wait_state("crashy", ServiceState::Failed)?;
    ensure!(
        failed.restarts >= 300,
        "failed early: {}",
        show_row(&failed)
    );
    let after = vm_rss_kib(a.pid())?;
    ensure!(
        after <= before + 2048,
        "archon's RSS grew from {before} KiB to {after} KiB over {} restarts",
        failed.restarts - 30
    );
    a.wait_no_zombies()?;
    Ok(())
}

#[test]
fn a_service_that_ignores_sigterm_is_killed_at_its_stop_timeout() -> Result {
    let a = start(
        r#"
service "stubborn" { argv = {"/bin/sh", "-c", "trap '' TERM; exec sleep 100"},
                     stop_timeout = 0.3 }
"#,
    )?;
    let pid = pid_of(&a.wait_state("stubborn", ServiceState::Ready)?)?;
    // The trap is in place once the shell has executed its sleep (an ignored signal stays
    // ignored across exec).
    wait_cmdline(pid, &["sleep", "100"])?;
    ensure_eq!(a.request("Stop,stubborn")?, "Ok,stubborn,SIGKILL");
    wait_gone(pid, "stubborn")?;
    let row = a.service("stubborn")?;
    ensure_eq!(row.state, ServiceState::Stopped, "{}", show_row(&row));
    ensure_eq!(row.last, Some(Status::Signaled(9)), "{}", show_row(&row));
    Ok(())
}

#[test]
fn a_daemon_that_escapes_with_setsid_is_still_killed_on_stop() -> Result {
    let a = start(
        r#"
service "escapee" { argv = {"/bin/sh", "-c",
    [[setsid /bin/sh -c 'sleep 100 & echo $! > @DIR@/grandchild'; exec sleep 101]]} }
"#,
    )?;
    let main = pid_of(&a.wait_state("escapee", ServiceState::Ready)?)?;
    let gc: i32 = wait_line_in(a.config().dir().join("grandchild"))?
        .trim()
        .parse()
        .context("the grandchild's pid")?;
    let main_stat = stat(main).context("the main process is gone")?;
    let gc_stat = stat(gc).context("the grandchild is gone")?;
    ensure!(
        gc_stat.session != main_stat.session && gc_stat.pgrp != main_stat.pgrp,
        "the grandchild did not escape: {gc_stat:?} vs {main_stat:?}"
    );
    ensure!(
        gc_stat.ppid != main,
        "the grandchild is still the main process's child"
    );
    let cgroup = service_cgroup(a.pid(), "escapee").context("no cgroup2 mount")?;
    let gc_cgroup = cgroup_of(gc).unwrap_or_default();
    ensure!(
        cgroup.ends_with(gc_cgroup.trim_start_matches('/')) && !gc_cgroup.is_empty(),
        "the grandchild is in cgroup {gc_cgroup:?}, not the service's {}",
        cgroup.display()
    );
    let tree = a.conn()?.tree(Some("escapee"))?;
    ensure!(
        tree.iter().any(|n| n.pid == gc),
        "Tree,escapee does not list the escaped grandchild {gc}: {tree:?}"
    );
    let reply = a.request("Stop,escapee")?;
    ensure!(reply.starts_with("Ok,escapee,"), "Stop,escapee: {reply:?}");
    wait_until(
        format!("the escaped grandchild {gc} to be killed"),
        BOUND,
        || !alive(gc),
    )?;
    ensure!(!alive(main), "the main process {main} outlived Stop");
    ensure!(
        !cgroup_populated(&cgroup),
        "the service's cgroup still holds processes after Stop"
    );
    Ok(())
}

#[test]
fn a_critical_service_that_fails_stops_everything_and_archon_exits_1() -> Result {
    let mut a = start(
        r#"
service "heart" { argv = {"/bin/sh", "-c",
                          "while [ ! -e @DIR@/go ]; do sleep 0.02; done; exit 1"},
                  critical = true, restart = "never" }
service "other" { argv = {"/bin/sleep", "100"} }
"#,
    )?;
    a.wait_state("heart", ServiceState::Ready)?;
    let other = pid_of(&a.wait_state("other", ServiceState::Ready)?)?;
    fs::write(a.config().dir().join("go"), "").context("create go")?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(1), "archon's exit status ({status})");
    ensure!(!alive(other), "other (pid {other}) outlived archon");
    ensure!(!a.socket().exists(), "the socket file was left behind");
    let log = a.log_text();
    ensure!(
        log.contains("heart"),
        "archon's log does not say which critical service failed: {log:?}"
    );
    Ok(())
}

#[test]
fn a_dependency_that_fails_leaves_its_dependent_failed_with_the_reason() -> Result {
    let a = start(
        r#"
service "db" { argv = {"/bin/sh", "-c", "exit 2"}, ready = "fd", restart = "never" }
service "web" { argv = {"/bin/sh", "-c", "touch @DIR@/web_ran; exec sleep 100"},
                requires = {"db"} }
service "api" { argv = {"/bin/sleep", "100"}, requires = {"web"} }
"#,
    )?;
    let db = a.wait_state("db", ServiceState::Failed)?;
    ensure_eq!(db.last, Some(Status::Exited(2)), "{}", show_row(&db));
    let web = a.wait_state("web", ServiceState::Failed)?;
    ensure_eq!(
        reason(&web),
        "requires db, which failed",
        "{}",
        show_row(&web)
    );
    ensure_eq!(web.pid, None, "{}", show_row(&web));
    let api = a.wait_state("api", ServiceState::Failed)?;
    ensure_eq!(
        reason(&api),
        "requires web, which failed",
        "{}",
        show_row(&api)
    );
    ensure!(
        !a.config().dir().join("web_ran").exists(),
        "web ran although db failed"
    );
    // Start tries again, and says why it cannot.
    let reply = a.request("Start,web")?;
    ensure_eq!(
        error_reason(&reply)?,
        "web: requires db, which failed",
        "Start of a service whose requirement fails: {reply:?}"
    );
    Ok(())
}

#[test]
fn a_disabled_requirement_keeps_its_dependent_from_starting() -> Result {
    let a = start(
        r#"
service "db" { argv = {"/bin/sleep", "100"}, enabled = false }
service "web" { argv = {"/bin/sleep", "101"}, requires = {"db"} }
"#,
    )?;
    let web = a.wait_state("web", ServiceState::Failed)?;
    ensure_eq!(
        reason(&web),
        "requires db, which is disabled",
        "{}",
        show_row(&web)
    );
    let db = a.service("db")?;
    ensure_eq!(db.state, ServiceState::Stopped, "{}", show_row(&db));
    ensure_eq!(db.pid, None, "{}", show_row(&db));
    Ok(())
}

/// Fails unless the service that wrote its pid to `pids` at each start ran `restarts + 1` times,
/// each time as a new process, and none of them is left.
fn ensure_started_anew(a: &Configured, restarts: u32) -> Result {
    let text = fs::read_to_string(a.config().dir().join("pids")).context("the pids file")?;
    let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let distinct: BTreeSet<i32> = pids.iter().copied().collect();
    ensure!(
        pids.len() == restarts as usize + 1 && distinct.len() == pids.len(),
        "{restarts} restarts, and the service started as {pids:?}"
    );
    for pid in pids {
        wait_gone(pid, "a process of the restarted service")?;
    }
    Ok(())
}

#[test]
fn a_missed_watchdog_restarts_the_service() -> Result {
    let a = start(
        r#"
service "silent" { argv = {"/bin/sh", "-c",
                            "echo $$ >> @DIR@/pids; systemd-notify --ready; exec sleep 100"},
                   ready = "notify", watchdog = 0.3, backoff = {initial = 0.05},
                   flap = {restarts = 1, within = 60} }
service "kicked" { argv = {"/bin/sh", "-c", [[systemd-notify --ready
                           while true; do systemd-notify WATCHDOG=1; sleep 0.1; done]]},
                   ready = "notify", watchdog = 2 }
"#,
    )?;
    let kicked = pid_of(&a.wait_state("kicked", ServiceState::Ready)?)?;
    let failed = a.wait_state("silent", ServiceState::Failed)?;
    ensure!(
        reason(&failed).contains("watchdog: no WATCHDOG=1 within 300ms"),
        "the reason: {}",
        show_row(&failed)
    );
    ensure!(failed.restarts >= 1, "{}", show_row(&failed));
    ensure_started_anew(&a, failed.restarts)?;
    let row = a.service("kicked")?;
    ensure_eq!(
        (row.state, row.restarts, row.pid),
        (ServiceState::Ready, 0, Some(kicked)),
        "a service that kicks its watchdog: {}",
        show_row(&row)
    );
    Ok(())
}

#[test]
fn a_failing_health_check_restarts_the_service() -> Result {
    let a = start(
        r#"
service "sick" { argv = {"/bin/sh", "-c", "echo $$ >> @DIR@/pids; exec sleep 100"},
                 health = {command = {"/bin/sh", "-c", "exit 1"}, interval = 0.05, timeout = 1,
                           retries = 2},
                 backoff = {initial = 0.05}, flap = {restarts = 1, within = 60} }
"#,
    )?;
    let failed = a.wait_state("sick", ServiceState::Failed)?;
    ensure!(
        reason(&failed).starts_with("unhealthy: "),
        "the reason: {}",
        show_row(&failed)
    );
    ensure!(
        failed.health != Some(Health::Healthy),
        "a service failed for its health shows healthy: {}",
        show_row(&failed)
    );
    ensure!(failed.restarts >= 1, "{}", show_row(&failed));
    ensure_started_anew(&a, failed.restarts)
}

#[test]
fn a_tcp_health_check_on_a_port_nobody_listens_on_restarts_the_service() -> Result {
    let port = free_port()?;
    let a = start(&format!(
        r#"
service "deaf" {{ argv = {{"/bin/sh", "-c", "echo $$ >> @DIR@/pids; exec sleep 100"}},
                 health = {{tcp = "127.0.0.1:{port}", interval = 0.05, timeout = 1, retries = 2}},
                 backoff = {{initial = 0.05}}, flap = {{restarts = 1, within = 60}} }}
"#
    ))?;
    let failed = a.wait_state("deaf", ServiceState::Failed)?;
    let why = reason(&failed);
    ensure!(
        why.starts_with("unhealthy: ") && why.contains("refused"),
        "the reason: {}",
        show_row(&failed)
    );
    ensure!(failed.restarts >= 1, "{}", show_row(&failed));
    ensure_started_anew(&a, failed.restarts)
}

#[test]
fn a_service_not_ready_in_time_fails_its_start() -> Result {
    let a = start(
        r#"
service "slow" { argv = {"/bin/sleep", "100"}, ready = "notify", ready_timeout = 0.3,
                 restart = "never", autostart = false }
"#,
    )?;
    ensure_eq!(
        a.request("Start,slow")?,
        "Error,slow: not ready within 300ms",
        "Start of a service that never says it is ready"
    );
    let row = a.service("slow")?;
    ensure_eq!(row.state, ServiceState::Failed, "{}", show_row(&row));
    ensure_eq!(row.pid, None, "{}", show_row(&row));
    ensure!(
        reason(&row).contains("not ready within 300ms"),
        "the reason: {}",
        show_row(&row)
    );
    a.wait_no_zombies()?;
    ensure!(
        children_of(a.pid()).is_empty(),
        "the unready process is still there: {:?}",
        children_of(a.pid())
    );
    Ok(())
}
