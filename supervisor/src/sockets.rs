//! Pre-bound sockets: the sockets services declare, bound and listening when the configuration is
//! loaded, and held by archon for as long as the configuration declares them, across the
//! restarts of their service. While a service restarts, the kernel queues new connections in the
//! listen backlog instead of refusing them.
//!
//! A service gets its sockets the systemd way, from fd 3 on with `LISTEN_FDS`, `LISTEN_PID` and
//! `LISTEN_FDNAMES` ([`listen_env`]; `LISTEN_PID` is written by the child itself, see
//! [`crate::spawn::SpawnOptions::listen_pid`]), or through the bind shim, which asks with a `Bind`
//! request ([`Sockets::find`]). Binding is all or nothing ([`Sockets::apply`]): a socket that
//! cannot be bound refuses the whole configuration, at start as on a reload, and then nothing
//! changes. A reload keeps the fd of every socket whose address is declared again (the same
//! port, the same file), binds the new ones and closes the ones no longer declared.
//!
//! Every socket is close-on-exec in archon, owned by a [`Bound`], and blocking: archon never
//! reads on them, and accepts only on those of an `accept = true` service ([`accept`]), which
//! are non-blocking while archon watches them ([`set_nonblocking`]). A Unix socket's file is removed when its socket is dropped, if the
//! file is still that socket's.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use archon_lua::{Config, Listen, LoadError, Service, Socket, UnixAddr};
use archon_proto::BindAddr;
use archon_proto::bind::Transport;

/// The variable that names archon's bind socket in every child's environment: where the bind
/// shim sends its `Bind` requests.
pub const BIND_SOCKET_ENV: &str = "ARCHON_BIND_SOCKET";

/// The shim's file name, looked for beside archon (see [`default_shim`]).
pub const SHIM_NAME: &str = "libarchon_bind.so";

/// A socket archon holds: what was declared, the fd, and where it is bound.
#[derive(Debug)]
pub struct Bound {
    /// The declaration it was bound for (its name and options may change on a reload).
    decl: Socket,
    /// The socket: close-on-exec, blocking, bound, and listening unless UDP.
    fd: OwnedFd,
    /// Where it is bound: the declared address, with the port the kernel picked for port 0.
    local: Listen,
    /// For a Unix socket, its file's device and inode, so that only its own file is removed.
    file_id: Option<(u64, u64)>,
}

impl Bound {
    /// Binds and listens as `decl` says.
    fn bind(decl: &Socket) -> io::Result<Bound> {
        let (fd, local, file_id) = match &decl.listen {
            Listen::Tcp(addr) => {
                let fd = inet_socket(*addr, libc::SOCK_STREAM)?;
                listen(&fd, decl.backlog)?;
                let local = Listen::Tcp(local_addr(&fd)?);
                (fd, local, None)
            }
            Listen::Udp(addr) => {
                let fd = inet_socket(*addr, libc::SOCK_DGRAM)?;
                let local = Listen::Udp(local_addr(&fd)?);
                (fd, local, None)
            }
            Listen::Unix(addr) | Listen::UnixGram(addr) => {
                let (fd, id) = unix_socket(addr, decl)?;
                (fd, decl.listen.clone(), id)
            }
        };
        Ok(Bound {
            decl: decl.clone(),
            fd,
            local,
            file_id,
        })
    }

    /// The socket.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Its name, for `LISTEN_FDNAMES`.
    pub fn name(&self) -> &str {
        &self.decl.name
    }

    /// Where it is bound.
    pub fn local(&self) -> &Listen {
        &self.local
    }

    /// Takes a new declaration of the same address: a new name, backlog, mode or owner is
    /// applied to the socket as it is (`listen` again changes the backlog of a listening socket).
    fn redeclare(&mut self, decl: &Socket) -> io::Result<()> {
        if decl.backlog != self.decl.backlog && self.local.is_stream() {
            listen(&self.fd, decl.backlog)?;
        }
        if let Some(path) = self.local.unix().and_then(UnixAddr::path) {
            if decl.owner != self.decl.owner {
                if let Some((uid, gid)) = decl.owner {
                    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
                }
            }
            if decl.mode != self.decl.mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(decl.mode))?;
            }
        }
        self.decl = decl.clone();
        Ok(())
    }

    /// A copy of the fd, close-on-exec, to hand to a process with `SCM_RIGHTS`.
    pub fn dup(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Whether a `Bind` for `addr` asks for this socket: the same transport, IP address (an IPv6
    /// scope is not compared) and port, or the same path.
    pub fn serves(&self, addr: &BindAddr) -> bool {
        serves(&self.local, addr)
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let (Some(path), Some(id)) = (self.local.unix().and_then(UnixAddr::path), self.file_id) {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if (meta.dev(), meta.ino()) == id {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// Whether a `Bind` for `addr` names the socket bound at `local`.
pub fn serves(local: &Listen, addr: &BindAddr) -> bool {
    let same = |a: &SocketAddr, b: &SocketAddr| a.ip() == b.ip() && a.port() == b.port();
    match (local, addr) {
        (
            Listen::Tcp(a),
            BindAddr::Inet {
                transport: Transport::Tcp,
                addr: b,
            },
        )
        | (
            Listen::Udp(a),
            BindAddr::Inet {
                transport: Transport::Udp,
                addr: b,
            },
        ) => same(a, b),
        (Listen::Unix(UnixAddr::Path(p)), BindAddr::Unix(q)) => {
            p.as_os_str().as_bytes() == q.as_slice()
        }
        _ => false,
    }
}

/// What [`Sockets::apply`] does with one declared socket.
enum Slot {
    /// Keeps the socket held for this service (by name) at this index.
    Keep(String, usize),
    /// Takes this socket, just bound.
    New(Bound),
}

/// Every socket archon holds, by service name, in the order the service declares them.
#[derive(Debug, Default)]
pub struct Sockets {
    by_service: HashMap<String, Vec<Bound>>,
}

impl Sockets {
    /// Makes the held sockets those `config` declares: keeps each socket whose address is declared
    /// again, binds the others, and closes what is no longer declared. A socket with port 0 is
    /// kept when the same service declares a socket of that name on that address and port 0
    /// again. All or nothing: on an error nothing has changed (what this call bound is closed),
    /// and the error names the file (`file`), the declaration's line, and why the kernel refused.
    pub fn apply(&mut self, config: &Config, file: &str) -> Result<(), LoadError> {
        // First every socket that is new is bound, while what is held stays as it is.
        let held: Vec<(&str, usize, &Bound)> = self
            .by_service
            .iter()
            .flat_map(|(name, list)| {
                list.iter()
                    .enumerate()
                    .map(move |(i, b)| (name.as_str(), i, b))
            })
            .collect();
        let mut taken = vec![false; held.len()];
        let mut plan: Vec<(&Service, Vec<Slot>)> = Vec::new();
        for s in &config.services {
            let mut slots = Vec::with_capacity(s.extras.sockets.len());
            for (i, decl) in s.extras.sockets.iter().enumerate() {
                let kept = held.iter().enumerate().position(|(k, (svc, _, b))| {
                    !taken[k] && same_socket(svc, &b.decl, &s.name, decl)
                });
                match kept {
                    Some(k) => {
                        taken[k] = true;
                        slots.push(Slot::Keep(held[k].0.to_string(), held[k].1));
                    }
                    None => match Bound::bind(decl) {
                        Ok(b) => slots.push(Slot::New(b)),
                        // What this call bound closes as `plan` drops.
                        Err(e) => return Err(bind_error(file, s, i, decl, &e)),
                    },
                }
            }
            if !slots.is_empty() {
                plan.push((s, slots));
            }
        }
        drop(held);
        // Then the new set is made of what is kept and what is new; the rest closes.
        let mut old: HashMap<String, Vec<Option<Bound>>> = self
            .by_service
            .drain()
            .map(|(name, list)| (name, list.into_iter().map(Some).collect()))
            .collect();
        for (s, slots) in plan {
            let mut list = Vec::with_capacity(slots.len());
            for (decl, slot) in s.extras.sockets.iter().zip(slots) {
                let bound = match slot {
                    Slot::Keep(svc, i) => old
                        .get_mut(&svc)
                        .and_then(|l| l.get_mut(i))
                        .and_then(Option::take),
                    Slot::New(b) => Some(b),
                };
                if let Some(mut b) = bound {
                    if let Err(e) = b.redeclare(decl) {
                        crate::warn!("{}: socket {}: {e}", s.name, decl.name);
                    }
                    list.push(b);
                }
            }
            self.by_service.insert(s.name.clone(), list);
        }
        Ok(())
    }

    /// What a re-exec carries: every socket held, by service and name.
    pub fn carry(&self) -> Vec<crate::reexec::SocketRecord> {
        let mut out = Vec::new();
        for (service, list) in &self.by_service {
            for b in list {
                out.push(crate::reexec::SocketRecord {
                    service: service.clone(),
                    name: b.decl.name.clone(),
                    fd: b.fd(),
                });
            }
        }
        out
    }

    /// Takes a socket carried across a re-exec for the declaration of `service` named `name` in
    /// `config`, if the socket is bound where that declaration says (a later [`apply`] keeps
    /// it); otherwise it is closed, and `apply` binds the declaration anew.
    ///
    /// [`apply`]: Self::apply
    pub fn adopt(
        &mut self,
        config: &Config,
        service: &str,
        name: &str,
        fd: OwnedFd,
    ) -> Result<(), String> {
        let decl = config
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.extras.sockets.iter().find(|d| d.name == name))
            .ok_or_else(|| format!("{service}: socket {name} is no longer declared"))?;
        let kind = sock_type(&fd).map_err(|e| format!("{service}: socket {name}: {e}"))?;
        let (local, file_id) = match &decl.listen {
            Listen::Tcp(a) | Listen::Udp(a) => {
                let want = if matches!(decl.listen, Listen::Tcp(_)) {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_DGRAM
                };
                let got = local_addr(&fd).map_err(|e| format!("{service}: {name}: {e}"))?;
                let same =
                    kind == want && got.ip() == a.ip() && (a.port() == 0 || a.port() == got.port());
                let local = if matches!(decl.listen, Listen::Tcp(_)) {
                    Listen::Tcp(got)
                } else {
                    Listen::Udp(got)
                };
                (same.then_some(local), None)
            }
            Listen::Unix(addr) | Listen::UnixGram(addr) => {
                let want = if decl.listen.is_stream() {
                    libc::SOCK_STREAM
                } else {
                    libc::SOCK_DGRAM
                };
                let same = kind == want && unix_name(&fd).as_ref() == Some(addr);
                let id = match addr {
                    UnixAddr::Path(path) => std::fs::symlink_metadata(path)
                        .ok()
                        .map(|m| (m.dev(), m.ino())),
                    UnixAddr::Abstract(_) => None,
                };
                (same.then(|| decl.listen.clone()), id)
            }
        };
        let local = local.ok_or_else(|| {
            format!("{service}: socket {name} is now declared elsewhere: bound anew")
        })?;
        self.by_service
            .entry(service.to_string())
            .or_default()
            .push(Bound {
                decl: decl.clone(),
                fd,
                local,
                file_id,
            });
        Ok(())
    }

    /// The sockets of `service`, in declaration order.
    pub fn of(&self, service: &str) -> &[Bound] {
        self.by_service.get(service).map_or(&[], Vec::as_slice)
    }

    /// The socket of `service` a `Bind` for `addr` asks for.
    pub fn find(&self, service: &str, addr: &BindAddr) -> Option<&Bound> {
        self.of(service).iter().find(|b| b.serves(addr))
    }

    /// The port socket `index` of `service` is bound to (`None` for a Unix socket).
    pub fn port(&self, service: &str, index: usize) -> Option<u16> {
        self.of(service).get(index)?.local.port()
    }

    /// Where the sockets of `service` are bound, for `Status`: `tcp:127.0.0.1:43211
    /// unix:/run/web.sock`, in declaration order, a space, a backslash or a control character of
    /// a Unix address written `\xHH`; empty for none.
    pub fn summary(&self, service: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, b) in self.of(service).iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(b.local.transport().as_bytes());
            out.push(b':');
            match &b.local {
                Listen::Tcp(a) | Listen::Udp(a) => out.extend_from_slice(a.to_string().as_bytes()),
                Listen::Unix(a) | Listen::UnixGram(a) => escape_into(&mut out, &a.as_bytes()),
            }
        }
        out
    }

    /// Where each socket of `service` is bound, for the `Config` dump.
    pub fn locals(&self, service: &str) -> Vec<Option<Listen>> {
        self.of(service)
            .iter()
            .map(|b| Some(b.local.clone()))
            .collect()
    }
}

/// Appends `bytes` with a space, a backslash and the control characters written `\xHH`: an
/// entry of [`Sockets::summary`] is one word, whatever a Unix address holds.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if b == b' ' || b == b'\\' || b < 0x20 || b == 0x7f {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

/// Whether the socket held for `held_svc` as `held` serves the declaration `decl` of `svc`:
/// the same address (a Unix path, or a TCP or UDP address and port); for port 0, also the same
/// service and name, since every port-0 socket is a different port.
fn same_socket(held_svc: &str, held: &Socket, svc: &str, decl: &Socket) -> bool {
    if held.listen != decl.listen {
        return false;
    }
    match &decl.listen {
        Listen::Tcp(a) | Listen::Udp(a) if a.port() == 0 => {
            held_svc == svc && held.name == decl.name
        }
        _ => true,
    }
}

fn bind_error(file: &str, s: &Service, i: usize, decl: &Socket, e: &io::Error) -> LoadError {
    let why = match e.raw_os_error() {
        Some(errno) => nix::errno::Errno::from_raw(errno).desc().to_string(),
        None => e.to_string(),
    };
    LoadError {
        file: file.to_string(),
        line: Some(s.line),
        message: format!(
            "{}: sockets[{}]: cannot bind {}: {why}",
            s.name,
            i + 1,
            decl.listen
        ),
    }
}

/// `LISTEN_FDS` and `LISTEN_FDNAMES` for sockets of these names, passed from fd 3 on; nothing
/// for none. (`LISTEN_PID` is the child's own pid, which the child writes itself.)
pub fn listen_env<'a>(
    names: impl ExactSizeIterator<Item = &'a str>,
) -> Vec<(&'static str, Vec<u8>)> {
    if names.len() == 0 {
        return Vec::new();
    }
    let count = names.len().to_string().into_bytes();
    let joined: Vec<&str> = names.collect();
    vec![
        ("LISTEN_FDS", count),
        ("LISTEN_FDNAMES", joined.join(":").into_bytes()),
    ]
}

/// Where `bind_shim = true` finds the shim: `<archon's directory>/../lib/libarchon_bind.so` (an
/// installed archon) or `<archon's directory>/libarchon_bind.so` (a build tree), the first that
/// exists; `Err` lists the places looked at.
pub fn default_shim(exe: &Path) -> Result<PathBuf, String> {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [dir.join("../lib").join(SHIM_NAME), dir.join(SHIM_NAME)];
    for c in &candidates {
        if c.is_file() {
            return Ok(std::path::absolute(c).unwrap_or_else(|_| c.clone()));
        }
    }
    Err(format!(
        "bind_shim: {SHIM_NAME} is not beside archon (looked for {} and {}); give its path, \
         bind_shim = \"/path/{SHIM_NAME}\"",
        candidates[0].display(),
        candidates[1].display()
    ))
}

/// `LD_PRELOAD` with the shim first, before what the service would preload anyway.
pub fn preload(shim: &Path, existing: Option<&[u8]>) -> Vec<u8> {
    let mut value = shim.as_os_str().as_bytes().to_vec();
    if let Some(rest) = existing.filter(|r| !r.is_empty()) {
        value.push(b' ');
        value.extend_from_slice(rest);
    }
    value
}

/// A connection archon accepted for an instance of an `accept = true` service.
#[derive(Debug)]
pub struct Connection {
    /// The connected socket: close-on-exec and blocking.
    pub fd: OwnedFd,
    /// What the instance learns of it, as ucspi-tcp and ucspi-unix tell it ([`peer_env`]).
    pub env: Vec<(&'static str, Vec<u8>)>,
    /// Who connected, for people: `127.0.0.1:40312`, `[::1]:40312`, `pid 812 uid 1000`.
    pub peer: String,
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP connection: the remote and local addresses.
    Tcp {
        /// The client's address and port.
        remote: SocketAddr,
        /// The address and port it connected to.
        local: SocketAddr,
    },
    /// A Unix connection: the client's credentials when it connected (`SO_PEERCRED`) and the
    /// socket's address (a path, or `@name`).
    Unix {
        /// Its pid (0 when it is in another PID namespace).
        pid: i32,
        /// Its effective user id.
        uid: u32,
        /// Its effective group id.
        gid: u32,
        /// The listening socket's address.
        local: Vec<u8>,
    },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp { remote, .. } => write!(f, "{remote}"),
            Peer::Unix { pid, uid, .. } => write!(f, "pid {pid} uid {uid}"),
        }
    }
}

/// The variables an instance gets for its connection, as ucspi-tcp's `tcpserver` and
/// ucspi-unix's `unixserver` set them: `PROTO=TCP`, `TCPREMOTEIP`, `TCPREMOTEPORT`,
/// `TCPLOCALIP`, `TCPLOCALPORT` (an IPv6 address without brackets); or `PROTO=UNIX`,
/// `UNIXREMOTEPID`, `UNIXREMOTEEUID`, `UNIXREMOTEEGID`, `UNIXLOCALPATH`.
pub fn peer_env(peer: &Peer) -> Vec<(&'static str, Vec<u8>)> {
    let text = |v: &dyn std::fmt::Display| v.to_string().into_bytes();
    match peer {
        Peer::Tcp { remote, local } => vec![
            ("PROTO", b"TCP".to_vec()),
            ("TCPREMOTEIP", text(&remote.ip())),
            ("TCPREMOTEPORT", text(&remote.port())),
            ("TCPLOCALIP", text(&local.ip())),
            ("TCPLOCALPORT", text(&local.port())),
        ],
        Peer::Unix {
            pid,
            uid,
            gid,
            local,
        } => vec![
            ("PROTO", b"UNIX".to_vec()),
            ("UNIXREMOTEPID", text(pid)),
            ("UNIXREMOTEEUID", text(uid)),
            ("UNIXREMOTEEGID", text(gid)),
            ("UNIXLOCALPATH", local.clone()),
        ],
    }
}

/// Accepts one connection on the listening socket `fd` (non-blocking), bound at `local`:
/// `Ok(None)` when none waits. The connection is close-on-exec and blocking, as an instance
/// expects its stdin and stdout.
pub fn accept(fd: RawFd, local: &Listen) -> io::Result<Option<Connection>> {
    // SAFETY: an all-zero sockaddr_storage is valid; len says its size.
    let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len describe a valid buffer; the fd returned is ours.
    let ret = unsafe {
        libc::accept4(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    let conn = unsafe { OwnedFd::from_raw_fd(ret) };
    let peer = match local {
        Listen::Tcp(_) => Peer::Tcp {
            remote: sockaddr_to(&storage)?,
            local: local_addr(&conn)?,
        },
        Listen::Unix(addr) => {
            let cred = crate::control::peer_credentials(conn.as_raw_fd())?;
            Peer::Unix {
                pid: cred.pid,
                uid: cred.uid,
                gid: cred.gid,
                local: addr.as_bytes(),
            }
        }
        Listen::Udp(_) | Listen::UnixGram(_) => {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
    };
    Ok(Some(Connection {
        fd: conn,
        env: peer_env(&peer),
        peer: peer.to_string(),
    }))
}

/// Sets or clears `O_NONBLOCK` on a socket (on its open file: every copy of it).
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller holds.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let want = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if want != flags {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, want) })?;
    }
    Ok(())
}

// ----- the kernel's side -----

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn new_socket(family: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: the kernel just gave us this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn listen(fd: &OwnedFd, backlog: u32) -> io::Result<()> {
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: listen on an fd we own.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// A TCP or UDP socket bound to `addr`. `SO_REUSEADDR` for TCP, so that connections of an
/// earlier archon left in TIME_WAIT do not block the port; `IPV6_V6ONLY` for IPv6, so that `[::]`
/// means IPv6 only whatever `net.ipv6.bindv6only` says, and `0.0.0.0` on the same port can be
/// declared beside it.
fn inet_socket(addr: SocketAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let fd = new_socket(family, kind)?;
    if kind == libc::SOCK_STREAM {
        crate::sys::setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    }
    if family == libc::AF_INET6 {
        crate::sys::setsockopt_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: storage holds a valid sockaddr of length len.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    Ok(fd)
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address a TCP or UDP socket is bound to (`getsockname`).
/// `SO_TYPE` of a socket.
fn sock_type(fd: &OwnedFd) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len describe a valid c_int buffer.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

/// The address a Unix socket is bound to: a path, or an abstract name.
fn unix_name(fd: &OwnedFd) -> Option<UnixAddr> {
    // SAFETY: an all-zero sockaddr_un is valid; len says its size.
    let mut addr: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr and len describe a valid buffer.
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    };
    if r != 0 || libc::c_int::from(addr.sun_family) != libc::AF_UNIX {
        return None;
    }
    let offset = std::mem::size_of::<libc::sa_family_t>();
    let used = (len as usize)
        .saturating_sub(offset)
        .min(addr.sun_path.len());
    let path: Vec<u8> = addr.sun_path[..used].iter().map(|&c| c as u8).collect();
    match path.split_first() {
        // An abstract name: a NUL, then the name's bytes, as many as the length says.
        Some((0, name)) if !name.is_empty() => Some(UnixAddr::Abstract(name.to_vec())),
        Some((0, _)) | None => None,
        Some(_) => {
            let path: Vec<u8> = path.into_iter().take_while(|&c| c != 0).collect();
            Some(UnixAddr::Path(PathBuf::from(std::ffi::OsStr::from_bytes(
                &path,
            ))))
        }
    }
}

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid; len says its size.
    let mut storage: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len describe a valid buffer.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    sockaddr_to(&storage)
}

/// The IP address and port a sockaddr the kernel wrote holds.
fn sockaddr_to(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok(SocketAddr::new(ip, u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = IpAddr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::new(ip, u16::from_be(sin6.sin6_port)))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an IP socket",
        )),
    }
}

/// A Unix socket (stream and listening, or datagram, as `decl` says) bound at `addr`: for a
/// path, with its file's mode and owner as declared, and the file's device and inode.
///
/// A socket file already there is removed when nobody listens on it any more (a connection is
/// refused); one that is in use, or a path that is not a socket, is left alone: `AddrInUse`,
/// `AlreadyExists`. The file is made mode 0600 (less the umask), given its owner, then its mode,
/// and only then does the socket listen, so that nobody connects through wider permissions
/// than declared. (A datagram socket's file is writable from its bind on, but only by archon's
/// user until its mode is set.) An abstract name has no file: one in use is `AddrInUse`.
fn unix_socket(addr: &UnixAddr, decl: &Socket) -> io::Result<(OwnedFd, Option<(u64, u64)>)> {
    let stream = decl.listen.is_stream();
    let kind = if stream {
        libc::SOCK_STREAM
    } else {
        libc::SOCK_DGRAM
    };
    let path = match addr {
        UnixAddr::Abstract(name) => {
            let fd = new_socket(libc::AF_UNIX, kind)?;
            crate::sys::bind_abstract(&fd, name)?;
            if stream {
                listen(&fd, decl.backlog)?;
            }
            return Ok((fd, None));
        }
        UnixAddr::Path(path) => path,
    };
    let sun = crate::sys::sockaddr_un(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if in_use(&sun, kind)? {
                return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => return Err(io::Error::from_raw_os_error(libc::EEXIST)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = new_socket(libc::AF_UNIX, kind)?;
    crate::sys::bind_unix(&fd, &sun)?;
    let meta = std::fs::symlink_metadata(path)?;
    let id = (meta.dev(), meta.ino());
    let finish = || -> io::Result<()> {
        if let Some((uid, gid)) = decl.owner {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(decl.mode))?;
        if stream {
            listen(&fd, decl.backlog)?;
        }
        Ok(())
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok((fd, Some(id)))
}

/// Whether some process holds the Unix socket of type `kind` at `addr`: a connection that is
/// not refused. Non-blocking, so that a listener with a full backlog does not hold archon's loop
/// (it is `EAGAIN`: in use). A socket of the other type answers `EPROTOTYPE`: in use too.
fn in_use(addr: &libc::sockaddr_un, kind: libc::c_int) -> io::Result<bool> {
    let fd = new_socket(libc::AF_UNIX, kind | libc::SOCK_NONBLOCK)?;
    // SAFETY: addr is a valid sockaddr_un of the length given.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Ok(false),
        Some(libc::EAGAIN | libc::EINPROGRESS | libc::EPROTOTYPE) => Ok(true),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_lua::model::{DEFAULT_BACKLOG, DEFAULT_SOCKET_MODE};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn decl(name: &str, listen: Listen) -> Socket {
        Socket {
            name: name.to_string(),
            listen,
            backlog: DEFAULT_BACKLOG,
            mode: DEFAULT_SOCKET_MODE,
            owner: None,
        }
    }

    fn config(src: &str) -> Result<Config, LoadError> {
        archon_lua::load_str("t.lua", src.as_bytes())
    }

    fn tcp(addr: &str) -> Result<BindAddr, Box<dyn std::error::Error>> {
        Ok(BindAddr::Inet {
            transport: Transport::Tcp,
            addr: addr.parse()?,
        })
    }

    #[test]
    fn listen_env_counts_and_names() {
        assert_eq!(listen_env(std::iter::empty()), vec![]);
        assert_eq!(
            listen_env(["web"].into_iter()),
            vec![
                ("LISTEN_FDS", b"1".to_vec()),
                ("LISTEN_FDNAMES", b"web".to_vec())
            ]
        );
        assert_eq!(
            listen_env(["http", "admin", "ctl"].into_iter()),
            vec![
                ("LISTEN_FDS", b"3".to_vec()),
                ("LISTEN_FDNAMES", b"http:admin:ctl".to_vec())
            ]
        );
    }

    #[test]
    fn a_bind_asks_for_the_same_transport_address_and_port() -> TestResult {
        let local = Listen::Tcp("127.0.0.1:8080".parse()?);
        assert!(serves(&local, &tcp("127.0.0.1:8080")?));
        assert!(!serves(&local, &tcp("127.0.0.1:8081")?));
        assert!(!serves(&local, &tcp("0.0.0.0:8080")?));
        let udp = BindAddr::Inet {
            transport: Transport::Udp,
            addr: "127.0.0.1:8080".parse()?,
        };
        assert!(!serves(&local, &udp));
        assert!(serves(&Listen::Udp("127.0.0.1:8080".parse()?), &udp));
        let v6 = Listen::Tcp("[::1]:80".parse()?);
        assert!(serves(&v6, &tcp("[::1]:80")?));
        assert!(!serves(&v6, &tcp("127.0.0.1:80")?));
        let unix = Listen::Unix(UnixAddr::Path("/run/a.sock".into()));
        assert!(serves(&unix, &BindAddr::Unix(b"/run/a.sock".to_vec())));
        assert!(!serves(&unix, &BindAddr::Unix(b"/run/b.sock".to_vec())));
        assert!(!serves(&unix, &tcp("127.0.0.1:80")?));
        Ok(())
    }

    #[test]
    fn peers_are_told_as_ucspi_does() -> TestResult {
        let tcp = Peer::Tcp {
            remote: "[::1]:40312".parse()?,
            local: "[::1]:7000".parse()?,
        };
        assert_eq!(tcp.to_string(), "[::1]:40312");
        assert_eq!(
            peer_env(&tcp),
            vec![
                ("PROTO", b"TCP".to_vec()),
                ("TCPREMOTEIP", b"::1".to_vec()),
                ("TCPREMOTEPORT", b"40312".to_vec()),
                ("TCPLOCALIP", b"::1".to_vec()),
                ("TCPLOCALPORT", b"7000".to_vec()),
            ]
        );
        let unix = Peer::Unix {
            pid: 812,
            uid: 1000,
            gid: 100,
            local: b"@svc".to_vec(),
        };
        assert_eq!(unix.to_string(), "pid 812 uid 1000");
        assert_eq!(
            peer_env(&unix),
            vec![
                ("PROTO", b"UNIX".to_vec()),
                ("UNIXREMOTEPID", b"812".to_vec()),
                ("UNIXREMOTEEUID", b"1000".to_vec()),
                ("UNIXREMOTEEGID", b"100".to_vec()),
                ("UNIXLOCALPATH", b"@svc".to_vec()),
            ]
        );
        Ok(())
    }

    #[test]
    fn accept_takes_a_connection_with_its_peer() -> TestResult {
        let config = config(
            r#"service "a" { argv = {"/bin/true"}, accept = true, sockets = {{tcp = "127.0.0.1:0"}} }"#,
        )?;
        let mut sockets = Sockets::default();
        sockets.apply(&config, "t.lua")?;
        let b = &sockets.of("a")[0];
        set_nonblocking(b.fd(), true)?;
        assert!(accept(b.fd(), b.local())?.is_none());
        let port = sockets.port("a", 0).ok_or("no port")?;
        let client = std::net::TcpStream::connect(("127.0.0.1", port))?;
        let conn = accept(b.fd(), b.local())?.ok_or("no connection")?;
        assert_eq!(conn.peer, client.local_addr()?.to_string());
        assert!(
            conn.env
                .contains(&("TCPLOCALPORT", port.to_string().into_bytes()))
        );
        // SAFETY: fcntl on an fd the connection owns.
        let (fd_flags, fl) = unsafe {
            (
                libc::fcntl(conn.fd.as_raw_fd(), libc::F_GETFD),
                libc::fcntl(conn.fd.as_raw_fd(), libc::F_GETFL),
            )
        };
        assert!(fd_flags & libc::FD_CLOEXEC != 0 && fl & libc::O_NONBLOCK == 0);
        set_nonblocking(b.fd(), false)?;
        Ok(())
    }

    #[test]
    fn the_shim_goes_first_in_ld_preload() {
        let shim = Path::new("/usr/lib/libarchon_bind.so");
        assert_eq!(preload(shim, None), b"/usr/lib/libarchon_bind.so");
        assert_eq!(preload(shim, Some(b"")), b"/usr/lib/libarchon_bind.so");
        assert_eq!(
            preload(shim, Some(b"/a.so:/b.so")),
            b"/usr/lib/libarchon_bind.so /a.so:/b.so"
        );
    }

    #[test]
    fn port_zero_gets_a_port_and_a_reload_keeps_the_fd() -> TestResult {
        let mut sockets = Sockets::default();
        let first = config(
            r#"service "a" { argv = {"/bin/true"}, sockets = {{tcp = "127.0.0.1:0"}} }
               service "b" { argv = {"/bin/true"}, sockets = {{udp = "127.0.0.1:0"}} }"#,
        )?;
        sockets.apply(&first, "t.lua")?;
        let port = sockets.port("a", 0).ok_or("no port")?;
        assert_ne!(port, 0);
        assert_ne!(sockets.port("b", 0), Some(0));
        let fd = sockets.of("a")[0].fd();
        // b goes, a stays (with a new backlog), c comes.
        let second = config(
            r#"service "a" { argv = {"/bin/true"}, sockets = {{tcp = "127.0.0.1:0", backlog = 8}} }
               service "c" { argv = {"/bin/true"}, sockets = {{tcp = "127.0.0.1:0"}} }"#,
        )?;
        sockets.apply(&second, "t.lua")?;
        assert_eq!(sockets.of("a")[0].fd(), fd);
        assert_eq!(sockets.port("a", 0), Some(port));
        assert_eq!(
            String::from_utf8_lossy(&sockets.summary("a")),
            format!("tcp:127.0.0.1:{port}")
        );
        assert!(sockets.summary("b").is_empty());
        assert!(sockets.of("b").is_empty());
        assert_eq!(sockets.of("c").len(), 1);
        let addr = tcp(&format!("127.0.0.1:{port}"))?;
        assert!(sockets.find("a", &addr).is_some());
        assert!(sockets.find("c", &addr).is_none());
        // The socket listens: a connection is queued though nobody accepts.
        std::net::TcpStream::connect(("127.0.0.1", port))?;
        Ok(())
    }

    #[test]
    fn a_socket_that_cannot_be_bound_changes_nothing() -> TestResult {
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = taken.local_addr()?.port();
        let mut sockets = Sockets::default();
        let first =
            config(r#"service "a" { argv = {"/bin/true"}, sockets = {{tcp = "127.0.0.1:0"}} }"#)?;
        sockets.apply(&first, "t.lua")?;
        let held = sockets.port("a", 0);
        let second = config(&format!(
            "service \"a\" {{ argv = {{\"/bin/true\"}}, sockets = {{{{tcp = \"127.0.0.1:0\"}}}} }}\n\
             service \"b\" {{ argv = {{\"/bin/true\"}}, sockets = {{{{tcp = \"127.0.0.1:{port}\"}}}} }}"
        ))?;
        let e = sockets
            .apply(&second, "t.lua")
            .err()
            .ok_or("bound a port in use")?;
        assert_eq!(
            e.to_string(),
            format!(
                "t.lua:2: b: sockets[1]: cannot bind tcp 127.0.0.1:{port}: Address already in use"
            )
        );
        assert_eq!(sockets.port("a", 0), held);
        assert!(sockets.of("b").is_empty());
        Ok(())
    }

    #[test]
    fn a_unix_socket_gets_its_mode_and_goes_with_its_file() -> TestResult {
        let dir = std::env::temp_dir().join(format!("archon-sockets-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("s.sock");
        let mut d = decl("s", Listen::Unix(UnixAddr::Path(path.clone())));
        d.mode = 0o640;
        let b = Bound::bind(&d)?;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o640
        );
        std::os::unix::net::UnixStream::connect(&path)?;
        // In use: a second bind is refused and the file stays.
        let again = Bound::bind(&d).err().and_then(|e| e.raw_os_error());
        assert_eq!(again, Some(libc::EADDRINUSE));
        drop(b);
        assert!(!path.exists());
        // A stale file (nobody listening) is replaced; a file that is no socket is not.
        let stale = std::os::unix::net::UnixListener::bind(&path)?;
        drop(stale);
        let b = Bound::bind(&d)?;
        drop(b);
        std::fs::write(&path, b"x")?;
        let e = Bound::bind(&d).err().and_then(|e| e.raw_os_error());
        assert_eq!(e, Some(libc::EEXIST));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn datagram_and_abstract_unix_sockets() -> TestResult {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram, UnixStream};
        let dir = std::env::temp_dir().join(format!("archon-dgram-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("log.sock");
        let mut d = decl("log", Listen::UnixGram(UnixAddr::Path(path.clone())));
        d.mode = 0o620;
        let b = Bound::bind(&d)?;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o620
        );
        UnixDatagram::unbound()?.send_to(b"hello", &path)?;
        let mut buf = [0u8; 8];
        // SAFETY: recv into a buffer we own, on the socket b holds.
        let n = unsafe { libc::recv(b.fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert_eq!(&buf[..usize::try_from(n)?], b"hello");
        // A stream socket on the same path is refused while the datagram one is held.
        let stream = decl("s", Listen::Unix(UnixAddr::Path(path.clone())));
        let again = Bound::bind(&stream).err().and_then(|e| e.raw_os_error());
        assert_eq!(again, Some(libc::EADDRINUSE));
        drop(b);
        assert!(!path.exists());
        // An abstract name: no file, and a second bind is refused.
        let name = format!("archon-test-{}", std::process::id());
        let d = decl(
            "at",
            Listen::Unix(UnixAddr::Abstract(name.clone().into_bytes())),
        );
        let b = Bound::bind(&d)?;
        let addr = UnixSocketAddr::from_abstract_name(name.as_bytes())?;
        UnixStream::connect_addr(&addr)?;
        let again = Bound::bind(&d).err().and_then(|e| e.raw_os_error());
        assert_eq!(again, Some(libc::EADDRINUSE));
        drop(b);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn shim_is_found_beside_archon() -> TestResult {
        let dir = std::env::temp_dir().join(format!("archon-shim-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::create_dir_all(dir.join("lib"))?;
        let exe = dir.join("bin/archon");
        assert!(default_shim(&exe).is_err());
        std::fs::write(dir.join("bin").join(SHIM_NAME), b"")?;
        assert_eq!(default_shim(&exe)?, dir.join("bin").join(SHIM_NAME));
        std::fs::write(dir.join("lib").join(SHIM_NAME), b"")?;
        assert_eq!(default_shim(&exe)?, dir.join("bin/../lib").join(SHIM_NAME));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
