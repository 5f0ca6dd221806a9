//! The five supervisors, each configured the way its documentation shows for N services of
//! `sleep`: the files each one reads, and its command line.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::procs::{SLEEP, SLEEP_BASE};

/// A supervisor under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Archon,
    Runit,
    S6,
    Daemontools,
    Supervisord,
}

impl Kind {
    /// All of them, archon first (the others' figures are given as ratios to archon's).
    pub const ALL: [Kind; 5] = [
        Kind::Archon,
        Kind::Runit,
        Kind::S6,
        Kind::Daemontools,
        Kind::Supervisord,
    ];

    /// Its name on the command line (`--only`) and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Archon => "archon",
            Kind::Runit => "runit",
            Kind::S6 => "s6",
            Kind::Daemontools => "daemontools",
            Kind::Supervisord => "supervisord",
        }
    }

    /// Its name in the table: the program that is started.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Archon => "archon",
            Kind::Runit => "runit (runsvdir)",
            Kind::S6 => "s6 (s6-svscan)",
            Kind::Daemontools => "daemontools (svscan)",
            Kind::Supervisord => "supervisord",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The Debian package it comes from (for its version), `None` for archon.
    pub fn package(self) -> Option<&'static str> {
        match self {
            Kind::Archon => None,
            Kind::Runit => Some("runit"),
            Kind::S6 => Some("s6"),
            Kind::Daemontools => Some("daemontools"),
            Kind::Supervisord => Some("supervisor"),
        }
    }
}

/// How archon is given its services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchonMode {
    /// `archon --config FILE`: a Lua file declares the N services.
    Config,
    /// This archon has no `--config` yet: the bench sends N `StartDaemon` requests right after
    /// it listens (no restarts: a StartDaemon'ed process is not restarted).
    StartDaemon,
}

/// How to start one supervisor on its services.
pub struct Launch {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// archon's socket, to send StartDaemon requests to (`ArchonMode::StartDaemon` only).
    pub socket: Option<PathBuf>,
}

/// The argument of service `i`'s `sleep`.
pub fn sleep_arg(i: u32) -> u32 {
    SLEEP_BASE + i
}

/// Writes what `kind` reads for `n` services into `dir` (new, empty), and says how to start it.
pub fn prepare(
    kind: Kind,
    n: u32,
    dir: &Path,
    archon: &Path,
    mode: ArchonMode,
) -> Result<Launch, String> {
    let path = |p: &Path| p.display().to_string();
    match kind {
        Kind::Archon => {
            let socket = dir.join("archon.sock");
            let mut argv = vec![path(archon), "--socket".to_string(), path(&socket)];
            if mode == ArchonMode::Config {
                let config = dir.join("services.lua");
                write(&config, &archon_config(n), false)?;
                argv.extend(["--config".to_string(), path(&config)]);
            }
            Ok(Launch {
                argv,
                cwd: dir.to_path_buf(),
                socket: (mode == ArchonMode::StartDaemon).then_some(socket),
            })
        }
        Kind::Runit | Kind::S6 | Kind::Daemontools => {
            let scan = dir.join("service");
            mkdir(&scan)?;
            for i in 0..n {
                let service = scan.join(format!("s{i}"));
                mkdir(&service)?;
                let run = format!("#!/bin/sh\nexec {SLEEP} {}\n", sleep_arg(i));
                write(&service.join("run"), &run, true)?;
            }
            backdate(&scan)?;
            let argv = match kind {
                Kind::Runit => vec!["runsvdir".to_string(), path(&scan)],
                // s6-svscan refuses more than `-c` services (1000 by default): room for all.
                Kind::S6 => vec![
                    "s6-svscan".to_string(),
                    "-c".to_string(),
                    (n.max(1000) + 10).to_string(),
                    path(&scan),
                ],
                _ => vec!["svscan".to_string(), path(&scan)],
            };
            Ok(Launch {
                argv,
                cwd: scan,
                socket: None,
            })
        }
        Kind::Supervisord => {
            let config = dir.join("supervisord.conf");
            write(&config, &supervisord_config(n, dir), false)?;
            Ok(Launch {
                argv: vec![
                    "supervisord".to_string(),
                    "--nodaemon".to_string(),
                    "--configuration".to_string(),
                    path(&config),
                ],
                cwd: dir.to_path_buf(),
                socket: None,
            })
        }
    }
}

/// The Lua file archon reads: `n` services, one line each (as a user with a generated list
/// would write them).
fn archon_config(n: u32) -> String {
    let mut text = String::with_capacity(n as usize * 64);
    for i in 0..n {
        let _ = writeln!(
            text,
            "service \"s{i}\" {{ argv = {{\"{SLEEP}\", \"{}\"}} }}",
            sleep_arg(i)
        );
    }
    text
}

/// supervisord's file: no control socket, logs in `dir`, file descriptors for three pipes per
/// child (it opens stdin, stdout and stderr pipes for each), every program restarted always.
fn supervisord_config(n: u32, dir: &Path) -> String {
    let dir = dir.display();
    let mut text = format!(
        "[supervisord]\nnodaemon=true\nlogfile={dir}/supervisord.log\npidfile={dir}/supervisord.pid\n\
         childlogdir={dir}\nminfds={}\nminprocs={}\n\n",
        3 * n + 1024,
        n + 200
    );
    for i in 0..n {
        let _ = write!(
            text,
            "[program:s{i}]\ncommand={SLEEP} {}\nautorestart=true\n\
             stdout_logfile=NONE\nstderr_logfile=NONE\n\n",
            sleep_arg(i)
        );
    }
    text
}

/// How far back the scan directory's modification time is set.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Dates `dir` an hour back, as a service directory written before the boot is: runsvdir
/// sleeps a second before it scans a directory modified within the current second (its
/// modification time has a resolution of one second: a change in the same second could be
/// missed), which is not what a boot sees.
fn backdate(dir: &Path) -> Result<(), String> {
    let then = SystemTime::now()
        .checked_sub(BACKDATE)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    std::fs::File::open(dir)
        .and_then(|f| f.set_modified(then))
        .map_err(|e| format!("set the time of {}: {e}", dir.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    std::fs::create_dir(path).map_err(|e| format!("mkdir {}: {e}", path.display()))
}

fn write(path: &Path, text: &str, executable: bool) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    if executable {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archon_reads_one_service_per_line() {
        let text = archon_config(2);
        assert_eq!(
            text,
            "service \"s0\" { argv = {\"/bin/sleep\", \"86400000\"} }\n\
             service \"s1\" { argv = {\"/bin/sleep\", \"86400001\"} }\n"
        );
    }

    #[test]
    fn supervisord_has_one_program_per_service() {
        let text = supervisord_config(3, Path::new("/tmp/x"));
        assert_eq!(text.matches("[program:").count(), 3);
        assert!(text.contains("command=/bin/sleep 86400002\n"));
        assert!(text.contains("logfile=/tmp/x/supervisord.log\n"));
    }

    #[test]
    fn names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(Kind::from_name("systemd"), None);
    }
}
