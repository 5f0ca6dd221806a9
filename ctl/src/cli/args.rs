//! archonctl's command line, read by hand into an [`Invocation`]: pure, so tables test it.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;

use archon_proto::event::check_pattern;
use archon_proto::limits::{MAX_HISTORY, MAX_LOG_ROWS, MAX_STOP_GRACE_MS};
use archon_proto::log::{LEVEL_DEBUG, parse_level};
use archon_proto::{Command, EnvEntry, Filter, KindSet, Power, Target, name, signal};

/// How a table is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table on a terminal, CSV otherwise.
    Auto,
    /// `--table`: aligned columns for people.
    Table,
    /// `--csv`: the reply's rows as archon sent them.
    Csv,
}

/// What archonctl was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `--help`: print the usage.
    Help,
    /// `--version`: print archonctl's version.
    Version,
    /// A raw line, sent as it is.
    Raw(Vec<u8>),
    /// `run`: run a command, wait, exit with its status.
    Run(Command),
    /// `daemon`, or `start` with a command: start a daemon.
    Daemon(Command),
    /// `start NAME`: start a service or task.
    Start(Vec<u8>),
    /// `stop TARGET [--grace MS]`.
    Stop {
        /// The process or service.
        target: Target,
        /// SIGTERM to SIGKILL, in milliseconds.
        grace_ms: Option<u64>,
    },
    /// `restart NAME`.
    Restart(Vec<u8>),
    /// `pause TARGET`.
    Pause(Target),
    /// `resume TARGET`.
    Resume(Target),
    /// `signal TARGET SIGNAL [--group]`.
    Signal {
        /// The process or service.
        target: Target,
        /// The signal's number.
        signal: i32,
        /// To its process group.
        group: bool,
    },
    /// `status [NAME...]`.
    Status {
        /// The services asked about; all when empty.
        names: Vec<Vec<u8>>,
        /// How to print the rows.
        format: Format,
    },
    /// `list`: the processes.
    List,
    /// `tree [NAME]`.
    Tree {
        /// The service asked about; all when `None`.
        name: Option<Vec<u8>>,
        /// How to print the rows.
        format: Format,
    },
    /// `config`.
    Config {
        /// How to print the rows.
        format: Format,
    },
    /// `reload`.
    Reload,
    /// `events [--subject GLOB] [--kind KIND] [--max N] [--follow] [--table|--csv]`.
    Events {
        /// Which events.
        filter: Filter,
        /// At most this many from the history (the newest).
        max: Option<usize>,
        /// Then go on with the events as they happen.
        follow: bool,
        /// How to print them.
        format: Format,
    },
    /// `logs NAME [--level L] [-n N] [-f|--follow] [--table|--csv]`.
    Logs {
        /// The service.
        name: Vec<u8>,
        /// The least severe level shown (0 to 7).
        level: u8,
        /// The newest this many lines kept (all when `None`; 10 with `follow`).
        max: Option<usize>,
        /// Then go on with the lines as they come.
        follow: bool,
        /// How to print them.
        format: Format,
    },
    /// `on-exit ID [-e NAME=VALUE]... [--] CMD [ARG]...`: run CMD when process ID ends.
    OnExit {
        /// The process.
        id: u64,
        /// What to run.
        command: Command,
    },
    /// `monitor PID [--pidfd]`.
    Monitor {
        /// The process.
        pid: i32,
        /// Open the pidfd here and send `MonitorFD`.
        pidfd: bool,
    },
    /// `ping`.
    Ping,
    /// `version`: archon's version.
    ArchonVersion,
    /// `poweroff`, `reboot`, `halt`.
    Power(Power),
    /// `reexec [PATH]`.
    ReExec {
        /// The program to execute, absolute; archon's own when `None`.
        path: Option<Vec<u8>>,
    },
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `--socket PATH`.
    pub socket: Option<OsString>,
    /// The rest.
    pub action: Action,
}

/// A command line that cannot be understood; its text says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

fn show(arg: &OsStr) -> String {
    arg.to_string_lossy().into_owned()
}

/// Reads archonctl's arguments (without the program name).
pub fn parse(args: &[OsString]) -> Result<Invocation, UsageError> {
    let mut socket = None;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let bytes = arg.as_bytes();
        match bytes {
            b"--" => {
                i += 1;
                break;
            }
            b"-h" | b"--help" => return Ok(invocation(socket, Action::Help)),
            b"-V" | b"--version" => return Ok(invocation(socket, Action::Version)),
            b"-s" | b"--socket" => {
                let value = args
                    .get(i + 1)
                    .ok_or_else(|| usage(format!("{} needs a PATH", show(arg))))?;
                socket = Some(value.clone());
                i += 2;
            }
            _ if bytes.starts_with(b"--socket=") => {
                socket = Some(OsStr::from_bytes(&bytes[b"--socket=".len()..]).to_os_string());
                i += 1;
            }
            [b'-', _, ..] => return Err(usage(format!("unknown option: {}", show(arg)))),
            _ => break,
        }
    }
    let Some(word) = args.get(i) else {
        return Err(usage("missing a sub-command or a request line"));
    };
    let rest = &args[i + 1..];
    let action = match word.as_bytes() {
        b"run" => command(rest, Action::Run)?,
        b"start" => start(rest)?,
        b"daemon" => command(rest, Action::Daemon)?,
        b"stop" => stop(rest)?,
        b"restart" => one_name(rest, Action::Restart)?,
        b"pause" => one_target(rest, Action::Pause)?,
        b"resume" => one_target(rest, Action::Resume)?,
        b"signal" => signal(rest)?,
        b"status" => status(rest)?,
        b"list" => none(rest, Action::List)?,
        b"tree" => tree(rest)?,
        b"config" => config(rest)?,
        b"reload" => none(rest, Action::Reload)?,
        b"events" => events(rest)?,
        b"logs" => logs(rest)?,
        b"monitor" => monitor(rest)?,
        b"on-exit" => on_exit(rest)?,
        b"ping" => none(rest, Action::Ping)?,
        b"version" => none(rest, Action::ArchonVersion)?,
        b"poweroff" => none(rest, Action::Power(Power::Poweroff))?,
        b"reboot" => none(rest, Action::Power(Power::Reboot))?,
        b"halt" => none(rest, Action::Power(Power::Halt))?,
        b"reexec" => reexec(rest)?,
        line => {
            if !rest.is_empty() {
                return Err(usage(
                    "a request line is one argument: quote it, or use a sub-command",
                ));
            }
            Action::Raw(line.to_vec())
        }
    };
    Ok(invocation(socket, action))
}

fn invocation(socket: Option<OsString>, action: Action) -> Invocation {
    Invocation { socket, action }
}

/// `[-e NAME=VALUE]... [--] CMD ARGS...`, made into `make(command)`.
fn command(args: &[OsString], make: fn(Command) -> Action) -> Result<Action, UsageError> {
    let mut env = Vec::new();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        let bytes = arg.as_bytes();
        let assignment = match bytes {
            b"--" => {
                i += 1;
                break;
            }
            b"-h" | b"--help" => return Ok(Action::Help),
            b"-e" | b"--env" => {
                i += 1;
                args.get(i)
                    .ok_or_else(|| usage(format!("{} needs NAME=VALUE", show(arg))))?
                    .as_bytes()
            }
            _ if bytes.starts_with(b"--env=") => &bytes[b"--env=".len()..],
            [b'-', b'e', value @ ..] => value,
            [b'-', _, ..] => {
                return Err(usage(format!(
                    "unknown option: {} (put -- before a command that starts with '-')",
                    show(arg)
                )));
            }
            _ => break,
        };
        env.push(env_entry(assignment)?);
        i += 1;
    }
    let argv: Vec<Vec<u8>> = args[i..].iter().map(|a| a.as_bytes().to_vec()).collect();
    if argv.is_empty() {
        return Err(usage("missing the command to run"));
    }
    Ok(make(Command { argv, env }))
}

fn env_entry(assignment: &[u8]) -> Result<EnvEntry, UsageError> {
    match assignment.iter().position(|&b| b == b'=') {
        Some(eq) if eq > 0 => Ok(EnvEntry::set(&assignment[..eq], &assignment[eq + 1..])),
        _ => Err(usage(format!(
            "-e takes NAME=VALUE, got {:?}",
            String::from_utf8_lossy(assignment)
        ))),
    }
}

/// A sub-command's arguments, sorted.
struct Split<'a> {
    /// The arguments that are not flags, in order.
    positionals: Vec<&'a OsStr>,
    /// The flags given, each with its value if it takes one, in order.
    flags: Vec<(&'static str, Option<&'a OsStr>)>,
}

/// Splits a sub-command's arguments into positionals and the flags in `allowed` (names from
/// [`KNOWN_FLAGS`]), in any order; `--` ends the flags. Returns `None` for `--help`.
fn split_flags<'a>(
    args: &'a [OsString],
    allowed: &[&str],
) -> Result<Option<Split<'a>>, UsageError> {
    let mut positionals = Vec::new();
    let mut found = Vec::new();
    let mut i = 0;
    let mut options = true;
    while let Some(arg) = args.get(i) {
        i += 1;
        let bytes = arg.as_bytes();
        if !options || bytes.len() < 2 || bytes[0] != b'-' {
            positionals.push(arg.as_os_str());
            continue;
        }
        if bytes == b"--" {
            options = false;
            continue;
        }
        if bytes == b"-h" || bytes == b"--help" {
            return Ok(None);
        }
        let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
            Some(eq) => (&bytes[..eq], Some(OsStr::from_bytes(&bytes[eq + 1..]))),
            None => (bytes, None),
        };
        let Some(&(flag, takes_value)) = KNOWN_FLAGS
            .iter()
            .find(|(f, _)| f.as_bytes() == name && allowed.contains(f))
        else {
            return Err(usage(format!("unknown option: {}", show(arg))));
        };
        let value = match (takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => {
                let v = args
                    .get(i)
                    .ok_or_else(|| usage(format!("{flag} needs a value")))?;
                i += 1;
                Some(v.as_os_str())
            }
            (false, None) => None,
            (false, Some(_)) => return Err(usage(format!("{flag} takes no value"))),
        };
        found.push((flag, value));
    }
    Ok(Some(Split {
        positionals,
        flags: found,
    }))
}

/// Every sub-command flag, and whether it takes a value.
const KNOWN_FLAGS: [(&str, bool); 12] = [
    ("--grace", true),
    ("--group", false),
    ("--pidfd", false),
    ("--csv", false),
    ("--table", false),
    ("--subject", true),
    ("--kind", true),
    ("--max", true),
    ("--follow", false),
    ("-f", false),
    ("--level", true),
    ("-n", true),
];

fn exact<'a>(positionals: &[&'a OsStr], names: &[&str]) -> Result<Vec<&'a OsStr>, UsageError> {
    match positionals.len().cmp(&names.len()) {
        std::cmp::Ordering::Less => Err(usage(format!("missing {}", names[positionals.len()]))),
        std::cmp::Ordering::Greater => Err(usage(format!(
            "unexpected argument: {}",
            show(positionals[names.len()])
        ))),
        std::cmp::Ordering::Equal => Ok(positionals.to_vec()),
    }
}

/// A decimal number: digits only, no sign.
fn number(arg: &OsStr, what: &str) -> Result<u64, UsageError> {
    let bytes = arg.as_bytes();
    let n = if !bytes.is_empty() && bytes.len() <= 20 && bytes.iter().all(u8::is_ascii_digit) {
        arg.to_str().and_then(|s| s.parse().ok())
    } else {
        None
    };
    n.ok_or_else(|| usage(format!("{what} is not a number: {}", show(arg))))
}

/// A process id or a service name.
fn target(arg: &OsStr) -> Result<Target, UsageError> {
    Target::from_field(arg.as_bytes()).map_err(|e| {
        usage(format!(
            "not a process id or a service name: {} ({e})",
            show(arg)
        ))
    })
}

/// A service name.
fn service_name(arg: &OsStr) -> Result<Vec<u8>, UsageError> {
    name::check(arg.as_bytes())
        .map_err(|why| usage(format!("not a service name: {} ({why})", show(arg))))?;
    Ok(arg.as_bytes().to_vec())
}

/// `start NAME` is a service; `start [-e NAME=VALUE]... [--] CMD [ARG]...` a daemon. One
/// argument that is a valid service name is the service: to start a daemon whose command is a
/// single word that could be a name, write `--` before it (or use `daemon`).
fn start(args: &[OsString]) -> Result<Action, UsageError> {
    match args {
        [one] if name::check(one.as_bytes()).is_ok() => Ok(Action::Start(one.as_bytes().to_vec())),
        _ => command(args, Action::Daemon),
    }
}

/// `--csv` and `--table`: the last one given wins.
fn format(flags: &[(&'static str, Option<&OsStr>)]) -> Format {
    match flags
        .iter()
        .rev()
        .find(|(f, _)| *f == "--csv" || *f == "--table")
    {
        Some(("--csv", _)) => Format::Csv,
        Some(_) => Format::Table,
        None => Format::Auto,
    }
}

fn one_name(args: &[OsString], make: fn(Vec<u8>) -> Action) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos, ..
    }) = split_flags(args, &[])?
    else {
        return Ok(Action::Help);
    };
    let [name] = exact(&pos, &["NAME"])?[..] else {
        return Err(usage("missing NAME"));
    };
    Ok(make(service_name(name)?))
}

fn one_target(args: &[OsString], make: fn(Target) -> Action) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos, ..
    }) = split_flags(args, &[])?
    else {
        return Ok(Action::Help);
    };
    let [t] = exact(&pos, &["TARGET"])?[..] else {
        return Err(usage("missing TARGET"));
    };
    Ok(make(target(t)?))
}

fn status(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(args, &["--csv", "--table"])?
    else {
        return Ok(Action::Help);
    };
    Ok(Action::Status {
        names: pos
            .iter()
            .map(|n| service_name(n))
            .collect::<Result<_, _>>()?,
        format: format(&flags),
    })
}

fn tree(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(args, &["--csv", "--table"])?
    else {
        return Ok(Action::Help);
    };
    let name = match pos[..] {
        [] => None,
        [name] => Some(service_name(name)?),
        [_, extra, ..] => return Err(usage(format!("unexpected argument: {}", show(extra)))),
    };
    Ok(Action::Tree {
        name,
        format: format(&flags),
    })
}

fn reexec(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos, ..
    }) = split_flags(args, &[])?
    else {
        return Ok(Action::Help);
    };
    let path = match pos[..] {
        [] => None,
        [p] if p.as_bytes().first() == Some(&b'/') => Some(p.as_bytes().to_vec()),
        [p] => return Err(usage(format!("the path must be absolute: {}", show(p)))),
        [_, extra, ..] => return Err(usage(format!("unexpected argument: {}", show(extra)))),
    };
    Ok(Action::ReExec { path })
}

fn config(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(args, &["--csv", "--table"])?
    else {
        return Ok(Action::Help);
    };
    exact(&pos, &[])?;
    Ok(Action::Config {
        format: format(&flags),
    })
}

fn events(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(
        args,
        &[
            "--subject",
            "--kind",
            "--max",
            "--follow",
            "-f",
            "--csv",
            "--table",
        ],
    )?
    else {
        return Ok(Action::Help);
    };
    exact(&pos, &[])?;
    let (mut filter, mut max, mut follow) = (Filter::any(), None, false);
    for (flag, value) in &flags {
        let value = value.unwrap_or_default();
        match *flag {
            "--subject" => {
                check_pattern(value.as_bytes()).map_err(|why| {
                    usage(format!("not a subject pattern: {} ({why})", show(value)))
                })?;
                filter.subject = value.as_bytes().to_vec();
            }
            "--kind" => {
                filter.kinds = KindSet::from_field(value.as_bytes())
                    .map_err(|why| usage(format!("not a kind: {} ({why})", show(value))))?;
            }
            "--max" => {
                let n = number(value, "--max")?;
                if n == 0 || n > MAX_HISTORY as u64 {
                    return Err(usage(format!("--max is 1 to {MAX_HISTORY}")));
                }
                max = Some(n as usize);
            }
            "--follow" | "-f" => follow = true,
            _ => {}
        }
    }
    Ok(Action::Events {
        filter,
        max,
        follow,
        format: format(&flags),
    })
}

/// How many lines `logs -f` shows before the new ones, without `-n`.
const FOLLOW_LINES: usize = 10;

fn logs(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(
        args,
        &["--level", "-n", "--follow", "-f", "--csv", "--table"],
    )?
    else {
        return Ok(Action::Help);
    };
    let [name] = exact(&pos, &["NAME"])?[..] else {
        return Err(usage("missing NAME"));
    };
    let (mut level, mut max, mut follow) = (LEVEL_DEBUG, None, false);
    for (flag, value) in &flags {
        let value = value.unwrap_or_default();
        match *flag {
            "--level" => {
                level = parse_level(value.as_bytes()).ok_or_else(|| {
                    usage(format!(
                        "not a level: {} (0 to 7, or emerg, alert, crit, err, warning, notice, \
                         info, debug)",
                        show(value)
                    ))
                })?;
            }
            "-n" => {
                let n = number(value, "-n")?;
                if n > MAX_LOG_ROWS as u64 {
                    return Err(usage(format!("-n is 0 to {MAX_LOG_ROWS}")));
                }
                max = Some(n as usize);
            }
            "--follow" | "-f" => follow = true,
            _ => {}
        }
    }
    if follow && max.is_none() {
        max = Some(FOLLOW_LINES);
    }
    Ok(Action::Logs {
        name: service_name(name)?,
        level,
        max,
        follow,
        format: format(&flags),
    })
}

fn stop(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(args, &["--grace"])?
    else {
        return Ok(Action::Help);
    };
    let [t] = exact(&pos, &["TARGET"])?[..] else {
        return Err(usage("missing TARGET"));
    };
    let mut grace_ms = None;
    for (_, value) in flags {
        let ms = number(value.unwrap_or_default(), "the grace period")?;
        if ms > MAX_STOP_GRACE_MS {
            return Err(usage(format!(
                "the grace period is at most {MAX_STOP_GRACE_MS} ms"
            )));
        }
        grace_ms = Some(ms);
    }
    Ok(Action::Stop {
        target: target(t)?,
        grace_ms,
    })
}

fn signal(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(args, &["--group"])?
    else {
        return Ok(Action::Help);
    };
    let [t, sig] = exact(&pos, &["TARGET", "SIGNAL"])?[..] else {
        return Err(usage("missing TARGET or SIGNAL"));
    };
    let signal = signal::parse(sig.as_bytes())
        .ok_or_else(|| usage(format!("not a signal: {}", show(sig))))?;
    Ok(Action::Signal {
        target: target(t)?,
        signal,
        group: !flags.is_empty(),
    })
}

fn monitor(args: &[OsString]) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos,
        flags,
    }) = split_flags(args, &["--pidfd"])?
    else {
        return Ok(Action::Help);
    };
    let [pid] = exact(&pos, &["PID"])?[..] else {
        return Err(usage("missing PID"));
    };
    let pid = number(pid, "PID")
        .ok()
        .and_then(|p| i32::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| usage(format!("not a pid: {}", show(pid))))?;
    Ok(Action::Monitor {
        pid,
        pidfd: !flags.is_empty(),
    })
}

/// `on-exit ID [-e NAME=VALUE]... [--] CMD [ARG]...`.
fn on_exit(args: &[OsString]) -> Result<Action, UsageError> {
    let Some((id, rest)) = args.split_first() else {
        return Err(usage("missing ID"));
    };
    if matches!(id.as_bytes(), b"-h" | b"--help") {
        return Ok(Action::Help);
    }
    let id = number(id, "ID")?;
    Ok(match command(rest, Action::Run)? {
        Action::Run(command) => Action::OnExit { id, command },
        other => other,
    })
}

fn none(args: &[OsString], action: Action) -> Result<Action, UsageError> {
    let Some(Split {
        positionals: pos, ..
    }) = split_flags(args, &[])?
    else {
        return Ok(Action::Help);
    };
    exact(&pos, &[])?;
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Invocation, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&args).map_err(|e| e.0)
    }

    fn action(args: &[&str]) -> Action {
        match parse_str(args) {
            Ok(inv) => inv.action,
            Err(e) => unreachable!("{args:?}: {e}"),
        }
    }

    fn fields(s: &[&str]) -> Vec<Vec<u8>> {
        s.iter().map(|f| f.as_bytes().to_vec()).collect()
    }

    #[test]
    fn global_options() {
        let socket = |args: &[&str]| parse_str(args).map(|i| i.socket);
        assert_eq!(socket(&["ping"]), Ok(None));
        assert_eq!(socket(&["--socket", "/a", "ping"]), Ok(Some("/a".into())));
        assert_eq!(socket(&["-s", "/a", "ping"]), Ok(Some("/a".into())));
        assert_eq!(socket(&["--socket=/b", "ping"]), Ok(Some("/b".into())));
        assert_eq!(socket(&["-s", "/a", "--", "Ping"]), Ok(Some("/a".into())));
        assert_eq!(action(&["--help"]), Action::Help);
        assert_eq!(action(&["-s", "/a", "-h", "junk"]), Action::Help);
        assert_eq!(action(&["--version"]), Action::Version);
        assert_eq!(action(&["-V"]), Action::Version);
    }

    #[test]
    fn raw_lines() {
        assert_eq!(
            action(&["StartDaemon,/usr/bin/sleep,100"]),
            Action::Raw(b"StartDaemon,/usr/bin/sleep,100".to_vec())
        );
        assert_eq!(action(&["Ping"]), Action::Raw(b"Ping".to_vec()));
        assert_eq!(action(&["--", "-x"]), Action::Raw(b"-x".to_vec()));
        assert_eq!(
            action(&["--", "run", "x"]),
            Action::Run(Command::new(["x"]))
        );
        assert_eq!(action(&[""]), Action::Raw(Vec::new()));
        assert_eq!(action(&["-"]), Action::Raw(b"-".to_vec()));
    }

    #[test]
    fn run_and_start() {
        assert_eq!(
            action(&["run", "--", "/bin/echo", "-n", "A=1"]),
            Action::Run(Command::new(["/bin/echo", "-n", "A=1"]))
        );
        assert_eq!(
            action(&[
                "start",
                "-e",
                "A=1",
                "--env",
                "B==2",
                "-eC=",
                "--env=D=x,y",
                "sleep",
                "-e",
                "X=1"
            ]),
            Action::Daemon(Command {
                argv: fields(&["sleep", "-e", "X=1"]),
                env: vec![
                    EnvEntry::set("A", "1"),
                    EnvEntry::set("B", "=2"),
                    EnvEntry::set("C", ""),
                    EnvEntry::set("D", "x,y"),
                ],
            })
        );
        assert_eq!(
            action(&["run", "-e", "1-odd name=v", "env"]),
            Action::Run(Command {
                argv: fields(&["env"]),
                env: vec![EnvEntry::set("1-odd name", "v")],
            })
        );
        assert_eq!(action(&["run", "--help"]), Action::Help);
        assert_eq!(
            action(&["run", "--", "--help"]),
            Action::Run(Command::new(["--help"]))
        );
    }

    fn service(name: &str) -> Target {
        Target::Service(name.as_bytes().to_vec())
    }

    #[test]
    fn start_is_a_service_or_a_daemon() {
        let daemon = |argv: &[&str]| Action::Daemon(Command::new(argv.iter().copied()));
        assert_eq!(action(&["start", "db"]), Action::Start(b"db".to_vec()));
        assert_eq!(
            action(&["start", "getty@tty1"]),
            Action::Start(b"getty@tty1".to_vec())
        );
        // One word that could be a name is the service; `--`, `-e`, a second word, or a word
        // that is no name make it a command.
        assert_eq!(action(&["start", "--", "sleep"]), daemon(&["sleep"]));
        assert_eq!(
            action(&["start", "sleep", "100"]),
            daemon(&["sleep", "100"])
        );
        assert_eq!(action(&["start", "/bin/true"]), daemon(&["/bin/true"]));
        assert_eq!(action(&["start", "123"]), daemon(&["123"]));
        assert_eq!(
            action(&["start", "-e", "A=1", "db"]),
            Action::Daemon(Command {
                argv: fields(&["db"]),
                env: vec![EnvEntry::set("A", "1")],
            })
        );
        assert_eq!(action(&["start", "--help"]), Action::Help);
        assert_eq!(action(&["daemon", "db"]), daemon(&["db"]));
        assert_eq!(
            action(&["on-exit", "7", "-e", "A=1", "--", "/bin/sh", "-c", "x"]),
            Action::OnExit {
                id: 7,
                command: Command {
                    argv: fields(&["/bin/sh", "-c", "x"]),
                    env: vec![EnvEntry::set("A", "1")],
                },
            }
        );
        assert_eq!(action(&["on-exit", "--help"]), Action::Help);
        assert_eq!(action(&["on-exit", "7", "--help"]), Action::Help);
        assert_eq!(
            action(&["daemon", "--", "/usr/bin/sleep", "1"]),
            daemon(&["/usr/bin/sleep", "1"])
        );
    }

    #[test]
    fn service_sub_commands() {
        assert_eq!(
            action(&["stop", "web"]),
            Action::Stop {
                target: service("web"),
                grace_ms: None
            }
        );
        assert_eq!(
            action(&["restart", "web"]),
            Action::Restart(b"web".to_vec())
        );
        assert_eq!(action(&["pause", "web"]), Action::Pause(service("web")));
        assert_eq!(action(&["pause", "7"]), Action::Pause(Target::Id(7)));
        assert_eq!(action(&["resume", "web"]), Action::Resume(service("web")));
        assert_eq!(
            action(&["signal", "web", "usr1", "--group"]),
            Action::Signal {
                target: service("web"),
                signal: 10,
                group: true
            }
        );
        let status = |names: &[&str], format| Action::Status {
            names: fields(names),
            format,
        };
        assert_eq!(action(&["status"]), status(&[], Format::Auto));
        assert_eq!(
            action(&["status", "db", "web"]),
            status(&["db", "web"], Format::Auto)
        );
        assert_eq!(action(&["status", "--csv"]), status(&[], Format::Csv));
        assert_eq!(
            action(&["status", "--table", "db"]),
            status(&["db"], Format::Table)
        );
        assert_eq!(
            action(&["status", "--table", "--csv"]),
            status(&[], Format::Csv)
        );
        assert_eq!(action(&["list"]), Action::List);
        assert_eq!(
            action(&["tree"]),
            Action::Tree {
                name: None,
                format: Format::Auto
            }
        );
        assert_eq!(
            action(&["tree", "db", "--csv"]),
            Action::Tree {
                name: Some(b"db".to_vec()),
                format: Format::Csv
            }
        );
        assert_eq!(
            action(&["config", "--table"]),
            Action::Config {
                format: Format::Table
            }
        );
        assert_eq!(action(&["reload"]), Action::Reload);
        assert_eq!(action(&["status", "-h"]), Action::Help);
        let events = |subject: &str, kinds: KindSet, max, follow, format| Action::Events {
            filter: Filter {
                subject: subject.as_bytes().to_vec(),
                kinds,
            },
            max,
            follow,
            format,
        };
        assert_eq!(
            action(&["events"]),
            events("", KindSet::ANY, None, false, Format::Auto)
        );
        let exits = KindSet::ANY.with_event(archon_proto::EventKind::Exit);
        assert_eq!(
            action(&["events", "-f", "--subject", "web*", "--kind=exit", "--csv"]),
            events("web*", exits, None, true, Format::Csv)
        );
        assert_eq!(
            action(&["events", "--follow", "--max", "5", "--table"]),
            events("", KindSet::ANY, Some(5), true, Format::Table)
        );
    }

    #[test]
    fn the_other_sub_commands() {
        assert_eq!(
            action(&["stop", "3"]),
            Action::Stop {
                target: Target::Id(3),
                grace_ms: None
            }
        );
        assert_eq!(
            action(&["stop", "--grace", "250", "3"]),
            Action::Stop {
                target: Target::Id(3),
                grace_ms: Some(250)
            }
        );
        assert_eq!(
            action(&["stop", "3", "--grace=0"]),
            Action::Stop {
                target: Target::Id(3),
                grace_ms: Some(0)
            }
        );
        assert_eq!(
            action(&["signal", "4", "hup"]),
            Action::Signal {
                target: Target::Id(4),
                signal: 1,
                group: false
            }
        );
        assert_eq!(
            action(&["signal", "--group", "4", "SIGKILL"]),
            Action::Signal {
                target: Target::Id(4),
                signal: 9,
                group: true
            }
        );
        assert_eq!(
            action(&["signal", "4", "0"]),
            Action::Signal {
                target: Target::Id(4),
                signal: 0,
                group: false
            }
        );
        assert_eq!(
            action(&["monitor", "42"]),
            Action::Monitor {
                pid: 42,
                pidfd: false
            }
        );
        assert_eq!(
            action(&["monitor", "--pidfd", "42"]),
            Action::Monitor {
                pid: 42,
                pidfd: true
            }
        );
        assert_eq!(action(&["ping"]), Action::Ping);
        assert_eq!(action(&["version"]), Action::ArchonVersion);
        assert_eq!(action(&["stop", "-h"]), Action::Help);
        assert_eq!(action(&["poweroff"]), Action::Power(Power::Poweroff));
        assert_eq!(action(&["reboot"]), Action::Power(Power::Reboot));
        assert_eq!(action(&["halt"]), Action::Power(Power::Halt));
        assert_eq!(action(&["reexec"]), Action::ReExec { path: None });
        assert_eq!(
            action(&["reexec", "/usr/sbin/archon"]),
            Action::ReExec {
                path: Some(b"/usr/sbin/archon".to_vec())
            }
        );
        assert_eq!(action(&["halt", "--help"]), Action::Help);
        // The verbs themselves are raw lines.
        assert_eq!(action(&["Poweroff"]), Action::Raw(b"Poweroff".to_vec()));
    }

    #[test]
    fn usage_errors() {
        let bad: &[&[&str]] = &[
            &[],
            &["--socket"],
            &["-s", "/a"],
            &["--frobnicate", "ping"],
            &["Ping", "extra"],
            &["run"],
            &["run", "--"],
            &["run", "-e"],
            &["run", "-e", "NOEQUALS", "x"],
            &["run", "-e", "=v", "x"],
            &["run", "-x", "cmd"],
            &["stop"],
            &["stop", "a b"],
            &["stop", ".x"],
            &["stop", "99999999999999999999"],
            &["stop", "-1"],
            &["stop", "1", "2"],
            &["stop", "1", "--grace"],
            &["stop", "1", "--grace", "soon"],
            &["stop", "1", "--grace", "86400001"],
            &["stop", "1", "--group"],
            &["signal", "1"],
            &["signal", "1", "SIGNOPE"],
            &["signal", "1", "65"],
            &["signal", "1", "TERM", "--group=yes"],
            &["monitor"],
            &["monitor", "0"],
            &["monitor", "2147483648"],
            &["monitor", "1", "--grace", "5"],
            &["ping", "x"],
            &["status", "--all"],
            &["status", "3"],
            &["status", "db", "a/b"],
            &["status", "--grace", "1"],
            &["list", "--csv"],
            &["start"],
            &["start", "--"],
            &["daemon"],
            &["daemon", "-e", "X"],
            &["on-exit"],
            &["on-exit", "7"],
            &["on-exit", "web", "/bin/true"],
            &["on-exit", "-1", "/bin/true"],
            &["restart"],
            &["restart", "7"],
            &["restart", "a", "b"],
            &["pause"],
            &["pause", "a", "b"],
            &["pause", "a b"],
            &["resume"],
            &["signal", "a/b", "TERM"],
            &["tree", "a", "b"],
            &["tree", "12"],
            &["config", "x"],
            &["config", "--group"],
            &["reload", "now"],
            &["events", "web"],
            &["events", "--subject", "a/b"],
            &["events", "--subject"],
            &["events", "--kind", "nope"],
            &["events", "--max", "0"],
            &["events", "--max", "65537"],
            &["events", "--follow=yes"],
            &["events", "--grace", "1"],
            &["poweroff", "now"],
            &["reexec", "archon"],
            &["reexec", "/a", "/b"],
            &["reboot", "-f"],
            &["halt", "--grace", "1"],
        ];
        for args in bad {
            assert!(parse_str(args).is_err(), "{args:?}");
        }
    }
}
