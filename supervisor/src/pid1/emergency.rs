//! The emergency path of process 1: when archon cannot go on, it must not exit, for the kernel
//! panics when the machine's init does (and a container ends with its init). Two ways lead here:
//!
//! - archon cannot go on as the machine's init (its configuration is broken at boot, it cannot
//!   start, `reboot(2)` failed): [`emergency`], in the same image;
//! - archon faulted or panicked as process 1 (see [`super::fault`]): it executed itself anew as
//!   `archon --emergency <why> [--control-fd <fd>]`, which runs [`mode`]. Its memory is new:
//!   nothing of the old state is trusted or carried, but every process is still its child.
//!
//! Either way archon says why on its standard error (the console at boot) and, as the machine's
//! init, in the kernel's log (`/dev/kmsg`); as the machine's init it starts an emergency shell,
//! `/bin/sh`, on the console's terminal if there is one (the machine reboots when it exits). Then
//! it reaps every orphan for ever and, in emergency mode, serves its control socket for a few
//! requests: `Ping`, `Version`, `List` (archon's children as it finds them in `/proc`, each a
//! `monitor` row whose id is its pid) and, for root, `Poweroff`, `Reboot` and `Halt`, which end
//! every process (SIGTERM, SIGKILL after the default stop grace) and call `reboot(2)`; any other
//! request is answered `Error`. The init signals keep their meaning (see [`super::signal_action`]).
//! The output pipes of the services, inherited from the old image, are read and their lines
//! dropped, so that a service that writes does not block or die of SIGPIPE. Nothing is
//! restarted: the services that run go on running, unsupervised.
//!
//! The loop waits in `ppoll` with no timeout while nothing is going down: an idle archon in
//! emergency mode makes no system call either.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use archon_proto::limits::{DEFAULT_STOP_GRACE_MS, MAX_CLIENTS, PROTOCOL_VERSION};
use archon_proto::{Frame, Framer, Kind, Power, ProcState, ProcessRow, Reply, Request};

use super::{Role, SignalAction, fault, halt};
use crate::{error, info, warn};

/// The emergency shell.
const SHELL: &CStr = c"/bin/sh";

/// Where the shell talks to a person, when the terminal behind it is not known.
const CONSOLE: &CStr = c"/dev/console";

/// The terminals behind `/dev/console`, the last one the main one (`console=` of the kernel's
/// command line). `/dev/console` itself cannot be a controlling terminal: a shell there has no
/// job control and no Ctrl-C.
const CONSOLE_ACTIVE: &str = "/sys/class/tty/console/active";

/// The kernel's log, for a message that outlives the console's scrollback (`dmesg`).
const KMSG: &str = "/dev/kmsg";

/// `<2>`: the kernel log level of the emergency message (`KERN_CRIT`).
const KMSG_LEVEL: &str = "<2>";

/// How long processes that got SIGKILL may take to end before `reboot(2)` is called anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often, while going down, archon looks whether every process has ended (processes that
/// are not its children end without a SIGCHLD).
const DOWN_TICK: Duration = Duration::from_millis(50);

/// The signals the loop handles; blocked but while it waits.
const LOOP_SIGNALS: [i32; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

/// The signals of [`LOOP_SIGNALS`] received and not yet acted on, one bit each.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// Makes a panic of process 1 take the emergency path instead of unwinding out of `main`: the
/// message goes to archon's log, then archon executes itself in emergency mode (see
/// [`super::fault`]); if it cannot, it takes the emergency path in this image.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        error!("archon panicked: {info}: executing archon --emergency");
        let e = fault::exec_emergency(c"panic");
        emergency(&format!(
            "archon panicked ({info}) and cannot execute archon --emergency: {e}"
        ));
    }));
}

/// Says why on the console and in the kernel's log, starts the emergency shell as the machine's
/// init, and reaps for ever. Never returns.
pub fn emergency(reason: &str) -> ! {
    // The mask of a panic hook that could not execute, or of anything before: the loop sets its
    // own.
    let role = Role::detect();
    say(role, reason);
    Emergency::new(role, None, Vec::new()).run()
}

/// The emergency mode, `archon --emergency <why> [--control-fd <fd>]`: what the previous image
/// left open is taken over or closed, then the loop runs. Never returns.
pub fn mode(why: &str, control: Option<OwnedFd>) -> ! {
    // First, before anything is opened: the fds the previous image left.
    let control = control.and_then(control_socket);
    let keep = control.as_ref().map(AsRawFd::as_raw_fd);
    let pipes = inherited_pipes(keep);
    let role = Role::detect();
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(
            std::io::stderr(),
            "archon: emergency: panicked: {info}: archon only reaps from now on"
        );
        fault::reap_forever()
    }));
    crate::log::init(crate::log::Level::Info);
    if let Err(e) = fault::install(role == Role::Machine, true) {
        warn!("emergency: fault handlers: {e}");
    }
    let what = match why {
        "panic" => "archon panicked".to_string(),
        "stack-overflow" => "archon overflowed its stack".to_string(),
        sig => format!("archon got {sig}"),
    };
    let served = if control.is_some() {
        "its socket serves Ping, Version, List, Poweroff, Reboot and Halt"
    } else {
        "no control socket was handed over"
    };
    say(
        role,
        &format!(
            "{what} and runs in emergency mode: it reaps every process; {served}; nothing is \
             supervised or restarted (see archon(8))"
        ),
    );
    Emergency::new(role, control, pipes).run()
}

/// Says `reason` on stderr and, as the machine's init, in the kernel's log.
fn say(role: Role, reason: &str) {
    error!("emergency: {reason}");
    // In the kernel's log once: the line above went there already when archon's log does.
    if role == Role::Machine && !crate::log::to_kmsg() {
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open(KMSG) {
            // One write: each write to /dev/kmsg is a record of its own.
            let record = format!("{KMSG_LEVEL}archon: emergency: {reason}\n");
            let _ = kmsg.write_all(record.as_bytes());
        }
    }
}

/// The handed-over control socket, non-blocking and close-on-exec; `None` when the fd is not a
/// socket.
fn control_socket(fd: OwnedFd) -> Option<OwnedFd> {
    // SAFETY: fstat fills a stat of ours.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket {
        return None;
    }
    set_flags(fd.as_raw_fd());
    Some(fd)
}

/// Marks `fd` non-blocking and close-on-exec.
fn set_flags(fd: RawFd) {
    // SAFETY: fcntl on an fd of ours, flags only.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// The fds above 2 the previous image left open, but `keep`: the read ends of pipes are kept
/// (to be drained), everything else is closed.
fn inherited_pipes(keep: Option<RawFd>) -> Vec<OwnedFd> {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect(),
        // SAFETY: F_GETFD only checks that an fd is open.
        Err(_) => (3..4096)
            .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
            .collect(),
    };
    let mut pipes = Vec::new();
    for fd in fds {
        if fd <= 2 || Some(fd) == keep {
            continue;
        }
        // SAFETY: fstat and fcntl on an open fd (the directory's own fd, read above, is closed
        // by now and fails both, harmlessly); each fd is owned from here on, by a pipe or by
        // nothing (closed).
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 {
                continue;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let read_only =
                libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_ACCMODE == libc::O_RDONLY;
            if st.st_mode & libc::S_IFMT == libc::S_IFIFO && read_only {
                set_flags(fd.as_raw_fd());
                pipes.push(fd);
            }
        }
    }
    pipes
}

extern "C" fn on_signal(sig: libc::c_int) {
    if (0..64).contains(&sig) {
        PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    }
}

/// Blocks the loop's signals (they come in only while it waits), gives each a handler that
/// notes it, and unblocks every other signal (the previous image left them all blocked).
fn setup_signals() {
    // SAFETY: a handler that only sets a bit; masks of our own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in LOOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = if sig == libc::SIGCHLD {
                libc::SA_NOCLDSTOP
            } else {
                0
            };
            libc::sigfillset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// A connection to the control socket.
struct Client {
    fd: OwnedFd,
    uid: u32,
    inbuf: Vec<u8>,
    framer: Framer,
}

/// Going down: every process left got SIGTERM (and SIGKILL once `killed`); `power` then, or an
/// exit for a container's init asked to exit.
struct Down {
    power: Option<Power>,
    killed: bool,
    until: Instant,
}

/// The emergency loop's state.
struct Emergency {
    role: Role,
    control: Option<OwnedFd>,
    clients: Vec<Client>,
    pipes: Vec<OwnedFd>,
    shell: Option<libc::pid_t>,
    down: Option<Down>,
}

/// What woke the loop, by the index of its pollfd.
#[derive(Clone, Copy)]
enum Source {
    Control,
    Client(usize),
    Pipe(usize),
}

impl Emergency {
    fn new(role: Role, control: Option<OwnedFd>, pipes: Vec<OwnedFd>) -> Emergency {
        setup_signals();
        let shell = if role == Role::Machine {
            start_shell()
        } else {
            None
        };
        match shell {
            Some(pid) => error!(
                "emergency: {} started on the console (pid {pid}); the machine reboots when it \
                 exits",
                SHELL.to_string_lossy()
            ),
            None if role == Role::Machine => error!(
                "emergency: no {} to start: archon only reaps from now on",
                SHELL.to_string_lossy()
            ),
            None => {}
        }
        Emergency {
            role,
            control,
            clients: Vec::new(),
            pipes,
            shell,
            down: None,
        }
    }

    /// The loop: reap, act on signals, go down when asked, serve, drain, wait.
    fn run(mut self) -> ! {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.reap();
            self.take_signals();
            self.step_down();
            let mut fds = Vec::new();
            let mut sources = Vec::new();
            let poll_in = |fd: RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if let Some(c) = &self.control {
                fds.push(poll_in(c.as_raw_fd()));
                sources.push(Source::Control);
            }
            for (i, c) in self.clients.iter().enumerate() {
                fds.push(poll_in(c.fd.as_raw_fd()));
                sources.push(Source::Client(i));
            }
            for (i, p) in self.pipes.iter().enumerate() {
                fds.push(poll_in(p.as_raw_fd()));
                sources.push(Source::Pipe(i));
            }
            let tick = libc::timespec {
                tv_sec: 0,
                tv_nsec: DOWN_TICK.as_nanos() as libc::c_long,
            };
            let timeout = if self.down.is_some() {
                &tick as *const libc::timespec
            } else {
                std::ptr::null()
            };
            // SAFETY: fds is a valid array of its length; every signal is unblocked while ppoll
            // waits, the loop's own handlers only set bits.
            let n = unsafe {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout, &none)
            };
            if n <= 0 {
                continue;
            }
            // Pipes and clients last to first, so that removing one leaves the others' indices.
            for (pfd, source) in fds.iter().zip(sources).rev() {
                if pfd.revents == 0 {
                    continue;
                }
                match source {
                    Source::Control => self.accept(),
                    Source::Client(i) => self.serve(i, &mut buf),
                    Source::Pipe(i) => self.drain(i, &mut buf),
                }
            }
        }
    }

    /// Reaps every ended child; the end of the shell reboots the machine.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid int.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
            if pid <= 0 {
                return;
            }
            if Some(pid) == self.shell {
                self.shell = None;
                error!("emergency: the shell has ended: rebooting");
                self.begin_down(Some(Power::Reboot));
            }
        }
    }

    /// Acts on the init signals received.
    fn take_signals(&mut self) {
        let pending = PENDING.swap(0, Ordering::SeqCst);
        for sig in LOOP_SIGNALS {
            if sig == libc::SIGCHLD || pending & (1 << sig) == 0 {
                continue;
            }
            let name = archon_proto::signal::name(sig).unwrap_or_default();
            match super::signal_action(self.role, sig) {
                SignalAction::Power(p) => {
                    info!("emergency: {name}: {p}");
                    self.begin_down(Some(p));
                }
                SignalAction::Exit => {
                    info!("emergency: {name}: exit");
                    self.begin_down(None);
                }
                SignalAction::Reload | SignalAction::ReExec | SignalAction::Ignore => {
                    info!("emergency: {name}: ignored in emergency mode");
                }
            }
        }
    }

    /// SIGTERM to every process left; the rest follows in [`Self::step_down`].
    fn begin_down(&mut self, power: Option<Power>) {
        if self.down.is_some() {
            return;
        }
        info!(
            "emergency: every process left: SIGTERM, SIGKILL in {} ms",
            DEFAULT_STOP_GRACE_MS
        );
        if let Err(e) = halt::signal_everyone(libc::SIGTERM) {
            warn!("emergency: cannot signal every process: {e}");
        }
        let _ = halt::signal_everyone(libc::SIGCONT);
        self.down = Some(Down {
            power,
            killed: false,
            until: Instant::now() + Duration::from_millis(DEFAULT_STOP_GRACE_MS),
        });
    }

    /// Going down: SIGKILL once the grace is over, then `reboot(2)` (or the exit) once every
    /// process has ended or SIGKILL had its time.
    fn step_down(&mut self) {
        let Some(down) = &mut self.down else {
            return;
        };
        let left = halt::anyone_left();
        let now = Instant::now();
        if left && now < down.until {
            return;
        }
        if left && !down.killed {
            info!("emergency: some did not end on SIGTERM: SIGKILL");
            if let Err(e) = halt::signal_everyone(libc::SIGKILL) {
                warn!("emergency: cannot signal every process: {e}");
            }
            down.killed = true;
            down.until = now + KILL_WAIT;
            return;
        }
        match down.power {
            Some(power) => {
                let e = halt::go_down(self.role == Role::Machine, power);
                error!("emergency: cannot {power}: reboot(2): {e}: archon only reaps and serves");
                self.down = None;
            }
            None => {
                info!("emergency: every process has ended: exit");
                std::process::exit(0)
            }
        }
    }

    /// Takes the waiting connections: root and archon's own uid only.
    fn accept(&mut self) {
        let Some(control) = &self.control else {
            return;
        };
        loop {
            // SAFETY: accept4 with no address wanted; a new fd or -1.
            let fd = unsafe {
                libc::accept4(
                    control.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: the kernel just gave us this fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let timeout = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            // SAFETY: a timeval of the size given; replies are written blocking, for a second at
            // most.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            let Ok(peer) = crate::control::peer_credentials(fd.as_raw_fd()) else {
                continue;
            };
            // SAFETY: geteuid cannot fail.
            let euid = unsafe { libc::geteuid() };
            if peer.uid != 0 && peer.uid != euid {
                send(&fd, &Reply::error("permission denied"));
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                send(&fd, &Reply::error("too many clients"));
                continue;
            }
            self.clients.push(Client {
                fd,
                uid: peer.uid,
                inbuf: Vec::new(),
                framer: Framer::default(),
            });
        }
    }

    /// Reads from client `i` and answers each complete request; a client that closed, sent a
    /// line too long or cannot be written to is dropped.
    fn serve(&mut self, i: usize, buf: &mut [u8]) {
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        // SAFETY: a valid buffer of its length.
        let n = unsafe { libc::read(client.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            self.clients.remove(i);
            return;
        }
        client.inbuf.extend_from_slice(&buf[..n as usize]);
        let mut power = None;
        let mut keep = true;
        loop {
            let (request, consumed) = match client.framer.next_frame(&client.inbuf) {
                Frame::Incomplete => break,
                Frame::Record { body, consumed } => {
                    (Request::parse(&client.inbuf[..body]), consumed)
                }
                Frame::Invalid { consumed, error } => {
                    (Err(archon_proto::RequestError::Frame(error)), consumed)
                }
                Frame::TooLong => {
                    keep = false;
                    (Err(archon_proto::RequestError::TooLong), client.inbuf.len())
                }
            };
            client.inbuf.drain(..consumed);
            let reply = match request {
                Ok(r) => {
                    let (reply, p) = answer(r, client.uid);
                    power = power.or(p);
                    reply
                }
                Err(e) => Reply::error(e),
            };
            if !send(&client.fd, &reply) || !keep {
                keep = false;
                break;
            }
        }
        if !keep {
            self.clients.remove(i);
        }
        if let Some(p) = power {
            info!("emergency: {p} asked by a client");
            self.begin_down(Some(p));
        }
    }

    /// Reads what pipe `i` holds and drops it; closes it at its end.
    fn drain(&mut self, i: usize, buf: &mut [u8]) {
        let Some(pipe) = self.pipes.get(i) else {
            return;
        };
        // SAFETY: a valid buffer of its length; the pipe is non-blocking.
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let again = n < 0
            && matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN | libc::EINTR)
            );
        if n == 0 || (n < 0 && !again) {
            self.pipes.remove(i);
        }
    }
}

/// The reply to `request` from a client of `uid`, and the power request to act on once it is
/// sent.
fn answer(request: Request, uid: u32) -> (Reply, Option<Power>) {
    match request {
        Request::Ping => (Reply::Pong, None),
        Request::Version => (
            Reply::Version {
                archon: env!("CARGO_PKG_VERSION").as_bytes().to_vec(),
                protocol: PROTOCOL_VERSION,
            },
            None,
        ),
        Request::List => (Reply::List(children_rows()), None),
        Request::Power(_) if uid != 0 => (Reply::error("permission denied"), None),
        Request::Power(p) => (Reply::going_down(p), Some(p)),
        other => (
            Reply::error(format!(
                "emergency mode: {} is not served (only Ping, Version, List, Poweroff, Reboot \
                 and Halt)",
                other.verb()
            )),
            None,
        ),
    }
}

/// Writes `reply` whole; false when it could not.
fn send(fd: &OwnedFd, reply: &Reply) -> bool {
    let bytes = reply.encode();
    let mut at = 0;
    while at < bytes.len() {
        // SAFETY: a valid buffer; MSG_NOSIGNAL: a client gone is an error, not a SIGPIPE.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes[at..].as_ptr().cast(),
                bytes.len() - at,
                libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            return false;
        }
        at += n as usize;
    }
    true
}

/// archon's children, as `List` rows: a `monitor` row each, its pid as id, its command line from
/// `/proc`.
fn children_rows() -> Vec<ProcessRow> {
    let boot_ms = boot_time_ms();
    let mut pids = crate::sys::children_of_self();
    pids.sort_unstable();
    pids.into_iter()
        .filter_map(|pid| {
            let stat =
                crate::procstat::parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)?;
            let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            Some(ProcessRow {
                id: pid as u64,
                kind: Kind::Monitor,
                pid,
                state: ProcState::Running,
                started_ms: boot_ms + crate::procstat::ticks_to_ms(stat.start_ticks),
                status: None,
                argv,
            })
        })
        .collect()
}

/// When the machine booted, in milliseconds since the Unix epoch (`btime` of `/proc/stat`).
fn boot_time_ms() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|t| t.trim().parse::<u64>().ok())
        })
        .map_or(0, |s| s * 1000)
}

/// Forks the emergency shell on the console; its pid, or `None` when there is no shell or no
/// fork.
fn start_shell() -> Option<libc::pid_t> {
    // SAFETY: access only reads the path.
    if unsafe { libc::access(SHELL.as_ptr(), libc::X_OK) } != 0 {
        return None;
    }
    let terminal = console_terminal();
    let argv = [SHELL.as_ptr(), std::ptr::null()];
    // SAFETY: archon is single-threaded; the child makes only plain system calls on values
    // prepared before the fork, then executes the shell or exits.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        return (pid > 0).then_some(pid);
    }
    // SAFETY: the child: plain system calls only, then exec or _exit.
    unsafe {
        libc::setsid();
        if let Some(adj) = crate::sys::children_oom_score_adj() {
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, adj.as_ptr().cast(), adj.len());
                libc::close(fd);
            }
        }
        // Without O_NOCTTY: the terminal becomes the shell's controlling terminal.
        let mut fd = libc::open(terminal.as_ptr(), libc::O_RDWR);
        if fd < 0 {
            fd = libc::open(CONSOLE.as_ptr(), libc::O_RDWR);
        }
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
        for sig in 1..32 {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execv(SHELL.as_ptr(), argv.as_ptr());
        libc::_exit(127)
    }
}

/// The terminal behind the console (`/dev/ttyS0`), else `/dev/console`.
fn console_terminal() -> CString {
    std::fs::read_to_string(CONSOLE_ACTIVE)
        .ok()
        .and_then(|active| {
            let name = active.split_whitespace().last()?.to_string();
            CString::new(format!("/dev/{name}")).ok()
        })
        .unwrap_or_else(|| CONSOLE.to_owned())
}
