//! libarchon: archon's client ([`archon_ctl::Client`]) as a C library, `libarchon.so` and
//! `libarchon.a` with the header `include/archon.h`. libarchon(3) is its manual.
//!
//! The ABI is plain C: an opaque handle (`archon *`), C strings, `int` descriptors, integers,
//! one `#[repr(C)]` row struct lent to a callback, and the result codes of [`ArchonResult`].
//! No Rust type crosses it. Every exported function checks its pointers for NULL and runs
//! behind a panic boundary ([`result`]); a failure records a message that `archon_last_error`
//! copies out.
//!
//! - [`result`] — the codes, the thread's last error, the panic boundary;
//! - [`handle`] — [`Archon`], the connection behind `archon *`;
//! - [`args`] — C arguments into Rust values;
//! - [`rows`] — `Status` rows for C.
//!
//! `include/archon.h` is generated from this crate by cbindgen (`cbindgen.toml`); the test
//! `tests/header.rs` fails when the checked-in header differs from what the code gives.
#![deny(missing_docs)]

pub mod args;
pub mod handle;
pub mod result;
pub mod rows;

use std::ffi::{OsStr, c_char, c_int, c_void};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::time::Duration;

use archon_ctl::Client;
use archon_proto::Reply;
use archon_proto::limits::{MAX_FDS_PER_MESSAGE, MAX_STOP_GRACE_MS};

pub use handle::Archon;
pub use result::ArchonResult;
pub use rows::{ArchonStatusFn, ArchonStatusRow};

use args::{c_str, c_str_array, put, wait_status};
use result::{Failure, guard, guard_value};

/// The status given for a process that has ended when archon cannot tell how (a process it
/// watches but did not start, on an older kernel). Never a wait(2) status.
// `0 - 1` rather than `-1`: cbindgen writes the #define in parentheses then, which a bare
// negative number would need in an expression such as `x-ARCHON_STATUS_UNKNOWN`.
pub const ARCHON_STATUS_UNKNOWN: c_int = 0 - 1;

/// The `last_status` of a status row whose process never ended. Never a wait(2) status.
// As above.
pub const ARCHON_STATUS_NONE: c_int = 0 - 2;

/// Most descriptors `archon_run` and `archon_start_daemon` take: stdin, stdout, stderr.
pub const ARCHON_MAX_STDIO_FDS: usize = 3;

/// The handle behind `a`, or an invalid-argument failure for NULL.
///
/// # Safety
/// `a` is NULL or a handle from `archon_connect` not yet closed, used by no other thread.
unsafe fn handle<'a>(a: *mut Archon) -> Result<&'a mut Archon, Failure> {
    // SAFETY: NULL or a live handle, by the caller's promise.
    unsafe { a.as_mut() }.ok_or_else(|| Failure::invalid("the archon handle is NULL"))
}

/// Copies `bytes` and a NUL into `buf` (`size` bytes) and their length into `*len`; when they do
/// not fit, as much as fits (NUL-terminated, when `size` > 0) and `BufferTooSmall`.
///
/// # Safety
/// `buf` is NULL with `size` 0, or writable for `size` bytes; `len` is NULL or writable.
unsafe fn copy_out(
    bytes: &[u8],
    buf: *mut c_char,
    size: usize,
    len: *mut usize,
) -> Result<(), Failure> {
    if buf.is_null() && size > 0 {
        return Err(Failure::invalid(format!(
            "the buffer is NULL but its size is {size}"
        )));
    }
    // SAFETY: NULL or writable, by the caller's promise.
    unsafe { put(len, bytes.len()) };
    let fits = bytes.len() < size;
    let n = if fits {
        bytes.len()
    } else {
        size.saturating_sub(1)
    };
    if size > 0 {
        // SAFETY: buf holds `size` bytes and n < size; the regions cannot overlap (ours is a
        // Rust allocation).
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    if fits {
        Ok(())
    } else {
        Err(Failure::new(
            ArchonResult::BufferTooSmall,
            format!(
                "the reply is {} bytes: the buffer needs {} with the NUL, and has {size}",
                bytes.len(),
                bytes.len() + 1
            ),
        ))
    }
}

/// Connects to archon's socket: `socket` when it is not NULL or empty, else `$ARCHON_SOCKET`,
/// else `/run/archon/archon.sock` for root and `$XDG_RUNTIME_DIR/archon.sock` for others (as
/// archonctl does). On success `*out` is a handle for `archon_close`; on failure it is NULL.
///
/// # Safety
/// `socket` is NULL or a C string; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_connect(
    socket: *const c_char,
    out: *mut *mut Archon,
) -> ArchonResult {
    guard(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: not NULL, writable by the caller's promise.
        unsafe { out.write(ptr::null_mut()) };
        let path = if socket.is_null() {
            None
        } else {
            // SAFETY: a C string by the caller's promise.
            Some(Path::new(OsStr::from_bytes(unsafe {
                c_str(socket, "socket")
            }?)))
        };
        let client = Client::connect(path)?;
        let handle = Box::into_raw(Box::new(Archon::new(client)));
        // SAFETY: as above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Closes the connection and frees the handle. NULL is ignored. What the connection's
/// requests started goes on (a daemon keeps running).
///
/// # Safety
/// `a` is NULL or a handle from `archon_connect`, not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_close(a: *mut Archon) {
    guard_value((), || {
        if !a.is_null() {
            // SAFETY: a handle made by Box::into_raw in archon_connect, closed once.
            drop(unsafe { Box::from_raw(a) });
        }
    });
}

/// Makes a call fail with `ARCHON_RESULT_TIMED_OUT` when archon sends nothing for `ms`
/// milliseconds (or a send blocks that long); 0 waits for ever, the default. A `Run` takes as
/// long as its command.
///
/// # Safety
/// `a` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_set_timeout(a: *mut Archon, ms: u32) -> ArchonResult {
    guard(|| {
        // SAFETY: passed on from the caller.
        let h = unsafe { handle(a) }?;
        let timeout = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
        h.client().set_read_timeout(timeout)?;
        h.client().set_write_timeout(timeout)?;
        Ok(())
    })
}

/// Checks that archon answers (`Ping`).
///
/// # Safety
/// `a` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_ping(a: *mut Archon) -> ArchonResult {
    guard(|| {
        // SAFETY: passed on from the caller.
        let h = unsafe { handle(a) }?;
        h.call(Client::ping)
    })
}

/// Sends `line`, one request as archon-protocol(7) writes it (a newline is added when
/// missing), with the `nfds` descriptors of `fds` attached (`SCM_RIGHTS`), and reads its reply.
///
/// The reply, exactly as received (every record with its newline, a table with all its rows),
/// is copied into `reply` (`size` bytes) with a NUL after it, and its length without the NUL
/// into `*len`. When it does not fit: `ARCHON_RESULT_BUFFER_TOO_SMALL`, `*len` set, as much as
/// fits copied (NUL-terminated); `archon_last_reply` copies it again. `reply` may be NULL when
/// `size` is 0; `len` may be NULL.
///
/// Returns `ARCHON_RESULT_REFUSED` when the reply is `Error` (copied all the same; the reason
/// is the message), and `ARCHON_RESULT_INVALID_ARGUMENT`, sending nothing, for a line that
/// holds more than one request or ends inside a quoted field.
///
/// # Safety
/// `a` is NULL or a live handle; `line` is NULL or a C string; `fds` is NULL or `nfds` ints
/// that are open descriptors; `reply` is NULL or `size` writable bytes; `len` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_request(
    a: *mut Archon,
    line: *const c_char,
    fds: *const c_int,
    nfds: usize,
    reply: *mut c_char,
    size: usize,
    len: *mut usize,
) -> ArchonResult {
    guard(|| {
        // SAFETY (all four): passed on from the caller.
        let h = unsafe { handle(a) }?;
        let line = unsafe { c_str(line, "line") }?;
        let fds = unsafe { args::fds(fds, nfds, MAX_FDS_PER_MESSAGE) }?;
        if reply.is_null() && size > 0 {
            return Err(Failure::invalid(format!(
                "reply is NULL but size is {size}"
            )));
        }
        let answer = h.raw(line, &fds)?;
        // SAFETY: passed on from the caller.
        unsafe { copy_out(h.last_reply(), reply, size, len) }?;
        match answer {
            Reply::Error(reason) => Err(Failure::new(ArchonResult::Refused, reason)),
            _ => Ok(()),
        }
    })
}

/// Copies the last reply `archon_request` read on this handle again, as it does (empty before
/// the first): for a caller whose buffer was too small.
///
/// # Safety
/// `a` is NULL or a live handle; `reply` is NULL or `size` writable bytes; `len` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_last_reply(
    a: *const Archon,
    reply: *mut c_char,
    size: usize,
    len: *mut usize,
) -> ArchonResult {
    guard(|| {
        // SAFETY: NULL or a live handle, by the caller's promise.
        let h =
            unsafe { a.as_ref() }.ok_or_else(|| Failure::invalid("the archon handle is NULL"))?;
        // SAFETY: passed on from the caller.
        unsafe { copy_out(h.last_reply(), reply, size, len) }
    })
}

/// Runs a command and waits for it to end (`Run`): `argv` is NULL-terminated, `argv[0]` the
/// program (searched in `PATH` without a `/`); `envp`, NULL-terminated or NULL, changes the
/// environment archon gives it: `NAME=value` sets, `NAME` alone removes. The `nfds` (0 to 3)
/// descriptors of `fds` become its stdin, stdout and stderr. `*wstatus` gets how it ended as a
/// wait(2) status (`WIFEXITED`, `WEXITSTATUS`, `WIFSIGNALED`, `WTERMSIG`); `wstatus` may be
/// NULL. `ARCHON_RESULT_REFUSED` when archon cannot run it.
///
/// # Safety
/// `a` is NULL or a live handle; `argv` and `envp` are NULL or NULL-terminated arrays of C
/// strings; `fds` is NULL or `nfds` open descriptors; `wstatus` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_run(
    a: *mut Archon,
    argv: *const *const c_char,
    envp: *const *const c_char,
    fds: *const c_int,
    nfds: usize,
    wstatus: *mut c_int,
) -> ArchonResult {
    guard(|| {
        // SAFETY (all three): passed on from the caller.
        let h = unsafe { handle(a) }?;
        let command = unsafe { args::command(argv, envp) }?;
        let fds = unsafe { args::fds(fds, nfds, ARCHON_MAX_STDIO_FDS) }?;
        let status = h.call(|c| c.run(&command, &fds))?;
        // SAFETY: passed on from the caller.
        unsafe { put(wstatus, wait_status(status)) };
        Ok(())
    })
}

/// Starts a command as a daemon that archon watches (`StartDaemon`), with `argv`, `envp` and
/// `fds` as for `archon_run`, and returns once it has been executed: its id in `*id`, its pid
/// in `*pid` (either may be NULL). Without descriptors, its stdin is /dev/null and its output
/// goes to archon's stderr.
///
/// # Safety
/// As `archon_run`; `id` and `pid` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_start_daemon(
    a: *mut Archon,
    argv: *const *const c_char,
    envp: *const *const c_char,
    fds: *const c_int,
    nfds: usize,
    id: *mut u64,
    pid: *mut libc::pid_t,
) -> ArchonResult {
    guard(|| {
        // SAFETY (all three): passed on from the caller.
        let h = unsafe { handle(a) }?;
        let command = unsafe { args::command(argv, envp) }?;
        let fds = unsafe { args::fds(fds, nfds, ARCHON_MAX_STDIO_FDS) }?;
        let (new_id, new_pid) = h.call(|c| c.start_daemon(&command, &fds))?;
        // SAFETY: passed on from the caller.
        unsafe {
            put(id, new_id);
            put(pid, new_pid);
        }
        Ok(())
    })
}

/// Asks archon to watch the process `pidfd` refers to (`MonitorFD`; a pidfd from
/// pidfd_open(2) or clone(2)): its id in `*id`, its pid in `*pid` (either may be NULL). The
/// descriptor stays the caller's.
///
/// # Safety
/// `a` is NULL or a live handle; `id` and `pid` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_monitor_fd(
    a: *mut Archon,
    pidfd: c_int,
    id: *mut u64,
    pid: *mut libc::pid_t,
) -> ArchonResult {
    guard(|| {
        // SAFETY: passed on from the caller.
        let h = unsafe { handle(a) }?;
        if pidfd < 0 {
            return Err(Failure::invalid(format!("pidfd {pidfd} is negative")));
        }
        // SAFETY: not -1; the caller keeps it open during the call.
        let fd = unsafe { BorrowedFd::borrow_raw(pidfd) };
        let (new_id, new_pid) = h.call(|c| c.monitor_fd(fd))?;
        // SAFETY: passed on from the caller.
        unsafe {
            put(id, new_id);
            put(pid, new_pid);
        }
        Ok(())
    })
}

/// Asks archon to watch process `pid` (`Monitor`; archon opens the pidfd): its id in `*id`
/// (may be NULL). The pid must not have been reused since the caller learned it.
///
/// # Safety
/// `a` is NULL or a live handle; `id` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_monitor(
    a: *mut Archon,
    pid: libc::pid_t,
    id: *mut u64,
) -> ArchonResult {
    guard(|| {
        // SAFETY: passed on from the caller.
        let h = unsafe { handle(a) }?;
        if pid <= 0 {
            return Err(Failure::invalid(format!("pid {pid} is not a process")));
        }
        let (new_id, _) = h.call(|c| c.monitor(pid))?;
        // SAFETY: passed on from the caller.
        unsafe { put(id, new_id) };
        Ok(())
    })
}

/// Has archon run a command when process `id` ends (`OnExit`): `argv` and `envp` as for
/// `archon_run`; archon adds `ARCHON_ID`, `ARCHON_KIND`, `ARCHON_PID`, `ARCHON_EXIT` and
/// `ARCHON_STATUS`, which say what ended. Returns once archon has taken it; it runs at once
/// when the process has ended already. `ARCHON_RESULT_REFUSED` for an id that names no process
/// archon keeps, or beyond the limits of exit actions waiting.
///
/// # Safety
/// `a` is NULL or a live handle; `argv` and `envp` are NULL or NULL-terminated arrays of C
/// strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_on_exit(
    a: *mut Archon,
    id: u64,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> ArchonResult {
    guard(|| {
        // SAFETY (both): passed on from the caller.
        let h = unsafe { handle(a) }?;
        let command = unsafe { args::command(argv, envp) }?;
        h.call(|c| c.on_exit(id, &command))?;
        Ok(())
    })
}

/// Stops process `id` (`Stop`): SIGTERM, then SIGKILL after `grace_ms` milliseconds (negative:
/// archon's default, 7000 unless its `--stop-grace` says otherwise; at most 86400000). Returns
/// once it has ended, with how in `*wstatus` (a wait(2) status, or `ARCHON_STATUS_UNKNOWN`;
/// may be NULL). `ARCHON_RESULT_REFUSED` for an id that names no running process.
///
/// # Safety
/// `a` is NULL or a live handle; `wstatus` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_stop(
    a: *mut Archon,
    id: u64,
    grace_ms: i64,
    wstatus: *mut c_int,
) -> ArchonResult {
    guard(|| {
        // SAFETY: passed on from the caller.
        let h = unsafe { handle(a) }?;
        let grace = u64::try_from(grace_ms).ok();
        if grace.is_some_and(|g| g > MAX_STOP_GRACE_MS) {
            return Err(Failure::invalid(format!(
                "grace {grace_ms} ms is longer than {MAX_STOP_GRACE_MS} ms"
            )));
        }
        let status = h.call(|c| c.stop(id, grace))?;
        // SAFETY: passed on from the caller.
        unsafe { put(wstatus, wait_status(status)) };
        Ok(())
    })
}

/// Asks for archon's status (`Status`) and calls `callback(row, ctx)` once per row, in
/// archon's order: every service and task, then every process; or, when `names` (a
/// NULL-terminated array, or NULL for all) names services, those. A non-zero return from the
/// callback skips the rows after. `ARCHON_RESULT_REFUSED` for a name that is no service.
///
/// # Safety
/// `a` is NULL or a live handle; `names` is NULL or a NULL-terminated array of C strings;
/// `callback` is NULL or a function that may be called with `ctx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_status(
    a: *mut Archon,
    names: *const *const c_char,
    callback: ArchonStatusFn,
    ctx: *mut c_void,
) -> ArchonResult {
    guard(|| {
        // SAFETY (both): passed on from the caller.
        let h = unsafe { handle(a) }?;
        let names = unsafe { c_str_array(names, "names", true) }?;
        let callback = callback.ok_or_else(|| Failure::invalid("callback is NULL"))?;
        let rows = h.call(|c| c.status(&names))?;
        for row in &rows {
            let row = rows::OwnedRow::new(row)?;
            // SAFETY: the callback is the caller's; the row and its strings live through the
            // call.
            if unsafe { callback(row.get(), ctx) } != 0 {
                break;
            }
        }
        Ok(())
    })
}

/// Copies the message of the last call that failed on this thread into `buf` (`size` bytes,
/// NUL-terminated, cut short when it does not fit; `buf` may be NULL when `size` is 0) and
/// returns its whole length without the NUL, as snprintf(3) does: the message was cut when the
/// return is `size` or more. For `ARCHON_RESULT_REFUSED` the message is archon's reason. A
/// call that succeeds leaves the message as it was.
///
/// # Safety
/// `buf` is NULL or writable for `size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn archon_last_error(buf: *mut c_char, size: usize) -> usize {
    guard_value(0, || {
        let (message, _) = result::last();
        if buf.is_null() {
            return message.len();
        }
        // SAFETY: writable for `size` bytes; BufferTooSmall is what the return value tells.
        let _ = unsafe { copy_out(&message, buf, size, ptr::null_mut()) };
        message.len()
    })
}

/// The errno of the system call behind the last failure on this thread
/// (`ARCHON_RESULT_CANNOT_CONNECT`, `ARCHON_RESULT_IO`), or 0.
#[unsafe(no_mangle)]
pub extern "C" fn archon_last_os_error() -> c_int {
    guard_value(0, || result::last().1)
}

/// A static description of a result code, never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn archon_strerror(code: c_int) -> *const c_char {
    guard_value(result::UNKNOWN_CODE.as_ptr().cast(), || {
        result::describe(code).as_ptr().cast()
    })
}

#[cfg(test)]
mod tests;
