//! archon's command line.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use archon_proto::limits::{
    DEFAULT_HISTORY, DEFAULT_MAX_RUNS, DEFAULT_RUN_QUEUE, DEFAULT_STOP_GRACE_MS, MAX_HISTORY,
    MAX_STOP_GRACE_MS,
};

use crate::log::Level;

/// The usage text of `--help`.
pub const USAGE: &str = "\
usage: archon [--config FILE | --demo] [--socket PATH] [--max-runs N] [--run-queue N]
              [--stop-grace MS] [--history N] [--log-level LEVEL] [--echo-logs]
              [--early-mounts] [--forward-to-group] [-- CMD [ARG...]]
       archon --check FILE | --version | --help

  -c, --config FILE     the services and tasks to run (a Lua file, see archon.lua(5); default
                        /etc/archon/archon.lua for root, if it exists; none otherwise)
      --demo            run the demonstration configuration built into archon (the file
                        examples/demo.lua of its source: a task, a dependency chain, two
                        readiness protocols, a crashing service, three workers)
      --check FILE      load FILE, print what it declares or the first error, and exit
  -s, --socket PATH     listen on PATH (default: $ARCHON_SOCKET, else /run/archon/archon.sock
                        for root, else $XDG_RUNTIME_DIR/archon.sock)
      --max-runs N      at most N Run commands at once (default 64)
      --run-queue N     at most N Run requests waiting for a slot (default 256)
      --stop-grace MS   milliseconds between SIGTERM and SIGKILL when stopping (default 7000)
      --history N       keep the last N events for History, 0 to 65536 (default 1024)
      --log-level LEVEL error, warn, info (default; warn with a CMD) or debug
      --echo-logs       also write every line a service writes to archon's stderr, as
                        `<time> <service>[<stream>]: <text>` (for `docker logs`)
      --early-mounts    mount what is missing of /proc, /sys, /dev, /run and /sys/fs/cgroup
                        before anything else, as the machine's init does (see archon(8))
      --forward-to-group
                        forward signals to CMD's process group, not to CMD alone
  -- CMD [ARG...]       run CMD as the main process (a container's entrypoint): archon forwards
                        signals to it, and exits with its exit code once it has ended and
                        everything else has stopped (see archon(8))
  -V, --version         print the version and exit
  -h, --help            print this help and exit
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Run archon with these options.
    Run(Options),
    /// Print the help.
    Help,
    /// Print the version.
    Version,
    /// Load a configuration file, say what is in it, and exit.
    Check(PathBuf),
}

/// archon's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--demo`: the built-in demonstration configuration instead of a file.
    pub demo: bool,
    /// `--socket`.
    pub socket: Option<OsString>,
    /// `--max-runs`.
    pub max_runs: usize,
    /// `--run-queue`.
    pub run_queue: usize,
    /// `--stop-grace`.
    pub stop_grace: Duration,
    /// `--history`: events kept for `History`.
    pub history: usize,
    /// `--log-level`.
    pub log_level: Level,
    /// `-- CMD ARGS`: the main command of an entrypoint.
    pub command: Option<Vec<OsString>>,
    /// `--forward-to-group`.
    pub forward_to_group: bool,
    /// `--early-mounts`.
    pub early_mounts: bool,
    /// `--echo-logs`: captured service lines go to archon's stderr too.
    pub echo_logs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: None,
            demo: false,
            socket: None,
            max_runs: DEFAULT_MAX_RUNS,
            run_queue: DEFAULT_RUN_QUEUE,
            stop_grace: Duration::from_millis(DEFAULT_STOP_GRACE_MS),
            history: DEFAULT_HISTORY,
            log_level: Level::Info,
            command: None,
            forward_to_group: false,
            early_mounts: false,
            echo_logs: false,
        }
    }
}

/// A command line archon cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn number(opt: &str, value: &OsString, min: u64, max: u64) -> Result<u64, UsageError> {
    value
        .to_str()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            UsageError(format!(
                "{opt}: expected a number from {min} to {max}, got {value:?}"
            ))
        })
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, UsageError> {
    let mut opts = Options::default();
    let mut log_level = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(OsString::from(v))),
            _ => (text.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| UsageError(format!("{name} needs a value")))
        };
        match name.as_str() {
            "--" => {
                let command: Vec<OsString> = args.by_ref().collect();
                if command.is_empty() {
                    return Err(UsageError("-- needs a command after it".to_string()));
                }
                opts.command = Some(command);
            }
            "--forward-to-group" | "--early-mounts" | "--echo-logs" | "--demo"
                if inline.is_some() =>
            {
                return Err(UsageError(format!("{name} takes no value")));
            }
            "--forward-to-group" => opts.forward_to_group = true,
            "--early-mounts" => opts.early_mounts = true,
            "--echo-logs" => opts.echo_logs = true,
            "--demo" => opts.demo = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "-s" | "--socket" => opts.socket = Some(value(&name)?),
            "-c" | "--config" => opts.config = Some(PathBuf::from(value(&name)?)),
            "--check" => return Ok(Parsed::Check(PathBuf::from(value(&name)?))),
            "--max-runs" => opts.max_runs = number(&name, &value(&name)?, 1, 1 << 20)? as usize,
            "--run-queue" => opts.run_queue = number(&name, &value(&name)?, 0, 1 << 20)? as usize,
            "--stop-grace" => {
                opts.stop_grace =
                    Duration::from_millis(number(&name, &value(&name)?, 0, MAX_STOP_GRACE_MS)?)
            }
            "--history" => {
                opts.history = number(&name, &value(&name)?, 0, MAX_HISTORY as u64)? as usize
            }
            "--log-level" => {
                let v = value(&name)?;
                log_level = Some(v.to_str().and_then(Level::parse).ok_or_else(|| {
                    UsageError(format!(
                        "--log-level: expected error, warn, info or debug, got {v:?}"
                    ))
                })?);
            }
            _ => return Err(UsageError(format!("unknown argument {text:?}"))),
        }
    }
    if opts.demo && opts.config.is_some() {
        return Err(UsageError(
            "--demo and --config: one configuration or the other".to_string(),
        ));
    }
    if opts.forward_to_group && opts.command.is_none() {
        return Err(UsageError(
            "--forward-to-group needs a command (-- CMD)".to_string(),
        ));
    }
    // An entrypoint's output is its command's: archon's own lines are only warnings and errors
    // unless asked for, as tini's are.
    opts.log_level = log_level.unwrap_or(if opts.command.is_some() {
        Level::Warn
    } else {
        Level::Info
    });
    Ok(Parsed::Run(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn options() {
        assert_eq!(p(&[]), Ok(Parsed::Run(Options::default())));
        let want = Options {
            config: Some("/etc/x.lua".into()),
            socket: Some("/tmp/a.sock".into()),
            max_runs: 2,
            run_queue: 0,
            stop_grace: Duration::from_millis(250),
            history: 0,
            log_level: Level::Debug,
            early_mounts: true,
            ..Options::default()
        };
        assert_eq!(
            p(&[
                "--config",
                "/etc/x.lua",
                "-s",
                "/tmp/a.sock",
                "--max-runs=2",
                "--run-queue",
                "0",
                "--stop-grace",
                "250",
                "--history=0",
                "--log-level",
                "debug",
                "--early-mounts"
            ]),
            Ok(Parsed::Run(want))
        );
        assert_eq!(p(&["--help"]), Ok(Parsed::Help));
        assert_eq!(p(&["-V"]), Ok(Parsed::Version));
        assert_eq!(p(&["--check", "a.lua"]), Ok(Parsed::Check("a.lua".into())));
        let demo = Options {
            demo: true,
            ..Options::default()
        };
        assert_eq!(p(&["--demo"]), Ok(Parsed::Run(demo)));
    }

    #[test]
    fn a_command_after_the_double_dash() {
        let Ok(Parsed::Run(opts)) = p(&["-s", "/tmp/a.sock", "--forward-to-group", "--", "sh"])
        else {
            unreachable!("refused")
        };
        assert_eq!(opts.command, Some(vec![OsString::from("sh")]));
        assert!(opts.forward_to_group);
        assert_eq!(opts.socket, Some("/tmp/a.sock".into()));
        assert_eq!(
            opts.log_level,
            Level::Warn,
            "an entrypoint is quiet by default"
        );
        // Everything after it is the command's, options included.
        let Ok(Parsed::Run(opts)) = p(&["--log-level=info", "--", "prog", "--help", "--", "-x"])
        else {
            unreachable!("refused")
        };
        let want: Vec<OsString> = ["prog", "--help", "--", "-x"].map(OsString::from).into();
        assert_eq!(opts.command, Some(want));
        assert_eq!(opts.log_level, Level::Info);
        assert!(!opts.forward_to_group);
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &["--max-runs", "0"][..],
            &["--max-runs"],
            &["--stop-grace", "-1"],
            &["--log-level", "loud"],
            &["--history", "65537"],
            &["--history", "-1"],
            &["--config"],
            &["extra"],
            &["--"],
            &["--forward-to-group"],
            &["--forward-to-group", "--config", "x.lua"],
            &["--early-mounts=yes"],
            &["--forward-to-group=1", "--", "sh"],
            &["--demo", "--config", "x.lua"],
            &["--demo=1"],
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
