//! archon's own log: one line per message on stderr, `<UTC time> archon[<pid>]: <level>: <text>`.
//!
//! The loop must never block on its log. Setting O_NONBLOCK on fd 2 would also change it for every
//! child that shares it, so for a pipe or a terminal archon writes through a second open file
//! description (reopened through /proc/self/fd/2) that alone is non-blocking, and for a socket it
//! uses `send(MSG_DONTWAIT)`. A line that would block is dropped and counted; the count is reported
//! with the next line that gets through.

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
}

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
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: st is a valid stat buffer.
    if unsafe { libc::fstat(2, st.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: fstat succeeded and filled st.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
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

/// True when messages of `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level`.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
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
    put(&line);
}

/// Writes a line a service wrote, as `<time> <service>[<stream>]: <text>`, whatever the log
/// level (`--echo-logs`).
pub fn echo(service: &str, stream: &str, text: &[u8]) {
    put(&format!(
        "{} {service}[{stream}]: {}\n",
        timestamp(),
        String::from_utf8_lossy(text)
    ));
}

/// Writes `line` to the log's sink without ever blocking: what does not fit is counted as
/// dropped.
fn put(line: &str) {
    let fd: RawFd = FD.load(Ordering::Relaxed);
    let bytes = line.as_bytes();
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
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
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
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc(1_795_303_620_123), "2026-11-21T23:27:00.123Z");
    }
}
