//! The archon under test: started on a socket in a temp dir, stopped (and its children with it)
//! when the bench is done, even when the bench fails half-way.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::conn::Conn;

/// How long archon may take to start listening (valgrind makes it slow).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long archon may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two checks while waiting for archon to start or to exit.
const POLL_PAUSE: Duration = Duration::from_millis(5);

/// A temp dir, removed with what it holds when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty dir `archon-bench.<pid>` in the system's temp dir.
    pub fn new() -> Result<TempDir, String> {
        TempDir::new_in(&std::env::temp_dir())
    }

    /// A new, empty dir `archon-bench.<pid>` in `base`.
    pub fn new_in(base: &Path) -> Result<TempDir, String> {
        let path = base.join(format!("archon-bench.{}", std::process::id()));
        // A dir left by an earlier run that had the same pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    /// The dir's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running archon.
pub struct Archon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Archon {
    /// Starts `wrapper` (a tool such as valgrind with its options, or nothing) running `archon`
    /// on `<dir>/<name>.sock`, its log in `<dir>/<name>.log`, and waits until it answers `Ping`.
    pub fn start(
        archon: &Path,
        wrapper: &[OsString],
        dir: &Path,
        name: &str,
    ) -> Result<Archon, String> {
        Archon::start_wrapped(archon, wrapper, &[], dir, name)
    }

    /// Starts `archon` with `args` (a `--config`) on `<dir>/<name>.sock`, as [`Archon::start`].
    pub fn start_with(
        archon: &Path,
        args: &[OsString],
        dir: &Path,
        name: &str,
    ) -> Result<Archon, String> {
        Archon::start_wrapped(archon, &[], args, dir, name)
    }

    fn start_wrapped(
        archon: &Path,
        wrapper: &[OsString],
        args: &[OsString],
        dir: &Path,
        name: &str,
    ) -> Result<Archon, String> {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = match wrapper.split_first() {
            Some((tool, options)) => {
                let mut cmd = Command::new(tool);
                cmd.args(options).arg(archon);
                cmd
            }
            None => Command::new(archon),
        };
        cmd.args(args)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", archon.display()))?;
        let mut archon = Archon { child, socket, log };
        archon.wait_ready()?;
        Ok(archon)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "archon exited at start ({status}){}",
                    self.log_tail()
                ));
            }
            if let Ok(mut conn) = Conn::connect(&self.socket) {
                return conn.expect(b"Ping\n", b"Pong");
            }
            if Instant::now() > deadline {
                return Err(format!("archon did not start listening{}", self.log_tail()));
            }
            std::thread::sleep(POLL_PAUSE);
        }
    }

    /// The last lines of archon's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log:\n  {tail}")
        }
    }

    /// archon's pid (valgrind's, which runs archon in the same process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new connection.
    pub fn connect(&self) -> Result<Conn, String> {
        Conn::connect(&self.socket).map_err(|e| format!("connect {}: {e}", self.socket.display()))
    }

    /// archon's resident memory, in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("{path}: no VmRSS"))
    }

    /// Sends `signal` to archon.
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid()) {
            // SAFETY: kill takes plain integers; the pid is our child's, not yet reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Stops archon with SIGTERM (it stops its children first), SIGKILL if it takes too long.
    pub fn stop(mut self) -> Result<(), String> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<(), String> {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!("archon exited with {status}{}", self.log_tail()));
                }
                Ok(None) => std::thread::sleep(POLL_PAUSE),
                Err(e) => return Err(format!("wait for archon: {e}")),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("archon did not stop on SIGTERM: killed".to_string())
    }
}

impl Drop for Archon {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}
