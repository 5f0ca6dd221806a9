//! The Lua state a configuration runs in: what it may call, how much it may compute and
//! allocate, and the `service` and `task` functions that collect its declarations.
//!
//! The state is made for one evaluation and dropped after it. The file sees the base library
//! (without `dofile`, `loadfile`, `print`, `warn`, `collectgarbage`), `string` (without `dump`),
//! `table`, `math`, `utf8`, and `os.time`, `os.clock`, `os.date`, `os.getenv`; no `io`, `debug`,
//! `package`, `require` or `coroutine`. Some functions are wrapped:
//! - `load` loads text only: bytecode is unchecked by Lua and can crash the interpreter;
//! - `setmetatable` refuses a `__gc` field: Lua runs finalizers with hooks off, so a loop in one
//!   would escape the instruction budget; and a `__len` field, which would let `table.insert`
//!   loop in C over a length of 2^60 without one instruction or allocation;
//! - `string.rep` of an empty string returns at once (Lua loops n times to copy nothing), and
//!   `table.move` moves at most 2^24 elements (Lua loops over the range in C);
//! - `pcall` and `xpcall` re-raise once the evaluation is doomed (budget spent, or a declaration
//!   refused), so a script cannot catch its way past archon's errors.
//!
//! Coroutines are left out because a hook is per thread: a coroutine created by Lua code runs
//! without the budget's hook.
//!
//! The file may also declare handlers (`on`, `every`, `watch`, see [`crate::handlers`]). A file
//! that declares none has its state dropped after the evaluation, as before; one that declares
//! some keeps it, with its globals, for the handlers to run in: the same library, the same
//! wrappers, a budget per call instead of one for the file.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value, VmState};

use crate::model::{Service, UnitKind};
use crate::value::{describe, quote};
use crate::{MAX_SERVICES, fields, graph, sockets};

/// How much an evaluation may use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Lua VM instructions.
    pub instructions: u64,
    /// Bytes of Lua heap.
    pub memory: usize,
    /// Bytes held by the declarations collected so far (argv, env and the rest, estimated).
    pub declared: usize,
    /// CPU time: instructions that work on long strings can each take milliseconds, so the
    /// instruction budget alone does not bound the time a file takes. CPU time rather than
    /// wall-clock time, so that a loaded machine does not refuse a file it accepts idle.
    pub time: Duration,
}

/// The instructions between two looks at the budget.
const HOOK_STEP: u32 = 1000;

/// How many stack levels are searched for the file's current line.
const MAX_LEVELS: usize = 64;

/// The longest error message kept, in bytes.
const MAX_MESSAGE: usize = 1000;

/// Where an error is (a line of the file, when known) and what it is.
pub(crate) type Failure = (Option<u32>, String);

/// The most elements `table.move` may move.
const MAX_MOVE: u32 = 1 << 24;

/// The setup run in the fresh state before the file, with the originals as arguments. The
/// wrappers keep what they call in locals: the file may replace any global.
const SETUP: &str = r##"
local stop, rawload, rawpcall, rawxpcall, rawsetmetatable = ...
local rawget, select, type, error = rawget, select, type, error
local rawrep, rawmove = string.rep, table.move
load = function(chunk, name, mode, ...)
  if select("#", ...) > 0 then return rawload(chunk, name, "t", ...) end
  return rawload(chunk, name, "t")
end
pcall = function(...) return stop(rawpcall(...)) end
xpcall = function(...) return stop(rawxpcall(...)) end
setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in archon's configuration", 2)
  end
  if type(mt) == "table" and rawget(mt, "__len") ~= nil then
    error("__len metamethods are not allowed in archon's configuration", 2)
  end
  return rawsetmetatable(t, mt)
end
string.rep = function(s, n, sep)
  if s == "" and (sep == nil or sep == "") and type(n) == "number" and n > 1 then n = 1 end
  return rawrep(s, n, sep)
end
table.move = function(a1, f, e, t, a2)
  if type(f) == "number" and type(e) == "number" and e - f >= MAX_MOVE then
    error("table.move: too many elements (at most " .. MAX_MOVE .. ")", 2)
  end
  return rawmove(a1, f, e, t, a2)
end
"##;

/// One declaration, from the call that named it to the table that completed it.
struct Slot {
    name: String,
    kind: UnitKind,
    line: u32,
    service: Option<Service>,
}

/// Whether the file is being evaluated, or its handlers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The file runs: `service`, `task`, `on`, `every`, `watch` declare; `archon.*` refuse.
    Evaluating,
    /// A handler runs: `archon.*` queue actions; declarations refuse.
    Handling,
}

/// What the evaluation has collected, shared by the functions the file calls.
pub(crate) struct State {
    /// The file as error messages name it.
    file: String,
    /// The chunk's source name as Lua holds it (`=` and the name its messages use).
    source: String,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    /// The first error that dooms the evaluation.
    fatal: Option<Failure>,
    /// Estimated bytes held by the collected declarations.
    declared: usize,
    limits: Limits,
    /// Evaluating the file, or running a handler.
    pub(crate) phase: Phase,
    /// Hook calls since the budget was last set.
    pub(crate) steps: u64,
    /// The file's line at the last hook call: where a memory error that unwound past every
    /// frame of the file (raised by an allocation outside a `pcall`) happened, near enough.
    pub(crate) last_line: Option<u32>,
    /// The instructions allowed until the budget is set again.
    pub(crate) budget: u64,
    /// The thread's CPU time past which the run is stopped.
    pub(crate) deadline: Duration,
    /// The handlers the file declared, in order.
    pub(crate) handlers: Vec<crate::handlers::Registration>,
    /// What the running handler has asked for.
    pub(crate) actions: Vec<crate::handlers::Action>,
}

pub(crate) type Shared = Rc<RefCell<State>>;

impl State {
    /// The first fatal error, taken (a handler's run starts with none).
    pub(crate) fn take_fatal(&mut self) -> Option<Failure> {
        self.fatal.take()
    }

    /// The chunk's source name as Lua holds it.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }
}

/// What an evaluation yields: the declarations, and the handlers with the state they run in
/// when the file declared any.
pub(crate) type Evaluated = (Vec<Service>, Option<crate::handlers::Handlers>);

/// Runs `source` and returns its declarations, resolved and in order, and its handlers.
pub(crate) fn evaluate(file: &str, source: &[u8], limits: Limits) -> Result<Evaluated, Failure> {
    let shown = chunk_name(file);
    let state: Shared = Rc::new(RefCell::new(State {
        file: file.to_string(),
        source: format!("={shown}"),
        slots: Vec::new(),
        by_name: HashMap::new(),
        fatal: None,
        declared: 0,
        limits,
        phase: Phase::Evaluating,
        steps: 0,
        last_line: None,
        budget: limits.instructions,
        deadline: cpu_time().saturating_add(limits.time),
        handlers: Vec::new(),
        actions: Vec::new(),
    }));
    let lua = sandbox(&state).map_err(|e| (None, format!("cannot set up Lua: {e}")))?;
    let run = lua
        .load(source)
        .set_name(format!("={shown}"))
        .set_mode(ChunkMode::Text)
        .into_function()
        .and_then(|f| f.call::<()>(()));
    if let Some(fatal) = state.borrow_mut().fatal.take() {
        return Err(fatal);
    }
    if let Err(e) = run {
        let (line, message) = lua_failure(&e, &shown, &out_of_memory_message(limits));
        let last = state.try_borrow().ok().and_then(|s| s.last_line);
        return Err((line.or(last), message));
    }
    let (slots, handlers) = {
        let mut s = state
            .try_borrow_mut()
            .map_err(|_| (None, busy().to_string()))?;
        (
            std::mem::take(&mut s.slots),
            std::mem::take(&mut s.handlers),
        )
    };
    let handlers = if handlers.is_empty() {
        // No handler: the state goes now, and archon holds no Lua at all.
        drop(lua);
        drop(state);
        None
    } else {
        let h =
            crate::handlers::Handlers::new(lua, state, handlers, shown.clone()).map_err(|e| {
                (
                    None,
                    format!("cannot keep the Lua state for the handlers: {e}"),
                )
            })?;
        Some(h)
    };
    let mut services = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot.service {
            Some(s) => services.push(s),
            None => {
                let (kind, name) = (slot.kind.as_str(), &slot.name);
                return Err((
                    at(slot.line),
                    format!(
                        "{name}: {kind} \"{name}\" has no table of fields; write {kind} \"{name}\" {{ argv = {{...}} }}"
                    ),
                ));
            }
        }
    }
    graph::resolve(&mut services).map_err(|(line, m)| (at(line), m))?;
    sockets::check_all(&services).map_err(|(line, m)| (at(line), m))?;
    Ok((services, handlers))
}

/// The name Lua's messages give the chunk: the file as named when short enough to be shown
/// whole (Lua cuts names past 59 bytes), else its last component, else `config`.
pub(crate) fn chunk_name(file: &str) -> String {
    let fits = |s: &str| !s.is_empty() && s.len() <= 48 && !s.chars().any(char::is_control);
    if fits(file) {
        return file.to_string();
    }
    match file.rsplit('/').next() {
        Some(base) if fits(base) => base.to_string(),
        _ => "config".to_string(),
    }
}

/// A fresh state with the library trimmed, the wrappers in place, `service` and `task`
/// defined, and the budgets armed.
fn sandbox(state: &Shared) -> mlua::Result<Lua> {
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    let g = lua.globals();
    for name in ["collectgarbage", "dofile", "loadfile", "print", "warn"] {
        g.raw_set(name, Value::Nil)?;
    }
    let string: mlua::Table = g.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;
    let os: mlua::Table = g.raw_get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date", "getenv"] {
        safe_os.raw_set(name, os.raw_get::<Value>(name)?)?;
    }
    g.raw_set("os", safe_os)?;

    let st = state.clone();
    let stop = lua.create_function(move |lua, args: MultiValue| {
        let mut s = st.try_borrow_mut().map_err(|_| busy())?;
        // A memory error caught by pcall would let the script retry the allocation, and each
        // failed one costs a full garbage collection: a loop of them runs for hours. Lua
        // reports every allocation failure with this one preallocated message.
        let out_of_memory = matches!(
            (args.front(), args.get(1)),
            (Some(Value::Boolean(false)), Some(v)) if crate::value::is(v, "not enough memory")
        );
        if out_of_memory && s.fatal.is_none() {
            let line = current_line(lua, &s.source);
            let message = match s.phase {
                Phase::Evaluating => out_of_memory_message(s.limits),
                Phase::Handling => crate::handlers::out_of_memory_message(),
            };
            s.fatal = Some((line, message));
        }
        match &s.fatal {
            Some((_, message)) => Err(mlua::Error::RuntimeError(message.clone())),
            None => Ok(args),
        }
    })?;
    lua.load(SETUP.replace("MAX_MOVE", &MAX_MOVE.to_string()))
        .set_name("=setup")
        .call::<()>((
            stop,
            g.raw_get::<Function>("load")?,
            g.raw_get::<Function>("pcall")?,
            g.raw_get::<Function>("xpcall")?,
            g.raw_get::<Function>("setmetatable")?,
        ))?;

    for kind in [UnitKind::Service, UnitKind::Task] {
        let st = state.clone();
        let f = lua.create_function(move |lua, args: MultiValue| declare(lua, &st, kind, args))?;
        g.raw_set(kind.as_str(), f)?;
    }
    crate::handlers::install(&lua, state)?;

    let source = state.borrow().source.clone();
    let st = state.clone();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_STEP),
        move |lua, _| {
            let mut s = st.try_borrow_mut().map_err(|_| busy())?;
            s.steps += 1;
            s.last_line = current_line(lua, &source);
            let spent = s.steps.saturating_mul(u64::from(HOOK_STEP));
            let (budget, what) = (s.budget, s.phase.what());
            if s.fatal.is_none() && spent > budget {
                let message =
                    format!("{what} did not finish: over {budget} instructions (an endless loop?)");
                s.fatal = Some((current_line(lua, &source), message));
            }
            if s.fatal.is_none() && cpu_time() > s.deadline {
                let time = match s.phase {
                    Phase::Evaluating => s.limits.time,
                    Phase::Handling => crate::MAX_HANDLER_TIME,
                };
                let message = format!(
                    "{what} did not finish in {} s of CPU time (an endless loop?)",
                    time.as_secs_f64()
                );
                s.fatal = Some((current_line(lua, &source), message));
            }
            match &s.fatal {
                Some((_, message)) => Err(mlua::Error::RuntimeError(message.clone())),
                None => Ok(VmState::Continue),
            }
        },
    )?;
    let memory = state.borrow().limits.memory;
    lua.set_memory_limit(memory)?;
    Ok(lua)
}

impl Phase {
    /// What runs, for messages.
    fn what(self) -> &'static str {
        match self {
            Phase::Evaluating => "configuration",
            Phase::Handling => "handler",
        }
    }
}

/// The CPU time this thread has used (the evaluation runs on the caller's thread).
pub(crate) fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(usage) => {
            let micros = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(t.tv_sec().max(0) as u64)
                    + Duration::from_micros(t.tv_usec().max(0) as u64)
            };
            micros(usage.user_time()) + micros(usage.system_time())
        }
        // Not expected on Linux; the instruction budget still holds.
        Err(_) => Duration::ZERO,
    }
}

/// A declaration's line for an error: 0 means it was not found on Lua's stack.
fn at(line: u32) -> Option<u32> {
    (line > 0).then_some(line)
}

pub(crate) fn busy() -> mlua::Error {
    mlua::Error::RuntimeError("archon's configuration state is busy".to_string())
}

/// The line the file is at: the innermost frame that runs the file's own chunk.
pub(crate) fn current_line(lua: &Lua, source: &str) -> Option<u32> {
    (0..MAX_LEVELS)
        .map_while(|level| {
            lua.inspect_stack(level, |d| {
                let here = d.source().source.as_deref() == Some(source);
                (here, d.current_line())
            })
        })
        .find_map(|(here, line)| if here { line } else { None })
        .and_then(|l| u32::try_from(l).ok())
}

/// Records the first fatal error and returns the error that unwinds Lua.
fn fail(st: &Shared, line: Option<u32>, message: String) -> mlua::Error {
    if let Ok(mut s) = st.try_borrow_mut() {
        if s.fatal.is_none() {
            s.fatal = Some((line, message.clone()));
        }
    }
    mlua::Error::RuntimeError(message)
}

/// `service "name"` (returns the function that takes the table), `service("name", {...})`.
fn declare(lua: &Lua, st: &Shared, kind: UnitKind, args: MultiValue) -> mlua::Result<Value> {
    let (source, fatal, phase) = {
        let s = st.try_borrow().map_err(|_| busy())?;
        (
            s.source.clone(),
            s.fatal.as_ref().map(|(_, m)| m.clone()),
            s.phase,
        )
    };
    if phase == Phase::Handling {
        return Err(mlua::Error::RuntimeError(format!(
            "{} declares only while the file is evaluated, not in a handler",
            kind.as_str()
        )));
    }
    if let Some(message) = fatal {
        return Err(mlua::Error::RuntimeError(message));
    }
    let line = current_line(lua, &source);
    let k = kind.as_str();
    let mut args = args.into_iter();
    let name = args.next().unwrap_or(Value::Nil);
    let table = args.next();
    if args.next().is_some() {
        return Err(fail(
            st,
            line,
            format!("{k} takes a name and a table of fields: {k} \"name\" {{ argv = {{...}} }}"),
        ));
    }
    let Value::String(name) = &name else {
        return Err(fail(
            st,
            line,
            format!(
                "{k} needs a name first, as in {k} \"web\" {{ argv = {{...}} }}; got {}",
                describe(&name)
            ),
        ));
    };
    let bytes = name.as_bytes().to_vec();
    if let Err(why) = archon_proto::name::check(&bytes) {
        return Err(fail(
            st,
            line,
            format!("{k} name {} is not valid: {why}", quote(&bytes)),
        ));
    }
    let name = String::from_utf8_lossy(&bytes).into_owned();
    let slot = {
        let mut s = st.try_borrow_mut().map_err(|_| busy())?;
        if s.slots.len() >= MAX_SERVICES {
            let message = format!("too many declarations: at most {MAX_SERVICES}");
            drop(s);
            return Err(fail(st, line, message));
        }
        if let Some(&first) = s.by_name.get(&name) {
            let message = format!(
                "{name} declared twice (first at {}:{})",
                s.file, s.slots[first].line
            );
            drop(s);
            return Err(fail(st, line, message));
        }
        let slot = s.slots.len();
        s.slots.push(Slot {
            name: name.clone(),
            kind,
            line: line.unwrap_or(0),
            service: None,
        });
        s.by_name.insert(name, slot);
        slot
    };
    match table {
        Some(table) => {
            complete(lua, st, slot, &table)?;
            Ok(Value::Nil)
        }
        None => {
            let st = st.clone();
            let f = lua.create_function(move |lua, args: MultiValue| {
                let table = match args.len() {
                    0 => Value::Nil,
                    1 => args.into_iter().next().unwrap_or(Value::Nil),
                    _ => {
                        let (line, name) = slot_info(&st, slot)?;
                        return Err(fail(
                            &st,
                            line,
                            format!("{name}: the declaration takes one table of fields"),
                        ));
                    }
                };
                complete(lua, &st, slot, &table)
            })?;
            Ok(Value::Function(f))
        }
    }
}

fn slot_info(st: &Shared, slot: usize) -> mlua::Result<(Option<u32>, String)> {
    let s = st.try_borrow().map_err(|_| busy())?;
    let slot = s.slots.get(slot).ok_or_else(busy)?;
    Ok((at(slot.line), slot.name.clone()))
}

/// Gives declaration `slot` its table of fields.
fn complete(lua: &Lua, st: &Shared, slot: usize, table: &Value) -> mlua::Result<()> {
    let (name, kind, line, done, fatal) = {
        let s = st.try_borrow().map_err(|_| busy())?;
        let sl = s.slots.get(slot).ok_or_else(busy)?;
        let fatal = s.fatal.as_ref().map(|(_, m)| m.clone());
        (
            sl.name.clone(),
            sl.kind,
            sl.line,
            sl.service.is_some(),
            fatal,
        )
    };
    if let Some(message) = fatal {
        return Err(mlua::Error::RuntimeError(message));
    }
    if done {
        return Err(fail(
            st,
            at(line),
            format!("{name}: its table of fields was given twice"),
        ));
    }
    if matches!(table, Value::Nil) {
        return Err(fail(
            st,
            at(line),
            format!("{name}: the declaration needs a table of fields, got nil"),
        ));
    }
    let room = {
        let s = st.try_borrow().map_err(|_| busy())?;
        fields::Room::new(
            s.limits.declared.saturating_sub(s.declared),
            s.limits.declared,
        )
    };
    let service = fields::service(lua, &name, kind, line, table, &room)
        .map_err(|m| fail(st, at(line), format!("{name}: {m}")))?;
    let mut s = st.try_borrow_mut().map_err(|_| busy())?;
    s.declared = s.limits.declared.saturating_sub(room.left());
    if let Some(sl) = s.slots.get_mut(slot) {
        sl.service = Some(service);
    }
    Ok(())
}

/// An error Lua returned, as a line and a message; `oom` is the message for a memory error.
pub(crate) fn lua_failure(e: &mlua::Error, shown: &str, oom: &str) -> Failure {
    match e {
        mlua::Error::SyntaxError { message, .. } => located(message, shown),
        mlua::Error::RuntimeError(message) => {
            let (text, trace) = match message.find("\nstack traceback:") {
                Some(at) => message.split_at(at),
                None => (message.as_str(), ""),
            };
            let (line, text) = located(text, shown);
            (
                line.or_else(|| traced_line(trace, shown)),
                not_a_string(text),
            )
        }
        mlua::Error::MemoryError(_) => (None, oom.to_string()),
        mlua::Error::CallbackError { traceback, cause } => {
            let (line, text) = lua_failure(cause, shown, oom);
            (line.or_else(|| traced_line(traceback, shown)), text)
        }
        other => (None, one_line(&other.to_string())),
    }
}

/// An error raised with a value that is not a string reads as `table: 0x55d0...`; say so.
fn not_a_string(text: String) -> String {
    let kind = match text.split_once(": 0x") {
        Some((kind, _)) if ["table", "function", "userdata", "thread"].contains(&kind) => kind,
        _ if text == "nil" => "nil",
        _ if text == "true" || text == "false" => "boolean",
        _ => return text,
    };
    format!("error() was called with a {kind} value instead of a message")
}

fn out_of_memory_message(limits: Limits) -> String {
    format!(
        "configuration uses more than {} MiB of memory",
        limits.memory >> 20
    )
}

/// `name:12: message` split into the line and the message; other text as it is.
fn located(message: &str, shown: &str) -> Failure {
    if let Some(rest) = message
        .strip_prefix(shown)
        .and_then(|r| r.strip_prefix(':'))
    {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if let (Ok(line), Some(text)) = (
            rest[..digits].parse::<u32>(),
            rest[digits..].strip_prefix(": "),
        ) {
            return (Some(line), one_line(text));
        }
    }
    (None, one_line(message))
}

/// The line of the innermost frame of the file in a Lua traceback.
fn traced_line(trace: &str, shown: &str) -> Option<u32> {
    let needle = format!("\n\t{shown}:");
    let at = trace.find(&needle)? + needle.len();
    let rest = &trace[at..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// A message on one line, cut at [`MAX_MESSAGE`] bytes.
fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_fit_lua() {
        assert_eq!(chunk_name("archon.lua"), "archon.lua");
        let long = format!("/{}/archon.lua", "d".repeat(80));
        assert_eq!(chunk_name(&long), "archon.lua");
        assert_eq!(chunk_name(&format!("/{}", "d".repeat(80))), "config");
        assert_eq!(chunk_name(""), "config");
        assert_eq!(chunk_name("a\nb"), "config");
    }

    #[test]
    fn splits_locations() {
        assert_eq!(
            located("f.lua:12: oops", "f.lua"),
            (Some(12), "oops".into())
        );
        assert_eq!(
            located("f.lua:x: oops", "f.lua"),
            (None, "f.lua:x: oops".into())
        );
        assert_eq!(
            located("other:1: a\nb", "f.lua"),
            (None, "other:1: a b".into())
        );
        let trace = "\nstack traceback:\n\t[C]: in ?\n\tf.lua:7: in main chunk";
        assert_eq!(traced_line(trace, "f.lua"), Some(7));
        assert_eq!(traced_line(trace, "g.lua"), None);
        assert_eq!(one_line(&"é".repeat(600)).len(), 1000 + 3);
    }
}
