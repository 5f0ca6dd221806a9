//! The process table: every process archon watches, the replies owed when each ends, the `Run`
//! pool and its queue, and the ring of recently ended processes.
//!
//! This is bookkeeping only: it never makes a system call, so every rule here is tested without
//! forking. The event loop does the kernel's side and tells the table what happened; the table
//! answers with the replies now due, the event of each change ([`Proc::event`],
//! [`Ended::event`]) and the exit actions to run ([`Ended::actions`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::OwnedFd;

use archon_proto::record::Fields;
use archon_proto::{
    Cause, Command, Event, EventKind, Id, Kind, ProcState, ProcessRow, Reply, ServiceState, Status,
};

use crate::on_exit::{EndOf, ExitAction, Refused};
use crate::timers::TimerKey;
use archon_proto::limits::{MAX_EXIT_ACTIONS, MAX_EXIT_ACTIONS_PER_PROCESS};

/// A connection, by the number archon gave it (never reused).
pub type ClientId = u64;

/// Where a reply goes: a connection and the sequence number of the request on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The connection.
    pub client: ClientId,
    /// The request's place on it.
    pub seq: u64,
}

/// A reply owed when a process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// The `Run` that started it: `ExitStatus`.
    Run(ReplyTo),
    /// A `Stop`: `Ok,<id>,<status>`.
    Stop(ReplyTo),
}

/// One watched process.
#[derive(Debug)]
pub struct Proc {
    /// What `List` says of it: id, kind, pid, state, start, last status, command line.
    pub row: ProcessRow,
    /// Its pidfd: registered with the poll while it runs, kept after it ends while its process
    /// group may still need a signal.
    pub pidfd: Option<OwnedFd>,
    /// Replies owed when it ends.
    pub waiters: Vec<Waiter>,
    /// The pending SIGKILL of a stop in progress.
    pub kill_timer: Option<TimerKey>,
    /// Who asked for the stop in progress: its end is theirs. Archon otherwise (a process that
    /// ends unasked).
    pub stop_by: Cause,
    /// What to run when it ends (`OnExit`), in the order asked.
    pub on_exit: Vec<ExitAction>,
}

impl Proc {
    /// A process archon has just started or begun to watch.
    pub fn new(kind: Kind, pid: i32, started_ms: u64, argv: Fields) -> Proc {
        Proc {
            row: ProcessRow {
                id: 0,
                kind,
                pid,
                state: ProcState::Running,
                started_ms,
                status: None,
                argv,
            },
            pidfd: None,
            waiters: Vec::new(),
            kill_timer: None,
            stop_by: Cause::Archon,
            on_exit: Vec::new(),
        }
    }

    /// The event of a change of this process: `what` happened, from `old` to the state it is
    /// in now, `why`, caused by `by`, at `now_ms`.
    pub fn event(
        &self,
        what: EventKind,
        old: Option<ProcState>,
        why: String,
        by: Cause,
        now_ms: u64,
    ) -> Event {
        Event {
            seq: 0,
            time_ms: now_ms,
            subject: self.row.id.to_string().into_bytes(),
            kind: self.row.kind.into(),
            what,
            old: old.map(ServiceState::from),
            new: Some(self.row.state.into()),
            pid: Some(self.row.pid),
            status: if what == EventKind::Exit {
                self.row.status
            } else {
                None
            },
            reason: why.into_bytes(),
            cause: by,
        }
    }

    /// The event of its start (`spawn`) or of archon beginning to watch it (`watch`).
    pub fn start_event(&self, by: Cause) -> Event {
        let what = match self.row.kind {
            Kind::Monitor => EventKind::Watch,
            Kind::Run | Kind::Daemon => EventKind::Spawn,
        };
        self.event(what, None, String::new(), by, self.row.started_ms)
    }

    /// A stop asked by `by` begins: `stopping`, and its event (`why` for people).
    pub fn begin_stop(&mut self, by: Cause, why: &str, now_ms: u64) -> Event {
        let old = self.row.state;
        self.row.state = ProcState::Stopping;
        self.stop_by = by;
        self.event(EventKind::Stop, Some(old), why.to_string(), by, now_ms)
    }

    /// True until it has ended.
    pub fn is_live(&self) -> bool {
        self.row.state != ProcState::Exited
    }

    /// What its exit actions are told, once it has ended.
    pub fn end_of(&self) -> Option<EndOf> {
        let status = self.row.status.filter(|_| !self.is_live())?;
        Some(EndOf {
            id: self.row.id,
            kind: self.row.kind,
            pid: self.row.pid,
            status,
        })
    }

    /// True for a process archon started (its child, which it reaps).
    pub fn is_child(&self) -> bool {
        self.row.kind != Kind::Monitor
    }
}

/// A `Run` with a slot in the pool or waiting for one: who asked, what, and its stdio.
#[derive(Debug)]
pub struct PendingRun {
    /// Where the `ExitStatus` goes; nowhere for an exit action, whose end nobody waits for.
    pub to: Option<ReplyTo>,
    /// The command.
    pub cmd: Command,
    /// The fds sent with the request.
    pub fds: Vec<OwnedFd>,
    /// Who asked.
    pub by: Cause,
    /// The end it is the exit action of.
    pub action_of: Option<EndOf>,
}

/// What became of a new `Run`.
#[derive(Debug)]
pub enum Admission {
    /// A slot was free and is now its: start it.
    Start(PendingRun),
    /// All slots are busy: it waits in the table's queue.
    Queued,
    /// The queue is full too: `Error,busy`.
    Busy(PendingRun),
}

/// What ended a process's record, for the loop to act on.
#[derive(Debug)]
pub struct Ended {
    /// The replies now due.
    pub replies: Vec<(ReplyTo, Reply)>,
    /// It was a `Run`: its pool slot is free now, for a queued one.
    pub freed_run_slot: bool,
    /// Records pushed out of the ended ring: drop them (their fds close).
    pub evicted: Vec<Proc>,
    /// The event of its end: the stop's asker's when it was stopped, else archon's.
    pub event: Option<Event>,
    /// Its exit actions, to run now, with what ended.
    pub actions: Vec<(EndOf, ExitAction)>,
}

/// The table.
#[derive(Debug)]
pub struct Table {
    next_id: Id,
    procs: BTreeMap<Id, Proc>,
    ended: VecDeque<Id>,
    children: HashMap<i32, Id>,
    runs_active: usize,
    max_runs: usize,
    max_queue: usize,
    queue: VecDeque<PendingRun>,
    ended_kept: usize,
    /// Exit actions waiting in the records of live processes.
    exit_actions: usize,
}

impl Table {
    /// An empty table with a pool of `max_runs` running `Run`s and `max_queue` waiting ones, that
    /// keeps the records of the last `ended_kept` ended processes.
    pub fn new(max_runs: usize, max_queue: usize, ended_kept: usize) -> Table {
        Table {
            next_id: 1,
            procs: BTreeMap::new(),
            ended: VecDeque::new(),
            children: HashMap::new(),
            runs_active: 0,
            max_runs,
            max_queue,
            queue: VecDeque::new(),
            ended_kept,
            exit_actions: 0,
        }
    }

    /// Gives a new `Run` a slot, a place in the queue, or neither.
    pub fn admit_run(&mut self, run: PendingRun) -> Admission {
        if self.runs_active < self.max_runs {
            self.runs_active += 1;
            Admission::Start(run)
        } else if self.queue.len() < self.max_queue {
            self.queue.push_back(run);
            Admission::Queued
        } else {
            Admission::Busy(run)
        }
    }

    /// The next queued `Run`, with the slot that is free for it; `None` when no slot is free or
    /// nothing waits.
    pub fn next_run(&mut self) -> Option<PendingRun> {
        if self.runs_active >= self.max_runs {
            return None;
        }
        let run = self.queue.pop_front()?;
        self.runs_active += 1;
        Some(run)
    }

    /// Empties the queue (at shutdown); the runs in it held no slot.
    pub fn take_queue(&mut self) -> VecDeque<PendingRun> {
        std::mem::take(&mut self.queue)
    }

    /// A `Run` that had a slot could not be started after all.
    pub fn release_run_slot(&mut self) {
        self.runs_active = self.runs_active.saturating_sub(1);
    }

    /// `Run`s running, and waiting.
    pub fn run_counts(&self) -> (usize, usize) {
        (self.runs_active, self.queue.len())
    }

    /// Adds a process; returns its new id.
    pub fn insert(&mut self, mut proc: Proc) -> Id {
        let id = self.next_id;
        self.next_id += 1;
        proc.row.id = id;
        if proc.is_child() {
            self.children.insert(proc.row.pid, id);
        }
        self.procs.insert(id, proc);
        id
    }

    /// The process `id`.
    pub fn get(&self, id: Id) -> Option<&Proc> {
        self.procs.get(&id)
    }

    /// The process `id`, to change.
    pub fn get_mut(&mut self, id: Id) -> Option<&mut Proc> {
        self.procs.get_mut(&id)
    }

    /// The live child with pid `pid`.
    pub fn child_by_pid(&self, pid: i32) -> Option<Id> {
        self.children.get(&pid).copied()
    }

    /// The live monitored process with pid `pid`.
    pub fn monitor_by_pid(&self, pid: i32) -> Option<Id> {
        self.procs
            .values()
            .find(|p| p.row.kind == Kind::Monitor && p.row.pid == pid && p.is_live())
            .map(|p| p.row.id)
    }

    /// Ids of the live processes archon started.
    pub fn live_children(&self) -> Vec<Id> {
        self.procs
            .values()
            .filter(|p| p.is_child() && p.is_live())
            .map(|p| p.row.id)
            .collect()
    }

    /// True when no process archon started is still running.
    pub fn no_live_children(&self) -> bool {
        self.children.is_empty()
    }

    /// Every record, live and ended.
    pub fn iter(&self) -> impl Iterator<Item = &Proc> {
        self.procs.values()
    }

    /// Gives process `id` an exit action. It waits for the end of a live process (within
    /// [`MAX_EXIT_ACTIONS_PER_PROCESS`] for it and [`MAX_EXIT_ACTIONS`] in all); for one that has
    /// ended, it comes back with what ended, to be run at once. Refused, nothing changes.
    pub fn add_exit_action(
        &mut self,
        id: Id,
        action: ExitAction,
    ) -> Result<Option<(EndOf, ExitAction)>, Refused> {
        let proc = self.procs.get_mut(&id).ok_or(Refused::NoSuchProcess(id))?;
        if let Some(end) = proc.end_of() {
            return Ok(Some((end, action)));
        }
        if proc.on_exit.len() >= MAX_EXIT_ACTIONS_PER_PROCESS {
            return Err(Refused::TooManyFor(id));
        }
        if self.exit_actions >= MAX_EXIT_ACTIONS {
            return Err(Refused::TooMany);
        }
        proc.on_exit.push(action);
        self.exit_actions += 1;
        Ok(None)
    }

    /// Exit actions waiting, over every process.
    pub fn exit_actions(&self) -> usize {
        self.exit_actions
    }

    /// Removes a record at once (a process that could not be watched after all).
    pub fn remove(&mut self, id: Id) -> Option<Proc> {
        let proc = self.procs.remove(&id)?;
        self.exit_actions -= proc.on_exit.len().min(self.exit_actions);
        if self.children.get(&proc.row.pid) == Some(&id) {
            self.children.remove(&proc.row.pid);
        }
        self.ended.retain(|&e| e != id);
        Some(proc)
    }

    /// Records that `id` has ended with `status` at `now_ms`: its waiters' replies become due,
    /// a `Run` frees its slot, and the record joins the ended ring.
    pub fn end(&mut self, id: Id, status: Status, now_ms: u64) -> Ended {
        let mut out = Ended {
            replies: Vec::new(),
            freed_run_slot: false,
            evicted: Vec::new(),
            event: None,
            actions: Vec::new(),
        };
        let Some(proc) = self.procs.get_mut(&id) else {
            return out;
        };
        if !proc.is_live() {
            // A monitored process whose status the kernel told later: keep the better answer.
            if proc.row.status == Some(Status::Unknown) && status != Status::Unknown {
                proc.row.status = Some(status);
            }
            return out;
        }
        let old = proc.row.state;
        proc.row.state = ProcState::Exited;
        proc.row.status = Some(status);
        // The status says how it ended; the reason, for people, only when it was not asked to.
        let why = if old == ProcState::Stopping {
            String::new()
        } else {
            status.to_string()
        };
        out.event = Some(proc.event(EventKind::Exit, Some(old), why, proc.stop_by, now_ms));
        for waiter in proc.waiters.drain(..) {
            out.replies.push(match waiter {
                Waiter::Run(to) => (to, Reply::ExitStatus(status)),
                Waiter::Stop(to) => (to, Reply::stopped(id, status)),
            });
        }
        if let Some(end) = proc.end_of() {
            self.exit_actions -= proc.on_exit.len().min(self.exit_actions);
            out.actions = proc.on_exit.drain(..).map(|a| (end, a)).collect();
        }
        if proc.row.kind == Kind::Run {
            self.runs_active = self.runs_active.saturating_sub(1);
            out.freed_run_slot = true;
        }
        if proc.is_child() {
            self.children.remove(&proc.row.pid);
        }
        self.ended.push_back(id);
        while self.ended.len() > self.ended_kept {
            if let Some(old) = self.ended.pop_front() {
                out.evicted.extend(self.procs.remove(&old));
            }
        }
        out
    }

    /// The id the next process gets (for a re-exec).
    pub fn next_id(&self) -> Id {
        self.next_id
    }

    /// Puts back a process carried across a re-exec, under its own id; the next new process
    /// gets `next_id` or more. A live `Run` holds its pool slot again.
    pub fn restore(&mut self, proc: Proc, next_id: Id) {
        let id = proc.row.id;
        self.next_id = self.next_id.max(next_id).max(id + 1);
        self.exit_actions += proc.on_exit.len();
        if proc.is_live() {
            if proc.is_child() {
                self.children.insert(proc.row.pid, id);
            }
            if proc.row.kind == Kind::Run {
                self.runs_active += 1;
            }
        } else {
            self.ended.push_back(id);
        }
        self.procs.insert(id, proc);
    }

    /// The rows of a `List` reply, by id.
    pub fn rows(&self) -> Vec<ProcessRow> {
        self.procs.values().map(|p| p.row.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(seq: u64) -> ReplyTo {
        ReplyTo { client: 1, seq }
    }

    fn run(seq: u64) -> PendingRun {
        PendingRun {
            to: Some(to(seq)),
            cmd: Command::new(["x"]),
            fds: Vec::new(),
            by: Cause::Archon,
            action_of: None,
        }
    }

    #[test]
    fn run_pool_starts_then_queues_then_refuses() {
        let mut t = Table::new(2, 1, 8);
        let got: Vec<&str> = (0..4)
            .map(|i| match t.admit_run(run(i)) {
                Admission::Start(_) => "start",
                Admission::Queued => "queue",
                Admission::Busy(_) => "busy",
            })
            .collect();
        assert_eq!(got, ["start", "start", "queue", "busy"]);
        assert_eq!(t.run_counts(), (2, 1));
        assert!(t.next_run().is_none(), "no slot is free yet");
        t.release_run_slot();
        assert_eq!(t.next_run().and_then(|r| r.to), Some(to(2)));
        assert_eq!(t.run_counts(), (2, 0));
        assert!(t.next_run().is_none(), "the queue is empty");
    }

    #[test]
    fn ending_pays_every_waiter_in_order() {
        let mut t = Table::new(4, 4, 8);
        let mut p = Proc::new(Kind::Run, 100, 0, vec![b"x".to_vec()]);
        p.waiters = vec![Waiter::Run(to(1)), Waiter::Stop(to(2))];
        let id = t.insert(p);
        assert_eq!(t.child_by_pid(100), Some(id));
        let ended = t.end(id, Status::Signaled(9), 0);
        assert_eq!(
            ended.replies,
            vec![
                (to(1), Reply::ExitStatus(Status::Signaled(9))),
                (to(2), Reply::stopped(id, Status::Signaled(9)))
            ]
        );
        assert!(ended.freed_run_slot);
        assert_eq!(t.child_by_pid(100), None);
        assert!(t.no_live_children());
        let row = &t.rows()[0];
        assert_eq!(
            (row.state, row.status),
            (ProcState::Exited, Some(Status::Signaled(9)))
        );
        // Ending twice changes nothing and pays nobody twice.
        assert!(t.end(id, Status::Exited(0), 0).replies.is_empty());
        assert_eq!(
            t.get(id).and_then(|p| p.row.status),
            Some(Status::Signaled(9))
        );
    }

    #[test]
    fn unknown_status_is_refined_later_but_never_replaced() {
        let mut t = Table::new(1, 1, 8);
        let id = t.insert(Proc::new(Kind::Monitor, 9, 0, vec![]));
        assert_eq!(t.monitor_by_pid(9), Some(id));
        t.end(id, Status::Unknown, 0);
        assert_eq!(t.monitor_by_pid(9), None);
        t.end(id, Status::Exited(3), 0);
        assert_eq!(
            t.get(id).and_then(|p| p.row.status),
            Some(Status::Exited(3))
        );
        t.end(id, Status::Exited(4), 0);
        assert_eq!(
            t.get(id).and_then(|p| p.row.status),
            Some(Status::Exited(3))
        );
    }

    #[test]
    fn ended_ring_keeps_the_newest() {
        let mut t = Table::new(1, 1, 2);
        let ids: Vec<Id> = (0..4)
            .map(|i| t.insert(Proc::new(Kind::Daemon, 10 + i, 0, vec![])))
            .collect();
        let live = t.insert(Proc::new(Kind::Daemon, 99, 0, vec![]));
        let mut evicted = Vec::new();
        for &id in &ids {
            evicted.extend(
                t.end(id, Status::Exited(0), 0)
                    .evicted
                    .into_iter()
                    .map(|p| p.row.id),
            );
        }
        assert_eq!(evicted, ids[..2]);
        let kept: Vec<Id> = t.rows().iter().map(|r| r.id).collect();
        assert_eq!(
            kept,
            vec![ids[2], ids[3], live],
            "live records are never evicted"
        );
        assert_eq!(t.live_children(), vec![live]);
    }

    #[test]
    fn ids_are_never_reused() {
        let mut t = Table::new(1, 1, 8);
        let a = t.insert(Proc::new(Kind::Daemon, 1, 0, vec![]));
        t.remove(a);
        let b = t.insert(Proc::new(Kind::Daemon, 1, 0, vec![]));
        assert!(b > a);
        assert_eq!(t.child_by_pid(1), Some(b));
    }
    #[test]
    fn changes_are_events_of_whoever_caused_them() {
        let alice = Cause::Client { uid: 1000, pid: 42 };
        let mut t = Table::new(1, 1, 8);
        let d = t.insert(Proc::new(Kind::Daemon, 10, 5, vec![b"sleep".to_vec()]));
        let m = t.insert(Proc::new(Kind::Monitor, 11, 6, vec![]));
        let start = t.get(d).map(|p| p.start_event(alice));
        assert_eq!(
            start.map(|e| (
                e.subject, e.kind, e.what, e.old, e.new, e.pid, e.time_ms, e.cause
            )),
            Some((
                d.to_string().into_bytes(),
                archon_proto::ServiceKind::Daemon,
                EventKind::Spawn,
                None,
                Some(ServiceState::Running),
                Some(10),
                5,
                alice
            ))
        );
        assert_eq!(
            t.get(m).map(|p| p.start_event(alice).what),
            Some(EventKind::Watch)
        );
        // Stopped by alice: the stop and the end are hers.
        let stop = t.get_mut(d).map(|p| p.begin_stop(alice, "", 7));
        assert_eq!(
            stop.map(|e| (e.what, e.old, e.new, e.cause)),
            Some((
                EventKind::Stop,
                Some(ServiceState::Running),
                Some(ServiceState::Stopping),
                alice
            ))
        );
        let end = t.end(d, Status::Signaled(15), 8).event;
        assert_eq!(
            end.map(|e| (e.what, e.old, e.new, e.status, e.cause, e.time_ms)),
            Some((
                EventKind::Exit,
                Some(ServiceState::Stopping),
                Some(ServiceState::Exited),
                Some(Status::Signaled(15)),
                alice,
                8
            ))
        );
        // Ended unasked: archon's. Ending twice is no second event.
        let end = t.end(m, Status::Exited(0), 9).event;
        assert_eq!(end.map(|e| e.cause), Some(Cause::Archon));
        assert!(t.end(m, Status::Exited(0), 9).event.is_none());
    }

    fn action(word: &str) -> ExitAction {
        ExitAction {
            cmd: Command::new([word]),
            by: Cause::Client { uid: 0, pid: 1 },
        }
    }

    #[test]
    fn exit_actions_wait_for_the_end_then_come_back_once_in_order() {
        let mut t = Table::new(1, 1, 8);
        let d = t.insert(Proc::new(Kind::Daemon, 10, 0, vec![]));
        for word in ["a", "b"] {
            assert_eq!(t.add_exit_action(d, action(word)), Ok(None));
        }
        assert_eq!(t.exit_actions(), 2);
        let ended = t.end(d, Status::Signaled(9), 0);
        let end = EndOf {
            id: d,
            kind: Kind::Daemon,
            pid: 10,
            status: Status::Signaled(9),
        };
        assert_eq!(ended.actions, vec![(end, action("a")), (end, action("b"))]);
        assert_eq!(t.exit_actions(), 0);
        assert!(t.end(d, Status::Exited(0), 0).actions.is_empty());
        // Ended and kept: at once, with what ended; nothing waits.
        assert_eq!(
            t.add_exit_action(d, action("c")),
            Ok(Some((end, action("c"))))
        );
        assert_eq!(t.exit_actions(), 0);
        assert_eq!(
            t.add_exit_action(99, action("d")),
            Err(Refused::NoSuchProcess(99))
        );
    }

    #[test]
    fn exit_actions_are_bounded_per_process_and_in_all() {
        let mut t = Table::new(1, 1, 8);
        let first = t.insert(Proc::new(Kind::Monitor, 1, 0, vec![]));
        for _ in 0..MAX_EXIT_ACTIONS_PER_PROCESS {
            assert_eq!(t.add_exit_action(first, action("x")), Ok(None));
        }
        assert_eq!(
            t.add_exit_action(first, action("x")),
            Err(Refused::TooManyFor(first))
        );
        let mut pid = 2;
        while t.exit_actions() < MAX_EXIT_ACTIONS {
            let id = t.insert(Proc::new(Kind::Monitor, pid, 0, vec![]));
            pid += 1;
            while t.exit_actions() < MAX_EXIT_ACTIONS
                && t.get(id)
                    .is_some_and(|p| p.on_exit.len() < MAX_EXIT_ACTIONS_PER_PROCESS)
            {
                assert_eq!(t.add_exit_action(id, action("x")), Ok(None));
            }
        }
        let fresh = t.insert(Proc::new(Kind::Daemon, 5000, 0, vec![]));
        assert_eq!(t.add_exit_action(fresh, action("x")), Err(Refused::TooMany));
        assert!(t.get(fresh).is_some_and(|p| p.on_exit.is_empty()));
        // An end makes room; a removed record gives its actions back too.
        assert_eq!(
            t.end(first, Status::Exited(0), 0).actions.len(),
            MAX_EXIT_ACTIONS_PER_PROCESS
        );
        assert_eq!(t.add_exit_action(fresh, action("x")), Ok(None));
        t.remove(fresh);
        assert_eq!(
            t.exit_actions(),
            MAX_EXIT_ACTIONS - MAX_EXIT_ACTIONS_PER_PROCESS
        );
    }
}
