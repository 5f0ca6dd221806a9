//! `Status` rows as C sees them: a plain struct of C strings and integers, lent to a callback
//! one row at a time.

use std::ffi::{CString, c_char, c_int, c_void};

use archon_proto::ServiceRow;

use crate::args::wait_status;
use crate::result::{ArchonResult, Failure};

/// One row of archon's `Status` reply (see archon-protocol(7)): a service, a task, or a
/// process that came by request. The strings are NUL-terminated and valid only during the
/// callback that receives the row; copy what is kept.
#[repr(C)]
#[derive(Debug)]
pub struct ArchonStatusRow {
    /// A service's or task's name; a process's id, in decimal.
    pub name: *const c_char,
    /// `service`, `task`, `daemon`, `run` or `monitor`.
    pub kind: *const c_char,
    /// `stopped`, `starting`, `running`, `ready`, `stopping`, `backoff`, `failed`, `done`,
    /// `paused` or `exited`.
    pub state: *const c_char,
    /// Its main process; 0 when it has none.
    pub pid: libc::pid_t,
    /// When it entered its state, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// How many times archon has restarted it.
    pub restarts: u32,
    /// How its main process last ended, as a wait(2) status; `ARCHON_STATUS_NONE` when it
    /// never has, `ARCHON_STATUS_UNKNOWN` when archon cannot tell.
    pub last_status: c_int,
    /// 1 when it has reported readiness, 0 when not yet, -1 where that does not apply.
    pub ready: c_int,
    /// `healthy`, `unhealthy` or `starting`; empty without a health check.
    pub health: *const c_char,
    /// Resident memory of its whole tree, in KiB; -1 when unknown.
    pub rss_kib: i64,
    /// CPU time of its whole tree, user and system, in milliseconds; -1 when unknown.
    pub cpu_ms: i64,
    /// Why it is failed, in backoff or stopped, for people; may be empty.
    pub reason: *const c_char,
    /// Where its sockets are bound, separated by a space (`tcp:127.0.0.1:43211
    /// unix:/run/web.sock`; a port 0 is the port archon got); empty for none.
    pub sockets: *const c_char,
}

/// The callback `archon_status` calls once per row, with the `ctx` it was given. Returning
/// non-zero stops the walk.
pub type ArchonStatusFn =
    Option<unsafe extern "C" fn(row: *const ArchonStatusRow, ctx: *mut c_void) -> c_int>;

/// A row with the strings its pointers point into.
pub(crate) struct OwnedRow {
    row: ArchonStatusRow,
    _strings: [CString; 6],
}

impl OwnedRow {
    /// The C view of `row`.
    pub(crate) fn new(row: &ServiceRow) -> Result<OwnedRow, Failure> {
        let c = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| Failure::new(ArchonResult::Protocol, "a Status row holds a NUL byte"))
        };
        let strings = [
            c(&row.name)?,
            c(row.kind.as_str().as_bytes())?,
            c(row.state.as_str().as_bytes())?,
            c(row.health.map_or(&b""[..], |h| h.as_str().as_bytes()))?,
            c(&row.reason)?,
            c(&row.sockets)?,
        ];
        let known = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        // The pointers stay valid when the strings move into the struct: their bytes are on the
        // heap.
        let row = ArchonStatusRow {
            name: strings[0].as_ptr(),
            kind: strings[1].as_ptr(),
            state: strings[2].as_ptr(),
            pid: row.pid.unwrap_or(0),
            since_ms: row.since_ms,
            restarts: row.restarts,
            last_status: row.last.map_or(crate::ARCHON_STATUS_NONE, wait_status),
            ready: row.ready.map_or(-1, c_int::from),
            health: strings[3].as_ptr(),
            rss_kib: known(row.rss_kib),
            cpu_ms: known(row.cpu_ms),
            reason: strings[4].as_ptr(),
            sockets: strings[5].as_ptr(),
        };
        Ok(OwnedRow {
            row,
            _strings: strings,
        })
    }

    /// The row to lend to C.
    pub(crate) fn get(&self) -> &ArchonStatusRow {
        &self.row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{Health, ServiceKind, ServiceState, Status};
    use std::ffi::CStr;

    fn text(p: *const c_char) -> String {
        // SAFETY: the pointers of an OwnedRow that is alive point to C strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn rows_read_as_c_values() -> Result<(), Failure> {
        let mut row = ServiceRow {
            name: b"web".to_vec(),
            kind: ServiceKind::Service,
            state: ServiceState::Ready,
            pid: Some(42),
            since_ms: 1_763_769_600_250,
            restarts: 2,
            last: Some(Status::Signaled(9)),
            ready: Some(true),
            health: Some(Health::Healthy),
            rss_kib: Some(1024),
            cpu_ms: None,
            reason: b"a, \"b\"".to_vec(),
            sockets: b"tcp:127.0.0.1:43211".to_vec(),
        };
        let owned = OwnedRow::new(&row)?;
        let r = owned.get();
        assert_eq!(
            (text(r.name), text(r.kind), text(r.state), text(r.health)),
            (
                "web".into(),
                "service".into(),
                "ready".into(),
                "healthy".into()
            )
        );
        assert_eq!((r.pid, r.since_ms, r.restarts), (42, 1_763_769_600_250, 2));
        assert!(libc::WIFSIGNALED(r.last_status) && libc::WTERMSIG(r.last_status) == 9);
        assert_eq!((r.ready, r.rss_kib, r.cpu_ms), (1, 1024, -1));
        assert_eq!(text(r.reason), "a, \"b\"");
        assert_eq!(text(r.sockets), "tcp:127.0.0.1:43211");

        row.pid = None;
        row.last = None;
        row.ready = None;
        row.health = None;
        let owned = OwnedRow::new(&row)?;
        let r = owned.get();
        assert_eq!((r.pid, r.ready), (0, -1));
        assert_eq!(r.last_status, crate::ARCHON_STATUS_NONE);
        assert_eq!(text(r.health), "");

        row.reason = b"a\0b".to_vec();
        assert!(matches!(
            OwnedRow::new(&row),
            Err(Failure {
                code: ArchonResult::Protocol,
                ..
            })
        ));
        Ok(())
    }
}
