//! Values written back as Lua literals, for the `Config` dump: what the file would say to get
//! the same value again.

use crate::model::{Check, Health, Listen, Log, RESOURCES, Rlimit, Socket, UnixAddr};

/// Lua's reserved words, which cannot be bare table keys.
const KEYWORDS: [&str; 22] = [
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
    "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
];

/// A quoted Lua string. Printable ASCII stays as it is, and so does other text when the bytes
/// are UTF-8; everything else is escaped (`\n`, `\x00`).
pub(crate) fn string(bytes: &[u8]) -> String {
    let keep_utf8 = std::str::from_utf8(bytes).is_ok();
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    let mut chunk = bytes;
    while let Some(&b) = chunk.first() {
        let len = if b < 0x80 || !keep_utf8 {
            1
        } else {
            utf8_len(b)
        };
        let (c, rest) = chunk.split_at(len.min(chunk.len()));
        chunk = rest;
        match (b, std::str::from_utf8(c)) {
            (b'"', _) => out.push_str("\\\""),
            (b'\\', _) => out.push_str("\\\\"),
            (b'\n', _) => out.push_str("\\n"),
            (b'\t', _) => out.push_str("\\t"),
            (b'\r', _) => out.push_str("\\r"),
            (0x20..=0x7e, _) => out.push(b as char),
            (0x80.., Ok(s)) if keep_utf8 && !s.chars().any(char::is_control) => out.push_str(s),
            _ => {
                for b in c {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0.. => 4,
        0xe0.. => 3,
        _ => 2,
    }
}

/// `{a, b, c}`.
pub(crate) fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    format!("{{{}}}", items.join(", "))
}

/// The literal, or `nil`.
pub(crate) fn opt(value: Option<String>) -> String {
    value.unwrap_or_else(|| "nil".to_string())
}

/// A duration in milliseconds, as the string the file may write: `"7000ms"`.
pub(crate) fn duration(ms: u64) -> String {
    format!("\"{ms}ms\"")
}

/// A float as Lua reads it back: integral values without a fraction.
pub(crate) fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// A signal by name, without `SIG`: `"TERM"`.
pub(crate) fn signal(signo: i32) -> String {
    match archon_proto::signal::name(signo) {
        Some(name) => string(name.strip_prefix("SIG").unwrap_or(&name).as_bytes()),
        None => signo.to_string(),
    }
}

/// A table key: bare when it is an identifier, else `["..."]`.
fn key(name: &[u8]) -> String {
    let ident = name
        .first()
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && !KEYWORDS.iter().any(|k| k.as_bytes() == name);
    if ident {
        String::from_utf8_lossy(name).into_owned()
    } else {
        format!("[{}]", string(name))
    }
}

/// `{NAME = "value", ["odd-name"] = "value"}`.
pub(crate) fn env(env: &[(Vec<u8>, Vec<u8>)]) -> String {
    list(
        env.iter()
            .map(|(name, value)| format!("{} = {}", key(name), string(value))),
    )
}

fn limit(value: u64) -> String {
    if value == libc::RLIM_INFINITY {
        "\"infinity\"".to_string()
    } else {
        value.to_string()
    }
}

/// `{nofile = 1024, core = {0, "infinity"}}`.
pub(crate) fn rlimits(rlimits: &[Rlimit]) -> String {
    list(rlimits.iter().map(|r| {
        let name = RESOURCES
            .iter()
            .find(|(_, res)| *res == r.resource)
            .map_or_else(|| format!("[{}]", r.resource), |(n, _)| n.to_string());
        if r.soft == r.hard {
            format!("{name} = {}", limit(r.soft))
        } else {
            format!("{name} = {{{}, {}}}", limit(r.soft), limit(r.hard))
        }
    }))
}

/// `{command = {...}, interval = ..., ...}` or `{tcp = "...", ...}`.
pub(crate) fn health(h: &Health) -> String {
    let check = match &h.check {
        Check::Command(argv) => format!("command = {}", list(argv.iter().map(|a| string(a)))),
        Check::Tcp(addr) => format!("tcp = {}", string(addr.to_string().as_bytes())),
    };
    format!(
        "{{{check}, interval = {}, timeout = {}, retries = {}, start_period = {}}}",
        duration(h.interval_ms),
        duration(h.timeout_ms),
        h.retries,
        duration(h.start_period_ms)
    )
}

/// `{{name = "web", tcp = "127.0.0.1:8080", backlog = 4096}, ...}`, each socket at
/// `bound[i]` when given.
pub(crate) fn sockets(sockets: &[Socket], bound: &[Option<Listen>]) -> String {
    list(sockets.iter().enumerate().map(|(i, s)| {
        let listen = bound.get(i).and_then(Option::as_ref).unwrap_or(&s.listen);
        let mut out = format!("{{name = {}, ", string(s.name.as_bytes()));
        match listen {
            Listen::Tcp(a) => out.push_str(&format!("tcp = {}", string(a.to_string().as_bytes()))),
            Listen::Udp(a) => out.push_str(&format!("udp = {}", string(a.to_string().as_bytes()))),
            Listen::Unix(a) | Listen::UnixGram(a) => out.push_str(&format!(
                "{} = {}",
                listen.transport(),
                string(&a.as_bytes())
            )),
        }
        if listen.unix().and_then(UnixAddr::path).is_some() {
            out.push_str(&format!(", mode = \"{:04o}\"", s.mode));
            if let Some((uid, gid)) = s.owner {
                out.push_str(&format!(", owner = {uid}, group = {gid}"));
            }
        }
        if listen.is_stream() {
            out.push_str(&format!(", backlog = {}", s.backlog));
        }
        out.push('}');
        out
    }))
}

/// `{ring = 65536, file = "/var/log/web/current", max_size = 1048576, keep = 5}` (no `file`
/// when there is none).
pub(crate) fn log(l: &Log) -> String {
    use std::os::unix::ffi::OsStrExt;
    let file = l
        .file
        .as_ref()
        .map(|p| format!(", file = {}", string(p.as_os_str().as_bytes())))
        .unwrap_or_default();
    format!(
        "{{ring = {}{file}, max_size = {}, keep = {}}}",
        l.ring, l.max_size, l.keep
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_quoted_and_escaped() {
        assert_eq!(string(b"plain"), "\"plain\"");
        assert_eq!(string(b"a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(string(b"a\nb\tc\0"), "\"a\\nb\\tc\\x00\"");
        assert_eq!(string("café".as_bytes()), "\"café\"");
        assert_eq!(string(b"caf\xe9"), "\"caf\\xe9\"");
        assert_eq!(string("a\u{85}b".as_bytes()), "\"a\\xc2\\x85b\"");
    }

    #[test]
    fn keys_are_bare_only_for_identifiers() {
        assert_eq!(key(b"PATH"), "PATH");
        assert_eq!(key(b"_x1"), "_x1");
        assert_eq!(key(b"1x"), "[\"1x\"]");
        assert_eq!(key(b"a-b"), "[\"a-b\"]");
        assert_eq!(key(b"end"), "[\"end\"]");
    }

    #[test]
    fn numbers_read_back() {
        assert_eq!(number(2.0), "2");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(0.1), "0.1");
        assert_eq!(duration(7000), "\"7000ms\"");
        assert_eq!(signal(15), "\"TERM\"");
        assert_eq!(signal(36), "\"RTMIN+2\"");
    }
}
