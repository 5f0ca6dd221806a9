//! The manager: every unit (service or task), what it should be doing ([`Want`]), what it is doing
//! ([`State`]), and the step that turns one into the other.
//!
//! Dependencies: a unit starts once every unit it `requires` is ready (a service) or done (a
//! task), and once every unit it is ordered `after` that is on its way up has got there; a unit
//! stops once every unit ordered after it that is going down has stopped. Both rules are checked
//! by [`Manager::settle`] for the units whose neighbours changed, so starting or stopping
//! everything costs time in proportion to the number of units and edges, not its square.
//!
//! Every change of a unit's state comes out as an [`Action::Emit`] of an [`Event`], with who
//! caused it: a request's client, from the request until the unit gets where it was asked to go
//! (ready, done, stopped, failed, paused), and archon for what it does on its own (a process
//! that ends unasked, a timer, a restart policy, boot, shutdown).
//!
//! An on-demand service (`on_demand = true`) is not started at load: while it is down
//! ([`Unit::dormant`]) the loop watches its sockets ([`Action::Watch`]) and tells
//! [`Manager::activate`] of the first connection or datagram, which starts it as archon's doing.
//! A unit that requires it does not start it: the sockets stand in for it ([`Unit::stands_in`]).
//!
//! A service with `accept = true` has no main process: once it may start it is `ready` at once,
//! as an acceptor ([`Unit::acceptor`]), and the loop accepts the connections on its sockets
//! ([`Action::Watch`] again) and starts an instance per connection, which it reports with
//! [`Manager::instance_started`] and [`Manager::instance_exited`]. At `max_connections`
//! instances the watch ends until one does. A stop signals the instances and stops accepting;
//! the service is down when the last instance has ended (at once when there is none).
//!
//! Early tasks (`early = true`) are ordered before every unit that is not early, as if each of
//! those named them all in its `after`; the edge lives here, not in the units' specs, so that a
//! reload that adds or drops an early task does not count every other unit as changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use archon_lua::{Config, Ready, Service, UnitKind};
use archon_proto::{
    Cause, Event, EventKind, ReloadCounts, Reply, ServiceKind, ServiceState, Status, signal,
};

use super::policy;

mod carry;
use crate::table::ReplyTo;
use crate::{info, warn};
pub use carry::Carried;

/// A unit, by the number archon gave it (never reused, so a stale timer finds nothing).
pub type UnitId = u64;

/// Where a unit is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running, and not asked to.
    Stopped,
    /// Asked to start: waiting for what it requires or comes after.
    Starting,
    /// Its process runs; not yet ready (it will say so by notify or on its ready fd).
    Running,
    /// Its process runs and is ready.
    Ready,
    /// Asked to stop: signalled, waiting for its process to end.
    Stopping,
    /// Waiting to restart after a failure.
    Backoff,
    /// Given up: a failure that is not restarted, too many restarts, a dependency that failed.
    Failed,
    /// A task that has run to completion.
    Done,
    /// Stopped with SIGSTOP (or a frozen cgroup) until resumed.
    Paused,
}

impl State {
    /// The state's name, as `Status` spells it.
    pub fn name(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Ready => "ready",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Failed => "failed",
            State::Done => "done",
            State::Paused => "paused",
        }
    }
}

impl From<State> for ServiceState {
    fn from(state: State) -> Self {
        match state {
            State::Stopped => ServiceState::Stopped,
            State::Starting => ServiceState::Starting,
            State::Running => ServiceState::Running,
            State::Ready => ServiceState::Ready,
            State::Stopping => ServiceState::Stopping,
            State::Backoff => ServiceState::Backoff,
            State::Failed => ServiceState::Failed,
            State::Done => ServiceState::Done,
            State::Paused => ServiceState::Paused,
        }
    }
}

impl State {
    /// Where a request that moves a unit is done with it: from here on, what happens to the
    /// unit is archon's doing until the next request.
    fn settles(self) -> bool {
        matches!(
            self,
            State::Ready | State::Done | State::Stopped | State::Failed | State::Paused
        )
    }
}

/// What a unit should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Up,
    Down,
}

/// What happens once a process being stopped has ended.
#[derive(Debug, Clone, PartialEq)]
enum AfterStop {
    /// Nothing: it was asked to stop.
    Rest,
    /// Start it again: a restart.
    Start,
    /// archon stopped it for a failure (not ready in time, watchdog, unhealthy): the restart
    /// policy decides, as for a crash.
    Failure(String),
}

/// The result of the last health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No health check, or no process.
    None,
    /// Checks run, none has passed yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

/// Timers the manager asks the loop for: one of each kind per unit at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// The pause before a restart is over.
    Backoff,
    /// The process has not said it is ready in time.
    ReadyTimeout,
    /// No WATCHDOG=1 in time.
    Watchdog,
    /// The stop timeout is over: SIGKILL.
    StopTimeout,
    /// Time for the next health check.
    Health,
}

/// What the loop is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start the unit's process, then call [`Manager::spawned`] or [`Manager::spawn_failed`].
    Spawn(UnitId),
    /// Send a signal to the unit's main process, or (`tree`) to every process of the unit.
    Signal {
        /// The unit.
        unit: UnitId,
        /// The signal.
        sig: i32,
        /// To the whole tree (cgroup, else process group), not the main process alone.
        tree: bool,
    },
    /// SIGKILL every process of the unit.
    Kill(UnitId),
    /// Stop (SIGSTOP, or freeze its cgroup) or resume every process of the unit.
    Freeze {
        /// The unit.
        unit: UnitId,
        /// Stop when true, resume when false.
        frozen: bool,
    },
    /// Arm a timer (replacing one of that kind for that unit), then call [`Manager::timer`].
    Arm {
        /// The unit.
        unit: UnitId,
        /// Which timer.
        timer: TimerKind,
        /// When, from now.
        after: Duration,
    },
    /// Cancel a timer.
    Disarm {
        /// The unit.
        unit: UnitId,
        /// Which timer.
        timer: TimerKind,
    },
    /// Run the unit's health check, then call [`Manager::health_result`].
    Check(UnitId),
    /// Send a reply.
    Reply(ReplyTo, Reply),
    /// The unit was removed by a reload and has stopped: free what the loop holds for it.
    Forget(UnitId),
    /// A critical unit has failed: stop everything and exit with this code.
    Exit(u8),
    /// A unit changed: record the event (its `seq` is given by the loop's events).
    Emit(Event),
    /// Watch the sockets of an on-demand service for a connection or a datagram, then call
    /// [`Manager::activate`] (`on`), or stop watching them.
    Watch {
        /// The unit.
        unit: UnitId,
        /// Watch, or stop watching.
        on: bool,
    },
}

/// A reply owed when a unit gets somewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    /// `Start`/`Restart`: when it is ready or done, or has failed.
    Up(ReplyTo),
    /// `Stop`: when it has stopped.
    Down(ReplyTo),
}

/// One unit: its configuration and its life.
#[derive(Debug)]
struct Unit {
    spec: Service,
    state: State,
    want: Want,
    pid: Option<i32>,
    /// A Spawn action is out and its outcome not yet told (the loop tells it once the exec has
    /// succeeded or failed, which may be after other events).
    spawning: bool,
    /// A reload changed its configuration while it was spawning: once its process runs, it is
    /// restarted with the new one, as a running unit would have been.
    respawn: bool,
    /// When it entered its state (Unix ms).
    since_ms: u64,
    /// When its current process started (Unix ms).
    started_ms: u64,
    /// Restarts since it was loaded (or last started by hand).
    restarts: u32,
    /// Failures in a row since the last stable run: the backoff exponent.
    consecutive: u32,
    /// Times of recent restarts, for the flap limit.
    recent: VecDeque<u64>,
    last: Option<Status>,
    ready: bool,
    health: Health,
    health_fails: u32,
    reason: String,
    after_stop: AfterStop,
    /// A stop's timeout when it was given with the request.
    stop_timeout_ms: Option<u64>,
    paused_from: State,
    /// Removed by a reload: forgotten once down.
    removing: bool,
    /// Being restarted: once it has stopped, it starts again.
    restart_pending: bool,
    waiters: Vec<Waiter>,
    /// The last STATUS= it sent.
    status_text: String,
    /// The pid of its last process, for the event of its end.
    last_pid: Option<i32>,
    /// Who caused what it is doing now: the client of the request that moved it, until it gets
    /// where it was asked to go; archon otherwise.
    by: Cause,
    /// What the next stop is, and why, for its event: set by the request or the rule that asks
    /// for it, used when the stop happens (the stop itself may wait for dependents).
    stop_what: EventKind,
    stop_why: String,
    /// Who removed it from the configuration (the reload's client, or archon for SIGHUP).
    removed_by: Cause,
    /// An on-demand service whose sockets the loop watches for a connection, or an acceptor
    /// whose connections it accepts (it was told so with [`Action::Watch`]).
    watching: bool,
    /// An `accept` service that is up: from its start until it is down again (its last
    /// instance has ended). It stands for the main process it does not have.
    acceptor: bool,
    /// The instances of an acceptor that run: one per connection.
    instances: u32,
}

impl Unit {
    fn new(spec: Service, now_ms: u64) -> Unit {
        Unit {
            spec,
            state: State::Stopped,
            want: Want::Down,
            pid: None,
            spawning: false,
            respawn: false,
            since_ms: now_ms,
            started_ms: 0,
            restarts: 0,
            consecutive: 0,
            recent: VecDeque::new(),
            last: None,
            ready: false,
            health: Health::None,
            health_fails: 0,
            reason: String::new(),
            after_stop: AfterStop::Rest,
            stop_timeout_ms: None,
            paused_from: State::Running,
            removing: false,
            restart_pending: false,
            waiters: Vec::new(),
            status_text: String::new(),
            last_pid: None,
            by: Cause::Archon,
            stop_what: EventKind::Stop,
            stop_why: String::new(),
            removed_by: Cause::Archon,
            watching: false,
            acceptor: false,
            instances: 0,
        }
    }

    /// Has a process, or one is being started; or is up as an acceptor.
    fn has_process(&self) -> bool {
        self.pid.is_some() || self.spawning || self.acceptor
    }

    /// An acceptor that takes the next connection: up, and below its `max_connections`.
    fn listening(&self) -> bool {
        self.acceptor
            && self.state == State::Ready
            && self.want == Want::Up
            && !self.removing
            && self.instances < self.spec.max_connections
    }

    /// Got where a unit that requires it needs it: ready, or done for a task.
    fn satisfies(&self) -> bool {
        match self.spec.kind {
            UnitKind::Service => self.state == State::Ready,
            UnitKind::Task => self.state == State::Done,
        }
    }

    /// An on-demand service that is down and may be started by a connection: its sockets are
    /// to be watched (while archon is not shutting down).
    fn dormant(&self) -> bool {
        self.spec.on_demand
            && self.spec.enabled
            && !self.removing
            && self.want == Want::Down
            && self.state == State::Stopped
            && !self.has_process()
    }

    /// An on-demand service that a unit requiring it need not wait for: its sockets are bound
    /// and the first connection starts it, unless it has failed.
    fn stands_in(&self) -> bool {
        self.spec.on_demand && self.spec.enabled && self.state != State::Failed
    }

    /// On its way up: something ordered after it waits.
    fn coming_up(&self) -> bool {
        self.want == Want::Up
            && (matches!(
                self.state,
                State::Starting | State::Running | State::Backoff
            ) || (self.state == State::Stopping && self.after_stop != AfterStop::Rest))
    }
}

/// What `Status` shows of a unit.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitView {
    /// Its name.
    pub name: String,
    /// Service or task.
    pub kind: UnitKind,
    /// Its state.
    pub state: State,
    /// Its main process.
    pub pid: Option<i32>,
    /// When it entered its state (Unix ms).
    pub since_ms: u64,
    /// Restarts so far.
    pub restarts: u32,
    /// How its last process ended.
    pub last: Option<Status>,
    /// Ready (for a unit with a process), else `None`.
    pub ready: Option<bool>,
    /// Health, when it has a check and a process.
    pub health: Health,
    /// Why it is failed, backing off or stopped; else its last STATUS=. For an acceptor, its
    /// instances.
    pub reason: String,
    /// The instances of an acceptor that run.
    pub instances: u32,
}

/// Every unit, and the actions owed to the loop.
#[derive(Debug, Default)]
pub struct Manager {
    units: BTreeMap<UnitId, Box<Unit>>,
    by_name: HashMap<String, UnitId>,
    /// For each unit, the units ordered after it (it is in their `after`).
    dependents: HashMap<UnitId, Vec<UnitId>>,
    /// For each unit, the units that require it.
    requirers: HashMap<UnitId, Vec<UnitId>>,
    /// The early tasks: every other unit starts after them.
    early: Vec<UnitId>,
    next_id: UnitId,
    /// Units whose neighbours or own state changed since the last settle.
    dirty: BTreeSet<UnitId>,
    actions: Vec<Action>,
    /// Everything is being stopped (archon is shutting down).
    shutting_down: bool,
}

impl Manager {
    /// Loads `config`: every unit that is enabled and starts on its own, and what it requires,
    /// is asked to start.
    pub fn new(config: Config, now_ms: u64) -> Manager {
        let mut m = Manager {
            next_id: 1,
            ..Manager::default()
        };
        for spec in config.services {
            m.insert(spec, now_ms);
        }
        m.link();
        let boot: Vec<UnitId> = m
            .units
            .iter()
            .filter(|(_, u)| u.spec.enabled && u.spec.autostart)
            .map(|(&id, _)| id)
            .collect();
        for id in boot {
            m.want_up(id, false, Cause::Archon, EventKind::Start, "", now_ms);
        }
        m.touch_on_demand();
        m.settle(now_ms);
        m
    }

    /// Marks every on-demand service for the next settle, which watches the sockets of those
    /// that are down.
    fn touch_on_demand(&mut self) {
        let ids: Vec<UnitId> = self
            .units
            .iter()
            .filter(|(_, u)| u.spec.on_demand)
            .map(|(&id, _)| id)
            .collect();
        self.dirty.extend(ids);
    }

    fn insert(&mut self, spec: Service, now_ms: u64) -> UnitId {
        let id = self.next_id;
        self.next_id += 1;
        self.by_name.insert(spec.name.clone(), id);
        self.units.insert(id, Box::new(Unit::new(spec, now_ms)));
        id
    }

    /// Rebuilds the reverse edges from every unit's `after` and `requires`, and from the early
    /// tasks to every unit that is not early.
    fn link(&mut self) {
        self.dependents.clear();
        self.requirers.clear();
        self.early = self
            .units
            .iter()
            .filter(|(_, u)| u.spec.early)
            .map(|(&id, _)| id)
            .collect();
        for (&id, u) in &self.units {
            if !u.spec.early {
                for &e in &self.early {
                    self.dependents.entry(e).or_default().push(id);
                }
            }
            for name in &u.spec.extras.after {
                if let Some(&dep) = self.by_name.get(name) {
                    self.dependents.entry(dep).or_default().push(id);
                }
            }
            for name in &u.spec.extras.requires {
                if let Some(&dep) = self.by_name.get(name) {
                    self.requirers.entry(dep).or_default().push(id);
                }
            }
        }
    }

    /// The actions owed to the loop, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The unit called `name`.
    pub fn id(&self, name: &str) -> Option<UnitId> {
        self.by_name.get(name).copied()
    }

    /// A unit's configuration.
    pub fn spec(&self, id: UnitId) -> Option<&Service> {
        self.units.get(&id).map(|u| &u.spec)
    }

    /// How many units there are.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Every unit, in declaration order.
    pub fn ids(&self) -> impl Iterator<Item = UnitId> + '_ {
        self.units.keys().copied()
    }

    /// True once no unit has a process: a shutdown can end.
    pub fn all_down(&self) -> bool {
        self.units.values().all(|u| !u.has_process())
    }

    /// What `Status` shows of a unit.
    pub fn view(&self, id: UnitId) -> Option<UnitView> {
        let u = self.units.get(&id)?;
        let reason = if u.acceptor && u.state == State::Ready {
            let max = u.spec.max_connections;
            if u.instances >= max {
                format!(
                    "{} instances, its max_connections: not accepting until one ends",
                    u.instances
                )
            } else {
                format!("accepting connections: {} instances of {max}", u.instances)
            }
        } else if u.watching {
            "waiting for a connection on its sockets".to_string()
        } else if !u.reason.is_empty() {
            u.reason.clone()
        } else {
            u.status_text.clone()
        };
        Some(UnitView {
            name: u.spec.name.clone(),
            kind: u.spec.kind,
            state: u.state,
            pid: u.pid,
            since_ms: u.since_ms,
            restarts: u.restarts,
            last: u.last,
            ready: if u.acceptor {
                Some(u.state == State::Ready)
            } else {
                u.pid
                    .filter(|_| u.spec.kind == UnitKind::Service)
                    .map(|_| u.ready)
            },
            health: if u.pid.is_some() {
                u.health
            } else {
                Health::None
            },
            reason,
            instances: u.instances,
        })
    }

    /// Whether the loop may accept a connection for `id` now.
    pub fn accepts(&self, id: UnitId) -> bool {
        !self.shutting_down && self.units.get(&id).is_some_and(|u| u.listening())
    }

    /// Moves `id` to `state`, and emits the event of the change: `what` happened, `why`.
    fn set_state(&mut self, id: UnitId, state: State, what: EventKind, why: &str, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        if u.state == state {
            return;
        }
        let old = u.state;
        u.state = state;
        u.since_ms = now_ms;
        let by = u.by;
        if state.settles() || matches!(what, EventKind::Pause | EventKind::Resume) {
            u.by = Cause::Archon;
        }
        self.emit(id, what, Some(old), Some(state), why, by, now_ms);
        self.touch(id);
    }

    /// Emits an event of `id`: `what` happened (from `old` to `new`), `why`, caused by `by`.
    /// The pid is its process's, or for an exit the one that ended; the status, for an exit.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        id: UnitId,
        what: EventKind,
        old: Option<State>,
        new: Option<State>,
        why: &str,
        by: Cause,
        now_ms: u64,
    ) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        let exit = what == EventKind::Exit;
        let pid = if exit { u.last_pid } else { u.pid };
        let status = if exit { u.last } else { None };
        self.emit_for(id, what, (old, new), why, by, (pid, status), now_ms);
    }

    /// [`emit`](Self::emit), for the process `pid` (which ended so, when `status` is given).
    #[allow(clippy::too_many_arguments)]
    fn emit_for(
        &mut self,
        id: UnitId,
        what: EventKind,
        (old, new): (Option<State>, Option<State>),
        why: &str,
        by: Cause,
        (pid, status): (Option<i32>, Option<Status>),
        now_ms: u64,
    ) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        self.actions.push(Action::Emit(Event {
            seq: 0,
            time_ms: now_ms,
            subject: u.spec.name.clone().into_bytes(),
            kind: match u.spec.kind {
                UnitKind::Service => ServiceKind::Service,
                UnitKind::Task => ServiceKind::Task,
            },
            what,
            old: old.map(ServiceState::from),
            new: new.map(ServiceState::from),
            pid,
            status,
            reason: why.as_bytes().to_vec(),
            cause: by,
        }));
    }

    /// Marks a unit and its neighbours for the next settle.
    fn touch(&mut self, id: UnitId) {
        self.dirty.insert(id);
        if let Some(ds) = self.dependents.get(&id) {
            self.dirty.extend(ds.iter().copied());
        }
        if let Some(u) = self.units.get(&id) {
            for name in &u.spec.extras.after {
                if let Some(&dep) = self.by_name.get(name) {
                    self.dirty.insert(dep);
                }
            }
            if !u.spec.early {
                self.dirty.extend(self.early.iter().copied());
            }
        }
    }

    fn arm(&mut self, unit: UnitId, timer: TimerKind, ms: u64) {
        self.actions.push(Action::Arm {
            unit,
            timer,
            after: Duration::from_millis(ms),
        });
    }

    fn disarm(&mut self, unit: UnitId, timer: TimerKind) {
        self.actions.push(Action::Disarm { unit, timer });
    }

    fn reply(&mut self, to: ReplyTo, reply: Reply) {
        self.actions.push(Action::Reply(to, reply));
    }

    /// Pays the `Start` waiters of a unit: `Ok,<name>`, or the error.
    fn pay_up(&mut self, id: UnitId, result: Result<(), String>) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        let name = u.spec.name.clone();
        let mut due = Vec::new();
        u.waiters.retain(|w| match w {
            Waiter::Up(to) => {
                due.push(*to);
                false
            }
            Waiter::Down(_) => true,
        });
        for to in due {
            let reply = match &result {
                Ok(()) => Reply::Ok(vec![name.clone().into_bytes()]),
                Err(reason) => Reply::error(format!("{name}: {reason}")),
            };
            self.reply(to, reply);
        }
    }

    /// Pays the `Stop` waiters of a unit: `Ok,<name>,<status>`.
    fn pay_down(&mut self, id: UnitId, status: Option<Status>) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        let name = u.spec.name.clone();
        let mut due = Vec::new();
        u.waiters.retain(|w| match w {
            Waiter::Down(to) => {
                due.push(*to);
                false
            }
            Waiter::Up(_) => true,
        });
        let status = status.map_or_else(|| b"-".to_vec(), Status::to_field);
        for to in due {
            self.reply(
                to,
                Reply::Ok(vec![name.clone().into_bytes(), status.clone()]),
            );
        }
    }

    // ----- requests -----

    /// Asks `id` (and, first, everything it requires) to come up, on behalf of `by`; its event
    /// is `what` (a start or a restart) for the reason `why`, those of what it requires are
    /// starts. `explicit`: asked by name, so a done task runs again and a failed unit is given a
    /// fresh start. An on-demand service it requires is not started (its sockets, bound, stand
    /// in for it until a connection starts it), unless it has failed.
    fn want_up(
        &mut self,
        id: UnitId,
        explicit: bool,
        by: Cause,
        what: EventKind,
        why: &str,
        now_ms: u64,
    ) {
        let mut stack: Vec<(UnitId, bool, Option<String>)> = vec![(id, explicit, None)];
        let mut seen = BTreeSet::new();
        while let Some((id, explicit, required_by)) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            let Some(u) = self.units.get_mut(&id) else {
                continue;
            };
            if !u.spec.enabled {
                continue;
            }
            u.want = Want::Up;
            let (what, why) = match &required_by {
                None => (what, why.to_string()),
                Some(name) => (EventKind::Start, format!("required by {name}")),
            };
            let state = u.state;
            match state {
                State::Stopped | State::Failed => {
                    u.reason.clear();
                    if !matches!(by, Cause::Lua { .. }) {
                        // Started by hand: a fresh start. A handler's start is held to the
                        // unit's backoff and flap limit instead (see `handler_gate`).
                        u.consecutive = 0;
                        u.recent.clear();
                    }
                    u.by = by;
                    self.set_state(id, State::Starting, what, &why, now_ms);
                }
                State::Done if explicit => {
                    u.reason.clear();
                    u.by = by;
                    self.set_state(id, State::Starting, what, &why, now_ms);
                }
                State::Stopping if u.after_stop == AfterStop::Rest => {
                    u.after_stop = AfterStop::Start;
                    u.by = by;
                }
                _ => {}
            }
            self.touch(id);
            if let Some(u) = self.units.get(&id) {
                for name in &u.spec.extras.requires {
                    let Some(&dep) = self.by_name.get(name) else {
                        continue;
                    };
                    if self.units.get(&dep).is_some_and(|d| d.stands_in()) {
                        continue;
                    }
                    stack.push((dep, false, Some(u.spec.name.clone())));
                }
            }
        }
    }

    /// A start or restart a Lua handler asks for is held to the discipline of the unit's own
    /// restarts, so that a handler that restarts what it watches cannot restart it faster or
    /// more often than its restart policy would: a unit in backoff waits for its backoff (the
    /// start is already on its way); every start or restart counts against the flap limit, and
    /// one past it is refused; a unit that is down starts after the backoff its failures in a
    /// row call for (then it is `backoff`, and the last of these counts one more).
    /// `Ok(true)` when the request goes on as a client's would, `Ok(false)` when it is done.
    fn handler_gate(&mut self, id: UnitId, by: Cause, now_ms: u64) -> Result<bool, String> {
        let Some(u) = self.units.get_mut(&id) else {
            return Err("no such service".into());
        };
        if u.state == State::Backoff {
            return Ok(false);
        }
        if policy::flapping(&mut u.recent, now_ms, &u.spec.extras.flap) {
            return Err(format!(
                "{} started more than {} times within {}: refused",
                u.spec.name,
                u.spec.extras.flap.restarts,
                ms_text(u.spec.extras.flap.within_ms)
            ));
        }
        if u.has_process() || !matches!(u.state, State::Stopped | State::Failed | State::Done) {
            return Ok(true);
        }
        let delay = policy::backoff_delay(&u.spec.extras.backoff, u.consecutive);
        u.consecutive = u.consecutive.saturating_add(1);
        if delay.is_zero() {
            return Ok(true);
        }
        u.want = Want::Up;
        u.by = by;
        let why = format!(
            "asked by a handler: starts in {}",
            ms_text(delay.as_millis() as u64)
        );
        self.set_state(id, State::Backoff, EventKind::Start, &why, now_ms);
        self.arm(id, TimerKind::Backoff, delay.as_millis() as u64);
        self.settle(now_ms);
        Ok(false)
    }

    /// `Start,<name>` from `by`: replies once it is ready (or done), or has failed to get there.
    pub fn start(
        &mut self,
        name: &str,
        to: Option<ReplyTo>,
        by: Cause,
        now_ms: u64,
    ) -> Result<(), String> {
        let id = self.known(name)?;
        if self.shutting_down {
            return Err("shutting down".into());
        }
        let u = self.units.get(&id).ok_or("no such service")?;
        if !u.spec.enabled {
            return Err(format!("{name} is disabled"));
        }
        if u.state == State::Paused {
            return Err(format!("{name} is paused (resume it)"));
        }
        if matches!(by, Cause::Lua { .. })
            && matches!(
                u.state,
                State::Stopped | State::Failed | State::Done | State::Backoff
            )
            && !self.handler_gate(id, by, now_ms)?
        {
            return Ok(());
        }
        let Some(u) = self.units.get(&id) else {
            return Err("no such service".into());
        };
        let already = u.satisfies() && !(u.spec.kind == UnitKind::Task);
        self.want_up(id, true, by, EventKind::Start, "", now_ms);
        match to {
            Some(to) if already => self.reply(to, Reply::Ok(vec![name.as_bytes().to_vec()])),
            Some(to) => {
                if let Some(u) = self.units.get_mut(&id) {
                    u.waiters.push(Waiter::Up(to));
                }
            }
            None => {}
        }
        self.settle(now_ms);
        Ok(())
    }

    /// `Stop,<name>[,<grace-ms>]` from `by`: stops the units that require it, then it; replies
    /// once it has stopped.
    pub fn stop(
        &mut self,
        name: &str,
        timeout_ms: Option<u64>,
        to: Option<ReplyTo>,
        by: Cause,
        now_ms: u64,
    ) -> Result<(), String> {
        let id = self.known(name)?;
        self.want_down(id, timeout_ms, by, EventKind::Stop, now_ms);
        if let Some(to) = to {
            let has_process = self.units.get(&id).is_some_and(|u| u.has_process());
            if has_process {
                if let Some(u) = self.units.get_mut(&id) {
                    u.waiters.push(Waiter::Down(to));
                }
            } else {
                self.reply(to, Reply::Ok(vec![name.as_bytes().to_vec(), b"-".to_vec()]));
            }
        }
        self.settle(now_ms);
        Ok(())
    }

    /// Asks `id` and everything that requires it to go down, on behalf of `by`; the event of
    /// its stop is `what` (a stop or a restart), those of the units that require it are stops.
    fn want_down(
        &mut self,
        id: UnitId,
        timeout_ms: Option<u64>,
        by: Cause,
        what: EventKind,
        now_ms: u64,
    ) {
        let root = self.units.get(&id).map(|u| u.spec.name.clone());
        let doing = if what == EventKind::Restart {
            "restarting"
        } else {
            "stopping"
        };
        let mut stack = vec![id];
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            let Some(u) = self.units.get_mut(&x) else {
                continue;
            };
            u.want = Want::Down;
            if timeout_ms.is_some() {
                u.stop_timeout_ms = timeout_ms;
            }
            if u.state == State::Stopping && u.after_stop == AfterStop::Start {
                u.after_stop = AfterStop::Rest;
            }
            if u.has_process() || matches!(u.state, State::Starting | State::Backoff) {
                // Something is going to change on this request's behalf.
                u.by = by;
                if x == id {
                    u.stop_what = what;
                    u.stop_why.clear();
                } else if let Some(root) = &root {
                    u.stop_what = EventKind::Stop;
                    u.stop_why = format!("requires {root}, which is {doing}");
                }
            }
            self.touch(x);
            if let Some(rs) = self.requirers.get(&x) {
                stack.extend(rs.iter().copied());
            }
        }
        let _ = now_ms;
    }

    /// `Restart,<name>`: stops what requires it, then it, and starts them again (it first);
    /// replies once it is ready again.
    pub fn restart(
        &mut self,
        name: &str,
        to: Option<ReplyTo>,
        by: Cause,
        now_ms: u64,
    ) -> Result<(), String> {
        let id = self.known(name)?;
        if self.shutting_down {
            return Err("shutting down".into());
        }
        let u = self.units.get(&id).ok_or("no such service")?;
        if !u.spec.enabled {
            return Err(format!("{name} is disabled"));
        }
        let handler = matches!(by, Cause::Lua { .. });
        if handler && !self.handler_gate(id, by, now_ms)? {
            return Ok(());
        }
        let Some(u) = self.units.get(&id) else {
            return Err("no such service".into());
        };
        let running = (u.pid.is_some() || u.acceptor) && u.state != State::Stopping;
        if let Some(to) = to {
            if let Some(u) = self.units.get_mut(&id) {
                u.waiters.push(Waiter::Up(to));
            }
        }
        if running {
            let mut stack = vec![id];
            let mut seen = BTreeSet::new();
            while let Some(x) = stack.pop() {
                if !seen.insert(x) {
                    continue;
                }
                if let Some(u) = self.units.get_mut(&x).filter(|u| u.has_process()) {
                    u.restart_pending = true;
                    if !handler {
                        u.consecutive = 0;
                    }
                }
                if let Some(rs) = self.requirers.get(&x) {
                    stack.extend(rs.iter().copied());
                }
            }
            self.want_down(id, None, by, EventKind::Restart, now_ms);
        } else {
            self.want_up(id, true, by, EventKind::Restart, "", now_ms);
        }
        self.settle(now_ms);
        Ok(())
    }

    /// `Pause,<name>` / `Resume,<name>` from `by`.
    pub fn pause(&mut self, name: &str, pause: bool, by: Cause, now_ms: u64) -> Result<(), String> {
        let id = self.known(name)?;
        let u = self.units.get_mut(&id).ok_or("no such service")?;
        let state = u.state;
        match (pause, state) {
            (true, State::Running | State::Ready) if u.acceptor => Err(format!(
                "{name} takes connections: it has no process to pause (stop it instead)"
            )),
            (true, State::Running | State::Ready) => {
                u.paused_from = state;
                u.by = by;
                self.set_state(id, State::Paused, EventKind::Pause, "", now_ms);
                for t in [
                    TimerKind::ReadyTimeout,
                    TimerKind::Watchdog,
                    TimerKind::Health,
                ] {
                    self.disarm(id, t);
                }
                self.actions.push(Action::Freeze {
                    unit: id,
                    frozen: true,
                });
                Ok(())
            }
            (true, State::Paused) => Ok(()),
            (false, State::Paused) => {
                let back = u.paused_from;
                u.by = by;
                self.actions.push(Action::Freeze {
                    unit: id,
                    frozen: false,
                });
                self.set_state(id, back, EventKind::Resume, "", now_ms);
                self.arm_running_timers(id, now_ms);
                Ok(())
            }
            (true, s) => Err(format!("{name} is {}, not running", s.name())),
            (false, s) => Err(format!("{name} is {}, not paused", s.name())),
        }
    }

    /// `Signal,<name>,<sig>[,group]` from `by`. A signal other than 0 (which only checks that
    /// the process exists) is an event.
    pub fn signal(
        &mut self,
        name: &str,
        sig: i32,
        tree: bool,
        by: Cause,
        now_ms: u64,
    ) -> Result<(), String> {
        let id = self.known(name)?;
        let u = self.units.get(&id).ok_or("no such service")?;
        if u.acceptor && u.instances == 0 {
            return Err(format!("{name} has no instance running"));
        }
        if u.pid.is_none() && !u.acceptor {
            return Err(format!("{name} is {}, not running", u.state.name()));
        }
        let state = u.state;
        self.actions.push(Action::Signal {
            unit: id,
            sig,
            tree,
        });
        if sig != 0 {
            let mut why = signal::name(sig).unwrap_or_else(|| sig.to_string());
            if tree {
                why.push_str(" to its whole tree");
            }
            self.emit(
                id,
                EventKind::Signal,
                Some(state),
                Some(state),
                &why,
                by,
                now_ms,
            );
        }
        Ok(())
    }

    /// Stops everything, in reverse dependency order (SIGTERM to archon).
    pub fn shut_down(&mut self, now_ms: u64) {
        self.shutting_down = true;
        let ids: Vec<UnitId> = self.units.keys().copied().collect();
        for id in ids {
            if let Some(u) = self.units.get_mut(&id) {
                u.want = Want::Down;
                u.by = Cause::Archon;
                u.stop_what = EventKind::Stop;
                u.stop_why = "archon is shutting down".to_string();
                if u.state == State::Stopping && u.after_stop == AfterStop::Start {
                    u.after_stop = AfterStop::Rest;
                }
            }
            self.touch(id);
        }
        self.settle(now_ms);
    }

    /// SIGKILL to every unit that is stopping (a second SIGTERM to archon).
    pub fn kill_all(&mut self) {
        let ids: Vec<UnitId> = self
            .units
            .iter()
            .filter(|(_, u)| u.pid.is_some() || u.instances > 0)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.actions.push(Action::Kill(id));
        }
    }

    fn known(&self, name: &str) -> Result<UnitId, String> {
        self.id(name)
            .ok_or_else(|| format!("no such service: {name}"))
    }

    // ----- what the loop reports -----

    /// A connection or a datagram came to the sockets of `id`, which the loop was watching: the
    /// service starts, on archon's behalf. Each such start counts as a restart for its `flap`
    /// limit, so that a service that exits without taking what woke it (which would wake
    /// archon again at once) fails instead of being started again and again.
    pub fn activate(&mut self, id: UnitId, now_ms: u64) {
        let shutting_down = self.shutting_down;
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        if !u.dormant() || shutting_down {
            return;
        }
        if policy::flapping(&mut u.recent, now_ms, &u.spec.extras.flap) {
            let flap = u.spec.extras.flap;
            let why = format!(
                "started by its sockets more than {} times within {}",
                flap.restarts,
                ms_text(flap.within_ms)
            );
            self.fail(id, why, EventKind::Fail, now_ms);
            self.settle(now_ms);
            return;
        }
        info!("{}: a connection on its sockets: starting", u.spec.name);
        // want_up starts a stopped unit afresh; the count of recent starts is kept.
        let (recent, consecutive) = (std::mem::take(&mut u.recent), u.consecutive);
        let why = "a connection on its sockets";
        self.want_up(id, false, Cause::Archon, EventKind::Start, why, now_ms);
        if let Some(u) = self.units.get_mut(&id) {
            u.recent = recent;
            u.consecutive = consecutive;
        }
        self.settle(now_ms);
    }

    /// The process of `id` runs (its exec succeeded).
    pub fn spawned(&mut self, id: UnitId, pid: i32, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.spawning = false;
        let respawn = std::mem::take(&mut u.respawn) && u.want == Want::Up;
        u.pid = Some(pid);
        u.last_pid = Some(pid);
        u.started_ms = now_ms;
        u.ready = false;
        u.after_stop = AfterStop::Rest;
        u.health_fails = 0;
        // A new process: why the last one failed is history (`last` keeps how it ended), and
        // would otherwise hide this one's STATUS= for as long as it runs.
        u.reason.clear();
        u.status_text.clear();
        let (kind, ready) = (u.spec.kind, u.spec.ready);
        info!("{}: started, pid {pid}", u.spec.name);
        self.set_state(id, State::Running, EventKind::Spawn, "", now_ms);
        if respawn {
            self.begin_stop(id, AfterStop::Start, now_ms);
        } else if kind == UnitKind::Service && ready == Ready::Exec {
            self.mark_ready(id, now_ms);
        } else {
            self.arm_running_timers(id, now_ms);
        }
        self.settle(now_ms);
    }

    /// Timers of a running unit: the ready timeout while not ready, the watchdog, health checks
    /// once ready.
    fn arm_running_timers(&mut self, id: UnitId, _now_ms: u64) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        let (ready, kind, ready_timeout, watchdog) = (
            u.ready,
            u.spec.kind,
            u.spec.ready_timeout_ms,
            u.spec.extras.watchdog_ms,
        );
        let health = u.spec.health.as_ref().map(|h| h.interval_ms);
        if !ready && kind == UnitKind::Service && u.spec.ready != Ready::Exec {
            self.arm(id, TimerKind::ReadyTimeout, ready_timeout);
        }
        if let Some(ms) = watchdog {
            self.arm(id, TimerKind::Watchdog, ms);
        }
        if ready {
            if let Some(ms) = health {
                self.arm(id, TimerKind::Health, ms);
            }
        }
    }

    /// Starting `id` failed before its program ran: failed, with the reason.
    pub fn spawn_failed(&mut self, id: UnitId, reason: String, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.spawning = false;
        // The next spawn runs the configuration as it is now.
        u.respawn = false;
        warn!("{}: {reason}", u.spec.name);
        self.fail(id, reason, EventKind::Fail, now_ms);
        self.settle(now_ms);
    }

    /// `id` says it is ready (READY=1, or a line on its ready fd).
    pub fn ready(&mut self, id: UnitId, now_ms: u64) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        if u.ready || u.pid.is_none() || u.spec.kind == UnitKind::Task {
            return;
        }
        self.mark_ready(id, now_ms);
        self.settle(now_ms);
    }

    fn mark_ready(&mut self, id: UnitId, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.ready = true;
        if u.spec.health.is_some() {
            u.health = Health::Starting;
        }
        let state = u.state;
        info!("{}: ready", u.spec.name);
        self.disarm(id, TimerKind::ReadyTimeout);
        if state == State::Running {
            self.set_state(id, State::Ready, EventKind::Ready, "", now_ms);
        } else {
            self.touch(id);
        }
        self.arm_running_timers(id, now_ms);
        self.pay_up(id, Ok(()));
    }

    /// `id` sent WATCHDOG=1: its watchdog starts over.
    pub fn watchdog_kick(&mut self, id: UnitId) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        if let (Some(ms), Some(_), false) =
            (u.spec.extras.watchdog_ms, u.pid, u.state == State::Paused)
        {
            self.arm(id, TimerKind::Watchdog, ms);
        }
    }

    /// `id` sent STATUS=.
    pub fn status_text(&mut self, id: UnitId, text: String) {
        if let Some(u) = self.units.get_mut(&id) {
            u.status_text = text;
        }
    }

    /// The process of `id` has ended with `status`.
    pub fn exited(&mut self, id: UnitId, status: Status, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        if u.pid.is_none() {
            return;
        }
        u.pid = None;
        u.last = Some(status);
        u.ready = false;
        u.health = Health::None;
        u.stop_timeout_ms = None;
        let uptime = now_ms.saturating_sub(u.started_ms);
        if uptime >= u.spec.extras.backoff.reset_after_ms {
            u.consecutive = 0;
        }
        let stopping = u.state == State::Stopping;
        // A stop ends on behalf of whoever asked for it; a process that ends unasked is
        // archon's business from here on.
        let by = u.by;
        if !stopping {
            u.by = Cause::Archon;
        }
        let after = std::mem::replace(&mut u.after_stop, AfterStop::Rest);
        let (kind, policy, name, want) = (u.spec.kind, u.spec.restart, u.spec.name.clone(), u.want);
        for t in [
            TimerKind::ReadyTimeout,
            TimerKind::Watchdog,
            TimerKind::Health,
            TimerKind::StopTimeout,
        ] {
            self.disarm(id, t);
        }
        let what = status.to_string();
        let failed = match kind {
            UnitKind::Task => status != Status::Exited(0),
            UnitKind::Service => !policy::clean_exit(status),
        };
        if stopping {
            info!("{name}: stopped ({what})");
            self.pay_down(id, Some(status));
            match after {
                AfterStop::Failure(reason) if want == Want::Up => self.fault(id, reason, now_ms),
                _ => {
                    let mut again = false;
                    if let Some(u) = self.units.get_mut(&id) {
                        u.reason.clear();
                        again = std::mem::take(&mut u.restart_pending) && !self.shutting_down;
                    }
                    if want == Want::Up {
                        self.set_state(id, State::Starting, EventKind::Exit, "", now_ms);
                    } else if again {
                        self.set_state(id, State::Stopped, EventKind::Exit, "", now_ms);
                        self.restart_again(id, by, now_ms);
                    } else {
                        self.set_state(id, State::Stopped, EventKind::Exit, "", now_ms);
                        self.pay_up(id, Err("stopped".into()));
                    }
                }
            }
        } else if kind == UnitKind::Task && !failed {
            info!("{name}: done");
            if let Some(u) = self.units.get_mut(&id) {
                u.reason.clear();
            }
            self.set_state(id, State::Done, EventKind::Exit, "", now_ms);
            self.pay_up(id, Ok(()));
        } else if want == Want::Up && policy::restarts(policy, failed) {
            warn!("{name}: {what}");
            self.fault(id, what, now_ms);
        } else if failed {
            self.fail(id, what, EventKind::Exit, now_ms);
        } else {
            // Ended cleanly, and its policy does not bring it back.
            info!("{name}: {what}");
            if let Some(u) = self.units.get_mut(&id) {
                u.want = Want::Down;
                u.reason = what.clone();
            }
            self.set_state(id, State::Stopped, EventKind::Exit, &what, now_ms);
            self.pay_up(id, Err(what));
        }
        self.after_down(id, now_ms);
        self.settle(now_ms);
    }

    /// A unit being restarted (on behalf of `by`) has stopped: it starts again, and so does what
    /// requires it and stopped with it. One that requires a unit still on its way down waits for
    /// that one.
    fn restart_again(&mut self, id: UnitId, by: Cause, now_ms: u64) {
        let waits_for_requirement = self.units.get(&id).is_some_and(|u| {
            u.spec.extras.requires.iter().any(|r| {
                self.by_name
                    .get(r)
                    .and_then(|d| self.units.get(d))
                    .is_some_and(|d| d.restart_pending)
            })
        });
        if waits_for_requirement {
            if let Some(u) = self.units.get_mut(&id) {
                u.restart_pending = true;
            }
            return;
        }
        let mut stack = vec![id];
        let mut seen = BTreeSet::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            let Some(u) = self.units.get_mut(&x) else {
                continue;
            };
            if x != id {
                if !u.restart_pending || u.has_process() {
                    continue;
                }
                u.restart_pending = false;
            }
            self.want_up(x, false, by, EventKind::Start, "", now_ms);
            if let Some(rs) = self.requirers.get(&x) {
                stack.extend(rs.iter().copied());
            }
        }
    }

    /// A unit that was removed by a reload and is down now is forgotten.
    fn after_down(&mut self, id: UnitId, now_ms: u64) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        if u.removing && !u.has_process() {
            self.forget(id, now_ms);
        }
    }

    fn forget(&mut self, id: UnitId, now_ms: u64) {
        if let Some(u) = self.units.get(&id) {
            let (state, by) = (u.state, u.removed_by);
            let why = "removed from the configuration";
            self.emit(id, EventKind::Remove, Some(state), None, why, by, now_ms);
        }
        if let Some(u) = self.units.remove(&id) {
            for t in [
                TimerKind::Backoff,
                TimerKind::ReadyTimeout,
                TimerKind::Watchdog,
                TimerKind::Health,
                TimerKind::StopTimeout,
            ] {
                self.disarm(id, t);
            }
            for w in u.waiters {
                let to = match w {
                    Waiter::Up(to) | Waiter::Down(to) => to,
                };
                self.reply(
                    to,
                    Reply::error(format!("{}: removed by a reload", u.spec.name)),
                );
            }
            self.by_name.remove(&u.spec.name);
            self.dirty.remove(&id);
            self.actions.push(Action::Forget(id));
        }
    }

    /// Its process ended in failure while `id` should be up: restarts per its policy and
    /// backoff, or fails.
    fn fault(&mut self, id: UnitId, reason: String, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        if !u.ready {
            // Whoever waits for it to come up learns it did not.
        }
        let restart = u.want == Want::Up && policy::restarts(u.spec.restart, true);
        if !restart {
            self.fail(id, reason, EventKind::Exit, now_ms);
            return;
        }
        if policy::flapping(&mut u.recent, now_ms, &u.spec.extras.flap) {
            let flap = &u.spec.extras.flap;
            let why = format!(
                "{reason}; more than {} restarts within {}",
                flap.restarts,
                ms_text(flap.within_ms)
            );
            self.fail(id, why, EventKind::Exit, now_ms);
            return;
        }
        let delay = policy::backoff_delay(&u.spec.extras.backoff, u.consecutive);
        u.consecutive = u.consecutive.saturating_add(1);
        u.restarts = u.restarts.saturating_add(1);
        u.reason = reason.clone();
        let name = u.spec.name.clone();
        self.pay_up(id, Err(reason.clone()));
        if delay.is_zero() {
            info!("{name}: restarting");
            self.set_state(id, State::Starting, EventKind::Exit, &reason, now_ms);
        } else {
            info!(
                "{name}: restarting in {}",
                ms_text(delay.as_millis() as u64)
            );
            self.set_state(id, State::Backoff, EventKind::Exit, &reason, now_ms);
            self.arm(id, TimerKind::Backoff, delay.as_millis() as u64);
        }
    }

    /// `id` has failed for good (until started again by hand); `what` says how (its process
    /// ended, or it could not get one).
    fn fail(&mut self, id: UnitId, reason: String, what: EventKind, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.reason = reason.clone();
        u.want = Want::Down;
        let (name, critical) = (u.spec.name.clone(), u.spec.critical);
        warn!("{name}: failed: {reason}");
        self.set_state(id, State::Failed, what, &reason, now_ms);
        self.pay_up(id, Err(reason.clone()));
        self.pay_down(id, None);
        if critical && !self.shutting_down {
            warn!("{name} is critical: stopping everything");
            self.actions.push(Action::Exit(1));
        }
    }

    /// A timer of `id` has fired.
    pub fn timer(&mut self, id: UnitId, timer: TimerKind, now_ms: u64) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        let (state, name) = (u.state, u.spec.name.clone());
        match timer {
            TimerKind::Backoff if state == State::Backoff => {
                let why = "its backoff is over";
                self.set_state(id, State::Starting, EventKind::Start, why, now_ms);
            }
            TimerKind::ReadyTimeout if state == State::Running && !u.ready => {
                let why = format!("not ready within {}", ms_text(u.spec.ready_timeout_ms));
                warn!("{name}: {why}");
                self.begin_stop(id, AfterStop::Failure(why), now_ms);
            }
            TimerKind::Watchdog if u.pid.is_some() && state != State::Stopping => {
                let why = format!(
                    "watchdog: no WATCHDOG=1 within {}",
                    ms_text(u.spec.extras.watchdog_ms.unwrap_or(0))
                );
                warn!("{name}: {why}");
                self.begin_stop(id, AfterStop::Failure(why), now_ms);
            }
            TimerKind::StopTimeout
                if state == State::Stopping && (u.pid.is_some() || u.instances > 0) =>
            {
                warn!("{name}: did not stop in time: SIGKILL");
                self.actions.push(Action::Kill(id));
            }
            TimerKind::Health if u.pid.is_some() && state == State::Ready => {
                self.actions.push(Action::Check(id));
            }
            _ => {}
        }
        self.settle(now_ms);
    }

    /// A health check of `id` has passed (`Ok`) or failed (with what went wrong).
    pub fn health_result(&mut self, id: UnitId, result: Result<(), String>, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        let Some(h) = u.spec.health.clone() else {
            return;
        };
        if u.pid.is_none() || u.state != State::Ready {
            return;
        }
        let in_start_period = now_ms.saturating_sub(u.started_ms) < h.start_period_ms;
        match result {
            Ok(()) => {
                u.health = Health::Healthy;
                u.health_fails = 0;
            }
            Err(what) => {
                if !(in_start_period && u.health == Health::Starting) {
                    u.health_fails = u.health_fails.saturating_add(1);
                }
                if u.health_fails >= h.retries.max(1) {
                    u.health = Health::Unhealthy;
                    let why = format!("unhealthy: {what}");
                    warn!("{}: {why}", u.spec.name);
                    self.begin_stop(id, AfterStop::Failure(why), now_ms);
                    self.settle(now_ms);
                    return;
                }
            }
        }
        self.arm(id, TimerKind::Health, h.interval_ms);
    }

    // ----- stopping -----

    /// Signals `id` to stop; `after` says what happens once it has.
    fn begin_stop(&mut self, id: UnitId, after: AfterStop, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        if u.pid.is_none() && !u.acceptor {
            return;
        }
        let was_paused = u.state == State::Paused;
        let (what, why) = match &after {
            // archon stops it for a failure of its own accord.
            AfterStop::Failure(why) => {
                u.by = Cause::Archon;
                (EventKind::Stop, why.clone())
            }
            _ => (u.stop_what, std::mem::take(&mut u.stop_why)),
        };
        u.stop_what = EventKind::Stop;
        if u.acceptor && u.instances == 0 {
            // Nothing to signal: down at once, in one event.
            self.acceptor_down(id, what, &why, None, now_ms);
            return;
        }
        u.after_stop = after;
        let sig = u.spec.stop_signal;
        let timeout = u.stop_timeout_ms.unwrap_or(u.spec.stop_timeout_ms);
        let what_runs = if u.acceptor {
            format!("{} instances", u.instances)
        } else {
            format!("pid {}", u.pid.unwrap_or(0))
        };
        info!(
            "{}: stopping ({what_runs}), SIGKILL in {}",
            u.spec.name,
            ms_text(timeout)
        );
        self.set_state(id, State::Stopping, what, &why, now_ms);
        for t in [
            TimerKind::ReadyTimeout,
            TimerKind::Watchdog,
            TimerKind::Health,
        ] {
            self.disarm(id, t);
        }
        if was_paused {
            self.actions.push(Action::Freeze {
                unit: id,
                frozen: false,
            });
        }
        self.actions.push(Action::Signal {
            unit: id,
            sig,
            tree: true,
        });
        if sig != libc::SIGCONT {
            self.actions.push(Action::Signal {
                unit: id,
                sig: libc::SIGCONT,
                tree: true,
            });
        }
        self.arm(id, TimerKind::StopTimeout, timeout);
    }

    // ----- acceptors -----

    /// An `accept` service may start: it is up at once, as an acceptor (the next settle has the
    /// loop accept its connections).
    fn begin_accepting(&mut self, id: UnitId, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.acceptor = true;
        u.instances = 0;
        u.started_ms = now_ms;
        u.after_stop = AfterStop::Rest;
        u.reason.clear();
        u.status_text.clear();
        info!("{}: accepting connections", u.spec.name);
        self.set_state(
            id,
            State::Ready,
            EventKind::Ready,
            "accepting connections",
            now_ms,
        );
        self.pay_up(id, Ok(()));
    }

    /// An acceptor is down: its last instance has ended (`status`, its event `what`) or it had
    /// none. As a process that ends while stopping: it starts again if it is wanted up (a
    /// reload changed it) or being restarted.
    fn acceptor_down(
        &mut self,
        id: UnitId,
        what: EventKind,
        why: &str,
        status: Option<Status>,
        now_ms: u64,
    ) {
        let shutting_down = self.shutting_down;
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.acceptor = false;
        u.after_stop = AfterStop::Rest;
        u.stop_timeout_ms = None;
        u.reason.clear();
        let (by, want) = (u.by, u.want);
        let again = std::mem::take(&mut u.restart_pending) && !shutting_down;
        info!("{}: stopped accepting", u.spec.name);
        self.disarm(id, TimerKind::StopTimeout);
        self.pay_down(id, status);
        if want == Want::Up {
            self.set_state(id, State::Starting, what, why, now_ms);
        } else {
            self.set_state(id, State::Stopped, what, why, now_ms);
            if again {
                self.restart_again(id, by, now_ms);
            } else {
                self.pay_up(id, Err("stopped".into()));
            }
        }
        self.after_down(id, now_ms);
    }

    /// Whether `id` is up as an acceptor (from its start until its last instance has ended).
    pub fn is_acceptor(&self, id: UnitId) -> bool {
        self.units.get(&id).is_some_and(|u| u.acceptor)
    }

    /// After a re-exec: `id` was up as an acceptor, with `instances` running; it is again (and
    /// the next settle watches its sockets, or ends a stop that has no instance left).
    pub fn adopt_acceptor(&mut self, id: UnitId, instances: u32, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.acceptor = true;
        u.instances = instances;
        if u.state == State::Stopping && instances == 0 {
            self.acceptor_down(id, EventKind::Exit, "", None, now_ms);
        }
        self.touch(id);
        self.settle(now_ms);
    }

    /// The loop started an instance of the acceptor `id`, process `pid`, for a connection
    /// (`why` says whose).
    pub fn instance_started(&mut self, id: UnitId, pid: i32, why: &str, now_ms: u64) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        u.instances = u.instances.saturating_add(1);
        let state = Some(u.state);
        self.emit_for(
            id,
            EventKind::Spawn,
            (state, state),
            why,
            Cause::Archon,
            (Some(pid), None),
            now_ms,
        );
        self.touch(id);
        self.settle(now_ms);
    }

    /// An instance of `id` could not be started for a connection: the connection is closed,
    /// the service goes on accepting.
    pub fn instance_failed(&mut self, id: UnitId, why: &str, now_ms: u64) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        warn!("{}: {why}", u.spec.name);
        let state = Some(u.state);
        self.emit(
            id,
            EventKind::Fail,
            state,
            state,
            why,
            Cause::Archon,
            now_ms,
        );
    }

    /// An instance of `id`, process `pid`, has ended with `status`; the last one of an acceptor
    /// being stopped takes the service down.
    pub fn instance_exited(
        &mut self,
        id: UnitId,
        pid: i32,
        status: Status,
        why: &str,
        now_ms: u64,
    ) {
        let Some(u) = self.units.get_mut(&id) else {
            return;
        };
        if u.instances == 0 {
            return;
        }
        u.instances -= 1;
        u.last = Some(status);
        u.last_pid = Some(pid);
        let state = u.state;
        if state == State::Stopping && u.acceptor && u.instances == 0 {
            self.acceptor_down(id, EventKind::Exit, why, Some(status), now_ms);
        } else {
            let s = Some(state);
            self.emit(id, EventKind::Exit, s, s, why, Cause::Archon, now_ms);
        }
        self.touch(id);
        self.settle(now_ms);
    }

    // ----- the step -----

    /// Moves every unit whose neighbourhood changed as far as the rules allow: starts what may
    /// start, stops what may stop, fails what can no longer start.
    pub fn settle(&mut self, now_ms: u64) {
        while let Some(id) = self.dirty.pop_first() {
            self.step(id, now_ms);
        }
    }

    fn step(&mut self, id: UnitId, now_ms: u64) {
        self.step_state(id, now_ms);
        let shutting_down = self.shutting_down;
        if let Some(u) = self.units.get_mut(&id) {
            let watch = (u.dormant() || u.listening()) && !shutting_down;
            if watch != u.watching {
                u.watching = watch;
                self.actions.push(Action::Watch {
                    unit: id,
                    on: watch,
                });
            }
        }
    }

    fn step_state(&mut self, id: UnitId, now_ms: u64) {
        let Some(u) = self.units.get(&id) else {
            return;
        };
        match (u.want, u.state) {
            (Want::Up, State::Starting) if !u.has_process() => match self.may_start(id) {
                Gate::Go if u.spec.accept => self.begin_accepting(id, now_ms),
                Gate::Go => {
                    if let Some(u) = self.units.get_mut(&id) {
                        u.spawning = true;
                    }
                    self.actions.push(Action::Spawn(id));
                }
                Gate::Wait => {}
                Gate::Never(why) => self.fail(id, why, EventKind::Fail, now_ms),
            },
            (Want::Down, State::Running | State::Ready | State::Paused) if self.may_stop(id) => {
                self.begin_stop(id, AfterStop::Rest, now_ms);
            }
            (Want::Down, State::Starting | State::Backoff) if !u.has_process() => {
                let (what, why) = (u.stop_what, u.stop_why.clone());
                if let Some(u) = self.units.get_mut(&id) {
                    u.stop_what = EventKind::Stop;
                    u.stop_why.clear();
                }
                self.disarm(id, TimerKind::Backoff);
                self.set_state(id, State::Stopped, what, &why, now_ms);
                self.pay_up(id, Err("stopped".into()));
                self.pay_down(id, None);
                self.after_down(id, now_ms);
            }
            (Want::Down, State::Stopped | State::Failed | State::Done) => {
                self.pay_down(id, None);
                self.after_down(id, now_ms);
            }
            _ => {}
        }
    }

    fn may_start(&self, id: UnitId) -> Gate {
        let Some(u) = self.units.get(&id) else {
            return Gate::Wait;
        };
        for name in &u.spec.extras.requires {
            let Some(dep) = self.by_name.get(name).and_then(|d| self.units.get(d)) else {
                return Gate::Never(format!("requires {name}, which is not declared"));
            };
            if dep.satisfies() || dep.stands_in() {
                continue;
            }
            if !dep.spec.enabled {
                return Gate::Never(format!("requires {name}, which is disabled"));
            }
            if dep.state == State::Failed {
                return Gate::Never(format!("requires {name}, which failed"));
            }
            if dep.want == Want::Down && !dep.has_process() {
                return Gate::Never(format!("requires {name}, which is {}", dep.state.name()));
            }
            return Gate::Wait;
        }
        for name in &u.spec.extras.after {
            if let Some(dep) = self.by_name.get(name).and_then(|d| self.units.get(d)) {
                if dep.coming_up() {
                    return Gate::Wait;
                }
            }
        }
        if !u.spec.early
            && self
                .early
                .iter()
                .filter_map(|e| self.units.get(e))
                .any(|e| e.coming_up())
        {
            return Gate::Wait;
        }
        Gate::Go
    }

    fn may_stop(&self, id: UnitId) -> bool {
        self.dependents.get(&id).is_none_or(|ds| {
            ds.iter().all(|d| {
                self.units
                    .get(d)
                    .is_none_or(|d| d.want == Want::Up || !d.has_process())
            })
        })
    }

    // ----- reload -----

    /// Applies a new configuration: starts what is new, stops what is gone, restarts what changed
    /// (if it ran), leaves the rest alone.
    /// The events of what changes are `by`'s (the `Reload`'s client, or archon for SIGHUP).
    pub fn reload(&mut self, config: Config, by: Cause, now_ms: u64) -> ReloadCounts {
        let mut counts = ReloadCounts::default();
        let mut declared = BTreeSet::new();
        let mut fresh = Vec::new();
        let mut changed = Vec::new();
        for spec in config.services {
            declared.insert(spec.name.clone());
            match self.by_name.get(&spec.name).copied() {
                None => {
                    counts.started += 1;
                    fresh.push(self.insert(spec, now_ms));
                }
                Some(id) => {
                    let Some(u) = self.units.get_mut(&id) else {
                        continue;
                    };
                    u.removing = false;
                    let same = spec.same_settings(&u.spec);
                    u.spec = spec;
                    if same {
                        counts.unchanged += 1;
                    } else {
                        counts.restarted += 1;
                        changed.push(id);
                    }
                }
            }
        }
        let gone: Vec<UnitId> = self
            .units
            .iter()
            .filter(|(_, u)| !declared.contains(&u.spec.name))
            .map(|(&id, _)| id)
            .collect();
        counts.stopped = gone.len() as u32;
        self.link();
        for &id in &gone {
            if let Some(u) = self.units.get_mut(&id) {
                u.removing = true;
                u.removed_by = by;
                u.want = Want::Down;
                u.by = by;
                u.stop_what = EventKind::Stop;
                u.stop_why = "removed from the configuration".to_string();
            }
            self.touch(id);
        }
        for id in changed {
            let Some(u) = self.units.get(&id) else {
                continue;
            };
            let (enabled, auto, running, spawning) = (
                u.spec.enabled,
                u.spec.autostart,
                (u.pid.is_some() || u.acceptor) && u.state != State::Stopping,
                u.spawning,
            );
            if !enabled {
                self.want_down(id, None, by, EventKind::Stop, now_ms);
                if let Some(u) = self.units.get_mut(&id) {
                    u.stop_why = "disabled by a reload".to_string();
                }
            } else if running {
                if let Some(u) = self.units.get_mut(&id) {
                    u.by = by;
                    u.stop_what = EventKind::Stop;
                    u.stop_why = "its settings changed".to_string();
                }
                self.begin_stop(id, AfterStop::Start, now_ms);
            } else if spawning {
                if let Some(u) = self.units.get_mut(&id) {
                    u.respawn = true;
                }
            } else if auto && u.want == Want::Down && u.state == State::Stopped {
                self.want_up(id, false, by, EventKind::Start, "", now_ms);
            }
            self.touch(id);
        }
        for id in fresh {
            let Some(u) = self.units.get(&id) else {
                continue;
            };
            let (start, state) = (u.spec.enabled && u.spec.autostart, u.state);
            self.emit(id, EventKind::Add, None, Some(state), "", by, now_ms);
            self.touch(id);
            if start && !self.shutting_down {
                self.want_up(id, false, by, EventKind::Start, "", now_ms);
            }
        }
        self.settle(now_ms);
        counts
    }
}

/// Whether a unit may start now.
enum Gate {
    Go,
    Wait,
    Never(String),
}

/// A duration for people: `250ms`, `7s`, `1.5s`.
pub(crate) fn ms_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}
