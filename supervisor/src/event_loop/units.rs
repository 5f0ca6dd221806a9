//! The kernel's side of services and tasks: the loop performs what the [`Manager`] decides
//! (spawn, signal, kill, freeze, timers, health checks) and tells it what happened (exits,
//! readiness, watchdog pings, check results).
//!
//! Per unit the loop holds a [`UnitRt`]: the pidfd of its main process, its exec while its
//! outcome is unknown, its cgroup, its notify socket or ready pipe, a health check in flight, and
//! its timers. Their tokens carry the unit's id and which of them woke the loop.
//!
//! A unit's process is started pipelined
//! ([`Spawner::spawn_pipelined`](crate::spawn::Spawner::spawn_pipelined)): archon goes on with
//! the next unit while the kernel loads this one's program, and tells the manager
//! [`Manager::spawned`] (or `spawn_failed`) once the exec's pipe says how it went. Until then the
//! manager holds the unit as `spawning`, with no pid: nothing signals it, a stop waits for the
//! outcome, and the unit is not forgotten. Whatever wakes the loop for a unit, that outcome is
//! read first (a process that has ended, or written to its ready fd or notify socket, has
//! exec'd or failed to), so the manager always hears "spawned" before anything the process did.
//!
//! An `accept = true` service has instances instead of a main process: while the manager says
//! it [`accepts`](Manager::accepts), the loop watches its sockets, accepts each connection and
//! starts an [`Instance`] for it the vfork way (so the connection, archon's copy of which is
//! close-on-exec, is closed as soon as the spawn returns). An instance's pidfd has a token of its
//! own (`SUB_INSTANCE`, with the instance's number where a unit's id goes).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use archon_lua::{BindShim, Check, Ready, Service, UnitKind};
use archon_proto::limits::{MAX_LOG_ROWS, MAX_TREE_NODES};
use archon_proto::{
    Command, EnvEntry, Health as ProtoHealth, Reply, ServiceKind, ServiceRow, Setting, Status,
    TreeNode,
};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::{Supervisor, TAG_UNIT, now_ms, token};
use crate::cgroup::ServiceCgroup;
use crate::health::{self, TcpProbe};
use crate::logs::{Drained, ServiceLog};
use crate::notify::{Notice, NotifySocket, ReadyOutcome, ReadyPipe};
use crate::procstat;
use crate::service::{Action, Health, Manager, TimerKind, UnitId};
use crate::sockets::{self, listen_env};
use crate::spawn::{Creds, Exec, PendingExec, SpawnOptions, Spawned};
use crate::sys;
use crate::timers::{TimerEvent, TimerKey};
use crate::{debug, info, warn};

/// How many parents up from a process that asks for a socket archon looks for a service's main
/// process, when the process is in no service's cgroup.
const MAX_ANCESTRY: usize = 64;

/// Open files kept free of log pipes for clients and everything else archon opens: a unit's
/// log pipes (four fds) are made only while the pidfds of every unit and this many more still fit
/// under the open files limit.
const LOG_FD_RESERVE: u64 = 1024;

/// Which of a unit's fds woke the loop (the low bits of the token's id).
pub(super) const SUB_PIDFD: u64 = 0;
pub(super) const SUB_NOTIFY: u64 = 1;
pub(super) const SUB_READY: u64 = 2;
const SUB_PROBE: u64 = 3;
const SUB_EXEC: u64 = 4;
/// stdout's log pipe; stderr's is the next.
pub(super) const SUB_LOG: u64 = 5;
/// The sockets of an on-demand service, while it is down, or of an acceptor, while it accepts.
const SUB_SOCKETS: u64 = 7;
/// The pidfd of an instance of an acceptor: the token carries the instance's number.
pub(super) const SUB_INSTANCE: u64 = 8;
const SUB_BITS: u32 = 4;

pub(super) fn unit_token(id: UnitId, sub: u64) -> Token {
    token(TAG_UNIT, (id << SUB_BITS) | sub)
}

/// A health check in flight.
pub(super) enum Probe {
    /// A TCP connect, waiting to become writable.
    Tcp(TcpProbe),
    /// A command: its pid and pidfd.
    Command { pid: i32, pidfd: OwnedFd },
}

/// What the loop holds for one unit.
#[derive(Default)]
pub(super) struct UnitRt {
    /// The main process: pid and pidfd.
    pub(super) pid: i32,
    pub(super) pidfd: Option<OwnedFd>,
    /// The exec of the main process while its outcome is unknown: what the child reads, and the
    /// pipe it reports on (registered as `SUB_EXEC`); boxed, as it is there for a moment.
    pub(super) exec: Option<Box<PendingExec>>,
    pub(super) cgroup: Option<ServiceCgroup>,
    /// Boxed, as the probe: most units have none.
    pub(super) notify: Option<Box<NotifySocket>>,
    /// Boxed, as the rest of what only some units have.
    pub(super) ready: Option<Box<ReadyPipe>>,
    /// A health check in progress (boxed: most units have none, and a unit's runtime is kept
    /// for each of thousands of units).
    pub(super) probe: Option<Box<(Probe, TimerKey)>>,
    pub(super) timers: UnitTimers,
    /// The pipes of its stdout and stderr, made at its first start and kept until it is
    /// removed; its ring and log file (boxed: the ring's lines are the bulk).
    pub(super) log: Option<Box<ServiceLog>>,
    /// For an on-demand service that is down: its sockets, watched for a connection.
    pub(super) watch: Option<Box<Watch>>,
}

/// The sockets of an on-demand service registered with the poll, as copies of archon's (close-on
/// exec): the registration belongs to these copies, so that it ends when the watch is dropped,
/// whatever becomes of the sockets archon holds (a reload may close them). All share the unit's
/// `SUB_SOCKETS` token: the first connection or datagram on any of them starts the service, and
/// the watch ends then. The poll is edge-triggered: a socket that has something waiting when it
/// is registered wakes the loop once, and nothing more wakes it until something new comes.
///
/// An acceptor's watch (`accept`) takes every connection instead, until none waits or the
/// turn's budget is spent; its sockets are non-blocking while it lasts.
pub(super) struct Watch {
    accept: bool,
    sockets: Vec<Watched>,
}

/// One socket of a [`Watch`]: its copy, its name and where it is bound.
struct Watched {
    fd: OwnedFd,
    name: String,
    local: archon_lua::Listen,
}

/// A process archon started for one connection to an acceptor.
pub(super) struct Instance {
    pub(super) unit: UnitId,
    pub(super) pid: i32,
    pub(super) pidfd: OwnedFd,
    /// Who connected, for its events.
    pub(super) peer: String,
}

/// A unit's armed timers, one per kind: a short list, not a hash map, since a unit has one or
/// two at a time and thousands of units each keep theirs.
#[derive(Default)]
pub(super) struct UnitTimers(pub(super) Vec<(TimerKind, TimerKey)>);

impl UnitTimers {
    /// Arms `kind` as `key`; the key it replaces, if any.
    fn insert(&mut self, kind: TimerKind, key: TimerKey) -> Option<TimerKey> {
        match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some(slot) => Some(std::mem::replace(&mut slot.1, key)),
            None => {
                self.0.push((kind, key));
                None
            }
        }
    }

    /// Disarms `kind`: its key, if it was armed.
    fn remove(&mut self, kind: &TimerKind) -> Option<TimerKey> {
        let i = self.0.iter().position(|(k, _)| k == kind)?;
        Some(self.0.swap_remove(i).1)
    }
}

/// The unit whose process has this pid (main processes and health-check commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PidOwner {
    Main(UnitId),
    Probe(UnitId),
    /// An instance of an acceptor, by its number.
    Instance(u64),
}

impl Supervisor {
    /// Performs what the manager has decided, until it decides nothing more.
    pub(super) fn run_actions(&mut self) {
        loop {
            let actions = self.services.take_actions();
            if actions.is_empty() {
                return;
            }
            for action in actions {
                self.perform(action);
            }
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Spawn(id) => self.spawn_unit(id),
            Action::Signal { unit, sig, tree } => self.signal_unit(unit, sig, tree),
            Action::Kill(unit) => self.kill_unit(unit),
            Action::Freeze { unit, frozen } => self.freeze_unit(unit, frozen),
            Action::Arm { unit, timer, after } => {
                let key = self
                    .timers
                    .arm(Instant::now() + after, TimerEvent::Unit(unit, timer));
                let rt = self.units.entry(unit).or_default();
                if let Some(old) = rt.timers.insert(timer, key) {
                    self.timers.cancel(old);
                }
            }
            Action::Disarm { unit, timer } => {
                if let Some(key) = self
                    .units
                    .get_mut(&unit)
                    .and_then(|rt| rt.timers.remove(&timer))
                {
                    self.timers.cancel(key);
                }
            }
            Action::Check(unit) => self.start_probe(unit),
            Action::Reply(to, reply) => self.reply(to, reply),
            Action::Forget(unit) => self.forget_unit(unit),
            Action::Exit(code) => {
                self.outcome.get_or_insert(super::Outcome::Critical(code));
                self.begin_shutdown(super::ShutdownCause::Critical);
            }
            Action::Emit(event) => self.emit(event),
            Action::Watch { unit, on } => {
                self.unwatch(unit);
                if on {
                    self.watch(unit);
                }
            }
        }
    }

    /// A timer of a unit fired.
    pub(super) fn unit_timer(&mut self, id: UnitId, kind: TimerKind) {
        if let Some(rt) = self.units.get_mut(&id) {
            rt.timers.remove(&kind);
        }
        self.services.timer(id, kind, now_ms());
        self.run_actions();
    }

    // ----- starting -----

    /// Starts a unit's process, with its notify socket, ready pipe and cgroup.
    fn spawn_unit(&mut self, id: UnitId) {
        let Some(spec) = self.services.spec(id).cloned() else {
            return;
        };
        if !self.spawner.can_pipeline() {
            self.reclaim_stacks();
        }
        match self.try_spawn_unit(id, &spec) {
            Ok(Some(pid)) => self.services.spawned(id, pid, now_ms()),
            // Told once the exec's outcome is known (settle_exec).
            Ok(None) => {}
            Err(reason) => self.services.spawn_failed(id, reason, now_ms()),
        }
    }

    /// Every stack of the spawner is in use: the pending execs that are over give theirs back
    /// (and the manager hears of them), so that the next spawn need not wait for its exec.
    fn reclaim_stacks(&mut self) {
        for id in self.execs_pending.clone() {
            self.settle_exec(id);
        }
    }

    /// Starts the unit's process: its pid when the program runs, `None` when its exec is still
    /// pending.
    /// The command of a unit's process: its argv and env with their `${service.port}`
    /// references replaced, and `ARCHON_SERVICE`.
    fn unit_command(&self, spec: &Service) -> Result<Command, String> {
        let mut env: Vec<EnvEntry> = Vec::with_capacity(spec.env.len() + 1);
        for (n, v) in &spec.env {
            env.push(EnvEntry {
                name: n.clone(),
                value: Some(
                    self.substitute(v)
                        .map_err(|e| format!("env[{}]: {e}", String::from_utf8_lossy(n)))?,
                ),
            });
        }
        let mut argv = Vec::with_capacity(spec.argv.len());
        for (i, a) in spec.argv.iter().enumerate() {
            argv.push(
                self.substitute(a)
                    .map_err(|e| format!("argv[{}]: {e}", i + 1))?,
            );
        }
        env.push(EnvEntry {
            name: b"ARCHON_SERVICE".to_vec(),
            value: Some(spec.name.clone().into_bytes()),
        });
        Ok(Command { argv, env })
    }

    fn try_spawn_unit(&mut self, id: UnitId, spec: &Service) -> Result<Option<i32>, String> {
        let Command { argv, mut env } = self.unit_command(spec)?;
        let mut set = |name: &str, value: Vec<u8>| {
            env.push(EnvEntry {
                name: name.as_bytes().to_vec(),
                value: Some(value),
            })
        };
        let mut extra_fds = Vec::new();
        let mut ready_write: Option<OwnedFd> = None;
        match spec.ready {
            Ready::Notify => {
                let path = self.notify_socket(id, spec)?;
                set("NOTIFY_SOCKET", path.into_os_string().into_encoded_bytes());
            }
            Ready::Fd(n) => {
                let (pipe, write) =
                    ReadyPipe::new().map_err(|e| format!("cannot make the ready pipe: {e}"))?;
                extra_fds.push((write.as_raw_fd(), n));
                ready_write = Some(write);
                let rt = self.units.entry(id).or_default();
                if let Some(mut old) = rt.ready.take() {
                    let _ = self.poll.registry().deregister(&mut old);
                }
                rt.ready = Some(Box::new(pipe));
            }
            Ready::Exec => {}
        }
        if let Some(ms) = spec.extras.watchdog_ms {
            set("WATCHDOG_USEC", (ms * 1000).to_string().into_bytes());
        }
        // The sockets' fds are borrowed for the spawn: archon keeps them.
        let held = self.sockets.of(&spec.name);
        let passing = !held.is_empty();
        for (name, value) in listen_env(held.iter().map(|b| b.name())) {
            set(name, value);
        }
        for (i, b) in held.iter().enumerate() {
            extra_fds.push((b.fd(), archon_lua::model::LISTEN_FDS_START + i as i32));
        }
        let shim = match &spec.extras.bind_shim {
            BindShim::Off => None,
            BindShim::Default => Some(self.shim.clone()?),
            BindShim::Path(p) => Some(p.clone()),
        };
        if let Some(shim) = shim {
            let existing = spec
                .env
                .iter()
                .chain(self.base_env.iter())
                .find(|(n, _)| n == b"LD_PRELOAD")
                .map(|(_, v)| v.as_slice());
            set("LD_PRELOAD", sockets::preload(&shim, existing));
        }
        let cmd = Command { argv, env };
        let exec = if passing {
            Exec::prepare_listening(&cmd, &self.base_env)
        } else {
            Exec::prepare(&cmd, &self.base_env)
        }
        .map_err(|e| e.to_string())?;
        let cgroup = self.unit_cgroup(id, spec);
        let opts = spawn_options(spec, cgroup.as_ref(), extra_fds);
        let writers = self.unit_log(id, spec);
        let stdio = match &writers {
            Some([out, err]) => [self.devnull.as_raw_fd(), out.as_raw_fd(), err.as_raw_fd()],
            None => [self.devnull.as_raw_fd(), 2, 2],
        };
        let spawned = self
            .spawner
            .spawn_pipelined(exec, stdio, opts)
            .map_err(|e| e.to_string())?;
        // The child has its copies; archon's must go, or an EOF on the pipe would never come.
        drop(ready_write);
        drop(writers);
        let (child, pending) = match spawned {
            Spawned::Running(child) => {
                debug!(
                    "{}: every exec stack in use: started without pipelining",
                    spec.name
                );
                (child, None)
            }
            Spawned::Pending(child, pending) => (child, Some(pending)),
        };
        let raw = child.pidfd.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&raw),
            unit_token(id, SUB_PIDFD),
            Interest::READABLE,
        ) {
            warn!(
                "{}: cannot watch the pidfd of {}: {e}",
                spec.name, child.pid
            );
        }
        if let Some(rt) = self.units.get_mut(&id) {
            if let Some(pipe) = rt.ready.as_mut() {
                if let Err(e) = self.poll.registry().register(
                    pipe,
                    unit_token(id, SUB_READY),
                    Interest::READABLE,
                ) {
                    warn!("{}: cannot watch the ready pipe: {e}", spec.name);
                }
            }
        }
        self.pids.insert(child.pid, PidOwner::Main(id));
        let rt = self.units.entry(id).or_default();
        rt.pid = child.pid;
        rt.pidfd = Some(child.pidfd);
        let Some(pending) = pending else {
            return Ok(Some(child.pid));
        };
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&pending.as_fd().as_raw_fd()),
            unit_token(id, SUB_EXEC),
            Interest::READABLE,
        ) {
            // Its end wakes the loop instead (pidfd, SIGCHLD), and settles the exec first.
            warn!(
                "{}: cannot watch the exec of {}: {e}; killed",
                spec.name, child.pid
            );
            if let Some(pidfd) = rt.pidfd.as_ref() {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL, 0);
            }
        }
        rt.exec = Some(Box::new(pending));
        self.execs_pending.push(id);
        Ok(None)
    }

    /// Tells the manager how the pending exec of `id` went, if its pipe says so yet (without
    /// blocking): true when it did. A program that runs is `spawned`; one that could not be
    /// executed fails to spawn, with the reason a vfork spawn gives, and its child (which exits
    /// 127) is no process of the unit's any more: it is reaped as an orphan, as a vfork child
    /// that could not exec is, so its exit is no second event.
    fn settle_exec(&mut self, id: UnitId) -> bool {
        let Some(rt) = self.units.get_mut(&id) else {
            return false;
        };
        let Some(pending) = rt.exec.as_mut() else {
            return false;
        };
        let Some(outcome) = self.spawner.poll_exec(pending) else {
            return false;
        };
        if let Some(pending) = rt.exec.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pending.as_fd().as_raw_fd()));
        }
        self.execs_pending.retain(|&u| u != id);
        match outcome {
            Ok(()) => self.services.spawned(id, rt.pid, now_ms()),
            Err(e) => {
                if let Some(fd) = rt.pidfd.take() {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&fd.as_raw_fd()));
                }
                self.pids.remove(&rt.pid);
                rt.pid = 0;
                if let Some(mut pipe) = rt.ready.take() {
                    let _ = self.poll.registry().deregister(&mut pipe);
                }
                self.services.spawn_failed(id, e.to_string(), now_ms());
            }
        }
        true
    }

    /// An argv or env value with its `${service.port}` references replaced by the ports of the
    /// sockets archon holds (checked when the file was loaded; a failure here is a bug).
    /// Where a `tcp` health check connects: its address, with the port of the socket a
    /// `${service.port}` names.
    fn probe_addr(&self, target: &archon_lua::TcpTarget) -> io::Result<std::net::SocketAddr> {
        let port = match &target.port {
            archon_lua::Port::Number(n) => *n,
            archon_lua::Port::Of(r) => self.port_of(r).map_err(|e| {
                io::Error::other(format!("${{{}}}: {e}", String::from_utf8_lossy(r)))
            })?,
        };
        Ok(target.with_port(port))
    }

    /// `text` with its `${service.port}` references replaced by the ports bound.
    fn substitute(&self, text: &[u8]) -> Result<Vec<u8>, String> {
        archon_lua::refs::substitute(text, |r| {
            self.port_of(r).map(|p| p.to_string().into_bytes())
        })
    }

    /// The port of the socket the reference `r` (`db.port`) names, as bound.
    fn port_of(&self, r: &[u8]) -> Result<u16, String> {
        let services = &self.services;
        let lookup = |name: &str| {
            services
                .id(name)
                .and_then(|id| services.spec(id))
                .map(|s| s.extras.sockets.as_slice())
        };
        let (service, i) = archon_lua::refs::find(r, lookup)?;
        self.sockets
            .port(service, i)
            .ok_or_else(|| format!("the socket of {service} is not bound"))
    }

    /// The service process `pid` belongs to: the one whose cgroup holds it, else the one whose
    /// main process is it or an ancestor of it (within [`MAX_ANCESTRY`] generations).
    fn unit_of_pid(&self, pid: i32) -> Option<UnitId> {
        if let Some(id) = self
            .cgroups
            .as_ref()
            .and_then(|c| c.service_of(pid))
            .and_then(|name| self.services.id(&name))
        {
            return Some(id);
        }
        // A process of a unit that has a cgroup is in it (leaving it takes privileges): the
        // walk up /proc is for units without one.
        if self
            .units
            .values()
            .all(|rt| rt.cgroup.is_some() || rt.pidfd.is_none())
        {
            return None;
        }
        let mut p = pid;
        for _ in 0..MAX_ANCESTRY {
            if let Some(PidOwner::Main(id)) = self.pids.get(&p) {
                return Some(*id);
            }
            p = procstat::ppid(p).filter(|&pp| pp > 1)?;
        }
        None
    }

    /// `Bind`: a copy of the socket at `addr` that the asking client's service declares. The
    /// asking process is the one that connected (`SO_PEERCRED`), checked alive through its
    /// pidfd (`SO_PEERPIDFD`) once its service is known, where the kernel has that.
    pub(super) fn bind_request(
        &self,
        client: super::ClientId,
        addr: &archon_proto::BindAddr,
    ) -> Result<OwnedFd, String> {
        let (peer, pidfd) = self
            .clients
            .get(&client)
            .map(|c| (c.peer, crate::control::peer_pidfd(c.stream.as_raw_fd())))
            .ok_or("the connection has gone")?;
        if peer.pid <= 0 {
            return Err("archon cannot see the asking process (another PID namespace)".into());
        }
        let refuse = |why: String| {
            debug!("Bind {addr} for pid {}: refused: {why}", peer.pid);
            why
        };
        let id = self
            .unit_of_pid(peer.pid)
            .ok_or_else(|| refuse(format!("process {} is in no service", peer.pid)))?;
        // The pid was read from /proc after the process connected: were the process gone, its
        // pid could name another one by now. Its pidfd still alive proves it was the same.
        if let Some(pidfd) = pidfd {
            if sys::pidfd_send_signal(pidfd.as_fd(), 0, 0).is_err() {
                return Err(refuse(format!("process {} has ended", peer.pid)));
            }
        }
        let name = self
            .services
            .spec(id)
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        let bound = self
            .sockets
            .find(name, addr)
            .ok_or_else(|| refuse(format!("{name} declares no socket at {addr}")))?;
        let fd = bound
            .dup()
            .map_err(|e| refuse(format!("cannot copy the socket: {e}")))?;
        debug!(
            "Bind {addr} for pid {}: {name}'s socket {}",
            peer.pid,
            bound.name()
        );
        Ok(fd)
    }

    /// Write ends of the unit's log pipes for a process about to start (archon closes them once
    /// it has started it); the pipes are made and registered at its first start, and its ring
    /// and file set as its declaration says now. `None` when the pipes cannot be made or
    /// written to: its output then goes to archon's stderr.
    fn unit_log(&mut self, id: UnitId, spec: &Service) -> Option<[OwnedFd; 2]> {
        let units = self.services.len() as u64;
        let rt = self.units.entry(id).or_default();
        let mut first = None;
        if rt.log.is_none() {
            if self.log_fds_short {
                return None;
            }
            let made = ServiceLog::new(spec.log()).and_then(|(mut log, writers)| {
                // fds are numbered lowest first: the highest one counts what is open. Every
                // unit must still get its pidfd, and clients their connections.
                let highest = writers.iter().map(|w| w.as_raw_fd()).max().unwrap_or(0);
                if highest as u64 + units + LOG_FD_RESERVE >= self.nofile {
                    return Err(io::Error::from_raw_os_error(libc::EMFILE));
                }
                for (i, pipe) in log.pipes.iter_mut().enumerate() {
                    self.poll.registry().register(
                        &mut pipe.read,
                        unit_token(id, SUB_LOG + i as u64),
                        Interest::READABLE,
                    )?;
                }
                Ok((log, writers))
            });
            match made {
                Ok((log, writers)) => {
                    rt.log = Some(Box::new(log));
                    first = Some(writers);
                }
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                    self.log_fds_short = true;
                    warn!(
                        "{}: no log pipes: {units} units and {LOG_FD_RESERVE} connections need \
                         the rest of the {} open files archon may have; the output of this and \
                         later services goes to archon's stderr",
                        spec.name, self.nofile
                    );
                    return None;
                }
                Err(e) => {
                    warn!(
                        "{}: cannot make its log pipes ({e}): its output goes to archon's stderr",
                        spec.name
                    );
                    return None;
                }
            }
        }
        let log = rt.log.as_mut()?;
        if let Err(why) = log.configure(spec.log()) {
            warn!("{}: {why}", spec.name);
        }
        match first.map_or_else(|| log.writers(), Ok) {
            Ok(writers) => Some(writers),
            Err(e) => {
                warn!(
                    "{}: cannot open its log pipes for writing ({e}): its output goes to \
                     archon's stderr",
                    spec.name
                );
                None
            }
        }
    }

    /// A log pipe of `id` is readable, or was left with more to read: one turn's read.
    pub(super) fn on_log(&mut self, id: UnitId, pipe: usize) {
        if self.log_buf.is_empty() {
            self.log_buf = vec![0; crate::logs::LOG_READ_PER_TURN];
        }
        let Some(log) = self.units.get_mut(&id).and_then(|rt| rt.log.as_mut()) else {
            return;
        };
        let mut lines = Vec::new();
        let (drained, err) = log.read(pipe, &mut self.log_buf, now_ms(), &mut lines);
        if let Some(why) = err {
            let name = self.services.spec(id).map_or("?", |s| s.name.as_str());
            warn!("{name}: {why}");
        }
        if drained == Drained::More && !self.logs_pending.contains(&(id, pipe)) {
            self.logs_pending.push((id, pipe));
        }
        if self.opts.echo_logs {
            let name = self.services.spec(id).map_or("?", |s| s.name.as_str());
            for l in &lines {
                crate::log::echo(name, l.stream.as_str(), &l.text);
            }
        }
        if self.lua.is_some() && !lines.is_empty() {
            if let Some(name) = self.services.spec(id).map(|s| s.name.clone()) {
                self.offer_lines_to_handlers(&name, &lines);
            }
        }
        self.stream_log_lines(id, &lines);
    }

    /// Queues `lines` of `id` on the streams of its followers (or drops and counts them for a
    /// follower too far behind).
    fn stream_log_lines(&mut self, id: UnitId, lines: &[archon_proto::LogLine]) {
        if lines.is_empty() || !self.followers.any_for(id) {
            return;
        }
        for line in lines {
            let to = self.followers.wanting(id, line.level);
            if to.is_empty() {
                continue;
            }
            let bytes = line.encode();
            for cid in to {
                let Some(c) = self.clients.get_mut(&cid) else {
                    continue;
                };
                if let crate::events::Offer::Send { dropped } =
                    self.followers.offer(cid, c.backlog(), bytes.len())
                {
                    if dropped > 0 {
                        c.push_stream(&archon_proto::StreamItem::Dropped(dropped).encode());
                    }
                    c.push_stream(&bytes);
                }
            }
        }
    }

    /// `Logs,<name>,<level>,<max>`: the newest lines kept.
    pub(super) fn logs(&self, name: &[u8], level: u8, max: Option<usize>) -> Reply {
        let text = String::from_utf8_lossy(name);
        let Some(id) = self.services.id(&text) else {
            return Reply::error(format!("no such service: {text}"));
        };
        let max = max.unwrap_or(MAX_LOG_ROWS).min(MAX_LOG_ROWS);
        Reply::Logs(
            self.units
                .get(&id)
                .and_then(|rt| rt.log.as_ref())
                .map(|l| l.ring().tail(level, max))
                .unwrap_or_default(),
        )
    }

    /// `FollowLogs,<name>,<level>,<max>`: `Ok,<name>`, then the newest `max` lines kept and
    /// every new one at `level` or more severe. Like `Subscribe`, a stream before the reply.
    pub(super) fn follow_logs(
        &mut self,
        to: crate::table::ReplyTo,
        name: Vec<u8>,
        level: u8,
        max: Option<usize>,
    ) {
        let text = String::from_utf8_lossy(&name).into_owned();
        let Some(id) = self.services.id(&text) else {
            return self.reply(to, Reply::error(format!("no such service: {text}")));
        };
        let past = match max {
            Some(n) if n > 0 => match self.logs(&name, level, Some(n)) {
                Reply::Logs(lines) => lines,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        let Some(c) = self.clients.get_mut(&to.client) else {
            return;
        };
        c.start_stream();
        self.followers.follow(to.client, id, level);
        self.reply(to, Reply::Ok(vec![name]));
        if let Some(c) = self.clients.get_mut(&to.client) {
            for line in &past {
                c.push_stream(&line.encode());
            }
            c.flush();
        }
    }

    /// The unit's notify socket, bound on first use: `<socket>.notify/<id>`.
    fn notify_socket(&mut self, id: UnitId, spec: &Service) -> Result<PathBuf, String> {
        if let Some(s) = self.units.get(&id).and_then(|rt| rt.notify.as_ref()) {
            return Ok(s.path().to_path_buf());
        }
        let dir = self.notify_dir();
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(format!("cannot create {}: {e}", dir.display()));
            }
        }
        // Services running as another user must reach their socket.
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711));
        let path = dir.join(id.to_string());
        let owner = spec.extras.user.as_ref().map(|c| (c.uid, c.gid));
        let mut socket = NotifySocket::bind(&path, owner)
            .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        self.poll
            .registry()
            .register(&mut socket, unit_token(id, SUB_NOTIFY), Interest::READABLE)
            .map_err(|e| format!("cannot watch the notify socket: {e}"))?;
        let path = socket.path().to_path_buf();
        self.units.entry(id).or_default().notify = Some(Box::new(socket));
        Ok(path)
    }

    /// The directory of the notify sockets, beside archon's socket.
    pub(super) fn notify_dir(&self) -> PathBuf {
        let mut dir = self.listening.path.clone().into_os_string();
        dir.push(".notify");
        PathBuf::from(dir)
    }

    /// The unit's cgroup (created on first use), opened for the spawner: the directory fd is
    /// opened per spawn (a few microseconds) rather than kept, so that ten thousand services
    /// cost one fd each (their pidfd), not two.
    fn unit_cgroup(&mut self, id: UnitId, spec: &Service) -> Option<OwnedFd> {
        let cgroups = self.cgroups.as_ref()?;
        let rt = self.units.entry(id).or_default();
        if rt.cgroup.is_none() {
            match cgroups.create(&spec.name) {
                Ok(cg) => rt.cgroup = Some(cg),
                Err(e) => {
                    warn!("{}: no cgroup: {e}", spec.name);
                    return None;
                }
            }
        }
        match rt.cgroup.as_ref()?.open_dir() {
            Ok(dir) => Some(dir),
            Err(e) => {
                warn!("{}: no cgroup: {e}", spec.name);
                None
            }
        }
    }

    // ----- signals -----

    /// Sends `sig` to a unit's main process, or (`tree`) to all of its processes: its cgroup when
    /// it has one, and its process group.
    fn signal_unit(&mut self, id: UnitId, sig: i32, tree: bool) {
        let Some(rt) = self.units.get(&id) else {
            return;
        };
        let Some(pidfd) = rt.pidfd.as_ref() else {
            return self.signal_instances(id, sig, tree);
        };
        let result = match (tree, rt.cgroup.as_ref()) {
            (true, Some(cg)) => {
                // The main process first, as systemd does: a shell that waits for its child
                // must get its signal before it sees the child die, or it exits 0 without
                // running its trap. Then everything else in the cgroup, including processes
                // that left the process group.
                let main = sys::pidfd_send_signal(pidfd.as_fd(), sig, 0);
                for pid in cg.procs().unwrap_or_default() {
                    if pid != rt.pid {
                        // SAFETY: kill has no memory effects. A pid read from cgroup.procs
                        // names a process of this service unless it ended and was reused in
                        // between, a window of microseconds.
                        unsafe { libc::kill(pid, sig) };
                    }
                }
                main
            }
            (true, None) => sys::signal_tree(pidfd.as_fd(), rt.pid, sig),
            (false, _) => sys::pidfd_send_signal(pidfd.as_fd(), sig, 0),
        };
        if let Err(e) = result {
            debug!("unit {id}: signal {sig}: {e}");
        }
    }

    /// SIGKILL to every process of a unit.
    fn kill_unit(&mut self, id: UnitId) {
        let Some(rt) = self.units.get(&id) else {
            return;
        };
        if let Some(cg) = rt.cgroup.as_ref() {
            if let Err(e) = cg.kill() {
                warn!("unit {id}: cgroup.kill: {e}");
            }
        }
        if let Some(pidfd) = rt.pidfd.as_ref() {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL, 0);
            let _ = sys::signal_group(pidfd.as_fd(), rt.pid, libc::SIGKILL);
        }
        for i in self.instances.values().filter(|i| i.unit == id) {
            let _ = sys::pidfd_send_signal(i.pidfd.as_fd(), libc::SIGKILL, 0);
            let _ = sys::signal_group(i.pidfd.as_fd(), i.pid, libc::SIGKILL);
        }
    }

    /// SIGKILL to every unit's process whose exec is pending (a forced shutdown: the manager
    /// signals only processes it knows run).
    pub(super) fn kill_pending_execs(&self) {
        for id in &self.execs_pending {
            if let Some(pidfd) = self.units.get(id).and_then(|rt| rt.pidfd.as_ref()) {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL, 0);
            }
        }
    }

    /// Stops or resumes every process of a unit: SIGSTOP or SIGCONT to its main process, then
    /// to the rest of its cgroup (or its process group).
    fn freeze_unit(&mut self, id: UnitId, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        self.signal_unit(id, sig, true);
    }

    // ----- ending -----

    /// A unit's main process has been reaped with `status`.
    pub(super) fn unit_ended(&mut self, id: UnitId, status: Status) {
        if self.units.get(&id).is_some_and(|rt| rt.exec.is_some()) {
            // Its callers settle the exec first, and an ended process has closed its pipe; should
            // the pipe be open still (a copy of the write end elsewhere), the process did run and
            // end: the manager hears both. Dropping the record frees it only if the pipe has
            // closed since, and leaks it otherwise.
            warn!("unit {id}: ended before its exec was settled");
            if let Some(rt) = self.units.get_mut(&id) {
                if let Some(pending) = rt.exec.take() {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&pending.as_fd().as_raw_fd()));
                    drop(pending);
                }
                self.services.spawned(id, rt.pid, now_ms());
            }
            self.execs_pending.retain(|&u| u != id);
        }
        if let Some(rt) = self.units.get_mut(&id) {
            if let Some(fd) = rt.pidfd.take() {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&fd.as_raw_fd()));
                // What it leaves behind goes with it, so that a restart starts clean: the rest
                // of its cgroup, and of its process group (which the pidfd still pins).
                let _ = sys::signal_group(fd.as_fd(), rt.pid, libc::SIGKILL);
            }
            if let Some(cg) = rt.cgroup.as_ref() {
                if cg.populated().unwrap_or(false) {
                    debug!("unit {id}: killing what is left in its cgroup");
                    let _ = cg.kill();
                }
            }
            self.pids.remove(&rt.pid);
            if let Some(mut pipe) = rt.ready.take() {
                let _ = self.poll.registry().deregister(&mut pipe);
            }
        }
        self.services.exited(id, status, now_ms());
        self.run_actions();
    }

    /// A unit's pidfd is readable: its main process has ended (its exec was settled first).
    fn on_unit_pidfd(&mut self, id: UnitId) {
        let status = self
            .units
            .get(&id)
            .and_then(|rt| rt.pidfd.as_ref())
            .and_then(|fd| sys::reap_pidfd(fd.as_fd()).ok().flatten());
        if let Some(status) = status {
            self.unit_ended(id, status);
        }
    }

    /// A unit was removed by a reload and is down: its notify socket, cgroup and timers go.
    fn forget_unit(&mut self, id: UnitId) {
        let Some(mut rt) = self.units.remove(&id) else {
            return;
        };
        for (_, key) in rt.timers.0.drain(..) {
            self.timers.cancel(key);
        }
        if let Some(mut s) = rt.notify.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if let Some(watch) = rt.watch.take() {
            self.drop_watch(*watch);
        }
        let left: Vec<u64> = self
            .instances
            .iter()
            .filter(|(_, i)| i.unit == id)
            .map(|(&n, _)| n)
            .collect();
        for n in left {
            // The manager forgets no acceptor with instances; were it to, they are killed, and
            // reaped as orphans.
            if let Some(i) = self.instances.remove(&n) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&i.pidfd.as_raw_fd()));
                let _ = sys::pidfd_send_signal(i.pidfd.as_fd(), libc::SIGKILL, 0);
                self.pids.remove(&i.pid);
            }
        }
        if let Some((probe, key)) = rt.probe.take().map(|b| *b) {
            self.timers.cancel(key);
            self.drop_probe(probe);
        }
        if let Some(pending) = rt.exec.take() {
            // The manager forgets no unit whose exec is pending; were it to, dropping the record
            // frees it only if its pipe is closed, and leaks it otherwise.
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pending.as_fd().as_raw_fd()));
            self.execs_pending.retain(|&u| u != id);
            drop(pending);
        }
        if let Some(mut log) = rt.log.take() {
            let mut lines = Vec::new();
            if let Some(why) = log.finish(now_ms(), &mut lines) {
                warn!("unit {id}: {why}");
            }
            self.stream_log_lines(id, &lines);
            for pipe in log.pipes.iter_mut() {
                let _ = self.poll.registry().deregister(&mut pipe.read);
            }
            self.logs_pending.retain(|&(u, _)| u != id);
        }
        if let Some(cg) = rt.cgroup.take() {
            let _ = cg.kill();
            if let Err(e) = cg.remove() {
                debug!("unit {id}: cgroup: {e}");
            }
        }
    }

    /// Every unit's resources at exit (the cgroups are removed).
    pub(super) fn forget_all_units(&mut self) {
        let ids: Vec<UnitId> = self.units.keys().copied().collect();
        for id in ids {
            self.forget_unit(id);
        }
        let _ = std::fs::remove_dir(self.notify_dir());
    }

    // ----- readiness -----

    /// One of a unit's fds woke the loop. Whichever it is, the exec's outcome is told first.
    pub(super) fn on_unit(&mut self, token_id: u64) {
        let (id, sub) = (token_id >> SUB_BITS, token_id & ((1 << SUB_BITS) - 1));
        if sub == SUB_INSTANCE {
            return self.on_instance(id);
        }
        if self.settle_exec(id) {
            self.run_actions();
        }
        match sub {
            SUB_PIDFD => self.on_unit_pidfd(id),
            SUB_NOTIFY => self.on_notify(id),
            SUB_READY => self.on_ready_pipe(id),
            SUB_PROBE => self.on_probe(id),
            SUB_LOG => self.on_log(id, 0),
            s if s == SUB_LOG + 1 => self.on_log(id, 1),
            SUB_SOCKETS => self.on_sockets(id),
            _ => {}
        }
    }

    // ----- on-demand services -----

    /// Watches the sockets of `id` for a connection or a datagram.
    fn watch(&mut self, id: UnitId) {
        let Some((name, accept)) = self.services.spec(id).map(|s| (s.name.clone(), s.accept))
        else {
            return;
        };
        let mut sockets = Vec::new();
        for b in self.sockets.of(&name) {
            let registered = b.dup().and_then(|fd| {
                if accept {
                    sockets::set_nonblocking(fd.as_raw_fd(), true)?;
                }
                self.poll
                    .registry()
                    .register(
                        &mut SourceFd(&fd.as_raw_fd()),
                        unit_token(id, SUB_SOCKETS),
                        Interest::READABLE,
                    )
                    .map(|()| fd)
            });
            match registered {
                Ok(fd) => sockets.push(Watched {
                    fd,
                    name: b.name().to_string(),
                    local: b.local().clone(),
                }),
                Err(e) => warn!("{name}: cannot watch socket {}: {e}", b.name()),
            }
        }
        debug!(
            "{name}: watching {} sockets{}",
            sockets.len(),
            if accept { " to accept" } else { "" }
        );
        self.units.entry(id).or_default().watch = Some(Box::new(Watch { accept, sockets }));
    }

    /// Stops watching the sockets of `id`, if they were.
    fn unwatch(&mut self, id: UnitId) {
        if let Some(watch) = self.units.get_mut(&id).and_then(|rt| rt.watch.take()) {
            self.drop_watch(*watch);
        }
    }

    fn drop_watch(&mut self, watch: Watch) {
        for w in watch.sockets {
            // Before the copy closes: the registration is the open socket's, and would outlive
            // this descriptor while another (archon's own, a child's) keeps the socket open.
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&w.fd.as_raw_fd()));
            if watch.accept {
                // Blocking again, as bound: a reload may pass it to a service that listens.
                let _ = sockets::set_nonblocking(w.fd.as_raw_fd(), false);
            }
        }
    }

    /// The sockets archon holds may have changed (a reload): every watch is made again on the
    /// sockets held now.
    pub(super) fn rewatch(&mut self) {
        let watched: Vec<UnitId> = self
            .units
            .iter()
            .filter(|(_, rt)| rt.watch.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in watched {
            self.unwatch(id);
            self.watch(id);
        }
    }

    /// A connection or a datagram came to the sockets of an on-demand service: the manager
    /// starts it, and ends the watch. archon reads nothing from the sockets: what came waits
    /// there for the service.
    pub(super) fn on_sockets(&mut self, id: UnitId) {
        let Some(watch) = self.units.get(&id).and_then(|rt| rt.watch.as_ref()) else {
            return;
        };
        if watch.accept {
            return self.accept_connections(id);
        }
        self.services.activate(id, now_ms());
        self.run_actions();
    }

    // ----- acceptors -----

    /// Connections wait on the sockets of the acceptor `id`: each is accepted and gets an
    /// instance, while the manager says it accepts (below `max_connections`), at most
    /// [`ACCEPTS_PER_TURN`](super::ACCEPTS_PER_TURN) in this turn; the rest are taken before
    /// the next sleep, since no new edge will say they wait.
    fn accept_connections(&mut self, id: UnitId) {
        for _ in 0..super::ACCEPTS_PER_TURN {
            if !self.services.accepts(id) {
                return;
            }
            match self.accept_one(id) {
                Some((conn, name)) => self.spawn_instance(id, conn, &name),
                None => return,
            }
        }
        if !self.accepts_pending.contains(&id) {
            self.accepts_pending.push(id);
        }
    }

    /// One connection from the sockets the acceptor `id` watches, and the name of the socket
    /// it came to; `None` when none waits.
    fn accept_one(&mut self, id: UnitId) -> Option<(sockets::Connection, String)> {
        let name = self.services.spec(id).map_or("?", |s| s.name.as_str());
        let watch = self.units.get(&id)?.watch.as_ref()?;
        for w in &watch.sockets {
            loop {
                match sockets::accept(w.fd.as_raw_fd(), &w.local) {
                    Ok(Some(conn)) => return Some((conn, w.name.clone())),
                    Ok(None) => break,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO)
                        ) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                        // Out of fds: the spare one is freed to take the connection and close
                        // it, rather than leave it in the backlog with no edge to come.
                        warn!("{name}: out of file descriptors: refusing a connection");
                        self.spare_fd = None;
                        // SAFETY: accept4 with no address; the fd it returns is ours.
                        let fd = unsafe {
                            libc::accept4(
                                w.fd.as_raw_fd(),
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                                libc::SOCK_CLOEXEC,
                            )
                        };
                        if fd >= 0 {
                            // SAFETY: the kernel just gave us this fd.
                            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                        }
                        self.spare_fd = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
                        if fd < 0 || self.spare_fd.is_none() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!("{name}: accept on socket {}: {e}", w.name);
                        break;
                    }
                }
            }
        }
        None
    }

    /// Starts an instance of the acceptor `id` for `conn`, which came to its socket `socket`:
    /// the connection is its stdin, its stdout and fd 3 (`LISTEN_FDS=1`), its stderr the
    /// service's log. archon's copy of the connection is closed once the spawn returns.
    fn spawn_instance(&mut self, id: UnitId, conn: sockets::Connection, socket: &str) {
        let Some(spec) = self.services.spec(id).cloned() else {
            return;
        };
        let why = format!("a connection from {}", conn.peer);
        let spawned = self.try_spawn_instance(id, &spec, &conn, socket);
        drop(conn);
        let now = now_ms();
        match spawned {
            Ok(child) => {
                let n = self.next_instance;
                self.next_instance += 1;
                if let Err(e) = self.poll.registry().register(
                    &mut SourceFd(&child.pidfd.as_raw_fd()),
                    unit_token(n, SUB_INSTANCE),
                    Interest::READABLE,
                ) {
                    // Its end is found through SIGCHLD instead.
                    warn!(
                        "{}: cannot watch the pidfd of {}: {e}",
                        spec.name, child.pid
                    );
                }
                self.pids.insert(child.pid, PidOwner::Instance(n));
                self.instances.insert(
                    n,
                    Instance {
                        unit: id,
                        pid: child.pid,
                        pidfd: child.pidfd,
                        peer: why.clone(),
                    },
                );
                debug!("{}: instance {n}, pid {}: {why}", spec.name, child.pid);
                self.services.instance_started(id, child.pid, &why, now);
            }
            Err(e) => {
                self.services
                    .instance_failed(id, &format!("{why}: {e}"), now);
            }
        }
        self.run_actions();
    }

    fn try_spawn_instance(
        &mut self,
        id: UnitId,
        spec: &Service,
        conn: &sockets::Connection,
        socket: &str,
    ) -> Result<crate::spawn::Child, String> {
        let mut cmd = self.unit_command(spec)?;
        for (name, value) in listen_env([socket].into_iter())
            .into_iter()
            .chain(conn.env.clone())
        {
            cmd.env.push(EnvEntry {
                name: name.as_bytes().to_vec(),
                value: Some(value),
            });
        }
        let exec = Exec::prepare_listening(&cmd, &self.base_env).map_err(|e| e.to_string())?;
        let cgroup = self.unit_cgroup(id, spec);
        let fd = conn.fd.as_raw_fd();
        let opts = spawn_options(
            spec,
            cgroup.as_ref(),
            vec![(fd, archon_lua::model::LISTEN_FDS_START)],
        );
        let writers = self.unit_log(id, spec);
        let stderr = match &writers {
            Some([_, err]) => err.as_raw_fd(),
            None => 2,
        };
        // A vfork spawn: the child has its copies when this returns, and archon's go.
        self.spawner
            .spawn_with(&exec, [fd, fd, stderr], &opts)
            .map_err(|e| e.to_string())
    }

    /// An instance's pidfd is readable: it has ended.
    fn on_instance(&mut self, n: u64) {
        let status = self
            .instances
            .get(&n)
            .and_then(|i| sys::reap_pidfd(i.pidfd.as_fd()).ok().flatten());
        if let Some(status) = status {
            self.instance_ended(n, status);
        }
    }

    /// Instance `n` has been reaped with `status`: what it left in its process group goes with
    /// it, and the manager hears of it.
    pub(super) fn instance_ended(&mut self, n: u64, status: Status) {
        let Some(i) = self.instances.remove(&n) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&i.pidfd.as_raw_fd()));
        let _ = sys::signal_group(i.pidfd.as_fd(), i.pid, libc::SIGKILL);
        self.pids.remove(&i.pid);
        self.services
            .instance_exited(i.unit, i.pid, status, &i.peer, now_ms());
        self.run_actions();
    }

    /// Sends `sig` to every instance of the acceptor `id`, or (`tree`) to all of their
    /// processes: each instance's own first, then the rest of the cgroup or each instance's
    /// process group.
    fn signal_instances(&self, id: UnitId, sig: i32, tree: bool) {
        let cgroup = self.units.get(&id).and_then(|rt| rt.cgroup.as_ref());
        let mine: Vec<&Instance> = self.instances.values().filter(|i| i.unit == id).collect();
        for i in &mine {
            let result = match (tree, cgroup) {
                (true, None) => sys::signal_tree(i.pidfd.as_fd(), i.pid, sig),
                _ => sys::pidfd_send_signal(i.pidfd.as_fd(), sig, 0),
            };
            if let Err(e) = result {
                debug!("unit {id}: instance {}: signal {sig}: {e}", i.pid);
            }
        }
        if let (true, Some(cg)) = (tree, cgroup) {
            for pid in cg.procs().unwrap_or_default() {
                if mine.iter().all(|i| i.pid != pid) {
                    // SAFETY: kill has no memory effects (see signal_unit).
                    unsafe { libc::kill(pid, sig) };
                }
            }
        }
    }

    /// A main process of a unit has ended (SIGCHLD found it): its exec is settled first. True
    /// when that told the manager something (the caller then looks at the child again: it is
    /// the unit's if it exec'd, an orphan if it did not).
    pub(super) fn settle_exec_of_ended(&mut self, id: UnitId) -> bool {
        let told = self.settle_exec(id);
        if told {
            self.run_actions();
        }
        told
    }

    fn on_notify(&mut self, id: UnitId) {
        loop {
            let Some(socket) = self.units.get_mut(&id).and_then(|rt| rt.notify.as_mut()) else {
                return;
            };
            let received = socket.recv_all();
            let now = now_ms();
            for message in received.messages {
                for notice in message.notices {
                    match notice {
                        Notice::Ready => self.services.ready(id, now),
                        Notice::Watchdog => self.services.watchdog_kick(id),
                        Notice::Status(text) => self.services.status_text(id, text),
                        Notice::WatchdogTrigger => {
                            self.services.timer(id, TimerKind::Watchdog, now);
                        }
                        other => debug!("unit {id}: notify: {other:?}"),
                    }
                }
            }
            self.run_actions();
            if !received.more {
                return;
            }
        }
    }

    fn on_ready_pipe(&mut self, id: UnitId) {
        let Some(rt) = self.units.get_mut(&id) else {
            return;
        };
        let Some(pipe) = rt.ready.as_mut() else {
            return;
        };
        match pipe.read() {
            ReadyOutcome::Ready => {
                if let Some(mut pipe) = rt.ready.take() {
                    let _ = self.poll.registry().deregister(&mut pipe);
                }
                self.services.ready(id, now_ms());
                self.run_actions();
            }
            ReadyOutcome::NotYet => {}
            ReadyOutcome::Closed => {
                if let Some(mut pipe) = rt.ready.take() {
                    let _ = self.poll.registry().deregister(&mut pipe);
                }
                debug!("unit {id}: ready fd closed before a line");
            }
        }
    }

    // ----- health checks -----

    fn start_probe(&mut self, id: UnitId) {
        let Some(h) = self.services.spec(id).and_then(|s| s.health.clone()) else {
            return;
        };
        if self.units.get(&id).is_some_and(|rt| rt.probe.is_some()) {
            return;
        }
        let started = match &h.check {
            Check::Tcp(target) => {
                self.probe_addr(target)
                    .and_then(TcpProbe::start)
                    .and_then(|mut p| {
                        self.poll
                            .registry()
                            .register(&mut p, unit_token(id, SUB_PROBE), Interest::WRITABLE)
                            .map(|()| Probe::Tcp(p))
                    })
            }
            Check::Command(argv) => self.spawn_probe(id, argv),
        };
        match started {
            Ok(probe) => {
                let key = self.timers.arm(
                    Instant::now() + Duration::from_millis(h.timeout_ms),
                    TimerEvent::Probe(id),
                );
                self.units.entry(id).or_default().probe = Some(Box::new((probe, key)));
            }
            Err(e) => {
                self.services.health_result(
                    id,
                    Err(format!("cannot run the check: {e}")),
                    now_ms(),
                );
                self.run_actions();
            }
        }
    }

    fn spawn_probe(&mut self, id: UnitId, argv: &[Vec<u8>]) -> io::Result<Probe> {
        let cmd = Command {
            argv: argv.to_vec(),
            env: Vec::new(),
        };
        let exec = Exec::prepare(&cmd, &self.base_env)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let dev = self.devnull.as_raw_fd();
        let child = self
            .spawner
            .spawn(&exec, [dev, dev, dev])
            .map_err(|e| io::Error::other(e.to_string()))?;
        let raw = child.pidfd.as_raw_fd();
        self.poll.registry().register(
            &mut SourceFd(&raw),
            unit_token(id, SUB_PROBE),
            Interest::READABLE,
        )?;
        self.pids.insert(child.pid, PidOwner::Probe(id));
        Ok(Probe::Command {
            pid: child.pid,
            pidfd: child.pidfd,
        })
    }

    /// A health check's fd woke the loop: a TCP connect ended, or a check command exited.
    fn on_probe(&mut self, id: UnitId) {
        let outcome = match self
            .units
            .get_mut(&id)
            .and_then(|rt| rt.probe.as_deref_mut())
        {
            Some((Probe::Tcp(p), _)) => match p.outcome() {
                Some(result) => result,
                None => return,
            },
            Some((Probe::Command { pidfd, .. }, _)) => {
                match sys::reap_pidfd(pidfd.as_fd()).ok().flatten() {
                    Some(status) => health::command_outcome(status),
                    None => return,
                }
            }
            None => return,
        };
        self.end_probe(id, outcome);
    }

    /// A health check of `id` ran out of time.
    pub(super) fn probe_timeout(&mut self, id: UnitId) {
        let timeout = self
            .services
            .spec(id)
            .and_then(|s| s.health.as_ref())
            .map_or(0, |h| h.timeout_ms);
        self.end_probe(id, Err(health::timed_out(Duration::from_millis(timeout))));
    }

    fn end_probe(&mut self, id: UnitId, result: Result<(), String>) {
        let Some((probe, key)) = self
            .units
            .get_mut(&id)
            .and_then(|rt| rt.probe.take())
            .map(|b| *b)
        else {
            return;
        };
        self.timers.cancel(key);
        self.drop_probe(probe);
        self.services.health_result(id, result, now_ms());
        self.run_actions();
    }

    pub(super) fn drop_probe(&mut self, probe: Probe) {
        match probe {
            Probe::Tcp(mut p) => {
                let _ = self.poll.registry().deregister(&mut p);
            }
            Probe::Command { pid, pidfd } => {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
                // Killed if it still runs; reaped now or as it ends (by pid, through SIGCHLD).
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL, 0);
                if sys::reap_pidfd(pidfd.as_fd()).ok().flatten().is_some() {
                    self.pids.remove(&pid);
                }
            }
        }
    }

    /// A health check command reaped by pid (through SIGCHLD).
    pub(super) fn probe_reaped(&mut self, id: UnitId, status: Status) {
        self.end_probe(id, health::command_outcome(status));
    }

    // ----- what clients are shown -----

    /// `Status[,<name>...]`: a row per unit asked for (every unit and every process when none).
    pub(super) fn status(&self, names: &[Vec<u8>]) -> Reply {
        let mut rows = Vec::new();
        if names.is_empty() {
            for id in self.services.ids() {
                rows.extend(self.unit_row(id));
            }
            rows.extend(self.table.iter().map(|p| process_row(&p.row)));
        } else {
            for name in names {
                let text = String::from_utf8_lossy(name);
                match self.services.id(&text) {
                    Some(id) => rows.extend(self.unit_row(id)),
                    None => return Reply::error(format!("no such service: {text}")),
                }
            }
        }
        Reply::Status(rows)
    }

    pub(super) fn unit_row(&self, id: UnitId) -> Option<ServiceRow> {
        let v = self.services.view(id)?;
        let rt = self.units.get(&id);
        let (rss_kib, cpu_ms) = match rt {
            Some(rt) if rt.pidfd.is_some() || v.instances > 0 => self.usage(id, rt),
            _ => (None, None),
        };
        let sockets = self.sockets.summary(&v.name);
        Some(ServiceRow {
            sockets,
            name: v.name.into_bytes(),
            kind: match v.kind {
                UnitKind::Service => ServiceKind::Service,
                UnitKind::Task => ServiceKind::Task,
            },
            state: v.state.into(),
            pid: v.pid,
            since_ms: v.since_ms,
            restarts: v.restarts,
            last: v.last,
            ready: v.ready,
            health: match v.health {
                Health::None => None,
                Health::Starting => Some(ProtoHealth::Starting),
                Health::Healthy => Some(ProtoHealth::Healthy),
                Health::Unhealthy => Some(ProtoHealth::Unhealthy),
            },
            rss_kib,
            cpu_ms,
            reason: v.reason.into_bytes(),
        })
    }

    /// Resident memory (KiB) and CPU time (ms) of a unit's whole tree: its cgroup's processes
    /// and CPU account, else its main process and descendants.
    fn usage(&self, id: UnitId, rt: &UnitRt) -> (Option<u64>, Option<u64>) {
        let pids = self.unit_pids(id, rt);
        let mut rss = 0;
        let mut ticks_ms = 0;
        for pid in &pids {
            if let Some(st) = procstat::sample(*pid) {
                rss += st.rss_kib;
                ticks_ms += procstat::ticks_to_ms(st.stat.cpu_ticks);
            }
        }
        let cpu = rt
            .cgroup
            .as_ref()
            .and_then(|cg| cg.cpu_usage_usec().ok())
            .map_or(ticks_ms, |us| us / 1000);
        (Some(rss), Some(cpu))
    }

    /// Every process of a unit: its cgroup's, else its main process (or its instances) and
    /// their descendants.
    fn unit_pids(&self, id: UnitId, rt: &UnitRt) -> Vec<i32> {
        if let Some(cg) = rt.cgroup.as_ref() {
            return cg.procs().unwrap_or_default();
        }
        let tops = rt.pidfd.as_ref().map(|_| rt.pid).into_iter().chain(
            self.instances
                .values()
                .filter(|i| i.unit == id)
                .map(|i| i.pid),
        );
        let mut pids = Vec::new();
        for top in tops {
            pids.push(top);
            pids.extend(
                procstat::descendants(top)
                    .into_iter()
                    .map(|(pid, _, _)| pid),
            );
        }
        pids
    }

    /// `Tree[,<name>]`: every process of every unit (or of one).
    pub(super) fn tree(&self, name: Option<&[u8]>) -> Reply {
        let ids: Vec<UnitId> = match name {
            Some(name) => {
                let text = String::from_utf8_lossy(name);
                match self.services.id(&text) {
                    Some(id) => vec![id],
                    None => return Reply::error(format!("no such service: {text}")),
                }
            }
            None => self.services.ids().collect(),
        };
        let mut nodes = Vec::new();
        for id in ids {
            let (Some(rt), Some(spec)) = (self.units.get(&id), self.services.spec(id)) else {
                continue;
            };
            for pid in self.unit_pids(id, rt) {
                if nodes.len() >= MAX_TREE_NODES {
                    return Reply::error(format!("too many processes (limit {MAX_TREE_NODES})"));
                }
                if let Some(st) = procstat::sample(pid) {
                    nodes.push(TreeNode {
                        name: spec.name.clone().into_bytes(),
                        pid,
                        ppid: st.stat.ppid,
                        comm: st.stat.comm.into_bytes(),
                    });
                }
            }
        }
        Reply::Tree(nodes)
    }

    /// `Config`: every unit's effective settings.
    pub(super) fn config_dump(&self) -> Reply {
        let mut settings = Vec::new();
        for id in self.services.ids() {
            let Some(spec) = self.services.spec(id) else {
                continue;
            };
            for (key, value) in spec.settings_bound(&self.sockets.locals(&spec.name)) {
                settings.push(Setting {
                    name: spec.name.clone().into_bytes(),
                    key: key.as_bytes().to_vec(),
                    value: value.into_bytes(),
                });
            }
        }
        Reply::Config(settings)
    }

    /// Logs what a unit's manager is set up with, once at start.
    pub(super) fn log_units(&self) {
        let n = self.services.ids().count();
        if n > 0 {
            info!(
                "{n} services and tasks; cgroups: {}",
                match &self.cgroups {
                    Some(c) => c.path().display().to_string(),
                    None => "none".to_string(),
                }
            );
        }
    }
}

/// The demonstration configuration of `--demo`: `examples/demo.lua`, built into the binary.
pub(super) const DEMO: &str = include_str!("../../../examples/demo.lua");

/// Where the configuration comes from: a file, read again on each reload, or the demo.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--config FILE`, or the default file.
    File(std::path::PathBuf),
    /// `--demo`.
    Demo,
}

impl Source {
    /// The name errors and the sockets' owner give the configuration.
    pub fn name(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Demo => "demo.lua".to_string(),
        }
    }
}

/// Evaluates the configuration, keeping its handlers, then gives back what the Lua state used.
pub fn evaluate(source: &Source) -> Result<archon_lua::Loaded, archon_lua::LoadError> {
    let config = match source {
        Source::File(path) => archon_lua::load(path),
        Source::Demo => archon_lua::load_source("demo.lua", DEMO.as_bytes()),
    };
    crate::memory::release();
    config
}

/// Builds the manager from an evaluated configuration.
pub(super) fn manager(config: archon_lua::Config) -> Manager {
    Manager::new(config, now_ms())
}

/// How a unit's processes are set up: its directory, user, umask, limits and nice value, in
/// its cgroup (borrowed), with these extra fds.
fn spawn_options(
    spec: &Service,
    cgroup: Option<&OwnedFd>,
    extra_fds: Vec<(i32, i32)>,
) -> SpawnOptions {
    SpawnOptions {
        cwd: spec
            .extras
            .cwd
            .as_ref()
            .and_then(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes().to_vec()).ok()),
        creds: spec.extras.user.as_ref().map(|c| Creds {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.clone(),
        }),
        umask: spec.extras.umask,
        rlimits: spec
            .extras
            .rlimits
            .iter()
            .map(|r| (r.resource, r.soft, r.hard))
            .collect(),
        nice: spec.extras.nice,
        cgroup: cgroup.map(AsRawFd::as_raw_fd),
        cgroup_procs: None,
        extra_fds,
    }
}

/// A process's row in `Status`: named by its id.
fn process_row(row: &archon_proto::ProcessRow) -> ServiceRow {
    ServiceRow {
        name: row.id.to_string().into_bytes(),
        kind: row.kind.into(),
        state: row.state.into(),
        pid: (row.state != archon_proto::ProcState::Exited).then_some(row.pid),
        since_ms: row.started_ms,
        restarts: 0,
        last: row.status,
        ready: None,
        health: None,
        rss_kib: None,
        cpu_ms: None,
        reason: Vec::new(),
        sockets: Vec::new(),
    }
}
