//! Signal names and numbers as they appear on the wire (`ExitStatus,137,SIGKILL`, `Signal,3,HUP`).
//!
//! The numbers are Linux's generic ones (x86, Arm, RISC-V, and the other architectures that use
//! `asm-generic/signal.h`); a unit test checks them against `libc` on the build target. Realtime
//! signals are named as `kill -l` names them under glibc, whose `SIGRTMIN` is 34: `SIGRTMIN+N`.
//! Signals 32 and 33, which glibc keeps for itself, are `SIG32` and `SIG33`.

const NAMES: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// Other names a request may use for a signal.
const ALIASES: [(&str, i32); 3] = [("SIGIOT", 6), ("SIGCLD", 17), ("SIGPOLL", 29)];

/// The highest signal number on Linux.
pub const MAX_SIGNAL: i32 = 64;

/// glibc's `SIGRTMIN`, the base of the `SIGRTMIN+N` names.
const RTMIN: i32 = 34;

/// The name of signal `signo` (`SIGKILL` for 9), or `None` if it is not a signal number.
pub fn name(signo: i32) -> Option<String> {
    match signo {
        1..=31 => Some(NAMES[(signo - 1) as usize].to_string()),
        32 | 33 => Some(format!("SIG{signo}")),
        RTMIN => Some("SIGRTMIN".to_string()),
        35..=MAX_SIGNAL => Some(format!("SIGRTMIN+{}", signo - RTMIN)),
        _ => None,
    }
}

/// The number of the signal named `text`: a number from 0 to 64 (0 only checks that the process
/// exists), or a name with or without `SIG`, in any case (`TERM`, `sigterm`, `SIGRTMIN+2`).
pub fn parse(text: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(text).ok()?;
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().filter(|n| (0..=MAX_SIGNAL).contains(n));
    }
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Some(i) = NAMES.iter().position(|n| *n == full) {
        return Some(i as i32 + 1);
    }
    if let Some((_, n)) = ALIASES.iter().find(|(a, _)| *a == full) {
        return Some(*n);
    }
    if full == "SIGRTMIN" {
        return Some(RTMIN);
    }
    if full == "SIGRTMAX" {
        return Some(MAX_SIGNAL);
    }
    if let Some(k) = full.strip_prefix("SIGRTMIN+") {
        let k: i32 = k.parse().ok()?;
        return RTMIN
            .checked_add(k)
            .filter(|n| (RTMIN..=MAX_SIGNAL).contains(n));
    }
    if let Some(n) = full.strip_prefix("SIG") {
        return n.parse().ok().filter(|n| matches!(n, 32 | 33));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_target() {
        let known = [
            (libc::SIGHUP, "SIGHUP"),
            (libc::SIGINT, "SIGINT"),
            (libc::SIGKILL, "SIGKILL"),
            (libc::SIGUSR1, "SIGUSR1"),
            (libc::SIGSEGV, "SIGSEGV"),
            (libc::SIGUSR2, "SIGUSR2"),
            (libc::SIGPIPE, "SIGPIPE"),
            (libc::SIGTERM, "SIGTERM"),
            (libc::SIGCHLD, "SIGCHLD"),
            (libc::SIGCONT, "SIGCONT"),
            (libc::SIGSTOP, "SIGSTOP"),
            (libc::SIGTSTP, "SIGTSTP"),
            (libc::SIGWINCH, "SIGWINCH"),
            (libc::SIGIO, "SIGIO"),
            (libc::SIGPWR, "SIGPWR"),
            (libc::SIGSYS, "SIGSYS"),
        ];
        for (n, s) in known {
            assert_eq!(name(n).as_deref(), Some(s));
            assert_eq!(parse(s.as_bytes()), Some(n));
        }
        assert_eq!(libc::SIGRTMAX(), MAX_SIGNAL);
        assert_eq!(libc::SIGRTMIN(), RTMIN);
    }

    #[test]
    fn every_number_round_trips() {
        for n in 1..=MAX_SIGNAL {
            let s = name(n).unwrap_or_default();
            assert_eq!(parse(s.as_bytes()), Some(n), "{s}");
        }
        assert_eq!(name(0), None);
        assert_eq!(name(65), None);
    }

    #[test]
    fn parses_loose_spellings() {
        assert_eq!(parse(b"term"), Some(15));
        assert_eq!(parse(b"Hup"), Some(1));
        assert_eq!(parse(b"9"), Some(9));
        assert_eq!(parse(b"0"), Some(0));
        assert_eq!(parse(b"SIGRTMAX"), Some(64));
        assert_eq!(parse(b"RTMIN+30"), Some(64));
        for bad in [
            &b""[..],
            b"65",
            b"-1",
            b"SIGFOO",
            b"RTMIN+31",
            b"RTMIN+2147483647",
            b"SIGRTMIN+2147483614",
            b"SIG34",
            b"\xff",
            b"+9",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
