//! `${service.port}` and `${service.socket.port}` in an argv or env value, or as the port of a
//! `health.tcp` address: the port of a socket
//! a service declares, known once archon has bound it (a declared port 0 becomes the port the
//! kernel picked). The configuration is checked when it is loaded, so that a reference that names
//! nothing is an error with its file and line; the supervisor substitutes the ports each time it
//! starts a process or a health check.
//!
//! A reference is `${`, a name made of letters, digits and `_ . @ : -`, `.port` and `}`.
//! Anything else stays as it is, so that `${HOME}` or `${HOST:-127.0.0.1}` still reach a shell
//! and `${process.pid}` a script; `$${` is a literal `${`. `${db.port}` is the port of the first socket of `db`, `${db.admin.port}` that of
//! its socket named `admin`. A reference does not order the services: the socket is bound
//! whether or not its service runs.

use crate::model::Socket;

/// The one attribute a reference may name.
const PORT: &[u8] = b".port";

/// Whether a reference's name may hold `b`: a service name's bytes.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b':' | b'-')
}

/// `text` with every reference replaced by what `resolve` gives for it (called with the text
/// between `${` and `}`) and every `$${` by `${`; the first error of `resolve`, prefixed with the
/// reference.
pub fn substitute(
    text: &[u8],
    mut resolve: impl FnMut(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    if !text.windows(2).any(|w| w == b"${") {
        return Ok(text.to_vec());
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with(b"$${") {
            out.extend_from_slice(b"${");
            i += 3;
            continue;
        }
        if let Some(content) = reference(rest) {
            let value = resolve(content)
                .map_err(|e| format!("${{{}}}: {e}", String::from_utf8_lossy(content)))?;
            out.extend_from_slice(&value);
            i += content.len() + 3;
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    Ok(out)
}

/// Whether `content` (what would be between `${` and `}`) is a reference: a name and `.port`.
pub fn is_reference(content: &[u8]) -> bool {
    content.iter().all(|&b| name_byte(b))
        && content.strip_suffix(PORT).is_some_and(|n| !n.is_empty())
}

/// The name of the reference `text` starts with (`db.port` for `${db.port}`), if it starts
/// with one.
fn reference(text: &[u8]) -> Option<&[u8]> {
    let body = text.strip_prefix(b"${")?;
    let end = body.iter().position(|&b| !name_byte(b))?;
    let content = &body[..end];
    (body.get(end) == Some(&b'}') && is_reference(content)).then_some(content)
}

/// The service and the index of its socket that a reference names (`content` is what is between
/// `${` and `}`); `lookup` gives the sockets of a declared service. The error says what is wrong
/// in words that follow the reference.
///
/// A service name may itself hold dots: `${a.b.port}` is the first socket of service `a.b`, or
/// the socket `b` of service `a`. Exactly one reading must name a socket that has a port.
pub fn find<'c, 's>(
    content: &'c [u8],
    lookup: impl Fn(&str) -> Option<&'s [Socket]>,
) -> Result<(&'c str, usize), String> {
    let name = content
        .strip_suffix(PORT)
        .filter(|n| !n.is_empty())
        .ok_or("not a reference: it names no port")?;
    let name = std::str::from_utf8(name).map_err(|_| "not a name".to_string())?;
    // Each reading: (service, socket name or None for the first).
    let readings = std::iter::once((name, None)).chain(
        name.match_indices('.')
            .map(|(i, _)| (&name[..i], Some(&name[i + 1..]))),
    );
    let mut found: Vec<(&str, usize, &Socket)> = Vec::new();
    let mut service_seen: Option<&str> = None;
    for (service, socket) in readings {
        let Some(sockets) = lookup(service) else {
            continue;
        };
        service_seen.get_or_insert(service);
        let at = match socket {
            None => (!sockets.is_empty()).then_some(0),
            Some(s) => sockets.iter().position(|x| x.name == s),
        };
        if let Some((i, socket)) = at.and_then(|i| Some((i, sockets.get(i)?))) {
            found.push((service, i, socket));
        }
    }
    match found.as_slice() {
        [(service, i, socket)] => match socket.listen.port() {
            None => Err(format!(
                "the socket {} of {service} is a Unix socket: it has no port",
                socket.name
            )),
            Some(_) => Ok((service, *i)),
        },
        [] => Err(match service_seen {
            Some(service) if service == name => format!("{service} declares no sockets"),
            Some(service) => format!(
                "{service} has no socket named {}",
                name.get(service.len() + 1..).unwrap_or_default()
            ),
            None => format!("no service is named {name}"),
        }),
        several => Err(format!(
            "ambiguous: it may be {}",
            several
                .iter()
                .map(|(service, _, s)| format!("the socket {} of {service}", s.name))
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DEFAULT_BACKLOG, DEFAULT_SOCKET_MODE, Listen, UnixAddr};
    use std::collections::HashMap;

    fn socket(name: &str, listen: &str) -> Socket {
        let listen = match listen.split_once(' ') {
            Some(("tcp", a)) => Listen::Tcp(a.parse().unwrap_or(([0; 4], 1).into())),
            Some(("udp", a)) => Listen::Udp(a.parse().unwrap_or(([0; 4], 1).into())),
            _ => Listen::Unix(UnixAddr::Path(listen.into())),
        };
        Socket {
            name: name.to_string(),
            listen,
            backlog: DEFAULT_BACKLOG,
            mode: DEFAULT_SOCKET_MODE,
            owner: None,
        }
    }

    fn world() -> HashMap<&'static str, Vec<Socket>> {
        HashMap::from([
            ("db", vec![socket("db", "tcp 127.0.0.1:0")]),
            (
                "web",
                vec![
                    socket("http", "tcp 0.0.0.0:80"),
                    socket("admin", "udp [::1]:0"),
                    socket("ctl", "/run/web.sock"),
                ],
            ),
            ("plain", vec![]),
            ("a.b", vec![socket("x", "tcp 127.0.0.1:1")]),
            ("a", vec![socket("b", "tcp 127.0.0.1:2")]),
            ("api.v2", vec![socket("api", "tcp 127.0.0.1:3")]),
        ])
    }

    /// Substitutes each reference with `service/index`, or says why it cannot.
    fn run(text: &str) -> Result<String, String> {
        let w = world();
        let lookup = |n: &str| w.get(n).map(Vec::as_slice);
        substitute(text.as_bytes(), |r| {
            find(r, lookup).map(|(s, i)| format!("{s}/{i}").into_bytes())
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    #[test]
    fn references_become_their_socket() {
        assert_eq!(run("--port=${db.port}"), Ok("--port=db/0".into()));
        assert_eq!(run("${db.db.port}"), Ok("db/0".into()));
        assert_eq!(
            run("${web.port}:${web.admin.port}"),
            Ok("web/0:web/1".into())
        );
        assert_eq!(run("${api.v2.port}"), Ok("api.v2/0".into()));
        assert_eq!(run("${api.v2.api.port}"), Ok("api.v2/0".into()));
    }

    #[test]
    fn what_is_not_a_reference_stays() {
        for text in [
            "",
            "plain",
            "${HOME}",
            "$HOME",
            "${a b.port}",
            "${db.port",
            "$",
            "${",
            "${}",
            "echo ${x:-y.z}",
            "${HOST:-127.0.0.1}",
            "${process.pid}",
            "${db.host}",
            "${.port}",
            "${db.port.}",
        ] {
            assert_eq!(run(text), Ok(text.to_string()), "{text}");
        }
        assert_eq!(run("$${db.port} $${"), Ok("${db.port} ${".into()));
        assert_eq!(run("$$${db.port}"), Ok("$${db.port}".into()));
    }

    #[test]
    fn a_reference_that_names_nothing_says_why() {
        let cases = [
            ("${dbb.port}", "${dbb.port}: no service is named dbb"),
            ("${plain.port}", "${plain.port}: plain declares no sockets"),
            (
                "${web.nope.port}",
                "${web.nope.port}: web has no socket named nope",
            ),
            (
                "${web.ctl.port}",
                "${web.ctl.port}: the socket ctl of web is a Unix socket: it has no port",
            ),
            (
                "${a.b.port}",
                "${a.b.port}: ambiguous: it may be the socket x of a.b or the socket b of a",
            ),
        ];
        for (text, why) in cases {
            assert_eq!(run(text), Err(why.to_string()), "{text}");
        }
    }
}
