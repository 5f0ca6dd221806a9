//! archonctl: drive archon from a shell, with raw request lines or sub-commands, on the client
//! library. Only `main` chooses exit codes; they are documented in archonctl(1).

mod cli {
    pub mod args;
    pub mod config;
    pub mod events;
    pub mod logs;
    pub mod status;
    pub mod table;
    pub mod tree;
}

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use archon_ctl::{Client, Error, RawLine, Received, pidfd_open};
use archon_proto::frame::{Frame, Framer};
use archon_proto::request::verb;
use archon_proto::{Command, Filter, Reply, Request, Status, StreamItem};
use nix::fcntl::{FcntlArg, fcntl};

use cli::args::{self, Action, Format, Invocation};
use cli::{config, events, status, table, tree};

/// Success.
const EXIT_OK: u8 = 0;
/// archon answered `Error`.
const EXIT_REFUSED: u8 = 1;
/// The command line cannot be understood (or cannot be made into a request).
const EXIT_USAGE: u8 = 100;
/// archon cannot be reached, its reply is malformed, or a system call failed.
const EXIT_SYSTEM: u8 = 111;
/// `run` (or a raw `Run` line): archon refused to run the command.
const EXIT_RUN_REFUSED: u8 = 125;

const USAGE: &str = "\
usage: archonctl [--socket PATH] REQUEST-LINE
       archonctl [--socket PATH] SUB-COMMAND [ARGS]
       archonctl --help | --version

A first argument that is not a sub-command is a request line: sent as it is
(a newline appended), the reply printed as received. A Run line passes
archonctl's stdin, stdout and stderr and exits with the command's status.

sub-commands (TARGET is a service's NAME or a process's ID):
  start NAME              start a service or task; wait until ready or done
  stop TARGET [--grace MS]
                          stop it (SIGTERM, SIGKILL after MS); print how it ended
  restart NAME            stop and start a service; wait until ready again
  pause TARGET, resume TARGET
                          SIGSTOP / SIGCONT its whole tree
  signal TARGET SIGNAL [--group]
                          send SIGNAL (name or number), to its group with --group
  status [NAME]... [--table|--csv]
                          services, tasks and processes: a table on a terminal,
                          CSV rows otherwise
  tree [NAME] [--table|--csv]
                          every process of every service (or of NAME)
  config [--table|--csv]  the effective configuration
  reload                  read the configuration again and apply the changes
  events [--subject GLOB] [--kind KIND] [--max N] [-f|--follow]
         [--table|--csv]  what happened and who caused it: the history archon
                          keeps, then (-f) events as they happen; GLOB takes *
                          and ?, KIND is words such as exit|fail or daemon
  logs NAME [--level L] [-n N] [-f|--follow] [--table|--csv]
                          the lines of NAME's stdout and stderr archon keeps
                          (-n: the newest N; -f: the last 10, then new ones);
                          L is 0-7 or emerg, alert, crit, err, warning,
                          notice, info, debug
  run [-e NAME=VALUE]... [--] CMD [ARG]...
                          run CMD, wait, exit with its status
  daemon [-e NAME=VALUE]... [--] CMD [ARG]...
                          start CMD as a daemon; print its ID and PID
  start [-e NAME=VALUE]... [--] CMD [ARG]...
                          the same, unless it is one word that is a service name
  list                    list the processes archon started or watches
  monitor PID [--pidfd]   watch a process archon did not start; print ID and PID
  on-exit ID [-e NAME=VALUE]... [--] CMD [ARG]...
                          run CMD when process ID ends (at once if it has),
                          told what ended in ARCHON_EXIT, ARCHON_STATUS, ...
  ping                    check that archon answers
  version                 print archon's version
  poweroff, reboot, halt  stop everything, then power off, reboot or halt the
                          machine (root only; archon as process 1 only: any
                          other archon stops everything and exits)
  reexec [PATH]           archon hands everything over to a new image of its
                          program (or of PATH) without restarting a service: an
                          upgrade in place (root only)

options:
  -s, --socket PATH       archon's socket (default: $ARCHON_SOCKET, else
                          /run/archon/archon.sock for root,
                          $XDG_RUNTIME_DIR/archon.sock for others)
  -h, --help              print this help
  -V, --version           print archonctl's version

exit status: 0 done; 1 archon answered Error; 100 usage error; 111 archon
cannot be reached or replied badly; run: the command's status (128+N when
killed by signal N), 125 when archon refuses to run it.
";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Invocation { socket, action } = match args::parse(&args) {
        Ok(invocation) => invocation,
        Err(e) => {
            warn(format_args!("{e}"));
            warn(format_args!("try 'archonctl --help'"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // A `run` refused by archon exits 125, any other refusal 1.
    let refused = match &action {
        Action::Run(_) | Action::Raw(_) => EXIT_RUN_REFUSED,
        _ => EXIT_REFUSED,
    };
    let result = match action {
        Action::Help => print(USAGE.as_bytes()).map(|()| EXIT_OK),
        Action::Version => {
            print(format!("archonctl {}\n", env!("CARGO_PKG_VERSION")).as_bytes()).map(|()| EXIT_OK)
        }
        action => Client::connect(socket.as_deref().map(Path::new))
            .map_err(Failure::Client)
            .and_then(|mut client| perform(&mut client, action)),
    };
    let code = match result {
        Ok(code) => code,
        Err(failure) => {
            warn(format_args!("{failure}"));
            match failure {
                Failure::Client(Error::Refused(_)) => refused,
                Failure::Client(Error::Encode(_)) => EXIT_USAGE,
                _ => EXIT_SYSTEM,
            }
        }
    };
    ExitCode::from(code)
}

/// Why a sub-command did not do its job.
enum Failure {
    /// The client library's error, archon's refusal included.
    Client(Error),
    /// Standard output cannot be written.
    Output(io::Error),
    /// `monitor --pidfd`: no pidfd for that pid.
    Pidfd(i32, io::Error),
    /// A `Run` ended, and archon could not tell how.
    UnknownStatus,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Client(e) => write!(f, "{e}"),
            Failure::Output(e) => write!(f, "cannot write to standard output: {e}"),
            Failure::Pidfd(pid, e) => write!(f, "cannot open a pidfd for process {pid}: {e}"),
            Failure::UnknownStatus => write!(f, "the command ended; archon cannot tell how"),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

/// Does what `action` asks on the connection; the exit code on success.
fn perform(client: &mut Client, action: Action) -> Result<u8, Failure> {
    match action {
        Action::Raw(text) => raw(client, &text),
        Action::Run(command) => run(client, &command),
        Action::Daemon(command) => {
            let (id, pid) = client.start_daemon(&command, &[])?;
            print_ok(format!("{id} {pid}\n"))
        }
        Action::Start(name) => done(client.start(&name)),
        Action::Stop { target, grace_ms } => {
            let status = client.stop_target(&target, grace_ms)?;
            print_ok(format!("{target} {}\n", table::status_text(status)))
        }
        Action::Restart(name) => done(client.restart(&name)),
        Action::Pause(target) => done(client.pause(&target)),
        Action::Resume(target) => done(client.resume(&target)),
        Action::Signal {
            target,
            signal,
            group,
        } => done(client.signal_target(&target, signal, group)),
        Action::Status { names, format } => {
            let received = table_reply(client, &Request::Status { names })?;
            match received.reply {
                Reply::Status(rows) if table_wanted(format) => {
                    print_ok(status::render(&rows, now_ms()))
                }
                Reply::Status(_) => print_rows(&received.raw),
                other => Err(Error::from_reply(other).into()),
            }
        }
        Action::List => print_ok(table::render(&client.list()?)),
        Action::Tree { name, format } => {
            let received = table_reply(client, &Request::Tree { name })?;
            match received.reply {
                Reply::Tree(nodes) if table_wanted(format) => print_ok(tree::render(&nodes)),
                Reply::Tree(_) => print_rows(&received.raw),
                other => Err(Error::from_reply(other).into()),
            }
        }
        Action::Config { format } => {
            let received = table_reply(client, &Request::Config)?;
            match received.reply {
                Reply::Config(settings) if table_wanted(format) => {
                    print_ok(config::render(&settings))
                }
                Reply::Config(_) => print_rows(&received.raw),
                other => Err(Error::from_reply(other).into()),
            }
        }
        Action::Events {
            filter,
            max,
            follow,
            format,
        } => events(client, filter, max, follow, table_wanted(format)),
        Action::Logs {
            name,
            level,
            max,
            follow,
            format,
        } => logs(client, &name, level, max, follow, table_wanted(format)),
        Action::Reload => {
            let c = client.reload()?;
            print_ok(format!(
                "{} started, {} stopped, {} restarted, {} unchanged\n",
                c.started, c.stopped, c.restarted, c.unchanged
            ))
        }
        Action::Monitor { pid, pidfd } => {
            let (id, pid) = if pidfd {
                let fd = pidfd_open(pid).map_err(|e| Failure::Pidfd(pid, e))?;
                client.monitor_fd(fd.as_fd())?
            } else {
                client.monitor(pid)?
            };
            print_ok(format!("{id} {pid}\n"))
        }
        Action::OnExit { id, command } => done(client.on_exit(id, &command)),
        Action::Ping => {
            client.ping()?;
            print_ok("pong\n".to_string())
        }
        Action::ArchonVersion => {
            let (archon, protocol) = client.version()?;
            print_ok(format!(
                "archon {} protocol {protocol}\n",
                String::from_utf8_lossy(&archon)
            ))
        }
        Action::Power(power) => done(client.power(power)),
        Action::ReExec { path } => {
            let version = client.reexec(path.as_deref())?;
            print_ok(format!(
                "archon {} took over\n",
                String::from_utf8_lossy(&version)
            ))
        }
        Action::Help | Action::Version => Ok(EXIT_OK),
    }
}

/// `events`: the history that `filter` matches (the newest `max`), as a table or as archon's
/// CSV lines; with `follow`, then every event as it happens, until archon exits.
fn events(
    client: &mut Client,
    filter: Filter,
    max: Option<usize>,
    follow: bool,
    table: bool,
) -> Result<u8, Failure> {
    let history = Request::History {
        filter: filter.clone(),
        max,
    };
    if !follow {
        let received = table_reply(client, &history)?;
        return match received.reply {
            Reply::History(past) if table => print_ok(events::render(&past)),
            Reply::History(_) => print_rows(&received.raw),
            other => Err(Error::from_reply(other).into()),
        };
    }
    // Subscribe first, then read the history: no event falls between the two, and one that
    // both have is shown once (the stream's numbers start at next_seq).
    let path = client.path().map(Path::to_path_buf);
    let stream = match path {
        Some(path) => Client::connect_to(&path)?,
        None => return Err(Failure::Client(Error::Closed)),
    };
    let mut sub = stream.subscribe(&filter)?;
    let past = match table_reply(client, &history)?.reply {
        Reply::History(past) => past,
        other => return Err(Error::from_reply(other).into()),
    };
    let shown = (|| {
        if table {
            print(events::follow_header().as_bytes())?;
        }
        for e in past.iter().filter(|e| e.seq < sub.next_seq()) {
            if table {
                print(events::follow_line(e).as_bytes())?;
            } else {
                print(&e.encode())?;
            }
        }
        loop {
            let received = match sub.next_item() {
                Ok(received) => received,
                // archon has exited: the stream is over.
                Err(Error::Closed) => return Ok(EXIT_OK),
                Err(e) => return Err(Failure::Client(e)),
            };
            match (&received.item, table) {
                (StreamItem::Event(e), true) => print(events::follow_line(e).as_bytes())?,
                (StreamItem::Dropped(n), true) => print(events::dropped_line(*n).as_bytes())?,
                _ => print(&received.raw)?,
            }
        }
    })();
    match shown {
        // Whoever read the output has stopped (`| head`): done.
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(EXIT_OK),
        other => other,
    }
}

/// `logs`: the lines kept of service `name` at `level` or more severe (the newest `max`), as
/// `TIME STREAM LEVEL TEXT` lines or as archon's CSV rows; with `follow`, then every new line,
/// until archon exits.
fn logs(
    client: &mut Client,
    name: &[u8],
    level: u8,
    max: Option<usize>,
    follow: bool,
    human: bool,
) -> Result<u8, Failure> {
    if !follow {
        let received = table_reply(
            client,
            &Request::Logs {
                name: name.to_vec(),
                level,
                max,
            },
        )?;
        return match received.reply {
            Reply::Logs(lines) if human => {
                print_ok(lines.iter().map(cli::logs::line).collect::<String>())
            }
            Reply::Logs(_) => print_rows(&received.raw),
            other => Err(Error::from_reply(other).into()),
        };
    }
    let path = client.path().map(Path::to_path_buf);
    let stream = match path {
        Some(path) => Client::connect_to(&path)?,
        None => return Err(Failure::Client(Error::Closed)),
    };
    let mut sub = stream.follow_logs(name, level, max)?;
    let shown = (|| loop {
        let received = match sub.next_item() {
            Ok(received) => received,
            Err(Error::Closed) => return Ok(EXIT_OK),
            Err(e) => return Err(Failure::Client(e)),
        };
        match (&received.item, human) {
            (StreamItem::Log(l), true) => print(cli::logs::line(l).as_bytes())?,
            (StreamItem::Dropped(n), true) => print(cli::logs::dropped_line(*n).as_bytes())?,
            _ => print(&received.raw)?,
        }
    })();
    match shown {
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(EXIT_OK),
        other => other,
    }
}

/// A request that nothing is printed for on success.
fn done(result: Result<(), Error>) -> Result<u8, Failure> {
    result.map(|()| EXIT_OK).map_err(Failure::Client)
}

/// Sends `request` and reads its reply with its bytes as received.
fn table_reply(client: &mut Client, request: &Request) -> Result<Received, Failure> {
    client.send(request, &[])?;
    Ok(client.receive()?)
}

/// Whether a table's rows are drawn for people (`--table`, or a terminal without `--csv`)
/// rather than printed as archon sent them.
fn table_wanted(format: Format) -> bool {
    match format {
        Format::Table => true,
        Format::Csv => false,
        Format::Auto => io::stdout().is_terminal(),
    }
}

/// The rows of a table reply as received, without its `<Kind>,<n>` header: CSV for programs.
fn print_rows(raw: &[u8]) -> Result<u8, Failure> {
    print(rows_only(raw)).map(|()| EXIT_OK)
}

/// `raw` without its first record.
fn rows_only(raw: &[u8]) -> &[u8] {
    match Framer::new(raw.len().saturating_add(1)).next_frame(raw) {
        Frame::Record { consumed, .. } => &raw[consumed..],
        // A reply that came through the reader has framed cleanly; nothing to drop otherwise.
        _ => raw,
    }
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `run`: the command gets archonctl's stdin, stdout and stderr; archonctl exits as it did.
fn run(client: &mut Client, command: &Command) -> Result<u8, Failure> {
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let spare = Stdio::new([stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]).map_err(Error::Io)?;
    let status = client.run(command, &spare.fds())?;
    run_exit_code(status)
}

/// The shell's exit code for a `Run`'s status.
fn run_exit_code(status: Status) -> Result<u8, Failure> {
    status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .ok_or(Failure::UnknownStatus)
}

/// A raw line: sent as it is, each reply printed as received. The exit code follows the last
/// reply.
fn raw(client: &mut Client, text: &[u8]) -> Result<u8, Failure> {
    let line = RawLine::new(text);
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let stdio = if line.starts_with_run() {
        Some(Stdio::new([stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]).map_err(Error::Io)?)
    } else {
        None
    };
    let fds = stdio.as_ref().map(Stdio::fds).unwrap_or_default();
    // The fds travel with the first record alone (see RawLine::first_len).
    let (first, rest) = line.bytes.split_at(line.first_len);
    let sent = client.send_line(first, &fds).and_then(|()| match rest {
        [] => Ok(()),
        rest => client.send_line(rest, &[]),
    });
    match &sent {
        // archon answers a line that is too long, then closes without reading the rest: its
        // reply is still there to read.
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(_) => return sent.map(|()| EXIT_OK).map_err(Failure::Client),
        Ok(()) if line.unterminated => client.shutdown_write()?,
        Ok(()) => {}
    }
    let mut code = EXIT_OK;
    for verb in &line.verbs {
        let received = match client.receive() {
            Ok(received) => received,
            Err(e) => return Err(Failure::Client(sent.err().unwrap_or(e))),
        };
        print(&received.raw)?;
        code = raw_exit_code(verb.as_deref(), &received.reply)?;
    }
    Ok(code)
}

/// The exit code for one reply to a raw line whose first field is `verb`.
fn raw_exit_code(verb: Option<&[u8]>, reply: &Reply) -> Result<u8, Failure> {
    let is_run = verb == Some(verb::RUN.as_bytes());
    match reply {
        Reply::ExitStatus(status) if is_run => run_exit_code(*status),
        Reply::Error(_) if is_run => Ok(EXIT_RUN_REFUSED),
        Reply::Error(_) => Ok(EXIT_REFUSED),
        _ => Ok(EXIT_OK),
    }
}

/// archonctl's stdin, stdout and stderr, to pass to a `Run`; one that is closed is replaced by
/// `/dev/null`, so that the other two keep their places.
struct Stdio<'a> {
    fds: [BorrowedFd<'a>; 3],
    null: [Option<File>; 3],
}

impl<'a> Stdio<'a> {
    fn new(fds: [BorrowedFd<'a>; 3]) -> io::Result<Stdio<'a>> {
        let mut null = [None, None, None];
        for (fd, slot) in fds.iter().zip(&mut null) {
            if fcntl(fd, FcntlArg::F_GETFD).is_err() {
                *slot = Some(
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")?,
                );
            }
        }
        Ok(Stdio { fds, null })
    }

    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.fds
            .iter()
            .zip(&self.null)
            .map(|(fd, null)| null.as_ref().map_or(*fd, AsFd::as_fd))
            .collect()
    }
}

fn print(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Failure::Output)
}

fn print_ok(text: String) -> Result<u8, Failure> {
    print(text.as_bytes()).map(|()| EXIT_OK)
}

/// A message on stderr; if stderr is gone there is no one to tell.
fn warn(message: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "archonctl: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_statuses_map_like_a_shell() {
        assert!(matches!(run_exit_code(Status::Exited(0)), Ok(0)));
        assert!(matches!(run_exit_code(Status::Exited(255)), Ok(255)));
        assert!(matches!(run_exit_code(Status::Signaled(9)), Ok(137)));
        assert!(matches!(run_exit_code(Status::Signaled(64)), Ok(192)));
        assert!(matches!(
            run_exit_code(Status::Unknown),
            Err(Failure::UnknownStatus)
        ));
    }

    #[test]
    fn csv_output_is_the_rows_as_received() {
        let raw = b"Status,2\nService,a,service,ready,1,1.000,0,,yes,-,,,\"x\ny\",\r\nService,3,daemon,running,2,1.000,0,,-,-,,,,\n";
        let rows = &raw[b"Status,2\n".len()..];
        assert_eq!(rows_only(raw), rows);
        assert_eq!(rows_only(b"Status,0\r\n"), b"");
        assert_eq!(
            rows_only(b"\"Tr\nee\",1\nNode,a,1,0,sh\n"),
            b"Node,a,1,0,sh\n"
        );
        assert!(!table_wanted(Format::Csv));
        assert!(table_wanted(Format::Table));
    }

    #[test]
    fn raw_replies_map_to_exit_codes() {
        let run = Some(&b"Run"[..]);
        let start = Some(&b"StartDaemon"[..]);
        let error = Reply::error("busy");
        let cases: &[(Option<&[u8]>, Reply, u8)] = &[
            (run, Reply::ExitStatus(Status::Exited(3)), 3),
            (run, Reply::ExitStatus(Status::Signaled(15)), 143),
            (run, error.clone(), EXIT_RUN_REFUSED),
            (start, error.clone(), EXIT_REFUSED),
            (None, error, EXIT_REFUSED),
            (start, Reply::started(1, 2), EXIT_OK),
            (Some(b"Ping"), Reply::Pong, EXIT_OK),
        ];
        for (verb, reply, want) in cases {
            assert!(
                matches!(raw_exit_code(*verb, reply), Ok(c) if c == *want),
                "{reply:?}"
            );
        }
    }
}
