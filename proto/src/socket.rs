//! Where archon's socket is: the one rule that archon, archonctl and the client library share.
//!
//! In order: an explicit path (`--socket`), else `$ARCHON_SOCKET`, else
//! `/run/archon/archon.sock` for root and `$XDG_RUNTIME_DIR/archon.sock` for anyone else. An empty
//! value counts as unset.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

/// The environment variable that names the socket.
pub const SOCKET_ENV: &str = "ARCHON_SOCKET";

/// The socket of a root archon.
pub const ROOT_SOCKET: &str = "/run/archon/archon.sock";

/// The socket's file name under `$XDG_RUNTIME_DIR` for an archon run by another user.
pub const USER_SOCKET_NAME: &str = "archon.sock";

/// No socket path can be worked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSocketPath;

impl fmt::Display for NoSocketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no socket path: pass --socket PATH, or set {SOCKET_ENV} or XDG_RUNTIME_DIR"
        )
    }
}

impl std::error::Error for NoSocketPath {}

/// The socket path, from an explicit path, the environment (read through `var`) and the
/// effective uid.
pub fn socket_path(
    explicit: Option<&OsStr>,
    var: impl Fn(&str) -> Option<OsString>,
    euid: u32,
) -> Result<PathBuf, NoSocketPath> {
    let set = |v: &OsStr| !v.is_empty();
    if let Some(p) = explicit.filter(|p| set(p)) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = var(SOCKET_ENV).filter(|p| set(p)) {
        return Ok(PathBuf::from(p));
    }
    if euid == 0 {
        return Ok(PathBuf::from(ROOT_SOCKET));
    }
    match var("XDG_RUNTIME_DIR").filter(|p| set(p)) {
        Some(dir) => Ok(PathBuf::from(dir).join(USER_SOCKET_NAME)),
        None => Err(NoSocketPath),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn resolution_order() {
        let all = [
            ("ARCHON_SOCKET", "/e.sock"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        assert_eq!(
            socket_path(Some(OsStr::new("/x.sock")), env(&all), 0),
            Ok("/x.sock".into())
        );
        assert_eq!(socket_path(None, env(&all), 1000), Ok("/e.sock".into()));
        assert_eq!(
            socket_path(Some(OsStr::new("")), env(&all), 0),
            Ok("/e.sock".into())
        );
        let xdg = [("ARCHON_SOCKET", ""), ("XDG_RUNTIME_DIR", "/run/user/1000")];
        assert_eq!(socket_path(None, env(&xdg), 0), Ok(ROOT_SOCKET.into()));
        assert_eq!(
            socket_path(None, env(&xdg), 1000),
            Ok("/run/user/1000/archon.sock".into())
        );
        assert_eq!(socket_path(None, env(&[]), 1000), Err(NoSocketPath));
    }
}
