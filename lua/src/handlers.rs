//! Handlers: the functions a configuration hands to `on`, `every` and `watch`, and the state
//! they run in after the file has been evaluated.
//!
//! ```lua
//! on("exit|fail", "web*", function(ev) archon.log(ev.subject .. " " .. ev.reason) end)
//! on("log", {service = "db", match = "FATAL"}, function(ev) archon.restart("db") end)
//! every(60, function() archon.run{"/usr/local/bin/rotate"} end)
//! watch("/etc/app.conf", function(ev) archon.signal("app", "HUP") end)
//! ```
//!
//! The supervisor holds a [`Handlers`] and no Lua type: it asks which handlers want an event
//! ([`Handlers::wants_event`], decided in Rust, no Lua runs), hands it over as plain values
//! (an [`archon_proto::Event`], a [`LogLine`], a timer's or a watch's index), and gets back,
//! per handler run, an [`Outcome`]: the [`Action`]s it asked for, or why it failed. A handler
//! never calls into the supervisor: `archon.start` and the rest only queue an action, carried
//! out by the loop once the handler has returned (none of them if it failed), so a handler
//! cannot re-enter the loop or block it. `archon.status` reads through the [`Host`] the caller
//! lends for the run.
//!
//! Each run has its budget: [`MAX_HANDLER_INSTRUCTIONS`](crate::MAX_HANDLER_INSTRUCTIONS) and
//! [`MAX_HANDLER_TIME`](crate::MAX_HANDLER_TIME), with the hook and the wrapped `pcall` of the
//! sandbox; the state as a whole may grow by
//! [`HANDLER_HEAP_BYTES`](crate::HANDLER_HEAP_BYTES) past what the file left.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use archon_proto::event::{check_pattern, glob_match};
use archon_proto::log::{level_name, parse_level};
use archon_proto::{Cause, Event, KindSet, LogLine, ServiceRow};
use mlua::{Function, Lua, MultiValue, Table, Value};

use crate::sandbox::{self, Phase, Shared, busy, current_line};
use crate::value::{describe, duration};
use crate::{
    HANDLER_HEAP_BYTES, HANDLER_RUN_BURST, HANDLER_RUNS_PER_SECOND, MAX_ACTIONS,
    MAX_HANDLER_INSTRUCTIONS, MAX_HANDLER_TIME, MAX_HANDLERS, MIN_EVERY,
};

/// What a handler asked archon to do, carried out after it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `archon.start(name)`: as `Start,<name>`.
    Start(String),
    /// `archon.stop(name)`: as `Stop,<name>`.
    Stop(String),
    /// `archon.restart(name)`: as `Restart,<name>`.
    Restart(String),
    /// `archon.signal(name, sig)`: as `Signal,<name>,<sig>`.
    Signal {
        /// The service.
        service: String,
        /// The signal's number.
        signal: i32,
    },
    /// `archon.run(argv)`: the command, started as a daemon, not waited for.
    Run(Vec<Vec<u8>>),
    /// `archon.log(message)`: a line in archon's log and a `note` event.
    Log(String),
}

/// How one run of one handler went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The handler, as [`Handlers::subject`] and [`Handlers::cause`] name it.
    pub handler: usize,
    /// What it asked for, in order; empty when it failed.
    pub actions: Vec<Action>,
    /// Why it failed: an error, a budget spent (the message says which, with the line).
    pub error: Option<String>,
}

/// What a handler may read of the supervisor while it runs.
pub trait Host {
    /// The `Status` row of a service or task, if there is one by that name.
    fn status(&self, name: &str) -> Option<ServiceRow>;
}

/// What a file change was, as a watch handler's `ev.change` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Written and closed, or its attributes changed.
    Write,
    /// Created (or moved into place).
    Create,
    /// Deleted (or moved away).
    Delete,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Write => "write",
            Change::Create => "create",
            Change::Delete => "delete",
        }
    }
}

/// What a handler is for.
#[derive(Debug, Clone)]
pub(crate) enum On {
    /// Events of these kinds whose subject matches the glob (empty: any).
    Event { kinds: KindSet, subject: Vec<u8> },
    /// Captured lines of the services the glob matches, at `level` or more severe, that hold
    /// `contains` (empty: any).
    Log {
        service: Vec<u8>,
        contains: Vec<u8>,
        level: u8,
    },
    /// A timer.
    Every(Duration),
    /// A file.
    Watch(PathBuf),
}

/// One `on`, `every` or `watch` of the file.
pub(crate) struct Registration {
    on: On,
    line: u32,
    func: Function,
    runs: RunBudget,
}

/// The runs a handler has left: [`HANDLER_RUN_BURST`] at most, given back at
/// [`HANDLER_RUNS_PER_SECOND`] (a token bucket).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunBudget {
    left: u32,
    /// When the last run was given back.
    since: Option<Instant>,
    /// Runs skipped since the last one allowed.
    skipped: u64,
}

/// Whether a handler may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allow {
    /// It may.
    Run,
    /// It may not, and this is the first run skipped since it last ran: said once.
    SkipFirst,
    /// It may not, and was told already.
    Skip,
}

impl RunBudget {
    pub(crate) fn new() -> RunBudget {
        RunBudget {
            left: HANDLER_RUN_BURST,
            since: None,
            skipped: 0,
        }
    }

    /// Takes one run at `now`, if there is one left.
    pub(crate) fn take(&mut self, now: Instant) -> Allow {
        let since = *self.since.get_or_insert(now);
        let per_run = Duration::from_secs(1) / HANDLER_RUNS_PER_SECOND;
        let back = now.saturating_duration_since(since).as_nanos() / per_run.as_nanos();
        if back > 0 {
            let back = u32::try_from(back).unwrap_or(u32::MAX);
            self.left = self.left.saturating_add(back).min(HANDLER_RUN_BURST);
            // What is left of a run's time counts toward the next one.
            self.since = Some(since + per_run * back);
            if self.left == HANDLER_RUN_BURST {
                self.since = Some(now);
            }
        }
        if self.left > 0 {
            self.left -= 1;
            self.skipped = 0;
            return Allow::Run;
        }
        self.skipped += 1;
        if self.skipped == 1 {
            Allow::SkipFirst
        } else {
            Allow::Skip
        }
    }
}

/// The `handler` event's reason when a handler's runs begin to be skipped.
pub(crate) fn too_often_message() -> String {
    format!(
        "handler runs too often (more than {HANDLER_RUN_BURST} runs at once, then \
         {HANDLER_RUNS_PER_SECOND} a second): its runs are skipped until it slows down \
         (handlers that feed each other?)"
    )
}

/// The handlers of a configuration and the Lua state they run in.
pub struct Handlers {
    // Dropped before the state they live in.
    regs: Vec<Registration>,
    archon: Table,
    state: Shared,
    lua: Lua,
    /// The file as subjects name it.
    file: String,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("file", &self.file)
            .field("handlers", &self.regs.len())
            .finish()
    }
}

/// The message of a handler's memory error.
pub(crate) fn out_of_memory_message() -> String {
    format!(
        "handler uses more memory than the {} MiB the handlers' state may grow by",
        HANDLER_HEAP_BYTES >> 20
    )
}

impl Handlers {
    /// Keeps `lua` for `regs`: its garbage collected, its memory limit set to what it holds
    /// now plus [`HANDLER_HEAP_BYTES`].
    pub(crate) fn new(
        lua: Lua,
        state: Shared,
        regs: Vec<Registration>,
        shown: String,
    ) -> mlua::Result<Handlers> {
        lua.gc_collect()?;
        lua.gc_collect()?;
        lua.set_memory_limit(lua.used_memory().saturating_add(HANDLER_HEAP_BYTES))?;
        let archon: Table = lua.globals().raw_get("archon")?;
        // The file's last component: a subject is a name, and a name holds no `/`.
        let base = shown.rsplit('/').next().unwrap_or_default();
        let fits = |s: &str| archon_proto::name::check(format!("{s}:1").as_bytes()).is_ok();
        let file = if fits(base) {
            base.to_string()
        } else {
            "config".to_string()
        };
        Ok(Handlers {
            regs,
            archon,
            state,
            lua,
            file,
        })
    }

    /// How many handlers there are.
    pub fn len(&self) -> usize {
        self.regs.len()
    }

    /// True when there is none (never for a value [`crate::load`] returns).
    pub fn is_empty(&self) -> bool {
        self.regs.is_empty()
    }

    /// The subject of a handler's `handler` and `note` events: `<file>:<line>`.
    pub fn subject(&self, handler: usize) -> Vec<u8> {
        let line = self.regs.get(handler).map_or(0, |r| r.line);
        format!("{}:{line}", self.file).into_bytes()
    }

    /// Who the actions of a handler are done for.
    pub fn cause(&self, handler: usize) -> Cause {
        Cause::Lua {
            line: self.regs.get(handler).map_or(0, |r| r.line),
        }
    }

    /// The Lua heap the state uses, in bytes.
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// The `every` handlers: index and period.
    pub fn timers(&self) -> Vec<(usize, Duration)> {
        self.regs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.on {
                On::Every(d) => Some((i, d)),
                _ => None,
            })
            .collect()
    }

    /// The `watch` handlers: index and path.
    pub fn watches(&self) -> Vec<(usize, &Path)> {
        self.regs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.on {
                On::Watch(p) => Some((i, p.as_path())),
                _ => None,
            })
            .collect()
    }

    /// The handlers an event triggers. A handler is not run for an event its own actions
    /// caused, so that one that restarts what it watches does not feed itself.
    fn for_event<'a>(&'a self, e: &'a Event) -> impl Iterator<Item = usize> + 'a {
        let own = match e.cause {
            Cause::Lua { line } => Some(line),
            _ => None,
        };
        self.regs.iter().enumerate().filter_map(move |(i, r)| {
            let On::Event { kinds, subject } = &r.on else {
                return None;
            };
            let hit = kinds.matches(e.what, e.kind)
                && (subject.is_empty() || glob_match(subject, &e.subject))
                && own != Some(r.line);
            hit.then_some(i)
        })
    }

    /// Whether an event triggers any handler: decided without running Lua.
    pub fn wants_event(&self, e: &Event) -> bool {
        self.for_event(e).next().is_some()
    }

    /// Whether any handler looks at captured lines.
    pub fn wants_logs(&self) -> bool {
        self.regs.iter().any(|r| matches!(r.on, On::Log { .. }))
    }

    fn for_log<'a>(
        &'a self,
        service: &'a str,
        line: &'a LogLine,
    ) -> impl Iterator<Item = usize> + 'a {
        self.regs.iter().enumerate().filter_map(move |(i, r)| {
            let On::Log {
                service: glob,
                contains,
                level,
            } = &r.on
            else {
                return None;
            };
            let hit = line.level <= *level
                && (glob.is_empty() || glob_match(glob, service.as_bytes()))
                && (contains.is_empty() || find(&line.text, contains));
            hit.then_some(i)
        })
    }

    /// Whether a captured line triggers any handler: decided without running Lua.
    pub fn wants_log(&self, service: &str, line: &LogLine) -> bool {
        self.for_log(service, line).next().is_some()
    }

    /// Runs the handlers an event triggers: each within its [`RunBudget`], unless a client's
    /// request caused the event.
    pub fn run_event(&mut self, e: &Event, host: &dyn Host) -> Vec<Outcome> {
        let which: Vec<usize> = self.for_event(e).collect();
        let counted = !matches!(e.cause, Cause::Client { .. });
        let now = Instant::now();
        which
            .into_iter()
            .filter_map(|i| match counted.then(|| self.take_run(i, now)) {
                Some(Err(skipped)) => skipped,
                _ => Some(self.run(i, host, |lua| event_table(lua, e))),
            })
            .collect()
    }

    /// Runs the handlers a captured line of `service` triggers, each within its
    /// [`RunBudget`].
    pub fn run_log(&mut self, service: &str, line: &LogLine, host: &dyn Host) -> Vec<Outcome> {
        let which: Vec<usize> = self.for_log(service, line).collect();
        let now = Instant::now();
        which
            .into_iter()
            .filter_map(|i| match self.take_run(i, now) {
                Err(skipped) => skipped,
                Ok(()) => Some(self.run(i, host, |lua| log_table(lua, service, line))),
            })
            .collect()
    }

    /// Takes a run of handler `i` from its budget; when none is left, the outcome to report
    /// (the first run skipped) or none (the ones after).
    fn take_run(&mut self, i: usize, now: Instant) -> Result<(), Option<Outcome>> {
        let Some(r) = self.regs.get_mut(i) else {
            return Ok(());
        };
        let (allow, line) = (r.runs.take(now), r.line);
        match allow {
            Allow::Run => Ok(()),
            Allow::Skip => Err(None),
            Allow::SkipFirst => Err(Some(Outcome {
                handler: i,
                actions: Vec::new(),
                error: Some(format!(
                    "{}:{line}: {}",
                    self.shown_source(),
                    too_often_message()
                )),
            })),
        }
    }

    /// The file as errors name it.
    fn shown_source(&self) -> String {
        let source = self
            .state
            .try_borrow()
            .map(|s| s.source().to_string())
            .unwrap_or_default();
        source.strip_prefix('=').unwrap_or(&source).to_string()
    }

    /// Runs `every` handler `handler`; `now_ms` is the time since the epoch.
    pub fn run_timer(&mut self, handler: usize, now_ms: u64, host: &dyn Host) -> Outcome {
        self.run(handler, host, |lua| {
            let t = lua.create_table()?;
            t.raw_set("kind", "every")?;
            t.raw_set("time", now_ms as f64 / 1000.0)?;
            Ok(t)
        })
    }

    /// Runs `watch` handler `handler` for a change of its file.
    pub fn run_watch(
        &mut self,
        handler: usize,
        change: Change,
        now_ms: u64,
        host: &dyn Host,
    ) -> Outcome {
        let path = match self.regs.get(handler).map(|r| &r.on) {
            Some(On::Watch(p)) => p.clone(),
            _ => PathBuf::new(),
        };
        if let Err(skipped) = self.take_run(handler, Instant::now()) {
            return skipped.unwrap_or(Outcome {
                handler,
                actions: Vec::new(),
                error: None,
            });
        }
        self.run(handler, host, |lua| {
            let t = lua.create_table()?;
            t.raw_set("kind", "watch")?;
            t.raw_set(
                "path",
                lua.create_string(path.as_os_str().as_encoded_bytes())?,
            )?;
            t.raw_set("change", change.as_str())?;
            t.raw_set("time", now_ms as f64 / 1000.0)?;
            Ok(t)
        })
    }

    /// Runs one handler with the table `arg` makes, under a fresh budget.
    fn run(
        &mut self,
        handler: usize,
        host: &dyn Host,
        arg: impl FnOnce(&Lua) -> mlua::Result<Table>,
    ) -> Outcome {
        let Some(func) = self.regs.get(handler).map(|r| r.func.clone()) else {
            return Outcome {
                handler,
                actions: Vec::new(),
                error: Some("no such handler".to_string()),
            };
        };
        let source = match self.state.try_borrow_mut() {
            Ok(mut s) => {
                s.phase = Phase::Handling;
                s.steps = 0;
                s.last_line = None;
                s.budget = MAX_HANDLER_INSTRUCTIONS;
                s.deadline = sandbox::cpu_time().saturating_add(MAX_HANDLER_TIME);
                s.take_fatal();
                s.actions.clear();
                s.source().to_string()
            }
            Err(_) => {
                return Outcome {
                    handler,
                    actions: Vec::new(),
                    error: Some(busy().to_string()),
                };
            }
        };
        let archon = self.archon.clone();
        // A last guard, as for the evaluation: a handler must never take archon down.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.lua.scope(|scope| {
                let status = scope.create_function(|lua, name: Value| {
                    let Value::String(name) = name else {
                        return Err(mlua::Error::RuntimeError(format!(
                            "archon.status takes a service's name, got {}",
                            describe(&name)
                        )));
                    };
                    match host.status(&name.to_string_lossy()) {
                        Some(row) => Ok(Value::Table(status_table(lua, &row)?)),
                        None => Ok(Value::Nil),
                    }
                })?;
                archon.raw_set("status", status)?;
                let ev = arg(&self.lua)?;
                func.call::<()>(ev)
            })
        }));
        let _ = archon.raw_set("status", Value::Nil);
        let (fatal, actions, last_line) = match self.state.try_borrow_mut() {
            Ok(mut s) => (
                s.take_fatal(),
                std::mem::take(&mut s.actions),
                s.last_line.or(self.regs.get(handler).map(|r| r.line)),
            ),
            Err(_) => (Some((None, busy().to_string())), Vec::new(), None),
        };
        let shown = source.strip_prefix('=').unwrap_or(&source);
        let error = match (fatal, run) {
            (Some(failure), _) => Some(failure),
            (None, Ok(Ok(()))) => None,
            (None, Ok(Err(e))) => Some(sandbox::lua_failure(&e, shown, &out_of_memory_message())),
            (None, Err(_)) => Some((None, "internal error in a handler".to_string())),
        };
        let error = error.map(|(line, message)| match line.or(last_line) {
            Some(line) => format!("{shown}:{line}: {message}"),
            None => message,
        });
        if error.is_some() {
            // What a failed run left (a memory bomb's garbage) goes now, not at some later
            // allocation.
            let _ = self.lua.gc_collect();
        }
        Outcome {
            handler,
            actions: if error.is_some() { Vec::new() } else { actions },
            error,
        }
    }
}

/// Whether `needle` occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn event_table(lua: &Lua, e: &Event) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 14)?;
    t.raw_set("kind", e.what.as_str())?;
    t.raw_set("subject", lua.create_string(&e.subject)?)?;
    t.raw_set("subject_kind", e.kind.as_str())?;
    if let Some(s) = e.old {
        t.raw_set("old", s.as_str())?;
    }
    if let Some(s) = e.new {
        t.raw_set("new", s.as_str())?;
    }
    if let Some(pid) = e.pid {
        t.raw_set("pid", pid)?;
    }
    match e.status {
        Some(archon_proto::Status::Exited(code)) => t.raw_set("code", code)?,
        Some(archon_proto::Status::Signaled(sig)) => t.raw_set(
            "signal",
            archon_proto::signal::name(sig).unwrap_or_else(|| sig.to_string()),
        )?,
        _ => {}
    }
    t.raw_set("reason", lua.create_string(&e.reason)?)?;
    t.raw_set("cause", e.cause.to_string())?;
    t.raw_set("time", e.time_ms as f64 / 1000.0)?;
    t.raw_set("seq", e.seq)?;
    Ok(t)
}

fn log_table(lua: &Lua, service: &str, line: &LogLine) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 6)?;
    t.raw_set("kind", "log")?;
    t.raw_set("service", service)?;
    t.raw_set("line", lua.create_string(&line.text)?)?;
    t.raw_set("stream", line.stream.as_str())?;
    t.raw_set("level", level_name(line.level))?;
    t.raw_set("time", line.time_ms as f64 / 1000.0)?;
    Ok(t)
}

fn status_table(lua: &Lua, row: &ServiceRow) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, 11)?;
    t.raw_set("name", lua.create_string(&row.name)?)?;
    t.raw_set("kind", row.kind.as_str())?;
    t.raw_set("state", row.state.as_str())?;
    if let Some(pid) = row.pid {
        t.raw_set("pid", pid)?;
    }
    t.raw_set("since", row.since_ms as f64 / 1000.0)?;
    t.raw_set("restarts", row.restarts)?;
    if let Some(last) = row.last {
        t.raw_set("last", lua.create_string(last.to_field())?)?;
    }
    if let Some(ready) = row.ready {
        t.raw_set("ready", ready)?;
    }
    if let Some(h) = row.health {
        t.raw_set("health", h.as_str())?;
    }
    t.raw_set("reason", lua.create_string(&row.reason)?)?;
    t.raw_set("sockets", lua.create_string(&row.sockets)?)?;
    Ok(t)
}

fn refuse(message: String) -> mlua::Error {
    mlua::Error::RuntimeError(message)
}

/// Defines `on`, `every`, `watch` and the `archon` table in a fresh state.
pub(crate) fn install(lua: &Lua, state: &Shared) -> mlua::Result<()> {
    let g = lua.globals();
    let st = state.clone();
    let on = lua.create_function(move |lua, args: MultiValue| {
        let mut args = args.into_iter();
        let kind = args.next().unwrap_or(Value::Nil);
        let (pattern, func) = match (args.next(), args.next(), args.next()) {
            (Some(Value::Function(f)), None, None) => (Value::Nil, f),
            (Some(p), Some(Value::Function(f)), None) => (p, f),
            _ => {
                return Err(refuse(
                    "on takes an event kind, a pattern and a function: \
                     on(\"exit\", \"web*\", function(ev) ... end)"
                        .to_string(),
                ));
            }
        };
        let Value::String(kind) = kind else {
            return Err(refuse(format!(
                "on: the event kind must be a string, got {}",
                describe(&kind)
            )));
        };
        let kind = kind.as_bytes().to_vec();
        let on = if kind == b"log" {
            log_pattern(&pattern)?
        } else {
            let kinds = KindSet::from_field(&kind).map_err(|e| refuse(format!("on: {e}")))?;
            let subject = match &pattern {
                Value::Nil => Vec::new(),
                Value::String(s) => s.as_bytes().to_vec(),
                other => {
                    return Err(refuse(format!(
                        "on: the subject pattern must be a string, got {}",
                        describe(other)
                    )));
                }
            };
            check_pattern(&subject).map_err(|e| refuse(format!("on: bad subject pattern: {e}")))?;
            On::Event { kinds, subject }
        };
        register(lua, &st, on, func)
    })?;
    g.raw_set("on", on)?;

    let st = state.clone();
    let every = lua.create_function(move |lua, (period, func): (Value, Value)| {
        let ms = duration(&period, "every: the period").map_err(refuse)?;
        let period = Duration::from_millis(ms);
        if period < MIN_EVERY {
            return Err(refuse(format!(
                "every: the period must be at least {} ms, got {ms} ms",
                MIN_EVERY.as_millis()
            )));
        }
        let Value::Function(func) = func else {
            return Err(refuse(format!(
                "every takes a period and a function, got {}",
                describe(&func)
            )));
        };
        register(lua, &st, On::Every(period), func)
    })?;
    g.raw_set("every", every)?;

    let st = state.clone();
    let watch = lua.create_function(move |lua, (path, func): (Value, Value)| {
        let Value::String(path) = path else {
            return Err(refuse(format!(
                "watch takes a file's path and a function, got {}",
                describe(&path)
            )));
        };
        let bytes = path.as_bytes().to_vec();
        // A path is bytes: one that is not UTF-8 names its file as it is.
        let path =
            PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes));
        if !path.is_absolute() || path.file_name().is_none() || bytes.contains(&0) {
            return Err(refuse(format!(
                "watch: the path must be an absolute path to a file, got {}",
                crate::value::quote(&bytes)
            )));
        }
        let Value::Function(func) = func else {
            return Err(refuse(format!(
                "watch takes a file's path and a function, got {}",
                describe(&func)
            )));
        };
        register(lua, &st, On::Watch(path), func)
    })?;
    g.raw_set("watch", watch)?;

    let archon = lua.create_table()?;
    for name in ["start", "stop", "restart"] {
        let st = state.clone();
        let f = lua.create_function(move |_, service: Value| {
            let service = service_name(name, &service)?;
            queue(
                &st,
                match name {
                    "start" => Action::Start(service),
                    "stop" => Action::Stop(service),
                    _ => Action::Restart(service),
                },
            )
        })?;
        archon.raw_set(name, f)?;
    }
    let st = state.clone();
    let signal = lua.create_function(move |_, (service, sig): (Value, Value)| {
        let service = service_name("signal", &service)?;
        let signal = match &sig {
            Value::Integer(n) => i32::try_from(*n)
                .ok()
                .and_then(|n| archon_proto::signal::parse(n.to_string().as_bytes())),
            Value::String(s) => archon_proto::signal::parse(&s.as_bytes()),
            _ => None,
        }
        .ok_or_else(|| {
            refuse(format!(
                "archon.signal: {} is no signal (a name such as \"HUP\", or a number)",
                describe(&sig)
            ))
        })?;
        queue(&st, Action::Signal { service, signal })
    })?;
    archon.raw_set("signal", signal)?;
    let st = state.clone();
    let run = lua.create_function(move |_, argv: Value| {
        let argv = match &argv {
            Value::String(s) => vec![b"/bin/sh".to_vec(), b"-c".to_vec(), s.as_bytes().to_vec()],
            Value::Table(t) => {
                let mut out = Vec::new();
                for v in t.sequence_values::<Value>() {
                    match v? {
                        Value::String(s) => out.push(s.as_bytes().to_vec()),
                        Value::Integer(i) => out.push(i.to_string().into_bytes()),
                        other => {
                            return Err(refuse(format!(
                                "archon.run: argv must be a list of strings, holds {}",
                                describe(&other)
                            )));
                        }
                    }
                }
                out
            }
            other => {
                return Err(refuse(format!(
                    "archon.run takes a list of strings (argv) or a shell command, got {}",
                    describe(other)
                )));
            }
        };
        if argv.is_empty() || argv[0].is_empty() || argv.iter().any(|a| a.contains(&0)) {
            return Err(refuse(
                "archon.run: argv needs a program, and no NUL byte".to_string(),
            ));
        }
        queue(&st, Action::Run(argv))
    })?;
    archon.raw_set("run", run)?;
    let st = state.clone();
    let log = lua.create_function(move |lua, message: Value| {
        let text = crate::value::text(lua, &message, "archon.log: the message", "a string")
            .map_err(refuse)?;
        queue(
            &st,
            Action::Log(String::from_utf8_lossy(&text).into_owned()),
        )
    })?;
    archon.raw_set("log", log)?;
    let env = lua.create_function(|lua, name: Value| {
        let Value::String(name) = name else {
            return Err(refuse(format!(
                "archon.env takes a variable's name, got {}",
                describe(&name)
            )));
        };
        let name = std::ffi::OsString::from(name.to_string_lossy());
        match std::env::var_os(name) {
            Some(v) => Ok(Value::String(lua.create_string(v.as_encoded_bytes())?)),
            None => Ok(Value::Nil),
        }
    })?;
    archon.raw_set("env", env)?;
    g.raw_set("archon", archon)?;
    Ok(())
}

/// `on("log", ...)`'s pattern: a service glob, or `{service = glob, match = text, level =
/// name}`.
fn log_pattern(pattern: &Value) -> mlua::Result<On> {
    let mut on = On::Log {
        service: Vec::new(),
        contains: Vec::new(),
        level: archon_proto::log::LEVEL_DEBUG,
    };
    let On::Log {
        service,
        contains,
        level,
    } = &mut on
    else {
        return Err(busy());
    };
    match pattern {
        Value::Nil => {}
        Value::String(s) => *service = s.as_bytes().to_vec(),
        Value::Table(t) => {
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let key = match &k {
                    Value::String(s) => s.to_string_lossy(),
                    other => {
                        return Err(refuse(format!(
                            "on(\"log\"): the pattern's keys are service, match and level, got {}",
                            describe(other)
                        )));
                    }
                };
                let Value::String(v) = v else {
                    return Err(refuse(format!(
                        "on(\"log\"): {key} must be a string, got {}",
                        describe(&v)
                    )));
                };
                match key.as_str() {
                    "service" => *service = v.as_bytes().to_vec(),
                    "match" => *contains = v.as_bytes().to_vec(),
                    "level" => {
                        *level = parse_level(&v.as_bytes()).ok_or_else(|| {
                            refuse(format!(
                                "on(\"log\"): level {} is no level (emerg ... debug)",
                                crate::value::quote(&v.as_bytes())
                            ))
                        })?
                    }
                    other => {
                        return Err(refuse(format!(
                            "on(\"log\"): unknown key {other} (service, match, level)"
                        )));
                    }
                }
            }
        }
        other => {
            return Err(refuse(format!(
                "on(\"log\"): the pattern must be a service glob or a table, got {}",
                describe(other)
            )));
        }
    }
    check_pattern(service).map_err(|e| refuse(format!("on(\"log\"): bad service pattern: {e}")))?;
    Ok(on)
}

fn service_name(call: &str, v: &Value) -> mlua::Result<String> {
    match v {
        Value::String(s) if archon_proto::name::check(&s.as_bytes()).is_ok() => {
            Ok(s.to_string_lossy())
        }
        other => Err(refuse(format!(
            "archon.{call} takes a service's name, got {}",
            describe(other)
        ))),
    }
}

/// Queues an action of the running handler.
fn queue(st: &Rc<RefCell<sandbox::State>>, action: Action) -> mlua::Result<()> {
    let mut s = st.try_borrow_mut().map_err(|_| busy())?;
    if s.phase != Phase::Handling {
        return Err(refuse(
            "archon's actions are for handlers (on, every, watch), not for the file itself"
                .to_string(),
        ));
    }
    if s.actions.len() >= MAX_ACTIONS {
        return Err(refuse(format!(
            "a handler may ask for at most {MAX_ACTIONS} actions per run"
        )));
    }
    s.actions.push(action);
    Ok(())
}

/// Records a handler declared by the file.
fn register(lua: &Lua, st: &Shared, on: On, func: Function) -> mlua::Result<()> {
    let mut s = st.try_borrow_mut().map_err(|_| busy())?;
    if s.phase != Phase::Evaluating {
        return Err(refuse(
            "handlers are declared by the file, not by a handler".to_string(),
        ));
    }
    if s.handlers.len() >= MAX_HANDLERS {
        return Err(refuse(format!("too many handlers: at most {MAX_HANDLERS}")));
    }
    let line = current_line(lua, s.source()).unwrap_or(0);
    s.handlers.push(Registration {
        on,
        line,
        func,
        runs: RunBudget::new(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{EventKind, LogStream, ServiceKind, ServiceState, Status};

    type Res = Result<(), String>;

    fn load(src: &str) -> Result<Handlers, String> {
        load_bytes(src.as_bytes())
    }

    fn load_bytes(src: &[u8]) -> Result<Handlers, String> {
        crate::load_source("h.lua", src)
            .map_err(|e| e.to_string())?
            .handlers
            .ok_or_else(|| "no handlers".to_string())
    }

    struct NoHost;
    impl Host for NoHost {
        fn status(&self, _: &str) -> Option<ServiceRow> {
            None
        }
    }

    fn exit(subject: &str, cause: Cause) -> Event {
        Event {
            seq: 7,
            time_ms: 1_500,
            subject: subject.as_bytes().to_vec(),
            kind: ServiceKind::Service,
            what: EventKind::Exit,
            old: Some(ServiceState::Running),
            new: Some(ServiceState::Backoff),
            pid: Some(42),
            status: Some(Status::Exited(3)),
            reason: b"exited with code 3".to_vec(),
            cause,
        }
    }

    fn one(outcomes: Vec<Outcome>) -> Result<Outcome, String> {
        let mut it = outcomes.into_iter();
        match (it.next(), it.next()) {
            (Some(o), None) => Ok(o),
            other => Err(format!("expected one outcome, got {other:?}")),
        }
    }

    #[test]
    fn a_file_without_handlers_keeps_no_state() -> Res {
        let l = crate::load_source("h.lua", br#"service "a" { argv = {"/bin/true"} }"#)
            .map_err(|e| e.to_string())?;
        assert!(l.handlers.is_none());
        Ok(())
    }

    #[test]
    fn exit_handlers_match_kind_and_glob_and_queue_actions() -> Res {
        let mut h = load(
            "\non(\"exit|fail\", \"web*\", function(ev)\n\
               archon.restart(ev.subject)\n\
               archon.log(ev.kind .. ' ' .. ev.subject .. ' ' .. ev.code .. ' ' .. ev.pid .. ' ' .. ev.new .. ' ' .. ev.cause)\n\
             end)",
        )?;
        assert_eq!(h.len(), 1);
        assert_eq!(h.subject(0), b"h.lua:2");
        assert_eq!(h.cause(0), Cause::Lua { line: 2 });
        assert!(!h.wants_event(&exit("db", Cause::Archon)));
        let mut spawn = exit("web1", Cause::Archon);
        spawn.what = EventKind::Spawn;
        assert!(!h.wants_event(&spawn));
        let e = exit("web1", Cause::Archon);
        assert!(h.wants_event(&e));
        let o = one(h.run_event(&e, &NoHost))?;
        assert_eq!(o.error, None);
        assert_eq!(
            o.actions,
            [
                Action::Restart("web1".into()),
                Action::Log("exit web1 3 42 backoff archon".into())
            ]
        );
        // Not for what its own actions caused; for what another handler's did.
        assert!(!h.wants_event(&exit("web1", Cause::Lua { line: 2 })));
        assert!(h.wants_event(&exit("web1", Cause::Lua { line: 9 })));
        Ok(())
    }

    #[test]
    fn log_handlers_match_service_text_and_level() -> Res {
        let mut h = load(
            r#"on("log", {service = "db*", match = "FATAL", level = "err"}, function(ev)
                 archon.log(ev.service .. ":" .. ev.line .. ":" .. ev.stream .. ":" .. ev.level)
               end)"#,
        )?;
        assert!(h.wants_logs());
        let line = |text: &str, level| LogLine {
            time_ms: 1,
            stream: LogStream::Stderr,
            level,
            text: text.as_bytes().to_vec(),
            cut: false,
        };
        assert!(h.wants_log("db1", &line("x FATAL y", 3)));
        assert!(!h.wants_log("web", &line("x FATAL y", 3)));
        assert!(
            !h.wants_log("db1", &line("x fatal y", 3)),
            "plain, case-sensitive"
        );
        assert!(
            !h.wants_log("db1", &line("x FATAL y", 6)),
            "info is below err"
        );
        let o = one(h.run_log("db1", &line("x FATAL y", 2), &NoHost))?;
        assert_eq!(o.actions, [Action::Log("db1:x FATAL y:stderr:crit".into())]);
        Ok(())
    }

    #[test]
    fn every_and_watch_are_listed() -> Res {
        let mut h = load(
            r#"every(0.5, function(ev) archon.log(ev.kind) end)
               watch("/etc/app.conf", function(ev) archon.log(ev.change .. " " .. ev.path) end)"#,
        )?;
        assert_eq!(h.timers(), [(0, Duration::from_millis(500))]);
        assert_eq!(h.watches(), [(1, Path::new("/etc/app.conf"))]);
        assert_eq!(
            h.run_timer(0, 0, &NoHost).actions,
            [Action::Log("every".into())]
        );
        assert_eq!(
            h.run_watch(1, Change::Delete, 0, &NoHost).actions,
            [Action::Log("delete /etc/app.conf".into())]
        );
        Ok(())
    }

    #[test]
    fn a_watched_path_that_is_not_utf8_is_watched_as_it_is() -> Res {
        let mut h = load_bytes(
            b"watch(\"/tmp/caf\\xe9.conf\", function(ev) archon.log(tostring(#ev.path)) end)",
        )?;
        let want =
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/tmp/caf\xe9.conf");
        assert_eq!(h.watches(), [(0, Path::new(want))]);
        assert_eq!(
            h.run_watch(0, Change::Write, 0, &NoHost).actions,
            [Action::Log("14".into())]
        );
        Ok(())
    }

    #[test]
    fn declarations_are_checked() -> Res {
        for (src, want) in [
            (
                r#"on("boom", "x", function() end)"#,
                "'boom' is no event kind",
            ),
            (
                r#"on("exit", "a/b", function() end)"#,
                "bad subject pattern",
            ),
            (r#"on("exit", "x")"#, "on takes an event kind"),
            (
                r#"on("log", {nope = "x"}, function() end)"#,
                "unknown key nope",
            ),
            (
                r#"on("log", {level = "loud"}, function() end)"#,
                "is no level",
            ),
            (r#"every(0.01, function() end)"#, "at least 100 ms"),
            (r#"watch("rel/path", function() end)"#, "absolute path"),
            (r#"archon.start("x")"#, "for handlers"),
        ] {
            match crate::load_source("h.lua", src.as_bytes()) {
                Ok(_) => return Err(format!("{src}: accepted")),
                Err(e) => assert!(e.to_string().contains(want), "{src}: {e}"),
            }
        }
        Ok(())
    }

    #[test]
    fn actions_take_their_arguments() -> Res {
        let mut h = load(
            r#"on("exit", "*", function(ev)
                 archon.start("a") archon.stop("b") archon.signal("c", "HUP")
                 archon.signal("c", 9) archon.run{"/bin/echo", "x", 1} archon.run("echo hi")
                 archon.log(archon.env("ARCHON_TEST_NO_SUCH_VAR") == nil and "nil" or "set")
               end)
               on("exit", "bad*", function(ev) archon.signal("c", "NOPE") end)"#,
        )?;
        let o = one(h.run_event(&exit("x", Cause::Archon), &NoHost))?;
        assert_eq!(o.error, None);
        assert_eq!(
            o.actions,
            [
                Action::Start("a".into()),
                Action::Stop("b".into()),
                Action::Signal {
                    service: "c".into(),
                    signal: libc::SIGHUP
                },
                Action::Signal {
                    service: "c".into(),
                    signal: 9
                },
                Action::Run(vec![b"/bin/echo".to_vec(), b"x".to_vec(), b"1".to_vec()]),
                Action::Run(vec![
                    b"/bin/sh".to_vec(),
                    b"-c".to_vec(),
                    b"echo hi".to_vec()
                ]),
                Action::Log("nil".into()),
            ]
        );
        let outs = h.run_event(&exit("bad1", Cause::Archon), &NoHost);
        assert_eq!(outs.len(), 2);
        let bad = &outs[1];
        assert!(bad.actions.is_empty(), "a failed run does nothing");
        let err = bad.error.clone().unwrap_or_default();
        assert!(
            err.contains("h.lua:6:") && err.contains("no signal"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn status_reads_the_host() -> Res {
        struct One;
        impl Host for One {
            fn status(&self, name: &str) -> Option<ServiceRow> {
                (name == "db").then(|| ServiceRow {
                    name: b"db".to_vec(),
                    kind: ServiceKind::Service,
                    state: ServiceState::Ready,
                    pid: Some(5),
                    since_ms: 0,
                    restarts: 2,
                    last: Some(Status::Signaled(9)),
                    ready: Some(true),
                    health: None,
                    rss_kib: None,
                    cpu_ms: None,
                    reason: Vec::new(),
                    sockets: b"tcp:127.0.0.1:6379".to_vec(),
                })
            }
        }
        let mut h = load(
            r#"on("exit", "*", function(ev)
                 local s = archon.status("db")
                 archon.log(s.state .. " " .. s.pid .. " " .. s.restarts .. " " .. s.last .. " " .. tostring(archon.status("x")) .. " " .. s.sockets)
               end)"#,
        )?;
        let o = one(h.run_event(&exit("x", Cause::Archon), &One))?;
        assert_eq!(
            o.actions,
            [Action::Log(
                "ready 5 2 SIGKILL nil tcp:127.0.0.1:6379".into()
            )]
        );
        Ok(())
    }

    #[test]
    fn errors_loops_and_bombs_fail_the_run_not_the_state() -> Res {
        let mut h = load(
            "n = 0\n\
             on(\"exit\", \"err\", function() error(\"boom\") end)\n\
             on(\"exit\", \"loop\", function() archon.start('x') while true do end end)\n\
             on(\"exit\", \"caught\", function() pcall(function() while true do end end) archon.start('x') end)\n\
             on(\"exit\", \"bomb\", function() local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(1000) .. i end end)\n\
             on(\"exit\", \"ok\", function() n = n + 1 archon.log(tostring(n)) end)",
        )?;
        let err = |h: &mut Handlers, s: &str| -> Result<String, String> {
            let o = one(h.run_event(&exit(s, Cause::Archon), &NoHost))?;
            assert!(o.actions.is_empty(), "{s}: {:?}", o.actions);
            o.error.ok_or_else(|| format!("{s}: no error"))
        };
        let e = err(&mut h, "err")?;
        assert!(e.starts_with("h.lua:2:") && e.contains("boom"), "{e}");
        let e = err(&mut h, "loop")?;
        assert!(e.contains("over 1000000 instructions"), "{e}");
        assert!(e.starts_with("h.lua:3:"), "{e}");
        let e = err(&mut h, "caught")?;
        assert!(
            e.contains("over 1000000 instructions"),
            "pcall does not catch it: {e}"
        );
        let e = err(&mut h, "bomb")?;
        assert!(e.contains("memory"), "{e}");
        assert!(h.used_memory() < HANDLER_HEAP_BYTES, "{}", h.used_memory());
        for i in 1..=2 {
            let o = one(h.run_event(&exit("ok", Cause::Archon), &NoHost))?;
            assert_eq!(o.error, None);
            assert_eq!(o.actions, [Action::Log(i.to_string())], "globals are kept");
        }
        Ok(())
    }

    #[test]
    fn a_run_budget_allows_a_burst_then_its_rate_and_says_once_when_it_skips() {
        let t0 = Instant::now();
        let mut b = RunBudget::new();
        for _ in 0..HANDLER_RUN_BURST {
            assert_eq!(b.take(t0), Allow::Run);
        }
        assert_eq!(b.take(t0), Allow::SkipFirst);
        assert_eq!(b.take(t0), Allow::Skip);
        let per_run = Duration::from_secs(1) / HANDLER_RUNS_PER_SECOND;
        // Half a run's time: none back yet; then a whole one: one run, and a new streak.
        assert_eq!(b.take(t0 + per_run / 2), Allow::Skip);
        let t1 = t0 + per_run + per_run / 2;
        assert_eq!(b.take(t1), Allow::Run);
        assert_eq!(b.take(t1), Allow::SkipFirst);
        // The half left over counts toward the next run.
        assert_eq!(b.take(t0 + per_run * 2), Allow::Run);
        // A long pause gives the whole burst back, not more.
        let t2 = t0 + Duration::from_secs(3600);
        for _ in 0..HANDLER_RUN_BURST {
            assert_eq!(b.take(t2), Allow::Run);
        }
        assert_eq!(b.take(t2), Allow::SkipFirst);
    }

    #[test]
    fn events_a_client_caused_are_not_counted_the_others_are() -> Res {
        let mut h = load("on(\"exit\", \"*\", function(ev) archon.log('x') end)")?;
        let client = Cause::Client { uid: 0, pid: 1 };
        for _ in 0..HANDLER_RUN_BURST + 10 {
            let o = one(h.run_event(&exit("a", client), &NoHost))?;
            assert_eq!(o.error, None);
        }
        // Runs come back as time passes: run until one is skipped.
        let mut skipped = None;
        for _ in 0..100 * HANDLER_RUN_BURST {
            let outs = h.run_event(&exit("a", Cause::Archon), &NoHost);
            if let Some(o) = outs.into_iter().find(|o| o.actions.is_empty()) {
                skipped = Some(o);
                break;
            }
        }
        let err = skipped.and_then(|o| o.error).unwrap_or_default();
        assert!(
            err.starts_with("h.lua:1: ") && err.contains("too often"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn handlers_cannot_declare() -> Res {
        let mut h = load(
            r#"on("exit", "*", function() service "x" { argv = {"/bin/true"} } end)
               on("exit", "*", function() on("exit", "*", function() end) end)"#,
        )?;
        let outs = h.run_event(&exit("x", Cause::Archon), &NoHost);
        assert!(
            outs[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("only while")
        );
        assert!(
            outs[1]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("declared by the file")
        );
        Ok(())
    }
}
