//! The black-box test harness: starts the real `archon` on a socket in a fresh temp dir and speaks
//! the protocol to it as a stranger would, through the socket, real signals, real children and
//! `/proc`.
//!
//! Every test starts its own [`Archon`] (its own temp dir, socket and log), so tests run in
//! parallel threads without sharing anything. Helpers return [`Result`] so that a test fails with a
//! message instead of a panic; any process a test leaves behind is killed when its guard drops.
//! When a test fails, archon's log is printed (libtest shows it with the failure).

use std::cell::Cell;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use archon_proto::frame::{Frame, Framer};
use archon_proto::record;
use archon_proto::{ProcessRow, Reply, ReplyParser};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use nix::unistd::Pid;

pub use archon_proto;

/// How long anything may take before a test gives up: a guard against hanging, never a
/// performance assertion.
pub const BOUND: Duration = Duration::from_secs(10);

/// A longer guard, for waits that depend on several processes in turn (shutdown, many runs).
pub const LONG_BOUND: Duration = Duration::from_secs(30);

/// How often the polling helpers look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// Set when this test thread has produced a [`Fail`]: the [`Archon`] guards then print their
    /// log as they drop, which is before libtest reports the returned error.
    static FAILED: Cell<bool> = const { Cell::new(false) };
}

/// A test failure: a message for the person reading the test output.
pub struct Fail(String);

impl Fail {
    /// A failure with this message.
    pub fn new(msg: impl fmt::Display) -> Fail {
        FAILED.with(|f| f.set(true));
        Fail(msg.to_string())
    }
}

impl fmt::Debug for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail::new(e)
    }
}

/// What helpers and tests return: `Err` is a failed test with its message.
pub type Result<T = ()> = std::result::Result<T, Fail>;

/// Fails with `msg`.
pub fn fail<T>(msg: impl fmt::Display) -> Result<T> {
    Err(Fail::new(msg))
}

/// Adds what was being done to an error.
pub trait Context<T> {
    /// On error, fails with "`what`: <the error>".
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Fail::new(format!("{what}: {e}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Fail::new(what))
    }
}

/// Fails the test with a formatted message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Fail::new(format!($($msg)+)));
        }
    };
}

/// Fails the test unless both sides are equal, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($got:expr, $want:expr $(,)?) => {
        $crate::ensure_eq!($got, $want, "{}", stringify!($got))
    };
    ($got:expr, $want:expr, $($msg:tt)+) => {{
        let (got, want) = (&$got, &$want);
        if got != want {
            return Err($crate::Fail::new(format!(
                "{}\n   got: {:?}\n  want: {:?}",
                format!($($msg)+),
                got,
                want
            )));
        }
    }};
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `cond` every [`POLL_INTERVAL`] until it holds; fails with `what` after `bound`.
pub fn wait_until(
    what: impl fmt::Display,
    bound: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result {
    wait_for(what, bound, || cond().then_some(()))
}

/// Polls `f` every [`POLL_INTERVAL`] until it gives a value; fails with `what` after `bound`.
pub fn wait_for<T>(
    what: impl fmt::Display,
    bound: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return fail(format!("gave up after {bound:?} waiting for: {what}"));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

// ---------------------------------------------------------------------------------------------
// Binaries and temp dirs
// ---------------------------------------------------------------------------------------------

/// The path of one of the workspace's binaries (`archon`, `archonctl`), next to the test's own
/// `deps/` directory.
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in target/<profile>/deps")?;
    let path = dir.join(name);
    if !path.is_file() {
        return fail(format!(
            "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
            path.display()
        ));
    }
    Ok(path)
}

/// The `archon` binary.
pub fn archon_bin() -> Result<PathBuf> {
    bin("archon")
}

/// The `archonctl` binary.
pub fn archonctl_bin() -> Result<PathBuf> {
    bin("archonctl")
}

/// A file of a library's build (`libarchon.so`, `libarchon_bind.so`): the one of the same build
/// as this test (`deps/`, where cargo leaves the dependencies of a test), else the one
/// `cargo build` put beside it.
pub fn lib_artifact(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let deps = exe.parent().context("the test binary has no directory")?;
    for dir in [Some(deps), deps.parent()].into_iter().flatten() {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    fail(format!(
        "{name} is missing beside {}: run `cargo test --workspace`, which builds it",
        deps.display()
    ))
}

/// The bind shim, `libarchon_bind.so`, as built for this test run.
pub fn shim_path() -> Result<PathBuf> {
    lib_artifact("libarchon_bind.so")
}

/// A fresh directory under /tmp, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Makes `/tmp/archon-test.XXXXXX` (mode 0700).
    pub fn new() -> Result<TempDir> {
        let path = nix::unistd::mkdtemp("/tmp/archon-test.XXXXXX").context("mkdtemp")?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// archon
// ---------------------------------------------------------------------------------------------

/// Variables of the test's own environment that would change archon's behaviour; never passed on
/// unless a test sets them.
const SCRUBBED_ENV: [&str; 7] = [
    "NOTIFY_SOCKET",
    "ARCHON_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Where archon's stderr goes, when not to its log file.
#[derive(Debug)]
pub enum StderrTo {
    /// Closed: archon starts without a fd 2.
    Closed,
    /// `/dev/null`.
    DevNull,
    /// This fd (the write end of a pipe, say).
    Fd(OwnedFd),
}

/// How to start an [`Archon`]: extra arguments, environment, socket path.
#[derive(Debug, Default)]
pub struct Builder {
    /// Where its stderr goes; `<dir>/archon.log` when `None`.
    stderr: Option<StderrTo>,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    socket: Option<PathBuf>,
    socket_via_env: bool,
    no_wait: bool,
    /// A program archon runs under, and whether it forks archon (else it executes it).
    under: Option<(Vec<OsString>, bool)>,
    main_command: Vec<OsString>,
}

impl Builder {
    /// Adds a command-line argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds command-line arguments.
    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sends archon's stderr elsewhere than its log file ([`Archon::log_text`] is then empty).
    pub fn stderr(mut self, to: StderrTo) -> Self {
        self.stderr = Some(to);
        self
    }

    /// Sets a variable in archon's environment.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), Some(v.into())));
        self
    }

    /// Removes a variable from archon's environment.
    pub fn env_remove(mut self, k: impl Into<OsString>) -> Self {
        self.env.push((k.into(), None));
        self
    }

    /// Starts archon with an empty environment (plus what [`env`](Self::env) sets).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// Uses this socket path instead of `<temp dir>/archon.sock`.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// Names the socket with `$ARCHON_SOCKET` instead of `--socket`.
    pub fn socket_via_env(mut self) -> Self {
        self.socket_via_env = true;
        self
    }

    /// Does not wait for the socket to accept connections (for an archon expected to fail, or a
    /// test that waits in its own way).
    pub fn no_wait(mut self) -> Self {
        self.no_wait = true;
        self
    }

    /// Gives archon a main command: `-- <argv>` after every other argument (archon as a
    /// container's entrypoint).
    pub fn main_command<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, argv: I) -> Self {
        self.main_command = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Starts archon as process 1 of a new PID namespace, under
    /// `unshare --pid --fork --mount-proc` (needs root): as the init of a container. The test
    /// still sees it, and signals it, by its pid outside ([`Archon::pid`]).
    pub fn pid1(self) -> Self {
        self.under(["unshare", "--pid", "--fork", "--mount-proc"], true)
    }

    /// Starts archon under `argv`, a program and its arguments, with archon's path and command
    /// line after them: with `forks`, archon is the program's only child (as with
    /// `unshare --fork`, whose child may itself execute something that executes archon), else
    /// the program executes archon in its place (as `setpriv` does).
    pub fn under<I: IntoIterator<Item = A>, A: Into<OsString>>(
        mut self,
        argv: I,
        forks: bool,
    ) -> Self {
        self.under = Some((argv.into_iter().map(Into::into).collect(), forks));
        self
    }

    /// Starts archon in a fresh temp dir (also its cwd), its stderr to `<dir>/archon.log` and
    /// its stdout to `<dir>/archon.stdout`, and waits until its socket accepts a connection.
    pub fn start(self) -> Result<Archon> {
        let dir = TempDir::new()?;
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| dir.join("archon.sock"));
        let log = dir.join("archon.log");
        let log_file = File::create(&log).context("create archon.log")?;
        let stdout_file =
            File::create(dir.join("archon.stdout")).context("create archon.stdout")?;
        let mut cmd = match &self.under {
            Some((argv, _)) => {
                let (program, args) = argv
                    .split_first()
                    .context("an empty program to run under")?;
                let mut c = Command::new(program);
                c.args(args).arg(archon_bin()?);
                c
            }
            None => Command::new(archon_bin()?),
        };
        if self.env_clear {
            cmd.env_clear();
        }
        for k in SCRUBBED_ENV {
            cmd.env_remove(k);
        }
        if self.socket_via_env {
            cmd.env("ARCHON_SOCKET", &socket);
        } else {
            cmd.arg("--socket").arg(&socket);
        }
        cmd.args(&self.args);
        if !self.main_command.is_empty() {
            cmd.arg("--").args(&self.main_command);
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout_file);
        match self.stderr {
            None => cmd.stderr(log_file),
            Some(StderrTo::DevNull) => cmd.stderr(Stdio::null()),
            Some(StderrTo::Fd(fd)) => cmd.stderr(Stdio::from(fd)),
            Some(StderrTo::Closed) => {
                use std::os::unix::process::CommandExt;
                // SAFETY: close(2) is async-signal-safe; it runs after the stdio is in place.
                unsafe {
                    cmd.stderr(Stdio::null()).pre_exec(|| {
                        libc::close(2);
                        Ok(())
                    })
                }
            }
        };
        let child = cmd.spawn().context("spawn archon")?;
        let mut archon = Archon {
            pid: child.id() as i32,
            child,
            dir,
            socket,
            log,
            exited: None,
        };
        if self.under.as_ref().is_some_and(|(_, forks)| *forks) {
            // unshare's only child, which it forked and which executes archon; an archon that
            // has ended already is only known by unshare's pid.
            let unshare = archon.pid;
            archon.pid = wait_for("unshare to fork archon", BOUND, || {
                match children_of(unshare).into_iter().next() {
                    Some(pid) => Some(pid),
                    None => archon.child.try_wait().ok().flatten().map(|_| unshare),
                }
            })?;
        }
        if !self.no_wait {
            archon.wait_ready()?;
        }
        Ok(archon)
    }
}

/// A running `archon`, killed with its whole process tree (and its temp dir removed) on drop.
/// Started under another program ([`Builder::under`], [`Builder::pid1`]), its exit status is
/// that program's.
#[derive(Debug)]
pub struct Archon {
    /// archon's pid, as the test sees it (started with [`Builder::pid1`], `child` is unshare).
    pid: i32,
    child: Child,
    dir: TempDir,
    socket: PathBuf,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Archon {
    /// Starts archon with the defaults.
    pub fn start() -> Result<Archon> {
        Builder::default().start()
    }

    /// Starts archon with these extra arguments.
    pub fn with_args<I: IntoIterator<Item = A>, A: Into<OsString>>(args: I) -> Result<Archon> {
        Builder::default().args(args).start()
    }

    /// A builder for an archon with extra arguments or environment.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn wait_ready(&mut self) -> Result {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.try_exit()? {
                return fail(format!(
                    "archon exited before it listened ({status}); log:\n{}",
                    self.log_text()
                ));
            }
            if let Ok(stream) = UnixStream::connect(&self.socket) {
                // Leave no half-gone probe behind for the test to trip over (a client count, an fd
                // count): close it and wait until archon has closed its side too.
                return Conn::from_stream(stream)?
                    .close_and_wait()
                    .context("the readiness probe connection");
            }
            if Instant::now() >= deadline {
                return fail(format!(
                    "archon did not accept connections on {} within {BOUND:?}",
                    self.socket.display()
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// archon's pid (in the test's PID namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temp dir (archon's cwd).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the temp dir.
    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
    }

    /// What archon has written to its stderr so far: its log, and its children's output when they
    /// were given no stdout or stderr of their own.
    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A new connection.
    pub fn conn(&self) -> Result<Conn> {
        Conn::connect(&self.socket)
    }

    /// Sends one request on a new connection and returns the reply's text.
    pub fn request(&self, line: &str) -> Result<String> {
        self.conn()?.request(line)
    }

    /// `List`, parsed.
    pub fn list(&self) -> Result<Vec<ProcessRow>> {
        self.conn()?.list()
    }

    /// The `List` row of process `id`, if archon lists it.
    pub fn row(&self, id: u64) -> Result<Option<ProcessRow>> {
        Ok(self.list()?.into_iter().find(|r| r.id == id))
    }

    /// Sends `sig` to archon.
    pub fn signal(&self, sig: Signal) -> Result {
        kill(Pid::from_raw(self.pid()), sig).context(format!("kill archon with {sig}"))
    }

    /// archon's exit status, if it has exited (reaps it).
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("waitpid archon")?;
        }
        Ok(self.exited)
    }

    /// Waits for archon to exit; fails after `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return fail(format!("archon did not exit within {bound:?}"));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Fails unless archon has no zombie child.
    pub fn ensure_no_zombies(&self) -> Result {
        let z = zombies_of(self.pid());
        ensure!(
            z.is_empty(),
            "zombies left with archon as their parent: {z:?}"
        );
        Ok(())
    }

    /// Waits until archon has no zombie child (it reaps as soon as the kernel tells it).
    pub fn wait_no_zombies(&self) -> Result {
        wait_until("archon to reap its zombie children", BOUND, || {
            zombies_of(self.pid()).is_empty()
        })
    }
}

impl Drop for Archon {
    fn drop(&mut self) {
        if std::thread::panicking() || FAILED.with(Cell::get) {
            eprintln!(
                "----- archon log ({}) -----\n{}----- end of archon log -----",
                self.log.display(),
                self.log_text()
            );
        }
        if self.exited.is_none() {
            kill_tree(self.pid());
            let _ = self.child.wait();
        }
    }
}

/// Kills `root` and every process descended from it: each is stopped before its children are
/// looked for, so none can escape by forking, then all are killed.
pub fn kill_tree(root: i32) {
    let mut tree = vec![root];
    let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    loop {
        let mut grew = false;
        for p in all_procs() {
            if tree.contains(&p.ppid) && !tree.contains(&p.pid) {
                let _ = kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
                tree.push(p.pid);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    for pid in tree {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// One record of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's text as received (lossy UTF-8), without its terminator.
    pub line: String,
    /// Its fields.
    pub fields: Vec<Vec<u8>>,
}

impl Record {
    /// Field `i` as text (lossy), or "" when there is no such field.
    pub fn field(&self, i: usize) -> String {
        self.fields
            .get(i)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default()
    }
}

/// A raw client connection: bytes out, records in. Reads time out after [`BOUND`] so that a test
/// fails instead of hanging.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    framer: Framer,
}

impl Conn {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> Result<Conn> {
        let stream = UnixStream::connect(path).context(format!("connect to {}", path.display()))?;
        Conn::from_stream(stream)
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: UnixStream) -> Result<Conn> {
        stream
            .set_read_timeout(Some(BOUND))
            .context("SO_RCVTIMEO")?;
        stream
            .set_write_timeout(Some(BOUND))
            .context("SO_SNDTIMEO")?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            // Replies have no length limit of their own (a List can be long).
            framer: Framer::new(usize::MAX),
        })
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> Result {
        self.stream.write_all(bytes).context("write to archon")
    }

    /// Sends `bytes` with `fds` attached (SCM_RIGHTS) in the same `sendmsg`.
    pub fn send_with_fds(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result {
        let iov = [io::IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let sent = sendmsg::<UnixAddr>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .context("sendmsg with SCM_RIGHTS")?;
        if sent < bytes.len() {
            self.send(&bytes[sent..])?;
        }
        Ok(())
    }

    /// Sends a request line (a `\n` is added when missing) with `fds` attached.
    pub fn send_line_with_fds(&mut self, line: &str, fds: &[RawFd]) -> Result {
        self.send_with_fds(&terminated(line), fds)
    }

    /// Closes the sending half: archon sees the end of the stream.
    pub fn shutdown_write(&self) -> Result {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .context("shutdown(SHUT_WR)")
    }

    /// Reads one reply record.
    pub fn record(&mut self) -> Result<Record> {
        loop {
            match self.framer.next_frame(&self.buf) {
                Frame::Record { body, consumed } => {
                    let line = String::from_utf8_lossy(&self.buf[..body]).into_owned();
                    let fields = record::split(&self.buf[..body]);
                    self.buf.drain(..consumed);
                    return Ok(Record { line, fields });
                }
                Frame::Invalid { error, .. } => {
                    return fail(format!(
                        "archon sent a malformed record ({error}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                Frame::TooLong => return fail("archon sent an endless record"),
                Frame::Incomplete => {}
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return fail(format!(
                        "archon closed the connection instead of replying (pending: {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return fail(format!(
                        "no reply from archon within {BOUND:?} (pending: {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                Err(e) => return fail(format!("read from archon: {e}")),
            }
        }
    }

    /// Reads one whole reply (a `List` with its rows): the parsed reply and its records' text.
    pub fn reply(&mut self) -> Result<(Reply, Vec<String>)> {
        let mut parser = ReplyParser::new();
        let mut lines = Vec::new();
        loop {
            let rec = self.record()?;
            lines.push(rec.line.clone());
            match parser.push(&rec.fields) {
                Ok(Some(reply)) => return Ok((reply, lines)),
                Ok(None) => {}
                Err(e) => return fail(format!("{e}: {lines:?}")),
            }
        }
    }

    /// Reads one whole reply and returns its text, records joined with `\n`.
    pub fn reply_text(&mut self) -> Result<String> {
        Ok(self.reply()?.1.join("\n"))
    }

    /// Sends `line` (a `\n` is added when missing) and returns the reply's text.
    pub fn request(&mut self, line: &str) -> Result<String> {
        self.send(&terminated(line))?;
        self.reply_text()
    }

    /// Sends `line` with `fds` attached and returns the reply's text.
    pub fn request_with_fds(&mut self, line: &str, fds: &[RawFd]) -> Result<String> {
        self.send_line_with_fds(line, fds)?;
        self.reply_text()
    }

    /// Sends a request made of `fields` (quoted as needed) and returns the reply's text.
    pub fn request_fields(&mut self, fields: &[&str]) -> Result<String> {
        self.send(&line(fields))?;
        self.reply_text()
    }

    /// `List`, parsed.
    pub fn list(&mut self) -> Result<Vec<ProcessRow>> {
        self.send(b"List\n")?;
        match self.reply()? {
            (Reply::List(rows), _) => Ok(rows),
            (_, lines) => fail(format!("List got {lines:?}")),
        }
    }

    /// Fails unless archon closes the connection with nothing more to say.
    pub fn expect_eof(&mut self) -> Result {
        if !self.buf.is_empty() {
            return fail(format!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&self.buf)
            ));
        }
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    return fail(format!(
                        "expected the connection to close, got {:?}",
                        String::from_utf8_lossy(&chunk[..n])
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return fail(format!("archon kept the connection open for {BOUND:?}"));
                }
                Err(e) => return fail(format!("read from archon: {e}")),
            }
        }
    }

    /// Closes the sending half and waits until archon has closed the connection (whatever it
    /// still sends is dropped): afterwards archon no longer counts this client.
    pub fn close_and_wait(mut self) -> Result {
        self.shutdown_write()?;
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return fail(format!("waiting for archon to close: {e}")),
            }
        }
    }

    /// True when something (a byte or the end of the stream) can be read now, without waiting.
    pub fn has_data(&self) -> Result<bool> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        readable_now(self.stream.as_fd())
    }

    /// Bytes sent that archon has not read yet (SIOCOUTQ).
    pub fn unread_by_peer(&self) -> Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (== TIOCOUTQ) writes one int through the pointer.
        let r = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        Errno::result(r).context("ioctl(SIOCOUTQ)")?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Waits until archon has read everything sent on this connection.
    pub fn wait_consumed(&self) -> Result {
        wait_until("archon to read what was sent", BOUND, || {
            self.unread_by_peer().map(|n| n == 0).unwrap_or(false)
        })
    }
}

/// Sends the request `line` (bytes, `\n` included) with stdin `/dev/null` and stdout a pipe
/// attached; returns the reply's text and everything the command wrote to its stdout.
pub fn run_captured_line(conn: &mut Conn, line: &[u8]) -> Result<(String, String)> {
    let null = dev_null()?;
    let (r, w) = pipe()?;
    conn.send_with_fds(line, &[null.as_raw_fd(), w.as_raw_fd()])?;
    drop(w);
    drop(null);
    let reply = conn.reply_text()?;
    let out = read_text(&r, BOUND).context("the command's stdout")?;
    Ok((reply, out))
}

/// [`run_captured_line`] for a request made of `fields`.
pub fn run_captured(conn: &mut Conn, fields: &[&str]) -> Result<(String, String)> {
    run_captured_line(conn, &line(fields))
}

/// `line` with a `\n` at its end.
fn terminated(line: &str) -> Vec<u8> {
    let mut v = line.as_bytes().to_vec();
    if !v.ends_with(b"\n") {
        v.push(b'\n');
    }
    v
}

/// The request made of `fields`, quoted as needed, `\n` included.
pub fn line<F: AsRef<[u8]>>(fields: &[F]) -> Vec<u8> {
    record::join(fields.iter().map(AsRef::as_ref))
}

/// The `<id>,<pid>` of an `Ok,<id>,<pid>` reply.
pub fn parse_started(reply: &str) -> Result<(u64, i32)> {
    let parts: Vec<&str> = reply.split(',').collect();
    match parts.as_slice() {
        ["Ok", id, pid, ..] => Ok((
            id.parse().context(format!("id in {reply:?}"))?,
            pid.parse().context(format!("pid in {reply:?}"))?,
        )),
        _ => fail(format!("expected Ok,<id>,<pid>, got {reply:?}")),
    }
}

/// The second field of an `Error,<reason>` reply.
pub fn error_reason(reply: &str) -> Result<String> {
    let mut parser = ReplyParser::new();
    let fields = record::split(reply.as_bytes());
    match parser.push(&fields) {
        Ok(Some(Reply::Error(reason))) => Ok(String::from_utf8_lossy(&reason).into_owned()),
        _ => fail(format!("expected Error,<reason>, got {reply:?}")),
    }
}

/// True when `fd` can be read now (data or end of stream).
pub fn readable_now(fd: BorrowedFd<'_>) -> Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).context("poll")?;
    Ok(fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP)))
}

// ---------------------------------------------------------------------------------------------
// fds, pipes, children of the test
// ---------------------------------------------------------------------------------------------

/// A pipe, both ends close-on-exec (tests run in threads that spawn processes: an inheritable
/// end would leak into them and no end-of-file would ever come).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe2")
}

/// Waits until `fd` is readable; false when `deadline` passes first.
fn readable_before(fd: &OwnedFd, deadline: Instant) -> Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Err(Errno::EINTR) => continue,
            r => return Ok(r.context("poll")? > 0),
        }
    }
}

/// Reads `fd` to end-of-file; fails if no EOF comes within `bound` (a write end still open
/// somewhere: in archon, or in a child that has not ended).
pub fn read_to_eof(fd: &OwnedFd, bound: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + bound;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if !readable_before(fd, deadline)? {
            return fail(format!(
                "no end of file within {bound:?} (a write end is still open; read so far: {:?})",
                String::from_utf8_lossy(&out)
            ));
        }
        match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return fail(format!("read: {e}")),
        }
    }
}

/// [`read_to_eof`] as text.
pub fn read_text(fd: &OwnedFd, bound: Duration) -> Result<String> {
    Ok(String::from_utf8_lossy(&read_to_eof(fd, bound)?).into_owned())
}

/// Reads one line (up to `\n`, which is dropped) from `fd`; fails after [`BOUND`].
pub fn read_line(fd: &OwnedFd) -> Result<String> {
    let deadline = Instant::now() + BOUND;
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if !readable_before(fd, deadline)? {
            return fail(format!("no line within {BOUND:?} (so far {out:?})"));
        }
        match nix::unistd::read(fd, &mut byte) {
            Ok(0) => return fail(format!("end of file before a line (so far {out:?})")),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(_) => out.push(byte[0]),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return fail(format!("read: {e}")),
        }
    }
}

/// `/dev/null`, open for reading and writing (close-on-exec).
pub fn dev_null() -> Result<OwnedFd> {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    Ok(OwnedFd::from(f))
}

/// A pidfd for `pid` (`pidfd_open`, close-on-exec), through the client library's wrapper.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    archon_ctl::pidfd_open(pid).context(format!("pidfd_open({pid})"))
}

/// A process the test started itself; killed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    /// The child.
    pub child: Child,
}

impl ChildGuard {
    /// Spawns `cmd` (stdin and stdout from /dev/null, stderr inherited).
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context(format!("spawn {cmd:?}"))?;
        Ok(ChildGuard { child })
    }

    /// `sleep <secs>`.
    pub fn sleep(secs: u32) -> Result<ChildGuard> {
        ChildGuard::spawn(Command::new("/bin/sleep").arg(secs.to_string()))
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to its end with stdout and stderr captured; kills it and fails after `bound`.
pub fn output_within(cmd: &mut Command, bound: Duration) -> Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(format!("spawn {cmd:?}"))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(s) = child.try_wait().context("waitpid")? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return fail(format!("{cmd:?} did not finish within {bound:?}"));
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` the tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The pid.
    pub pid: i32,
    /// State letter: R, S, D, T, Z, ...
    pub state: char,
    /// Parent pid.
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// Session.
    pub session: i32,
}

/// `/proc/PID/stat`, or `None` when the process does not exist.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    let session = it.next()?.parse().ok()?;
    Some(Stat {
        pid,
        state,
        ppid,
        pgrp,
        session,
    })
}

/// Every process in `/proc`.
pub fn all_procs() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// True when `pid` exists (a zombie included).
pub fn exists(pid: i32) -> bool {
    stat(pid).is_some()
}

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z')
}

/// The children of `ppid`.
pub fn children_of(ppid: i32) -> Vec<i32> {
    all_procs()
        .into_iter()
        .filter(|p| p.ppid == ppid)
        .map(|p| p.pid)
        .collect()
}

/// The zombies whose parent is `ppid`.
pub fn zombies_of(ppid: i32) -> Vec<i32> {
    all_procs()
        .into_iter()
        .filter(|p| p.ppid == ppid && p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// The PID namespace of `pid` (the target of `/proc/PID/ns/pid`, as `pid:[4026531836]`).
pub fn pid_namespace(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Every process in the PID namespace of `pid` (as this test sees them, by their pids here).
pub fn procs_in_namespace_of(pid: i32) -> Vec<Stat> {
    let Some(ns) = pid_namespace(pid) else {
        return Vec::new();
    };
    all_procs()
        .into_iter()
        .filter(|p| pid_namespace(p.pid).as_ref() == Some(&ns))
        .collect()
}

/// The zombies in the PID namespace of `pid`.
pub fn zombies_in_namespace_of(pid: i32) -> Vec<i32> {
    procs_in_namespace_of(pid)
        .into_iter()
        .filter(|p| p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// The pid here of the process that is `inner` in the PID namespace of `pid` (the last of its
/// `NSpid` numbers): the same number when that namespace is the test's own.
pub fn pid_here(pid: i32, inner: i32) -> Option<i32> {
    procs_in_namespace_of(pid).into_iter().find_map(|p| {
        let nspids = status_field(p.pid, "NSpid").ok()?;
        let last = nspids.split_whitespace().last()?.parse::<i32>().ok()?;
        (last == inner).then_some(p.pid)
    })
}

/// The fds open in `pid`, sorted.
pub fn open_fds(pid: i32) -> Result<Vec<i32>> {
    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .context(format!("read /proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    Ok(fds)
}

/// What each fd of `pid` points to (`fd -> target`), for failure messages.
pub fn fd_targets(pid: i32) -> Vec<String> {
    open_fds(pid)
        .unwrap_or_default()
        .into_iter()
        .map(|fd| {
            let target = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{fd} -> {target}")
        })
        .collect()
}

/// What the fds of `pid` that are not sockets point to: the set to compare before and after a
/// test to find a leak (connections come and go).
pub fn non_socket_fds(pid: i32) -> Vec<String> {
    fd_targets(pid)
        .into_iter()
        .filter(|t| !t.contains("socket:"))
        .collect()
}

/// How many sockets `pid` has open.
pub fn socket_count(pid: i32) -> usize {
    fd_targets(pid)
        .iter()
        .filter(|t| t.contains("socket:"))
        .count()
}

/// The argv of `pid`, from `/proc/PID/cmdline`.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The environment of `pid`, from `/proc/PID/environ`, as `NAME=value` strings.
///
/// The kernel lets archon go on (and so reply) as soon as the child has switched to the new
/// program's memory, a moment before it has laid out the environment there: until then the file
/// reads empty, so an empty read is tried again for a while.
pub fn environ(pid: i32) -> Result<Vec<String>> {
    let read = || fs::read(format!("/proc/{pid}/environ"));
    let mut raw = read().context(format!("read /proc/{pid}/environ"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        raw = read().context(format!("read /proc/{pid}/environ"))?;
    }
    Ok(raw
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// The value of `key` in `/proc/PID/status` (`SigBlk`, `SigIgn`, ...).
pub fn status_field(pid: i32, key: &str) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .context(format!("read /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .context(format!("no {key} in /proc/{pid}/status"))
}

/// `voluntary_ctxt_switches` plus `nonvoluntary_ctxt_switches` of `pid`.
pub fn context_switches(pid: i32) -> Result<u64> {
    let v: u64 = status_field(pid, "voluntary_ctxt_switches")?.parse()?;
    let n: u64 = status_field(pid, "nonvoluntary_ctxt_switches")?.parse()?;
    Ok(v + n)
}

/// Fails unless archon (`pid`) blocks in `epoll_wait` and then stays there for a second and a
/// half without a single context switch: no timer, no tick, no loop woken by something it does
/// not take. `what` says when, in the failure.
pub fn stays_asleep(pid: i32, what: &str) -> Result {
    wait_until("archon to block in epoll_wait", BOUND, || {
        fs::read_to_string(format!("/proc/{pid}/wchan"))
            .is_ok_and(|w| w.contains("epoll") || w.contains("ep_poll"))
    })?;
    let before = context_switches(pid)?;
    // A periodic wake-up of up to a second would show here.
    std::thread::sleep(Duration::from_millis(1500));
    let after = context_switches(pid)?;
    ensure_eq!(after, before, "archon's context switches {what}");
    Ok(())
}

/// Waits until `pid` is asleep in `nanosleep`: a `sleep` that has finished starting up (it opens
/// and closes files of its own on the way, which must not be mistaken for inherited ones).
pub fn wait_in_nanosleep(pid: i32) -> Result {
    wait_until(format!("pid {pid} to sleep in nanosleep"), BOUND, || {
        let wchan = fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        let syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let nr = syscall.split_whitespace().next().unwrap_or_default();
        wchan.contains("nanosleep") || (cfg!(target_arch = "x86_64") && (nr == "230" || nr == "35"))
    })
}

/// Waits until `pid` no longer exists at all (ended and reaped).
pub fn wait_gone(pid: i32, what: &str) -> Result {
    wait_until(
        format!("{what} (pid {pid}) to end and be reaped"),
        BOUND,
        || !exists(pid),
    )
}

/// A loopback port nobody listens on right now (bound to port 0, then closed), for a service
/// to listen on or a health check to find closed.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local_addr")?.port())
}

/// Milliseconds since the Unix epoch, as `List`'s start times count them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Connects to `path` as another user: a forked child drops to `uid`/`gid` and connects a socket
/// that the test made before the fork, so the kernel records the child's credentials as the
/// peer's while the test keeps the connected socket. Needs root.
pub fn connect_as(uid: u32, gid: u32, path: &Path) -> Result<UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrLike, socket};
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("socket")?;
    let addr = UnixAddr::new(path).context("socket address")?;
    let raw = sock.as_raw_fd();
    // SAFETY: the child makes only raw system calls (async-signal-safe) and _exits; it touches no
    // lock, allocator or other state of the test's other threads.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            // SAFETY: plain system calls on values prepared before the fork.
            let code = unsafe {
                if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0 {
                    2
                } else if libc::syscall(libc::SYS_setgid, gid) != 0 {
                    3
                } else if libc::syscall(libc::SYS_setuid, uid) != 0 {
                    4
                } else if libc::connect(raw, SockaddrLike::as_ptr(&addr), SockaddrLike::len(&addr))
                    != 0
                {
                    5
                } else {
                    0
                }
            };
            // SAFETY: ends the child without running the parent's atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).context("waitpid")? {
            WaitStatus::Exited(_, 0) => Ok(UnixStream::from(sock)),
            WaitStatus::Exited(_, 5) => fail(format!(
                "uid {uid} could not connect to {} (directory or socket permissions?)",
                path.display()
            )),
            other => fail(format!("the child dropping to uid {uid} failed: {other:?}")),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Services: archon started on a configuration file
// ---------------------------------------------------------------------------------------------

use archon_proto::{ServiceRow, ServiceState, Setting, TreeNode};

/// How often the service helpers ask for `Status` again while they wait.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(20);

/// archon's exit code for a configuration file it refuses (`EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

/// A configuration file, `archon.lua`, in a temp dir of its own that also has room for files the
/// services write (their paths are known before archon starts); removed on drop.
#[derive(Debug)]
pub struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// An empty `archon.lua` in a fresh temp dir.
    pub fn new() -> Result<ConfigFile> {
        let dir = TempDir::new()?;
        let path = dir.join("archon.lua");
        let file = ConfigFile { dir, path };
        file.write("")?;
        Ok(file)
    }

    /// A file holding `lua`.
    pub fn with(lua: &str) -> Result<ConfigFile> {
        let file = ConfigFile::new()?;
        file.write(lua)?;
        Ok(file)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in its directory, as text for a Lua string or a shell line (temp dir paths need
    /// no quoting).
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Replaces the file's content: written beside it, then renamed over it, so that a reload
    /// never reads half a file.
    pub fn write(&self, lua: &str) -> Result {
        let tmp = self.dir.join("archon.lua.new");
        fs::write(&tmp, lua).context("write the configuration")?;
        fs::rename(&tmp, &self.path).context("rename the configuration into place")
    }

    /// Starts archon with `--config <this file>` and `builder`'s other settings.
    pub fn start(self, builder: Builder) -> Result<Configured> {
        let archon = builder.arg("--config").arg(&self.path).start()?;
        Ok(Configured {
            archon,
            config: self,
        })
    }
}

/// Starts archon on a configuration file holding `lua` and waits until it listens.
pub fn start_with_config(lua: &str) -> Result<Configured> {
    ConfigFile::with(lua)?.start(Archon::builder())
}

/// An [`Archon`] started on a [`ConfigFile`] (it derefs to the archon). On drop archon is
/// killed with its tree, then whatever is left in its cgroups (a daemon that escaped with
/// `setsid`), and the cgroups are removed.
#[derive(Debug)]
pub struct Configured {
    archon: Archon,
    config: ConfigFile,
}

impl std::ops::Deref for Configured {
    type Target = Archon;
    fn deref(&self) -> &Archon {
        &self.archon
    }
}

impl std::ops::DerefMut for Configured {
    fn deref_mut(&mut self) -> &mut Archon {
        &mut self.archon
    }
}

impl Configured {
    /// The configuration file.
    pub fn config(&self) -> &ConfigFile {
        &self.config
    }
}

impl Drop for Configured {
    fn drop(&mut self) {
        let pid = self.archon.pid();
        let cgroup = archon_cgroup(pid);
        if self.archon.exited.is_none() {
            // archon first, so that it restarts nothing while its services are killed.
            kill_tree(pid);
            if let Ok(status) = self.archon.child.wait() {
                self.archon.exited = Some(status);
            }
        }
        if let Some(dir) = cgroup {
            kill_cgroup(&dir);
        }
    }
}

/// Kills every process in the cgroup `dir` and its descendants (`cgroup.kill`), waits until it
/// is empty, and removes it with its sub-groups. Best effort: for clean-up.
pub fn kill_cgroup(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let _ = wait_until("the cgroup to empty", BOUND, || !cgroup_populated(dir));
    remove_cgroup(dir);
}

fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// True when the cgroup `dir` or one below it holds a process (`populated 1` in
/// `cgroup.events`).
pub fn cgroup_populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Where the cgroup2 hierarchy is mounted (from `/proc/self/mountinfo`), if anywhere.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The test's own cgroup2 path (the `0::` line of `/proc/self/cgroup`), which archon inherits.
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The cgroup archon with pid `archon_pid` makes for its services:
/// `<mount><own cgroup>/archon.<pid>`, whether or not it exists.
pub fn archon_cgroup(archon_pid: i32) -> Option<PathBuf> {
    let mount = cgroup2_mount()?;
    let own = own_cgroup()?;
    Some(
        mount
            .join(own.trim_start_matches('/'))
            .join(format!("archon.{archon_pid}")),
    )
}

/// The cgroup of service `name`: `<archon's cgroup>/<name>.svc`.
pub fn service_cgroup(archon_pid: i32, name: &str) -> Option<PathBuf> {
    Some(archon_cgroup(archon_pid)?.join(format!("{name}.svc")))
}

/// The cgroup2 path of `pid` (its `0::` line of `/proc/PID/cgroup`).
pub fn cgroup_of(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// A `Status` row as text for failure messages: the record as archon would send it.
pub fn show_row(row: &ServiceRow) -> String {
    let mut text = String::from_utf8_lossy(&Reply::Status(vec![row.clone()]).encode()).into_owned();
    // Drop the `Status,1` header and the terminator.
    if let Some((_, rest)) = text.split_once('\n') {
        text = rest.trim_end().to_string();
    }
    text
}

/// A row's reason as text.
pub fn reason(row: &ServiceRow) -> String {
    String::from_utf8_lossy(&row.reason).into_owned()
}

/// A row's name as text.
pub fn row_name(row: &ServiceRow) -> String {
    String::from_utf8_lossy(&row.name).into_owned()
}

impl Conn {
    /// `Status[,<name>...]`, parsed.
    pub fn status(&mut self, names: &[&str]) -> Result<Vec<ServiceRow>> {
        let mut fields = vec!["Status"];
        fields.extend_from_slice(names);
        self.send(&line(&fields))?;
        match self.reply()? {
            (Reply::Status(rows), _) => Ok(rows),
            (_, lines) => fail(format!("{fields:?} got {lines:?}")),
        }
    }

    /// `Tree[,<name>]`, parsed.
    pub fn tree(&mut self, name: Option<&str>) -> Result<Vec<TreeNode>> {
        let mut fields = vec!["Tree"];
        fields.extend(name);
        self.send(&line(&fields))?;
        match self.reply()? {
            (Reply::Tree(nodes), _) => Ok(nodes),
            (_, lines) => fail(format!("{fields:?} got {lines:?}")),
        }
    }

    /// `Config`, parsed.
    pub fn config(&mut self) -> Result<Vec<Setting>> {
        self.send(b"Config\n")?;
        match self.reply()? {
            (Reply::Config(settings), _) => Ok(settings),
            (_, lines) => fail(format!("Config got {lines:?}")),
        }
    }
}

impl Archon {
    /// `Status`, parsed: every service and task, then every process.
    pub fn status(&self) -> Result<Vec<ServiceRow>> {
        self.conn()?.status(&[])
    }

    /// The `Status` row of service `name`.
    pub fn service(&self, name: &str) -> Result<ServiceRow> {
        self.try_service(name)?
            .context(format!("Status,{name}: no such service"))
    }

    /// The `Status` row of service `name`; `None` when archon answers that there is no such
    /// service (not declared, or not yet: a reload in progress).
    pub fn try_service(&self, name: &str) -> Result<Option<ServiceRow>> {
        let mut c = self.conn()?;
        c.send(&line(&["Status", name]))?;
        match c.reply()? {
            (Reply::Status(rows), lines) => match rows.as_slice() {
                [row] if row.name == name.as_bytes() => Ok(Some(row.clone())),
                _ => fail(format!("Status,{name} got {lines:?}")),
            },
            (Reply::Error(reason), _) if reason.starts_with(b"no such service") => Ok(None),
            (_, lines) => fail(format!("Status,{name} got {lines:?}")),
        }
    }

    /// Asks for service `name`'s row every [`STATUS_INTERVAL`] until `cond` holds for it (a
    /// name archon does not know yet is waited for too); fails after `bound`, showing the last
    /// row.
    pub fn wait_service(
        &self,
        name: &str,
        what: impl fmt::Display,
        bound: Duration,
        mut cond: impl FnMut(&ServiceRow) -> bool,
    ) -> Result<ServiceRow> {
        let deadline = Instant::now() + bound;
        loop {
            let last = self.try_service(name)?;
            if let Some(row) = last.as_ref().filter(|r| cond(r)) {
                return Ok(row.clone());
            }
            if Instant::now() >= deadline {
                let shown = last.map_or_else(|| "no such service".to_string(), |r| show_row(&r));
                return fail(format!(
                    "gave up after {bound:?} waiting for {name}: {what}; last: {shown}"
                ));
            }
            std::thread::sleep(STATUS_INTERVAL);
        }
    }

    /// Waits (up to [`LONG_BOUND`]) until service `name` is in `state`.
    pub fn wait_state(&self, name: &str, state: ServiceState) -> Result<ServiceRow> {
        self.wait_service(name, format!("state {state}"), LONG_BOUND, |r| {
            r.state == state
        })
    }
}

/// Waits until the file at `path` holds a whole line (written by a service) and returns its
/// text without the newline.
pub fn wait_line_in(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    wait_for(format!("a line in {}", path.display()), BOUND, || {
        let text = fs::read_to_string(path).ok()?;
        text.ends_with('\n')
            .then(|| text.trim_end_matches('\n').to_string())
    })
}

/// archon's (or any process's) resident memory, in KiB, from `VmRSS` in `/proc/PID/status`.
pub fn vm_rss_kib(pid: i32) -> Result<u64> {
    let v = status_field(pid, "VmRSS")?;
    v.trim_end_matches("kB")
        .trim()
        .parse()
        .context(format!("VmRSS of {pid}: {v:?}"))
}

/// Waits until `pid` runs `argv`: an exec that archon has seen succeed may not have set up the
/// new program's arguments and environment yet (`/proc/PID/cmdline` and `environ` are empty in
/// between).
pub fn wait_cmdline(pid: i32, argv: &[&str]) -> Result {
    wait_until(format!("pid {pid} to run {argv:?}"), BOUND, || {
        cmdline(pid).is_some_and(|v| v == argv)
    })
}

// ---------------------------------------------------------------------------------------------
// Events: the history and subscriptions
// ---------------------------------------------------------------------------------------------

use archon_proto::{Cause, Event, StreamItem};

impl Conn {
    /// `History[,<arg>...]`, parsed.
    pub fn history(&mut self, args: &[&str]) -> Result<Vec<Event>> {
        let mut fields = vec!["History"];
        fields.extend_from_slice(args);
        self.send(&line(&fields))?;
        match self.reply()? {
            (Reply::History(events), _) => Ok(events),
            (_, lines) => fail(format!("{fields:?} got {lines:?}")),
        }
    }

    /// `Subscribe[,<arg>...]`: the number of the first event the stream can bring. The
    /// connection is a stream of events from now on ([`Conn::stream_item`]).
    pub fn subscribe(&mut self, args: &[&str]) -> Result<u64> {
        let mut fields = vec!["Subscribe"];
        fields.extend_from_slice(args);
        self.send(&line(&fields))?;
        match self.reply()? {
            (Reply::Ok(f), lines) => f
                .first()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
                .context(format!("{fields:?} got {lines:?}: no event number")),
            (_, lines) => fail(format!("{fields:?} got {lines:?}")),
        }
    }

    /// The next item of a subscription's stream, and its record's text.
    pub fn stream_item(&mut self) -> Result<(StreamItem, String)> {
        let rec = self.record()?;
        let item = StreamItem::from_fields(&rec.fields)
            .context(format!("a stream item: {:?}", rec.line))?;
        Ok((item, rec.line))
    }

    /// The next event of a subscription's stream; fails on a `Dropped` mark.
    pub fn stream_event(&mut self) -> Result<Event> {
        match self.stream_item()? {
            (StreamItem::Event(e), _) => Ok(e),
            (_, line) => fail(format!("expected an event, got {line:?}")),
        }
    }

    /// Bytes archon has sent that this side has not read yet (FIONREAD).
    pub fn unread_here(&self) -> Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer.
        let r = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        Errno::result(r).context("ioctl(FIONREAD)")?;
        Ok(usize::try_from(n).unwrap_or(0) + self.buf.len())
    }
}

/// The cause archon records for a request of this test process: its effective uid and pid
/// (`SO_PEERCRED` of the connecting process).
pub fn this_client() -> Cause {
    Cause::Client {
        uid: nix::unistd::geteuid().as_raw(),
        pid: std::process::id() as i32,
    }
}

/// An event as `(subject, event, old, new)` text, to compare lists of them.
pub fn change(e: &Event) -> (String, String, String, String) {
    let state = |s: Option<archon_proto::ServiceState>| s.map_or(String::new(), |s| s.to_string());
    (
        String::from_utf8_lossy(&e.subject).into_owned(),
        e.what.to_string(),
        state(e.old),
        state(e.new),
    )
}

/// An event as one line of text, for failure messages.
pub fn show_event(e: &Event) -> String {
    String::from_utf8_lossy(&e.encode()).trim_end().to_string()
}
