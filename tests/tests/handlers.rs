//! Lua handlers against the real archon, named after archon.lua(5)'s HANDLERS: `on` for events
//! and log lines, `every`, `watch` (a file deleted and created again), each action, the faults
//! (an error, an endless loop, a memory bomb, a restart loop), a reload, the example, and a
//! configuration without handlers paying nothing for them.

use std::fs;
use std::time::Duration;

use archon_tests::archon_proto::{Cause, Event, EventKind, ServiceKind, ServiceState};
use archon_tests::*;

fn shown(events: &[Event]) -> String {
    events.iter().map(show_event).collect::<Vec<_>>().join("\n")
}

/// Waits until the history has an event that `pick` accepts, and returns it.
fn wait_event(a: &Archon, what: &str, mut pick: impl FnMut(&Event) -> bool) -> Result<Event> {
    let mut last = Vec::new();
    let found = wait_for(what, BOUND, || {
        last = a.conn().and_then(|mut c| c.history(&[])).ok()?;
        last.iter().find(|e| pick(e)).cloned()
    });
    found.map_err(|e| Fail::new(format!("{e:?}; history:\n{}", shown(&last))))
}

/// Waits for a `note` (an `archon.log`) whose message is `text`.
fn wait_note(a: &Archon, text: &str) -> Result<Event> {
    wait_event(a, &format!("the note {text:?}"), |e| {
        e.what == EventKind::Note && e.reason == text.as_bytes()
    })
}

fn notes(a: &Archon) -> Result<Vec<String>> {
    Ok(a.conn()?
        .history(&["", "note"])?
        .iter()
        .map(|e| String::from_utf8_lossy(&e.reason).into_owned())
        .collect())
}

/// The line of `needle` in `lua` (1-based): where a handler is declared.
fn line_of(lua: &str, needle: &str) -> Result<u32> {
    lua.lines()
        .position(|l| l.contains(needle))
        .map(|i| i as u32 + 1)
        .context(format!("{needle:?} in the configuration"))
}

fn has_inotify(pid: i32) -> bool {
    fd_targets(pid).iter().any(|t| t.contains("inotify"))
}

#[test]
fn exit_handlers_match_a_glob_and_act_on_behalf_of_the_handler() -> Result {
    let lua = r#"
service "web1" { argv = {"/bin/sh", "-c", "exit 3"}, restart = "never" }
service "db" { argv = {"/bin/sleep", "100"}, autostart = false }
on("exit", "web*", function(ev)
  archon.log(ev.kind .. " " .. ev.subject .. " " .. ev.code .. " " .. ev.new .. " " .. ev.cause)
  archon.start("db")
end)
"#;
    let a = start_with_config(lua)?;
    let line = line_of(lua, "on(\"exit\"")?;
    let note = wait_note(&a, "exit web1 3 failed archon")?;
    ensure_eq!(note.subject, format!("archon.lua:{line}").into_bytes());
    ensure_eq!(note.kind, ServiceKind::Lua);
    ensure_eq!(note.cause, Cause::Lua { line });
    a.wait_state("db", ServiceState::Ready)?;
    let events = a.conn()?.history(&["db"])?;
    ensure!(
        events.iter().all(|e| e.cause == Cause::Lua { line }),
        "db's start was the handler's doing:\n{}",
        shown(&events)
    );
    ensure!(
        !notes(&a)?.iter().any(|n| n.contains(" db ")),
        "db's events do not match web*"
    );
    Ok(())
}

#[test]
fn log_handlers_get_the_lines_that_match() -> Result {
    let lua = r#"
service "db" {
  argv = {"/bin/sh", "-c", "echo 'all good'; echo 'x FATAL y' >&2; echo '<3>FATAL again'; exec sleep 100"},
}
on("log", {service = "d*", match = "FATAL"}, function(ev)
  archon.log(ev.service .. "|" .. ev.line .. "|" .. ev.stream .. "|" .. ev.level)
end)
"#;
    let a = start_with_config(lua)?;
    wait_note(&a, "db|x FATAL y|stderr|info")?;
    wait_note(&a, "db|FATAL again|stdout|err")?;
    let all = notes(&a)?;
    ensure_eq!(all.len(), 2, "{all:?}");
    Ok(())
}

#[test]
fn every_runs_on_its_period_and_globals_are_kept() -> Result {
    let a = start_with_config(
        r#"
ticks = 0
every(0.1, function(ev)
  ticks = ticks + 1
  archon.log(ev.kind .. " " .. ticks)
end)
"#,
    )?;
    wait_note(&a, "every 3")?;
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn watch_sees_writes_and_a_file_deleted_and_created_again() -> Result {
    let cfg = ConfigFile::new()?;
    let watched = cfg.file("app.conf");
    fs::write(&watched, "one")?;
    cfg.write(&format!(
        r#"
n = 0
watch("{watched}", function(ev)
  n = n + 1
  archon.log(n .. " " .. ev.change .. " " .. ev.path)
end)
"#
    ))?;
    let a = cfg.start(Archon::builder())?;
    ensure!(has_inotify(a.pid()), "{:?}", fd_targets(a.pid()));
    let changes = |a: &Archon| -> Result<Vec<String>> {
        Ok(notes(a)?
            .iter()
            .map(|n| n.split(' ').nth(1).unwrap_or("").to_string())
            .collect())
    };
    fs::write(&watched, "two")?;
    wait_note(&a, &format!("1 write {watched}"))?;
    fs::remove_file(&watched)?;
    wait_until("the delete", BOUND, || {
        changes(&a).is_ok_and(|c| c.last().map(String::as_str) == Some("delete"))
    })?;
    // Created again: still watched.
    fs::write(&watched, "three")?;
    wait_until("the file again", BOUND, || {
        changes(&a).is_ok_and(|c| c.last().map(String::as_str) != Some("delete"))
    })?;
    let before = notes(&a)?.len();
    fs::write(&watched, "four")?;
    wait_until("a write to the new file", BOUND, || {
        notes(&a).is_ok_and(|n| n.len() > before)
    })?;
    ensure_eq!(changes(&a)?.last().cloned(), Some("write".to_string()));
    // Replaced by a rename, as editors do: still watched.
    let tmp = a.config().file("app.conf.tmp");
    fs::write(&tmp, "five")?;
    let before = notes(&a)?.len();
    fs::rename(&tmp, &watched)?;
    wait_until("the rename", BOUND, || {
        notes(&a).is_ok_and(|n| n.len() > before)
    })?;
    ensure_eq!(changes(&a)?.last().cloned(), Some("create".to_string()));
    // Other files of the directory are not its business.
    fs::write(a.config().file("other"), "x")?;
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn each_action_is_carried_out() -> Result {
    let cfg = ConfigFile::new()?;
    let hup = cfg.file("hup");
    let ran = cfg.file("ran");
    let lua = format!(
        r#"
service "a" {{ argv = {{"/bin/sleep", "100"}} }}
service "b" {{ argv = {{"/bin/sh", "-c", "trap 'echo hup >> {hup}' HUP; while true; do sleep 0.05; done"}} }}
service "c" {{ argv = {{"/bin/sleep", "100"}} }}
task "trigger" {{ argv = {{"/bin/true"}}, autostart = false }}
on("exit", "trigger", function(ev)
  archon.stop("a")
  archon.signal("b", "HUP")
  archon.restart("c")
  archon.run{{"/bin/sh", "-c", "echo $1 > {ran}", "sh", archon.env("HANDLER_TEST_VAR") or "unset"}}
  local s = archon.status("b")
  archon.log("b is " .. s.state .. " " .. tostring(s.pid ~= nil) .. " " .. tostring(archon.status("nope")))
end)
"#
    );
    cfg.write(&lua)?;
    let a = cfg.start(Archon::builder().env("HANDLER_TEST_VAR", "hello"))?;
    let line = line_of(&lua, "on(\"exit\"")?;
    for s in ["a", "b", "c"] {
        a.wait_state(s, ServiceState::Ready)?;
    }
    let c_pid = a.service("c")?.pid;
    ensure_eq!(a.request("Start,trigger")?, "Ok,trigger");
    wait_note(&a, "b is ready true nil")?;
    a.wait_state("a", ServiceState::Stopped)?;
    wait_until("b's trap ran", BOUND, || {
        fs::read_to_string(&hup).is_ok_and(|s| s.contains("hup"))
    })?;
    wait_until("c restarted", BOUND, || {
        a.service("c")
            .is_ok_and(|r| r.state == ServiceState::Ready && r.pid != c_pid)
    })?;
    ensure_eq!(wait_line_in(&ran)?, "hello");
    let by_handler = Cause::Lua { line };
    for (subject, what) in [
        ("a", EventKind::Stop),
        ("b", EventKind::Signal),
        ("c", EventKind::Restart),
    ] {
        wait_event(&a, &format!("{subject} {what}"), |e| {
            e.subject == subject.as_bytes() && e.what == what && e.cause == by_handler
        })?;
    }
    let spawn = wait_event(&a, "the command's spawn", |e| {
        e.kind == ServiceKind::Daemon && e.what == EventKind::Spawn
    })?;
    ensure_eq!(spawn.cause, by_handler);
    Ok(())
}

#[test]
fn a_refused_action_is_a_handler_event() -> Result {
    let lua = r#"
task "trigger" { argv = {"/bin/true"}, autostart = false }
on("exit", "trigger", function(ev) archon.start("nope") end)
"#;
    let a = start_with_config(lua)?;
    ensure_eq!(a.request("Start,trigger")?, "Ok,trigger");
    let e = wait_event(&a, "the handler event", |e| e.what == EventKind::Handler)?;
    let reason = String::from_utf8_lossy(&e.reason);
    ensure!(
        reason.contains("archon.start(nope)") && reason.contains("no such service"),
        "{reason}"
    );
    Ok(())
}

/// A change the kernel could not queue (more events waited than
/// `/proc/sys/fs/inotify/max_queued_events`: archon was stopped while the directory churned)
/// still runs the handler: an overflow runs every watch handler.
#[test]
fn a_change_lost_to_an_inotify_queue_overflow_still_runs_the_handler() -> Result {
    let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")?
        .trim()
        .parse()
        .context("max_queued_events")?;
    if max > 100_000 {
        println!("skipped: the inotify queue holds {max} events");
        return Ok(());
    }
    let cfg = ConfigFile::new()?;
    let dir = cfg.file("etc");
    fs::create_dir(&dir)?;
    let watched = format!("{dir}/app.conf");
    fs::write(&watched, "one")?;
    cfg.write(&format!(
        "watch(\"{watched}\", function(ev) archon.log(ev.change) end)\n"
    ))?;
    let a = cfg.start(Archon::builder())?;
    a.signal(nix::sys::signal::Signal::SIGSTOP)?;
    let churn = || -> Result {
        for i in 0..max / 2 + 1 {
            let f = format!("{dir}/churn{i}");
            fs::write(&f, "")?;
            fs::remove_file(&f)?;
        }
        Ok(())
    };
    let churned = churn();
    // Past the queue's end: only the overflow says something happened.
    fs::write(&watched, "two")?;
    a.signal(nix::sys::signal::Signal::SIGCONT)?;
    churned?;
    wait_note(&a, "write")?;
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn errors_endless_loops_and_memory_bombs_are_events_and_archon_goes_on() -> Result {
    let lua = r#"
service "steady" { argv = {"/bin/sleep", "100"} }
task "err" { argv = {"/bin/true"}, autostart = false }
task "loop" { argv = {"/bin/true"}, autostart = false }
task "bomb" { argv = {"/bin/true"}, autostart = false }
task "ok" { argv = {"/bin/true"}, autostart = false }
on("exit", "err", function() error("boom") end)
on("exit", "loop", function() archon.stop("steady") while true do end end)
on("exit", "bomb", function() local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end end)
runs = 0
on("exit", "ok", function() runs = runs + 1 archon.log("ok " .. runs) end)
"#;
    let a = start_with_config(lua)?;
    let steady = a.wait_state("steady", ServiceState::Ready)?.pid;
    for (task, needle) in [
        ("err", "boom"),
        ("loop", "over 1000000 instructions"),
        ("bomb", "memory"),
    ] {
        ensure_eq!(a.request(&format!("Start,{task}"))?, format!("Ok,{task}"));
        let line = line_of(lua, &format!("on(\"exit\", \"{task}\""))?;
        let e = wait_event(&a, &format!("{task}'s handler event"), |e| {
            e.what == EventKind::Handler && e.cause == Cause::Lua { line }
        })?;
        let reason = String::from_utf8_lossy(&e.reason).into_owned();
        ensure!(reason.contains(needle), "{task}: {reason}");
        ensure!(
            reason.contains(&format!("archon.lua:{line}: ")),
            "{task}: {reason}"
        );
        ensure_eq!(a.request("Ping")?, "Pong");
    }
    // The endless loop's stop was never done: a failed handler does nothing.
    let row = a.service("steady")?;
    ensure_eq!((row.state, row.pid), (ServiceState::Ready, steady));
    for i in 1..=2 {
        ensure_eq!(a.request("Start,ok")?, "Ok,ok");
        wait_note(&a, &format!("ok {i}"))?;
    }
    Ok(())
}

#[test]
fn a_handler_that_restarts_what_fails_is_held_to_its_backoff_and_flap_limit() -> Result {
    let lua = r#"
service "crashy" {
  argv = {"/bin/sh", "-c", "exit 1"},
  restart = "never",
  backoff = {initial = 0.05, max = 1, multiplier = 2},
  flap = {restarts = 3, within = 60},
}
on("exit", "crashy", function(ev) archon.restart("crashy") end)
"#;
    let a = start_with_config(lua)?;
    let refused = wait_event(&a, "the refusal", |e| e.what == EventKind::Handler)?;
    let reason = String::from_utf8_lossy(&refused.reason).into_owned();
    ensure!(
        reason.contains("archon.restart(crashy)") && reason.contains("more than 3 times"),
        "{reason}"
    );
    a.wait_state("crashy", ServiceState::Failed)?;
    let spawns =
        |a: &Archon| -> Result<usize> { Ok(a.conn()?.history(&["crashy", "spawn"])?.len()) };
    // The first start, then three by the handler: with backoff between them.
    ensure_eq!(spawns(&a)?, 4);
    let history = a.conn()?.history(&["crashy"])?;
    let backoffs = history
        .iter()
        .filter(|e| e.what == EventKind::Start && e.new == Some(ServiceState::Backoff))
        .count();
    ensure_eq!(backoffs, 2, "{}", shown(&history));
    std::thread::sleep(Duration::from_millis(300));
    ensure_eq!(spawns(&a)?, 4, "no more restarts");
    Ok(())
}

/// The number the next event gets: `History`'s last row, plus one.
fn next_seq(a: &Archon) -> Result<u64> {
    Ok(a.conn()?
        .history(&["", "", "1"])?
        .last()
        .map_or(0, |e| e.seq + 1))
}

#[test]
fn handlers_that_feed_each_other_are_stopped_by_their_run_limit() -> Result {
    // Each handler's signal is the other's event: a loop no budget per run sees.
    let lua = r#"
service "a" { argv = {"/bin/sleep", "100"} }
service "b" { argv = {"/bin/sleep", "100"} }
on("signal", "a", function(ev) archon.signal("b", "CONT") end)
on("signal", "b", function(ev) archon.signal("a", "CONT") end)
"#;
    let a = start_with_config(lua)?;
    a.wait_state("a", ServiceState::Ready)?;
    a.wait_state("b", ServiceState::Ready)?;
    ensure_eq!(a.request("Signal,a,CONT")?, "Ok,a");
    let e = wait_event(&a, "a handler stopped by its run limit", |e| {
        e.what == EventKind::Handler
    })?;
    let reason = String::from_utf8_lossy(&e.reason).into_owned();
    ensure!(reason.contains("runs too often"), "{reason}");
    // The loop is broken: archon goes quiet.
    let mut last = next_seq(&a)?;
    wait_until("no more events", BOUND, || {
        std::thread::sleep(Duration::from_millis(200));
        let now = next_seq(&a).unwrap_or(0);
        std::mem::replace(&mut last, now) == now
    })?;
    ensure_eq!(a.request("Ping")?, "Pong");
    // A client's requests are not held to it: each still runs the handlers (two events each:
    // its own signal, and the one the handler's signal caused).
    let before = next_seq(&a)?;
    for _ in 0..3 {
        ensure_eq!(a.request("Signal,b,CONT")?, "Ok,b");
    }
    wait_until("the handler's signals", BOUND, || {
        next_seq(&a).is_ok_and(|n| n >= before + 6)
    })?;
    Ok(())
}

#[test]
fn a_reload_replaces_the_handlers() -> Result {
    let cfg = ConfigFile::new()?;
    let watched = cfg.file("w");
    let first = format!(
        r#"
task "trigger" {{ argv = {{"/bin/true"}}, autostart = false }}
on("exit", "trigger", function() archon.log("first " .. tostring(kept)) end)
kept = "set"
watch("{watched}", function() end)
"#
    );
    cfg.write(&first)?;
    let a = cfg.start(Archon::builder())?;
    ensure_eq!(a.request("Start,trigger")?, "Ok,trigger");
    wait_note(&a, "first set")?;
    ensure!(has_inotify(a.pid()), "{:?}", fd_targets(a.pid()));
    a.config().write(
        r#"
task "trigger" { argv = {"/bin/true"}, autostart = false }
on("exit", "trigger", function() archon.log("second " .. tostring(kept)) end)
"#,
    )?;
    let reply = a.request("Reload")?;
    ensure!(reply.starts_with("Ok"), "{reply}");
    ensure_eq!(a.request("Start,trigger")?, "Ok,trigger");
    wait_note(&a, "second nil")?;
    ensure!(
        !has_inotify(a.pid()),
        "the watch went with the old handlers"
    );
    ensure_eq!(
        notes(&a)?.iter().filter(|n| n.starts_with("first")).count(),
        1
    );
    Ok(())
}

#[test]
fn a_configuration_without_handlers_has_no_inotify_fd_and_no_lua() -> Result {
    let a = start_with_config(r#"service "web" { argv = {"/bin/sleep", "100"} }"#)?;
    a.wait_state("web", ServiceState::Ready)?;
    ensure!(!has_inotify(a.pid()), "{:?}", fd_targets(a.pid()));
    ensure!(!a.log_text().contains("Lua handlers"), "{}", a.log_text());
    Ok(())
}

#[test]
fn the_notify_on_failure_example_runs_the_command_with_the_failing_service() -> Result {
    let dir = TempDir::new()?;
    let record = dir.join("notified");
    let script = dir.join("notify");
    fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1: $2\" >> {}\n", record.display()),
    )?;
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/notify-on-failure.lua");
    let a = Archon::builder()
        .arg("--config")
        .arg(&example)
        .env("ARCHON_NOTIFY", &script)
        .start()?;
    ensure_eq!(wait_line_in(&record)?, "worker: exited with code 1");
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}
