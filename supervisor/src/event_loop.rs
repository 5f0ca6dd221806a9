//! The event loop: one `mio::Poll` that owns the listening socket, the clients, the signals and a
//! pidfd per process, with timers as its timeout. It is the only place archon blocks.
//!
//! Every wake-up is dispatched by token to a handler that does the kernel's side (accept, read,
//! reap, signal) and tells the [`Table`] what happened; the table says which replies are due.
//! Every change the table and the manager make comes back as an [`Event`], stamped with who
//! caused it (the request's client, from its `SO_PEERCRED`, or archon) and handed to
//! [`Events`]: the history, and the subscribers' streams, flushed once per turn.
//! Tokens carry their owner in the low two bits (listener and signals, client, pidfd) and its id
//! above, so no lookup table is needed and a stale token finds nothing.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use archon_proto::limits::{
    BIND_CONNECTION_MS, MAX_BIND_CLIENTS, MAX_CLIENTS, MAX_ENDED_KEPT, PROTOCOL_VERSION,
};
use archon_proto::{
    Cause, Command, Event, EventKind, Id, Kind, Power, ProcState, Reply, Request, Status,
    StreamItem, Target,
};
use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events as PollEvents, Interest, Poll, Token};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::WithRawSiginfo;

use crate::args::Options;
use crate::cgroup::Cgroups;
use crate::control::{self, Client, Incoming, ReadOutcome};
use crate::events::{Events, Offer};
use crate::leftovers::{Leftovers, Phase};
use crate::listen::{BindListening, Listening};
use crate::pid1::{Role, SignalAction};
use crate::service::{Manager, UnitId};
use crate::sockets::Sockets;
use crate::spawn::{Child, Exec, SpawnError, Spawner, Step};
use crate::sys;
use crate::table::{Admission, ClientId, PendingRun, Proc, ReplyTo, Table, Waiter};
use crate::timers::{TimerEvent, TimerKey, Timers};
use crate::{debug, error, info, warn};

/// Reads from one client per turn of the loop before others get a turn.
const READS_PER_TURN: usize = 16;

/// Requests taken from one client per turn of the loop before others get a turn: a client that
/// floods requests is served as fast as the others, not instead of them.
const REQUESTS_PER_TURN: usize = 64;

/// Connections taken from one listening socket per turn of the loop before the other events get
/// a turn: clients that connect, ask and close in a tight loop (the bind shim in a program that
/// binds again and again) must not keep archon from reading the ends of their connections.
const ACCEPTS_PER_TURN: usize = 64;

/// Events taken from one `poll`.
const EVENTS_CAPACITY: usize = 256;

/// The configuration file root's archon reads when none is given, if it exists.
const DEFAULT_CONFIG: &str = "/etc/archon/archon.lua";

/// Variables that concern archon itself, never passed on to its children.
const PRIVATE_ENV: [&str; 6] = [
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

const TAG_FIXED: usize = 0;
const TAG_CLIENT: usize = 1;
const TAG_PIDFD: usize = 2;
const TAG_UNIT: usize = 3;
const LISTENER: Token = Token(TAG_FIXED);
const SIGNALS: Token = Token((1 << 2) | TAG_FIXED);
/// The pidfds of every process left at the end of process 1 (see `event_loop/pid1.rs`).
const EVERYONE: Token = Token((2 << 2) | TAG_FIXED);
/// The bind socket's listener (see `sockets`).
const BIND_LISTENER: Token = Token((3 << 2) | TAG_FIXED);
/// The inotify fd of the Lua handlers' `watch` (see `event_loop/lua.rs`).
const LUA_WATCH: Token = Token((8 << 2) | TAG_FIXED);

fn token(tag: usize, id: u64) -> Token {
    Token(((id as usize) << 2) | tag)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).desc().to_string()
}

/// The signals archon handles when it has no main command.
const MANAGER_SIGNALS: [i32; 7] = [SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT];

/// A shutdown in progress.
struct Shutdown {
    /// A second SIGTERM/SIGINT came: everything was killed at once.
    forced: bool,
    /// What is done about the children archon did not start.
    leftovers: Leftovers,
    /// The end of the leftovers' current phase.
    leftovers_timer: TimerKey,
    /// As process 1 going down: every process left in the PID namespace being ended.
    everyone: Option<pid1::Everyone>,
}

/// Why a shutdown began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShutdownCause {
    /// SIGTERM or SIGINT, asking archon to exit.
    Signal(i32),
    /// A power off, reboot or halt, asked by a signal (as process 1) or by a request.
    Power(Power, Option<i32>),
    /// A critical unit failed.
    Critical,
    /// The main command ended, or could not be started.
    MainEnded,
}

/// Why the loop ended, for `main` to turn into an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// SIGTERM or SIGINT asked for it.
    Stopped,
    /// A critical unit failed; the service manager's exit code.
    Critical(u8),
    /// The main command ended so.
    MainEnded(Status),
    /// The main command could not be executed: the errno of its exec.
    MainNotExecuted(i32),
    /// The main command could not be started for another reason (no process could be made).
    MainNotStarted,
    /// A power off, reboot or halt was asked for.
    Power(Power),
}

impl Outcome {
    /// The power off, reboot or halt asked for, if that is how it ended.
    pub fn power(self) -> Option<Power> {
        match self {
            Outcome::Power(p) => Some(p),
            _ => None,
        }
    }
}

/// Signals, read in the loop: the handlers write to a socket pair whose read end the poll
/// watches. Each comes with its `siginfo_t`, which says who sent it: one that archon raised
/// itself (a SIGPIPE from a write of its own) is not forwarded to the main command.
type Signals = SignalDelivery<UnixStream, WithRawSiginfo>;

/// Installs handlers for `sigs` that the loop reads (both ends of the pair close-on-exec).
fn signals(sigs: impl IntoIterator<Item = i32>) -> io::Result<Signals> {
    let (read, write) = UnixStream::pair()?;
    SignalDelivery::with_pipe(read, OwnedFd::from(write), WithRawSiginfo, sigs)
}

/// archon's state: everything the loop owns.
pub struct Supervisor {
    /// archon's own program, as it was started: what a re-exec executes by default.
    exe: Option<PathBuf>,
    poll: Poll,
    listening: Listening,
    listener: UnixListener,
    /// The bind socket, which serves `Bind` to any process.
    bind_listening: BindListening,
    bind_listener: UnixListener,
    signals: Signals,
    clients: HashMap<ClientId, Client>,
    next_client: ClientId,
    table: Table,
    timers: Timers,
    base_env: Vec<(Vec<u8>, Vec<u8>)>,
    spawner: Spawner,
    devnull: OwnedFd,
    /// An fd kept spare so that, out of fds, archon can still accept and refuse a connection
    /// instead of leaving it in the backlog to wake the loop forever.
    spare_fd: Option<OwnedFd>,
    opts: Options,
    euid: u32,
    shutdown: Option<Shutdown>,
    /// Clients to serve before the next sleep: input left after their read budget, or room again
    /// for requests after replies went out.
    more_to_read: Vec<ClientId>,
    /// Listening sockets (archon's, the bind socket) with connections left to accept after
    /// [`ACCEPTS_PER_TURN`]: accepted before the next sleep, since no new edge will say so.
    more_to_accept: [bool; 2],
    /// The services and tasks of the configuration.
    services: Manager,
    /// What the loop holds for each unit.
    units: HashMap<UnitId, Box<units::UnitRt>>,
    /// Units' processes by pid: main processes and health checks.
    pids: HashMap<i32, units::PidOwner>,
    /// The instances of the acceptors, by number (see `event_loop/units.rs`).
    instances: HashMap<u64, units::Instance>,
    /// The number of the next instance.
    next_instance: u64,
    /// Acceptors with connections perhaps left to accept after [`ACCEPTS_PER_TURN`].
    accepts_pending: Vec<UnitId>,
    /// Units whose main process's exec is pending (at most [`crate::spawn::MAX_PIPELINED`]).
    execs_pending: Vec<UnitId>,
    /// archon's cgroup subtree, when a writable cgroup v2 hierarchy exists.
    cgroups: Option<Cgroups>,
    /// The configuration file (or the demo), read again by `Reload` and SIGHUP.
    config_source: Option<units::Source>,
    /// Why the loop is to end, once it is known.
    outcome: Option<Outcome>,
    /// The main command of an entrypoint (`-- CMD`).
    main: Option<entry::MainCommand>,
    /// A child has ended since the leftovers were last looked for: its own children, if any,
    /// are archon's now.
    rescan_leftovers: bool,
    /// The history of events, and the connections that stream them.
    events: Events,
    /// A burst of starts is under way (at boot, after a reload): once no exec is pending, the
    /// memory it left behind is given back ([`crate::memory`]).
    release_when_settled: bool,
    /// archon's open files limit: log pipes are made only while far enough below it.
    nofile: u64,
    /// Log pipes were refused for lack of fds (warned once).
    log_fds_short: bool,
    /// What archon is: a process among others, or process 1 of a container or of the machine.
    role: Role,
    /// The sockets the configuration declares, bound.
    sockets: Sockets,
    /// The bind shim `bind_shim = true` preloads, or why there is none.
    shim: Result<PathBuf, String>,
    /// The connections that follow a service's log lines.
    followers: crate::logs::Followers,
    /// Log pipes to read again before the next sleep: their turn's budget was spent.
    logs_pending: Vec<(UnitId, usize)>,
    /// Where log pipes are read into: [`crate::logs::LOG_READ_PER_TURN`] bytes, allocated at the
    /// first read.
    log_buf: Vec<u8>,
    /// The configuration's Lua handlers, when it declares any (see `event_loop/lua.rs`).
    lua: Option<Box<lua::LuaRt>>,
}

mod entry;
mod lua;
mod pid1;
mod reexec;
mod units;

pub use units::{Source as ConfigSource, evaluate as evaluate_config};

/// Why archon cannot start.
#[derive(Debug)]
pub enum StartError {
    /// No socket path can be worked out.
    NoPath(archon_proto::socket::NoSocketPath),
    /// Listening failed.
    Listen(crate::listen::ListenError),
    /// A system call failed while setting up.
    Setup(&'static str, io::Error),
    /// The configuration file is broken.
    Config(archon_lua::LoadError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::NoPath(e) => write!(f, "{e}"),
            StartError::Listen(e) => write!(f, "{e}"),
            StartError::Setup(what, e) => write!(f, "cannot {what}: {e}"),
            StartError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl Supervisor {
    /// Sets everything up: socket, signals, subreaper. archon is listening when this returns.
    pub fn new(opts: Options, role: Role) -> Result<Supervisor, StartError> {
        Supervisor::build(opts, role, None).map(|(s, _)| s)
    }

    /// Sets up a new image of archon from the state its previous image handed over (see
    /// [`crate::reexec`]): the same sockets, processes, units, connections and history.
    /// The fds of `bank` that nothing takes are closed before this returns.
    pub fn restore(
        opts: Options,
        role: Role,
        state: crate::reexec::State,
        mut bank: crate::reexec::FdBank,
    ) -> Result<Supervisor, StartError> {
        let (mut s, unknown) = Supervisor::build(opts, role, Some((&state, &mut bank)))?;
        s.restore_rest(state, &mut bank, unknown);
        Ok(s)
    }

    fn build(
        opts: Options,
        role: Role,
        mut carried: Option<(&crate::reexec::State, &mut crate::reexec::FdBank)>,
    ) -> Result<(Supervisor, Vec<(String, crate::service::Carried)>), StartError> {
        let euid = nix::unistd::geteuid().as_raw();
        let config_source = config_source(&opts, euid);
        // A broken file stops archon before it touches the socket; a new image goes on without
        // it, since its processes must not be lost (they are kept as daemons).
        let (config, handlers) = match &config_source {
            Some(source) => match (units::evaluate(source), carried.is_some()) {
                (Ok(loaded), _) => (Some(loaded.config), loaded.handlers),
                (Err(e), false) => return Err(StartError::Config(e)),
                (Err(e), true) => {
                    error!("re-exec: {e}: the services are kept as processes");
                    (None, None)
                }
            },
            None => (None, None),
        };
        let path = archon_proto::socket::socket_path(
            opts.socket.as_deref(),
            |k| std::env::var_os(k),
            euid,
        )
        .map_err(StartError::NoPath)?;
        let setup = |what| move |e| StartError::Setup(what, e);
        let (nofile, children_nofile) =
            sys::raise_nofile_limit().map_err(setup("raise the open files limit"))?;
        if sys::is_pid1() {
            // Every orphan of the namespace comes to process 1 without asking.
            info!("running as process 1: archon reaps every orphan of its PID namespace");
        } else if let Err(e) = sys::set_child_subreaper() {
            warn!("cannot become a child subreaper ({e}): orphans will not be reaped by archon");
        }
        let poll = Poll::new().map_err(setup("create the poll"))?;
        let listening = match carried.as_mut() {
            Some((st, bank)) => reexec::adopt_listening(st, bank),
            None => None,
        };
        let listening = match listening {
            Some(l) => l,
            None => crate::listen::listen(&path).map_err(StartError::Listen)?,
        };
        if role.is_pid1() {
            // The emergency mode after a fault serves it (see `pid1::fault`).
            crate::pid1::fault::set_control_socket(listening.listener.as_raw_fd());
        }
        let std_listener = listening
            .listener
            .try_clone()
            .map_err(setup("clone the listener"))?;
        let mut listener = UnixListener::from_std(std_listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(setup("register the listener"))?;
        let bind_listening = match carried.as_mut() {
            Some((st, bank)) => reexec::adopt_bind_listening(st, bank),
            None => None,
        };
        let bind_listening = match bind_listening {
            Some(l) => l,
            None => crate::listen::listen_bind(&listening).map_err(StartError::Listen)?,
        };
        let std_listener = bind_listening
            .listener
            .try_clone()
            .map_err(setup("clone the bind listener"))?;
        let mut bind_listener = UnixListener::from_std(std_listener);
        poll.registry()
            .register(&mut bind_listener, BIND_LISTENER, Interest::READABLE)
            .map_err(setup("register the bind listener"))?;
        // The sockets once archon holds its own socket's lock: a second archon on the same path
        // says so, rather than that the first one's ports are in use.
        let mut sockets = Sockets::default();
        let mut unknown = Vec::new();
        let services = match (config, &config_source) {
            (Some(config), Some(source)) => {
                if let Some((st, bank)) = carried.as_mut() {
                    reexec::adopt_sockets(&mut sockets, &config, st, bank);
                }
                sockets
                    .apply(&config, &source.name())
                    .map_err(StartError::Config)?;
                match carried.as_ref() {
                    Some((st, _)) => {
                        let lives = st.units.iter().map(|u| (u.name.clone(), u.life.clone()));
                        let (m, left) = Manager::restored(config, lives.collect(), now_ms());
                        unknown = left;
                        m
                    }
                    None => units::manager(config),
                }
            }
            _ => {
                if let Some((st, _)) = carried.as_ref() {
                    unknown = st
                        .units
                        .iter()
                        .map(|u| (u.name.clone(), u.life.clone()))
                        .collect();
                }
                Manager::default()
            }
        };
        let main = opts.command.clone().map(entry::MainCommand::new);
        let mut signals = if main.is_some() {
            for sig in [libc::SIGTTIN, libc::SIGTTOU] {
                sys::ignore_signal(sig).map_err(setup("ignore SIGTTIN and SIGTTOU"))?;
            }
            signals(crate::entry::FORWARDED.iter().copied().chain([SIGCHLD]))
        } else {
            let init = role
                .is_pid1()
                .then_some(crate::pid1::INIT_SIGNALS)
                .into_iter()
                .flatten();
            signals(MANAGER_SIGNALS.into_iter().chain(init))
        }
        .map_err(setup("install signal handlers"))?;
        poll.registry()
            .register(signals.get_read_mut(), SIGNALS, Interest::READABLE)
            .map_err(setup("register the signals"))?;
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(setup("open /dev/null"))?;
        let spare_fd = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
        let mut spawner = Spawner::new().map_err(setup("map the child stack"))?;
        // Children get the open files limit archon was given, not the one it raised for itself.
        spawner.set_children_nofile(
            carried
                .as_ref()
                .and_then(|(st, _)| st.children_nofile)
                .unwrap_or(children_nofile),
        );

        let base_env = base_environment(&listening.path, &bind_listening.path);
        let exe = crate::reexec::own_exe();
        let shim = exe
            .clone()
            .ok_or_else(|| "bind_shim: cannot find archon's own path".to_string())
            .and_then(|exe| crate::sockets::default_shim(&exe));
        let cgroups = if services.ids().next().is_some() {
            match Cgroups::discover() {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!("no cgroups ({e}): stopping a service kills its process group only");
                    None
                }
            }
        } else {
            None
        };

        info!(
            "listening on {} (max runs {}, run queue {}, stop grace {} ms, history {}, open \
             files {nofile})",
            listening.path.display(),
            opts.max_runs,
            opts.run_queue,
            opts.stop_grace.as_millis(),
            opts.history
        );
        let mut supervisor = Supervisor {
            exe,
            poll,
            listening,
            listener,
            bind_listening,
            bind_listener,
            signals,
            clients: HashMap::new(),
            next_client: 1,
            table: Table::new(opts.max_runs, opts.run_queue, MAX_ENDED_KEPT),
            events: Events::new(opts.history),
            release_when_settled: true,
            nofile,
            log_fds_short: false,
            timers: Timers::default(),
            base_env,
            spawner,
            devnull: devnull.into(),
            spare_fd,
            opts,
            euid,
            shutdown: None,
            more_to_read: Vec::new(),
            more_to_accept: [false; 2],
            services,
            units: HashMap::new(),
            pids: HashMap::new(),
            instances: HashMap::new(),
            next_instance: 1,
            accepts_pending: Vec::new(),
            execs_pending: Vec::new(),
            cgroups,
            config_source,
            outcome: None,
            main,
            rescan_leftovers: false,
            role,
            sockets,
            shim,
            followers: crate::logs::Followers::default(),
            logs_pending: Vec::new(),
            log_buf: Vec::new(),
            lua: None,
        };
        supervisor.install_handlers(handlers);
        Ok((supervisor, unknown))
    }

    /// The socket's path.
    pub fn socket_path(&self) -> PathBuf {
        self.listening.path.clone()
    }

    /// Runs until a shutdown completes; says why it ended.
    pub fn run(&mut self) -> Outcome {
        let mut events = PollEvents::with_capacity(EVENTS_CAPACITY);
        self.log_units();
        self.run_actions();
        self.start_main();
        loop {
            if self.release_when_settled && self.execs_pending.is_empty() {
                // Starting thousands of services leaves freed buffers, children's stacks and
                // startup code behind: given back before the loop sleeps, once every exec of the
                // burst has its outcome.
                self.release_when_settled = false;
                self.spawner.trim();
                crate::memory::release();
            }
            let timeout = if self.more_to_read.is_empty()
                && self.more_to_accept == [false; 2]
                && self.logs_pending.is_empty()
                && self.accepts_pending.is_empty()
                && !self.lua.as_ref().is_some_and(|l| l.busy())
            {
                self.timers.timeout(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!("poll: {e}");
                }
                continue;
            }
            for event in events.iter() {
                let Token(t) = event.token();
                let id = (t >> 2) as u64;
                match (t & 3, event.token()) {
                    (_, LISTENER) => self.accept(false),
                    (_, BIND_LISTENER) => self.accept(true),
                    (_, SIGNALS) => self.on_signals(),
                    (_, LUA_WATCH) => self.on_watch(),
                    // Looked at by shutdown_complete below.
                    (_, EVERYONE) => {}
                    (TAG_CLIENT, _) => {
                        self.on_client(id, event.is_writable(), event.is_write_closed())
                    }
                    (TAG_PIDFD, _) => self.on_pidfd(id),
                    (TAG_UNIT, _) => self.on_unit(id),
                    _ => {}
                }
            }
            self.fire_timers();
            for (i, more) in std::mem::take(&mut self.more_to_accept)
                .into_iter()
                .enumerate()
            {
                if more {
                    self.accept(i == 1);
                }
            }
            for unit in std::mem::take(&mut self.accepts_pending) {
                self.on_sockets(unit);
            }
            for cid in std::mem::take(&mut self.more_to_read) {
                self.pump(cid);
            }
            for (unit, pipe) in std::mem::take(&mut self.logs_pending) {
                self.on_log(unit, pipe);
            }
            self.run_handlers();
            self.flush_streams();
            if self.shutdown_complete() {
                return self.outcome.unwrap_or(Outcome::Stopped);
            }
        }
    }

    // ----- clients -----

    /// Takes the connections waiting on archon's socket, or (`bind`) on the bind socket, at most
    /// [`ACCEPTS_PER_TURN`] of them.
    fn accept(&mut self, bind: bool) {
        for _ in 0..ACCEPTS_PER_TURN {
            let listener = if bind {
                &self.bind_listener
            } else {
                &self.listener
            };
            match listener.accept() {
                Ok((stream, _)) => self.admit(stream, bind),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of fds: free the spare, accept and refuse one, take the spare back.
                    warn!("out of file descriptors: refusing a connection");
                    self.spare_fd = None;
                    let listener = if bind {
                        &self.bind_listener
                    } else {
                        &self.listener
                    };
                    if let Ok((stream, _)) = listener.accept() {
                        control::send_and_forget(
                            stream.as_raw_fd(),
                            b"Error,out of file descriptors\n",
                        );
                    }
                    self.spare_fd = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
                    if self.spare_fd.is_none() {
                        return;
                    }
                }
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            }
        }
        // The budget is spent with connections perhaps still waiting: look again before the
        // next sleep, after the other events of this turn (the ends of earlier connections).
        self.more_to_accept[usize::from(bind)] = true;
    }

    /// A new connection; on the bind socket (`bind_only`) from anyone, for `Bind` alone.
    fn admit(&mut self, mut stream: UnixStream, bind_only: bool) {
        let fd = stream.as_raw_fd();
        let peer = match control::peer_credentials(fd) {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot read a client's credentials: {e}");
                return;
            }
        };
        if !bind_only && peer.uid != 0 && peer.uid != self.euid {
            info!(
                "refused a client: uid {} pid {} is neither root nor archon's uid",
                peer.uid, peer.pid
            );
            control::send_and_forget(fd, &Reply::error("permission denied").encode());
            return;
        }
        // The bind socket's clients are counted apart: anyone may connect there.
        let (limit, what) = if bind_only {
            (MAX_BIND_CLIENTS, "bind socket clients")
        } else {
            (MAX_CLIENTS, "clients")
        };
        if self
            .clients
            .values()
            .filter(|c| c.bind_only == bind_only)
            .count()
            >= limit
        {
            warn!(
                "refused a client (pid {}): {limit} {what} already connected",
                peer.pid
            );
            control::send_and_forget(fd, &Reply::error("too many clients").encode());
            return;
        }
        let id = self.next_client;
        self.next_client += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token(TAG_CLIENT, id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("cannot register a client: {e}");
            return;
        }
        debug!("client {id} connected: pid {} uid {}", peer.pid, peer.uid);
        let mut client = Client::new(stream, peer);
        if bind_only {
            client.bind_only = true;
            let deadline = Instant::now() + Duration::from_millis(BIND_CONNECTION_MS);
            client.deadline = Some(self.timers.arm(deadline, TimerEvent::BindClient(id)));
        }
        self.clients.insert(id, client);
        self.pump(id);
    }

    fn on_client(&mut self, id: ClientId, writable: bool, hung_up: bool) {
        if let Some(c) = self.clients.get_mut(&id) {
            if writable {
                c.set_writable();
                c.flush();
                self.catch_up(id);
            }
        }
        self.pump(id);
        if hung_up {
            if let Some(c) = self.clients.get_mut(&id) {
                // Both directions are gone: nothing more can be read or written.
                c.broken = true;
            }
            self.close_if_finished(id);
        }
    }

    /// Takes the requests archon may take from a client now, reading as needed, within this
    /// turn's budget (the rest waits for the next turn), then writes what is ready.
    fn pump(&mut self, id: ClientId) {
        let (mut reads, mut requests) = (0, 0);
        loop {
            while requests < REQUESTS_PER_TURN {
                let Some(incoming) = self.clients.get_mut(&id).and_then(Client::take_request)
                else {
                    break;
                };
                requests += 1;
                self.handle(id, incoming);
            }
            let Some(c) = self.clients.get_mut(&id) else {
                return;
            };
            if !c.wants_read() && requests < REQUESTS_PER_TURN {
                break;
            }
            if requests == REQUESTS_PER_TURN || reads == READS_PER_TURN {
                self.wake(id);
                break;
            }
            reads += 1;
            match c.read_some() {
                Ok(ReadOutcome::Data | ReadOutcome::Eof) => {}
                Ok(ReadOutcome::WouldBlock) => break,
                Err(e) => {
                    debug!("client {id}: read: {e}");
                    c.broken = true;
                    break;
                }
            }
        }
        if let Some(c) = self.clients.get_mut(&id) {
            c.flush();
        }
        self.close_if_finished(id);
    }

    fn close_if_finished(&mut self, id: ClientId) {
        let Some(c) = self.clients.get(&id) else {
            return;
        };
        if !c.finished() {
            return;
        }
        if let Some(mut c) = self.clients.remove(&id) {
            if let Some(key) = c.deadline.take() {
                self.timers.cancel(key);
            }
            c.drain_input();
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.events.unsubscribe(id);
            self.followers.unfollow(id);
            debug!("client {id} closed");
        }
    }

    // ----- events -----

    /// Records an event: numbered, kept in the history, and queued on the stream of every
    /// subscriber that wants it (or dropped and counted for one too far behind). The streams
    /// are written at the end of the loop's turn.
    pub(super) fn emit(&mut self, event: Event) {
        let seq = self.events.next_seq();
        self.offer_to_handlers(&event, seq);
        let published = self.events.publish(event);
        for id in published.to {
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            match self.events.offer(id, c.backlog(), published.line.len()) {
                Offer::Drop => {}
                Offer::Send { dropped } => {
                    if dropped > 0 {
                        c.push_stream(&StreamItem::Dropped(dropped).encode());
                    }
                    c.push_stream(&published.line);
                }
            }
        }
    }

    /// Writes what was queued on the streams this turn.
    fn flush_streams(&mut self) {
        let mut touched = self.events.take_touched();
        touched.extend(self.followers.take_touched());
        for id in touched {
            if let Some(c) = self.clients.get_mut(&id) {
                c.flush();
            }
            self.catch_up(id);
            self.close_if_finished(id);
        }
    }

    /// A subscriber that lost events and has read enough gets their count.
    fn catch_up(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let line = match self.events.catch_up(id, c.backlog()) {
            Some(line) => Some(line),
            None => self.followers.catch_up(id, c.backlog()),
        };
        if let Some(line) = line {
            c.push_stream(&line);
            c.flush();
        }
    }

    /// `Subscribe`: `Ok,<next-seq>`, then the connection is a stream of the events `filter`
    /// matches. It is a stream before the reply goes, so that a client that has shut down its
    /// writing half is not closed once answered.
    fn subscribe(&mut self, to: ReplyTo, filter: archon_proto::Filter) {
        let Some(c) = self.clients.get_mut(&to.client) else {
            return;
        };
        c.start_stream();
        self.events.subscribe(to.client, filter);
        debug!(
            "client {} subscribed ({} subscribers)",
            to.client,
            self.events.subscribers()
        );
        self.reply(to, Reply::subscribed(self.events.next_seq()));
    }

    /// Delivers a reply to its slot; the connection may have gone, then it is dropped.
    fn reply(&mut self, to: ReplyTo, reply: Reply) {
        self.reply_with_fds(to, reply, Vec::new());
    }

    /// Delivers a reply with `fds` sent along (`SCM_RIGHTS`, with its first byte); they close
    /// once sent, or with the connection.
    fn reply_with_fds(&mut self, to: ReplyTo, reply: Reply, fds: Vec<OwnedFd>) {
        let Some(c) = self.clients.get_mut(&to.client) else {
            return;
        };
        let was_blocked = !c.wants_read();
        if !c.fill_with_fds(to.seq, reply.encode(), fds) {
            warn!(
                "client {}: more than the reply backlog unread, closing",
                to.client
            );
            c.broken = true;
        }
        c.flush();
        if was_blocked && c.wants_read() {
            // It may have requests buffered, or unread on the socket with no new edge to come.
            // Served by the loop, not from here: pump -> handle -> reply must not recurse.
            self.wake(to.client);
        } else {
            self.close_if_finished(to.client);
        }
    }

    /// Registers the pidfd of process `id` with the poll.
    fn watch_pidfd(&self, id: Id, pidfd: RawFd) -> io::Result<()> {
        self.poll.registry().register(
            &mut SourceFd(&pidfd),
            token(TAG_PIDFD, id),
            Interest::READABLE,
        )
    }

    /// Removes a pidfd from the poll (it may stay open, to signal what is left of a group).
    fn unwatch_pidfd(&self, pidfd: &OwnedFd) {
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
    }

    /// Has the loop serve a client before it sleeps again.
    fn wake(&mut self, id: ClientId) {
        if !self.more_to_read.contains(&id) {
            self.more_to_read.push(id);
        }
    }

    // ----- requests -----

    fn handle(&mut self, client: ClientId, incoming: Incoming) {
        let Incoming { seq, request, fds } = incoming;
        let to = ReplyTo { client, seq };
        let by = self
            .clients
            .get(&client)
            .map_or(Cause::Archon, |c| Cause::Client {
                uid: c.peer.uid,
                pid: c.peer.pid,
            });
        let request = match request.and_then(|r| r.check_fds(fds.len()).map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                if let Some(c) = self.clients.get(&client) {
                    debug!(
                        "client {client} (pid {} uid {}): {e}",
                        c.peer.pid, c.peer.uid
                    );
                }
                return self.reply(to, Reply::error(e));
            }
        };
        if self.clients.get(&client).is_some_and(|c| c.bind_only)
            && !matches!(request, Request::Bind(_))
        {
            return self.reply(
                to,
                Reply::error(format!(
                    "only Bind is served on {}",
                    self.bind_listening.path.display()
                )),
            );
        }
        if self.shutdown.is_some()
            && matches!(
                request,
                Request::Run(_)
                    | Request::StartDaemon(_)
                    | Request::MonitorFd
                    | Request::Monitor { .. }
                    | Request::OnExit { .. }
            )
        {
            return self.reply(to, Reply::error("shutting down"));
        }
        match request {
            Request::Power(power) => self.power_request(to, power),
            Request::ReExec { path } => self.reexec_request(to, path),
            Request::Ping => self.reply(to, Reply::Pong),
            Request::Version => self.reply(
                to,
                Reply::Version {
                    archon: env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
                    protocol: PROTOCOL_VERSION,
                },
            ),
            Request::List => self.reply(to, Reply::List(self.table.rows())),
            Request::Run(cmd) => self.admit_run(PendingRun {
                to: Some(to),
                cmd,
                fds,
                by,
                action_of: None,
            }),
            Request::StartDaemon(cmd) => self.start_daemon(to, cmd, fds, by),
            Request::MonitorFd => match fds.into_iter().next() {
                Some(fd) => self.monitor(to, fd, by),
                None => self.reply(to, Reply::error("MonitorFD needs a pidfd attached")),
            },
            Request::Monitor { pid } => match sys::pidfd_open(pid) {
                Ok(fd) => self.monitor(to, fd, by),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    self.reply(to, Reply::error(format!("no such process: {pid}")))
                }
                Err(e) => self.reply(
                    to,
                    Reply::error(format!("cannot open a pidfd for {pid}: {e}")),
                ),
            },
            Request::OnExit {
                target: Target::Id(id),
                command,
            } => {
                let reply = match self.on_exit(id, command, by) {
                    Ok(()) => Reply::Ok(vec![id.to_string().into_bytes()]),
                    Err(reason) => Reply::error(reason),
                };
                self.reply(to, reply)
            }
            Request::OnExit {
                target: Target::Service(name),
                ..
            } => self.reply(
                to,
                Reply::error(format!(
                    "OnExit takes a process id, not a service: {} (a service's exits go to \
                     its configuration's handlers)",
                    String::from_utf8_lossy(&name)
                )),
            ),
            Request::Stop {
                target: Target::Id(id),
                grace_ms,
            } => {
                let grace = grace_ms.map_or(self.opts.stop_grace, Duration::from_millis);
                match self.stop(id, grace, Some(to), by) {
                    Ok(()) => {}
                    Err(reason) => self.reply(to, Reply::error(reason)),
                }
            }
            Request::Signal {
                target: Target::Id(id),
                signal,
                group,
            } => {
                let reply = match self.signal(id, signal, group, by) {
                    Ok(()) => Reply::Ok(vec![id.to_string().into_bytes()]),
                    Err(reason) => Reply::error(reason),
                };
                self.reply(to, reply)
            }
            Request::Pause {
                target: Target::Id(id),
            }
            | Request::Resume {
                target: Target::Id(id),
            } => {
                let sig = if matches!(request, Request::Pause { .. }) {
                    libc::SIGSTOP
                } else {
                    libc::SIGCONT
                };
                let reply = match self.signal(id, sig, true, by) {
                    Ok(()) => Reply::Ok(vec![id.to_string().into_bytes()]),
                    Err(reason) => Reply::error(reason),
                };
                self.reply(to, reply)
            }
            Request::Status { names } => {
                let reply = self.status(&names);
                self.reply(to, reply)
            }
            Request::Tree { name } => {
                let reply = self.tree(name.as_deref());
                self.reply(to, reply)
            }
            Request::Config => {
                let reply = self.config_dump();
                self.reply(to, reply)
            }
            Request::History { filter, max } => {
                let reply = Reply::History(self.events.history(&filter, max));
                self.reply(to, reply)
            }
            Request::Subscribe { filter } => self.subscribe(to, filter),
            Request::Bind(addr) => match self.bind_request(client, &addr) {
                Ok(fd) => self.reply_with_fds(to, Reply::Ok(Vec::new()), vec![fd]),
                Err(reason) => self.reply(to, Reply::error(reason)),
            },
            Request::Logs { name, level, max } => {
                let reply = self.logs(&name, level, max);
                self.reply(to, reply)
            }
            Request::FollowLogs { name, level, max } => self.follow_logs(to, name, level, max),
            Request::Reload => {
                let reply = match self.reload(by) {
                    Ok(c) => {
                        info!(
                            "reloaded: {} started, {} stopped, {} restarted, {} unchanged",
                            c.started, c.stopped, c.restarted, c.unchanged
                        );
                        Reply::reloaded(c)
                    }
                    Err(e) => Reply::error(e),
                };
                self.reply(to, reply)
            }
            Request::Start { name } => {
                let name = String::from_utf8_lossy(&name).into_owned();
                let now = now_ms();
                let r = self.services.start(&name, Some(to), by, now);
                self.unit_request(to, r)
            }
            Request::Restart { name } => {
                let name = String::from_utf8_lossy(&name).into_owned();
                let r = self.services.restart(&name, Some(to), by, now_ms());
                self.unit_request(to, r)
            }
            Request::Stop {
                target: Target::Service(name),
                grace_ms,
            } => {
                let name = String::from_utf8_lossy(&name).into_owned();
                let r = self.services.stop(&name, grace_ms, Some(to), by, now_ms());
                self.unit_request(to, r)
            }
            Request::Signal {
                target: Target::Service(name),
                signal,
                group,
            } => {
                let text = String::from_utf8_lossy(&name).into_owned();
                let r = self.services.signal(&text, signal, group, by, now_ms());
                self.unit_request_ok(to, r, name)
            }
            Request::Pause {
                target: Target::Service(name),
            } => {
                let text = String::from_utf8_lossy(&name).into_owned();
                let r = self.services.pause(&text, true, by, now_ms());
                self.unit_request_ok(to, r, name)
            }
            Request::Resume {
                target: Target::Service(name),
            } => {
                let text = String::from_utf8_lossy(&name).into_owned();
                let r = self.services.pause(&text, false, by, now_ms());
                self.unit_request_ok(to, r, name)
            }
        }
    }

    /// A request the manager answers itself (when it succeeds, the reply is among its actions).
    fn unit_request(&mut self, to: ReplyTo, result: Result<(), String>) {
        if let Err(reason) = result {
            self.reply(to, Reply::error(reason));
        }
        self.run_actions();
    }

    /// A request answered `Ok,<name>` at once when the manager accepts it.
    fn unit_request_ok(&mut self, to: ReplyTo, result: Result<(), String>, name: Vec<u8>) {
        let reply = match result {
            Ok(()) => Reply::Ok(vec![name]),
            Err(reason) => Reply::error(reason),
        };
        self.run_actions();
        self.reply(to, reply);
    }

    /// The fds a child gets as 0, 1, 2: those sent with the request, then /dev/null for stdin and
    /// archon's own stderr for stdout and stderr.
    fn stdio(&self, fds: &[OwnedFd]) -> [RawFd; 3] {
        let default = [self.devnull.as_raw_fd(), 2, 2];
        std::array::from_fn(|i| fds.get(i).map_or(default[i], AsRawFd::as_raw_fd))
    }

    /// Starts `cmd`; on failure says why, in the words of an `Error` reply. A program that could
    /// not be executed leaves no record: its child has exited 127 and is reaped as an orphan.
    /// `why` is the reason its `spawn` event gives.
    fn spawn(
        &mut self,
        kind: Kind,
        cmd: &Command,
        fds: &[OwnedFd],
        by: Cause,
        why: String,
    ) -> Result<Id, String> {
        let exec = Exec::prepare(cmd, &self.base_env).map_err(|e| e.to_string())?;
        let stdio = self.stdio(fds);
        let child = self.spawner.spawn(&exec, stdio).map_err(|e| match e {
            SpawnError::Setup {
                step: Step::Exec(_),
                errno,
            } => exec_failure(&cmd.argv, errno),
            e => e.to_string(),
        })?;
        Ok(self.track_why(kind, child, &cmd.argv, by, why))
    }

    /// Lists a child just started and watches its pidfd.
    fn track(&mut self, kind: Kind, child: Child, argv: &[Vec<u8>], by: Cause) -> Id {
        self.track_why(kind, child, argv, by, String::new())
    }

    /// As [`Self::track`], with `why` as the reason of its `spawn` event.
    fn track_why(
        &mut self,
        kind: Kind,
        child: Child,
        argv: &[Vec<u8>],
        by: Cause,
        why: String,
    ) -> Id {
        let raw = child.pidfd.as_raw_fd();
        let mut proc = Proc::new(kind, child.pid, now_ms(), argv.to_vec());
        proc.pidfd = Some(child.pidfd);
        let id = self.table.insert(proc);
        if let Err(e) = self.watch_pidfd(id, raw) {
            // Still reaped through SIGCHLD; only the wake-up is lost.
            warn!("cannot watch the pidfd of {}: {e}", child.pid);
        }
        debug!(
            "started {id} ({kind}): pid {} {}",
            child.pid,
            String::from_utf8_lossy(&argv.join(&b' '))
        );
        if let Some(mut event) = self.table.get(id).map(|p| p.start_event(by)) {
            event.reason = why.into_bytes();
            self.emit(event);
        }
        id
    }

    /// A `Run` (or an exit action) asks for a pool slot: it starts, waits in the queue, or is
    /// refused.
    fn admit_run(&mut self, run: PendingRun) {
        match self.table.admit_run(run) {
            Admission::Start(run) => self.start_run(run),
            Admission::Queued => {}
            Admission::Busy(run) => {
                let (running, waiting) = self.table.run_counts();
                warn!("Run refused: {running} running and {waiting} waiting");
                // Its fds close with it.
                self.run_not_started(run.to, run.action_of, run.by, "busy".to_string());
            }
        }
    }

    /// Starts a `Run` that has a pool slot; the slot goes back if it cannot start.
    fn start_run(&mut self, run: PendingRun) {
        let PendingRun {
            to,
            cmd,
            fds,
            by,
            action_of,
        } = run;
        let why = action_of
            .as_ref()
            .map(crate::on_exit::spawn_reason)
            .unwrap_or_default();
        match self.spawn(Kind::Run, &cmd, &fds, by, why) {
            Ok(id) => {
                if let (Some(p), Some(to)) = (self.table.get_mut(id), to) {
                    p.waiters.push(Waiter::Run(to));
                }
            }
            Err(reason) => {
                self.table.release_run_slot();
                self.run_not_started(to, action_of, by, reason);
            }
        }
        // The child has its own copies of the fds; archon's close here.
        drop(fds);
    }

    /// A `Run` that could not start: its client is told; an exit action, nobody waits for, is
    /// reported in the log and as a `fail` event of the process whose end it follows.
    fn run_not_started(
        &mut self,
        to: Option<ReplyTo>,
        action_of: Option<crate::on_exit::EndOf>,
        by: Cause,
        reason: String,
    ) {
        if let Some(to) = to {
            self.reply(to, Reply::error(reason.clone()));
        }
        if let Some(end) = action_of {
            warn!("exit action of {} not run: {reason}", end.id);
            self.emit(crate::on_exit::failed_event(&end, &reason, by, now_ms()));
        }
    }

    /// `OnExit`: gives process `id` an action to run when it ends, or runs it now when it has
    /// ended already.
    fn on_exit(&mut self, id: Id, cmd: Command, by: Cause) -> Result<(), String> {
        let action = crate::on_exit::ExitAction { cmd, by };
        match self.table.add_exit_action(id, action) {
            Ok(None) => {
                debug!(
                    "exit action for {id} ({} waiting)",
                    self.table.exit_actions()
                );
                Ok(())
            }
            Ok(Some((end, action))) => {
                self.run_exit_action(end, action);
                Ok(())
            }
            Err(refused) => Err(refused.to_string()),
        }
    }

    /// Runs an exit action: a `Run` nobody waits for, with what ended in its environment. Not
    /// during a shutdown, which would only stop it.
    fn run_exit_action(&mut self, end: crate::on_exit::EndOf, action: crate::on_exit::ExitAction) {
        if self.shutdown.is_some() {
            let by = action.by;
            return self.run_not_started(None, Some(end), by, "shutting down".to_string());
        }
        let cmd = crate::on_exit::command(&action, &end);
        self.admit_run(PendingRun {
            to: None,
            cmd,
            fds: Vec::new(),
            by: action.by,
            action_of: Some(end),
        });
    }

    /// Starts queued `Run`s while slots are free.
    fn start_queued_runs(&mut self) {
        while let Some(run) = self.table.next_run() {
            self.start_run(run);
        }
    }

    fn start_daemon(&mut self, to: ReplyTo, cmd: Command, fds: Vec<OwnedFd>, by: Cause) {
        let reply = match self.spawn(Kind::Daemon, &cmd, &fds, by, String::new()) {
            Ok(id) => Reply::started(id, self.table.get(id).map_or(0, |p| p.row.pid)),
            Err(reason) => Reply::error(reason),
        };
        self.reply(to, reply);
    }

    fn monitor(&mut self, to: ReplyTo, pidfd: OwnedFd, by: Cause) {
        if !sys::is_pidfd(pidfd.as_fd()) {
            return self.reply(to, Reply::error("not a pidfd"));
        }
        let pid = match sys::pidfd_pid(pidfd.as_fd()) {
            Ok(Some(pid)) => pid,
            Ok(None) => return self.reply(to, Reply::error("the process has already ended")),
            Err(e) => return self.reply(to, Reply::error(format!("cannot read the pidfd: {e}"))),
        };
        if let Some(id) = self
            .table
            .child_by_pid(pid)
            .or_else(|| self.table.monitor_by_pid(pid))
        {
            return self.reply(
                to,
                Reply::error(format!("process {pid} is already supervised as {id}")),
            );
        }
        let raw = pidfd.as_raw_fd();
        let mut proc = Proc::new(Kind::Monitor, pid, now_ms(), Vec::new());
        proc.pidfd = Some(pidfd);
        let id = self.table.insert(proc);
        if let Err(e) = self.watch_pidfd(id, raw) {
            self.table.remove(id);
            return self.reply(to, Reply::error(format!("cannot watch the pidfd: {e}")));
        }
        debug!("monitoring {id}: pid {pid}");
        if let Some(event) = self.table.get(id).map(|p| p.start_event(by)) {
            self.emit(event);
        }
        self.reply(to, Reply::started(id, pid));
    }

    /// Sends `sig` to a live process, or to the process group it leads.
    /// Sends `sig` to a live process, or to the process group it leads, for `by`; a signal
    /// other than 0 (which only checks that the process exists) is an event.
    fn signal(&mut self, id: Id, sig: i32, group: bool, by: Cause) -> Result<(), String> {
        let p = self
            .table
            .get(id)
            .ok_or_else(|| format!("no such process: {id}"))?;
        if !p.is_live() {
            return Err(format!("process {id} has ended"));
        }
        let pidfd = p
            .pidfd
            .as_ref()
            .ok_or_else(|| format!("process {id} has ended"))?;
        let result = if group {
            if !p.is_child() && sys::getpgid(p.row.pid).ok() != Some(p.row.pid) {
                return Err(format!("process {id} does not lead a process group"));
            }
            // A child not yet in its own group has no group members but itself.
            sys::signal_tree(pidfd.as_fd(), p.row.pid, sig)
        } else {
            sys::pidfd_send_signal(pidfd.as_fd(), sig, 0)
        };
        result.map_err(|e| format!("cannot signal process {id}: {e}"))?;
        if sig != 0 {
            let mut why = archon_proto::signal::name(sig).unwrap_or_else(|| sig.to_string());
            if group {
                why.push_str(" to its process group");
            }
            let state = p.row.state;
            let event = p.event(EventKind::Signal, Some(state), why, by, now_ms());
            self.emit(event);
        }
        Ok(())
    }

    /// Starts stopping `id` for `by`: SIGTERM (and SIGCONT, so a stopped process can act on it)
    /// to its group when it leads one, else to it; SIGKILL when `grace` is over. `to` gets the
    /// reply when it ends.
    fn stop(
        &mut self,
        id: Id,
        grace: Duration,
        to: Option<ReplyTo>,
        by: Cause,
    ) -> Result<(), String> {
        let deadline = Instant::now() + grace;
        let why = if self.shutdown.is_some() {
            "archon is shutting down"
        } else {
            ""
        };
        let p = self
            .table
            .get_mut(id)
            .ok_or_else(|| format!("no such process: {id}"))?;
        if !p.is_live() {
            return Err(format!("process {id} has ended"));
        }
        if let Some(to) = to {
            p.waiters.push(Waiter::Stop(to));
        }
        if p.row.state == ProcState::Stopping {
            // Already stopping: a shorter grace brings the SIGKILL forward.
            if let Some(key) = p.kill_timer.filter(|k| k.deadline() > deadline) {
                self.timers.cancel(key);
                p.kill_timer = Some(self.timers.arm(deadline, TimerEvent::Kill(id)));
            }
            return Ok(());
        }
        let event = p.begin_stop(by, why, now_ms());
        p.kill_timer = Some(self.timers.arm(deadline, TimerEvent::Kill(id)));
        if let Some(pidfd) = p.pidfd.as_ref() {
            for sig in [libc::SIGTERM, libc::SIGCONT] {
                if let Err(e) = sys::signal_tree(pidfd.as_fd(), p.row.pid, sig) {
                    debug!("stop {id}: signal {sig}: {e}");
                }
            }
        }
        info!(
            "stopping {id} (pid {}), SIGKILL in {} ms",
            p.row.pid,
            grace.as_millis()
        );
        self.emit(event);
        Ok(())
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(event) = self.timers.pop_due(now) {
            match event {
                TimerEvent::Kill(id) => self.kill(id),
                TimerEvent::Unit(id, kind) => self.unit_timer(id, kind),
                TimerEvent::Probe(id) => self.probe_timeout(id),
                TimerEvent::Leftovers => self.next_leftover_phase(),
                TimerEvent::Everyone => self.next_everyone_phase(),
                TimerEvent::Handler(i) => self.handler_timer(i),
                TimerEvent::BindClient(id) => {
                    if let Some(c) = self.clients.get_mut(&id) {
                        debug!("client {id}: open on the bind socket too long, closed");
                        c.deadline = None;
                        c.broken = true;
                    }
                    self.close_if_finished(id);
                }
            }
        }
    }

    /// The grace period of a stop is over: SIGKILL to what is left of the process and its group.
    fn kill(&mut self, id: Id) {
        let Some(p) = self.table.get_mut(id) else {
            return;
        };
        p.kill_timer = None;
        let live = p.is_live();
        if let Some(pidfd) = p.pidfd.as_ref() {
            if live {
                warn!("{id} (pid {}) did not stop in time: SIGKILL", p.row.pid);
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL, 0);
            }
            if p.is_child() || sys::getpgid(p.row.pid).ok() == Some(p.row.pid) {
                // Whatever is left in its group goes too, even after the leader has ended (the
                // pidfd pins the group's id, so no other group can be hit).
                let _ = sys::signal_group(pidfd.as_fd(), p.row.pid, libc::SIGKILL);
            }
        }
        if !live && p.row.kind != Kind::Monitor {
            // Nothing left to signal through it.
            p.pidfd = None;
        }
    }

    // ----- processes ending -----

    fn on_signals(&mut self) {
        let pending: Vec<_> = self.signals.pending().collect();
        for info in pending {
            let sig = info.si_signo;
            if sig == SIGCHLD {
                self.rescan_leftovers = true;
                self.reap_children();
                continue;
            }
            // SAFETY: si_code says which union member is valid: SI_USER (kill, and the SIGPIPE
            // the kernel sends a writer on behalf of that writer), SI_TKILL and SI_QUEUE carry
            // the sender's pid.
            let sender = match info.si_code {
                libc::SI_USER | libc::SI_TKILL | libc::SI_QUEUE => Some(unsafe { info.si_pid() }),
                _ => None,
            };
            if self.forward(sig, sender) {
                continue;
            }
            // An entrypoint's signals are its main command's, even once it has ended: only
            // those of any process mean something to archon then.
            let role = if self.main.is_some() {
                Role::Process
            } else {
                self.role
            };
            let action = crate::pid1::signal_action(role, sig);
            if let (SignalAction::Exit | SignalAction::Power(_), Some(pid)) = (action, sender) {
                // Who asks archon to stop: 0 when the sender is outside archon's PID namespace.
                info!(
                    "{} from pid {pid}",
                    archon_proto::signal::name(sig).unwrap_or_default()
                );
            }
            match action {
                SignalAction::Exit => self.begin_shutdown(ShutdownCause::Signal(sig)),
                SignalAction::Power(power) => {
                    self.begin_shutdown(ShutdownCause::Power(power, Some(sig)))
                }
                SignalAction::Reload => match self.reload(Cause::Archon) {
                    Ok(c) => info!(
                        "SIGHUP: reloaded: {} started, {} stopped, {} restarted, {} unchanged",
                        c.started, c.stopped, c.restarted, c.unchanged
                    ),
                    Err(e) => warn!("SIGHUP: configuration not reloaded: {e}"),
                },
                SignalAction::ReExec => self.reexec_signal(sig),
                SignalAction::Ignore => info!(
                    "ignoring signal {}",
                    archon_proto::signal::name(sig).unwrap_or_default()
                ),
            }
        }
    }

    /// Reaps every ended child: archon's own through their pidfds, orphans by pid.
    fn reap_children(&mut self) {
        while let Some(pid) = sys::peek_ended_child() {
            if let Some(&owner) = self.pids.get(&pid) {
                let (unit, main) = match owner {
                    units::PidOwner::Main(u) => (u, true),
                    units::PidOwner::Probe(u) => (u, false),
                    units::PidOwner::Instance(n) => {
                        let Some(status) = sys::reap_pid(pid) else {
                            break;
                        };
                        self.instance_ended(n, status);
                        continue;
                    }
                };
                if main && self.settle_exec_of_ended(unit) {
                    continue;
                }
                let Some(status) = sys::reap_pid(pid) else {
                    break;
                };
                self.pids.remove(&pid);
                if main {
                    self.unit_ended(unit, status);
                } else {
                    self.probe_reaped(unit, status);
                }
            } else if let Some(id) = self.table.child_by_pid(pid) {
                let status = self
                    .table
                    .get(id)
                    .and_then(|p| p.pidfd.as_ref())
                    .and_then(|fd| sys::reap_pidfd(fd.as_fd()).ok().flatten())
                    .or_else(|| sys::reap_pid(pid));
                match status {
                    Some(status) => self.child_ended(id, status),
                    None => break,
                }
            } else {
                let Some(status) = sys::reap_pid(pid) else {
                    break;
                };
                match self.table.monitor_by_pid(pid) {
                    // A monitored process whose parent died is reparented to archon.
                    Some(id) => self.monitor_ended(id, status),
                    None => debug!("reaped orphan {pid}: {status}"),
                }
            }
        }
    }

    fn on_pidfd(&mut self, id: Id) {
        let Some(p) = self.table.get(id) else { return };
        let Some(pidfd) = p.pidfd.as_ref() else {
            return;
        };
        if p.is_child() {
            if !p.is_live() {
                return;
            }
            if let Ok(Some(status)) = sys::reap_pidfd(pidfd.as_fd()) {
                self.child_ended(id, status);
            }
            return;
        }
        // A monitored process: its parent reaps it, the kernel may tell how it ended (6.15+).
        // Without the status yet (ended, not reaped) its pidfd stays watched: the reap wakes it
        // again, with the status.
        let status = sys::pidfd_exit_status(pidfd.as_fd());
        self.monitor_ended(id, status.unwrap_or(Status::Unknown));
    }

    fn monitor_ended(&mut self, id: Id, status: Status) {
        let ended = self.table.end(id, status, now_ms());
        self.settle(ended);
        if status != Status::Unknown {
            self.forget_pidfd(id);
        }
    }

    fn forget_pidfd(&mut self, id: Id) {
        let pidfd = self.table.get_mut(id).and_then(|p| p.pidfd.take());
        if let Some(fd) = pidfd {
            self.unwatch_pidfd(&fd);
        }
    }

    /// archon's child `id` has been reaped with `status`.
    fn child_ended(&mut self, id: Id, status: Status) {
        let Some(p) = self.table.get(id) else {
            return;
        };
        if let Some(fd) = p.pidfd.as_ref() {
            self.unwatch_pidfd(fd);
        }
        debug!("{id} (pid {}) {status}", p.row.pid);
        if let Some(p) = self.table.get_mut(id).filter(|p| p.kill_timer.is_none()) {
            // No group left to signal after a stop: the pidfd can go now.
            p.pidfd = None;
        }
        let ended = self.table.end(id, status, now_ms());
        self.settle(ended);
        if self.is_main(id) {
            self.main_ended(status);
        }
    }

    fn settle(&mut self, ended: crate::table::Ended) {
        if let Some(event) = ended.event {
            self.emit(event);
        }
        for (to, reply) in ended.replies {
            self.reply(to, reply);
        }

        for p in ended.evicted {
            if let Some(key) = p.kill_timer {
                self.timers.cancel(key);
            }
            if let Some(fd) = p.pidfd.as_ref() {
                self.unwatch_pidfd(fd);
            }
        }
        if ended.freed_run_slot {
            self.start_queued_runs();
        }
        // After the queued runs: an action waits its turn like any `Run`.
        for (end, action) in ended.actions {
            self.run_exit_action(end, action);
        }
    }

    // ----- configuration -----

    /// Reads the configuration file again and applies it: what is new starts, what is gone
    /// stops, what changed restarts. A broken file changes nothing.
    fn reload(&mut self, by: Cause) -> Result<archon_proto::ReloadCounts, String> {
        let Some(source) = self.config_source.clone() else {
            return Err("archon runs without a configuration file (--config)".to_string());
        };
        if self.shutdown.is_some() {
            return Err("shutting down".to_string());
        }
        let archon_lua::Loaded { config, handlers } =
            units::evaluate(&source).map_err(|e| e.to_string())?;
        // All or nothing: a socket that cannot be bound refuses the file, and nothing changes.
        self.sockets
            .apply(&config, &source.name())
            .map_err(|e| e.to_string())?;
        self.rewatch();
        if self.cgroups.is_none() && !config.services.is_empty() {
            self.cgroups = Cgroups::discover().ok();
        }
        let counts = self.services.reload(config, by, now_ms());
        // The old handlers' state goes, with its globals; the file's new run made new ones.
        self.install_handlers(handlers);
        self.run_actions();
        self.release_when_settled = true;
        Ok(counts)
    }

    // ----- shutdown -----

    /// Stops everything: SIGTERM/SIGINT, a power off, reboot or halt (a signal to process 1, or
    /// a request), a critical unit that failed, or the main command that ended. A second signal
    /// kills what is left at once; a power request during a shutdown changes only its end.
    fn begin_shutdown(&mut self, cause: ShutdownCause) {
        let signame = |sig| archon_proto::signal::name(sig).unwrap_or_default();
        let why = match cause {
            ShutdownCause::Signal(sig) => signame(sig),
            ShutdownCause::Power(power, Some(sig)) => format!("{}: {power}", signame(sig)),
            ShutdownCause::Power(power, None) => format!("{power} requested"),
            ShutdownCause::Critical => "a critical service failed".to_string(),
            ShutdownCause::MainEnded => "the main command ended".to_string(),
        };
        if let ShutdownCause::Power(power, _) = cause {
            self.outcome = Some(Outcome::Power(power));
        }
        let by_signal = matches!(
            cause,
            ShutdownCause::Signal(_) | ShutdownCause::Power(_, Some(_))
        );
        let now = Instant::now();
        if let Some(s) = self.shutdown.as_mut() {
            if let ShutdownCause::Power(power, None) = cause {
                info!("{why} during the shutdown: its end is now a {power}");
            }
            if !s.forced && by_signal {
                warn!("{why} again: killing everything now");
                s.forced = true;
                s.leftovers.kill_now(now);
                self.timers.cancel(s.leftovers_timer);
                s.leftovers_timer = self
                    .timers
                    .arm(s.leftovers.deadline(), TimerEvent::Leftovers);
                self.kill_everything();
                self.signal_leftovers();
            }
            return;
        }
        if let ShutdownCause::Signal(_) = cause {
            self.outcome.get_or_insert(Outcome::Stopped);
        }
        let live = self.table.live_children();
        info!(
            "{why}: stopping {} processes and {} services",
            live.len(),
            self.pids.len()
        );
        // What the main command left behind may be ending on the signal that ended it: it is
        // given the grace before it is asked (tini#180). Other orphans are asked at once.
        let leftovers =
            Leftovers::new(cause == ShutdownCause::MainEnded, self.opts.stop_grace, now);
        let leftovers_timer = self.timers.arm(leftovers.deadline(), TimerEvent::Leftovers);
        self.shutdown = Some(Shutdown {
            forced: false,
            leftovers,
            leftovers_timer,
            everyone: None,
        });
        for run in self.table.take_queue() {
            self.run_not_started(run.to, run.action_of, run.by, "shutting down".to_string());
        }
        for id in live {
            let _ = self.stop(id, self.opts.stop_grace, None, Cause::Archon);
        }
        self.services.shut_down(now_ms());
        self.run_actions();
        self.signal_leftovers();
    }

    fn kill_everything(&mut self) {
        for id in self.table.live_children() {
            self.kill(id);
        }
        self.services.kill_all();
        self.kill_pending_execs();
        self.run_actions();
    }

    /// archon's children that it did not start: orphans reparented to it.
    fn leftovers(&self) -> Vec<i32> {
        sys::children_of_self()
            .into_iter()
            .filter(|pid| self.table.child_by_pid(*pid).is_none() && !self.pids.contains_key(pid))
            .collect()
    }

    /// Sends the leftovers' current phase's signals to those not sent them yet.
    fn signal_leftovers(&mut self) {
        self.rescan_leftovers = false;
        let Some(phase) = self.shutdown.as_ref().map(|s| s.leftovers.phase()) else {
            return;
        };
        if phase == Phase::Waiting {
            return;
        }
        let found = self.leftovers();
        let Some(s) = self.shutdown.as_mut() else {
            return;
        };
        for pid in s.leftovers.due(&found) {
            debug!("orphan {pid}: {phase:?}");
            for &sig in phase.signals() {
                // SAFETY: kill has no memory effects. The pid is a child archon has not
                // reaped, so it cannot have been reused.
                unsafe { libc::kill(pid, sig) };
            }
        }
    }

    /// The leftovers' phase is over: the next one begins.
    fn next_leftover_phase(&mut self) {
        let now = Instant::now();
        let Some(s) = self.shutdown.as_mut() else {
            return;
        };
        if s.leftovers.phase() == Phase::Killing {
            // The time to reap them is over: shutdown_complete lets archon go.
            return;
        }
        s.leftovers.advance(now);
        s.leftovers_timer = self
            .timers
            .arm(s.leftovers.deadline(), TimerEvent::Leftovers);
        if s.leftovers.phase() == Phase::Killing {
            debug!("orphans: SIGKILL");
        } else {
            debug!("orphans: the grace is over, SIGTERM");
        }
        self.signal_leftovers();
    }

    /// True once a shutdown has stopped every child: then what is left of their groups is
    /// killed, the orphans are waited for (as their phases allow), the last replies go out, and
    /// the loop ends.
    fn shutdown_complete(&mut self) -> bool {
        if self.shutdown.is_none() {
            return false;
        }
        if self.rescan_leftovers {
            self.signal_leftovers();
        }
        if !self.table.no_live_children() || !self.services.all_down() {
            return false;
        }
        let pending: Vec<Id> = self
            .table
            .iter()
            .filter(|p| p.kill_timer.is_some())
            .map(|p| p.row.id)
            .collect();
        for id in pending {
            self.kill(id);
        }
        self.reap_children();
        if sys::has_children() {
            let given_up = self
                .shutdown
                .as_ref()
                .is_some_and(|s| s.leftovers.given_up(Instant::now()));
            if !given_up {
                return false;
            }
            warn!(
                "exiting with processes left behind that did not end within {} ms of SIGKILL: {:?}",
                crate::leftovers::REAP_AFTER_KILL.as_millis(),
                sys::children_of_self()
            );
        }
        if !self.everyone_gone() {
            return false;
        }
        if let Some(s) = self.shutdown.take() {
            self.timers.cancel(s.leftovers_timer);
        }
        self.forget_all_units();
        if let Some(cg) = self.cgroups.take() {
            if let Err(e) = cg.remove_tree() {
                debug!("cgroups: {e}");
            }
        }
        for c in self.clients.values_mut() {
            c.flush();
        }
        info!("all processes stopped; exiting");
        true
    }
}

/// The configuration: `--demo`'s, the file given, else for root the default file if it exists.
pub fn config_source(opts: &Options, euid: u32) -> Option<ConfigSource> {
    if opts.demo {
        return Some(ConfigSource::Demo);
    }
    opts.config
        .clone()
        .or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG);
            (euid == 0 && default.exists()).then_some(default)
        })
        .map(ConfigSource::File)
}

/// The environment every child starts from: archon's own, without the variables that describe
/// archon's service manager, with `ARCHON_SOCKET` naming archon's socket and
/// `ARCHON_BIND_SOCKET` its bind socket.
fn base_environment(socket: &std::path::Path, bind: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let socket_env = archon_proto::socket::SOCKET_ENV;
    let bind_env = crate::sockets::BIND_SOCKET_ENV;
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| !PRIVATE_ENV.iter().any(|p| k == p) && k != socket_env && k != bind_env)
        .map(|(k, v)| (k.into_vec(), v.into_vec()))
        .collect();
    env.push((
        socket_env.as_bytes().to_vec(),
        socket.as_os_str().as_bytes().to_vec(),
    ));
    env.push((
        bind_env.as_bytes().to_vec(),
        bind.as_os_str().as_bytes().to_vec(),
    ));
    env
}

/// The reason given when a program cannot be executed.
fn exec_failure(argv: &[Vec<u8>], errno: i32) -> String {
    let program = argv
        .first()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    format!("cannot execute {program}: {}", errno_text(errno))
}

/// Tells systemd that archon is ready, when it runs under systemd.
pub fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            warn!("cannot notify systemd: {e}");
        }
    }
}
