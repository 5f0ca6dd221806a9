//! The manager's rules, driven by hand: no process is forked; "spawning" is a number.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use archon_lua::{Backoff, Config, Flap, Ready, Restart, Service, UnitKind};
use archon_proto::{Cause, Event, EventKind, ReloadCounts, Reply, ServiceState, Status};

use super::*;
use crate::table::ReplyTo;

fn svc(name: &str) -> Service {
    let mut s = Service {
        name: name.to_string(),
        kind: UnitKind::Service,
        line: 1,
        argv: vec![b"/bin/true".to_vec()],
        env: Vec::new(),
        extras: archon_lua::model::Extras::default(),
        restart: Restart::Always,
        stop_signal: libc::SIGTERM,
        stop_timeout_ms: 7000,
        enabled: true,
        autostart: true,
        on_demand: false,
        accept: false,
        max_connections: 2,
        critical: false,
        early: false,
        ready: Ready::Exec,
        ready_timeout_ms: 60_000,
        health: None,
        log: None,
    };
    s.extras.backoff = Backoff {
        initial_ms: 100,
        max_ms: 30_000,
        multiplier: 2.0,
        reset_after_ms: 10_000,
    };
    s.extras.flap = Flap {
        restarts: 5,
        within_ms: 10_000,
    };
    s
}

fn task(name: &str) -> Service {
    Service {
        kind: UnitKind::Task,
        restart: Restart::Never,
        ..svc(name)
    }
}

fn requires(mut s: Service, deps: &[&str]) -> Service {
    let deps: Vec<String> = deps.iter().map(|d| d.to_string()).collect();
    s.extras.after.extend(deps.clone());
    s.extras.requires = deps;
    s
}

fn after(mut s: Service, deps: &[&str]) -> Service {
    s.extras.after.extend(deps.iter().map(|d| d.to_string()));
    s
}

const CLIENT: ReplyTo = ReplyTo { client: 1, seq: 0 };

/// Requests made where who made them does not matter.
const ARCHON: Cause = Cause::Archon;

/// A fake loop: spawns succeed at once with made-up pids (unless told to fail, or to hold them
/// as a pipelined exec whose outcome comes later); everything else the manager asks for is
/// recorded.
struct World {
    m: Manager,
    now: u64,
    next_pid: i32,
    failing: Vec<String>,
    /// Spawns are held until `exec_done` says how they went.
    hold: bool,
    held: Vec<UnitId>,
    spawned: Vec<String>,
    signals: Vec<(String, i32)>,
    kills: Vec<String>,
    timers: BTreeMap<(UnitId, TimerKind), Duration>,
    replies: Vec<(ReplyTo, Reply)>,
    exits: Vec<u8>,
    checks: Vec<String>,
    events: Vec<Event>,
    /// The on-demand units whose sockets are watched.
    watched: BTreeSet<String>,
}

impl World {
    fn new(services: Vec<Service>) -> World {
        let mut w = World {
            m: Manager::new(Config { services }, 1_000_000),
            now: 1_000_000,
            next_pid: 100,
            failing: Vec::new(),
            hold: false,
            held: Vec::new(),
            spawned: Vec::new(),
            signals: Vec::new(),
            kills: Vec::new(),
            timers: BTreeMap::new(),
            replies: Vec::new(),
            exits: Vec::new(),
            checks: Vec::new(),
            events: Vec::new(),
            watched: BTreeSet::new(),
        };
        w.run();
        w
    }

    fn name(&self, id: UnitId) -> String {
        self.m.spec(id).map(|s| s.name.clone()).unwrap_or_default()
    }

    fn id(&self, name: &str) -> UnitId {
        self.m.id(name).unwrap_or(0)
    }

    /// Performs what the manager asked, until it asks nothing more.
    fn run(&mut self) {
        loop {
            let actions = self.m.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Spawn(id) => {
                        let name = self.name(id);
                        if self.hold {
                            self.held.push(id);
                        } else if self.failing.contains(&name) {
                            self.m
                                .spawn_failed(id, "cannot execute x: nope".into(), self.now);
                        } else {
                            self.next_pid += 1;
                            self.spawned.push(name);
                            self.m.spawned(id, self.next_pid, self.now);
                        }
                    }
                    Action::Signal { unit, sig, .. } => {
                        if sig != libc::SIGCONT {
                            self.signals.push((self.name(unit), sig));
                        }
                    }
                    Action::Kill(unit) => self.kills.push(self.name(unit)),
                    Action::Freeze { .. } | Action::Forget(_) => {}
                    Action::Arm { unit, timer, after } => {
                        self.timers.insert((unit, timer), after);
                    }
                    Action::Disarm { unit, timer } => {
                        self.timers.remove(&(unit, timer));
                    }
                    Action::Check(unit) => self.checks.push(self.name(unit)),
                    Action::Reply(to, r) => self.replies.push((to, r)),
                    Action::Exit(code) => self.exits.push(code),
                    Action::Emit(e) => self.events.push(e),
                    Action::Watch { unit, on } => {
                        let name = self.name(unit);
                        assert_ne!(self.watched.contains(&name), on, "{name}: watch {on} twice");
                        if on {
                            self.watched.insert(name);
                        } else {
                            self.watched.remove(&name);
                        }
                    }
                }
            }
        }
    }

    fn state(&self, name: &str) -> State {
        self.m
            .view(self.id(name))
            .map_or(State::Stopped, |v| v.state)
    }

    fn reason(&self, name: &str) -> String {
        self.m
            .view(self.id(name))
            .map(|v| v.reason)
            .unwrap_or_default()
    }

    fn exit(&mut self, name: &str, status: Status) {
        let id = self.id(name);
        self.m.exited(id, status, self.now);
        self.run();
    }

    fn ready(&mut self, name: &str) {
        let id = self.id(name);
        self.m.ready(id, self.now);
        self.run();
    }

    /// Fires a timer the manager armed (it must be armed).
    fn fire(&mut self, name: &str, kind: TimerKind) {
        let id = self.id(name);
        let Some(after) = self.timers.remove(&(id, kind)) else {
            unreachable!("{name}: no {kind:?} timer armed; armed: {:?}", self.timers);
        };
        self.now += after.as_millis() as u64;
        self.m.timer(id, kind, self.now);
        self.run();
    }

    fn armed(&self, name: &str, kind: TimerKind) -> Option<u64> {
        self.timers
            .get(&(self.id(name), kind))
            .map(|d| d.as_millis() as u64)
    }

    fn take_spawned(&mut self) -> Vec<String> {
        std::mem::take(&mut self.spawned)
    }

    /// The held exec of `name` has succeeded (`Ok`) or failed (with the reason).
    fn exec_done(&mut self, name: &str, outcome: Result<(), &str>) {
        let id = self.id(name);
        assert!(self.held.contains(&id), "{name}: no spawn held");
        self.held.retain(|&h| h != id);
        match outcome {
            Ok(()) => {
                self.next_pid += 1;
                self.spawned.push(name.to_string());
                self.m.spawned(id, self.next_pid, self.now);
            }
            Err(reason) => self.m.spawn_failed(id, reason.to_string(), self.now),
        }
        self.run();
    }

    /// A world whose spawns are held, with these units loaded (and their spawns held).
    fn holding(services: Vec<Service>) -> World {
        let mut w = World {
            hold: true,
            ..World::new(Vec::new())
        };
        w.m = Manager::new(Config { services }, w.now);
        w.run();
        w
    }

    fn take_signals(&mut self) -> Vec<String> {
        std::mem::take(&mut self.signals)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    fn replies_text(&mut self) -> Vec<String> {
        std::mem::take(&mut self.replies)
            .into_iter()
            .map(|(_, r)| String::from_utf8_lossy(&r.encode()).trim_end().to_string())
            .collect()
    }
}

#[test]
fn starts_in_dependency_order_and_in_parallel() {
    let mut db = svc("db");
    db.ready = Ready::Notify;
    let migrate = task("migrate");
    let web = after(requires(svc("web"), &["db"]), &["migrate"]);
    let mut w = World::new(vec![db, web, migrate, svc("lone")]);
    // db, migrate and lone start at once; web waits for db to be ready and migrate to be done.
    let mut first = w.take_spawned();
    first.sort();
    assert_eq!(first, ["db", "lone", "migrate"]);
    assert_eq!(w.state("web"), State::Starting);
    assert_eq!(w.state("db"), State::Running);
    w.ready("db");
    assert_eq!(w.state("db"), State::Ready);
    assert!(w.take_spawned().is_empty(), "migrate is still running");
    w.exit("migrate", Status::Exited(0));
    assert_eq!(w.state("migrate"), State::Done);
    assert_eq!(w.take_spawned(), ["web"]);
    assert_eq!(w.state("web"), State::Ready);
}

#[test]
fn a_failed_task_keeps_what_requires_it_from_starting() {
    let web = requires(svc("web"), &["migrate"]);
    let other = after(svc("other"), &["migrate"]);
    let mut w = World::new(vec![task("migrate"), web, other]);
    assert_eq!(w.take_spawned(), ["migrate"]);
    w.exit("migrate", Status::Exited(3));
    assert_eq!(w.state("migrate"), State::Failed);
    assert_eq!(w.reason("migrate"), "exited with code 3");
    assert_eq!(w.state("web"), State::Failed);
    assert_eq!(w.reason("web"), "requires migrate, which failed");
    // Ordering alone does not make a dependency: other starts.
    assert_eq!(w.take_spawned(), ["other"]);
}

fn early(name: &str) -> Service {
    Service {
        early: true,
        ..task(name)
    }
}

#[test]
fn early_tasks_run_before_everything_else() {
    let second = after(early("keys"), &["mounts"]);
    let mut w = World::new(vec![svc("web"), early("mounts"), task("migrate"), second]);
    assert_eq!(w.take_spawned(), ["mounts"], "only the first early task");
    assert_eq!(w.state("web"), State::Starting);
    w.exit("mounts", Status::Exited(0));
    assert_eq!(w.take_spawned(), ["keys"]);
    // A failed early task holds nothing back: the boot goes on without it.
    w.exit("keys", Status::Exited(1));
    assert_eq!(w.state("keys"), State::Failed);
    let mut rest = w.take_spawned();
    rest.sort();
    assert_eq!(rest, ["migrate", "web"]);
    w.exit("migrate", Status::Exited(0));
    assert!(w.take_spawned().is_empty());
}

#[test]
fn a_missing_binary_fails_the_service_with_the_reason_and_nothing_else() {
    let mut w = World {
        failing: vec!["broken".into()],
        ..World::new(Vec::new())
    };
    w.m = Manager::new(
        Config {
            services: vec![svc("broken"), svc("fine")],
        },
        w.now,
    );
    w.run();
    assert_eq!(w.state("broken"), State::Failed);
    assert_eq!(w.reason("broken"), "cannot execute x: nope");
    assert_eq!(w.state("fine"), State::Ready);
}

#[test]
fn crash_restarts_at_once_then_backs_off_then_fails() {
    let mut w = World::new(vec![svc("crashy")]);
    assert_eq!(w.take_spawned(), ["crashy"]);
    // The first crash: restarted at once.
    w.exit("crashy", Status::Exited(1));
    assert_eq!(w.take_spawned(), ["crashy"], "no pause the first time");
    // Then 100 ms, 200 ms, 400 ms, 800 ms...
    let mut delays = Vec::new();
    for _ in 0..4 {
        w.now += 10;
        w.exit("crashy", Status::Signaled(libc::SIGSEGV));
        assert_eq!(w.state("crashy"), State::Backoff);
        assert_eq!(w.reason("crashy"), "killed by SIGSEGV");
        delays.push(w.armed("crashy", TimerKind::Backoff).unwrap_or(0));
        w.fire("crashy", TimerKind::Backoff);
        assert_eq!(w.take_spawned(), ["crashy"]);
    }
    assert_eq!(delays, [100, 200, 400, 800]);
    // The 6th restart within 10 s is one too many.
    w.exit("crashy", Status::Exited(1));
    assert_eq!(w.state("crashy"), State::Failed);
    assert!(
        w.reason("crashy")
            .contains("more than 5 restarts within 10s"),
        "{}",
        w.reason("crashy")
    );
    assert!(w.take_spawned().is_empty());
}

#[test]
fn a_stable_run_resets_the_backoff() {
    let mut w = World::new(vec![svc("s")]);
    w.exit("s", Status::Exited(1));
    w.exit("s", Status::Exited(1));
    assert_eq!(w.armed("s", TimerKind::Backoff), Some(100));
    w.fire("s", TimerKind::Backoff);
    w.take_spawned();
    w.now += 60_000;
    w.exit("s", Status::Exited(1));
    assert_eq!(w.take_spawned(), ["s"], "immediate again");
    assert_eq!(w.armed("s", TimerKind::Backoff), None);
}

#[test]
fn restart_policies() {
    // (policy, status, state after)
    let cases = [
        (Restart::Always, Status::Exited(0), State::Starting),
        (Restart::Always, Status::Exited(1), State::Starting),
        (Restart::OnFailure, Status::Exited(0), State::Stopped),
        (
            Restart::OnFailure,
            Status::Signaled(libc::SIGTERM),
            State::Stopped,
        ),
        (Restart::OnFailure, Status::Exited(2), State::Starting),
        (
            Restart::OnFailure,
            Status::Signaled(libc::SIGKILL),
            State::Starting,
        ),
        (Restart::Never, Status::Exited(0), State::Stopped),
        (Restart::Never, Status::Exited(2), State::Failed),
    ];
    for (policy, status, expect) in cases {
        let mut s = svc("s");
        s.restart = policy;
        let mut w = World::new(vec![s]);
        w.take_spawned();
        w.m.exited(w.id("s"), status, w.now);
        // Look before the loop performs the respawn.
        assert_eq!(w.state("s"), expect, "{policy:?} {status:?}");
    }
}

#[test]
fn shutdown_stops_in_reverse_dependency_order() {
    let web = requires(svc("web"), &["db"]);
    let proxy = after(svc("proxy"), &["web"]);
    let mut w = World::new(vec![svc("db"), web, proxy]);
    assert_eq!(w.take_spawned(), ["db", "web", "proxy"]);
    w.m.shut_down(w.now);
    w.run();
    assert_eq!(w.take_signals(), ["proxy"]);
    w.exit("proxy", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_signals(), ["web"]);
    w.exit("web", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_signals(), ["db"]);
    assert!(!w.m.all_down());
    w.exit("db", Status::Signaled(libc::SIGTERM));
    assert!(w.m.all_down());
    assert_eq!(w.state("db"), State::Stopped);
    assert!(
        w.take_spawned().is_empty(),
        "nothing restarts in a shutdown"
    );
}

#[test]
fn stopping_a_required_service_stops_its_dependents_first_and_replies() {
    let web = requires(svc("web"), &["db"]);
    let mut w = World::new(vec![svc("db"), web, svc("other")]);
    w.take_spawned();
    w.m.stop("db", None, Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.take_signals(), ["web"]);
    w.exit("web", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_signals(), ["db"]);
    assert!(w.replies.is_empty(), "the reply waits for db");
    w.exit("db", Status::Exited(0));
    assert_eq!(w.replies_text(), ["Ok,db,0"]);
    assert_eq!(w.state("web"), State::Stopped);
    assert_eq!(w.state("other"), State::Ready);
    // Stopping what is stopped answers at once.
    w.m.stop("db", None, Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.replies_text(), ["Ok,db,-"]);
    // Starting web pulls db in again.
    w.m.start("web", Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.take_spawned(), ["db", "web"]);
    assert_eq!(w.replies_text(), ["Ok,web"]);
}

#[test]
fn stop_timeout_kills() {
    let mut s = svc("stubborn");
    s.stop_timeout_ms = 500;
    let mut w = World::new(vec![s]);
    w.m.stop("stubborn", None, None, ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.armed("stubborn", TimerKind::StopTimeout), Some(500));
    w.fire("stubborn", TimerKind::StopTimeout);
    assert_eq!(w.kills, ["stubborn"]);
    w.exit("stubborn", Status::Signaled(libc::SIGKILL));
    assert_eq!(w.state("stubborn"), State::Stopped);
    assert_eq!(w.armed("stubborn", TimerKind::StopTimeout), None);
}

#[test]
fn a_critical_failure_asks_archon_to_exit() {
    let mut s = svc("heart");
    s.critical = true;
    s.restart = Restart::Never;
    let mut w = World::new(vec![s, svc("other")]);
    w.exit("heart", Status::Exited(1));
    assert_eq!(w.exits, [1]);
    assert_eq!(w.state("heart"), State::Failed);
}

#[test]
fn not_ready_in_time_is_a_failed_start() {
    let mut s = svc("slow");
    s.ready = Ready::Notify;
    s.ready_timeout_ms = 2000;
    let mut w = World::new(vec![s]);
    w.m.start("slow", Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.armed("slow", TimerKind::ReadyTimeout), Some(2000));
    w.fire("slow", TimerKind::ReadyTimeout);
    assert_eq!(w.state("slow"), State::Stopping);
    assert_eq!(w.take_signals(), ["slow"]);
    w.take_spawned();
    w.exit("slow", Status::Signaled(libc::SIGTERM));
    // Restarted per its policy, at once the first time.
    assert_eq!(w.take_spawned(), ["slow"]);
    assert_eq!(w.replies_text(), ["Error,slow: not ready within 2s"]);
}

#[test]
fn a_missed_watchdog_restarts() {
    let mut s = svc("dog");
    s.ready = Ready::Notify;
    s.extras.watchdog_ms = Some(1000);
    let mut w = World::new(vec![s]);
    w.ready("dog");
    assert_eq!(w.armed("dog", TimerKind::Watchdog), Some(1000));
    w.m.watchdog_kick(w.id("dog"));
    w.run();
    w.fire("dog", TimerKind::Watchdog);
    assert_eq!(w.state("dog"), State::Stopping);
    w.take_spawned();
    w.exit("dog", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_spawned(), ["dog"]);
    // Running again: the old process's failure is no longer its reason.
    assert_eq!(w.reason("dog"), "");
    // The second miss backs off, and says why.
    w.ready("dog");
    w.fire("dog", TimerKind::Watchdog);
    w.exit("dog", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.state("dog"), State::Backoff);
    assert!(
        w.reason("dog").starts_with("watchdog"),
        "{}",
        w.reason("dog")
    );
}

#[test]
fn a_restarted_service_shows_its_own_status_text() {
    let mut w = World::new(vec![svc("s")]);
    assert_eq!(w.take_spawned(), ["s"]);
    w.exit("s", Status::Exited(3));
    assert_eq!(w.take_spawned(), ["s"], "restarted at once");
    assert_eq!(
        w.reason("s"),
        "",
        "the crash is not the running process's reason"
    );
    w.m.status_text(w.id("s"), "serving".into());
    assert_eq!(w.reason("s"), "serving");
    let last = w.m.view(w.id("s")).and_then(|v| v.last);
    assert_eq!(last, Some(Status::Exited(3)), "how the old process ended");
}

#[test]
fn unhealthy_after_retries_restarts() {
    let mut s = svc("h");
    s.health = Some(Box::new(archon_lua::Health {
        check: archon_lua::Check::Command(vec![b"/bin/false".to_vec()]),
        interval_ms: 1000,
        timeout_ms: 500,
        retries: 2,
        start_period_ms: 0,
    }));
    let mut w = World::new(vec![s]);
    let id = w.id("h");
    w.fire("h", TimerKind::Health);
    assert_eq!(w.checks, ["h"]);
    w.m.health_result(id, Ok(()), w.now);
    w.run();
    assert_eq!(w.m.view(id).map(|v| v.health), Some(Health::Healthy));
    w.m.health_result(id, Err("exited 1".into()), w.now);
    w.run();
    assert_eq!(w.state("h"), State::Ready, "one failure is not enough");
    w.m.health_result(id, Err("exited 1".into()), w.now);
    w.run();
    assert_eq!(w.state("h"), State::Stopping);
    assert_eq!(w.m.view(id).map(|v| v.health), Some(Health::Unhealthy));
}

#[test]
fn a_disabled_requirement_fails_the_dependent() {
    let mut db = svc("db");
    db.enabled = false;
    let web = requires(svc("web"), &["db"]);
    let w = World::new(vec![db, web]);
    assert_eq!(w.state("db"), State::Stopped);
    assert_eq!(w.state("web"), State::Failed);
    assert_eq!(w.reason("web"), "requires db, which is disabled");
}

#[test]
fn autostart_false_waits_to_be_pulled_in() {
    let mut db = svc("db");
    db.autostart = false;
    let mut lazy = svc("lazy");
    lazy.autostart = false;
    let web = requires(svc("web"), &["db"]);
    let mut w = World::new(vec![db, web, lazy]);
    assert_eq!(w.take_spawned(), ["db", "web"]);
    assert_eq!(w.state("lazy"), State::Stopped);
    w.m.start("lazy", Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.take_spawned(), ["lazy"]);
    assert_eq!(w.replies_text(), ["Ok,lazy"]);
}

#[test]
fn restart_replies_once_ready_again() {
    let mut w = World::new(vec![svc("s")]);
    w.take_spawned();
    w.m.restart("s", Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.take_signals(), ["s"]);
    assert!(w.replies.is_empty());
    w.exit("s", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_spawned(), ["s"]);
    assert_eq!(w.replies_text(), ["Ok,s"]);
    assert_eq!(w.m.view(w.id("s")).map(|v| v.restarts), Some(0));
}

#[test]
fn restart_takes_what_requires_it_along() {
    let web = requires(svc("web"), &["db"]);
    let mut w = World::new(vec![svc("db"), web, svc("other")]);
    w.take_spawned();
    w.m.restart("db", Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert_eq!(w.take_signals(), ["web"], "what requires db stops first");
    w.exit("web", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_signals(), ["db"]);
    assert!(w.take_spawned().is_empty(), "web waits for db");
    w.exit("db", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_spawned(), ["db", "web"]);
    assert_eq!(w.replies_text(), ["Ok,db"]);
    assert_eq!(w.state("other"), State::Ready);
    assert_eq!(w.state("web"), State::Ready);
}

#[test]
fn pause_and_resume() {
    let mut w = World::new(vec![svc("s"), task("t")]);
    assert!(w.m.pause("s", true, ARCHON, w.now).is_ok());
    assert_eq!(w.state("s"), State::Paused);
    assert!(w.m.pause("s", false, ARCHON, w.now).is_ok());
    assert_eq!(w.state("s"), State::Ready);
    w.exit("t", Status::Exited(0));
    let err = w.m.pause("t", true, ARCHON, w.now);
    assert_eq!(err, Err("t is done, not running".to_string()));
    assert_eq!(
        w.m.pause("nope", true, ARCHON, w.now),
        Err("no such service: nope".to_string())
    );
}

#[test]
fn reload_starts_new_stops_gone_restarts_changed_and_leaves_the_rest() {
    let mut w = World::new(vec![svc("keep"), svc("change"), svc("gone")]);
    w.take_spawned();
    let mut changed = svc("change");
    changed.argv = vec![b"/bin/false".to_vec()];
    let mut moved = svc("keep");
    moved.line = 42;
    let counts = w.m.reload(
        Config {
            services: vec![moved, changed, svc("new")],
        },
        ARCHON,
        w.now,
    );
    w.run();
    assert_eq!(
        counts,
        ReloadCounts {
            started: 1,
            stopped: 1,
            restarted: 1,
            unchanged: 1
        }
    );
    let mut signalled = w.take_signals();
    signalled.sort();
    assert_eq!(signalled, ["change", "gone"]);
    assert_eq!(w.take_spawned(), ["new"]);
    w.exit("change", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_spawned(), ["change"]);
    w.exit("gone", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.m.id("gone"), None, "forgotten once stopped");
    assert_eq!(w.state("keep"), State::Ready);
}

#[test]
fn ten_thousand_units_start_in_one_settle() {
    let services: Vec<Service> = (0..10_000).map(|i| svc(&format!("s{i}"))).collect();
    let mut w = World::new(services);
    assert_eq!(w.take_spawned().len(), 10_000);
    w.m.shut_down(w.now);
    w.run();
    assert_eq!(w.take_signals().len(), 10_000);
}

// ----- events -----

const ALICE: Cause = Cause::Client { uid: 1000, pid: 42 };

impl World {
    /// The events so far as `(subject, event, old, new, cause)`, and forgets them.
    fn take_events(&mut self) -> Vec<(String, EventKind, String, String, Cause)> {
        let word = |s: Option<ServiceState>| s.map_or(String::new(), |s| s.to_string());
        std::mem::take(&mut self.events)
            .into_iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(&e.subject).into_owned(),
                    e.what,
                    word(e.old),
                    word(e.new),
                    e.cause,
                )
            })
            .collect()
    }
}

fn ev(
    subject: &str,
    what: EventKind,
    old: &str,
    new: &str,
    cause: Cause,
) -> (String, EventKind, String, String, Cause) {
    (subject.into(), what, old.into(), new.into(), cause)
}

#[test]
fn boot_is_archons_and_every_change_is_an_event() {
    let mut db = svc("db");
    db.ready = archon_lua::Ready::Notify;
    let mut w = World::new(vec![db]);
    w.ready("db");
    use EventKind::*;
    assert_eq!(
        w.take_events(),
        [
            ev("db", Start, "stopped", "starting", ARCHON),
            ev("db", Spawn, "starting", "running", ARCHON),
            ev("db", Ready, "running", "ready", ARCHON),
        ]
    );
    assert_eq!(w.events.len(), 0);
}

#[test]
fn a_clients_start_stop_and_restart_are_its_until_done() {
    let mut web = requires(svc("web"), &["db"]);
    web.autostart = false;
    let mut db = svc("db");
    db.autostart = false;
    let mut w = World::new(vec![db, web]);
    assert!(w.take_events().is_empty(), "nothing starts on its own");
    w.m.start("web", Some(CLIENT), ALICE, w.now)
        .unwrap_or_default();
    w.run();
    use EventKind::*;
    let events = w.take_events();
    assert_eq!(
        events,
        [
            ev("web", Start, "stopped", "starting", ALICE),
            ev("db", Start, "stopped", "starting", ALICE),
            ev("db", Spawn, "starting", "running", ALICE),
            ev("db", Ready, "running", "ready", ALICE),
            ev("web", Spawn, "starting", "running", ALICE),
            ev("web", Ready, "running", "ready", ALICE),
        ]
    );
    w.m.restart("db", Some(CLIENT), ALICE, w.now)
        .unwrap_or_default();
    w.run();
    w.exit("web", Status::Signaled(libc::SIGTERM));
    w.exit("db", Status::Signaled(libc::SIGTERM));
    assert_eq!(
        w.take_events(),
        [
            ev("web", Stop, "ready", "stopping", ALICE),
            ev("web", Exit, "stopping", "stopped", ALICE),
            ev("db", Restart, "ready", "stopping", ALICE),
            ev("db", Exit, "stopping", "stopped", ALICE),
            ev("db", Start, "stopped", "starting", ALICE),
            ev("web", Start, "stopped", "starting", ALICE),
            ev("db", Spawn, "starting", "running", ALICE),
            ev("db", Ready, "running", "ready", ALICE),
            ev("web", Spawn, "starting", "running", ALICE),
            ev("web", Ready, "running", "ready", ALICE),
        ]
    );
    // Once it is where it was asked to be, a crash is archon's business, and so is the restart
    // (at once the first time, after a backoff the next).
    w.exit("web", Status::Signaled(libc::SIGKILL));
    let crash = w.events.first().cloned();
    assert_eq!(
        w.take_events(),
        [
            ev("web", Exit, "ready", "starting", ARCHON),
            ev("web", Spawn, "starting", "running", ARCHON),
            ev("web", Ready, "running", "ready", ARCHON),
        ]
    );
    assert_eq!(
        crash.map(|e| (e.pid, e.status, e.reason)),
        Some((
            Some(104),
            Some(Status::Signaled(libc::SIGKILL)),
            b"killed by SIGKILL".to_vec()
        ))
    );
    w.exit("web", Status::Exited(1));
    assert_eq!(
        w.take_events(),
        [ev("web", Exit, "ready", "backoff", ARCHON)]
    );
    w.fire("web", TimerKind::Backoff);
    assert_eq!(
        w.take_events()[0],
        ev("web", Start, "backoff", "starting", ARCHON)
    );
}

#[test]
fn stop_events_say_why_and_a_failure_is_archons() {
    let mut slow = svc("slow");
    slow.ready = Ready::Notify;
    let web = requires(svc("web"), &["db"]);
    let mut w = World::new(vec![svc("db"), web, slow]);
    w.take_events();
    w.m.stop("db", None, Some(CLIENT), ALICE, w.now)
        .unwrap_or_default();
    w.run();
    w.exit("web", Status::Exited(0));
    let events = std::mem::take(&mut w.events);
    let stop = &events[0];
    assert_eq!(
        (&stop.subject[..], stop.what, stop.cause),
        (&b"web"[..], EventKind::Stop, ALICE)
    );
    assert_eq!(stop.reason, b"requires db, which is stopping");
    // archon stops slow for not being ready in time: archon's, with the reason.
    w.fire("slow", TimerKind::ReadyTimeout);
    let stop = w.events.first().cloned();
    assert_eq!(
        stop.map(|e| (e.what, e.cause, e.reason)),
        Some((EventKind::Stop, ARCHON, b"not ready within 60s".to_vec()))
    );
}

#[test]
fn a_failure_to_spawn_and_a_failed_requirement_are_fail_events() {
    let web = requires(svc("web"), &["broken"]);
    let mut w = World {
        failing: vec!["broken".into()],
        ..World::new(Vec::new())
    };
    w.m = Manager::new(
        Config {
            services: vec![svc("broken"), web],
        },
        w.now,
    );
    w.run();
    use EventKind::*;
    let events = w.take_events();
    assert!(events.contains(&ev("broken", Fail, "starting", "failed", ARCHON)));
    assert!(events.contains(&ev("web", Fail, "starting", "failed", ARCHON)));
}

#[test]
fn pause_resume_signal_and_reload_are_events() {
    let mut w = World::new(vec![svc("s"), svc("old")]);
    w.take_events();
    use EventKind::*;
    w.m.pause("s", true, ALICE, w.now).unwrap_or_default();
    w.m.pause("s", false, ALICE, w.now).unwrap_or_default();
    w.m.signal("s", libc::SIGHUP, true, ALICE, w.now)
        .unwrap_or_default();
    w.m.signal("s", 0, false, ALICE, w.now).unwrap_or_default();
    w.run();
    let signal = w.events.get(2).map(|e| e.reason.clone());
    assert_eq!(
        w.take_events(),
        [
            ev("s", Pause, "ready", "paused", ALICE),
            ev("s", Resume, "paused", "ready", ALICE),
            ev("s", Signal, "ready", "ready", ALICE),
        ],
        "signal 0 changes nothing and is no event"
    );
    assert_eq!(signal, Some(b"SIGHUP to its whole tree".to_vec()));
    w.m.reload(
        Config {
            services: vec![svc("s"), svc("new")],
        },
        ALICE,
        w.now,
    );
    w.run();
    w.exit("old", Status::Signaled(libc::SIGTERM));
    let events = w.take_events();
    assert!(events.contains(&ev("new", Add, "", "stopped", ALICE)));
    assert!(events.contains(&ev("new", Start, "stopped", "starting", ALICE)));
    assert!(events.contains(&ev("old", Stop, "ready", "stopping", ALICE)));
    assert!(events.contains(&ev("old", Remove, "stopped", "", ALICE)));
}

#[test]
fn a_pending_exec_is_starting_with_no_pid_and_ready_exec_waits_for_it() {
    let mut w = World::holding(vec![svc("s")]);
    w.m.start("s", Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    let view = w.m.view(w.id("s"));
    assert_eq!(
        view.as_ref().map(|v| (v.state, v.pid)),
        Some((State::Starting, None))
    );
    assert!(
        w.replies_text().is_empty(),
        "not ready before its exec succeeded"
    );
    assert!(!w.m.all_down(), "a spawning unit has a process");
    // A signal finds nothing to signal yet.
    assert_eq!(
        w.m.signal("s", libc::SIGHUP, false, ARCHON, w.now),
        Err("s is starting, not running".to_string())
    );
    w.exec_done("s", Ok(()));
    assert_eq!(w.state("s"), State::Ready);
    assert_eq!(w.replies_text(), ["Ok,s"]);
}

#[test]
fn a_stop_while_the_exec_is_pending_stops_it_once_it_runs() {
    let mut w = World::holding(vec![svc("s")]);
    w.m.stop("s", None, Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    assert!(w.take_signals().is_empty(), "no process to signal yet");
    assert!(
        w.replies_text().is_empty(),
        "the stop waits for the outcome"
    );
    w.exec_done("s", Ok(()));
    assert_eq!(w.take_signals(), ["s"]);
    assert_eq!(w.state("s"), State::Stopping);
    w.exit("s", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.state("s"), State::Stopped);
    assert_eq!(w.replies_text(), ["Ok,s,SIGTERM"]);
    assert!(
        w.held.is_empty() && w.take_spawned() == ["s"],
        "not started again"
    );
}

#[test]
fn a_stop_while_the_exec_is_pending_answers_when_the_exec_fails() {
    let mut w = World::holding(vec![svc("s")]);
    w.m.stop("s", None, Some(CLIENT), ARCHON, w.now)
        .unwrap_or_default();
    w.run();
    w.exec_done("s", Err("cannot execute x: No such file or directory"));
    assert_eq!(w.state("s"), State::Failed);
    assert_eq!(w.reason("s"), "cannot execute x: No such file or directory");
    assert_eq!(w.replies_text(), ["Ok,s,-"]);
}

#[test]
fn a_reload_while_the_exec_is_pending_restarts_it_once_it_runs() {
    let mut w = World::holding(vec![svc("s"), svc("same")]);
    let mut changed = svc("s");
    changed.argv = vec![b"/bin/false".to_vec()];
    let counts = w.m.reload(
        Config {
            services: vec![changed, svc("same")],
        },
        ARCHON,
        w.now,
    );
    w.run();
    assert_eq!((counts.restarted, counts.unchanged), (1, 1));
    assert!(w.take_signals().is_empty());
    w.exec_done("same", Ok(()));
    w.exec_done("s", Ok(()));
    assert_eq!(
        w.take_signals(),
        ["s"],
        "started with the old configuration: restarted"
    );
    assert_eq!(w.state("s"), State::Stopping);
    w.exit("s", Status::Signaled(libc::SIGTERM));
    assert_eq!(
        w.held,
        [w.id("s")],
        "started again, with the new configuration"
    );
    w.exec_done("s", Ok(()));
    assert!(w.take_signals().is_empty(), "once");
    assert_eq!(w.state("s"), State::Ready);
    assert_eq!(w.state("same"), State::Ready);
}

#[test]
fn a_reload_while_a_failing_exec_is_pending_does_not_restart_it() {
    let mut w = World::holding(vec![svc("s")]);
    let mut changed = svc("s");
    changed.argv = vec![b"/bin/false".to_vec()];
    w.m.reload(
        Config {
            services: vec![changed],
        },
        ARCHON,
        w.now,
    );
    w.run();
    w.exec_done("s", Err("cannot execute x: nope"));
    assert_eq!(w.state("s"), State::Failed);
    w.m.start("s", None, ARCHON, w.now).unwrap_or_default();
    w.run();
    w.exec_done("s", Ok(()));
    assert!(
        w.take_signals().is_empty(),
        "the new process is not restarted"
    );
    assert_eq!(w.state("s"), State::Ready);
}

// ---- on-demand services ----

fn on_demand(name: &str) -> Service {
    Service {
        on_demand: true,
        autostart: false,
        restart: Restart::OnFailure,
        ..svc(name)
    }
}

#[test]
fn an_on_demand_service_waits_for_a_connection() {
    let mut w = World::new(vec![on_demand("web"), svc("other")]);
    assert_eq!(w.spawned, ["other"]);
    assert_eq!(w.state("web"), State::Stopped);
    assert_eq!(w.watched, BTreeSet::from(["web".to_string()]));
    assert_eq!(w.reason("web"), "waiting for a connection on its sockets");
    // A connection: it starts, and its sockets are no longer watched.
    let id = w.id("web");
    w.m.activate(id, w.now);
    w.run();
    assert_eq!(w.spawned, ["other", "web"]);
    assert_eq!(w.state("web"), State::Ready);
    assert!(w.watched.is_empty());
    let start = w.events.iter().rev().find(|e| e.what == EventKind::Start);
    assert_eq!(
        start.map(|e| e.reason.as_slice()),
        Some(b"a connection on its sockets".as_slice())
    );
    // A stale wake-up while it runs does nothing.
    w.m.activate(id, w.now);
    w.run();
    assert_eq!(w.spawned.len(), 2);
    // It exits cleanly: watched again, and the next connection starts it again.
    w.now += 60_000;
    w.exit("web", Status::Exited(0));
    assert_eq!(w.state("web"), State::Stopped);
    assert_eq!(w.watched, BTreeSet::from(["web".to_string()]));
    w.m.activate(id, w.now);
    w.run();
    assert_eq!(w.spawned, ["other", "web", "web"]);
    // Stopped by hand: watched again; started by hand: not watched.
    w.m.stop("web", None, None, ARCHON, w.now).ok();
    w.run();
    w.exit("web", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.watched.len(), 1);
    w.m.start("web", None, ARCHON, w.now).ok();
    w.run();
    assert!(w.watched.is_empty());
    // A shutdown stops watching.
    w.m.stop("web", None, None, ARCHON, w.now).ok();
    w.run();
    w.exit("web", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.watched.len(), 1);
    w.m.shut_down(w.now);
    w.run();
    assert!(w.watched.is_empty());
}

#[test]
fn a_failing_on_demand_service_backs_off_then_fails() {
    let mut w = World::new(vec![on_demand("web")]);
    let id = w.id("web");
    w.m.activate(id, w.now);
    w.run();
    // A failure: the usual backoff (the first restart at once), its sockets not watched
    // meanwhile.
    w.exit("web", Status::Exited(1));
    assert_eq!(w.spawned.len(), 2);
    assert!(w.watched.is_empty());
    w.exit("web", Status::Exited(1));
    assert_eq!(w.state("web"), State::Backoff);
    assert!(w.watched.is_empty());
    for _ in 0..10 {
        if w.state("web") == State::Failed {
            break;
        }
        if w.state("web") == State::Backoff {
            w.fire("web", TimerKind::Backoff);
        }
        w.exit("web", Status::Exited(1));
    }
    assert_eq!(w.state("web"), State::Failed);
    assert!(w.watched.is_empty());
}

#[test]
fn an_on_demand_service_that_exits_at_once_is_failed_by_its_flap_limit() {
    let mut w = World::new(vec![on_demand("web")]);
    let id = w.id("web");
    // It exits cleanly each time without taking the connection: each wake-up starts it again,
    // until the flap limit (5 within 10 s) fails it.
    for _ in 0..6 {
        w.m.activate(id, w.now);
        w.run();
        w.exit("web", Status::Exited(0));
    }
    assert_eq!(w.spawned.len(), 5);
    assert_eq!(w.state("web"), State::Failed);
    assert_eq!(
        w.reason("web"),
        "started by its sockets more than 5 times within 10s"
    );
    assert!(w.watched.is_empty());
    // Later, the count starts over.
    let mut w = World::new(vec![on_demand("web")]);
    for _ in 0..10 {
        w.now += 3_000;
        w.m.activate(id, w.now);
        w.run();
        w.exit("web", Status::Exited(0));
    }
    assert_eq!(w.spawned.len(), 10);
    assert_eq!(w.state("web"), State::Stopped);
}

#[test]
fn what_requires_an_on_demand_service_does_not_start_it() {
    let w = World::new(vec![on_demand("db"), requires(svc("web"), &["db"])]);
    assert_eq!(w.spawned, ["web"]);
    assert_eq!(w.state("web"), State::Ready);
    assert_eq!(w.state("db"), State::Stopped);
    assert_eq!(w.watched, BTreeSet::from(["db".to_string()]));
}

#[test]
fn a_handlers_restarts_keep_to_backoff_and_flap_limit() {
    const LUA: Cause = Cause::Lua { line: 3 };
    let mut s = svc("crashy");
    s.restart = Restart::Never;
    let mut w = World::new(vec![s, svc("web")]);
    w.take_spawned();
    // A handler that restarts a unit that fails at once, every time it fails.
    w.exit("crashy", Status::Exited(1));
    assert_eq!(w.state("crashy"), State::Failed);
    let id = w.id("crashy");
    let mut started = 0;
    let mut delays = Vec::new();
    for _ in 0..20 {
        match w.m.restart("crashy", None, LUA, w.now) {
            Ok(()) => {}
            Err(why) => {
                assert!(why.contains("more than 5 times within 10s"), "{why}");
                break;
            }
        }
        w.run();
        if w.state("crashy") == State::Backoff {
            delays.push(w.armed("crashy", TimerKind::Backoff).unwrap_or(0));
            // A second ask while it backs off changes nothing.
            assert_eq!(w.m.start("crashy", None, LUA, w.now), Ok(()));
            w.run();
            assert_eq!(w.state("crashy"), State::Backoff);
            w.fire("crashy", TimerKind::Backoff);
        }
        started += w.take_spawned().len();
        w.now += 10;
        w.exit("crashy", Status::Exited(1));
        assert_eq!(w.state("crashy"), State::Failed);
        assert!(
            w.events.iter().any(|e| e.cause == LUA),
            "the events name it"
        );
    }
    assert_eq!(started, 5, "the flap limit");
    assert_eq!(delays, [100, 200, 400, 800], "its backoff");
    // A client's start is a fresh start.
    assert_eq!(w.m.start("crashy", None, ARCHON, w.now), Ok(()));
    w.run();
    assert_eq!(w.take_spawned(), ["crashy"]);
    // A healthy service restarted by a handler restarts at once.
    assert_eq!(w.m.restart("web", None, LUA, w.now), Ok(()));
    w.run();
    let _ = id;
    w.exit("web", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.take_spawned(), ["web"]);
}

fn acceptor(name: &str) -> Service {
    Service {
        accept: true,
        restart: Restart::Never,
        ..svc(name)
    }
}

#[test]
fn an_acceptor_is_ready_without_a_process_and_accepts_below_its_limit() {
    let mut w = World::new(vec![acceptor("echo"), requires(svc("web"), &["echo"])]);
    let id = w.id("echo");
    assert_eq!(w.state("echo"), State::Ready);
    assert!(w.take_spawned().iter().all(|n| n != "echo"), "no process");
    assert!(w.watched.contains("echo") && w.m.accepts(id));
    assert_eq!(w.state("web"), State::Ready, "what requires it starts");
    assert_eq!(w.reason("echo"), "accepting connections: 0 instances of 2");
    w.m.instance_started(id, 501, "a connection from 127.0.0.1:1", w.now);
    w.run();
    assert!(w.m.accepts(id));
    w.m.instance_started(id, 502, "a connection from 127.0.0.1:2", w.now);
    w.run();
    // At max_connections: no more accepting until one ends.
    assert!(!w.m.accepts(id) && !w.watched.contains("echo"));
    assert_eq!(
        w.reason("echo"),
        "2 instances, its max_connections: not accepting until one ends"
    );
    w.m.instance_exited(
        id,
        501,
        Status::Exited(0),
        "a connection from 127.0.0.1:1",
        w.now,
    );
    w.run();
    assert!(w.m.accepts(id) && w.watched.contains("echo"));
    assert_eq!(
        w.state("echo"),
        State::Ready,
        "an instance's end changes nothing else"
    );
    let spawns: Vec<_> = w
        .events
        .iter()
        .filter(|e| e.what == EventKind::Spawn && e.subject == b"echo")
        .map(|e| (e.pid, e.old, e.new))
        .collect();
    let ready = Some(ServiceState::Ready);
    assert_eq!(
        spawns,
        vec![(Some(501), ready, ready), (Some(502), ready, ready)]
    );
    let exit = w.events.last().map(|e| (e.what, e.pid, e.status));
    assert_eq!(
        exit,
        Some((EventKind::Exit, Some(501), Some(Status::Exited(0))))
    );

    // A stop signals the instance left, stops accepting, and ends with its last instance.
    assert_eq!(w.m.stop("echo", None, Some(CLIENT), ARCHON, w.now), Ok(()));
    w.run();
    assert_eq!(
        w.state("web"),
        State::Stopping,
        "what requires it stops first"
    );
    w.exit("web", Status::Signaled(libc::SIGTERM));
    assert_eq!(w.state("echo"), State::Stopping);
    assert!(!w.watched.contains("echo"));
    assert_eq!(
        w.take_signals(),
        vec!["web".to_string(), "echo".to_string()]
    );
    assert!(w.armed("echo", TimerKind::StopTimeout).is_some());
    assert!(
        w.m.signal("echo", libc::SIGUSR1, false, ARCHON, w.now)
            .is_ok()
    );
    w.fire("echo", TimerKind::StopTimeout);
    assert_eq!(w.kills, vec!["echo".to_string()]);
    w.m.instance_exited(
        id,
        502,
        Status::Signaled(9),
        "a connection from 127.0.0.1:2",
        w.now,
    );
    w.run();
    assert_eq!(w.state("echo"), State::Stopped);
    assert!(
        w.replies
            .iter()
            .any(|(_, r)| *r == Reply::Ok(vec![b"echo".to_vec(), Status::Signaled(9).to_field()]))
    );
    assert!(w.m.all_down());
}

#[test]
fn an_acceptor_without_instances_stops_and_restarts_at_once() {
    let mut w = World::new(vec![acceptor("echo")]);
    let id = w.id("echo");
    assert_eq!(w.m.restart("echo", Some(CLIENT), ARCHON, w.now), Ok(()));
    w.run();
    assert_eq!(w.state("echo"), State::Ready);
    assert!(w.watched.contains("echo"));
    assert!(
        w.replies
            .iter()
            .any(|(_, r)| *r == Reply::Ok(vec![b"echo".to_vec()]))
    );
    assert!(w.m.pause("echo", true, ARCHON, w.now).is_err());
    assert!(
        w.m.signal("echo", libc::SIGUSR1, false, ARCHON, w.now)
            .is_err()
    );
    assert_eq!(w.m.stop("echo", None, None, ARCHON, w.now), Ok(()));
    w.run();
    assert_eq!(w.state("echo"), State::Stopped);
    assert!(!w.m.accepts(id) && !w.watched.contains("echo"));
    let last = w.events.last().map(|e| (e.what, e.old, e.new));
    assert_eq!(
        last,
        Some((
            EventKind::Stop,
            Some(ServiceState::Ready),
            Some(ServiceState::Stopped)
        ))
    );
    // A reload that removes it forgets it.
    assert_eq!(w.m.start("echo", None, ARCHON, w.now), Ok(()));
    w.run();
    w.m.instance_started(id, 700, "a connection", w.now);
    w.run();
    w.m.reload(Config { services: vec![] }, ARCHON, w.now);
    w.run();
    assert_eq!(w.state("echo"), State::Stopping);
    w.m.instance_exited(id, 700, Status::Signaled(15), "a connection", w.now);
    w.run();
    assert_eq!(
        w.m.id("echo"),
        None,
        "forgotten once its last instance ended"
    );
}

#[test]
fn a_restored_manager_takes_units_back_by_name_as_they_were() {
    let mut w = World::new(vec![svc("a"), svc("b"), requires(svc("c"), &["a"])]);
    let pid_a = w.m.view(w.id("a")).and_then(|v| v.pid);
    // The first restart is at once, the second after a backoff.
    w.exit("b", Status::Exited(1));
    w.exit("b", Status::Exited(1));
    assert_eq!(w.state("b"), State::Backoff);
    let carried: Vec<(String, crate::service::Carried)> = ["a", "b", "c"]
        .iter()
        .filter_map(|n| Some((n.to_string(), w.m.carry(w.id(n))?)))
        .collect();
    // The file now declares a, b and a new d; c is gone.
    let (m, unknown) = Manager::restored(
        Config {
            services: vec![svc("a"), svc("b"), svc("d")],
        },
        carried,
        w.now,
    );
    w.m = m;
    w.spawned.clear();
    w.events.clear();
    w.run();
    assert_eq!(
        unknown.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(w.spawned, ["d"], "only the new unit is started");
    let a = w.m.view(w.id("a"));
    assert_eq!(
        a.as_ref().map(|v| (v.state, v.pid)),
        Some((State::Ready, pid_a))
    );
    assert_eq!(w.state("b"), State::Backoff, "b waits for its backoff");
    assert!(
        w.events.iter().all(|e| e.subject != b"a"),
        "no event for a unit taken back: {:?}",
        w.events
    );
    // Its life goes on: a crash is restarted, and b's backoff timer brings it back.
    w.exit("a", Status::Signaled(9));
    assert_eq!(w.spawned, ["d", "a"]);
    let restarts = w.m.view(w.id("a")).map(|v| v.restarts);
    assert_eq!(restarts, Some(1));
    w.m.timer(w.id("b"), TimerKind::Backoff, w.now);
    w.run();
    assert_eq!(w.state("b"), State::Ready);
}
