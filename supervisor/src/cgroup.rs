//! archon's cgroup v2 subtree: `<archon's own cgroup>/archon.<pid>/<name>.svc`, one cgroup per
//! service, so that stopping a service reaches every process it started, even one that left its
//! process group with setsid.
//!
//! [`Cgroups::discover`] finds the cgroup2 mount in `/proc/self/mountinfo` (on hybrid systems
//! `/sys/fs/cgroup/unified`, on unified ones `/sys/fs/cgroup`) and archon's own cgroup in the
//! `0::` line of `/proc/self/cgroup`, and creates archon's directory there; when any of that is
//! impossible it says why, and archon stops process groups only. A service's cgroup
//! ([`ServiceCgroup`]) is a directory: children are started in it with `CLONE_INTO_CGROUP`
//! ([`ServiceCgroup::open_dir`] gives the fd the spawner needs), it is emptied with `cgroup.kill`
//! (Linux 5.14; before that, SIGKILL to every process listed, the cgroup frozen meanwhile),
//! paused with `cgroup.freeze`, and watched through `cgroup.events`.
//!
//! No controller is enabled anywhere: archon only groups processes, which every cgroup2
//! hierarchy allows, and so avoids the "no internal processes" rule for the cgroup it lives in.
//! A service cgroup holds no fd of its own, so that 10000 services do not cost 20000 fds beside
//! their pidfds: one [`EventsWatch`] (inotify) covers every `cgroup.events`, or
//! [`ServiceCgroup::open_events`] gives an fd to poll for `EPOLLPRI`.
//!
//! The parsers of the kernel's text are pure functions, tested on fixed text.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
#[cfg(test)]
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Suffix of a service's cgroup directory (`web.svc`), which keeps a service name from ever
/// colliding with a cgroup interface file (`cgroup.procs`, `cpu.stat`).
const SERVICE_SUFFIX: &str = ".svc";

/// Prefix of an archon's directory (`archon.<pid>`).
const ARCHON_PREFIX: &str = "archon.";

/// Rounds of "list `cgroup.procs`, SIGKILL each" when `cgroup.kill` is missing: the cgroup is
/// frozen meanwhile, so nothing forks, and a second round only catches what was still exiting.
const KILL_ROUNDS: usize = 8;

/// Bytes read at once from `cgroup.events`, `cpu.stat` (a few lines each).
const SMALL_FILE: usize = 512;

/// A cgroup operation that failed: what, on which path, and the system's error.
#[derive(Debug)]
pub struct Error {
    /// What archon tried: "create", "open", "read", "write", "remove".
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The system's error.
    pub source: io::Error,
}

impl Error {
    fn new(op: &'static str, path: &Path, source: io::Error) -> Error {
        Error {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno, when the error came from the system (`EBUSY`: a cgroup still populated).
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {} {}: ", self.op, self.path.display())?;
        match self.source.raw_os_error() {
            Some(errno) => f.write_str(nix::errno::Errno::from_raw(errno).desc()),
            None => write!(f, "{}", self.source),
        }
    }
}

impl std::error::Error for Error {}

/// archon's own directory in the cgroup2 hierarchy, under which every service cgroup lives.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
    /// The same directory as `/proc/PID/cgroup` names it (`/user.slice/archon.812`), to tell
    /// which service a process is in; `None` when unknown (a tree made by the tests).
    rel: Option<String>,
}

impl Cgroups {
    /// Finds the cgroup2 hierarchy and archon's cgroup in it, removes the empty directories of
    /// archons that have died (`archon.<pid>` of a pid that no longer exists), and creates
    /// `archon.<pid>` for this one. Err: why archon cannot use cgroups, in words that follow
    /// "no cgroups: ".
    pub fn discover() -> Result<Cgroups, String> {
        let own = own_dir()?;
        remove_stale(&own);
        let leaf = format!("{ARCHON_PREFIX}{}", std::process::id());
        let mut cgroups = Cgroups::create_in(&own, &leaf)?;
        cgroups.rel = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| {
                parse_own_cgroup(&text).map(|own| format!("{}/{leaf}", own.trim_end_matches('/')))
            });
        Ok(cgroups)
    }

    /// The service (by name) whose cgroup process `pid` is in, or in a cgroup below; `None`
    /// when it is in none of archon's, has ended, or archon cannot tell.
    pub fn service_of(&self, pid: i32) -> Option<String> {
        let rel = self.rel.as_deref()?;
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        service_in(rel, &text).map(str::to_string)
    }

    /// Creates (or takes over) `parent/leaf` as archon's directory.
    pub fn create_in(parent: &Path, leaf: &str) -> Result<Cgroups, String> {
        let root = parent.join(leaf);
        match fs::create_dir(&root) {
            Ok(()) => {}
            // A directory of this pid is this archon's: an earlier run of archon as PID 1 in a
            // container whose cgroup outlived it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::new("create", &root, e).to_string()),
        }
        // A directory where processes cannot be moved is of no use: check on the fresh one.
        OpenOptions::new()
            .write(true)
            .open(root.join("cgroup.procs"))
            .map_err(|e| Error::new("open", &root.join("cgroup.procs"), e).to_string())?;
        Ok(Cgroups { root, rel: None })
    }

    /// archon's directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Creates the cgroup of service `name` (or takes over one left by an earlier instance of
    /// the service whose removal failed: it may still hold processes, which the caller kills).
    pub fn create(&self, name: &str) -> Result<ServiceCgroup, Error> {
        let path = self.root.join(format!("{name}{SERVICE_SUFFIX}"));
        if !is_plain_name(name) {
            return Err(Error::new(
                "create",
                &path,
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        }
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::new("create", &path, e)),
        }
        Ok(ServiceCgroup { path: path.into() })
    }

    #[cfg(test)] // the loop does not watch cgroup.events; the tests wait on it
    /// The cgroup of service `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<ServiceCgroup> {
        let path = self.root.join(format!("{name}{SERVICE_SUFFIX}"));
        (is_plain_name(name) && path.is_dir()).then_some(ServiceCgroup { path: path.into() })
    }

    /// Removes every service cgroup and archon's directory, at exit. A cgroup that still holds
    /// processes stays, and so does archon's directory; the first such failure is returned.
    pub fn remove_tree(&self) -> Result<(), Error> {
        let entries = fs::read_dir(&self.root).map_err(|e| Error::new("read", &self.root, e))?;
        let mut first = None;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = entry.path();
                if let Err(e) = fs::remove_dir(&path) {
                    first.get_or_insert(Error::new("remove", &path, e));
                }
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        fs::remove_dir(&self.root).map_err(|e| Error::new("remove", &self.root, e))
    }
}

/// A name usable as one directory: no slash, NUL or newline, not `.` or `..`, short enough.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() + SERVICE_SUFFIX.len() <= 255
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| matches!(b, b'/' | b'\0' | b'\n'))
}

/// One service's cgroup: a directory under archon's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCgroup {
    /// Boxed to its length: one is kept for each of thousands of services.
    path: Box<Path>,
}

/// What `cgroup.events` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Events {
    /// Some process lives in the cgroup or below it.
    pub populated: bool,
    /// The cgroup is frozen (the freeze asked for has completed).
    pub frozen: bool,
}

/// How [`ServiceCgroup::kill`] emptied the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// With `cgroup.kill`: every process, at once, including any forked meanwhile.
    CgroupKill,
    /// With SIGKILL to this many processes listed in `cgroup.procs` (kernels before 5.14).
    Signals(usize),
}

impl ServiceCgroup {
    /// Its directory.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An `O_PATH` directory fd, for [`crate::spawn::SpawnOptions::cgroup`] (`CLONE_INTO_CGROUP`).
    pub fn open_dir(&self) -> Result<OwnedFd, Error> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&self.path)
            .map(OwnedFd::from)
            .map_err(|e| Error::new("open", &self.path, e))
    }

    #[cfg(test)] // the loop does not watch cgroup.events; the tests wait on it
    /// `cgroup.events`, open for reading, to register for `EPOLLPRI` (`mio::Interest::PRIORITY`):
    /// the kernel raises it when a value changes. [`read_events`] reads it (and so re-arms it).
    pub fn open_events(&self) -> Result<File, Error> {
        let path = self.path.join("cgroup.events");
        File::open(&path).map_err(|e| Error::new("open", &path, e))
    }

    /// What `cgroup.events` says now.
    pub fn events(&self) -> Result<Events, Error> {
        let path = self.path.join("cgroup.events");
        let text = read_small(&path)?;
        Ok(parse_events(&text))
    }

    /// Whether some process lives in the cgroup.
    pub fn populated(&self) -> Result<bool, Error> {
        self.events().map(|e| e.populated)
    }

    /// The processes in the cgroup (not in cgroups below it, of which archon makes none).
    pub fn procs(&self) -> Result<Vec<i32>, Error> {
        let path = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&path).map_err(|e| Error::new("read", &path, e))?;
        Ok(parse_procs(&text))
    }

    /// The CPU time used by every process that ever ran in the cgroup, in microseconds.
    pub fn cpu_usage_usec(&self) -> Result<u64, Error> {
        let path = self.path.join("cpu.stat");
        let text = read_small(&path)?;
        parse_usage_usec(&text).ok_or_else(|| {
            Error::new(
                "read",
                &path,
                io::Error::new(io::ErrorKind::InvalidData, "no usage_usec"),
            )
        })
    }

    /// Kills every process in the cgroup. They are gone when `cgroup.events` says populated 0.
    pub fn kill(&self) -> Result<Killed, Error> {
        let path = self.path.join("cgroup.kill");
        match write_file(&path, b"1") {
            Ok(()) => Ok(Killed::CgroupKill),
            Err(e) if e.errno() == Some(libc::ENOENT) => self.kill_by_signals(),
            Err(e) => Err(e),
        }
    }

    /// The fallback of [`ServiceCgroup::kill`]: freeze (Linux 5.2+; a frozen process still dies
    /// of SIGKILL, and forks no more), SIGKILL every listed process, a few rounds, thaw.
    fn kill_by_signals(&self) -> Result<Killed, Error> {
        let frozen = self.freeze(true).is_ok();
        let mut sent = 0;
        let mut result = Ok(());
        for _ in 0..KILL_ROUNDS {
            match self.procs() {
                Ok(pids) if pids.is_empty() => break,
                Ok(pids) => {
                    for pid in pids {
                        // SAFETY: kill has no memory effects; a pid that has exited is ESRCH.
                        if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                            sent += 1;
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if frozen {
            // Killed processes finish dying only once thawed on older kernels.
            self.freeze(false)?;
        }
        result.map(|()| Killed::Signals(sent))
    }

    /// Freezes (pause) or thaws (resume) every process in the cgroup. The freeze has completed
    /// when `cgroup.events` says frozen 1.
    pub fn freeze(&self, frozen: bool) -> Result<(), Error> {
        let path = self.path.join("cgroup.freeze");
        write_file(&path, if frozen { b"1" } else { b"0" })
    }

    /// Removes the cgroup; `EBUSY` (see [`Error::errno`]) while processes live in it.
    pub fn remove(&self) -> Result<(), Error> {
        fs::remove_dir(&self.path).map_err(|e| Error::new("remove", &self.path, e))
    }
}

/// Reads a cgroup file of a few lines.
fn read_small(path: &Path) -> Result<String, Error> {
    let file = File::open(path).map_err(|e| Error::new("open", path, e))?;
    read_at_start(&file).map_err(|e| Error::new("read", path, e))
}

/// Reads a small file from its start (`pread`, which also re-arms `cgroup.events`' `EPOLLPRI`).
fn read_at_start(file: &File) -> io::Result<String> {
    let mut buf = [0u8; SMALL_FILE];
    let n = file.read_at(&mut buf, 0)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(test)] // the loop does not watch cgroup.events; the tests wait on it
/// Reads an fd from [`ServiceCgroup::open_events`].
pub fn read_events(file: &File) -> io::Result<Events> {
    read_at_start(file).map(|t| parse_events(&t))
}

/// Writes a cgroup control file in one write (the kernel takes each write as one value).
fn write_file(path: &Path, value: &[u8]) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::new("open", path, e))?;
    file.write_all(value)
        .map_err(|e| Error::new("write", path, e))
}

#[cfg(test)] // the loop does not watch cgroup.events; the tests wait on it
/// Watches the `cgroup.events` of many cgroups with one inotify fd: the kernel reports a change
/// of a value there as a modification. Register [`EventsWatch::fd`] with the poll (readable),
/// then [`EventsWatch::read`] says which watches fired.
#[derive(Debug)]
pub struct EventsWatch {
    fd: OwnedFd,
}

#[cfg(test)] // the loop does not watch cgroup.events; the tests wait on it
/// The watch descriptor [`EventsWatch::read`] reports when the kernel's queue overflowed: every
/// cgroup may have changed.
pub const WATCH_OVERFLOW: i32 = -1;

#[cfg(test)] // the loop does not watch cgroup.events; the tests wait on it
impl EventsWatch {
    /// An inotify instance (close-on-exec, non-blocking).
    pub fn new() -> io::Result<EventsWatch> {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        Ok(EventsWatch {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Watches `cg`'s `cgroup.events`; returns the watch descriptor [`EventsWatch::read`] will
    /// report. The watch ends by itself when the cgroup is removed.
    pub fn add(&self, cg: &ServiceCgroup) -> Result<i32, Error> {
        let path = cg.path.join("cgroup.events");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::new("open", &path, io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a valid C string; inotify_add_watch returns a descriptor or -1.
        let wd =
            unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(Error::new("open", &path, io::Error::last_os_error()));
        }
        Ok(wd)
    }

    /// Drains the queue: appends to `fired` the descriptor of each watch whose file changed
    /// (several times when it changed several times), or [`WATCH_OVERFLOW`].
    pub fn read(&self, fired: &mut Vec<i32>) -> io::Result<()> {
        // Room for 256 events of 16 bytes (ours carry no name); the parser reads it unaligned.
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into our own buffer of the size given.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            parse_inotify(&buf[..n as usize], fired);
        }
    }
}

#[cfg(test)] // the loop does not watch cgroup.events; the tests wait on it
/// The watch descriptors of the modification events in a buffer of `struct inotify_event`.
fn parse_inotify(mut bytes: &[u8], fired: &mut Vec<i32>) {
    let word = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(
            b.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    while let (Some(wd), Some(mask), Some(len)) = (word(bytes, 0), word(bytes, 1), word(bytes, 3)) {
        if mask & libc::IN_Q_OVERFLOW != 0 {
            fired.push(WATCH_OVERFLOW);
        } else if mask & libc::IN_MODIFY != 0 {
            fired.push(wd as i32);
        }
        let Some(rest) = bytes.get(16 + len as usize..) else {
            break;
        };
        bytes = rest;
    }
}

/// The directory of archon's own cgroup.
pub fn own_dir() -> Result<PathBuf, String> {
    let cgroup = fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = parse_own_cgroup(&cgroup)
        .ok_or("no cgroup2 hierarchy (no 0:: line in /proc/self/cgroup)")?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    cgroup2_dir(&mountinfo, own)
}

/// Removes the directories of archons that died (`archon.<pid>` whose pid no longer exists)
/// when they are empty: their service cgroups first, then theirs. A cgroup that still holds
/// processes (a daemon that outlived its archon) stays. Returns how many archon directories went.
pub fn remove_stale(parent: &Path) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(archon_pid) else {
            continue;
        };
        if pid_exists(pid) {
            continue;
        }
        let dir = entry.path();
        if let Ok(services) = fs::read_dir(&dir) {
            for svc in services.flatten() {
                if svc.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(svc.path()); // EBUSY: still populated, stays
                }
            }
        }
        if fs::remove_dir(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The pid in an archon directory's name (`archon.123`).
fn archon_pid(name: &str) -> Option<i32> {
    let digits = name.strip_prefix(ARCHON_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&p| p > 0)
}

fn pid_exists(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks; EPERM means it exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
}

/// archon's cgroup in the unified hierarchy: the path of the `0::` line of `/proc/self/cgroup`.
pub fn parse_own_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

/// One line of `/proc/self/mountinfo`, the fields archon needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the file system mounted here (field 4).
    pub root: String,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// The file system type (first field after the `-`).
    pub fstype: String,
}

/// Parses a line of `/proc/self/mountinfo`:
/// `id parent major:minor root mount-point options [optional fields...] - type source super-options`.
pub fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    let fstype = fields.skip_while(|&f| f != "-").nth(1)?;
    Some(Mount {
        root: unescape(root),
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype: fstype.to_string(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of cgroup `own` (a `0::` path): under the first cgroup2 mount whose root
/// contains it.
pub fn cgroup2_dir(mountinfo: &str, own: &str) -> Result<PathBuf, String> {
    let mut any = false;
    for m in mountinfo.lines().filter_map(parse_mountinfo_line) {
        if m.fstype != "cgroup2" {
            continue;
        }
        any = true;
        if let Some(rest) = path_under(own, &m.root) {
            return Ok(if rest.is_empty() {
                m.mount_point
            } else {
                m.mount_point.join(rest)
            });
        }
    }
    Err(if any {
        format!("archon's cgroup {own} is outside every cgroup2 mount")
    } else {
        "no cgroup2 file system is mounted".to_string()
    })
}

/// `path` relative to `root` (without a leading slash), when it lies at or under it.
fn path_under<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    let root = root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Parses `cgroup.events` (`populated 1\nfrozen 0\n`).
pub fn parse_events(text: &str) -> Events {
    let mut events = Events::default();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("populated", v)) => events.populated = v.trim() == "1",
            Some(("frozen", v)) => events.frozen = v.trim() == "1",
            _ => {}
        }
    }
    events
}

/// The `usage_usec` of `cpu.stat`.
pub fn parse_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// The service whose cgroup a `/proc/PID/cgroup` text places its process in (or below), given
/// archon's directory as that file names it: `web` for `0::/<rel>/web.svc` and
/// `0::/<rel>/web.svc/worker`.
pub fn service_in<'a>(rel: &str, proc_cgroup: &'a str) -> Option<&'a str> {
    let path = parse_own_cgroup(proc_cgroup)?;
    let below = path_under(path, rel).filter(|r| !r.is_empty())?;
    let first = below.split('/').next()?;
    first.strip_suffix(SERVICE_SUFFIX).filter(|n| !n.is_empty())
}

/// The pids of `cgroup.procs`, one per line.
pub fn parse_procs(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Test support: a throwaway archon directory, and waiting on `cgroup.events`.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Set to make the cgroup tests fail instead of skipping where no writable cgroup2 exists.
    const REQUIRE_ENV: &str = "ARCHON_REQUIRE_CGROUPS";

    /// Rounds of one second each that a wait on `cgroup.events` tolerates: a guard against a
    /// hang, not a limit.
    const GUARD_ROUNDS: usize = 60;

    /// An archon directory named `archon-test.<pid>.<n>` (no archon takes it for a stale one),
    /// emptied and removed when dropped.
    pub(crate) struct TestTree(pub(crate) Cgroups);

    /// A fresh test tree, or `None` (with a note on stderr) where cgroups cannot be used.
    pub(crate) fn tree() -> Result<Option<TestTree>, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let leaf = format!(
            "archon-test.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        match own_dir().and_then(|own| Cgroups::create_in(&own, &leaf)) {
            Ok(c) => Ok(Some(TestTree(c))),
            Err(e) if std::env::var_os(REQUIRE_ENV).is_some() => Err(e),
            Err(e) => {
                eprintln!("skipped: no writable cgroup2 hierarchy: {e}");
                Ok(None)
            }
        }
    }

    impl Drop for TestTree {
        fn drop(&mut self) {
            if let Ok(entries) = fs::read_dir(self.0.path()) {
                for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                    let cg = ServiceCgroup {
                        path: entry.path().into(),
                    };
                    let _ = cg.freeze(false);
                    let _ = cg.kill();
                    let _ = wait_events(&cg, |e| !e.populated);
                }
            }
            let _ = self.0.remove_tree();
        }
    }

    /// Waits until `cgroup.events` satisfies `want`, woken by inotify.
    pub(crate) fn wait_events(
        cg: &ServiceCgroup,
        want: impl Fn(Events) -> bool,
    ) -> Result<Events, String> {
        let watch = EventsWatch::new().map_err(|e| e.to_string())?;
        watch.add(cg).map_err(|e| e.to_string())?;
        let mut fired = Vec::new();
        for _ in 0..GUARD_ROUNDS {
            let events = cg.events().map_err(|e| e.to_string())?;
            if want(events) {
                return Ok(events);
            }
            let mut pfd = libc::pollfd {
                fd: watch.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            watch.read(&mut fired).map_err(|e| e.to_string())?;
        }
        Err(format!("{} never changed as expected", cg.path().display()))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{tree, wait_events};
    use super::*;
    use crate::spawn::{Exec, SpawnOptions, Spawner};
    use archon_proto::{Command, Status};

    const HYBRID_MOUNTINFO: &str = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const HYBRID_CGROUP: &str = "\
4:memory:/process_api/cdfe741a68bf371b155669e64d9dfa05
1:cpu:/
0::/
";

    #[test]
    fn a_process_is_in_the_service_whose_cgroup_holds_it() {
        let rel = "/system.slice/archon.service/archon.812";
        let line = |p: &str| format!("12:pids:/\n0::{p}\n");
        let cases = [
            (
                "/system.slice/archon.service/archon.812/web.svc",
                Some("web"),
            ),
            (
                "/system.slice/archon.service/archon.812/web.svc/worker",
                Some("web"),
            ),
            (
                "/system.slice/archon.service/archon.812/getty@tty1.svc",
                Some("getty@tty1"),
            ),
            ("/system.slice/archon.service/archon.812", None),
            ("/system.slice/archon.service/archon.8120/web.svc", None),
            ("/system.slice/archon.service/archon.813/web.svc", None),
            ("/system.slice/archon.service/archon.812/.svc", None),
            ("/system.slice/archon.service/archon.812/web", None),
            ("/", None),
        ];
        for (path, want) in cases {
            assert_eq!(service_in(rel, &line(path)), want, "{path}");
        }
        assert_eq!(service_in("/archon.1", "0::/archon.1/db.svc\n"), Some("db"));
        assert_eq!(
            service_in("/archon.1", "1:name=systemd:/archon.1/db.svc\n"),
            None
        );
    }

    #[test]
    fn own_cgroup_is_the_unified_line() {
        assert_eq!(parse_own_cgroup(HYBRID_CGROUP), Some("/"));
        assert_eq!(
            parse_own_cgroup("0::/system.slice/archon.service\n"),
            Some("/system.slice/archon.service")
        );
        assert_eq!(parse_own_cgroup("1:name=systemd:/\n2:cpu:/\n"), None);
        // Outside the cgroup namespace's root, the kernel shows a relative path.
        assert!(parse_own_cgroup("0::/../x\n").is_some());
        assert_eq!(parse_own_cgroup("0::\n"), None);
    }

    #[test]
    fn mountinfo_lines() {
        assert_eq!(
            parse_mountinfo_line(
                "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate"
            ),
            Some(Mount {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup/unified".into(),
                fstype: "cgroup2".into(),
            })
        );
        let m = parse_mountinfo_line(r"50 1 0:40 /a\040b /mnt/my\040cg\134x rw - cgroup2 none rw");
        assert_eq!(
            m.map(|m| (m.root, m.mount_point)),
            Some(("/a b".into(), PathBuf::from(r"/mnt/my cg\x")))
        );
        assert_eq!(parse_mountinfo_line("41 31 0:38 / /x rw"), None);
        assert_eq!(parse_mountinfo_line(""), None);
    }

    #[test]
    fn cgroup_directory_from_the_mount_and_own_path() {
        assert_eq!(
            cgroup2_dir(HYBRID_MOUNTINFO, "/"),
            Ok(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_dir(unified, "/system.slice/archon.service"),
            Ok(PathBuf::from("/sys/fs/cgroup/system.slice/archon.service"))
        );
        // A container that sees its own cgroup mounted at /sys/fs/cgroup (no cgroup namespace).
        let bound = "60 50 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_dir(bound, "/docker/abc"),
            Ok(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            cgroup2_dir(bound, "/docker/abc/sub"),
            Ok(PathBuf::from("/sys/fs/cgroup/sub"))
        );
        assert_eq!(
            cgroup2_dir(bound, "/docker/abcdef"),
            Err("archon's cgroup /docker/abcdef is outside every cgroup2 mount".into())
        );
        assert_eq!(
            cgroup2_dir("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n", "/"),
            Err("no cgroup2 file system is mounted".into())
        );
    }

    #[test]
    fn events_cpu_stat_and_procs() {
        assert_eq!(
            parse_events("populated 1\nfrozen 0\n"),
            Events {
                populated: true,
                frozen: false
            }
        );
        assert_eq!(
            parse_events("populated 0\nfrozen 1\n"),
            Events {
                populated: false,
                frozen: true
            }
        );
        assert_eq!(parse_events(""), Events::default());
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnice_usec 0\n";
        assert_eq!(parse_usage_usec(stat), Some(123_456));
        assert_eq!(parse_usage_usec("user_usec 1\n"), None);
        assert_eq!(parse_procs("12\n345\n"), vec![12, 345]);
        assert_eq!(parse_procs(""), Vec::<i32>::new());
    }

    #[test]
    fn names() {
        assert_eq!(archon_pid("archon.123"), Some(123));
        for other in [
            "archon.",
            "archon.12x",
            "archon.0",
            "archon-test.1.2",
            "web.svc",
        ] {
            assert_eq!(archon_pid(other), None, "{other}");
        }
        assert!(is_plain_name("web@1:x"));
        for bad in ["", ".", "..", "a/b", "a\nb"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        assert!(!is_plain_name(&"x".repeat(252)));
    }

    #[test]
    fn inotify_records() {
        let mut bytes = Vec::new();
        for (wd, mask, name) in [
            (3i32, libc::IN_MODIFY, &b""[..]),
            (4, libc::IN_IGNORED, b""),
            (5, libc::IN_MODIFY, b"name\0\0\0\0"),
            (-1, libc::IN_Q_OVERFLOW, b""),
        ] {
            bytes.extend(wd.to_ne_bytes());
            bytes.extend(mask.to_ne_bytes());
            bytes.extend(0u32.to_ne_bytes());
            bytes.extend((name.len() as u32).to_ne_bytes());
            bytes.extend(name);
        }
        let mut fired = Vec::new();
        parse_inotify(&bytes, &mut fired);
        assert_eq!(fired, vec![3, 5, WATCH_OVERFLOW]);
        fired.clear();
        parse_inotify(&bytes[..20], &mut fired); // a record, then a truncated one
        assert_eq!(fired, vec![3]);
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = Error::new(
            "remove",
            Path::new("/sys/fs/cgroup/archon.1/web.svc"),
            io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert_eq!(
            e.to_string(),
            "cannot remove /sys/fs/cgroup/archon.1/web.svc: Device or resource busy"
        );
        assert_eq!(e.errno(), Some(libc::EBUSY));
    }

    /// A child started in `cg` running `script`, once the script has printed its first line
    /// (stdout is a pipe; the script closes it with `exec >/dev/null`).
    fn start_in(
        spawner: &mut Spawner,
        cg: &ServiceCgroup,
        script: &str,
    ) -> Result<crate::spawn::Child, String> {
        let exec = Exec::prepare(&Command::new(["/bin/sh", "-c", script]), &[])
            .map_err(|e| e.to_string())?;
        let dir = cg.open_dir().map_err(|e| e.to_string())?;
        let mut fds = [0; 2];
        // SAFETY: fds is a valid [c_int; 2].
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error().to_string());
        }
        // SAFETY: pipe2 just returned these fds.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let opts = SpawnOptions {
            cgroup: Some(dir.as_raw_fd()),
            ..SpawnOptions::default()
        };
        let child = spawner
            .spawn_with(&exec, [0, w.as_raw_fd(), 2], &opts)
            .map_err(|e| e.to_string())?;
        drop(w);
        let out = fs::read_to_string(format!("/proc/self/fd/{}", r.as_raw_fd()))
            .map_err(|e| e.to_string())?;
        assert_eq!(out, "started\n");
        Ok(child)
    }

    /// Three processes, one of which left the process group and session with setsid.
    const TREE: &str = "setsid sleep 1000 >/dev/null 2>&1 & sleep 1000 >/dev/null 2>&1 & \
                        echo started; exec sleep 1000 >/dev/null";

    fn wait_exit(pidfd: &OwnedFd) -> Result<Status, String> {
        let mut si = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: si is a valid siginfo_t; P_PIDFD = 3.
        if unsafe { libc::waitid(3, pidfd.as_raw_fd() as u32, si.as_mut_ptr(), libc::WEXITED) } != 0
        {
            return Err(io::Error::last_os_error().to_string());
        }
        // SAFETY: filled by waitid, a SIGCHLD siginfo.
        let (code, status) = unsafe { (si.assume_init().si_code, si.assume_init().si_status()) };
        Ok(match code {
            libc::CLD_EXITED => Status::Exited(status as u8),
            _ => Status::Signaled(status),
        })
    }

    #[test]
    fn kill_empties_the_cgroup_even_of_a_setsid_daemon() -> Result<(), String> {
        let Some(t) = tree()? else { return Ok(()) };
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        let cg = t.0.create("web").map_err(|e| e.to_string())?;
        assert_eq!(cg.path(), t.0.path().join("web.svc"));
        let child = start_in(&mut spawner, &cg, TREE)?;
        let procs = cg.procs().map_err(|e| e.to_string())?;
        assert_eq!(procs.len(), 3, "{procs:?}");
        assert!(procs.contains(&child.pid));
        assert!(cg.populated().map_err(|e| e.to_string())?);

        // Both ways of hearing about it: EPOLLPRI on the file, and inotify.
        let events = cg.open_events().map_err(|e| e.to_string())?;
        let mut poll = mio::Poll::new().map_err(|e| e.to_string())?;
        let fd = events.as_raw_fd();
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&fd),
                mio::Token(1),
                mio::Interest::PRIORITY,
            )
            .map_err(|e| e.to_string())?;
        let watch = EventsWatch::new().map_err(|e| e.to_string())?;
        let wd = watch.add(&cg).map_err(|e| e.to_string())?;

        assert_eq!(cg.kill().map_err(|e| e.to_string())?, Killed::CgroupKill);
        let mut got = mio::Events::with_capacity(4);
        let mut heard = false;
        for _ in 0..60 {
            poll.poll(&mut got, Some(std::time::Duration::from_secs(1)))
                .map_err(|e| e.to_string())?;
            heard |= got
                .iter()
                .any(|e| e.token() == mio::Token(1) && e.is_priority());
            if !read_events(&events).map_err(|e| e.to_string())?.populated {
                break;
            }
        }
        assert!(heard, "EPOLLPRI on cgroup.events");
        // Empty before archon has reaped its child: a zombie is not in the cgroup.
        assert!(!cg.populated().map_err(|e| e.to_string())?);
        assert_eq!(cg.procs().map_err(|e| e.to_string())?, Vec::<i32>::new());
        // inotify hears of it a little later: the kernel sends it from a work queue.
        let mut fired = Vec::new();
        for _ in 0..60 {
            watch.read(&mut fired).map_err(|e| e.to_string())?;
            if fired.contains(&wd) {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: watch.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
        }
        assert!(fired.contains(&wd), "inotify: {fired:?}");
        assert_eq!(wait_exit(&child.pidfd)?, Status::Signaled(libc::SIGKILL));
        cg.remove().map_err(|e| e.to_string())?;
        assert!(!cg.path().exists());
        Ok(())
    }

    #[test]
    fn without_cgroup_kill_every_process_gets_sigkill() -> Result<(), String> {
        let Some(t) = tree()? else { return Ok(()) };
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        let cg = t.0.create("old-kernel").map_err(|e| e.to_string())?;
        let child = start_in(&mut spawner, &cg, TREE)?;
        let killed = cg.kill_by_signals().map_err(|e| e.to_string())?;
        assert!(matches!(killed, Killed::Signals(n) if n >= 3), "{killed:?}");
        wait_events(&cg, |e| !e.populated && !e.frozen)?;
        assert_eq!(wait_exit(&child.pidfd)?, Status::Signaled(libc::SIGKILL));
        Ok(())
    }

    #[test]
    fn remove_is_refused_while_processes_live() -> Result<(), String> {
        let Some(t) = tree()? else { return Ok(()) };
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        let cg = t.0.create("busy").map_err(|e| e.to_string())?;
        let child = start_in(
            &mut spawner,
            &cg,
            "echo started; exec sleep 1000 >/dev/null",
        )?;
        let err = cg.remove().err().map(|e| (e.errno(), e.to_string()));
        assert_eq!(
            err,
            Some((
                Some(libc::EBUSY),
                format!(
                    "cannot remove {}: Device or resource busy",
                    cg.path().display()
                )
            ))
        );
        // archon's tree cannot go either, and says which cgroup holds it.
        assert_eq!(
            t.0.remove_tree().err().map(|e| e.path),
            Some(cg.path().to_path_buf())
        );
        cg.kill().map_err(|e| e.to_string())?;
        wait_events(&cg, |e| !e.populated)?;
        wait_exit(&child.pidfd)?;
        cg.remove().map_err(|e| e.to_string())?;
        Ok(())
    }

    #[test]
    fn freeze_pauses_and_thaws() -> Result<(), String> {
        let Some(t) = tree()? else { return Ok(()) };
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        let cg = t.0.create("paused").map_err(|e| e.to_string())?;
        let child = start_in(&mut spawner, &cg, TREE)?;
        cg.freeze(true).map_err(|e| e.to_string())?;
        wait_events(&cg, |e| e.frozen)?;
        cg.freeze(false).map_err(|e| e.to_string())?;
        let e = wait_events(&cg, |e| !e.frozen)?;
        assert!(e.populated);
        cg.kill().map_err(|e| e.to_string())?;
        wait_exit(&child.pidfd)?;
        Ok(())
    }

    #[test]
    fn cpu_time_of_exited_processes_is_counted() -> Result<(), String> {
        let Some(t) = tree()? else { return Ok(()) };
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        let cg = t.0.create("busy-loop").map_err(|e| e.to_string())?;
        assert_eq!(cg.cpu_usage_usec().map_err(|e| e.to_string())?, 0);
        let child = start_in(
            &mut spawner,
            &cg,
            "echo started; exec >/dev/null; i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done",
        )?;
        assert_eq!(wait_exit(&child.pidfd)?, Status::Exited(0));
        let usec = cg.cpu_usage_usec().map_err(|e| e.to_string())?;
        assert!(usec > 0, "{usec}");
        Ok(())
    }

    #[test]
    fn discover_makes_archons_directory_and_remove_tree_clears_it() -> Result<(), String> {
        if tree()?.is_none() {
            return Ok(());
        }
        let cgroups = Cgroups::discover()?;
        let own = own_dir()?;
        assert_eq!(
            cgroups.path(),
            own.join(format!("archon.{}", std::process::id()))
        );
        let a = cgroups.create("a").map_err(|e| e.to_string())?;
        let b = cgroups.create("b").map_err(|e| e.to_string())?;
        assert!(a.path().is_dir() && b.path().is_dir());
        assert_eq!(cgroups.get("a"), Some(a));
        assert_eq!(cgroups.get("c"), None);
        let bad = cgroups.create("../x").err().map(|e| e.errno());
        assert_eq!(bad, Some(Some(libc::EINVAL)));
        cgroups.remove_tree().map_err(|e| e.to_string())?;
        assert!(!cgroups.path().exists());
        Ok(())
    }

    #[test]
    fn stale_directories_of_dead_archons_go_when_empty() -> Result<(), String> {
        if tree()?.is_none() {
            return Ok(());
        }
        let own = own_dir()?;
        let mut spawner = Spawner::new().map_err(|e| e.to_string())?;
        // Two pids that existed and are gone: children started and reaped.
        let mut dead = Vec::new();
        for _ in 0..2 {
            let exec =
                Exec::prepare(&Command::new(["/bin/true"]), &[]).map_err(|e| e.to_string())?;
            let child = spawner.spawn(&exec, [0, 1, 2]).map_err(|e| e.to_string())?;
            wait_exit(&child.pidfd)?;
            dead.push(child.pid);
        }
        let empty = Cgroups::create_in(&own, &format!("archon.{}", dead[0]))?;
        empty.create("x").map_err(|e| e.to_string())?;
        let held = Cgroups::create_in(&own, &format!("archon.{}", dead[1]))?;
        let outlived = held.create("daemon").map_err(|e| e.to_string())?;
        let child = start_in(
            &mut spawner,
            &outlived,
            "echo started; exec sleep 1000 >/dev/null",
        )?;
        // A live pid's directory (archon's test runner's parent) stays.
        // SAFETY: getppid has no memory effects.
        let live = Cgroups::create_in(&own, &format!("archon.{}", unsafe { libc::getppid() }))?;

        remove_stale(&own);
        assert!(!empty.path().exists(), "a dead archon's empty tree goes");
        assert!(outlived.path().exists(), "a populated cgroup stays");
        assert!(live.path().exists(), "a live archon's directory stays");

        outlived.kill().map_err(|e| e.to_string())?;
        wait_events(&outlived, |e| !e.populated)?;
        wait_exit(&child.pidfd)?;
        remove_stale(&own);
        assert!(!held.path().exists());
        live.remove_tree().map_err(|e| e.to_string())?;
        Ok(())
    }
}
