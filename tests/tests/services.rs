//! The service model against the real archon started on a Lua file, named after archon.lua(5)
//! and archon-protocol(7): dependency order and readiness (exec, notify with `systemd-notify`
//! and with the sd-notify crate, fd), a task that fails, the service requests and their replies
//! (Signal by name among them), shutdown in reverse order, reload, what Status, Tree, Config and
//! `archonctl status` (CSV, and a table on a terminal) show, and health checks that pass.
//!
//! Configurations name files in the config's own directory as `@DIR@`; the services write
//! `date +%s%N` there to say when something happened, so that order is checked from the
//! services' side without any clock in the test.

use std::fs;
use std::os::fd::AsFd;
use std::process::{Command, ExitStatus};
use std::time::Instant;

use archon_tests::archon_proto::{Health, ServiceKind, ServiceRow, ServiceState, Status};
use archon_tests::*;
use nix::sys::signal::Signal;

/// Writes `lua` (with `@DIR@` replaced by the config's directory) and starts archon on it.
fn start(lua: &str) -> Result<Configured> {
    let cfg = ConfigFile::new()?;
    cfg.write(&lua.replace("@DIR@", &cfg.dir().display().to_string()))?;
    cfg.start(Archon::builder())
}

/// The nanoseconds since the epoch a service wrote to `name` with `date +%s%N`.
fn ns_in(a: &Configured, name: &str) -> Result<u128> {
    let text = wait_line_in(a.config().file(name))?;
    text.trim()
        .parse()
        .context(format!("a time in {name}: {text:?}"))
}

/// The pid of a service that has one.
fn pid_of(row: &ServiceRow) -> Result<i32> {
    row.pid
        .context(format!("no pid in a running row: {}", show_row(row)))
}

#[test]
fn a_task_then_a_requires_chain_start_in_order() -> Result {
    let a = start(
        r#"
task "migrate" { argv = {"/bin/sh", "-c", "sleep 0.1; date +%s%N > @DIR@/migrated"},
                 before = {"db"} }
service "db" { argv = {"/bin/sh", "-c", [[date +%s%N > @DIR@/db_started; sleep 0.3;
                                          date +%s%N > @DIR@/db_ready; systemd-notify --ready;
                                          exec sleep 100]]},
               ready = "notify" }
service "web" { argv = {"/bin/sh", "-c", "date +%s%N > @DIR@/web_started; exec sleep 100"},
                requires = {"db"} }
"#,
    )?;
    let web = a.wait_state("web", ServiceState::Ready)?;
    let db = a.service("db")?;
    let migrate = a.service("migrate")?;
    ensure_eq!(migrate.state, ServiceState::Done, "{}", show_row(&migrate));
    ensure_eq!(migrate.kind, ServiceKind::Task);
    ensure_eq!(
        migrate.last,
        Some(Status::Exited(0)),
        "{}",
        show_row(&migrate)
    );
    ensure_eq!(db.state, ServiceState::Ready, "{}", show_row(&db));
    ensure_eq!(db.ready, Some(true), "{}", show_row(&db));
    ensure_eq!(web.ready, Some(true), "{}", show_row(&web));
    let (migrated, db_started) = (ns_in(&a, "migrated")?, ns_in(&a, "db_started")?);
    let (db_ready, web_started) = (ns_in(&a, "db_ready")?, ns_in(&a, "web_started")?);
    ensure!(
        migrated <= db_started,
        "db started {} ms before the task it comes after had finished",
        (migrated - db_started) / 1_000_000
    );
    ensure!(
        db_ready <= web_started,
        "web started {} ms before db, which it requires, was ready",
        (db_ready - web_started) / 1_000_000
    );
    // Status's since for a running service is when it started: not before its dependency
    // said it was ready (ms, truncated on both sides).
    ensure!(
        u128::from(web.since_ms) >= db_ready / 1_000_000,
        "web's since ({}) is before db was ready ({} ms)",
        web.since_ms,
        db_ready / 1_000_000
    );
    Ok(())
}

#[test]
fn ready_fd_means_ready_once_the_line_is_written() -> Result {
    let a = start(
        r#"
service "f" { argv = {"/bin/sh", "-c", [[sleep 0.2; date +%s%N > @DIR@/f_ready; echo ready >&3;
                                         exec sleep 100]]},
              ready = "fd" }
service "g" { argv = {"/bin/sh", "-c", "date +%s%N > @DIR@/g_started; exec sleep 100"},
              requires = {"f"} }
"#,
    )?;
    let f_ready = a.config().dir().join("f_ready");
    // Whenever archon says f is ready, f has written its line (the file comes first).
    let mut early = false;
    let f = a.wait_service("f", "ready", LONG_BOUND, |r| {
        let ready = r.state == ServiceState::Ready || r.ready == Some(true);
        if ready {
            early = !f_ready.exists();
        }
        ready
    })?;
    ensure!(
        !early,
        "f is ready before it wrote its line: {}",
        show_row(&f)
    );
    ensure_eq!(f.ready, Some(true), "{}", show_row(&f));
    a.wait_state("g", ServiceState::Ready)?;
    let (ready, g_started) = (ns_in(&a, "f_ready")?, ns_in(&a, "g_started")?);
    ensure!(
        ready <= g_started,
        "g started before f, which it requires, was ready"
    );
    Ok(())
}

#[test]
fn the_sd_notify_crate_reports_status_then_ready_and_kicks_the_watchdog() -> Result {
    // notify_client (tests/src/bin) speaks through the sd-notify crate, as a Rust daemon would.
    let client = bin("notify_client")?.display().to_string();
    let a = start(
        &r#"
service "rusty" { argv = {"@BIN@", "@DIR@/go", "warming up", "serving 3 clients"},
                  ready = "notify" }
service "kicker" { argv = {"@BIN@", "@DIR@/go", "kicker warming up", "kicking",
                           "@DIR@/kicks"},
                   ready = "notify", watchdog = "1s" }
service "after" { argv = {"/bin/sleep", "100"}, requires = {"rusty"} }
"#
        .replace("@BIN@", &client),
    )?;
    // Before READY=1: running but not ready, its STATUS= text shown as the reason, and what
    // requires it still waiting to start.
    let early = a.wait_service("rusty", "its first STATUS=", LONG_BOUND, |r| {
        reason(r) == "warming up"
    })?;
    ensure_eq!(
        (early.state, early.ready),
        (ServiceState::Running, Some(false)),
        "before READY=1: {}",
        show_row(&early)
    );
    let pid = pid_of(&early)?;
    a.wait_service("kicker", "its first STATUS=", LONG_BOUND, |r| {
        reason(r) == "kicker warming up"
    })?;
    let after = a.service("after")?;
    ensure_eq!(
        (after.state, after.pid),
        (ServiceState::Starting, None),
        "a service that requires one not yet ready: {}",
        show_row(&after)
    );

    fs::write(a.config().dir().join("go"), "").context("create go")?;
    let ready = a.wait_state("rusty", ServiceState::Ready)?;
    ensure_eq!(
        (ready.ready, ready.pid, reason(&ready)),
        (Some(true), Some(pid), "serving 3 clients".to_string()),
        "after READY=1 with a new STATUS=: {}",
        show_row(&ready)
    );
    a.wait_state("after", ServiceState::Ready)?;

    // The crate finds the watchdog archon set up, and its kicks keep the service running.
    let kicker = pid_of(&a.wait_state("kicker", ServiceState::Ready)?)?;
    let kicks = a.config().dir().join("kicks");
    let text = wait_for("six watchdog kicks", LONG_BOUND, || {
        let text = fs::read_to_string(&kicks).ok()?;
        (text.lines().filter(|l| *l == "kick").count() >= 6).then_some(text)
    })?;
    ensure_eq!(
        text.lines().next(),
        Some("1000000"),
        "the watchdog period sd_notify::watchdog_enabled read, in microseconds"
    );
    let row = a.service("kicker")?;
    ensure_eq!(
        (row.state, row.restarts, row.pid, reason(&row)),
        (ServiceState::Ready, 0, Some(kicker), "kicking".to_string()),
        "a service that kicks its watchdog: {}",
        show_row(&row)
    );
    Ok(())
}

#[test]
fn after_a_restart_the_reason_of_the_crash_gives_way_to_the_new_process() -> Result {
    // Each crashes once, then runs: the row of the running service shows its own STATUS= (or
    // nothing), while how the old process ended stays in `last`.
    let client = bin("notify_client")?.display().to_string();
    let a = start(
        &r#"
service "phoenix" { argv = {"/bin/sh", "-c", [[[ -e @DIR@/p_crashed ] || { touch @DIR@/p_crashed; exit 3; }
                                                exec @BIN@ @DIR@/go rising risen]]},
                    ready = "notify" }
service "plain" { argv = {"/bin/sh", "-c", [[[ -e @DIR@/q_crashed ] || { touch @DIR@/q_crashed; exit 4; }
                                              exec sleep 100]]} }
"#
        .replace("@BIN@", &client),
    )?;
    let row = a.wait_service(
        "phoenix",
        "restarted and sending STATUS=",
        LONG_BOUND,
        |r| r.restarts == 1 && r.pid.is_some() && reason(r) == "rising",
    )?;
    ensure_eq!(
        (row.state, row.last),
        (ServiceState::Running, Some(Status::Exited(3))),
        "{}",
        show_row(&row)
    );
    fs::write(a.config().dir().join("go"), "").context("create go")?;
    let row = a.wait_state("phoenix", ServiceState::Ready)?;
    ensure_eq!(reason(&row), "risen", "{}", show_row(&row));

    let row = a.wait_service("plain", "restarted", LONG_BOUND, |r| {
        r.restarts == 1 && r.state == ServiceState::Ready
    })?;
    ensure_eq!(
        (reason(&row), row.last),
        (String::new(), Some(Status::Exited(4))),
        "a ready service after a restart: {}",
        show_row(&row)
    );
    Ok(())
}

#[test]
fn a_failing_task_keeps_its_dependent_from_starting() -> Result {
    let a = start(
        r#"
task "migrate" { argv = {"/bin/sh", "-c", "exit 3"} }
service "web" { argv = {"/bin/sh", "-c", "touch @DIR@/web_ran; exec sleep 100"},
                requires = {"migrate"} }
service "other" { argv = {"/bin/sleep", "100"} }
"#,
    )?;
    let migrate = a.wait_state("migrate", ServiceState::Failed)?;
    ensure_eq!(
        migrate.last,
        Some(Status::Exited(3)),
        "{}",
        show_row(&migrate)
    );
    ensure!(
        reason(&migrate).contains("exited with code 3"),
        "the task's reason: {}",
        show_row(&migrate)
    );
    let web = a.wait_state("web", ServiceState::Failed)?;
    ensure_eq!(web.pid, None, "{}", show_row(&web));
    ensure_eq!(
        reason(&web),
        "requires migrate, which failed",
        "{}",
        show_row(&web)
    );
    ensure!(
        !a.config().dir().join("web_ran").exists(),
        "web ran although what it requires failed"
    );
    a.wait_state("other", ServiceState::Ready)?;
    Ok(())
}

#[test]
fn each_service_gets_its_environment_and_its_own_cgroup() -> Result {
    let a = start(
        r#"
service "plain" { argv = {"/bin/sleep", "100"}, env = {GREETING = "hi", N = 5} }
service "notified" { argv = {"/bin/sh", "-c", "systemd-notify --ready; exec sleep 100"},
                     ready = "notify", watchdog = "2s" }
"#,
    )?;
    let plain = a.wait_state("plain", ServiceState::Ready)?;
    let notified = a.wait_state("notified", ServiceState::Ready)?;
    wait_cmdline(pid_of(&plain)?, &["/bin/sleep", "100"])?;
    let env = environ(pid_of(&plain)?)?;
    for want in ["ARCHON_SERVICE=plain", "GREETING=hi", "N=5"] {
        ensure!(
            env.iter().any(|e| e == want),
            "plain's environment lacks {want}: {env:?}"
        );
    }
    ensure!(
        !env.iter().any(|e| e.starts_with("NOTIFY_SOCKET=")),
        "an exec-ready service is given a NOTIFY_SOCKET: {env:?}"
    );
    let pid = pid_of(&notified)?;
    wait_cmdline(pid, &["sleep", "100"])?;
    let env = environ(pid)?;
    for want in ["ARCHON_SERVICE=notified", "WATCHDOG_USEC=2000000"] {
        ensure!(
            env.iter().any(|e| e == want),
            "notified's environment lacks {want}: {env:?}"
        );
    }
    ensure!(
        env.iter()
            .any(|e| e.starts_with("NOTIFY_SOCKET=/") && e.len() > "NOTIFY_SOCKET=/".len()),
        "notified has no NOTIFY_SOCKET path: {env:?}"
    );
    for (name, pid) in [("plain", pid_of(&plain)?), ("notified", pid)] {
        let want = service_cgroup(a.pid(), name).context("no cgroup2 mount")?;
        let got = cgroup_of(pid).context(format!("no cgroup for {pid}"))?;
        ensure!(
            want.ends_with(got.trim_start_matches('/')),
            "{name} (pid {pid}) is in cgroup {got}, not {}",
            want.display()
        );
    }
    Ok(())
}

#[test]
fn start_stop_restart_pause_resume_reply_as_specified() -> Result {
    let a = start(
        r#"
service "s" { argv = {"/bin/sleep", "100"}, autostart = false }
service "dep" { argv = {"/bin/sleep", "101"}, requires = {"s"}, autostart = false }
"#,
    )?;
    let mut c = a.conn()?;
    let s = a.service("s")?;
    ensure_eq!(s.state, ServiceState::Stopped, "{}", show_row(&s));
    ensure_eq!(s.pid, None, "{}", show_row(&s));

    ensure_eq!(c.request("Start,s")?, "Ok,s");
    let s = a.service("s")?;
    ensure_eq!(
        s.state,
        ServiceState::Ready,
        "after Start: {}",
        show_row(&s)
    );
    let first = pid_of(&s)?;
    ensure!(alive(first), "s's pid {first} is not alive");
    ensure_eq!(c.request("Start,s")?, "Ok,s", "Start of a ready service");
    ensure_eq!(
        pid_of(&a.service("s")?)?,
        first,
        "a second Start restarted it"
    );

    ensure_eq!(c.request("Stop,s")?, "Ok,s,SIGTERM");
    wait_gone(first, "s after Stop")?;
    let s = a.service("s")?;
    ensure_eq!(
        s.state,
        ServiceState::Stopped,
        "after Stop: {}",
        show_row(&s)
    );
    ensure_eq!(s.pid, None, "after Stop: {}", show_row(&s));
    ensure_eq!(c.request("Stop,s")?, "Ok,s,-", "Stop of a stopped service");

    // Start pulls in what it requires; Stop of a requirement stops its dependent first.
    ensure_eq!(c.request("Start,dep")?, "Ok,dep");
    let s = a.service("s")?;
    ensure_eq!(
        s.state,
        ServiceState::Ready,
        "Start,dep pulls in s: {}",
        show_row(&s)
    );
    let dep_pid = pid_of(&a.service("dep")?)?;
    ensure_eq!(c.request("Stop,s")?, "Ok,s,SIGTERM");
    let dep = a.service("dep")?;
    ensure_eq!(
        dep.state,
        ServiceState::Stopped,
        "stopping s stops dep, which requires it: {}",
        show_row(&dep)
    );
    wait_gone(dep_pid, "dep")?;

    ensure_eq!(c.request("Start,s")?, "Ok,s");
    let before = pid_of(&a.service("s")?)?;
    ensure_eq!(c.request("Restart,s")?, "Ok,s");
    let s = a.service("s")?;
    ensure_eq!(
        s.state,
        ServiceState::Ready,
        "after Restart: {}",
        show_row(&s)
    );
    let after = pid_of(&s)?;
    ensure!(after != before, "Restart kept pid {before}");
    wait_gone(before, "s's process before Restart")?;

    ensure_eq!(c.request("Pause,s")?, "Ok,s");
    let s = a.service("s")?;
    ensure_eq!(
        s.state,
        ServiceState::Paused,
        "after Pause: {}",
        show_row(&s)
    );
    let cgroup = service_cgroup(a.pid(), "s").context("no cgroup2 mount")?;
    let frozen = || {
        fs::read_to_string(cgroup.join("cgroup.events"))
            .is_ok_and(|t| t.lines().any(|l| l == "frozen 1"))
    };
    wait_until(
        "s's process to be stopped (state T) or its cgroup frozen",
        BOUND,
        || stat(after).is_some_and(|st| st.state == 'T') || frozen(),
    )?;
    ensure_eq!(c.request("Resume,s")?, "Ok,s");
    let s = a.service("s")?;
    ensure!(
        matches!(s.state, ServiceState::Ready | ServiceState::Running),
        "after Resume: {}",
        show_row(&s)
    );
    ensure_eq!(pid_of(&s)?, after, "Resume changed the pid");
    wait_until("s's process to run again", BOUND, || {
        stat(after).is_some_and(|st| st.state != 'T') && !frozen()
    })?;

    for verb in ["Start", "Stop", "Restart", "Pause", "Resume"] {
        ensure_eq!(
            c.request(&format!("{verb},nosuch"))?,
            "Error,no such service: nosuch",
            "{verb} of an unknown name"
        );
    }
    ensure_eq!(
        c.request("Status,s,nosuch")?,
        "Error,no such service: nosuch",
        "Status naming an unknown service"
    );
    Ok(())
}

#[test]
fn signal_reaches_a_service_by_name_and_a_bad_signal_changes_nothing() -> Result {
    let a = start(
        r#"
service "trapper" { argv = {"/bin/sh", "-c", [[
    trap 'echo USR1 >> @DIR@/main' USR1
    trap 'echo USR2 >> @DIR@/main' USR2
    /bin/sh -c "trap 'echo USR1 >> @DIR@/child' USR1; trap 'echo USR2 >> @DIR@/child' USR2
                echo up > @DIR@/child_up; while :; do sleep 0.05; done" &
    echo up > @DIR@/main_up
    while :; do sleep 0.05; done]]} }
service "idle" { argv = {"/bin/sleep", "100"}, autostart = false }
"#,
    )?;
    let pid = pid_of(&a.wait_state("trapper", ServiceState::Ready)?)?;
    // Both shells have set their traps once they have written these.
    wait_line_in(a.config().file("main_up"))?;
    wait_line_in(a.config().file("child_up"))?;
    let main = a.config().dir().join("main");
    let child = a.config().dir().join("child");
    let has = |path: &std::path::Path, want: &str| {
        wait_until(
            format!("{} to read {want:?}", path.display()),
            BOUND,
            || fs::read_to_string(path).is_ok_and(|t| t == want),
        )
    };

    // To the main process only.
    ensure_eq!(a.request("Signal,trapper,USR1")?, "Ok,trapper");
    has(&main, "USR1\n")?;
    // With group, to every process of the service: the child shell too. Its file then holds
    // USR2 alone: had USR1 reached it as well, that trap would have run first (it was pending
    // earlier, and the shell runs pending traps in signal order).
    ensure_eq!(a.request("Signal,trapper,SIGUSR2,group")?, "Ok,trapper");
    has(&main, "USR1\nUSR2\n")?;
    has(&child, "USR2\n")?;

    for (request, why) in [
        ("Signal,trapper,NOSUCH", "bad signal"),
        ("Signal,trapper,65", "bad signal"),
        (
            "Signal,trapper,USR1,everyone",
            "bad signal scope: only 'group' is known",
        ),
        ("Signal,nosuch,USR1", "no such service: nosuch"),
        ("Signal,idle,USR1", "idle is stopped, not running"),
    ] {
        let reply = a.request(request)?;
        ensure_eq!(error_reason(&reply)?, why, "{request}: {reply:?}");
    }
    let row = a.service("trapper")?;
    ensure_eq!(
        (row.state, row.pid, row.restarts),
        (ServiceState::Ready, Some(pid), 0),
        "after the bad requests: {}",
        show_row(&row)
    );
    ensure!(alive(pid), "trapper's pid {pid} is gone");
    ensure_eq!(
        fs::read_to_string(&main).context("the main shell's file")?,
        "USR1\nUSR2\n",
        "a bad Signal request reached the service"
    );
    Ok(())
}

#[test]
fn sigterm_to_archon_stops_dependents_first() -> Result {
    let script = |name: &str| {
        format!(
            "service \"{name}\" {{ argv = {{\"/bin/sh\", \"-c\", \
             [[trap 'echo {name} >> @DIR@/order; exit 0' TERM
               while :; do sleep 100 & wait; done]]}}, \
             stop_timeout = 5{} }}\n",
            match name {
                "b" => ", requires = {\"a\"}",
                "c" => ", requires = {\"b\"}",
                _ => "",
            }
        )
    };
    // Declared out of order: the order comes from `requires`, not from the file. Each shell
    // forks a new sleep if its sleep dies first: what is checked here is the order between
    // services (see the next test for the order within one).
    let lua = [script("c"), script("a"), script("b")].concat();
    let mut a = start(&lua)?;
    let mut pids = Vec::new();
    for name in ["a", "b", "c"] {
        let pid = pid_of(&a.wait_state(name, ServiceState::Ready)?)?;
        // The trap is set once the shell has forked its sleep.
        wait_until(format!("{name}'s shell to fork its sleep"), BOUND, || {
            !children_of(pid).is_empty()
        })?;
        pids.push(pid);
    }
    a.signal(Signal::SIGTERM)?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(0), "archon's exit status ({status})");
    let order = fs::read_to_string(a.config().dir().join("order")).context("the order file")?;
    ensure_eq!(
        order,
        "c\nb\na\n",
        "the services' TERM traps ran in this order"
    );
    for pid in pids {
        ensure!(!alive(pid), "pid {pid} outlived archon");
    }
    Ok(())
}

#[test]
fn a_shell_that_waits_for_its_child_gets_its_stop_signal() -> Result {
    // A shell that waits for its child and says goodbye on TERM: stopped, its trap must run.
    // If archon signals the child before the main process, the shell may see its child end,
    // return from `wait` and exit 0 before its own TERM arrives. Several at once, so that such
    // a race shows.
    const N: usize = 8;
    let lua: String = (0..N)
        .map(|i| {
            format!(
                "service \"w{i}\" {{ argv = {{\"/bin/sh\", \"-c\", \
                 [[trap 'echo w{i} >> @DIR@/bye; exit 0' TERM; sleep 100 & wait]]}} }}\n"
            )
        })
        .collect();
    let a = start(&lua)?;
    for i in 0..N {
        let pid = pid_of(&a.wait_state(&format!("w{i}"), ServiceState::Ready)?)?;
        wait_until(format!("w{i}'s shell to fork its sleep"), BOUND, || {
            !children_of(pid).is_empty()
        })?;
    }
    let mut replies = Vec::new();
    for i in 0..N {
        replies.push(a.request(&format!("Stop,w{i}"))?);
    }
    let want: Vec<String> = (0..N).map(|i| format!("Ok,w{i},0")).collect();
    let bye = fs::read_to_string(a.config().dir().join("bye")).unwrap_or_default();
    let mut said: Vec<&str> = bye.lines().collect();
    said.sort_unstable();
    ensure_eq!(
        (said.len(), replies),
        (N, want),
        "every shell's TERM trap ran and it exited 0 (the trap ran in: {said:?})"
    );
    Ok(())
}

#[test]
fn reload_starts_new_stops_gone_restarts_changed_and_keeps_the_rest() -> Result {
    let v1 = r#"
service "keep" { argv = {"/bin/sleep", "100"} }
service "change" { argv = {"/bin/sleep", "101"} }
service "gone" { argv = {"/bin/sleep", "102"} }
"#;
    let v2 = r#"
service "keep" { argv = {"/bin/sleep", "100"} }
service "change" { argv = {"/bin/sleep", "103"} }
service "new" { argv = {"/bin/sleep", "104"} }
"#;
    let a = start(v1)?;
    let keep = pid_of(&a.wait_state("keep", ServiceState::Ready)?)?;
    let change = pid_of(&a.wait_state("change", ServiceState::Ready)?)?;
    let gone = pid_of(&a.wait_state("gone", ServiceState::Ready)?)?;
    a.config().write(v2)?;
    ensure_eq!(a.request("Reload")?, "Ok,1,1,1,1", "Reload's counts");
    let new = a.wait_state("new", ServiceState::Ready)?;
    wait_cmdline(pid_of(&new)?, &["/bin/sleep", "104"])?;
    let changed = a.wait_state("change", ServiceState::Ready)?;
    let changed_pid = pid_of(&changed)?;
    ensure!(
        changed_pid != change,
        "the changed service kept pid {change}"
    );
    // The changed service runs its new argv.
    wait_cmdline(changed_pid, &["/bin/sleep", "103"])?;
    wait_gone(change, "the changed service's old process")?;
    wait_gone(gone, "the removed service's process")?;
    ensure_eq!(
        a.request("Status,gone")?,
        "Error,no such service: gone",
        "a removed service"
    );
    let kept = a.service("keep")?;
    ensure_eq!(pid_of(&kept)?, keep, "the unchanged service was restarted");
    ensure_eq!(kept.restarts, 0, "{}", show_row(&kept));

    // A broken file: an error naming file and line, and nothing changes.
    a.config()
        .write("service \"keep\" { argv = {\"/bin/sleep\", \"100\"} }\nservice \"x\" {\n")?;
    let before: Vec<(String, Option<i32>)> =
        a.status()?.iter().map(|r| (row_name(r), r.pid)).collect();
    let reply = a.request("Reload")?;
    let path = a.config().path().display().to_string();
    let why = error_reason(&reply).context(format!("Reload of a broken file: {reply:?}"))?;
    let line_no = why
        .strip_prefix(&format!("{path}:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_default();
    ensure!(
        line_no.parse::<u32>().is_ok_and(|n| (2..=3).contains(&n)),
        "Reload of a broken file: {why:?} (want {path}:<line 2 or 3>: ...)"
    );
    let after: Vec<(String, Option<i32>)> =
        a.status()?.iter().map(|r| (row_name(r), r.pid)).collect();
    ensure_eq!(after, before, "a refused Reload changed something");

    // SIGHUP reloads too.
    a.config().write(&format!(
        "{v2}service \"hup\" {{ argv = {{\"/bin/sleep\", \"105\"}} }}\n"
    ))?;
    a.signal(Signal::SIGHUP)?;
    a.wait_state("hup", ServiceState::Ready)?;
    ensure_eq!(pid_of(&a.service("keep")?)?, keep, "SIGHUP restarted keep");
    Ok(())
}

#[test]
fn status_shows_start_daemon_processes_beside_services() -> Result {
    let a = start(r#"service "svc" { argv = {"/bin/sleep", "100"} }"#)?;
    a.wait_state("svc", ServiceState::Ready)?;
    let (id, pid) = parse_started(&a.request("StartDaemon,/bin/sleep,100")?)?;
    let rows = a.status()?;
    let names: Vec<String> = rows.iter().map(row_name).collect();
    ensure_eq!(
        names,
        vec!["svc".to_string(), id.to_string()],
        "Status's rows"
    );
    let d = &rows[1];
    ensure_eq!(d.kind, ServiceKind::Daemon, "{}", show_row(d));
    ensure_eq!(d.state, ServiceState::Running, "{}", show_row(d));
    ensure_eq!(d.pid, Some(pid), "{}", show_row(d));
    ensure_eq!(d.ready, None, "{}", show_row(d));
    ensure_eq!(d.health, None, "{}", show_row(d));
    let s = &rows[0];
    ensure_eq!(s.kind, ServiceKind::Service, "{}", show_row(s));
    ensure_eq!(s.health, None, "a service without a health check");
    Ok(())
}

#[test]
fn tree_lists_the_children_of_a_service_that_forks() -> Result {
    let a = start(
        r#"
service "forky" { argv = {"/bin/sh", "-c", "sleep 100 & sleep 101 & wait"} }
service "single" { argv = {"/bin/sleep", "102"} }
"#,
    )?;
    let main = pid_of(&a.wait_state("forky", ServiceState::Ready)?)?;
    let single = pid_of(&a.wait_state("single", ServiceState::Ready)?)?;
    let kids = wait_for("forky's two sleeps", BOUND, || {
        let mut k: Vec<i32> = children_of(main)
            .into_iter()
            .filter(|&p| cmdline(p).is_some_and(|v| v.first().is_some_and(|a| a == "sleep")))
            .collect();
        k.sort_unstable();
        (k.len() == 2).then_some(k)
    })?;
    let nodes = a.conn()?.tree(Some("forky"))?;
    let mut got: Vec<(String, i32, i32, String)> = nodes
        .iter()
        .map(|n| {
            (
                String::from_utf8_lossy(&n.name).into_owned(),
                n.pid,
                n.ppid,
                String::from_utf8_lossy(&n.comm).into_owned(),
            )
        })
        .collect();
    got.sort_by_key(|n| n.1);
    let mut want = vec![("forky".to_string(), main, a.pid(), "sh".to_string())];
    for k in &kids {
        want.push(("forky".to_string(), *k, main, "sleep".to_string()));
    }
    want.sort_by_key(|n| n.1);
    ensure_eq!(got, want, "Tree,forky");
    let all = a.conn()?.tree(None)?;
    ensure_eq!(
        all.len(),
        4,
        "Tree lists every process of every service: {all:?}"
    );
    ensure!(
        all.iter().any(|n| n.pid == single && n.name == b"single"),
        "Tree lacks single's process: {all:?}"
    );
    ensure_eq!(a.request("Tree,nosuch")?, "Error,no such service: nosuch");
    Ok(())
}

#[test]
fn config_dumps_every_field_with_its_default() -> Result {
    let a = start(
        r#"
service "x" { argv = {"/bin/sleep", "100"} }
task "t" { argv = {"/bin/true"}, stop_timeout = "250ms" }
"#,
    )?;
    let settings = a.conn()?.config()?;
    let value = |name: &str, key: &str| {
        settings
            .iter()
            .find(|s| s.name == name.as_bytes() && s.key == key.as_bytes())
            .map(|s| String::from_utf8_lossy(&s.value).into_owned())
    };
    let text: Vec<String> = settings
        .iter()
        .map(|s| {
            format!(
                "{},{},{}",
                String::from_utf8_lossy(&s.name),
                String::from_utf8_lossy(&s.key),
                String::from_utf8_lossy(&s.value)
            )
        })
        .collect();
    // A Lua list, spaced or not.
    ensure_eq!(
        value("x", "argv").map(|v| v.replace(", ", ",")),
        Some("{\"/bin/sleep\",\"100\"}".to_string()),
        "x's argv in {text:#?}"
    );
    for (name, key, want) in [
        ("x", "restart", "\"always\""),
        ("t", "restart", "\"never\""),
        ("x", "ready", "\"exec\""),
        ("x", "stop_signal", "\"TERM\""),
        ("x", "enabled", "true"),
        ("x", "autostart", "true"),
        ("x", "critical", "false"),
    ] {
        ensure_eq!(
            value(name, key),
            Some(want.to_string()),
            "{name}.{key} in {text:#?}"
        );
    }
    for (name, key, want) in [
        ("x", "stop_timeout", "7000ms"),
        ("t", "stop_timeout", "250ms"),
        ("x", "ready_timeout", "60000ms"),
    ] {
        let got = value(name, key).unwrap_or_default();
        ensure!(
            got.trim_matches('"') == want,
            "{name}.{key} is {got:?}, want {want}: {text:#?}"
        );
    }
    // The backoff and flap defaults, as one table or one key per field.
    let backoff = text
        .iter()
        .filter(|l| l.starts_with("x,backoff"))
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    for want in ["100ms", "30000ms", "10000ms"] {
        ensure!(
            backoff.contains(want),
            "x's backoff lacks {want}: {backoff:?}"
        );
    }
    ensure!(
        text.iter()
            .any(|l| l.starts_with("x,flap") && l.contains('5')),
        "x's flap limit is not dumped: {text:#?}"
    );
    Ok(())
}

#[test]
fn archonctl_status_prints_csv_when_not_on_a_terminal() -> Result {
    let a = start(
        r#"
service "web" { argv = {"/bin/sleep", "100"} }
task "once" { argv = {"/bin/true"} }
"#,
    )?;
    let web = a.wait_state("web", ServiceState::Ready)?;
    a.wait_state("once", ServiceState::Done)?;
    let out = output_within(
        Command::new(archonctl_bin()?)
            .env_remove("ARCHON_SOCKET")
            .arg("--socket")
            .arg(a.socket())
            .arg("status"),
        BOUND,
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure_eq!(
        out.status.code(),
        Some(0),
        "archonctl status: {text:?} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    ensure_eq!(
        lines.len(),
        2,
        "one CSV row per service, no header: {text:?}"
    );
    let pid = pid_of(&web)?;
    ensure!(
        lines[0].starts_with(&format!("Service,web,service,ready,{pid},")),
        "web's row: {:?}",
        lines[0]
    );
    ensure!(
        lines[1].starts_with("Service,once,task,done,,"),
        "once's row: {:?}",
        lines[1]
    );
    for l in &lines {
        ensure_eq!(
            archon_proto::record::split(l.as_bytes()).len(),
            14,
            "fields of {l:?}"
        );
    }
    let out = output_within(
        Command::new(archonctl_bin()?)
            .env_remove("ARCHON_SOCKET")
            .arg("--socket")
            .arg(a.socket())
            .args(["status", "nosuch"]),
        BOUND,
    )?;
    ensure_eq!(out.status.code(), Some(1), "archonctl status nosuch");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("no such service: nosuch"),
        "archonctl status nosuch says why: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `cmd` with its stdin, stdout and stderr on a new pseudo-terminal; returns what it
/// wrote there (the terminal's `\r\n` read back as `\n`) and how it exited. Kills it and
/// fails after [`BOUND`].
fn on_terminal(mut cmd: Command) -> Result<(String, ExitStatus)> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    // Both ends close-on-exec: the other tests' threads start processes at any time, and a copy
    // of the terminal in one of them would outlive archonctl.
    let mut master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).context("posix_openpt")?;
    grantpt(&master).context("grantpt")?;
    unlockpt(&master).context("unlockpt")?;
    let name = ptsname_r(&master).context("ptsname_r")?;
    let terminal = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .context(format!("open {name}"))?;
    cmd.stdin(terminal.try_clone().context("dup")?)
        .stdout(terminal.try_clone().context("dup")?)
        .stderr(terminal);
    let mut child = cmd.spawn().context(format!("spawn {cmd:?}"))?;
    // The command holds the test's copies of the terminal: only the child's are left.
    drop(cmd);
    let deadline = Instant::now() + BOUND;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if readable_now(master.as_fd())? {
            match master.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: every copy of the terminal's other end is closed and all was read.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => return fail(format!("read the terminal: {e}")),
            }
            continue;
        }
        if child.try_wait().context("waitpid")?.is_some() && !readable_now(master.as_fd())? {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return fail(format!(
                "{name}: the command did not finish within {BOUND:?}; it wrote {:?}",
                String::from_utf8_lossy(&out)
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let status = child.wait().context("waitpid")?;
    Ok((String::from_utf8_lossy(&out).replace("\r\n", "\n"), status))
}

/// Splits the rows of a table laid out under `header` into their cells, and fails unless every
/// cell starts where its column's title does: each column but the last is one word padded with
/// blanks (at least one before the next column), the last (REASON) may hold blanks or be
/// missing, as may its padding.
fn aligned_cells<'t>(header: &str, rows: &[&'t str]) -> Result<Vec<Vec<&'t str>>> {
    let bytes = header.as_bytes();
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i] != b' ' && (i == 0 || bytes[i - 1] == b' '))
        .collect();
    let last = starts.len() - 1;
    let mut table = Vec::new();
    for row in rows {
        let mut cells = Vec::new();
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map_or(row.len(), |&e| e.min(row.len()));
            let cell = row.get(start..end).unwrap_or_default();
            ensure!(
                !cell.starts_with(' '),
                "column {k} does not start at {start} in {row:?} (header {header:?})"
            );
            if k == last {
                cells.push(cell);
                continue;
            }
            let word = cell.trim_end();
            ensure!(
                !word.is_empty() && !word.contains(' '),
                "column {k} at {start} is not one word in {row:?} (header {header:?})"
            );
            ensure!(
                row.len() <= end || cell.ends_with(' '),
                "column {k} runs into the next one in {row:?} (header {header:?})"
            );
            ensure!(
                row.len() > end || k + 1 == last,
                "{row:?} ends before column {} (header {header:?})",
                k + 1
            );
            cells.push(word);
        }
        table.push(cells);
    }
    Ok(table)
}

#[test]
fn archonctl_status_on_a_terminal_prints_an_aligned_table_with_a_header() -> Result {
    let a = start(
        r#"
service "web" { argv = {"/bin/sleep", "100"} }
task "once" { argv = {"/bin/true"} }
service "a-rather-long-service-name" { argv = {"/nonexistent"}, restart = "never" }
"#,
    )?;
    let web = pid_of(&a.wait_state("web", ServiceState::Ready)?)?;
    a.wait_state("once", ServiceState::Done)?;
    a.wait_state("a-rather-long-service-name", ServiceState::Failed)?;
    let mut cmd = Command::new(archonctl_bin()?);
    cmd.env_remove("ARCHON_SOCKET")
        .arg("--socket")
        .arg(a.socket())
        .arg("status");
    let (text, status) = on_terminal(cmd)?;
    ensure_eq!(status.code(), Some(0), "archonctl status: {text:?}");
    let lines: Vec<&str> = text.lines().collect();
    ensure_eq!(lines.len(), 4, "a header and a row per service: {text:?}");
    ensure_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        vec![
            "NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "LAST", "READY", "HEALTH", "RSS",
            "CPU", "SOCKETS", "REASON"
        ],
        "the header: {text:?}"
    );
    let rows = aligned_cells(lines[0], &lines[1..]).context(format!("the table:\n{text}"))?;
    let pid = web.to_string();
    let want: [&[&str]; 3] = [
        &["web", "service", "ready", &pid],
        &["once", "task", "done", "-"],
        &["a-rather-long-service-name", "service", "failed", "-"],
    ];
    for (row, want) in rows.iter().zip(want) {
        ensure_eq!(row[..4], *want, "the first columns of a row:\n{text}");
    }
    ensure_eq!(
        (rows[0][7], rows[1][7]),
        ("yes", "-"),
        "READY of web and once:\n{text}"
    );
    ensure_eq!(
        rows[2].last().copied(),
        Some("cannot execute /nonexistent: No such file or directory"),
        "the reason, spaces and all, in the last column:\n{text}"
    );
    Ok(())
}

#[test]
fn a_health_check_that_passes_shows_healthy() -> Result {
    let a = start(
        r#"
service "fine" { argv = {"/bin/sleep", "100"},
                 health = {command = {"/bin/true"}, interval = 0.1, timeout = 1} }
"#,
    )?;
    let row = a.wait_service("fine", "healthy", LONG_BOUND, |r| {
        r.health == Some(Health::Healthy)
    })?;
    ensure_eq!(row.state, ServiceState::Ready, "{}", show_row(&row));
    ensure_eq!(row.restarts, 0, "{}", show_row(&row));
    Ok(())
}

#[test]
fn a_tcp_health_check_on_the_services_own_port_shows_healthy() -> Result {
    let port = free_port()?;
    // Checks fail until python listens: the start period keeps them from counting.
    let a = start(&format!(
        r#"
service "web" {{ argv = {{"/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                         "{port}"}},
                cwd = "@DIR@",
                health = {{tcp = "127.0.0.1:{port}", interval = 0.1, timeout = 1, retries = 1,
                          start_period = 60}} }}
"#
    ))?;
    let pid = pid_of(&a.wait_state("web", ServiceState::Ready)?)?;
    let row = a.wait_service("web", "healthy", LONG_BOUND, |r| {
        r.health == Some(Health::Healthy)
    })?;
    ensure_eq!(
        (row.state, row.pid, row.restarts),
        (ServiceState::Ready, Some(pid), 0),
        "{}",
        show_row(&row)
    );
    Ok(())
}
