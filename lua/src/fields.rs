//! One declaration's table of fields turned into a [`Service`], every field checked.
//!
//! Errors come back without the `name: ` prefix, which the caller adds. Unknown fields are
//! reported first (the alphabetically first one, so the message does not depend on Lua's table
//! order), then the known fields in the order of [`FIELDS`].

use std::cell::Cell;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use mlua::{Lua, Table, Value};

use crate::error::nearest;
use crate::model::{
    Backoff, Check, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_RETRIES,
    DEFAULT_HEALTH_START_PERIOD_MS, DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_LOG, DEFAULT_READY_FD, Flap,
    Health, Log, MAX_LOG_KEEP, MAX_LOG_RING, MAX_MAX_CONNECTIONS, Port, RESOURCES, Ready, Restart,
    Rlimit, Service, TcpTarget, UnitKind,
};
use crate::users::{self, Who};
use crate::value::{
    self, Res, boolean, describe, duration, integer, is, list, no_nul, quote, string, text,
};

/// Every field of a declaration, in the order they are checked and dumped.
pub(crate) const FIELDS: [&str; 32] = [
    "argv",
    "env",
    "cwd",
    "user",
    "group",
    "groups",
    "umask",
    "rlimits",
    "nice",
    "restart",
    "backoff",
    "flap",
    "stop_signal",
    "stop_timeout",
    "enabled",
    "autostart",
    "on_demand",
    "accept",
    "max_connections",
    "critical",
    "early",
    "requires",
    "after",
    "before",
    "ready",
    "ready_fd",
    "ready_timeout",
    "watchdog",
    "health",
    "sockets",
    "bind_shim",
    "log",
];

const LOG_FIELDS: [&str; 4] = ["ring", "file", "max_size", "keep"];
const BACKOFF_FIELDS: [&str; 4] = ["initial", "max", "multiplier", "reset_after"];
const FLAP_FIELDS: [&str; 2] = ["restarts", "within"];
const HEALTH_FIELDS: [&str; 6] = [
    "command",
    "tcp",
    "interval",
    "timeout",
    "retries",
    "start_period",
];

/// The most a flap limit may count.
const MAX_FLAP_RESTARTS: i64 = 1_000_000;
/// The most consecutive failures a health check may wait for.
const MAX_HEALTH_RETRIES: i64 = 1_000;
/// The largest backoff multiplier.
const MAX_MULTIPLIER: f64 = 100.0;
/// The highest descriptor `ready_fd` may name; 0 to 2 are stdin, stdout and stderr.
const MAX_READY_FD: i64 = 1023;
/// The largest user or group id; `(uid_t)-1` means "unchanged" to the kernel.
const MAX_ID: i64 = u32::MAX as i64 - 1;

/// What declarations may still copy out of Lua, in bytes. Checked while copying, so that a
/// list of many references to one long string cannot make archon allocate a copy for each.
pub(crate) struct Room {
    left: Cell<usize>,
    limit: usize,
}

impl Room {
    /// Room for `left` more bytes of the `limit` all declarations share.
    pub(crate) fn new(left: usize, limit: usize) -> Room {
        Room {
            left: Cell::new(left),
            limit,
        }
    }

    /// The bytes still free.
    pub(crate) fn left(&self) -> usize {
        self.left.get()
    }

    /// Takes `bytes` (plus what keeping an item costs), or says the configuration is too large.
    fn take(&self, bytes: usize) -> Res<()> {
        const ITEM: usize = 32;
        let need = bytes.saturating_add(ITEM);
        match self.left.get().checked_sub(need) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(format!(
                "the configuration is too large: its declarations hold more than {} MiB",
                self.limit >> 20
            )),
        }
    }
}

/// The known fields of a table, found by name.
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    /// The fields of `t`, all of them among `known`. `prefix` names the table in messages
    /// (`""` for a declaration, `"backoff."` for a nested one); `example` shows a named field.
    fn read(t: &Table, prefix: &str, known: &[&'static str], example: &str) -> Res<Fields> {
        let what = prefix.trim_end_matches('.');
        let mut found = Vec::new();
        let mut unknown: Vec<Vec<u8>> = Vec::new();
        for pair in value::entries(t, what) {
            let (k, v) = pair?;
            let Value::String(k) = &k else {
                let table = if what.is_empty() { "the table" } else { what };
                return Err(format!(
                    "fields are named, as in {example}, but {table} has the key [{}]",
                    describe(&k)
                ));
            };
            match known.iter().find(|n| n.as_bytes() == &k.as_bytes()[..]) {
                Some(name) => found.push((*name, v)),
                None => unknown.push(k.as_bytes().to_vec()),
            }
        }
        unknown.sort();
        if let Some(k) = unknown.first() {
            let shown = quote(&[prefix.as_bytes(), k].concat());
            return Err(match nearest(&String::from_utf8_lossy(k), known) {
                Some(near) => format!("unknown field {shown} (did you mean \"{prefix}{near}\"?)"),
                None => format!("unknown field {shown}"),
            });
        }
        Ok(Fields(found))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// The [`Service`] a declaration's table of fields describes; `requires`, `after` and `before`
/// are as written (checked against the other declarations later).
pub(crate) fn service(
    lua: &Lua,
    name: &str,
    kind: UnitKind,
    line: u32,
    table: &Value,
    room: &Room,
) -> Res<Service> {
    room.take(std::mem::size_of::<Service>())?;
    let t = value::table(table, "the declaration", "a table of fields")?;
    let f = Fields::read(&t, "", &FIELDS, "argv = {...}")?;
    let argv = match f.get("argv") {
        Some(v) => argv(lua, v, "argv", room)?,
        None => {
            return Err(
                "argv is required: the program and its arguments, as in argv = {\"/usr/bin/prog\", \"--flag\"}"
                    .to_string(),
            );
        }
    };
    let mut s = Service::new(name, kind, argv);
    s.line = line;
    if let Some(v) = f.get("env") {
        s.env = env(lua, v, room)?;
    }
    if let Some(v) = f.get("cwd") {
        s.extras.cwd = Some(cwd(v)?);
        room.take(s.extras.cwd.as_ref().map_or(0, |p| p.as_os_str().len()))?;
    }
    let user = f.get("user").map(|v| who(v, "user")).transpose()?;
    let group = f.get("group").map(|v| who(v, "group")).transpose()?;
    let groups = match f.get("groups") {
        Some(v) => Some(list(
            v,
            "groups",
            "a list of group names or numbers",
            |i, g| {
                room.take(8)?;
                who(g, &format!("groups[{i}]"))
            },
        )?),
        None => None,
    };
    // Assigned only when given, so that a service without one has no extras box.
    if let Some(creds) = users::credentials(user.as_ref(), group.as_ref(), groups.as_deref())? {
        s.extras.user = Some(creds);
    }
    if let Some(v) = f.get("umask") {
        s.extras.umask = Some(umask(v)?);
    }
    if let Some(v) = f.get("rlimits") {
        s.extras.rlimits = rlimits(v)?;
    }
    if let Some(v) = f.get("nice") {
        s.extras.nice = Some(integer(v, "nice", -20..=19, "a whole number from -20 to 19")? as i32);
    }
    if let Some(v) = f.get("restart") {
        s.restart = restart(v, kind)?;
    }
    if let Some(v) = f.get("backoff") {
        s.extras.backoff = backoff(v)?;
    }
    if let Some(v) = f.get("flap") {
        s.extras.flap = flap(v)?;
    }
    if let Some(v) = f.get("stop_signal") {
        s.stop_signal = signal(v)?;
    }
    if let Some(v) = f.get("stop_timeout") {
        s.stop_timeout_ms = duration(v, "stop_timeout")?;
    }
    if let Some(v) = f.get("enabled") {
        s.enabled = boolean(v, "enabled")?;
    }
    if let Some(v) = f.get("autostart") {
        s.autostart = boolean(v, "autostart")?;
    }
    if let Some(v) = f.get("on_demand") {
        s.on_demand = boolean(v, "on_demand")?;
    }
    if s.on_demand {
        on_demand(&mut s, &f)?;
    }
    if let Some(v) = f.get("accept") {
        s.accept = boolean(v, "accept")?;
    }
    if let Some(v) = f.get("max_connections") {
        if !s.accept {
            return Err(
                "max_connections needs accept = true (the most instances, one per connection, \
                 at once)"
                    .to_string(),
            );
        }
        s.max_connections = integer(
            v,
            "max_connections",
            1..=i64::from(MAX_MAX_CONNECTIONS),
            &format!("a number from 1 to {MAX_MAX_CONNECTIONS}"),
        )? as u32;
    }
    if let Some(v) = f.get("critical") {
        s.critical = boolean(v, "critical")?;
    }
    if let Some(v) = f.get("early") {
        s.early = boolean(v, "early")?;
        if s.early && kind == UnitKind::Service {
            return Err(
                "early is for tasks (run before everything else at boot); a service keeps running"
                    .to_string(),
            );
        }
    }
    if let Some(v) = f.get("requires") {
        s.extras.requires = names(v, "requires", name, room)?;
    }
    if let Some(v) = f.get("after") {
        s.extras.after = names(v, "after", name, room)?;
    }
    if let Some(v) = f.get("before") {
        s.extras.before = names(v, "before", name, room)?;
    }
    if let Some(v) = f.get("ready") {
        s.ready = ready(v)?;
    }
    if let Some(v) = f.get("ready_fd") {
        if s.ready != Ready::Fd(DEFAULT_READY_FD) {
            return Err("ready_fd needs ready = \"fd\"".to_string());
        }
        let fd = integer(
            v,
            "ready_fd",
            3..=MAX_READY_FD,
            "a descriptor number from 3 to 1023",
        )?;
        s.ready = Ready::Fd(fd as i32);
    }
    if let Some(v) = f.get("ready_timeout") {
        s.ready_timeout_ms = positive(v, "ready_timeout")?;
    }
    if let Some(v) = f.get("watchdog") {
        if s.ready != Ready::Notify {
            return Err(
                "watchdog needs ready = \"notify\" (WATCHDOG=1 arrives on NOTIFY_SOCKET)"
                    .to_string(),
            );
        }
        s.extras.watchdog_ms = Some(positive(v, "watchdog")?);
    }
    if let Some(v) = f.get("health") {
        if kind == UnitKind::Task {
            return Err("health checks are for services; a task runs to completion".to_string());
        }
        s.health = Some(Box::new(health(lua, v, room)?));
    }
    if let Some(v) = f.get("sockets") {
        s.extras.sockets = crate::sockets::sockets(v, name)?;
        room.take(s.extras.sockets.len() * std::mem::size_of::<crate::model::Socket>())?;
    }
    if let Some(v) = f.get("bind_shim") {
        s.extras.bind_shim = crate::sockets::bind_shim(v)?;
    }
    crate::sockets::check_ready_fd(&s)?;
    if s.on_demand && s.extras.sockets.is_empty() {
        return Err(
            "on_demand needs sockets: the service starts at the first connection on one of them"
                .to_string(),
        );
    }
    if s.accept {
        accept(&mut s, &f)?;
    }
    if let Some(v) = f.get("log") {
        let l = log(v)?;
        room.take(l.file.as_ref().map_or(0, |p| p.as_os_str().len()))?;
        s.log = (l != DEFAULT_LOG).then(|| Box::new(l));
    }
    Ok(s)
}

/// What `on_demand = true` says of the other fields: a service, not started at load
/// (`autostart = true` contradicts it), restarted only after a failure unless `restart` says
/// otherwise (a clean exit goes back to waiting for a connection). Its sockets are checked
/// once they are read.
fn on_demand(s: &mut Service, f: &Fields) -> Res<()> {
    if s.kind == UnitKind::Task {
        return Err(
            "on_demand is for services; a task runs when it is started or required".to_string(),
        );
    }
    if s.autostart && f.get("autostart").is_some() {
        return Err(
            "on_demand starts the service at the first connection on its sockets; it cannot also \
             have autostart = true"
                .to_string(),
        );
    }
    s.autostart = false;
    if f.get("restart").is_none() {
        s.restart = Restart::OnFailure;
    }
    Ok(())
}

/// What `accept = true` rules out, once every other field is read: archon takes the
/// connections on the sockets (stream sockets, at least one) and starts a process per
/// connection, which is not restarted, not waited for, nor checked; the service itself is up
/// while archon accepts. `restart` is `"never"` (and may only say so); `backoff`, `flap` and
/// `ready_timeout` are left as they are, unused.
fn accept(s: &mut Service, f: &Fields) -> Res<()> {
    let why_not = |what: &str| {
        Err(format!(
            "accept = true starts a process per connection: {what}"
        ))
    };
    if s.kind == UnitKind::Task {
        return why_not("it is for services, not tasks");
    }
    if s.on_demand {
        return why_not("it cannot also be on_demand (archon already takes the first connection)");
    }
    if s.extras.sockets.is_empty() {
        return why_not("it needs sockets, as in sockets = {{tcp = \"127.0.0.1:7000\"}}");
    }
    if let Some((i, sock)) = s
        .extras
        .sockets
        .iter()
        .enumerate()
        .find(|(_, x)| !x.listen.is_stream())
    {
        return why_not(&format!(
            "sockets[{}] is {}, but only tcp and unix sockets take connections",
            i + 1,
            sock.listen
        ));
    }
    match f.get("restart") {
        Some(_) if s.restart != Restart::Never => {
            return why_not("instances are not restarted; leave restart out (it is \"never\")");
        }
        _ => s.restart = Restart::Never,
    }
    if s.ready != Ready::Exec {
        return why_not(
            "an instance has no readiness to wait for; leave ready, ready_fd and watchdog out",
        );
    }
    if s.health.is_some() {
        return why_not("there is no one process to check; leave health out");
    }
    if s.extras.bind_shim != crate::model::BindShim::Off {
        return why_not(
            "an instance gets its connection, not a listening socket; leave bind_shim out",
        );
    }
    Ok(())
}

/// A size in bytes: a whole number, or a string of one with a suffix `K`, `M` or `G` (powers
/// of 1024), as in `"64K"`.
fn size(v: &Value, what: &str, max: u64) -> Res<u64> {
    let expected = format!(
        "a size in bytes, like 65536 or \"64K\" (at most {}M)",
        max >> 20
    );
    let n = match v {
        Value::String(s) => {
            let bytes = s.as_bytes();
            let (digits, unit) = match bytes.last() {
                Some(b'K' | b'k') => (&bytes[..bytes.len() - 1], 1u64 << 10),
                Some(b'M' | b'm') => (&bytes[..bytes.len() - 1], 1 << 20),
                Some(b'G' | b'g') => (&bytes[..bytes.len() - 1], 1 << 30),
                _ => (&bytes[..], 1),
            };
            std::str::from_utf8(digits)
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
                .and_then(|n| n.checked_mul(unit))
                .ok_or_else(|| format!("{what} must be {expected}, got {}", describe(v)))?
        }
        _ => integer(v, what, 0..=i64::MAX, &expected)? as u64,
    };
    if n > max {
        return Err(format!("{what} must be {expected}, got {}", describe(v)));
    }
    Ok(n)
}

/// `log = {ring = "64K", file = "/var/log/web/current", max_size = "1M", keep = 5}`.
fn log(v: &Value) -> Res<Log> {
    let t = value::table(
        v,
        "log",
        "a table like {ring = \"64K\", file = \"/var/log/web/current\", max_size = \"1M\", keep = 5}",
    )?;
    let f = Fields::read(&t, "log.", &LOG_FIELDS, "ring = \"64K\"")?;
    let mut l = Log::default();
    if let Some(v) = f.get("ring") {
        l.ring = size(v, "log.ring", MAX_LOG_RING as u64)? as usize;
    }
    if let Some(v) = f.get("file") {
        let path = string(v, "log.file", "an absolute path")?;
        no_nul(&path, "log.file")?;
        if !path.starts_with(b"/") || path.ends_with(b"/") {
            return Err(format!(
                "log.file must be an absolute path to a file, got {}",
                describe(v)
            ));
        }
        l.file = Some(PathBuf::from(std::ffi::OsStr::from_bytes(&path)));
    }
    if let Some(v) = f.get("max_size") {
        l.max_size = size(v, "log.max_size", u64::from(u32::MAX))?.max(1);
    }
    if let Some(v) = f.get("keep") {
        l.keep = integer(
            v,
            "log.keep",
            0..=i64::from(MAX_LOG_KEEP),
            "a whole number from 0 to 1000",
        )? as u32;
    }
    Ok(l)
}

/// A non-empty list of strings (numbers allowed) without NUL, the first one not empty.
fn argv(lua: &Lua, v: &Value, what: &str, room: &Room) -> Res<Vec<Vec<u8>>> {
    let out = list(v, what, "a list of strings", |i, item| {
        // The strings are the common case, and argv may be long: no message made up front.
        let arg = match item {
            Value::String(s) => {
                let bytes = s.as_bytes();
                room.take(bytes.len())?;
                bytes.to_vec()
            }
            _ => {
                let arg = text(lua, item, &format!("{what}[{i}]"), "a string")?;
                room.take(arg.len())?;
                arg
            }
        };
        if arg.contains(&0) {
            return Err(format!("{what}[{i}] contains a NUL byte"));
        }
        Ok(arg)
    })?;
    match out.first() {
        None => Err(format!(
            "{what} is empty: it needs at least the program to run"
        )),
        Some(program) if program.is_empty() => {
            Err(format!("{what}[1] is empty: it must name the program"))
        }
        Some(_) => Ok(out),
    }
}

fn env(lua: &Lua, v: &Value, room: &Room) -> Res<Vec<(Vec<u8>, Vec<u8>)>> {
    let t = value::table(v, "env", "a table of NAME = value")?;
    let mut out = Vec::new();
    for pair in value::entries(&t, "env") {
        let (k, v) = pair?;
        if out.len() == value::MAX_LIST {
            return Err(format!("env has more than {} variables", value::MAX_LIST));
        }
        let Value::String(k) = &k else {
            return Err(format!(
                "env must map names to values, as in env = {{NAME = \"value\"}}, but it has \
                 the key [{}]",
                describe(&k)
            ));
        };
        let name = k.as_bytes().to_vec();
        let shown = quote(&name);
        if name.is_empty() {
            return Err("env has an empty variable name".to_string());
        }
        if name.contains(&b'=') {
            return Err(format!("env name {shown} contains '='"));
        }
        no_nul(&name, &format!("env name {shown}"))?;
        let at = format!("env[{shown}]");
        // Charged before the copy for a string, which may be long; a number's text is short.
        let len = match &v {
            Value::String(s) => s.as_bytes().len(),
            _ => 0,
        };
        room.take(name.len() + len)?;
        let value = text(lua, &v, &at, "a string or a number")?;
        room.take(value.len() - len.min(value.len()))?;
        no_nul(&value, &at)?;
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

fn cwd(v: &Value) -> Res<PathBuf> {
    let path = string(v, "cwd", "an absolute path")?;
    no_nul(&path, "cwd")?;
    if !path.starts_with(b"/") {
        return Err(format!("cwd must be an absolute path, got {}", describe(v)));
    }
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&path)))
}

pub(crate) fn who(v: &Value, what: &str) -> Res<Who> {
    let expected = if what == "user" || what.ends_with(".owner") {
        "a user name or number"
    } else {
        "a group name or number"
    };
    match v {
        Value::String(s) => match std::str::from_utf8(&s.as_bytes()) {
            Ok(name) if !name.is_empty() && !name.contains('\0') => Ok(Who::Name(name.to_string())),
            _ => Err(format!("{what} must be {expected}, got {}", describe(v))),
        },
        Value::Integer(_) | Value::Number(_) => {
            Ok(Who::Id(
                integer(v, what, 0..=MAX_ID, &format!("{expected} (0 to {MAX_ID})"))? as u32,
            ))
        }
        other => Err(format!(
            "{what} must be {expected}, got {}",
            value::type_name(other)
        )),
    }
}

fn umask(v: &Value) -> Res<u32> {
    const EXPECTED: &str = "an octal string like \"027\" or a number from 0 to 511 (0o777)";
    match v {
        Value::String(s) => {
            let bytes = s.as_bytes();
            let octal = !bytes.is_empty()
                && bytes.len() <= 4
                && bytes.iter().all(|b| (b'0'..=b'7').contains(b));
            let mask = octal
                .then(|| u32::from_str_radix(&String::from_utf8_lossy(&bytes), 8).ok())
                .flatten()
                .filter(|m| *m <= 0o777);
            mask.ok_or_else(|| format!("umask must be {EXPECTED}, got {}", describe(v)))
        }
        _ => Ok(integer(v, "umask", 0..=0o777, EXPECTED)? as u32),
    }
}

fn rlimits(v: &Value) -> Res<Vec<Rlimit>> {
    let t = value::table(v, "rlimits", "a table like {nofile = 1024}")?;
    let names: Vec<&str> = RESOURCES.iter().map(|(n, _)| *n).collect();
    let mut out = Vec::new();
    for entry in value::entries(&t, "rlimits") {
        let (k, v) = entry?;
        let Value::String(k) = &k else {
            return Err(format!(
                "rlimits names its limits, as in {{nofile = 1024}}, but it has the key [{}]",
                describe(&k)
            ));
        };
        let Some((name, resource)) = RESOURCES
            .iter()
            .find(|(n, _)| n.as_bytes() == &k.as_bytes()[..])
        else {
            let shown = quote(&k.as_bytes());
            return Err(match nearest(&k.to_string_lossy(), &names) {
                Some(near) => format!("unknown resource limit {shown} (did you mean \"{near}\"?)"),
                None => format!(
                    "unknown resource limit {shown} (known: {})",
                    names.join(", ")
                ),
            });
        };
        let what = format!("rlimits.{name}");
        let (soft, hard) = match &v {
            Value::Table(_) => pair(&v, &what)?,
            _ => {
                let n = limit(&v, &what)?;
                (n, n)
            }
        };
        if soft > hard {
            return Err(format!(
                "{what}: the soft limit {} is above the hard limit {}",
                shown_limit(soft),
                shown_limit(hard)
            ));
        }
        out.push((
            name,
            Rlimit {
                resource: *resource,
                soft,
                hard,
            },
        ));
    }
    out.sort_by_key(|(name, _)| *name);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

fn shown_limit(n: u64) -> String {
    if n == libc::RLIM_INFINITY {
        "infinity".to_string()
    } else {
        n.to_string()
    }
}

/// `{soft, hard}` or `{soft = ..., hard = ...}`.
fn pair(v: &Value, what: &str) -> Res<(u64, u64)> {
    const EXPECTED: &str = "a number, \"infinity\", or {soft, hard}";
    let t = value::table(v, what, EXPECTED)?;
    let mut soft = None;
    let mut hard = None;
    for pair in value::entries(&t, what) {
        let (k, item) = pair?;
        let slot = match &k {
            Value::Integer(1) => &mut soft,
            Value::Integer(2) => &mut hard,
            v if is(v, "soft") => &mut soft,
            v if is(v, "hard") => &mut hard,
            _ => {
                return Err(format!(
                    "{what} must be {EXPECTED}, but it has the key [{}]",
                    describe(&k)
                ));
            }
        };
        if slot.is_some() {
            return Err(format!("{what} gives a limit twice"));
        }
        *slot = Some(item);
    }
    match (soft, hard) {
        (Some(s), Some(h)) => Ok((
            limit(&s, &format!("{what} soft"))?,
            limit(&h, &format!("{what} hard"))?,
        )),
        _ => Err(format!(
            "{what} must be {EXPECTED}: it needs both the soft and the hard limit"
        )),
    }
}

fn limit(v: &Value, what: &str) -> Res<u64> {
    const EXPECTED: &str = "a number from 0 on, or \"infinity\"";
    match v {
        v if is(v, "infinity") => Ok(libc::RLIM_INFINITY),
        Value::String(_) => Err(format!("{what} must be {EXPECTED}, got {}", describe(v))),
        _ => Ok(integer(v, what, 0..=i64::MAX, EXPECTED)? as u64),
    }
}

fn restart(v: &Value, kind: UnitKind) -> Res<Restart> {
    let r = match v {
        v if is(v, "always") => Restart::Always,
        v if is(v, "on-failure") => Restart::OnFailure,
        v if is(v, "never") => Restart::Never,
        _ => {
            return Err(format!(
                "restart must be \"always\", \"on-failure\" or \"never\", got {}",
                describe(v)
            ));
        }
    };
    if kind == UnitKind::Task && r == Restart::Always {
        return Err(
            "a task cannot restart = \"always\" (it runs to completion); use \"on-failure\" or \"never\""
                .to_string(),
        );
    }
    Ok(r)
}

fn backoff(v: &Value) -> Res<Backoff> {
    let t = value::table(
        v,
        "backoff",
        "a table like {initial = 0.1, max = 30, multiplier = 2, reset_after = 10}",
    )?;
    let f = Fields::read(&t, "backoff.", &BACKOFF_FIELDS, "max = 30")?;
    let mut b = Backoff::default();
    if let Some(v) = f.get("initial") {
        b.initial_ms = duration(v, "backoff.initial")?;
    }
    if let Some(v) = f.get("max") {
        b.max_ms = duration(v, "backoff.max")?;
    }
    if let Some(v) = f.get("multiplier") {
        const EXPECTED: &str = "a number from 1 to 100";
        let m = match v {
            Value::Integer(i) => *i as f64,
            Value::Number(x) => *x,
            other => {
                return Err(format!(
                    "backoff.multiplier must be {EXPECTED}, got {}",
                    value::type_name(other)
                ));
            }
        };
        if !(1.0..=MAX_MULTIPLIER).contains(&m) {
            return Err(format!(
                "backoff.multiplier must be {EXPECTED}, got {}",
                describe(v)
            ));
        }
        b.multiplier = m;
    }
    if let Some(v) = f.get("reset_after") {
        b.reset_after_ms = duration(v, "backoff.reset_after")?;
    }
    if b.max_ms < b.initial_ms {
        return Err(format!(
            "backoff.max ({}ms) is less than backoff.initial ({}ms)",
            b.max_ms, b.initial_ms
        ));
    }
    Ok(b)
}

fn flap(v: &Value) -> Res<Flap> {
    let t = value::table(v, "flap", "a table like {restarts = 5, within = 10}")?;
    let f = Fields::read(&t, "flap.", &FLAP_FIELDS, "restarts = 5")?;
    let mut flap = Flap::default();
    if let Some(v) = f.get("restarts") {
        flap.restarts = integer(
            v,
            "flap.restarts",
            0..=MAX_FLAP_RESTARTS,
            "a whole number from 0 to 1000000",
        )? as u32;
    }
    if let Some(v) = f.get("within") {
        flap.within_ms = positive(v, "flap.within")?;
    }
    Ok(flap)
}

fn signal(v: &Value) -> Res<i32> {
    const EXPECTED: &str = "a signal name or number, like \"TERM\" or 15";
    match v {
        Value::String(s) => archon_proto::signal::parse(&s.as_bytes())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("stop_signal must be {EXPECTED}, got {}", describe(v))),
        _ => Ok(integer(
            v,
            "stop_signal",
            1..=i64::from(archon_proto::signal::MAX_SIGNAL),
            EXPECTED,
        )? as i32),
    }
}

/// A list of declaration names, checked and deduplicated, not naming `me`.
fn names(v: &Value, what: &str, me: &str, room: &Room) -> Res<Vec<String>> {
    let mut seen = HashSet::new();
    let all = list(v, what, "a list of names", |i, item| {
        let bytes = match item {
            Value::String(s) => {
                room.take(s.as_bytes().len())?;
                s.as_bytes().to_vec()
            }
            other => {
                return Err(format!(
                    "{what}[{i}] must be a name, got {}",
                    value::type_name(other)
                ));
            }
        };
        if let Err(why) = archon_proto::name::check(&bytes) {
            return Err(format!(
                "{what}[{i}] {} is not a valid name: {why}",
                describe(item)
            ));
        }
        let name = String::from_utf8_lossy(&bytes).into_owned();
        if name == me {
            return Err(format!("{what} names {me} itself"));
        }
        Ok(name)
    })?;
    Ok(all.into_iter().filter(|n| seen.insert(n.clone())).collect())
}

fn ready(v: &Value) -> Res<Ready> {
    match v {
        v if is(v, "exec") => Ok(Ready::Exec),
        v if is(v, "notify") => Ok(Ready::Notify),
        v if is(v, "fd") => Ok(Ready::Fd(DEFAULT_READY_FD)),
        _ => Err(format!(
            "ready must be \"exec\", \"notify\" or \"fd\", got {}",
            describe(v)
        )),
    }
}

/// A duration that must be more than 0.
fn positive(v: &Value, what: &str) -> Res<u64> {
    match duration(v, what)? {
        0 => Err(format!("{what} must be more than 0")),
        ms => Ok(ms),
    }
}

fn health(lua: &Lua, v: &Value, room: &Room) -> Res<Health> {
    let t = value::table(
        v,
        "health",
        "a table like {tcp = \"127.0.0.1:8080\"} or {command = {...}}",
    )?;
    let f = Fields::read(&t, "health.", &HEALTH_FIELDS, "interval = 10")?;
    let check = match (f.get("command"), f.get("tcp")) {
        (Some(_), Some(_)) => {
            return Err("health has both command and tcp; give one".to_string());
        }
        (Some(v), None) => Check::Command(argv(lua, v, "health.command", room)?),
        (None, Some(v)) => Check::Tcp(tcp(v)?),
        (None, None) => {
            return Err(
                "health needs command = {\"/path/check\", ...} or tcp = \"host:port\"".to_string(),
            );
        }
    };
    let mut h = Health {
        check,
        interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
        timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
        retries: DEFAULT_HEALTH_RETRIES,
        start_period_ms: DEFAULT_HEALTH_START_PERIOD_MS,
    };
    if let Some(v) = f.get("interval") {
        h.interval_ms = positive(v, "health.interval")?;
    }
    if let Some(v) = f.get("timeout") {
        h.timeout_ms = positive(v, "health.timeout")?;
    }
    if let Some(v) = f.get("retries") {
        h.retries = integer(
            v,
            "health.retries",
            1..=MAX_HEALTH_RETRIES,
            "a whole number from 1 to 1000",
        )? as u32;
    }
    if let Some(v) = f.get("start_period") {
        h.start_period_ms = duration(v, "health.start_period")?;
    }
    Ok(h)
}

/// `"127.0.0.1:8080"`, `"[::1]:8080"`, or with a reference for the port:
/// `"127.0.0.1:${db.port}"` (checked against the declarations later).
fn tcp(v: &Value) -> Res<TcpTarget> {
    const EXPECTED: &str = "an address like \"127.0.0.1:8080\", \"[::1]:8080\" or \
                            \"127.0.0.1:${db.port}\"";
    let bytes = string(v, "health.tcp", EXPECTED)?;
    let bad = || format!("health.tcp must be {EXPECTED}, got {}", describe(v));
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(TcpTarget {
            ip: addr.ip(),
            port: Port::Number(addr.port()),
        });
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().map_err(|_| bad())?;
    if matches!(ip, IpAddr::V6(_)) && !text.starts_with('[') {
        return Err(bad());
    }
    let reference = port
        .strip_prefix("${")
        .and_then(|p| p.strip_suffix('}'))
        .filter(|r| crate::refs::is_reference(r.as_bytes()))
        .ok_or_else(bad)?;
    Ok(TcpTarget {
        ip,
        port: Port::Of(reference.as_bytes().to_vec()),
    })
}
