//! archon's configuration: one Lua file evaluated in a sandbox into plain Rust values.
//!
//! ```lua
//! service "db"  { argv = {"/usr/bin/redis-server", "--port", "6390"}, ready = "notify" }
//! service "web" { argv = {"/usr/bin/python3", "-m", "http.server", "8080"},
//!                 requires = {"db"}, restart = "on-failure", env = {PYTHONUNBUFFERED = "1"} }
//! task "migrate" { argv = {"/bin/sh", "-c", "echo migrated"}, before = {"web"} }
//! ```
//!
//! [`load_file`] and [`load_str`] return a [`Config`] (the supervisor never holds a Lua type) or a
//! [`LoadError`] that says `file:line: what`; [`load`] also returns the file's [`Handlers`]
//! (`on`, `every`, `watch`), which keep the Lua state alive and are run by the supervisor
//! through plain values ([`handlers`]). `archon.lua(5)` documents every field, default and
//! error. The modules: [`model`] (the values), `sandbox` (the Lua state, its library and
//! budgets), `fields` (one declaration's table), `sockets` (a declaration's sockets, addresses
//! declared twice), [`refs`] (`${service.port}` references, checked here and substituted by the
//! supervisor), `graph` (dependency names, `before`, cycles), `users` (user and group lookups),
//! `literal` (values written back as Lua for the dump).
//!
//! ```
//! let config = archon_lua::load_str("demo.lua", br#"service "web" { argv = {"/bin/true"} }"#)?;
//! assert_eq!(config.services[0].name, "web");
//! let err = archon_lua::load_str("demo.lua", b"\nservice \"web\" { argv = 42 }").unwrap_err();
//! assert_eq!(err.to_string(), "demo.lua:2: web: argv must be a list of strings, got number");
//! # Ok::<(), archon_lua::LoadError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod fields;
mod graph;
pub mod handlers;
mod literal;
pub mod model;
pub mod refs;
mod sandbox;
mod sockets;
mod users;
mod value;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub use error::LoadError;
pub use handlers::{Action, Change, Handlers, Host, Outcome};
pub use model::{
    Backoff, BindShim, Check, Config, Credentials, Flap, Health, Listen, Log, Port, Ready, Restart,
    Rlimit, Service, Socket, TcpTarget, UnitKind, UnixAddr,
};
pub use sockets::check_name as check_socket_name;

/// The most declarations (services and tasks together) a file may make.
pub const MAX_SERVICES: usize = 16384;
/// The largest configuration file, in bytes.
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// The Lua heap an evaluation may use, in bytes.
pub const MAX_MEMORY_BYTES: usize = 64 << 20;
/// The Lua VM instructions an evaluation may run: far more than 16384 declarations need, and
/// a fraction of a second of work.
pub const MAX_INSTRUCTIONS: u64 = 20_000_000;
/// The bytes (argv, env, names, ...) all declarations together may hold, in bytes.
pub const MAX_DECLARED_BYTES: usize = 64 << 20;
/// The CPU time an evaluation may take: a guard for work the instruction budget does not see
/// (each instruction on a long string copies it). A file of 16384 declarations takes about
/// 0.25 s of CPU in a release build.
pub const MAX_EVAL_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The Lua VM instructions one run of a handler may take: a few milliseconds of work. A
/// handler that takes more (an endless loop) is stopped and reported as a `handler` event.
pub const MAX_HANDLER_INSTRUCTIONS: u64 = 1_000_000;
/// The CPU time one run of a handler may take: a guard for what the instruction budget does
/// not see (each instruction on a long string copies it).
pub const MAX_HANDLER_TIME: std::time::Duration = std::time::Duration::from_millis(100);
/// The bytes of Lua heap the handlers' state may grow by past what the file left once
/// evaluated (its globals, the handlers and what they hold): a handler that allocates more
/// fails, and what it allocated is collected.
pub const HANDLER_HEAP_BYTES: usize = 8 << 20;
/// The most handlers (`on`, `every`, `watch` together) a file may declare.
pub const MAX_HANDLERS: usize = 1024;
/// The most actions (`archon.start`, ...) one run of a handler may ask for.
pub const MAX_ACTIONS: usize = 64;
/// The runs one handler may make at once for events archon or a handler caused, for log lines
/// and for file changes: past them, its runs are skipped until it has slowed down to
/// [`HANDLER_RUNS_PER_SECOND`]. Handlers that feed each other (a signal one sends is the
/// other's event) or a handler that feeds itself through a process or a file (an `archon.run`
/// whose exit is its event) stop there. A client's requests are not counted: the client
/// drives them, and each runs the handlers. `every` has its period.
pub const HANDLER_RUN_BURST: u32 = 4096;
/// The runs per second one handler gets back after [`HANDLER_RUN_BURST`].
pub const HANDLER_RUNS_PER_SECOND: u32 = 100;
/// The shortest period of `every`.
pub const MIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

const LIMITS: sandbox::Limits = sandbox::Limits {
    instructions: MAX_INSTRUCTIONS,
    memory: MAX_MEMORY_BYTES,
    declared: MAX_DECLARED_BYTES,
    time: MAX_EVAL_TIME,
};

/// An evaluated file: its declarations, and its handlers when it declares any.
#[derive(Debug)]
pub struct Loaded {
    /// The services and tasks.
    pub config: Config,
    /// The handlers and the Lua state they run in; `None` (and no Lua state kept) when the file
    /// declares none.
    pub handlers: Option<Handlers>,
}

/// Reads and evaluates the configuration file at `path`. Errors name the file as `path` shows.
/// Its handlers, if any, are dropped: [`load`] keeps them.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    load(path).map(|l| l.config)
}

/// Reads and evaluates the configuration file at `path`, keeping its handlers.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let file = path.display().to_string();
    let error = |message: String| LoadError {
        file: file.clone(),
        line: None,
        message,
    };
    // Non-blocking, so that a FIFO named by mistake is refused instead of waited on.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| error(format!("cannot open: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| error(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(error("not a regular file".to_string()));
    }
    let mut source = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut source)
        .map_err(|e| error(format!("cannot read: {e}")))?;
    load_source(&file, &source)
}

/// Evaluates `source` as a configuration file named `chunk_name` (in errors and in Lua's
/// messages). Never panics: whatever the input, a [`Config`] or a [`LoadError`].
pub fn load_str(chunk_name: &str, source: &[u8]) -> Result<Config, LoadError> {
    load_source(chunk_name, source).map(|l| l.config)
}

/// As [`load_str`], keeping the handlers.
pub fn load_source(chunk_name: &str, source: &[u8]) -> Result<Loaded, LoadError> {
    load_with(chunk_name, source, LIMITS)
}

fn load_with(
    chunk_name: &str,
    source: &[u8],
    limits: sandbox::Limits,
) -> Result<Loaded, LoadError> {
    let error = |line: Option<u32>, message: String| LoadError {
        file: chunk_name.to_string(),
        line,
        message,
    };
    if source.len() > MAX_FILE_BYTES {
        return Err(error(
            None,
            format!("the file is larger than {} MiB", MAX_FILE_BYTES >> 20),
        ));
    }
    let source = source.strip_prefix(b"\xef\xbb\xbf").unwrap_or(source);
    if let Err(e) = std::str::from_utf8(source) {
        let at = e.valid_up_to();
        let line = source[..at].iter().filter(|b| **b == b'\n').count() + 1;
        return Err(error(
            u32::try_from(line).ok(),
            format!("the file is not UTF-8 text (byte 0x{:02x})", source[at]),
        ));
    }
    // A last guard: nothing here should panic, and a configuration must never take archon down.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sandbox::evaluate(chunk_name, source, limits)
    }));
    match run {
        Ok(Ok((services, handlers))) => Ok(Loaded {
            config: Config { services },
            handlers,
        }),
        Ok(Err((line, message))) => Err(error(line, message)),
        Err(_) => Err(error(
            None,
            "internal error while evaluating the configuration".to_string(),
        )),
    }
}

#[cfg(test)]
mod tests;
