//! The configuration's Lua handlers in the loop: which events and log lines they get, their
//! `every` timers and `watch` files, and what archon does with what they ask for.
//!
//! The Lua side lives in `archon_lua::Handlers`; the loop holds one only when the file declares
//! handlers (a file without any costs nothing here: no queue, no timer, no inotify fd). An
//! event the handlers want ([`archon_lua::Handlers::wants_event`], decided in Rust) is queued
//! as it is emitted, and the queue is run at the end of the loop's turn, at most
//! [`MAX_HANDLER_RUNS_PER_TURN`] runs before the next `poll` (which then does not sleep): a
//! handler never runs inside a request, an exit or an action of the manager, and a chain of
//! handlers that feed each other cannot keep the loop from its other work; such a chain is
//! ended by each handler's run budget (`archon_lua::HANDLER_RUN_BURST`). What a handler asked
//! for is carried out after it returned, on its behalf (`Cause::Lua`), like a client's request;
//! what fails is a `handler` event.
//!
//! `watch` watches the file's directory (inotify, one fd, token [`super::LUA_WATCH`]) for the
//! file's name, so that a file deleted and created again, or replaced by a rename (as editors
//! and configuration tools do), is still watched.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use archon_lua::{Action, Change, Handlers, Outcome};
use archon_proto::{Cause, Command, Event, EventKind, Kind, LogLine, ServiceKind, ServiceRow};
use mio::Interest;
use mio::unix::SourceFd;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::{LUA_WATCH, Supervisor, now_ms};
use crate::timers::{TimerEvent, TimerKey};
use crate::{debug, info, warn};

/// The handler runs the loop does in one turn before it polls again: a chain of handlers
/// that feed each other goes on in the next turn, after the clients, signals and children.
pub(super) const MAX_HANDLER_RUNS_PER_TURN: usize = 256;

/// The events and lines waiting for their handlers: past this many, new ones are dropped
/// (and counted in archon's log) until the handlers catch up.
const MAX_HANDLER_QUEUE: usize = 4096;

/// What a watch of a file's directory is told.
fn watch_mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ONLYDIR
}

/// Something waiting for its handlers.
enum Pending {
    Event(Event),
    Log(String, LogLine),
}

/// The loop's side of the handlers.
pub(super) struct LuaRt {
    handlers: Handlers,
    queue: VecDeque<Pending>,
    /// Dropped since the last warning.
    dropped: u64,
    /// The armed timer of each `every` handler, by its index.
    timers: Vec<(usize, TimerKey)>,
    /// The inotify fd, when there is a `watch`.
    inotify: Option<Inotify>,
    /// Per watched directory, the file names and their handlers.
    watches: HashMap<WatchDescriptor, Vec<(OsString, usize)>>,
}

impl LuaRt {
    /// Whether handler runs are waiting: the loop then polls without sleeping.
    pub(super) fn busy(&self) -> bool {
        !self.queue.is_empty()
    }
}

impl archon_lua::Host for Supervisor {
    fn status(&self, name: &str) -> Option<ServiceRow> {
        let id = self.services.id(name)?;
        self.unit_row(id)
    }
}

/// A `handler` or `note` event about a handler.
fn handler_event(subject: Vec<u8>, what: EventKind, reason: String, cause: Cause) -> Event {
    Event {
        seq: 0,
        time_ms: now_ms(),
        subject,
        kind: ServiceKind::Lua,
        what,
        old: None,
        new: None,
        pid: None,
        status: None,
        reason: reason.into_bytes(),
        cause,
    }
}

impl Supervisor {
    /// Puts the handlers of a (re)loaded file in place of the old ones: their timers, their
    /// watches and their queue go with them.
    pub(super) fn install_handlers(&mut self, handlers: Option<Handlers>) {
        if let Some(old) = self.lua.take() {
            for (_, key) in old.timers {
                self.timers.cancel(key);
            }
            if let Some(fd) = old.inotify.as_ref() {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&fd.as_fd().as_raw_fd()));
            }
            if !old.queue.is_empty() {
                info!(
                    "reload: {} events not given to the old handlers",
                    old.queue.len()
                );
            }
        }
        let Some(handlers) = handlers else {
            return;
        };
        info!(
            "{} Lua handlers ({} KiB of Lua heap)",
            handlers.len(),
            handlers.used_memory() / 1024
        );
        let now = Instant::now();
        let timers = handlers
            .timers()
            .into_iter()
            .map(|(i, period)| (i, self.timers.arm(now + period, TimerEvent::Handler(i))))
            .collect();
        let mut rt = Box::new(LuaRt {
            queue: VecDeque::new(),
            dropped: 0,
            timers,
            inotify: None,
            watches: HashMap::new(),
            handlers,
        });
        self.watch_files(&mut rt);
        self.lua = Some(rt);
    }

    /// Watches the directories of the `watch` handlers' files.
    fn watch_files(&mut self, rt: &mut LuaRt) {
        let files: Vec<(usize, std::path::PathBuf)> = rt
            .handlers
            .watches()
            .into_iter()
            .map(|(i, p)| (i, p.to_path_buf()))
            .collect();
        if files.is_empty() {
            return;
        }
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => {
                warn!("watch: cannot make an inotify fd ({e}): no file is watched");
                return;
            }
        };
        for (i, path) in files {
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            match inotify.add_watch(dir, watch_mask()) {
                Ok(wd) => rt
                    .watches
                    .entry(wd)
                    .or_default()
                    .push((name.to_os_string(), i)),
                Err(e) => warn!(
                    "watch {}: cannot watch {} ({e}): this handler never runs",
                    path.display(),
                    dir.display()
                ),
            }
        }
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&inotify.as_fd().as_raw_fd()),
            LUA_WATCH,
            Interest::READABLE,
        ) {
            warn!("watch: cannot poll the inotify fd ({e}): no file is watched");
            return;
        }
        rt.inotify = Some(inotify);
    }

    /// Queues `event` for the handlers that want it. `seq` is the number it is given.
    pub(super) fn offer_to_handlers(&mut self, event: &Event, seq: u64) {
        let Some(rt) = self.lua.as_mut() else {
            return;
        };
        // A handler's failure or note goes to no handler: one that fails must not feed
        // another.
        if matches!(event.what, EventKind::Handler | EventKind::Note)
            || !rt.handlers.wants_event(event)
        {
            return;
        }
        let mut event = event.clone();
        event.seq = seq;
        rt.push(Pending::Event(event));
    }

    /// Queues captured lines of `service` for the handlers that want them.
    pub(super) fn offer_lines_to_handlers(&mut self, service: &str, lines: &[LogLine]) {
        let Some(rt) = self.lua.as_mut() else {
            return;
        };
        if !rt.handlers.wants_logs() {
            return;
        }
        for line in lines {
            if rt.handlers.wants_log(service, line) {
                rt.push(Pending::Log(service.to_string(), line.clone()));
            }
        }
    }

    /// Runs what waits for the handlers, within the turn's budget.
    pub(super) fn run_handlers(&mut self) {
        let mut runs = 0;
        while runs < MAX_HANDLER_RUNS_PER_TURN {
            let Some(mut rt) = self.lua.take() else {
                return;
            };
            if rt.dropped > 0 {
                warn!(
                    "handlers: {} events and lines dropped: more than {MAX_HANDLER_QUEUE} waited",
                    rt.dropped
                );
                rt.dropped = 0;
            }
            let Some(item) = rt.queue.pop_front() else {
                self.lua = Some(rt);
                return;
            };
            let outcomes = match &item {
                Pending::Event(e) => rt.handlers.run_event(e, &*self),
                Pending::Log(service, line) => rt.handlers.run_log(service, line, &*self),
            };
            runs += outcomes.len().max(1);
            self.lua = Some(rt);
            self.handler_outcomes(outcomes);
        }
    }

    /// An `every` handler's timer fired: it runs, and its timer is armed again.
    pub(super) fn handler_timer(&mut self, handler: usize) {
        let Some(mut rt) = self.lua.take() else {
            return;
        };
        let period = rt
            .handlers
            .timers()
            .into_iter()
            .find(|&(i, _)| i == handler)
            .map(|(_, p)| p);
        if let Some(period) = period {
            let key = self
                .timers
                .arm(Instant::now() + period, TimerEvent::Handler(handler));
            if let Some(slot) = rt.timers.iter_mut().find(|(i, _)| *i == handler) {
                slot.1 = key;
            }
        }
        let outcome = rt.handlers.run_timer(handler, now_ms(), &*self);
        self.lua = Some(rt);
        self.handler_outcomes(vec![outcome]);
    }

    /// The inotify fd is readable: the watched files that changed have their handlers run,
    /// once per file and read, with the last change read.
    pub(super) fn on_watch(&mut self) {
        loop {
            let Some(mut rt) = self.lua.take() else {
                return;
            };
            let read = match rt.inotify.as_ref().map(Inotify::read_events) {
                Some(Ok(events)) => events,
                Some(Err(nix::errno::Errno::EAGAIN)) | None => {
                    self.lua = Some(rt);
                    return;
                }
                Some(Err(nix::errno::Errno::EINTR)) => {
                    self.lua = Some(rt);
                    continue;
                }
                Some(Err(e)) => {
                    warn!("watch: read: {e}");
                    self.lua = Some(rt);
                    return;
                }
            };
            let mut changed: Vec<(usize, Change)> = Vec::new();
            let mut overflow = false;
            for ev in read {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    overflow = true;
                    continue;
                }
                let Some(files) = rt.watches.get(&ev.wd) else {
                    continue;
                };
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    warn!("watch: a watched directory is gone: its files are no longer watched");
                    rt.watches.remove(&ev.wd);
                    continue;
                }
                let change = if ev
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                {
                    Change::Delete
                } else if ev
                    .mask
                    .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                {
                    Change::Create
                } else {
                    Change::Write
                };
                for (name, i) in files {
                    if ev.name.as_ref() != Some(name) {
                        continue;
                    }
                    match changed.iter_mut().find(|(h, _)| h == i) {
                        // A file created and written in one read was created.
                        Some(slot) if !(slot.1 == Change::Create && change == Change::Write) => {
                            slot.1 = change
                        }
                        Some(_) => {}
                        None => changed.push((*i, change)),
                    }
                }
            }
            if overflow {
                // The kernel's queue was full: changes were lost, of any watched file. Each
                // handler not run by this read runs, told what the file is now.
                warn!("watch: inotify's queue overflowed: every watched file may have changed");
                let watched: Vec<usize> = rt.watches.values().flatten().map(|f| f.1).collect();
                for (i, path) in rt.handlers.watches() {
                    if watched.contains(&i) && changed.iter().all(|(h, _)| *h != i) {
                        let now = if path.exists() {
                            Change::Write
                        } else {
                            Change::Delete
                        };
                        changed.push((i, now));
                    }
                }
            }
            let now = now_ms();
            let outcomes: Vec<Outcome> = changed
                .into_iter()
                .map(|(i, change)| {
                    debug!("watch: handler {i}: {change:?}");
                    rt.handlers.run_watch(i, change, now, &*self)
                })
                .collect();
            self.lua = Some(rt);
            self.handler_outcomes(outcomes);
        }
    }

    /// Reports the failures and carries out the actions of handler runs.
    fn handler_outcomes(&mut self, outcomes: Vec<Outcome>) {
        for o in outcomes {
            let Some((subject, cause)) = self
                .lua
                .as_ref()
                .map(|rt| (rt.handlers.subject(o.handler), rt.handlers.cause(o.handler)))
            else {
                return;
            };
            if let Some(error) = o.error {
                warn!("Lua handler {}: {error}", String::from_utf8_lossy(&subject));
                self.emit(handler_event(
                    subject.clone(),
                    EventKind::Handler,
                    error,
                    cause,
                ));
            }
            for action in o.actions {
                self.handler_action(action, &subject, cause);
            }
        }
    }

    /// Carries out one action of a handler, on its behalf; one refused is a `handler` event.
    fn handler_action(&mut self, action: Action, subject: &[u8], by: Cause) {
        let now = now_ms();
        let result = match &action {
            Action::Start(name) => self.services.start(name, None, by, now),
            Action::Stop(name) => self.services.stop(name, None, None, by, now),
            Action::Restart(name) => self.services.restart(name, None, by, now),
            Action::Signal { service, signal } => {
                self.services.signal(service, *signal, false, by, now)
            }
            Action::Run(argv) if self.shutdown.is_some() => {
                let _ = argv;
                Err("shutting down".to_string())
            }
            Action::Run(argv) => {
                let cmd = Command {
                    argv: argv.clone(),
                    env: Vec::new(),
                };
                let why = format!("run by the handler {}", String::from_utf8_lossy(subject));
                self.spawn(Kind::Daemon, &cmd, &[], by, why).map(|_| ())
            }
            Action::Log(message) => {
                info!("{}: {message}", String::from_utf8_lossy(subject));
                let note = handler_event(subject.to_vec(), EventKind::Note, message.clone(), by);
                self.emit(note);
                Ok(())
            }
        };
        if let Err(why) = result {
            let what = match &action {
                Action::Start(n) => format!("archon.start({n})"),
                Action::Stop(n) => format!("archon.stop({n})"),
                Action::Restart(n) => format!("archon.restart({n})"),
                Action::Signal { service, .. } => format!("archon.signal({service})"),
                Action::Run(argv) => format!(
                    "archon.run({})",
                    String::from_utf8_lossy(argv.first().map_or(&[][..], |a| a.as_slice()))
                ),
                Action::Log(_) => "archon.log".to_string(),
            };
            let reason = format!("{what}: {why}");
            warn!("Lua handler {}: {reason}", String::from_utf8_lossy(subject));
            self.emit(handler_event(
                subject.to_vec(),
                EventKind::Handler,
                reason,
                by,
            ));
        }
        self.run_actions();
    }
}

impl LuaRt {
    fn push(&mut self, item: Pending) {
        if self.queue.len() >= MAX_HANDLER_QUEUE {
            self.dropped += 1;
            return;
        }
        self.queue.push_back(item);
    }
}
