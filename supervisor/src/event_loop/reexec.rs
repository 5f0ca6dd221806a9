//! The loop's side of a re-exec (see [`crate::reexec`] for the mechanism and the format): what
//! the old image writes down of everything it holds, and how the new image takes it back: each
//! fd registered again under the same token, each timer armed for what was left of it, each
//! connection with its unread requests and unsent replies.
//!
//! Kept: the listening sockets (the same fds: a client may connect throughout), every process
//! (pidfds, and the replies owed when they end), every unit's life, pidfd, notify socket, ready
//! pipe, log pipes, partial lines and ring, its timers, an acceptor's instances (their pidfds,
//! and the watch of its sockets made again), the configuration's sockets, the history
//! and its numbering, and every connection that is not a stream. Not kept: subscribers and log
//! followers (closed: they connect again, and `History` has what they missed), `Run`s waiting
//! for a slot (answered `Error` before the state is written), a health check in flight (a new
//! one runs at once), fds that came with requests not yet read.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use archon_lua::Config;
use archon_proto::{Cause, Event, EventKind, Id, Kind, Reply, ServiceKind};
use mio::Interest;
use mio::net::UnixStream;
use mio::unix::SourceFd;

use super::units::{
    Instance, PidOwner, SUB_INSTANCE, SUB_LOG, SUB_NOTIFY, SUB_PIDFD, SUB_READY, unit_token,
};
use super::{Supervisor, TAG_CLIENT, now_ms, token};
use crate::control::Client;
use crate::listen::{BindListening, Listening};
use crate::logs::ServiceLog;
use crate::notify::{NotifySocket, ReadyPipe};
use crate::reexec::{self as rx, FdBank, ProcRecord, State, UnitRecord};
use crate::service::{Carried, TimerKind};
use crate::sockets::Sockets;
use crate::table::{Proc, ReplyTo};
use crate::timers::TimerEvent;
use crate::{error, info, sys, warn};

/// Every signal archon may have a handler for: blocked across the `execve`, so that one that
/// comes meanwhile waits for the new image's handlers instead of meeting the default action.
fn handled_signals() -> Vec<i32> {
    let mut sigs: Vec<i32> = super::MANAGER_SIGNALS.to_vec();
    sigs.extend(crate::pid1::INIT_SIGNALS);
    sigs.extend(crate::entry::FORWARDED);
    sigs
}

/// The event of archon's re-execution.
fn reexec_event(reason: String, by: Cause) -> Event {
    Event {
        seq: 0,
        time_ms: now_ms(),
        subject: b"archon".to_vec(),
        kind: ServiceKind::Archon,
        what: EventKind::Reexec,
        old: None,
        new: None,
        pid: Some(std::process::id() as i32),
        status: None,
        reason: reason.into_bytes(),
        cause: by,
    }
}

fn left_ms(deadline: Instant, now: Instant) -> u64 {
    deadline.saturating_duration_since(now).as_millis() as u64
}

/// archon's socket and its lock, carried.
pub(super) fn adopt_listening(st: &State, bank: &mut FdBank) -> Option<Listening> {
    let l = &st.listen;
    let (Some(listener), Some(lock)) = (bank.take(l.control), bank.take(l.lock)) else {
        error!("re-exec: archon's socket was not handed over: listening anew");
        return None;
    };
    Listening::adopt(listener, lock, l.path.clone())
        .map_err(|e| error!("re-exec: archon's socket: {e}: listening anew"))
        .ok()
}

/// The bind socket, carried.
pub(super) fn adopt_bind_listening(st: &State, bank: &mut FdBank) -> Option<BindListening> {
    let l = &st.listen;
    let listener = bank.take(l.bind)?;
    BindListening::adopt(listener, l.bind_path.clone())
        .map_err(|e| error!("re-exec: the bind socket: {e}: listening anew"))
        .ok()
}

/// The configuration's sockets, carried (before they are applied: what is kept is not bound
/// again).
pub(super) fn adopt_sockets(sockets: &mut Sockets, config: &Config, st: &State, bank: &mut FdBank) {
    for s in &st.sockets {
        let Some(fd) = bank.take(s.fd) else {
            warn!(
                "re-exec: {}: socket {} was not handed over",
                s.service, s.name
            );
            continue;
        };
        if let Err(why) = sockets.adopt(config, &s.service, &s.name, fd) {
            warn!("re-exec: {why}");
        }
    }
}

impl Supervisor {
    /// `ReExec[,<path>]`: root only. Answered by the new image (`Ok,<version>`), or `Error` by
    /// this one, which carries on as it was.
    pub(super) fn reexec_request(&mut self, to: ReplyTo, path: Option<Vec<u8>>) {
        let Some(peer) = self.clients.get(&to.client).map(|c| c.peer) else {
            return;
        };
        if peer.uid != 0 {
            info!(
                "refused a re-exec from uid {} (pid {}): root only",
                peer.uid, peer.pid
            );
            return self.reply(to, Reply::error("permission denied"));
        }
        let exe = path.map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(&p)));
        let by = Cause::Client {
            uid: peer.uid,
            pid: peer.pid,
        };
        if let Err(why) = self.reexec(exe, by, Some(to)) {
            self.reply(to, Reply::error(why));
        }
    }

    /// SIGQUIT: a re-exec of archon's own program.
    pub(super) fn reexec_signal(&mut self, sig: i32) {
        let name = archon_proto::signal::name(sig).unwrap_or_default();
        if let Err(why) = self.reexec(None, Cause::Archon, None) {
            warn!("{name}: no re-exec: {why}");
        }
    }

    /// Hands everything to a new image of `exe` (archon's own program when `None`); returns only
    /// when that could not be done, with why, everything as it was.
    fn reexec(
        &mut self,
        exe: Option<PathBuf>,
        by: Cause,
        to: Option<ReplyTo>,
    ) -> Result<(), String> {
        if self.shutdown.is_some() {
            return Err("shutting down".to_string());
        }
        if !self.execs_pending.is_empty() || self.services.spawning() {
            return Err("a service is being started: try again".to_string());
        }
        let exe = exe
            .or_else(|| self.exe.clone())
            .ok_or("archon cannot find its own program: give its path")?;
        let started = Instant::now();
        info!("re-exec of {} asked by {by}", exe.display());
        let fail = |this: &mut Supervisor, why: String| {
            warn!("re-exec of {}: {why}", exe.display());
            this.emit(reexec_event(format!("failed: {why}"), by));
            Err(why)
        };
        let write = |state: &State| {
            let bytes = state.encode();
            rx::write_memfd(&bytes)
                .map(|fd| (fd, bytes.len()))
                .map_err(|e| format!("cannot write the state: {e}"))
        };
        // The new program checks the state as it is now, before anything changes: a re-exec
        // that cannot be done leaves everything as it was (a queued Run waits on).
        let args = rx::original_args();
        let checked =
            write(&self.snapshot(by, to)).and_then(|(memfd, _)| rx::check(&exe, &args, &memfd));
        if let Err(why) = checked {
            return fail(self, why);
        }
        // Not carried: a queued Run is asked again.
        // An exit action waiting for a slot is reported as not run.
        for run in self.table.take_queue() {
            let reason = "archon is re-executing: ask again".to_string();
            self.run_not_started(run.to, run.action_of, run.by, reason);
        }
        self.emit(reexec_event(format!("begins: {}", exe.display()), by));
        // What can be sent is sent now (subscribers see the re-exec begin): the rest is carried.
        for c in self.clients.values_mut() {
            c.flush();
        }
        // The state handed over: the one checked, with those answers and that event.
        let state = self.snapshot(by, to);
        let (memfd, len) = match write(&state) {
            Ok(w) => w,
            Err(why) => return fail(self, why),
        };
        let mut fds = state.fds();
        fds.push(memfd.as_raw_fd());
        info!(
            "re-exec: {} bytes of state and {} fds handed over, checked in {} ms",
            len,
            fds.len(),
            started.elapsed().as_millis()
        );
        let e = match rx::set_cloexec(&fds, false) {
            Ok(()) => {
                let old = rx::block_signals(&handled_signals());
                let e = rx::exec(&exe, memfd.as_raw_fd(), &args);
                rx::set_mask(&old);
                e
            }
            Err(e) => e,
        };
        let _ = rx::set_cloexec(&fds, true);
        fail(self, format!("cannot execute {}: {e}", exe.display()))
    }

    /// Everything the new image takes over.
    fn snapshot(&self, by: Cause, to: Option<ReplyTo>) -> State {
        let now = Instant::now();
        let (control, lock) = self.listening.fds();
        let procs = self
            .table
            .iter()
            .map(|p| ProcRecord {
                row: p.row.clone(),
                pidfd: p.pidfd.as_ref().map(AsRawFd::as_raw_fd),
                waiters: p.waiters.clone(),
                kill_in_ms: p.kill_timer.map(|k| left_ms(k.deadline(), now)),
                stop_by: p.stop_by,
                on_exit: p.on_exit.iter().map(|a| (a.by, a.cmd.clone())).collect(),
            })
            .collect();
        let mut units = Vec::new();
        for id in self.services.ids() {
            let (Some(spec), Some(life)) = (self.services.spec(id), self.services.carry(id)) else {
                continue;
            };
            let mut rec = UnitRecord {
                name: spec.name.clone(),
                life,
                pidfd: None,
                notify: None,
                ready: None,
                timers: Vec::new(),
                log: None,
                accept: self.services.is_acceptor(id).then(|| {
                    self.instances
                        .iter()
                        .filter(|(_, i)| i.unit == id)
                        .map(|(&number, i)| rx::InstanceRecord {
                            number,
                            pid: i.pid,
                            pidfd: Some(i.pidfd.as_raw_fd()),
                            peer: i.peer.clone(),
                        })
                        .collect()
                }),
            };
            if let Some(rt) = self.units.get(&id) {
                rec.pidfd = rt.pidfd.as_ref().map(AsRawFd::as_raw_fd);
                rec.notify = rt.notify.as_ref().map(|n| n.carry());
                rec.ready = rt.ready.as_deref().map(ReadyPipe::fd);
                rec.log = rt.log.as_ref().map(|l| l.carry());
                rec.timers = rt
                    .timers
                    .0
                    .iter()
                    .map(|(kind, key)| (*kind, left_ms(key.deadline(), now)))
                    .collect();
                if rt.probe.is_some() {
                    // The check in flight is not carried: the next one runs at once.
                    rec.timers.retain(|(k, _)| *k != TimerKind::Health);
                    rec.timers.push((TimerKind::Health, 0));
                }
            }
            units.push(rec);
        }
        State {
            cause: by,
            reply_to: to,
            listen: rx::ListenRecord {
                path: self.listening.path.clone(),
                control,
                lock,
                bind: self.bind_listening.listener.as_raw_fd(),
                bind_path: self.bind_listening.path.clone(),
            },
            next_client: self.next_client,
            clients: self
                .clients
                .iter()
                .filter_map(|(&id, c)| c.carry(id))
                .collect(),
            next_seq: self.events.next_seq(),
            history: self.events.lines().map(<[u8]>::to_vec).collect(),
            next_proc: self.table.next_id(),
            main: self.main.as_ref().and_then(|m| m.id),
            children_nofile: self.spawner.children_nofile(),
            procs,
            units,
            sockets: self.sockets.carry(),
        }
    }

    /// The new image takes back what `build` did not: connections, history, processes, units;
    /// then says so (an event, and the requester's `Ok`). What cannot be taken back is logged,
    /// and a process is never let go: a unit the configuration no longer declares is kept as a
    /// daemon.
    pub(super) fn restore_rest(
        &mut self,
        st: State,
        bank: &mut FdBank,
        unknown: Vec<(String, Carried)>,
    ) {
        let now = Instant::now();
        let mut problems: Vec<String> = Vec::new();
        self.events.restore(st.next_seq, st.history);
        self.next_client = self.next_client.max(st.next_client);
        for rec in &st.clients {
            let Some(fd) = bank.take(rec.fd) else {
                problems.push(format!("client {}: not handed over", rec.id));
                continue;
            };
            let std_stream = std::os::unix::net::UnixStream::from(fd);
            let _ = std_stream.set_nonblocking(true);
            let mut stream = UnixStream::from_std(std_stream);
            let Ok(peer) = crate::control::peer_credentials(stream.as_raw_fd()) else {
                continue;
            };
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token(TAG_CLIENT, rec.id),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                problems.push(format!("client {}: {e}", rec.id));
                continue;
            }
            let mut client = Client::restored(stream, peer, rec);
            if client.bind_only {
                let deadline =
                    now + Duration::from_millis(archon_proto::limits::BIND_CONNECTION_MS);
                client.deadline = Some(self.timers.arm(deadline, TimerEvent::BindClient(rec.id)));
            }
            self.clients.insert(rec.id, client);
            self.next_client = self.next_client.max(rec.id + 1);
            self.wake(rec.id);
        }
        for rec in st.procs {
            self.restore_proc(rec, st.next_proc, bank, now, &mut problems);
        }
        if let Some(m) = self.main.as_mut() {
            m.id = st.main;
        }
        for rec in st.units {
            match self.services.id(&rec.name) {
                Some(id) if !unknown.iter().any(|(n, _)| *n == rec.name) => {
                    self.restore_unit(id, rec, bank, now, &mut problems)
                }
                _ => self.keep_as_daemon(rec, bank, &mut problems),
            }
        }
        if bank.left() > 0 {
            problems.push(format!("{} fds handed over that nothing took", bank.left()));
        }
        for p in &problems {
            warn!("re-exec: {p}");
        }
        let mut why = format!("done: archon {} took over", env!("CARGO_PKG_VERSION"));
        if !problems.is_empty() {
            why.push_str(&format!(
                " ({} problems: {})",
                problems.len(),
                problems.join("; ")
            ));
        }
        info!("re-exec {why}");
        self.emit(reexec_event(why, st.cause));
        if let Some(to) = st.reply_to {
            let version = env!("CARGO_PKG_VERSION").as_bytes().to_vec();
            self.reply(to, Reply::Ok(vec![version]));
        }
        // Whatever ended in between is reaped at once.
        self.rescan_leftovers = true;
        self.reap_children();
    }

    fn restore_proc(
        &mut self,
        rec: ProcRecord,
        next_id: archon_proto::Id,
        bank: &mut FdBank,
        now: Instant,
        problems: &mut Vec<String>,
    ) {
        let row = rec.row;
        let id = row.id;
        let mut p = Proc::new(row.kind, row.pid, row.started_ms, row.argv);
        p.row.id = id;
        p.row.state = row.state;
        p.row.status = row.status;
        p.waiters = rec.waiters;
        p.stop_by = rec.stop_by;
        p.on_exit = rec
            .on_exit
            .into_iter()
            .map(|(by, cmd)| crate::on_exit::ExitAction { cmd, by })
            .collect();
        p.pidfd = bank.take_opt(rec.pidfd);
        let live = p.is_live();
        if live && p.pidfd.is_none() && p.is_child() {
            // archon's child, not reaped: its pid names it still.
            p.pidfd = sys::pidfd_open(p.row.pid).ok();
        }
        if let Some(ms) = rec.kill_in_ms {
            p.kill_timer = Some(
                self.timers
                    .arm(now + Duration::from_millis(ms), TimerEvent::Kill(id)),
            );
        }
        let raw = p.pidfd.as_ref().map(AsRawFd::as_raw_fd);
        self.table.restore(p, next_id);
        if let (true, Some(raw)) = (live, raw) {
            if let Err(e) = self.watch_pidfd(id, raw) {
                problems.push(format!("process {id}: cannot watch its pidfd: {e}"));
            }
        } else if live {
            problems.push(format!(
                "process {id}: no pidfd: its end is seen by SIGCHLD only"
            ));
        }
    }

    fn restore_unit(
        &mut self,
        id: crate::service::UnitId,
        rec: UnitRecord,
        bank: &mut FdBank,
        now: Instant,
        problems: &mut Vec<String>,
    ) {
        let Some(spec) = self.services.spec(id).cloned() else {
            return;
        };
        let name = &rec.name;
        let pid = rec.life.pid();
        let mut pidfd = bank.take_opt(rec.pidfd);
        if let (None, Some(pid)) = (&pidfd, pid) {
            pidfd = sys::pidfd_open(pid).ok();
        }
        let cgroup = match &self.cgroups {
            Some(cg) if pid.is_some() || rec.accept.is_some() => cg.create(name).ok(),
            _ => None,
        };
        let registry = self.poll.registry();
        let rt = self.units.entry(id).or_default();
        rt.cgroup = cgroup;
        if let (Some(pid), Some(fd)) = (pid, pidfd) {
            if let Err(e) = registry.register(
                &mut SourceFd(&fd.as_raw_fd()),
                unit_token(id, SUB_PIDFD),
                Interest::READABLE,
            ) {
                problems.push(format!("{name}: cannot watch its pidfd: {e}"));
            }
            rt.pid = pid;
            rt.pidfd = Some(fd);
            self.pids.insert(pid, PidOwner::Main(id));
        } else if let Some(pid) = pid {
            problems.push(format!("{name}: no pidfd for {pid}"));
            rt.pid = pid;
            self.pids.insert(pid, PidOwner::Main(id));
        }
        if let Some(n) = &rec.notify {
            if let Some(fd) = bank.take(n.fd) {
                let mut socket = NotifySocket::adopt(fd, n);
                match registry.register(&mut socket, unit_token(id, SUB_NOTIFY), Interest::READABLE)
                {
                    Ok(()) => rt.notify = Some(Box::new(socket)),
                    Err(e) => problems.push(format!("{name}: notify socket: {e}")),
                }
            }
        }
        if let Some(fd) = bank.take_opt(rec.ready) {
            let mut pipe = ReadyPipe::adopt(fd);
            match registry.register(&mut pipe, unit_token(id, SUB_READY), Interest::READABLE) {
                Ok(()) => rt.ready = Some(Box::new(pipe)),
                Err(e) => problems.push(format!("{name}: ready pipe: {e}")),
            }
        }
        if let Some(log) = &rec.log {
            let [r0, r1] = log.reads.map(|fd| bank.take(fd));
            let [w0, w1] = log.writes.map(|fd| bank.take_opt(fd));
            let handed = |fd: Option<RawFd>, w: &Option<OwnedFd>| fd.is_none() || w.is_some();
            match (r0, r1) {
                (Some(r0), Some(r1))
                    if handed(log.writes[0], &w0) && handed(log.writes[1], &w1) =>
                {
                    let mut l = ServiceLog::restored([(r0, w0), (r1, w1)], log, spec.log());
                    for (i, pipe) in l.pipes.iter_mut().enumerate() {
                        if let Err(e) = registry.register(
                            &mut pipe.read,
                            unit_token(id, SUB_LOG + i as u64),
                            Interest::READABLE,
                        ) {
                            problems.push(format!("{name}: log pipe: {e}"));
                        }
                    }
                    rt.log = Some(Box::new(l));
                    self.logs_pending.extend([(id, 0), (id, 1)]);
                }
                _ => problems.push(format!("{name}: log pipes not handed over")),
            }
        }
        for (kind, ms) in rec.timers {
            let key = self
                .timers
                .arm(now + Duration::from_millis(ms), TimerEvent::Unit(id, kind));
            if let Some(rt) = self.units.get_mut(&id) {
                rt.timers.0.push((kind, key));
            }
        }
        if let Some(instances) = rec.accept {
            let n = instances.len() as u32;
            for i in instances {
                self.adopt_instance(id, i, bank, problems);
            }
            // Up as an acceptor again: the next settle watches its sockets.
            self.services.adopt_acceptor(id, n, now_ms());
        }
    }

    /// An instance of the acceptor `unit`, carried: its pidfd watched under its number.
    fn adopt_instance(
        &mut self,
        unit: crate::service::UnitId,
        rec: rx::InstanceRecord,
        bank: &mut FdBank,
        problems: &mut Vec<String>,
    ) {
        let Some(pidfd) = bank
            .take_opt(rec.pidfd)
            .or_else(|| sys::pidfd_open(rec.pid).ok())
        else {
            // Ended and reaped in between: nothing to watch; its end is not seen.
            problems.push(format!("instance {} (pid {}): gone", rec.number, rec.pid));
            return;
        };
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&pidfd.as_raw_fd()),
            unit_token(rec.number, SUB_INSTANCE),
            Interest::READABLE,
        ) {
            problems.push(format!(
                "instance {}: cannot watch its pidfd: {e}",
                rec.number
            ));
        }
        self.pids.insert(rec.pid, PidOwner::Instance(rec.number));
        self.next_instance = self.next_instance.max(rec.number.saturating_add(1));
        self.instances.insert(
            rec.number,
            Instance {
                unit,
                pid: rec.pid,
                pidfd,
                peer: rec.peer,
            },
        );
    }

    /// A unit the configuration no longer declares (or that cannot be read): its process is
    /// kept as a daemon, listed by its id, with the unit's name as its command line; so are the
    /// instances of an acceptor.
    fn keep_as_daemon(&mut self, rec: UnitRecord, bank: &mut FdBank, problems: &mut Vec<String>) {
        for i in rec.accept.iter().flatten() {
            let id = self.adopt_daemon(&rec.name, i.pid, bank.take_opt(i.pidfd));
            problems.push(format!(
                "{}: not in the configuration: its instance {} is kept as {id}",
                rec.name, i.pid
            ));
        }
        let Some(pid) = rec.life.pid() else {
            problems.push(format!("{}: no longer declared", rec.name));
            return;
        };
        let id = self.adopt_daemon(&rec.name, pid, bank.take_opt(rec.pidfd));
        problems.push(format!(
            "{}: not in the configuration: its process {pid} is kept as {id}",
            rec.name
        ));
    }

    /// Process `pid` of unit `name`, taken into the table as a daemon and watched through
    /// `pidfd` (or one opened now); its id.
    fn adopt_daemon(&mut self, name: &str, pid: i32, pidfd: Option<OwnedFd>) -> Id {
        let pidfd = pidfd.or_else(|| sys::pidfd_open(pid).ok());
        let mut p = Proc::new(Kind::Daemon, pid, now_ms(), vec![name.as_bytes().to_vec()]);
        let raw = pidfd.as_ref().map(AsRawFd::as_raw_fd);
        p.pidfd = pidfd;
        let id = self.table.insert(p);
        if let Some(raw) = raw {
            let _ = self.watch_pidfd(id, raw);
        }
        if let Some(event) = self.table.get(id).map(|p| p.start_event(Cause::Archon)) {
            self.emit(event);
        }
        id
    }
}
