//! C arguments into Rust values: strings, string arrays, descriptor arrays, commands, and the
//! out-parameters results are written to. Every pointer is checked for NULL here; what a
//! pointer that is not NULL points to is the caller's promise (see each function's `# Safety`).

use std::ffi::{CStr, c_char, c_int};
use std::os::fd::BorrowedFd;

use archon_proto::limits::MAX_REQUEST_LEN;
use archon_proto::{Command, EnvEntry, Status};

use crate::result::Failure;

/// `Status` as a `wait(2)` status, for `WIFEXITED` and the others; `ARCHON_STATUS_UNKNOWN` when
/// archon cannot tell how the process ended.
pub(crate) fn wait_status(status: Status) -> c_int {
    match status {
        Status::Exited(code) => c_int::from(code) << 8,
        // Signal numbers are 1 to 64 on the wire; 0x7f would read as "stopped".
        Status::Signaled(n) if (1..0x7f).contains(&n) => n,
        Status::Signaled(_) | Status::Unknown => crate::ARCHON_STATUS_UNKNOWN,
    }
}

/// The bytes of the C string at `ptr`; `what` names it in the error for NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a [u8], Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and NUL-terminated by the caller's promise.
    Ok(unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

/// The strings of a NULL-terminated array (as `execve(2)` takes); an empty list for a NULL
/// array when `null_ok`.
///
/// No request can hold more fields than it has bytes, so an array longer than
/// `MAX_REQUEST_LEN` entries is refused rather than walked on (its NULL was likely forgotten).
///
/// # Safety
/// `ptr` is NULL or points to an array of pointers to NUL-terminated strings, ended by NULL.
pub(crate) unsafe fn c_str_array(
    ptr: *const *const c_char,
    what: &str,
    null_ok: bool,
) -> Result<Vec<Vec<u8>>, Failure> {
    if ptr.is_null() {
        return if null_ok {
            Ok(Vec::new())
        } else {
            Err(Failure::invalid(format!("{what} is NULL")))
        };
    }
    let mut out = Vec::new();
    for i in 0..=MAX_REQUEST_LEN {
        // SAFETY: entries up to and including the terminating NULL are readable, by the
        // caller's promise, and the loop stops at the first NULL.
        let entry = unsafe { *ptr.add(i) };
        if entry.is_null() {
            return Ok(out);
        }
        // SAFETY: a non-NULL entry points to a NUL-terminated string.
        out.push(unsafe { CStr::from_ptr(entry) }.to_bytes().to_vec());
    }
    Err(Failure::invalid(format!(
        "{what} has more than {MAX_REQUEST_LEN} entries (is it NULL-terminated?)"
    )))
}

/// The descriptors of `fds[0..n]`, at most `max` of them, none negative.
///
/// # Safety
/// When `n > 0`, `fds` is NULL or points to `n` ints; each is a descriptor that stays open
/// while the returned values are used.
pub(crate) unsafe fn fds<'a>(
    fds: *const c_int,
    n: usize,
    max: usize,
) -> Result<Vec<BorrowedFd<'a>>, Failure> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if n > max {
        return Err(Failure::invalid(format!(
            "{n} descriptors; at most {max} can go with this request"
        )));
    }
    if fds.is_null() {
        return Err(Failure::invalid(format!("fds is NULL but nfds is {n}")));
    }
    // SAFETY: not NULL, and `n` ints long by the caller's promise.
    let raw = unsafe { std::slice::from_raw_parts(fds, n) };
    raw.iter()
        .map(|&fd| {
            if fd < 0 {
                return Err(Failure::invalid(format!("descriptor {fd} is negative")));
            }
            // SAFETY: not -1, and open for 'a by the caller's promise.
            Ok(unsafe { BorrowedFd::borrow_raw(fd) })
        })
        .collect()
}

/// A command from `argv` (NULL-terminated, at least argv[0], which is not empty) and `envp`
/// (NULL-terminated or NULL: `NAME=value` sets, `NAME` alone removes).
///
/// # Safety
/// As [`c_str_array`] for both.
pub(crate) unsafe fn command(
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> Result<Command, Failure> {
    // SAFETY: passed on from the caller.
    let argv = unsafe { c_str_array(argv, "argv", false) }?;
    match argv.first() {
        None => return Err(Failure::invalid("argv is empty: argv[0] is needed")),
        Some(first) if first.is_empty() => return Err(Failure::invalid("argv[0] is empty")),
        Some(_) => {}
    }
    // SAFETY: passed on from the caller.
    let envp = unsafe { c_str_array(envp, "envp", true) }?;
    let env = envp
        .into_iter()
        .map(|entry| env_entry(&entry))
        .collect::<Result<_, _>>()?;
    Ok(Command { argv, env })
}

/// One `envp` entry: `NAME=value` sets `NAME`, `NAME` alone removes it.
fn env_entry(entry: &[u8]) -> Result<EnvEntry, Failure> {
    let entry = match entry.iter().position(|&b| b == b'=') {
        Some(eq) => EnvEntry::set(&entry[..eq], &entry[eq + 1..]),
        None => EnvEntry::unset(entry),
    };
    if entry.name.is_empty() {
        return Err(Failure::invalid(
            "an envp entry has an empty name (\"\" or \"=...\")",
        ));
    }
    Ok(entry)
}

/// Writes `value` to `out` unless it is NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of a `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: not NULL, and writable by the caller's promise.
        unsafe { out.write(value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::ArchonResult;
    use std::ptr;

    fn code<T: std::fmt::Debug>(r: Result<T, Failure>) -> ArchonResult {
        match r {
            Ok(v) => unreachable!("expected a failure, got {v:?}"),
            Err(f) => f.code,
        }
    }

    #[test]
    fn wait_statuses_read_like_waitpids() {
        for code in [0u8, 1, 3, 255] {
            let s = wait_status(Status::Exited(code));
            assert!(libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == c_int::from(code));
        }
        for sig in [1, 9, 15, 64] {
            let s = wait_status(Status::Signaled(sig));
            assert!(libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == sig, "{sig}");
        }
        assert_eq!(wait_status(Status::Unknown), crate::ARCHON_STATUS_UNKNOWN);
        assert_eq!(
            wait_status(Status::Signaled(127)),
            crate::ARCHON_STATUS_UNKNOWN
        );
    }

    #[test]
    fn commands_come_from_argv_and_envp() -> Result<(), Failure> {
        let args = [
            c"/bin/sh".as_ptr(),
            c"-c".as_ptr(),
            c"".as_ptr(),
            ptr::null(),
        ];
        let env = [
            c"A=1=2".as_ptr(),
            c"HOME".as_ptr(),
            c"B=".as_ptr(),
            ptr::null(),
        ];
        // SAFETY: both arrays are NULL-terminated arrays of C strings.
        let cmd = unsafe { command(args.as_ptr(), env.as_ptr()) }?;
        assert_eq!(cmd.argv, vec![b"/bin/sh".to_vec(), b"-c".to_vec(), vec![]]);
        assert_eq!(
            cmd.env,
            vec![
                EnvEntry::set("A", "1=2"),
                EnvEntry::unset("HOME"),
                EnvEntry::set("B", "")
            ]
        );
        // SAFETY: as above; a NULL envp is allowed.
        let cmd = unsafe { command(args.as_ptr(), ptr::null()) }?;
        assert!(cmd.env.is_empty());
        Ok(())
    }

    #[test]
    fn bad_commands_are_invalid_arguments() {
        let empty: [*const c_char; 1] = [ptr::null()];
        let blank = [c"".as_ptr(), ptr::null()];
        let ok = [c"true".as_ptr(), ptr::null()];
        let bad_env = [c"=x".as_ptr(), ptr::null()];
        // SAFETY: every array is NULL-terminated; NULL arrays are checked.
        unsafe {
            for (argv, envp) in [
                (ptr::null(), ptr::null()),
                (empty.as_ptr(), ptr::null()),
                (blank.as_ptr(), ptr::null()),
                (ok.as_ptr(), bad_env.as_ptr()),
            ] {
                assert_eq!(code(command(argv, envp)), ArchonResult::InvalidArgument);
            }
        }
    }

    #[test]
    fn descriptor_arrays_are_checked() {
        let three = [0, 1, 2];
        // SAFETY: the pointers are NULL or point to `n` ints; 0, 1 and 2 are open in tests.
        unsafe {
            assert_eq!(fds(ptr::null(), 0, 3).map(|v| v.len()).ok(), Some(0));
            assert_eq!(fds(three.as_ptr(), 3, 3).map(|v| v.len()).ok(), Some(3));
            assert_eq!(
                code(fds(three.as_ptr(), 3, 2)),
                ArchonResult::InvalidArgument
            );
            assert_eq!(code(fds(ptr::null(), 1, 3)), ArchonResult::InvalidArgument);
            assert_eq!(
                code(fds([-1].as_ptr(), 1, 3)),
                ArchonResult::InvalidArgument
            );
        }
    }

    #[test]
    fn out_parameters_may_be_null() {
        let mut x = 0;
        // SAFETY: NULL or a valid i32.
        unsafe {
            put(ptr::null_mut::<i32>(), 5);
            put(&mut x, 7);
        }
        assert_eq!(x, 7);
    }
}
