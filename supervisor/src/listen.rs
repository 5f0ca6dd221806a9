//! The listening socket: its path, its lock, its permissions.
//!
//! A lock file beside the socket (`<path>.lock`, held with `flock` for archon's life) says whether
//! an archon is live on that path: a second one refuses to start, and a socket file left by a dead
//! one is replaced. The socket is created mode 0600, and its directory 0711 when archon creates
//! it: only the sockets' own modes say who may connect, and services that run as other users
//! reach the sockets made for them beside it (their notify sockets, and the bind socket).
//!
//! The bind socket (`<path>.bind`, mode 0666) serves the `Bind` request alone, to any process:
//! who gets which socket is decided by the asking process's service (see
//! [`crate::sockets`]), not by who may connect.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Why archon cannot listen.
#[derive(Debug)]
pub enum ListenError {
    /// Another archon holds the lock.
    Running(PathBuf),
    /// The path exists and is not a socket: archon does not delete what it did not make.
    NotASocket(PathBuf),
    /// A system call failed.
    Io(&'static str, PathBuf, io::Error),
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenError::Running(p) => {
                write!(f, "another archon is already running on {}", p.display())
            }
            ListenError::NotASocket(p) => write!(f, "{} exists and is not a socket", p.display()),
            ListenError::Io(what, p, e) => write!(f, "cannot {what} {}: {e}", p.display()),
        }
    }
}

/// The bound socket; dropping it removes the socket file.
pub struct Listening {
    /// The listener, non-blocking.
    pub listener: UnixListener,
    /// Its path, absolute.
    pub path: PathBuf,
    _lock: File,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Listening {
    /// The fds of the listener and of its lock (for a re-exec).
    pub fn fds(&self) -> (RawFd, RawFd) {
        (self.listener.as_raw_fd(), self._lock.as_raw_fd())
    }

    /// The socket and its lock carried across a re-exec: still bound at `path`, still locked.
    pub fn adopt(listener: OwnedFd, lock: OwnedFd, path: PathBuf) -> io::Result<Listening> {
        let listener = UnixListener::from(listener);
        listener.set_nonblocking(true)?;
        Ok(Listening {
            listener,
            path,
            _lock: File::from(lock),
        })
    }
}

impl BindListening {
    /// The bind socket carried across a re-exec.
    pub fn adopt(listener: OwnedFd, path: PathBuf) -> io::Result<BindListening> {
        let listener = UnixListener::from(listener);
        listener.set_nonblocking(true)?;
        Ok(BindListening { listener, path })
    }
}

/// Binds and listens on `path`.
pub fn listen(path: &Path) -> Result<Listening, ListenError> {
    let io_err = |what, e| ListenError::Io(what, path.to_path_buf(), e);
    let path = std::path::absolute(path).map_err(|e| io_err("resolve", e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(|e| ListenError::Io("create directory", dir.to_path_buf(), e))?;
        }
    }

    let mut lock_path = path.clone().into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| ListenError::Io("open lock file", lock_path.clone(), e))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.kind() {
            io::ErrorKind::WouldBlock => ListenError::Running(path),
            _ => ListenError::Io("lock", lock_path, e),
        });
    }

    // The socket's mode comes from the umask at bind: 0177 leaves 0600.
    let listener = bind_fresh(&path, 0o177)?;
    Ok(Listening {
        listener,
        path,
        _lock: lock,
    })
}

/// The bind socket; dropping it removes its file.
pub struct BindListening {
    /// The listener, non-blocking.
    pub listener: UnixListener,
    /// Its path, absolute: `<socket>.bind`.
    pub path: PathBuf,
}

impl Drop for BindListening {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Binds and listens on the bind socket beside `control` (whose lock archon holds, so a socket
/// file there is stale), mode 0666.
pub fn listen_bind(control: &Listening) -> Result<BindListening, ListenError> {
    let mut path = control.path.clone().into_os_string();
    path.push(".bind");
    let path = PathBuf::from(path);
    // 0777 less a umask of 0111 is 0666.
    let listener = bind_fresh(&path, 0o111)?;
    Ok(BindListening { listener, path })
}

/// A non-blocking listener at `path`, its file's mode 0777 less `umask`, after removing a stale
/// socket file there (archon holds the lock of its socket, so no other archon serves one).
fn bind_fresh(path: &Path, umask: libc::mode_t) -> Result<UnixListener, ListenError> {
    let io_err = |what, e| ListenError::Io(what, path.to_path_buf(), e);
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(|e| io_err("remove stale socket", e))?;
        }
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", e)),
    }
    // archon is single-threaded here, so changing the process-wide umask for the call is safe.
    // SAFETY: umask only swaps the mask.
    let old = unsafe { libc::umask(umask) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| io_err("bind", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configure", e))?;
    Ok(listener)
}
