//! A declaration's `sockets` and `bind_shim`, and the checks that look across declarations: an
//! address declared twice, and the `${service.port}` references of every argv and env (see
//! [`crate::refs`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use mlua::Value;

use crate::error::nearest;
use crate::model::{
    BindShim, Check, DEFAULT_BACKLOG, DEFAULT_SOCKET_MODE, LISTEN_FDS_START, Listen, MAX_BACKLOG,
    MAX_SOCKETS, Port, Ready, Service, Socket, UnixAddr,
};
use crate::refs;
use crate::users;
use crate::value::{self, Res, describe, integer, list, no_nul, quote, string};

/// The fields of one socket's table.
const SOCKET_FIELDS: [&str; 9] = [
    "name", "tcp", "udp", "unix", "unixgram", "backlog", "mode", "owner", "group",
];

/// The longest socket name, in bytes.
pub const MAX_SOCKET_NAME: usize = 64;

/// `sockets = {{tcp = "127.0.0.1:8080"}, {name = "admin", unix = "/run/web.sock"}}`: a list of
/// tables, read in order (the first is passed as fd 3). `service` names the only socket when it
/// has no name of its own.
pub(crate) fn sockets(v: &Value, service: &str) -> Res<Vec<Socket>> {
    let all = list(
        v,
        "sockets",
        "a list of tables like {tcp = \"127.0.0.1:8080\"}",
        |i, item| socket(item, &format!("sockets[{i}]")),
    )?;
    if all.len() > MAX_SOCKETS {
        return Err(format!(
            "sockets lists {} sockets; a service may have at most {MAX_SOCKETS}",
            all.len()
        ));
    }
    let several = all.len() > 1;
    let mut out: Vec<Socket> = Vec::with_capacity(all.len());
    for (i, (name, s)) in all.into_iter().enumerate() {
        let at = format!("sockets[{}]", i + 1);
        let name = match name {
            Some(n) => n,
            None if several => {
                return Err(format!(
                    "{at} needs a name: a service with several sockets names each, as in \
                     {{name = \"admin\", tcp = \"127.0.0.1:8081\"}}"
                ));
            }
            None => {
                check_name(service.as_bytes()).map_err(|why| {
                    format!("{at} needs a name: the service's name cannot name a socket ({why})")
                })?;
                service.to_string()
            }
        };
        if let Some(other) = out.iter().position(|o| o.name == name) {
            return Err(format!(
                "{at} is named {}, as sockets[{}] is",
                quote(name.as_bytes()),
                other + 1
            ));
        }
        out.push(Socket { name, ..s });
    }
    Ok(out)
}

/// One socket's table, with its name if it has one.
fn socket(v: &Value, at: &str) -> Res<(Option<String>, Socket)> {
    let t = value::table(v, at, "a table like {tcp = \"127.0.0.1:8080\"}")?;
    let mut fields: HashMap<&'static str, Value> = HashMap::new();
    let mut unknown: Vec<Vec<u8>> = Vec::new();
    for pair in value::entries(&t, at) {
        let (k, v) = pair?;
        let Value::String(k) = &k else {
            return Err(format!(
                "{at}: fields are named, as in {{tcp = \"127.0.0.1:8080\"}}, but it has the key \
                 [{}]",
                describe(&k)
            ));
        };
        match SOCKET_FIELDS
            .iter()
            .find(|n| n.as_bytes() == &k.as_bytes()[..])
        {
            Some(name) => {
                fields.insert(name, v);
            }
            None => unknown.push(k.as_bytes().to_vec()),
        }
    }
    unknown.sort();
    if let Some(k) = unknown.first() {
        let shown = quote(k);
        return Err(match nearest(&String::from_utf8_lossy(k), &SOCKET_FIELDS) {
            Some(near) => format!("{at}: unknown field {shown} (did you mean \"{near}\"?)"),
            None => format!("{at}: unknown field {shown}"),
        });
    }
    let name = match fields.get("name") {
        Some(v) => {
            let bytes = string(v, &format!("{at}.name"), "a name")?;
            check_name(&bytes)
                .map_err(|why| format!("{at}.name {} is not a valid name: {why}", describe(v)))?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        None => None,
    };
    let given: Vec<&str> = ["tcp", "udp", "unix", "unixgram"]
        .into_iter()
        .filter(|k| fields.contains_key(k))
        .collect();
    let listen = match given.as_slice() {
        ["tcp"] => Listen::Tcp(inet(&fields["tcp"], &format!("{at}.tcp"))?),
        ["udp"] => Listen::Udp(inet(&fields["udp"], &format!("{at}.udp"))?),
        ["unix"] => Listen::Unix(unix_addr(&fields["unix"], &format!("{at}.unix"))?),
        ["unixgram"] => {
            Listen::UnixGram(unix_addr(&fields["unixgram"], &format!("{at}.unixgram"))?)
        }
        [] => {
            return Err(format!(
                "{at} needs one of tcp = \"host:port\", udp = \"host:port\", unix = \"/path\" or \
                 unixgram = \"/path\""
            ));
        }
        more => {
            return Err(format!(
                "{at} has both {} and {}; give one",
                more[0], more[1]
            ));
        }
    };
    let has_file = listen.unix().and_then(UnixAddr::path).is_some();
    for file_only in ["mode", "owner", "group"] {
        if fields.contains_key(file_only) && !has_file {
            return Err(format!(
                "{at}.{file_only} is for Unix sockets bound to a path (unix = \"/path\"): \
                 {} has no file",
                listen
            ));
        }
    }
    let mut backlog = DEFAULT_BACKLOG;
    if let Some(v) = fields.get("backlog") {
        if !listen.is_stream() {
            return Err(format!(
                "{at}.backlog is for tcp and unix sockets: a datagram socket does not listen"
            ));
        }
        backlog = integer(
            v,
            &format!("{at}.backlog"),
            1..=i64::from(MAX_BACKLOG),
            "a number from 1 to 65535",
        )? as u32;
    }
    let mut mode = DEFAULT_SOCKET_MODE;
    if let Some(v) = fields.get("mode") {
        mode = socket_mode(v, &format!("{at}.mode"))?;
    }
    let owner = fields
        .get("owner")
        .map(|v| crate::fields::who(v, &format!("{at}.owner")))
        .transpose()?;
    let group = fields
        .get("group")
        .map(|v| crate::fields::who(v, &format!("{at}.group")))
        .transpose()?;
    let owner = users::owner(owner.as_ref(), group.as_ref()).map_err(|e| format!("{at}: {e}"))?;
    Ok((
        name,
        Socket {
            name: String::new(),
            listen,
            backlog,
            mode,
            owner,
        },
    ))
}

/// A socket name: 1 to [`MAX_SOCKET_NAME`] bytes of letters, digits and `_ . @ -` (a service
/// name without `:`, which separates the names in `LISTEN_FDNAMES`).
pub fn check_name(name: &[u8]) -> Result<(), String> {
    if name.contains(&b':') {
        return Err("':' separates the names in LISTEN_FDNAMES".to_string());
    }
    archon_proto::name::check(name)?;
    if name.len() > MAX_SOCKET_NAME {
        return Err(format!("a socket name is at most {MAX_SOCKET_NAME} bytes"));
    }
    Ok(())
}

fn inet(v: &Value, at: &str) -> Res<SocketAddr> {
    const EXPECTED: &str = "an address like \"127.0.0.1:8080\", \"[::1]:8080\" or \"0.0.0.0:0\" (port 0: any free port)";
    let bytes = string(v, at, EXPECTED)?;
    let addr: SocketAddr = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{at} must be {EXPECTED}, got {}", describe(v)))?;
    if let SocketAddr::V6(a) = addr {
        if a.scope_id() != 0 || a.flowinfo() != 0 {
            return Err(format!(
                "{at}: an IPv6 scope or flow label is not supported"
            ));
        }
    }
    Ok(addr)
}

/// An absolute path, or `@name`: a name in the abstract namespace.
fn unix_addr(v: &Value, at: &str) -> Res<UnixAddr> {
    let path = string(v, at, "an absolute path or @name")?;
    no_nul(&path, at)?;
    if path.len() > archon_proto::bind::MAX_UNIX_PATH {
        return Err(format!(
            "{at} is {} bytes long; a Unix socket address is at most {}",
            path.len(),
            archon_proto::bind::MAX_UNIX_PATH
        ));
    }
    match path.split_first() {
        Some((b'/', _)) => Ok(UnixAddr::Path(PathBuf::from(std::ffi::OsStr::from_bytes(
            &path,
        )))),
        Some((b'@', name)) if !name.is_empty() => Ok(UnixAddr::Abstract(name.to_vec())),
        _ => Err(format!(
            "{at} must be an absolute path or @name (an abstract socket), got {}",
            describe(v)
        )),
    }
}

fn socket_mode(v: &Value, at: &str) -> Res<u32> {
    const EXPECTED: &str = "an octal string like \"0660\" or a number from 0 to 511 (0o777)";
    match v {
        Value::String(s) => {
            let bytes = s.as_bytes();
            let octal = !bytes.is_empty()
                && bytes.len() <= 4
                && bytes.iter().all(|b| (b'0'..=b'7').contains(b));
            octal
                .then(|| u32::from_str_radix(&String::from_utf8_lossy(&bytes), 8).ok())
                .flatten()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| format!("{at} must be {EXPECTED}, got {}", describe(v)))
        }
        _ => Ok(integer(v, at, 0..=0o777, EXPECTED)? as u32),
    }
}

/// `bind_shim = true`, `false` or a path to the library.
pub(crate) fn bind_shim(v: &Value) -> Res<BindShim> {
    const EXPECTED: &str = "true, false, or the absolute path of libarchon_bind.so";
    match v {
        Value::Boolean(true) => Ok(BindShim::Default),
        Value::Boolean(false) => Ok(BindShim::Off),
        Value::String(_) => {
            let path = string(v, "bind_shim", EXPECTED)?;
            no_nul(&path, "bind_shim")?;
            // ld.so splits LD_PRELOAD at spaces and colons.
            if !path.starts_with(b"/") || path.iter().any(|b| matches!(b, b' ' | b':')) {
                return Err(format!(
                    "bind_shim must be {EXPECTED} (without spaces or colons), got {}",
                    describe(v)
                ));
            }
            Ok(BindShim::Path(PathBuf::from(std::ffi::OsStr::from_bytes(
                &path,
            ))))
        }
        other => Err(format!(
            "bind_shim must be {EXPECTED}, got {}",
            value::type_name(other)
        )),
    }
}

/// The fds the sockets of `s` take, for the message when its ready fd is among them.
pub(crate) fn check_ready_fd(s: &Service) -> Res<()> {
    let Ready::Fd(fd) = s.ready else {
        return Ok(());
    };
    let n = s.extras.sockets.len() as i32;
    let end = LISTEN_FDS_START + n;
    if (LISTEN_FDS_START..end).contains(&fd) {
        return Err(format!(
            "ready_fd {fd} is taken: the sockets are passed as fds {LISTEN_FDS_START} to {} \
             (LISTEN_FDS); give ready_fd = {end} or more",
            end - 1
        ));
    }
    Ok(())
}

/// What a socket's address is, for finding one declared twice: the port 0 of a TCP or UDP
/// socket is any free port, so two such are never the same; a Unix stream and a Unix datagram
/// socket share one namespace of paths and abstract names.
fn key(listen: &Listen) -> Option<Listen> {
    match listen {
        Listen::Tcp(a) | Listen::Udp(a) if a.port() == 0 => None,
        Listen::UnixGram(a) => Some(Listen::Unix(a.clone())),
        other => Some(other.clone()),
    }
}

/// The checks across declarations: no address declared twice, and every `${...}` reference
/// of an argv, env or `health.tcp` resolves. The error is the line of the declaration at fault and what is
/// wrong, without the file.
pub(crate) fn check_all(services: &[Service]) -> Result<(), (u32, String)> {
    let mut seen: HashMap<Listen, (&str, usize)> = HashMap::new();
    for s in services {
        for (i, sock) in s.extras.sockets.iter().enumerate() {
            let Some(k) = key(&sock.listen) else {
                continue;
            };
            if let Some((other, j)) = seen.insert(k, (&s.name, i)) {
                let whose = if other == s.name {
                    format!("sockets[{}]", j + 1)
                } else {
                    other.to_string()
                };
                return Err((
                    s.line,
                    format!(
                        "{}: sockets[{}]: {} is also declared by {whose}",
                        s.name,
                        i + 1,
                        sock.listen
                    ),
                ));
            }
        }
    }
    let by_name: HashMap<&str, &Service> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    let lookup = |name: &str| by_name.get(name).map(|s| s.extras.sockets.as_slice());
    for s in services {
        let args = s
            .argv
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("argv[{}]", i + 1), a));
        let env = s.env.iter().map(|(n, v)| (format!("env[{}]", quote(n)), v));
        for (what, text) in args.chain(env) {
            refs::substitute(text, |r| refs::find(r, lookup).map(|_| Vec::new()))
                .map_err(|e| (s.line, format!("{}: {what}: {e}", s.name)))?;
        }
        if let Some(Check::Tcp(target)) = s.health.as_deref().map(|h| &h.check) {
            if let Port::Of(r) = &target.port {
                let at = |e: String| {
                    let r = String::from_utf8_lossy(r);
                    (s.line, format!("{}: health.tcp: ${{{r}}}: {e}", s.name))
                };
                let (service, i) = refs::find(r, lookup).map_err(at)?;
                let socket = lookup(service).and_then(|l| l.get(i));
                if let Some(socket) = socket.filter(|x| !matches!(x.listen, Listen::Tcp(_))) {
                    return Err(at(format!(
                        "the socket {} of {service} is {}: a tcp check connects to a TCP port",
                        socket.name, socket.listen
                    )));
                }
            }
        }
    }
    Ok(())
}
