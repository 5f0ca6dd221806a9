//! What a `bind()` call asks for, read from its `sockaddr` and its socket's type: the transport
//! and target of a `Bind` request, or nothing to ask archon about.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use archon_proto::bind::{MAX_UNIX_PATH, Target, Transport};

/// Room for a Unix socket path made absolute: `sun_path`'s 108 bytes, and the working directory
/// before a relative one (a longer result is too long for `sun_path` anyway).
pub const PATH_ROOM: usize = 2 * 108;

/// A Unix path made absolute, on the stack.
pub struct Path {
    bytes: [u8; PATH_ROOM],
    len: usize,
}

impl Path {
    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// What a `bind()` call asks for.
pub enum Asked {
    /// A TCP or UDP address, with a port that is not 0.
    Inet(Transport, SocketAddr),
    /// A Unix stream socket path, absolute.
    Unix(Path),
}

impl Asked {
    /// The transport and target of the `Bind` request.
    pub fn target(&self) -> (Transport, Target<'_>) {
        match self {
            Asked::Inet(t, addr) => (*t, Target::Inet(*addr)),
            Asked::Unix(p) => (Transport::Unix, Target::Path(p.as_bytes())),
        }
    }
}

/// What to ask archon for a `bind()` to the bytes at `addr` of a socket whose type (`SO_TYPE`)
/// `kind` gives: a TCP or UDP address with a port (port 0 is any free port, nothing archon
/// holds), or a Unix stream socket's path (not an abstract one), made absolute with `cwd`.
/// `None`: nothing to ask, the real `bind()` does it. `kind` is called only for an address that
/// may be asked for, so that a `bind()` to port 0 costs no system call.
pub fn asked(
    kind: impl FnOnce() -> Option<i32>,
    addr: &[u8],
    cwd: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<Asked> {
    let family = i32::from(u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]));
    match family {
        libc::AF_INET | libc::AF_INET6 => {
            let (size, ip_at) = if family == libc::AF_INET {
                (size_of::<libc::sockaddr_in>(), 4..8)
            } else {
                (size_of::<libc::sockaddr_in6>(), 8..24)
            };
            if addr.len() < size {
                return None;
            }
            let port = u16::from_be_bytes([*addr.get(2)?, *addr.get(3)?]);
            if port == 0 {
                return None;
            }
            let ip = addr.get(ip_at)?;
            let ip: IpAddr = if family == libc::AF_INET {
                Ipv4Addr::from(<[u8; 4]>::try_from(ip).ok()?).into()
            } else {
                Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?).into()
            };
            let transport = match kind()? {
                libc::SOCK_STREAM => Transport::Tcp,
                libc::SOCK_DGRAM => Transport::Udp,
                _ => return None,
            };
            Some(Asked::Inet(transport, SocketAddr::new(ip, port)))
        }
        libc::AF_UNIX => {
            let path = addr.get(2..)?;
            let path = path
                .iter()
                .position(|&b| b == 0)
                .map_or(path, |end| path.get(..end).unwrap_or_default());
            // An unnamed socket, or an abstract one (its name starts with NUL).
            if path.is_empty() || kind()? != libc::SOCK_STREAM {
                return None;
            }
            absolute(path, cwd).map(Asked::Unix)
        }
        _ => None,
    }
}

/// `path`, or `cwd`'s answer then `/` then `path` when it is relative; `None` when that does not
/// fit a Unix socket path.
fn absolute(path: &[u8], cwd: impl FnOnce(&mut [u8]) -> Option<usize>) -> Option<Path> {
    let mut out = Path {
        bytes: [0; PATH_ROOM],
        len: 0,
    };
    if !path.starts_with(b"/") {
        let n = cwd(&mut out.bytes)?;
        if n == 0 || n >= PATH_ROOM {
            return None;
        }
        out.len = n;
        if out.as_bytes() != b"/" {
            *out.bytes.get_mut(out.len)? = b'/';
            out.len += 1;
        }
    }
    let end = out.len.checked_add(path.len())?;
    out.bytes.get_mut(out.len..end)?.copy_from_slice(path);
    out.len = end;
    (out.len <= MAX_UNIX_PATH).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain C struct.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        bytes_of(&libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        })
    }

    fn v6(ip: Ipv6Addr, port: u16) -> Vec<u8> {
        bytes_of(&libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: port.to_be(),
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: ip.octets(),
            },
            sin6_scope_id: 3,
        })
    }

    fn unix(path: &[u8]) -> Vec<u8> {
        let mut out = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(path);
        out
    }

    fn no_cwd(_: &mut [u8]) -> Option<usize> {
        None
    }

    fn cwd(dir: &'static [u8]) -> impl FnOnce(&mut [u8]) -> Option<usize> {
        move |buf| {
            buf.get_mut(..dir.len())?.copy_from_slice(dir);
            Some(dir.len())
        }
    }

    /// What is asked, as the request line would name it.
    fn shown(
        kind: i32,
        addr: &[u8],
        cwd: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<String> {
        let asked = asked(|| Some(kind), addr, cwd)?;
        Some(match asked.target() {
            (t, Target::Inet(a)) => format!("{t} {a}"),
            (t, Target::Path(p)) => format!("{t} {}", String::from_utf8_lossy(p)),
        })
    }

    #[test]
    fn inet_addresses_with_a_port() {
        let s = libc::SOCK_STREAM;
        let d = libc::SOCK_DGRAM;
        assert_eq!(
            shown(s, &v4([127, 0, 0, 1], 8080), no_cwd).as_deref(),
            Some("tcp 127.0.0.1:8080")
        );
        assert_eq!(
            shown(d, &v4([0, 0, 0, 0], 53), no_cwd).as_deref(),
            Some("udp 0.0.0.0:53")
        );
        assert_eq!(
            shown(s, &v6(Ipv6Addr::LOCALHOST, 443), no_cwd).as_deref(),
            Some("tcp [::1]:443"),
            "the scope id is not asked about"
        );
        // Port 0, a short sockaddr, another type or family: nothing to ask.
        assert_eq!(shown(s, &v4([127, 0, 0, 1], 0), no_cwd), None);
        assert_eq!(shown(s, &v4([127, 0, 0, 1], 80)[..8], no_cwd), None);
        assert_eq!(shown(libc::SOCK_RAW, &v4([127, 0, 0, 1], 80), no_cwd), None);
        assert_eq!(
            shown(libc::SOCK_SEQPACKET, &v4([127, 0, 0, 1], 80), no_cwd),
            None
        );
        assert_eq!(shown(s, &[], no_cwd), None);
        assert_eq!(shown(s, &[1], no_cwd), None);
        let mut other = v4([127, 0, 0, 1], 80);
        other[..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
        assert_eq!(shown(s, &other, no_cwd), None);
    }

    #[test]
    fn port_zero_and_other_families_ask_no_socket_type() {
        let mut other = v4([127, 0, 0, 1], 80);
        other[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
        for addr in [v4([127, 0, 0, 1], 0), v6(Ipv6Addr::LOCALHOST, 0), other] {
            let mut called = false;
            let got = asked(
                || {
                    called = true;
                    None
                },
                &addr,
                no_cwd,
            );
            assert!(got.is_none() && !called);
        }
    }

    #[test]
    fn unix_paths_made_absolute() {
        let s = libc::SOCK_STREAM;
        assert_eq!(
            shown(s, &unix(b"/run/a.sock\0junk"), no_cwd).as_deref(),
            Some("unix /run/a.sock")
        );
        assert_eq!(
            shown(s, &unix(b"/run/a.sock"), no_cwd).as_deref(),
            Some("unix /run/a.sock")
        );
        assert_eq!(
            shown(s, &unix(b"a.sock\0"), cwd(b"/srv")).as_deref(),
            Some("unix /srv/a.sock")
        );
        assert_eq!(
            shown(s, &unix(b"a.sock"), cwd(b"/")).as_deref(),
            Some("unix /a.sock")
        );
        // Abstract, unnamed, datagram, no working directory, too long: nothing to ask.
        assert_eq!(shown(s, &unix(b"\0abstract"), no_cwd), None);
        assert_eq!(shown(s, &unix(b""), no_cwd), None);
        assert_eq!(shown(libc::SOCK_DGRAM, &unix(b"/run/a.sock"), no_cwd), None);
        assert_eq!(shown(s, &unix(b"a.sock"), no_cwd), None);
        let long = [b'x'; 100];
        assert_eq!(shown(s, &unix(&long), cwd(b"/a/b/c/d/e/f/g")), None);
    }
}
