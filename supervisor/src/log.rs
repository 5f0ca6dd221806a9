//! archon's own log: one line per message on stderr, `<UTC time> archon[<pid>]: <level>: <text>`;
//! or, as process 1 without a usable stderr, one record per message in the kernel's log.
//!
//! The loop must never block on its log. Setting O_NONBLOCK on fd 2 would also change it for every
//! child that shares it, so for a pipe or a terminal archon writes through a second open file
//! description (reopened through /proc/self/fd/2) that alone is non-blocking, and for a socket it
//! uses `send(MSG_DONTWAIT)`. A line that would block is dropped and counted; the count is reported
//! with the next line that gets through.
//!
//! Process 1 has nobody to hand its log to when stderr goes nowhere: a container runtime or a
//! kernel that gave it none (`/dev/null` from [`crate::sys::ensure_stdio_open`]), or a console or
//! a pipe that went away. Then archon writes to `/dev/kmsg` ([`Sink::Kmsg`]), as systemd does
//! early at boot: one record per message, `<N>archon[1]: <text>`, the syslog priority (facility
//! daemon) in front, no newline inside, at most [`KMSG_RECORD_MAX`] bytes. Stderr is not usable
//! ([`stderr_usable`]) when it is closed or `/dev/null` at [`init`], or when a write fails with
//! EBADF, EPIPE, EIO or ENXIO later (a full pipe is usable: its lines are dropped and counted).
//! Writes to `/dev/kmsg` do not block. Where it cannot be opened (a container without it), archon
//! carries on as before, silently.

use std::fmt;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is wrong but archon goes on.
    Warn = 1,
    /// What archon does (the default).
    Info = 2,
    /// Every detail.
    Debug = 3,
}

impl Level {
    /// Reads `error`, `warn`, `info` or `debug`.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }

    /// The syslog(3) level of a message at this level: `LOG_ERR`, `LOG_WARNING`, `LOG_INFO`,
    /// `LOG_DEBUG`.
    fn syslog_level(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static FD: AtomicI32 = AtomicI32::new(2);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// How archon writes its log lines without blocking.
#[derive(Clone, Copy)]
#[repr(i32)]
enum Sink {
    /// write(2) on fd 2 itself: a regular file (never blocks for long, and a second open file
    /// description would have its own offset and overwrite the children's output), or whatever
    /// could not be reopened.
    Direct = 0,
    /// write(2) on a non-blocking reopened copy of a pipe, FIFO or terminal.
    Reopened = 1,
    /// send(2) with MSG_DONTWAIT on a socket (journald's stdout stream).
    Socket = 2,
    /// write(2) of one record at a time on `/dev/kmsg`: process 1 without a usable stderr.
    Kmsg = 3,
}

/// Longest record archon writes to `/dev/kmsg`, in bytes, its priority prefix and final newline
/// counted: under the least the kernel has taken in one write (`LOG_LINE_MAX`, 992 bytes before
/// Linux 6.x, which takes 1024). A longer message is cut and ends with `...`.
pub const KMSG_RECORD_MAX: usize = 976;

/// The kernel's log, where process 1 writes when its stderr is not usable.
const KMSG: &std::ffi::CStr = c"/dev/kmsg";

/// `LOG_DAEMON` of syslog(3), the facility of archon's records in the kernel's log.
const LOG_DAEMON: u8 = 3 << 3;

/// The switch to `/dev/kmsg` was tried (it is tried once).
static KMSG_TRIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static SINK: AtomicI32 = AtomicI32::new(Sink::Direct as i32);

/// Sets the level and picks how to write to stderr without blocking. Called again (after the
/// early mounts have brought /proc, through which stderr is reopened), it starts over.
pub fn init(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let old = FD.swap(2, Ordering::Relaxed);
    SINK.store(Sink::Direct as i32, Ordering::Relaxed);
    if old != 2 {
        // SAFETY: the reopened copy of stderr, archon's own; nothing else holds it now.
        unsafe { libc::close(old) };
    }
    KMSG_TRIED.store(false, Ordering::Relaxed);
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: st is a valid stat buffer.
    let st = (unsafe { libc::fstat(2, st.as_mut_ptr()) } == 0).then(|| {
        // SAFETY: fstat succeeded and filled st.
        unsafe { st.assume_init() }
    });
    let usable = stderr_usable(st.as_ref().map(|st| (st.st_mode, st.st_rdev)));
    if !usable && crate::sys::is_pid1() && use_kmsg() {
        return;
    }
    let Some(st) = st else {
        return;
    };
    let mode = st.st_mode & libc::S_IFMT;
    match mode {
        libc::S_IFSOCK => SINK.store(Sink::Socket as i32, Ordering::Relaxed),
        libc::S_IFIFO | libc::S_IFCHR => {
            // SAFETY: opening a path; the fd returned is ours and is kept for archon's life.
            let fd = unsafe {
                libc::open(
                    c"/proc/self/fd/2".as_ptr(),
                    libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
                )
            };
            if fd >= 0 {
                FD.store(fd, Ordering::Relaxed);
                SINK.store(Sink::Reopened as i32, Ordering::Relaxed);
            }
        }
        _ => {}
    }
}

/// Whether stderr takes archon's log, from its `fstat` (`None` when that failed: fd 2 is
/// closed): not when it is `/dev/null` (the character device 1:3), where every line is lost.
pub fn stderr_usable(stat: Option<(libc::mode_t, libc::dev_t)>) -> bool {
    match stat {
        None => false,
        Some((mode, rdev)) => mode & libc::S_IFMT != libc::S_IFCHR || rdev != libc::makedev(1, 3),
    }
}

/// Whether a write that failed with `errno` says that stderr has gone for good (closed, its
/// reader gone, its terminal hung up), rather than that it is full for now.
fn stderr_gone(errno: i32) -> bool {
    matches!(errno, libc::EBADF | libc::EPIPE | libc::EIO | libc::ENXIO)
}

/// Opens `/dev/kmsg` and makes it the log's sink, once; false when it cannot be opened.
fn use_kmsg() -> bool {
    if KMSG_TRIED.swap(true, Ordering::Relaxed) {
        return SINK.load(Ordering::Relaxed) == Sink::Kmsg as i32;
    }
    // SAFETY: opening a path; the fd returned is ours and is kept for archon's life.
    let fd = unsafe {
        libc::open(
            KMSG.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return false;
    }
    let old = FD.swap(fd, Ordering::Relaxed);
    SINK.store(Sink::Kmsg as i32, Ordering::Relaxed);
    if old != 2 {
        // SAFETY: the reopened copy of stderr, archon's own; nothing else holds it now.
        unsafe { libc::close(old) };
    }
    true
}

/// One record of the kernel's log: `<priority>archon[<pid>]: <text>\n`, the priority the
/// daemon facility's and `level`'s; every CR and LF of `text` a space, so that it stays one
/// record; cut to [`KMSG_RECORD_MAX`] bytes at a character boundary, ending with `...`.
pub fn kmsg_record(level: Level, pid: u32, text: &str) -> Vec<u8> {
    let prefix = format!("<{}>archon[{pid}]: ", LOG_DAEMON | level.syslog_level());
    let room = KMSG_RECORD_MAX - prefix.len() - 1;
    let mut body: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    if body.len() > room {
        let mut cut = room - 3;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push_str("...");
    }
    let mut record = prefix.into_bytes();
    record.extend_from_slice(body.as_bytes());
    record.push(b'\n');
    record
}

/// True when messages of `level` are written.
/// Whether archon's log goes to the kernel's log already (process 1 without a usable stderr).
pub fn to_kmsg() -> bool {
    SINK.load(Ordering::Relaxed) == Sink::Kmsg as i32
}

pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level`.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    if SINK.load(Ordering::Relaxed) == Sink::Kmsg as i32 {
        return write_kmsg(level, &args.to_string());
    }
    let mut line = String::with_capacity(128);
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        line.push_str(&format!(
            "{} archon[{}]: warn: {dropped} log lines dropped (stderr full)\n",
            timestamp(),
            std::process::id()
        ));
    }
    line.push_str(&format!(
        "{} archon[{}]: {}: {args}\n",
        timestamp(),
        std::process::id(),
        level.name()
    ));
    if let Err(errno) = put(line.as_bytes()) {
        // The count this line carried is still owed.
        DROPPED.fetch_add(dropped, Ordering::Relaxed);
        if stderr_gone(errno) && crate::sys::is_pid1() && use_kmsg() {
            write_kmsg(level, &args.to_string());
        } else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes one message as a record of the kernel's log, after one that says how many were
/// dropped before, if any were.
fn write_kmsg(level: Level, text: &str) {
    let pid = std::process::id();
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let note = format!("{dropped} log lines dropped");
        let _ = put(&kmsg_record(Level::Warn, pid, &note));
    }
    if put(&kmsg_record(level, pid, text)).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes a line a service wrote, as `<time> <service>[<stream>]: <text>`, whatever the log
/// level (`--echo-logs`). Not to the kernel's log, which is for archon's own messages: a service
/// that floods its output would push them out.
pub fn echo(service: &str, stream: &str, text: &[u8]) {
    if SINK.load(Ordering::Relaxed) == Sink::Kmsg as i32 {
        return;
    }
    let line = format!(
        "{} {service}[{stream}]: {}\n",
        timestamp(),
        String::from_utf8_lossy(text)
    );
    if put(line.as_bytes()).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes `bytes` to the log's sink without ever blocking; on failure, the errno (EAGAIN for
/// what does not fit now).
fn put(bytes: &[u8]) -> Result<(), i32> {
    let fd: RawFd = FD.load(Ordering::Relaxed);
    let mut off = 0;
    while off < bytes.len() {
        let rest = &bytes[off..];
        // SAFETY: writing from a valid buffer to our log fd.
        let n = unsafe {
            if SINK.load(Ordering::Relaxed) == Sink::Socket as i32 {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            } else {
                libc::write(fd, rest.as_ptr().cast(), rest.len())
            }
        };
        if n > 0 {
            off += n as usize;
            continue;
        }
        let errno = if n < 0 {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            libc::EAGAIN
        };
        if errno == libc::EINTR {
            continue;
        }
        return Err(errno);
    }
    Ok(())
}

/// Now as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn timestamp() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since.as_millis() as u64)
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Logs at error level.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) } }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) } }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) } }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) } }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_carry_the_priority_and_stay_one_line() {
        let cases = [
            (Level::Error, "<27>"),
            (Level::Warn, "<28>"),
            (Level::Info, "<30>"),
            (Level::Debug, "<31>"),
        ];
        for (level, prio) in cases {
            assert_eq!(
                kmsg_record(level, 1, "up"),
                format!("{prio}archon[1]: up\n").into_bytes()
            );
        }
        assert_eq!(
            kmsg_record(Level::Info, 1, "a\nb\r\nc\n"),
            b"<30>archon[1]: a b  c \n"
        );
        let long = "é".repeat(KMSG_RECORD_MAX);
        let record = kmsg_record(Level::Warn, 1, &long);
        assert!(record.len() <= KMSG_RECORD_MAX, "{}", record.len());
        assert!(
            record.len() >= KMSG_RECORD_MAX - 4,
            "cut no shorter than needed"
        );
        let text = String::from_utf8(record);
        assert!(
            text.as_ref()
                .is_ok_and(|t| t.starts_with("<28>archon[1]: éé") && t.ends_with("é...\n")),
            "cut at a character boundary: {text:?}"
        );
        let exact = "x".repeat(KMSG_RECORD_MAX - "<30>archon[1]: \n".len());
        assert_eq!(kmsg_record(Level::Info, 1, &exact).len(), KMSG_RECORD_MAX);
        assert!(!String::from_utf8_lossy(&kmsg_record(Level::Info, 1, &exact)).contains("..."));
    }

    #[test]
    fn stderr_is_unusable_closed_or_dev_null() {
        assert!(!stderr_usable(None));
        assert!(!stderr_usable(Some((
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3)
        ))));
        // /dev/zero, a terminal, a pipe, a file, a socket take lines.
        assert!(stderr_usable(Some((
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 5)
        ))));
        assert!(stderr_usable(Some((
            libc::S_IFCHR | 0o620,
            libc::makedev(136, 0)
        ))));
        for mode in [libc::S_IFIFO, libc::S_IFREG, libc::S_IFSOCK] {
            assert!(stderr_usable(Some((mode | 0o600, libc::makedev(1, 3)))));
        }
        assert!(stderr_gone(libc::EPIPE) && stderr_gone(libc::EBADF) && stderr_gone(libc::EIO));
        assert!(!stderr_gone(libc::EAGAIN) && !stderr_gone(libc::ENOSPC));
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc(1_795_303_620_123), "2026-11-21T23:27:00.123Z");
    }
}
