//! Events against the real archon, named after archon-protocol(7)'s EVENTS: one record per
//! change with who caused it, the bounded history and its filters, many subscribers, a
//! subscriber that never reads, bad arguments, and `archonctl events`.

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use archon_tests::archon_proto::{Cause, Event, EventKind, ServiceKind, ServiceState, Status};
use archon_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `(subject, event, old, new)` as text.
fn c(subject: &str, what: &str, old: &str, new: &str) -> (String, String, String, String) {
    (subject.into(), what.into(), old.into(), new.into())
}

fn changes(events: &[Event]) -> Vec<(String, String, String, String)> {
    events.iter().map(change).collect()
}

fn shown(events: &[Event]) -> String {
    events.iter().map(show_event).collect::<Vec<_>>().join("\n")
}

/// Waits until `History` with `args` has an event that `pick` accepts, and returns it.
fn wait_event(
    a: &Archon,
    args: &[&str],
    what: &str,
    mut pick: impl FnMut(&Event) -> bool,
) -> Result<Event> {
    let mut last = Vec::new();
    let found = wait_for(what, BOUND, || {
        last = a.conn().and_then(|mut c| c.history(args)).ok()?;
        last.iter().find(|e| pick(e)).cloned()
    });
    found.map_err(|e| Fail::new(format!("{e:?}; history:\n{}", shown(&last))))
}

#[test]
fn a_clients_start_stop_and_restart_are_in_the_history_with_its_uid_and_pid() -> Result {
    let a =
        start_with_config(r#"service "web" { argv = {"/bin/sleep", "100"}, autostart = false }"#)?;
    let mut conn = a.conn()?;
    ensure!(
        conn.history(&[])?.is_empty(),
        "nothing has happened yet, and web does not start on its own"
    );
    for request in ["Start,web", "Stop,web", "Start,web", "Restart,web"] {
        let reply = conn.request(request)?;
        ensure!(reply.starts_with("Ok,web"), "{request} got {reply:?}");
    }
    let events = conn.history(&["web"])?;
    let up = [
        c("web", "start", "stopped", "starting"),
        c("web", "spawn", "starting", "running"),
        c("web", "ready", "running", "ready"),
    ];
    let mut want = up.to_vec();
    want.extend([
        c("web", "stop", "ready", "stopping"),
        c("web", "exit", "stopping", "stopped"),
    ]);
    want.extend(up.clone());
    want.extend([
        c("web", "restart", "ready", "stopping"),
        c("web", "exit", "stopping", "stopped"),
    ]);
    want.extend(up);
    ensure_eq!(changes(&events), want, "{}", shown(&events));
    let me = this_client();
    for e in &events {
        ensure_eq!(
            e.cause,
            me,
            "every change was this client's: {}",
            show_event(e)
        );
        ensure_eq!(e.kind, ServiceKind::Service);
    }
    ensure!(
        events
            .windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].time_ms <= w[1].time_ms),
        "numbers and times in order:\n{}",
        shown(&events)
    );
    // Each exit is the process its spawn started, ended by the stop's SIGTERM.
    for (spawn, exit) in [(1, 4), (6, 9)] {
        ensure_eq!(events[exit].pid, events[spawn].pid, "{}", shown(&events));
        ensure_eq!(events[exit].status, Some(Status::Signaled(libc::SIGTERM)));
    }
    ensure!(
        events[1].pid.is_some() && events[1].pid != events[6].pid,
        "a new process each time: {}",
        shown(&events)
    );
    Ok(())
}

#[test]
fn a_crash_shows_its_status_and_archon_as_the_cause() -> Result {
    let a = start_with_config(
        r#"
service "crashy" { argv = {"/bin/sleep", "100"}, backoff = {initial = 0.05} }
task "fails" { argv = {"/bin/sh", "-c", "exit 3"} }
"#,
    )?;
    let pid = a
        .wait_state("crashy", ServiceState::Ready)?
        .pid
        .context("crashy has a pid")?;
    kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill crashy")?;
    let crash = wait_event(&a, &["crashy", "exit"], "crashy's exit", |_| true)?;
    ensure_eq!(crash.cause, Cause::Archon, "{}", show_event(&crash));
    ensure_eq!(crash.pid, Some(pid));
    ensure_eq!(crash.status, Some(Status::Signaled(libc::SIGKILL)));
    ensure_eq!(crash.old, Some(ServiceState::Ready));
    ensure_eq!(String::from_utf8_lossy(&crash.reason), "killed by SIGKILL");
    // archon brings it back on its own: its doing too.
    let again = wait_event(&a, &["crashy", "spawn"], "crashy's restart", |e| {
        e.seq > crash.seq
    })?;
    ensure_eq!(again.cause, Cause::Archon, "{}", show_event(&again));
    let failed = wait_event(&a, &["fails", "exit"], "the task's exit", |_| true)?;
    ensure_eq!(
        (
            failed.kind,
            failed.old,
            failed.new,
            failed.status,
            failed.cause
        ),
        (
            ServiceKind::Task,
            Some(ServiceState::Running),
            Some(ServiceState::Failed),
            Some(Status::Exited(3)),
            Cause::Archon
        ),
        "{}",
        show_event(&failed)
    );
    ensure_eq!(
        String::from_utf8_lossy(&failed.reason),
        "exited with code 3"
    );
    Ok(())
}

#[test]
fn daemons_runs_and_monitored_processes_have_events() -> Result {
    let a = Archon::start()?;
    let me = this_client();
    let mut conn = a.conn()?;
    let (daemon, daemon_pid) = parse_started(&conn.request("StartDaemon,/bin/sleep,100")?)?;
    ensure_eq!(conn.request("Run,/bin/sh,-c,exit 4")?, "ExitStatus,4");
    let watched = ChildGuard::sleep(100)?;
    let (monitor, _) = parse_started(&conn.request(&format!("Monitor,{}", watched.pid()))?)?;
    ensure_eq!(
        conn.request(&format!("Stop,{daemon}"))?,
        format!("Ok,{daemon},SIGTERM")
    );
    drop(watched);
    let ended = wait_event(
        &a,
        &["", "exit|monitor"],
        "the watched process's end",
        |_| true,
    )?;
    let events = conn.history(&[])?;
    let run = (daemon + 1).to_string();
    let (d, m) = (daemon.to_string(), monitor.to_string());
    ensure_eq!(
        changes(&events),
        [
            c(&d, "spawn", "", "running"),
            c(&run, "spawn", "", "running"),
            c(&run, "exit", "running", "exited"),
            c(&m, "watch", "", "running"),
            c(&d, "stop", "running", "stopping"),
            c(&d, "exit", "stopping", "exited"),
            c(&m, "exit", "running", "exited"),
        ],
        "{}",
        shown(&events)
    );
    let kinds: Vec<ServiceKind> = events.iter().map(|e| e.kind).collect();
    use ServiceKind::{Daemon, Monitor, Run};
    ensure_eq!(kinds, [Daemon, Run, Run, Monitor, Daemon, Daemon, Monitor]);
    let causes: Vec<Cause> = events.iter().map(|e| e.cause).collect();
    let archon = Cause::Archon;
    ensure_eq!(
        causes,
        [me, me, archon, me, me, me, archon],
        "requests are this client's, the stop's end too; a process that ends unasked is \
         archon's"
    );
    ensure_eq!(events[0].pid, Some(daemon_pid));
    ensure_eq!(events[2].status, Some(Status::Exited(4)));
    ensure_eq!(events[5].status, Some(Status::Signaled(libc::SIGTERM)));
    // Without the parent's reap the kernel may not tell how it ended: known or unknown.
    ensure!(
        matches!(ended.status, Some(Status::Signaled(9) | Status::Unknown)),
        "{}",
        show_event(&ended)
    );
    Ok(())
}

#[test]
fn history_and_subscriptions_filter_by_subject_glob_and_kind() -> Result {
    let a = start_with_config(
        r#"
service "web1" { argv = {"/bin/sleep", "100"} }
service "web2" { argv = {"/bin/sleep", "100"} }
service "db" { argv = {"/bin/sleep", "100"} }
"#,
    )?;
    for s in ["web1", "web2", "db"] {
        a.wait_state(s, ServiceState::Ready)?;
    }
    let mut conn = a.conn()?;
    let (daemon, _) = parse_started(&conn.request("StartDaemon,/bin/sleep,100")?)?;
    let all = conn.history(&[])?;
    let subjects = |events: &[Event]| -> Vec<String> {
        let mut s: Vec<String> = events.iter().map(|e| change(e).0).collect();
        s.sort();
        s.dedup();
        s
    };
    ensure_eq!(subjects(&conn.history(&["web*"])?), ["web1", "web2"]);
    ensure_eq!(subjects(&conn.history(&["w?b1"])?), ["web1"]);
    ensure_eq!(subjects(&conn.history(&["*b*"])?), ["db", "web1", "web2"]);
    let ready = conn.history(&["", "ready"])?;
    ensure_eq!(ready.len(), 3, "{}", shown(&ready));
    ensure!(
        ready.iter().all(|e| e.what == EventKind::Ready),
        "{}",
        shown(&ready)
    );
    let daemons = conn.history(&["*", "daemon"])?;
    ensure_eq!(
        changes(&daemons),
        [c(&daemon.to_string(), "spawn", "", "running")]
    );
    ensure!(
        conn.history(&["*", "exit|daemon"])?.is_empty(),
        "no daemon has exited"
    );
    ensure_eq!(
        conn.history(&["", "", "2"])?,
        all[all.len() - 2..].to_vec(),
        "the newest two"
    );
    // Services start side by side, so which of web1 and web2 was ready last is the history's
    // to say: the newest matching event is that one.
    let last_web_ready = all
        .iter()
        .rev()
        .find(|e| e.what == EventKind::Ready && e.subject.starts_with(b"web"))
        .map(|e| change(e).0)
        .unwrap_or_default();
    ensure_eq!(
        changes(&conn.history(&["web?", "ready|spawn", "1"])?),
        [c(&last_web_ready, "ready", "running", "ready")]
    );

    // A subscription sees what matches from now on, nothing else.
    let mut sub = a.conn()?;
    let next = sub.subscribe(&["d*", "stop|exit"])?;
    ensure_eq!(next, all.len() as u64 + 1, "the number of the next event");
    ensure!(
        conn.request("Stop,web1")?.starts_with("Ok,web1"),
        "Stop,web1"
    );
    ensure!(conn.request("Stop,db")?.starts_with("Ok,db"), "Stop,db");
    let (stop, exit) = (sub.stream_event()?, sub.stream_event()?);
    ensure_eq!(
        changes(&[stop.clone(), exit.clone()]),
        [
            c("db", "stop", "ready", "stopping"),
            c("db", "exit", "stopping", "stopped"),
        ],
        "web1's stop, before db's, is left out"
    );
    ensure!(stop.seq > next + 1, "web1's events took numbers too");
    Ok(())
}

#[test]
fn the_history_keeps_only_the_newest_events() -> Result {
    let a = Archon::with_args(["--history", "5"])?;
    let mut conn = a.conn()?;
    let (id, _) = parse_started(&conn.request("StartDaemon,/bin/sleep,100")?)?;
    for _ in 0..9 {
        ensure_eq!(
            conn.request(&format!("Signal,{id},CONT"))?,
            format!("Ok,{id}")
        );
    }
    let kept = conn.history(&[])?;
    let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
    ensure_eq!(seqs, [6, 7, 8, 9, 10], "{}", shown(&kept));
    ensure!(
        kept.iter().all(|e| e.what == EventKind::Signal),
        "{}",
        shown(&kept)
    );
    ensure!(
        conn.history(&["", "spawn"])?.is_empty(),
        "the oldest event, the daemon's spawn, is gone"
    );
    ensure_eq!(String::from_utf8_lossy(&kept[0].reason), "SIGCONT");
    Ok(())
}

#[test]
fn a_hundred_subscribers_all_get_the_same_events() -> Result {
    const SUBSCRIBERS: usize = 100;
    let a = Archon::start()?;
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut s = a.conn()?;
        ensure_eq!(s.subscribe(&[])?, 1);
        subs.push(s);
    }
    let mut conn = a.conn()?;
    let (id, _) = parse_started(&conn.request("StartDaemon,/bin/sleep,100")?)?;
    for sig in ["CONT", "WINCH", "URG"] {
        conn.request(&format!("Signal,{id},{sig}"))?;
    }
    conn.request(&format!("Stop,{id}"))?;
    let history: Vec<String> = conn.history(&[])?.iter().map(show_event).collect();
    ensure_eq!(history.len(), 6, "spawn, three signals, stop, exit");
    for (i, s) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..history.len() {
            got.push(s.stream_item()?.1);
        }
        ensure_eq!(got, history, "subscriber {i}");
    }
    Ok(())
}

/// Sends `n` requests in batches, reading the replies of each batch before the next.
fn flood(conn: &mut Conn, line: &str, n: usize) -> Result {
    const BATCH: usize = 1000;
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH);
        conn.send(format!("{line}\n").repeat(k).as_bytes())?;
        for _ in 0..k {
            let r = conn.record()?;
            ensure!(r.line.starts_with("Ok,"), "{line} got {:?}", r.line);
        }
        left -= k;
    }
    Ok(())
}

#[test]
fn a_subscriber_that_never_reads_blocks_nobody_and_is_told_what_it_lost() -> Result {
    // Many more events than archon keeps for a subscriber and the kernel holds on its socket:
    // if archon kept them all, they would take some 7 MB.
    const EVENTS: usize = 100_000;
    const RSS_MARGIN_KIB: u64 = 4 * 1024;
    let a = Archon::with_args(["--history", "16"])?;
    let mut conn = a.conn()?;
    let (id, _) = parse_started(&conn.request("StartDaemon,/bin/sleep,1000")?)?;
    let mut sub = a.conn()?;
    let first = sub.subscribe(&[])?;
    let signal = format!("Signal,{id},CONT");
    // Warm up (buffers, the history ring), then measure.
    flood(&mut conn, &signal, 1000)?;
    let before = vm_rss_kib(a.pid())?;
    flood(&mut conn, &signal, EVENTS)?;
    let after = vm_rss_kib(a.pid())?;
    ensure!(
        after <= before + RSS_MARGIN_KIB,
        "archon grew from {before} KiB to {after} KiB while a subscriber did not read"
    );
    let held = sub.unread_here()?;
    ensure!(
        held >= 16 * 1024,
        "the subscriber's socket holds only {held} bytes: it should be full"
    );
    // Other clients are served all along.
    ensure_eq!(a.request("Ping")?, "Pong");
    ensure_eq!(conn.request("Ping")?, "Pong");

    // Now it reads: events, then the count of those it lost.
    let (mut delivered, mut dropped, mut last) = (0u64, 0u64, first - 1);
    loop {
        match sub.stream_item()? {
            (archon_tests::archon_proto::StreamItem::Event(e), line) => {
                ensure!(e.seq > last, "out of order: {line:?} after {last}");
                last = e.seq;
                delivered += 1;
            }
            (archon_tests::archon_proto::StreamItem::Dropped(n), _) => {
                dropped += n;
                break;
            }
            (_, line) => return fail(format!("not an event: {line:?}")),
        }
    }
    ensure!(
        dropped > 0 && delivered > 0,
        "delivered {delivered}, dropped {dropped}"
    );
    // The stream goes on after the mark: one more event, and every number is accounted for.
    ensure_eq!(conn.request(&signal)?, format!("Ok,{id}"));
    let sentinel = sub.stream_event()?;
    delivered += 1;
    ensure_eq!(
        delivered + dropped,
        sentinel.seq - first + 1,
        "every event after the subscription was either delivered or counted as dropped"
    );
    ensure!(!sub.has_data()?, "nothing after the last event");
    Ok(())
}

#[test]
fn bad_history_and_subscribe_arguments_are_errors() -> Result {
    let a = Archon::start()?;
    let long = format!("History,{}", "*".repeat(257));
    let cases: &[(&str, &str)] = &[
        (
            "History,a/b",
            "bad subject pattern: '/' is not allowed (only name bytes, '*' and '?')",
        ),
        (
            "History,*,nope",
            "bad kind: 'nope' is no event kind or subject kind",
        ),
        ("History,*,exit|", "bad kind: an empty word between '|'"),
        (
            "History,*,Exit",
            "bad kind: 'Exit' is no event kind or subject kind",
        ),
        ("History,*,exit,0", "bad count"),
        ("History,*,exit,65537", "bad count"),
        ("History,*,,ten", "bad count"),
        ("History,*,exit,1,2", "too many fields for History"),
        ("Subscribe,*,exit,1", "too many fields for Subscribe"),
        (
            "Subscribe,[0-9]*",
            "bad subject pattern: '[' is not allowed (only name bytes, '*' and '?')",
        ),
        (
            "Subscribe,,stop|nope",
            "bad kind: 'nope' is no event kind or subject kind",
        ),
        (
            &long,
            "bad subject pattern: at most 256 bytes, this one has 257",
        ),
    ];
    let mut conn = a.conn()?;
    for (line, reason) in cases {
        let reply = conn.request(line)?;
        ensure_eq!(error_reason(&reply)?, *reason, "{line}");
        // Still a connection that takes requests: no subscription was made.
        ensure_eq!(conn.request("Ping")?, "Pong", "after {line}");
    }
    let null = dev_null()?;
    let reply = conn.request_with_fds("Subscribe", &[null.as_raw_fd()])?;
    ensure_eq!(error_reason(&reply)?, "Subscribe takes no fds, got 1");
    ensure_eq!(conn.request("Ping")?, "Pong");
    ensure!(conn.history(&[])?.is_empty(), "and nothing happened");
    Ok(())
}

#[test]
fn archonctl_events_prints_the_history_then_follows() -> Result {
    let a = Archon::start()?;
    let mut conn = a.conn()?;
    let (id, _) = parse_started(&conn.request("StartDaemon,/bin/sleep,100")?)?;
    ensure_eq!(
        conn.request(&format!("Stop,{id}"))?,
        format!("Ok,{id},SIGTERM")
    );
    let history: Vec<String> = conn
        .history(&["", "exit"])?
        .iter()
        .map(show_event)
        .collect();
    ensure_eq!(history.len(), 1);
    let ctl = archonctl_bin()?;
    let out = output_within(
        Command::new(&ctl)
            .arg("--socket")
            .arg(a.socket())
            .args(["events", "--kind", "exit"]),
        BOUND,
    )?;
    ensure!(out.status.success(), "{out:?}");
    ensure_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", history[0]),
        "not a terminal: archon's rows as they are"
    );
    let table = output_within(
        Command::new(&ctl).arg("--socket").arg(a.socket()).args([
            "events",
            "--table",
            "--subject",
            &id.to_string(),
        ]),
        BOUND,
    )?;
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    ensure!(
        text.starts_with("TIME") && text.lines().count() == 4 && text.contains("SIGTERM"),
        "{text}"
    );

    // Followed: the history, then what happens.
    let (r, w) = pipe()?;
    let mut follow = ChildGuard {
        child: Command::new(&ctl)
            .arg("--socket")
            .arg(a.socket())
            .args(["events", "-f", "--kind", "spawn|exit"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .spawn()
            .context("spawn archonctl events -f")?,
    };
    let lines: Vec<String> = (0..2).map(|_| read_line(&r)).collect::<Result<_>>()?;
    ensure!(
        lines[0].contains(",daemon,spawn,") && lines[1].contains(",daemon,exit,"),
        "{lines:?}"
    );
    let (id2, _) = parse_started(&conn.request("StartDaemon,/bin/sleep,100")?)?;
    let next = read_line(&r)?;
    ensure!(
        next.starts_with("Event,") && next.contains(&format!(",{id2},daemon,spawn,")),
        "{next}"
    );
    ensure!(
        follow.child.try_wait().context("waitpid")?.is_none(),
        "archonctl events -f still follows"
    );
    Ok(())
}
