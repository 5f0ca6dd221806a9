//! `Bind`: a process asks archon for a socket it holds for the process's service.
//!
//! `Bind,tcp,<ip>,<port>`, `Bind,udp,<ip>,<port>` or `Bind,unix,<path>`; archon answers `Ok` with
//! the socket attached (`SCM_RIGHTS`, one descriptor, sent with the reply's first byte) or
//! `Error,<reason>`. The `LD_PRELOAD` shim (`libarchon_bind.so`) asks from inside a host
//! program's `bind()`, where it may be in a signal handler or between `fork` and `exec`: it must
//! not allocate, so it writes its line with [`write_line`] into a buffer on its stack, and reads
//! the answer with [`is_ok_line`]. Both are the same definition as [`BindAddr`]'s fields in
//! [`Request`](crate::Request), and the tests check that what they write parses back.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

wire_enum! {
    /// What kind of socket a `Bind` asks for.
    Transport {
        /// A TCP socket (`SOCK_STREAM` on `AF_INET` or `AF_INET6`).
        Tcp = "tcp",
        /// A UDP socket (`SOCK_DGRAM` on `AF_INET` or `AF_INET6`).
        Udp = "udp",
        /// A Unix stream socket bound to a path (`SOCK_STREAM` on `AF_UNIX`).
        Unix = "unix",
    }
}

/// The longest Unix socket path, in bytes: `sun_path` holds 108 bytes with the terminating NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// The longest `Bind` line [`write_line`] can write, in bytes: a quoted Unix path whose every
/// byte is a doubled quote, with the verb and the terminator. A buffer of this size always
/// suffices.
pub const MAX_BIND_LINE: usize = b"Bind,unix,\"\"\n".len() + 2 * MAX_UNIX_PATH;

/// The whole `Ok` reply to a `Bind`, with its terminator; the socket comes with it.
pub const OK_LINE: &[u8] = b"Ok\n";

/// The address a `Bind` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BindAddr {
    /// A TCP or UDP socket on an IP address and port. The port is never 0 (a socket bound to
    /// port 0 gets any free port: there is nothing to ask archon for), and an IPv6 scope id is
    /// not part of the request.
    Inet {
        /// TCP or UDP.
        transport: Transport,
        /// The address and port.
        addr: SocketAddr,
    },
    /// A Unix stream socket at this path: 1 to [`MAX_UNIX_PATH`] bytes, none of them NUL (an
    /// abstract socket, whose name starts with NUL, is not asked for).
    Unix(Vec<u8>),
}

impl BindAddr {
    /// The transport word.
    pub fn transport(&self) -> Transport {
        match self {
            BindAddr::Inet { transport, .. } => *transport,
            BindAddr::Unix(_) => Transport::Unix,
        }
    }

    /// The fields after the verb.
    pub fn to_fields(&self) -> Vec<Vec<u8>> {
        match self {
            BindAddr::Inet { transport, addr } => vec![
                transport.as_str().as_bytes().to_vec(),
                addr.ip().to_string().into_bytes(),
                addr.port().to_string().into_bytes(),
            ],
            BindAddr::Unix(path) => {
                vec![Transport::Unix.as_str().as_bytes().to_vec(), path.clone()]
            }
        }
    }

    /// Reads the fields after the verb.
    pub fn from_fields(args: &[Vec<u8>]) -> Result<BindAddr, BindError> {
        let transport = args.first().ok_or(BindError::Missing("transport"))?;
        let transport = Transport::from_field(transport).ok_or(BindError::Transport)?;
        let addr = match transport {
            Transport::Tcp | Transport::Udp => {
                if args.len() > 3 {
                    return Err(BindError::ExtraFields);
                }
                let ip = args.get(1).ok_or(BindError::Missing("address"))?;
                let ip: IpAddr = std::str::from_utf8(ip)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(BindError::Address)?;
                let port = args.get(2).ok_or(BindError::Missing("port"))?;
                let port = crate::request::parse_u64(port)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0)
                    .ok_or(BindError::Port)?;
                BindAddr::Inet {
                    transport,
                    addr: SocketAddr::new(ip, port),
                }
            }
            Transport::Unix => {
                if args.len() > 2 {
                    return Err(BindError::ExtraFields);
                }
                let path = args.get(1).ok_or(BindError::Missing("path"))?;
                check_unix_path(path)?;
                BindAddr::Unix(path.clone())
            }
        };
        Ok(addr)
    }

    /// Checks an address built in code, as [`from_fields`](Self::from_fields) would read it.
    pub fn check(&self) -> Result<(), BindError> {
        match self {
            BindAddr::Inet { transport, addr } => {
                if *transport == Transport::Unix {
                    return Err(BindError::Transport);
                }
                if addr.port() == 0 {
                    return Err(BindError::Port);
                }
                Ok(())
            }
            BindAddr::Unix(path) => check_unix_path(path),
        }
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Inet { transport, addr } => write!(f, "{transport} {addr}"),
            BindAddr::Unix(path) => write!(f, "unix {}", String::from_utf8_lossy(path)),
        }
    }
}

fn check_unix_path(path: &[u8]) -> Result<(), BindError> {
    if path.is_empty() || path.len() > MAX_UNIX_PATH || path.contains(&0) {
        return Err(BindError::Path);
    }
    Ok(())
}

/// What is wrong with a `Bind` request's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindError {
    /// A field is missing (the text names it).
    Missing(&'static str),
    /// The transport is not `tcp`, `udp` or `unix`.
    Transport,
    /// Not an IPv4 or IPv6 address.
    Address,
    /// Not a port from 1 to 65535.
    Port,
    /// An empty path, one longer than [`MAX_UNIX_PATH`], or one holding a NUL byte.
    Path,
    /// More fields than the transport takes.
    ExtraFields,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Missing(what) => write!(f, "missing {what}"),
            BindError::Transport => f.write_str("bad transport: tcp, udp or unix"),
            BindError::Address => f.write_str("bad address: an IPv4 or IPv6 address"),
            BindError::Port => f.write_str("bad port: a number from 1 to 65535"),
            BindError::Path => write!(
                f,
                "bad path: 1 to {MAX_UNIX_PATH} bytes, without NUL (abstract sockets are not served)"
            ),
            BindError::ExtraFields => f.write_str("too many fields for Bind"),
        }
    }
}

impl std::error::Error for BindError {}

/// A `fmt::Write` into a fixed buffer: fails, rather than grows, when the buffer is full.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) -> fmt::Result {
        let end = self.len.checked_add(bytes.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.put(s.as_bytes())
    }
}

/// Writes the `Bind` request for `addr` into `out`, with its `\n`, and returns its length; `None`
/// when `out` is too small (a buffer of [`MAX_BIND_LINE`] bytes never is) or `addr` is not valid.
///
/// It allocates nothing and takes no lock (the IP address is written by `core`'s `Display`,
/// which formats on the stack), so that it can run inside any `bind()` call. The line is the one
/// [`Request::encode`](crate::Request::encode) writes: a path is quoted only when it holds `,`,
/// `"`, `\r` or `\n`, with its quotes doubled.
pub fn write_line(transport: Transport, target: Target<'_>, out: &mut [u8]) -> Option<usize> {
    let mut c = Cursor { buf: out, len: 0 };
    let verb = crate::request::verb::BIND;
    match (transport, target) {
        (Transport::Tcp | Transport::Udp, Target::Inet(addr)) if addr.port() != 0 => {
            writeln!(c, "{verb},{transport},{},{}", addr.ip(), addr.port()).ok()?;
        }
        (Transport::Unix, Target::Path(path)) => {
            check_unix_path(path).ok()?;
            write!(c, "{verb},{transport},").ok()?;
            if path
                .iter()
                .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
            {
                c.put(b"\"").ok()?;
                for b in path {
                    if *b == b'"' {
                        c.put(b"\"\"").ok()?;
                    } else {
                        c.put(std::slice::from_ref(b)).ok()?;
                    }
                }
                c.put(b"\"").ok()?;
            } else {
                c.put(path).ok()?;
            }
            c.put(b"\n").ok()?;
        }
        _ => return None,
    }
    Some(c.len)
}

/// What [`write_line`] writes a request for, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// An IP address and port (not 0).
    Inet(SocketAddr),
    /// A Unix socket path.
    Path(&'a [u8]),
}

/// True when `line` (a whole reply record, with or without its `\n`) is the `Ok` that carries
/// the socket; anything else (an `Error,<reason>`) means archon has none to give.
pub fn is_ok_line(line: &[u8]) -> bool {
    line == OK_LINE || Some(line) == OK_LINE.strip_suffix(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reply, Request};

    fn line(transport: Transport, target: Target<'_>) -> Option<Vec<u8>> {
        let mut buf = [0u8; MAX_BIND_LINE];
        write_line(transport, target, &mut buf).map(|n| buf[..n].to_vec())
    }

    fn inet(transport: Transport, addr: &str) -> Option<Vec<u8>> {
        line(transport, Target::Inet(addr.parse().ok()?))
    }

    #[test]
    fn writes_what_encode_writes() {
        let cases: [(Transport, Target<'_>); 6] = [
            (Transport::Tcp, Target::Inet(([127, 0, 0, 1], 8080).into())),
            (Transport::Udp, Target::Inet(([0, 0, 0, 0], 53).into())),
            (
                Transport::Tcp,
                Target::Inet("[2001:db8::1]:443".parse().unwrap_or(([0; 4], 1).into())),
            ),
            (Transport::Unix, Target::Path(b"/run/web.sock")),
            (Transport::Unix, Target::Path(b"/tmp/a,b\"c.sock")),
            (Transport::Unix, Target::Path(b"/tmp/new\nline")),
        ];
        for (transport, target) in cases {
            let addr = match target {
                Target::Inet(addr) => BindAddr::Inet { transport, addr },
                Target::Path(p) => BindAddr::Unix(p.to_vec()),
            };
            let request = Request::Bind(addr);
            let written = line(transport, target);
            assert_eq!(written, request.encode().ok(), "{request:?}");
            let written = written.unwrap_or_default();
            let body = written.strip_suffix(b"\n").unwrap_or(&written);
            assert_eq!(Request::parse(body), Ok(request));
        }
    }

    #[test]
    fn refuses_what_cannot_be_asked() {
        assert_eq!(inet(Transport::Tcp, "127.0.0.1:0"), None);
        assert_eq!(inet(Transport::Unix, "127.0.0.1:80"), None);
        assert_eq!(line(Transport::Tcp, Target::Path(b"/x")), None);
        assert_eq!(line(Transport::Unix, Target::Path(b"")), None);
        assert_eq!(line(Transport::Unix, Target::Path(b"/a\0b")), None);
        assert_eq!(line(Transport::Unix, Target::Path(&[b'a'; 108])), None);
        // A buffer too small fails instead of writing part of a line.
        let mut small = [0u8; 10];
        let addr = ([127, 0, 0, 1], 8080).into();
        assert_eq!(
            write_line(Transport::Tcp, Target::Inet(addr), &mut small),
            None
        );
    }

    #[test]
    fn the_longest_line_fits() {
        let path = [b'"'; MAX_UNIX_PATH];
        let n = line(Transport::Unix, Target::Path(&path)).map(|l| l.len());
        assert_eq!(n, Some(MAX_BIND_LINE));
        let widest = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        assert!(inet(Transport::Udp, widest).is_some_and(|l| l.len() < MAX_BIND_LINE));
    }

    #[test]
    fn ok_is_the_plain_ok_reply() {
        assert_eq!(Reply::Ok(Vec::new()).encode(), OK_LINE);
        assert!(is_ok_line(b"Ok\n"));
        assert!(is_ok_line(b"Ok"));
        assert!(!is_ok_line(b"Ok,1\n"));
        assert!(!is_ok_line(b"Error,no socket\n"));
    }

    #[test]
    fn parses_fields_and_names_what_is_wrong() {
        let parse = |line: &str| Request::parse(line.as_bytes());
        let tcp = |a: &str| {
            Ok(Request::Bind(BindAddr::Inet {
                transport: Transport::Tcp,
                addr: a.parse().unwrap_or(([0; 4], 1).into()),
            }))
        };
        assert_eq!(parse("Bind,tcp,127.0.0.1,80"), tcp("127.0.0.1:80"));
        assert_eq!(parse("Bind,tcp,::1,80"), tcp("[::1]:80"));
        assert_eq!(
            parse("Bind,unix,/run/a.sock"),
            Ok(Request::Bind(BindAddr::Unix(b"/run/a.sock".to_vec())))
        );
        let err = |line: &str| parse(line).map_err(|e| e.to_string());
        assert_eq!(err("Bind"), Err("missing transport".into()));
        assert_eq!(
            err("Bind,sctp,1.2.3.4,1"),
            Err("bad transport: tcp, udp or unix".into())
        );
        assert_eq!(err("Bind,tcp,1.2.3.4"), Err("missing port".into()));
        assert_eq!(
            err("Bind,tcp,[::1],80"),
            Err("bad address: an IPv4 or IPv6 address".into())
        );
        assert_eq!(
            err("Bind,tcp,localhost,80"),
            Err("bad address: an IPv4 or IPv6 address".into())
        );
        assert_eq!(
            err("Bind,udp,1.2.3.4,0"),
            Err("bad port: a number from 1 to 65535".into())
        );
        assert_eq!(
            err("Bind,udp,1.2.3.4,65536"),
            Err("bad port: a number from 1 to 65535".into())
        );
        assert_eq!(
            err("Bind,tcp,1.2.3.4,80,x"),
            Err("too many fields for Bind".into())
        );
        assert_eq!(
            err("Bind,unix,/a,/b"),
            Err("too many fields for Bind".into())
        );
        assert_eq!(err("Bind,unix"), Err("missing path".into()));
        assert!(err("Bind,unix,").is_err());
    }
}
