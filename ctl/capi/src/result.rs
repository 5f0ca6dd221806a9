//! What a call returns: the result codes, the thread's last error message, and the panic
//! boundary every exported function runs behind.
//!
//! A call that fails records why in a thread-local slot (a message, and the `errno` when a
//! system call failed) and returns a code; `archon_last_error` copies the message out. Nothing
//! is recorded on success, as with `errno`: the slot is meaningful right after a failure.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

/// What a call of libarchon did. `ARCHON_RESULT_OK` is 0; every other value is a failure whose
/// message `archon_last_error` copies.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchonResult {
    /// Done.
    Ok = 0,
    /// A NULL pointer where one is needed, a value out of range, or a request that cannot be
    /// written (a field too long, a bad service name). Nothing was sent.
    InvalidArgument = 1,
    /// No socket path can be worked out, or connect(2) failed (`archon_last_os_error` says why).
    CannotConnect = 2,
    /// Sending or receiving failed, or archon closed the connection. The handle is out of step:
    /// close it.
    Io = 3,
    /// Nothing came within the time set by `archon_set_timeout`. The handle is out of step:
    /// close it.
    TimedOut = 4,
    /// archon answered `Error`: nothing was done, and the message is archon's reason. The
    /// handle can be used again.
    Refused = 5,
    /// archon's reply breaks the protocol, or does not answer the request.
    Protocol = 6,
    /// The caller's buffer cannot hold the reply; the length needed was reported.
    BufferTooSmall = 7,
    /// A bug in libarchon: a panic was caught at the boundary. Close the handle.
    Panic = 8,
}

/// Each code with its `archon_strerror` text; the last entry is for any other value.
const DESCRIPTIONS: [(ArchonResult, &str); 9] = [
    (ArchonResult::Ok, "success\0"),
    (ArchonResult::InvalidArgument, "invalid argument\0"),
    (ArchonResult::CannotConnect, "cannot connect to archon\0"),
    (ArchonResult::Io, "I/O error on the connection to archon\0"),
    (ArchonResult::TimedOut, "timed out waiting for archon\0"),
    (ArchonResult::Refused, "archon refused the request\0"),
    (
        ArchonResult::Protocol,
        "archon's reply breaks the protocol\0",
    ),
    (ArchonResult::BufferTooSmall, "buffer too small\0"),
    (ArchonResult::Panic, "internal error in libarchon (panic)\0"),
];

/// `archon_strerror`'s text for a value that is no code.
pub(crate) const UNKNOWN_CODE: &str = "unknown libarchon result code\0";

/// The description of `code`, NUL-terminated.
pub(crate) fn describe(code: i32) -> &'static str {
    DESCRIPTIONS
        .iter()
        .find(|(c, _)| *c as i32 == code)
        .map_or(UNKNOWN_CODE, |(_, text)| text)
}

/// Why a call failed: its code, the message for `archon_last_error`, and the errno if a system
/// call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: ArchonResult,
    pub(crate) message: Vec<u8>,
    pub(crate) os_error: i32,
}

impl Failure {
    /// A failure with `code` and `message`, no errno.
    pub(crate) fn new(code: ArchonResult, message: impl Into<Vec<u8>>) -> Failure {
        Failure {
            code,
            message: message.into(),
            os_error: 0,
        }
    }

    /// `ARCHON_RESULT_INVALID_ARGUMENT` with `message`.
    pub(crate) fn invalid(message: impl Into<Vec<u8>>) -> Failure {
        Failure::new(ArchonResult::InvalidArgument, message)
    }

    /// What a caught panic becomes.
    fn panic(payload: &(dyn Any + Send)) -> Failure {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Failure::new(
            ArchonResult::Panic,
            format!("libarchon panicked (a bug; please report it): {what}"),
        )
    }

    /// Records the failure as the thread's last error and returns its code.
    fn record(self) -> ArchonResult {
        let code = self.code;
        // The slot is gone only while the thread is exiting; the code still tells.
        let _ = LAST.try_with(|last| *last.borrow_mut() = Some(self));
        code
    }
}

impl From<archon_ctl::Error> for Failure {
    fn from(e: archon_ctl::Error) -> Failure {
        use archon_ctl::Error as E;
        let os_error = match &e {
            E::Connect { source, .. } | E::Io(source) => source.raw_os_error().unwrap_or(0),
            _ => 0,
        };
        let code = match &e {
            E::NoSocketPath(_) | E::Connect { .. } => ArchonResult::CannotConnect,
            E::Encode(_) | E::TooManyFds(_) => ArchonResult::InvalidArgument,
            E::Io(_) | E::Closed => ArchonResult::Io,
            E::TimedOut => ArchonResult::TimedOut,
            E::Malformed(_) | E::Unexpected(_) => ArchonResult::Protocol,
            E::Refused(_) => ArchonResult::Refused,
        };
        let message = match e {
            // archon's reason, exactly: the caller may show it with a prefix of its own.
            E::Refused(reason) => reason,
            other => other.to_string().into_bytes(),
        };
        Failure {
            code,
            message,
            os_error,
        }
    }
}

thread_local! {
    /// The last failure of a call made on this thread.
    static LAST: RefCell<Option<Failure>> = const { RefCell::new(None) };
}

/// Runs `body` behind the panic boundary: `ARCHON_RESULT_OK`, or the failure's code with the
/// failure recorded.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> ArchonResult {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => ArchonResult::Ok,
        Ok(Err(failure)) => failure.record(),
        Err(payload) => {
            let failure = Failure::panic(payload.as_ref());
            forget_payload(payload);
            failure.record()
        }
    }
}

/// Runs `body`, which cannot fail, behind the panic boundary; `fallback` if it panics (the
/// panic is recorded as the last error).
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            Failure::panic(payload.as_ref()).record();
            forget_payload(payload);
            fallback
        }
    }
}

/// Drops a panic's payload, whose own `drop` could panic and must not unwind into C either.
fn forget_payload(payload: Box<dyn Any + Send>) {
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
}

/// The thread's last failure's message and errno (empty and 0 when there was none).
pub(crate) fn last() -> (Vec<u8>, i32) {
    LAST.try_with(|last| {
        last.borrow()
            .as_ref()
            .map(|f| (f.message.clone(), f.os_error))
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn every_code_has_its_own_text() {
        for (code, text) in DESCRIPTIONS {
            assert_eq!(describe(code as i32), text);
            assert!(text.ends_with('\0') && text.len() > 1, "{text:?}");
            assert_eq!(text.find('\0'), Some(text.len() - 1), "{text:?}");
        }
        let texts: std::collections::HashSet<_> = DESCRIPTIONS.iter().map(|(_, t)| t).collect();
        assert_eq!(texts.len(), DESCRIPTIONS.len());
        assert_eq!(describe(-1), UNKNOWN_CODE);
        assert_eq!(describe(9), UNKNOWN_CODE);
    }

    #[test]
    fn client_errors_map_to_codes_and_keep_the_errno() {
        let f = Failure::from(archon_ctl::Error::Connect {
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        });
        assert_eq!(f.code, ArchonResult::CannotConnect);
        assert_eq!(f.os_error, libc::ECONNREFUSED);
        let f = Failure::from(archon_ctl::Error::Io(io::Error::from_raw_os_error(
            libc::EPIPE,
        )));
        assert_eq!((f.code, f.os_error), (ArchonResult::Io, libc::EPIPE));
        let f = Failure::from(archon_ctl::Error::Refused(b"no such process: 9".to_vec()));
        assert_eq!(f.code, ArchonResult::Refused);
        assert_eq!(f.message, b"no such process: 9", "the reason, unprefixed");
        let f = Failure::from(archon_ctl::Error::TooManyFds(300));
        assert_eq!(f.code, ArchonResult::InvalidArgument);
        assert_eq!(
            Failure::from(archon_ctl::Error::Closed).code,
            ArchonResult::Io
        );
        assert_eq!(
            Failure::from(archon_ctl::Error::TimedOut).code,
            ArchonResult::TimedOut
        );
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_panic_becomes_a_code_and_a_message() {
        // The default hook would print the expected panic; keep the test output clean.
        let hook = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let code = guard(|| panic!("boom {}", 7));
        let value = guard_value(42, || -> i32 { panic!("bang") });
        panic::set_hook(hook);
        assert_eq!(code, ArchonResult::Panic);
        assert_eq!(value, 42);
        let (message, errno) = last();
        assert_eq!(
            String::from_utf8_lossy(&message),
            "libarchon panicked (a bug; please report it): bang"
        );
        assert_eq!(errno, 0);
    }

    #[test]
    fn success_leaves_the_last_error_alone() {
        assert_eq!(
            guard(|| Err(Failure::invalid("first"))),
            ArchonResult::InvalidArgument
        );
        assert_eq!(guard(|| Ok(())), ArchonResult::Ok);
        assert_eq!(last().0, b"first");
    }
}
