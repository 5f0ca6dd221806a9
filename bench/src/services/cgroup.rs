//! One cgroup v2 per measured supervisor: the supervisor is moved into it before it executes,
//! so that the cgroup holds it and everything it starts, however deep (archon's own per-service
//! cgroups are created below it). The bench lists the processes from it and kills them all with
//! `cgroup.kill` at the end, daemons that escaped their parent included.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::procs;

/// How long the processes of a killed cgroup may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between two looks at a cgroup being emptied.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// A cgroup the bench created, removed (after killing what is in it) when dropped.
pub struct Cgroup {
    path: PathBuf,
    /// Its path relative to the hierarchy's root, as `/proc/PID/cgroup` shows it.
    relative: String,
}

impl Cgroup {
    /// A new cgroup `name` below the bench's own cgroup in the cgroup2 hierarchy.
    pub fn create(name: &str) -> Result<Cgroup, String> {
        let mount = cgroup2_mount()?;
        let own = own_cgroup()?;
        let relative = format!("{}/{name}", own.trim_end_matches('/'));
        let path = mount.join(relative.trim_start_matches('/'));
        // A cgroup left by an earlier run that was killed: empty it first.
        if path.exists() {
            let stale = Cgroup {
                path: path.clone(),
                relative: relative.clone(),
            };
            stale.kill()?;
            drop(stale);
        }
        std::fs::create_dir(&path).map_err(|e| {
            format!(
                "mkdir {}: {e} (the service bench needs a writable cgroup2 hierarchy: run it as root)",
                path.display()
            )
        })?;
        Ok(Cgroup { path, relative })
    }

    /// Its `cgroup.procs`, open for writing: a process that writes `0` to it moves into it.
    pub fn procs_for_writing(&self) -> Result<File, String> {
        let path = self.path.join("cgroup.procs");
        File::options()
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every process in it and in the cgroups below it.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.parse::<u32>().ok()));
            dirs.extend(subdirs(&dir));
        }
        pids
    }

    /// Whether process `pid` is in it or below it.
    pub fn contains(&self, pid: u32) -> bool {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .is_some_and(|p| {
                p == self.relative
                    || p.strip_prefix(&self.relative)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }

    /// Kills every process in it and below, and waits until they are gone.
    pub fn kill(&self) -> Result<(), String> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} processes left in {} after SIGKILL",
                    pids.len(),
                    self.path.display()
                ));
            }
            // cgroup.kill (Linux 5.14) kills the whole subtree at once, so that no supervisor
            // restarts what was just killed; without it, SIGKILL one by one until none is left.
            if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
                for pid in pids {
                    let _ = procs::kill(pid, libc::SIGKILL);
                }
            }
            reap_all();
            std::thread::sleep(POLL_PAUSE);
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.kill();
        // Below first: a cgroup with children cannot be removed.
        let mut order = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            dirs.extend(subdirs(&dir));
            order.push(dir);
        }
        for dir in order.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Where the cgroup2 hierarchy is mounted (`/proc/self/mountinfo`).
fn cgroup2_mount() -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // id parent major:minor root mount-point options [optional fields] - type source options
    text.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| "no cgroup2 hierarchy is mounted".to_string())
}

/// The bench's own cgroup in the cgroup2 hierarchy (`0::` of `/proc/self/cgroup`).
fn own_cgroup() -> Result<String, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| "/proc/self/cgroup has no cgroup2 line".to_string())
}

/// Makes the bench the reaper of the orphans of what it starts, so that killed supervisors'
/// children do not linger as zombies of an init that may not reap them.
pub fn become_subreaper() -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "prctl(PR_SET_CHILD_SUBREAPER): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Reaps every exited child of the bench: the orphans handed over to it as the subreaper, and
/// the killed supervisor itself. Called only while the bench has no other child it waits for
/// (strace is done by then).
pub fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}
