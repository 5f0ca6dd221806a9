//! The plain values a configuration evaluates to: what the supervisor holds, with no Lua in sight.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::literal;

/// Backoff before the second restart of a crash loop, in ms (`backoff.initial`).
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 100;
/// The longest backoff, in ms (`backoff.max`).
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// How much each backoff grows (`backoff.multiplier`).
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
/// Uptime after which the restart count starts over, in ms (`backoff.reset_after`).
pub const DEFAULT_BACKOFF_RESET_AFTER_MS: u64 = 10_000;
/// More restarts than this within [`DEFAULT_FLAP_WITHIN_MS`]: failed (`flap.restarts`).
pub const DEFAULT_FLAP_RESTARTS: u32 = 5;
/// The flap window, in ms (`flap.within`).
pub const DEFAULT_FLAP_WITHIN_MS: u64 = 10_000;
/// The signal that asks a service to stop (`stop_signal`).
pub const DEFAULT_STOP_SIGNAL: i32 = libc::SIGTERM;
/// How long a service has to stop before SIGKILL, in ms (`stop_timeout`).
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 7_000;
/// The descriptor a `ready = "fd"` service writes its line to (`ready_fd`).
pub const DEFAULT_READY_FD: i32 = 3;
/// How long a service has to become ready, in ms (`ready_timeout`).
pub const DEFAULT_READY_TIMEOUT_MS: u64 = 60_000;
/// Time between health checks, in ms (`health.interval`).
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 10_000;
/// How long one health check may take, in ms (`health.timeout`).
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 5_000;
/// Consecutive failed checks that make a service unhealthy (`health.retries`).
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;
/// Time after a start during which failed checks do not count, in ms (`health.start_period`).
pub const DEFAULT_HEALTH_START_PERIOD_MS: u64 = 0;
/// The listen backlog of a TCP or Unix socket, in connections (`sockets[i].backlog`): how many
/// connections the kernel queues while the service is not accepting, as across a restart. The
/// kernel caps it at `net.core.somaxconn` (4096 since Linux 5.4).
pub const DEFAULT_BACKLOG: u32 = 4096;
/// The largest listen backlog a socket may ask for, in connections.
pub const MAX_BACKLOG: u32 = 65535;
/// The mode of a Unix socket's file (`sockets[i].mode`): anyone may connect, as systemd's
/// `SocketMode=` default.
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;
/// The most sockets one service may declare: they are passed as fds 3 to 34.
pub const MAX_SOCKETS: usize = 32;
/// The first fd the sockets are passed at (`LISTEN_FDS`, `SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;
/// The most instances of an `accept = true` service that run at once (`max_connections`): at
/// the limit archon stops accepting, and connections wait in the backlog.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;
/// The largest `max_connections`: each instance holds one of archon's fds (its pidfd).
pub const MAX_MAX_CONNECTIONS: u32 = 16_384;

/// The byte budget of a service's in-memory log ring (`log.ring`): 64 KiB.
pub const DEFAULT_LOG_RING: usize = 64 * 1024;
/// The largest `log.ring`: 16 MiB.
pub const MAX_LOG_RING: usize = 16 * 1024 * 1024;
/// The size at which a log file is rotated (`log.max_size`): 1 MiB.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 1024 * 1024;
/// The rotated log files kept beside the current one (`log.keep`).
pub const DEFAULT_LOG_KEEP: u32 = 5;
/// The most rotated log files `log.keep` may ask for.
pub const MAX_LOG_KEEP: u32 = 1000;

/// Where a service's captured output goes: its ring, and optionally a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// The ring's byte budget (0: no line is kept in memory).
    pub ring: usize,
    /// The file lines are appended to (`None`: memory only).
    pub file: Option<PathBuf>,
    /// The size in bytes past which the file is rotated.
    pub max_size: u64,
    /// How many rotated files are kept (`file.1` newest to `file.<keep>` oldest).
    pub keep: u32,
}

/// The log of a service that declares none.
pub const DEFAULT_LOG: Log = Log {
    ring: DEFAULT_LOG_RING,
    file: None,
    max_size: DEFAULT_LOG_MAX_SIZE,
    keep: DEFAULT_LOG_KEEP,
};

impl Default for Log {
    fn default() -> Self {
        DEFAULT_LOG
    }
}

/// An evaluated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Every declaration, in the order the file made them.
    pub services: Vec<Service>,
}

impl Config {
    /// The declaration named `name`.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Whether a declaration is a long-running service or a one-shot task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// `service "name" {...}`: kept running.
    Service,
    /// `task "name" {...}`: runs to completion; exit 0 is done.
    Task,
}

impl UnitKind {
    /// `service` or `task`, as the file and the protocol spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Service => "service",
            UnitKind::Task => "task",
        }
    }
}

/// The identity a service runs as, resolved when the file is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// The supplementary groups, for `setgroups`.
    pub groups: Vec<u32>,
}

/// One resource limit, for `prlimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// The resource, a `libc::RLIMIT_*` value.
    pub resource: i32,
    /// The soft limit (`libc::RLIM_INFINITY` for none).
    pub soft: u64,
    /// The hard limit (`libc::RLIM_INFINITY` for none).
    pub hard: u64,
}

/// When a service is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Whatever the exit (the default for services).
    Always,
    /// Only after an exit that is not 0 (or a death by signal).
    OnFailure,
    /// Never (the default for tasks).
    Never,
}

impl Restart {
    /// The spelling in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "never",
        }
    }
}

/// How restarts of a crash loop are spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the second restart (the first one is immediate), in ms.
    pub initial_ms: u64,
    /// The longest delay, in ms.
    pub max_ms: u64,
    /// Each delay is the previous one times this (at least 1).
    pub multiplier: f64,
    /// After this much uptime, the next crash counts as the first again, in ms.
    pub reset_after_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            max_ms: DEFAULT_BACKOFF_MAX_MS,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            reset_after_ms: DEFAULT_BACKOFF_RESET_AFTER_MS,
        }
    }
}

/// The flap limit: more than `restarts` restarts within `within_ms` and the service is failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flap {
    /// The number of restarts allowed in the window.
    pub restarts: u32,
    /// The window, in ms.
    pub within_ms: u64,
}

impl Default for Flap {
    fn default() -> Self {
        Flap {
            restarts: DEFAULT_FLAP_RESTARTS,
            within_ms: DEFAULT_FLAP_WITHIN_MS,
        }
    }
}

/// How archon learns that a service is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// As soon as its program was executed.
    Exec,
    /// When it sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// When it writes a line to this descriptor.
    Fd(i32),
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Run this command; exit 0 is healthy.
    Command(Vec<Vec<u8>>),
    /// Connect to this address; a connection is healthy.
    Tcp(TcpTarget),
}

/// The address a `tcp` health check connects to: an IP address and a port, which may be the
/// port of a declared socket (`"127.0.0.1:${db.port}"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTarget {
    /// The IP address.
    pub ip: std::net::IpAddr,
    /// The port.
    pub port: Port,
}

/// A port as the file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// A number.
    Number(u16),
    /// A reference, `${db.port}`: the text between `${` and `}` (see [`crate::refs`]),
    /// resolved to the port the socket is bound to each time it is used.
    Of(Vec<u8>),
}

impl TcpTarget {
    /// The address, with `port` for a reference.
    pub fn with_port(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }
}

impl std::fmt::Display for TcpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            std::net::IpAddr::V4(ip) => write!(f, "{ip}:")?,
            std::net::IpAddr::V6(ip) => write!(f, "[{ip}]:")?,
        }
        match &self.port {
            Port::Number(n) => write!(f, "{n}"),
            Port::Of(r) => write!(f, "${{{}}}", String::from_utf8_lossy(r)),
        }
    }
}

/// A service's health check.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The check.
    pub check: Check,
    /// Time between checks, in ms.
    pub interval_ms: u64,
    /// How long one check may take, in ms.
    pub timeout_ms: u64,
    /// Consecutive failures that make the service unhealthy.
    pub retries: u32,
    /// Time after a start during which failures do not count, in ms.
    pub start_period_ms: u64,
}

/// A Unix socket's address: a file, or a name in the abstract namespace (no file).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixAddr {
    /// `"/run/web.sock"`: an absolute path, where the socket's file is made.
    Path(PathBuf),
    /// `"@web"`: the abstract name `web` (the bytes after `@`), which has no file, mode or
    /// owner, and goes with the socket's last descriptor.
    Abstract(Vec<u8>),
}

impl UnixAddr {
    /// As the file writes it: the path, or `@` and the name.
    pub fn as_bytes(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        match self {
            UnixAddr::Path(p) => p.as_os_str().as_bytes().to_vec(),
            UnixAddr::Abstract(name) => [b"@".as_slice(), name].concat(),
        }
    }

    /// The path, for a socket that has a file.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            UnixAddr::Path(p) => Some(p),
            UnixAddr::Abstract(_) => None,
        }
    }
}

impl std::fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.as_bytes()))
    }
}

/// Where a socket is bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listen {
    /// `tcp = "127.0.0.1:8080"`: a listening TCP socket (port 0: archon picks a free one).
    Tcp(SocketAddr),
    /// `udp = "[::]:5353"`: a UDP socket (port 0: archon picks a free one).
    Udp(SocketAddr),
    /// `unix = "/run/web.sock"` or `"@web"`: a listening Unix stream socket.
    Unix(UnixAddr),
    /// `unixgram = "/run/log.sock"` or `"@log"`: a Unix datagram socket.
    UnixGram(UnixAddr),
}

impl Listen {
    /// `tcp`, `udp`, `unix` or `unixgram`: the field that declares it (the first three are also
    /// the words of a `Bind` request).
    pub fn transport(&self) -> &'static str {
        match self {
            Listen::Tcp(_) => "tcp",
            Listen::Udp(_) => "udp",
            Listen::Unix(_) => "unix",
            Listen::UnixGram(_) => "unixgram",
        }
    }

    /// Whether it listens for connections (TCP, Unix stream), rather than takes datagrams.
    pub fn is_stream(&self) -> bool {
        matches!(self, Listen::Tcp(_) | Listen::Unix(_))
    }

    /// The Unix address of a Unix socket.
    pub fn unix(&self) -> Option<&UnixAddr> {
        match self {
            Listen::Unix(a) | Listen::UnixGram(a) => Some(a),
            Listen::Tcp(_) | Listen::Udp(_) => None,
        }
    }

    /// The port of a TCP or UDP socket.
    pub fn port(&self) -> Option<u16> {
        match self {
            Listen::Tcp(a) | Listen::Udp(a) => Some(a.port()),
            Listen::Unix(_) | Listen::UnixGram(_) => None,
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) | Listen::Udp(a) => write!(f, "{} {a}", self.transport()),
            Listen::Unix(a) | Listen::UnixGram(a) => write!(f, "{} {a}", self.transport()),
        }
    }
}

/// One socket a service declares: archon binds it when the configuration is loaded, keeps it
/// across the service's restarts, and passes it as `LISTEN_FDS` (and to the bind shim).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Socket {
    /// Its name, for `LISTEN_FDNAMES` and `${service.name.port}`: 1 to 64 bytes of letters,
    /// digits and `_ . @ -`. A service's only socket is named after the service by default.
    pub name: String,
    /// Where it is bound.
    pub listen: Listen,
    /// The listen backlog, in connections (TCP and Unix stream sockets; datagram sockets do
    /// not listen).
    pub backlog: u32,
    /// A Unix socket file's mode (a socket bound to a path).
    pub mode: u32,
    /// A Unix socket file's owner and group (`None`: archon's; a socket bound to a path).
    pub owner: Option<(u32, u32)>,
}

/// Whether `LD_PRELOAD` brings in the bind shim, `libarchon_bind.so`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum BindShim {
    /// `bind_shim = false` (the default).
    #[default]
    Off,
    /// `bind_shim = true`: the shim installed beside archon (`../lib/`, or archon's own
    /// directory in a build tree).
    Default,
    /// `bind_shim = "/path/libarchon_bind.so"`.
    Path(PathBuf),
}

/// The settings of a [`Service`] that most services leave at their defaults. Thousands of
/// services are each kept in memory, so these are kept apart, in a box made only for a service
/// that sets one of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extra {
    /// Restart spacing.
    pub backoff: Backoff,
    /// The flap limit.
    pub flap: Flap,
    /// Hard dependencies, as written (deduplicated).
    pub requires: Vec<String>,
    /// Everything this starts after: `after` ∪ `requires` ∪ every X whose `before` names this,
    /// deduplicated, in that order.
    pub after: Vec<String>,
    /// The working directory (`None`: archon's).
    pub cwd: Option<PathBuf>,
    /// The identity to run as (`None`: archon's).
    pub user: Option<Credentials>,
    /// The file mode creation mask (`None`: archon's).
    pub umask: Option<u32>,
    /// Resource limits, sorted by resource name.
    pub rlimits: Vec<Rlimit>,
    /// The nice value (`None`: archon's).
    pub nice: Option<i32>,
    /// `before` as written (deduplicated); already folded into the others' `after`.
    pub before: Vec<String>,
    /// For `ready = "notify"`: the longest time between two `WATCHDOG=1`, in ms.
    pub watchdog_ms: Option<u64>,
    /// The sockets archon binds for it, passed from fd 3 on.
    pub sockets: Vec<Socket>,
    /// Whether the bind shim is preloaded.
    pub bind_shim: BindShim,
}

/// Every [`Extra`] setting at its default.
static NO_EXTRA: Extra = Extra {
    backoff: Backoff {
        initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
        max_ms: DEFAULT_BACKOFF_MAX_MS,
        multiplier: DEFAULT_BACKOFF_MULTIPLIER,
        reset_after_ms: DEFAULT_BACKOFF_RESET_AFTER_MS,
    },
    flap: Flap {
        restarts: DEFAULT_FLAP_RESTARTS,
        within_ms: DEFAULT_FLAP_WITHIN_MS,
    },
    requires: Vec::new(),
    after: Vec::new(),
    cwd: None,
    user: None,
    umask: None,
    rlimits: Vec::new(),
    nice: None,
    before: Vec::new(),
    watchdog_ms: None,
    sockets: Vec::new(),
    bind_shim: BindShim::Off,
};

/// A service's [`Extra`] settings: nothing until one is set (through `DerefMut`, which makes the
/// box); reading gives the defaults meanwhile. Two are equal when their settings are.
#[derive(Debug, Clone, Default)]
pub struct Extras(Option<Box<Extra>>);

impl std::ops::Deref for Extras {
    type Target = Extra;

    fn deref(&self) -> &Extra {
        self.0.as_deref().unwrap_or(&NO_EXTRA)
    }
}

impl std::ops::DerefMut for Extras {
    fn deref_mut(&mut self) -> &mut Extra {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Extras {
    fn eq(&self, other: &Extras) -> bool {
        **self == **other
    }
}

/// One declaration: `service "name" {...}` or `task "name" {...}`, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The name (checked by `archon_proto::name::check`).
    pub name: String,
    /// Service or task.
    pub kind: UnitKind,
    /// The line of the declaration in the file.
    pub line: u32,
    /// The program and its arguments; never empty.
    pub argv: Vec<Vec<u8>>,
    /// Variables added to the base environment, sorted by name.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The settings most services leave as they are: boxed, and only once one is set.
    pub extras: Extras,
    /// The restart policy.
    pub restart: Restart,
    /// The signal that asks it to stop.
    pub stop_signal: i32,
    /// Time between the stop signal and SIGKILL, in ms.
    pub stop_timeout_ms: u64,
    /// `false`: declared and shown, never started.
    pub enabled: bool,
    /// `false`: started only when asked, or when something that requires it starts.
    pub autostart: bool,
    /// Started by the first connection or datagram on one of its sockets, when it is down
    /// (services with sockets only; `autostart` is then `false`).
    pub on_demand: bool,
    /// archon accepts each connection on its sockets (all stream sockets) and starts one
    /// instance of the service per connection, with the connection as its stdin, stdout and fd
    /// 3 (`accept = true`, systemd's `Accept=yes`, inetd's `nowait`).
    pub accept: bool,
    /// For `accept`: the most instances at once; at the limit archon stops accepting.
    pub max_connections: u32,
    /// When it fails, archon stops everything and exits 1.
    pub critical: bool,
    /// A task of the early boot: every unit that is not early starts only once the early tasks
    /// are done (or have failed). Tasks only.
    pub early: bool,
    /// How readiness is known.
    pub ready: Ready,
    /// Time it has to become ready, in ms.
    pub ready_timeout_ms: u64,
    /// The health check (services only).
    pub health: Option<Box<Health>>,
    /// Where its output goes.
    pub log: Option<Box<Log>>,
}

impl Service {
    /// Where its output goes: its `log`, or [`DEFAULT_LOG`] (boxed only when it differs: most
    /// services keep the default, and a service's declaration is kept for each of thousands).
    pub fn log(&self) -> &Log {
        self.log.as_deref().unwrap_or(&DEFAULT_LOG)
    }

    /// A declaration with every field at its default, as `argv` alone would give.
    pub fn new(name: &str, kind: UnitKind, argv: Vec<Vec<u8>>) -> Service {
        Service {
            name: name.to_string(),
            kind,
            line: 0,
            argv,
            env: Vec::new(),
            extras: Extras::default(),
            restart: match kind {
                UnitKind::Service => Restart::Always,
                UnitKind::Task => Restart::Never,
            },
            stop_signal: DEFAULT_STOP_SIGNAL,
            stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
            enabled: true,
            autostart: true,
            on_demand: false,
            accept: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            critical: false,
            early: false,
            ready: Ready::Exec,
            ready_timeout_ms: DEFAULT_READY_TIMEOUT_MS,
            health: None,
            log: None,
        }
    }

    /// Whether `self` and `other` say the same in every field but `line`: a reload restarts a
    /// service whose declaration changed, not one that merely moved in the file.
    pub fn same_settings(&self, other: &Service) -> bool {
        *self
            == Service {
                line: self.line,
                ..other.clone()
            }
    }

    /// Every field with its effective value, written as Lua would read it back (`{"a", "b"}`,
    /// `"always"`, `"7000ms"`, `nil` for an unset optional field). For the `Config` request.
    ///
    /// The user, group and groups are the resolved numbers; `after` is the normalized list.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        self.settings_bound(&[])
    }

    /// [`settings`](Self::settings), with the sockets at the addresses they are bound to:
    /// `bound[i]`, when given, replaces the address of `sockets[i]` (whose port 0 became the
    /// port the kernel picked).
    pub fn settings_bound(&self, bound: &[Option<Listen>]) -> Vec<(&'static str, String)> {
        use literal::{duration, list, opt, string};
        let user = self.extras.user.as_ref();
        vec![
            ("argv", list(self.argv.iter().map(|a| string(a)))),
            ("env", literal::env(&self.env)),
            (
                "cwd",
                opt(self.extras.cwd.as_ref().map(|p| {
                    use std::os::unix::ffi::OsStrExt;
                    string(p.as_os_str().as_bytes())
                })),
            ),
            ("user", opt(user.map(|c| c.uid.to_string()))),
            ("group", opt(user.map(|c| c.gid.to_string()))),
            (
                "groups",
                opt(user.map(|c| list(c.groups.iter().map(u32::to_string)))),
            ),
            (
                "umask",
                opt(self.extras.umask.map(|m| format!("\"{m:03o}\""))),
            ),
            ("rlimits", literal::rlimits(&self.extras.rlimits)),
            ("nice", opt(self.extras.nice.map(|n| n.to_string()))),
            ("restart", string(self.restart.as_str().as_bytes())),
            (
                "backoff",
                format!(
                    "{{initial = {}, max = {}, multiplier = {}, reset_after = {}}}",
                    duration(self.extras.backoff.initial_ms),
                    duration(self.extras.backoff.max_ms),
                    literal::number(self.extras.backoff.multiplier),
                    duration(self.extras.backoff.reset_after_ms)
                ),
            ),
            (
                "flap",
                format!(
                    "{{restarts = {}, within = {}}}",
                    self.extras.flap.restarts,
                    duration(self.extras.flap.within_ms)
                ),
            ),
            ("stop_signal", literal::signal(self.stop_signal)),
            ("stop_timeout", duration(self.stop_timeout_ms)),
            ("enabled", self.enabled.to_string()),
            ("autostart", self.autostart.to_string()),
            ("on_demand", self.on_demand.to_string()),
            ("accept", self.accept.to_string()),
            (
                "max_connections",
                opt(self.accept.then(|| self.max_connections.to_string())),
            ),
            ("critical", self.critical.to_string()),
            ("early", self.early.to_string()),
            (
                "requires",
                list(self.extras.requires.iter().map(|s| string(s.as_bytes()))),
            ),
            (
                "after",
                list(self.extras.after.iter().map(|s| string(s.as_bytes()))),
            ),
            (
                "before",
                list(self.extras.before.iter().map(|s| string(s.as_bytes()))),
            ),
            (
                "ready",
                string(match self.ready {
                    Ready::Exec => b"exec",
                    Ready::Notify => b"notify",
                    Ready::Fd(_) => b"fd",
                }),
            ),
            (
                "ready_fd",
                opt(match self.ready {
                    Ready::Fd(fd) => Some(fd.to_string()),
                    _ => None,
                }),
            ),
            ("ready_timeout", duration(self.ready_timeout_ms)),
            ("watchdog", opt(self.extras.watchdog_ms.map(duration))),
            ("health", opt(self.health.as_deref().map(literal::health))),
            ("sockets", literal::sockets(&self.extras.sockets, bound)),
            (
                "bind_shim",
                match &self.extras.bind_shim {
                    BindShim::Off => "false".to_string(),
                    BindShim::Default => "true".to_string(),
                    BindShim::Path(p) => {
                        use std::os::unix::ffi::OsStrExt;
                        string(p.as_os_str().as_bytes())
                    }
                },
            ),
            ("log", literal::log(self.log())),
        ]
    }
}

/// The names `rlimits` accepts, sorted, with their `RLIMIT_*` resources.
// The casts: glibc types these as an unsigned enum, musl as int; prlimit takes either.
#[allow(clippy::unnecessary_cast)]
pub(crate) const RESOURCES: [(&str, i32); 15] = [
    ("as", libc::RLIMIT_AS as i32),
    ("core", libc::RLIMIT_CORE as i32),
    ("cpu", libc::RLIMIT_CPU as i32),
    ("data", libc::RLIMIT_DATA as i32),
    ("fsize", libc::RLIMIT_FSIZE as i32),
    ("locks", libc::RLIMIT_LOCKS as i32),
    ("memlock", libc::RLIMIT_MEMLOCK as i32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as i32),
    ("nice", libc::RLIMIT_NICE as i32),
    ("nofile", libc::RLIMIT_NOFILE as i32),
    ("nproc", libc::RLIMIT_NPROC as i32),
    ("rss", libc::RLIMIT_RSS as i32),
    ("rtprio", libc::RLIMIT_RTPRIO as i32),
    ("sigpending", libc::RLIMIT_SIGPENDING as i32),
    ("stack", libc::RLIMIT_STACK as i32),
];

#[cfg(test)]
mod extras_tests {

    #[test]
    fn a_service_gets_its_extras_box_only_when_it_sets_one() -> Result<(), String> {
        let config = crate::load_str(
            "t",
            b"service 'plain' { argv = {'/bin/true'}, user = nil }\n\
              service 'dir' { argv = {'/bin/true'}, cwd = '/srv' }\n",
        )
        .map_err(|e| e.to_string())?;
        let get = |name: &str| config.get(name).ok_or(format!("no {name}"));
        let (plain, dir) = (get("plain")?, get("dir")?);
        assert!(plain.extras.0.is_none());
        assert_eq!(plain.extras.cwd, None);
        assert!(dir.extras.0.is_some());
        assert_eq!(
            dir.extras.cwd.as_deref(),
            Some(std::path::Path::new("/srv"))
        );
        // What a service without a box reads is what a new box holds.
        assert_eq!(super::NO_EXTRA, super::Extra::default());
        // Equal by their settings, boxed or not.
        let mut boxed = plain.clone();
        boxed.extras.nice = None;
        assert!(boxed.extras.0.is_some() && boxed == *plain);
        Ok(())
    }
}
