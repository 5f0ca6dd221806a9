//! Captured log lines: what a service wrote on its stdout or stderr, one line each, as `Logs`
//! sends its rows and `FollowLogs` its stream; and the syslog levels that filter them.

use crate::record;
use crate::reply::{ReplyError, bad, kind, millis_from_field, millis_to_field};
use crate::request::parse_u64;

/// The syslog levels, most severe first: `<0>` (emerg) to `<7>` (debug), as an sd-daemon
/// prefix writes them and as `Logs` and `FollowLogs` filter by.
pub const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The least severe level, `debug`: a filter at it takes every line.
pub const LEVEL_DEBUG: u8 = 7;

/// The level of a line without a `<N>` prefix, on stdout and on stderr alike: `info`, as
/// systemd's journal has it. Most daemons write all their messages to stderr, so stderr is no
/// sign of an error; the `<stream>` field tells the two apart.
pub const DEFAULT_LEVEL: u8 = 6;

/// Reads a level: its number (`0` to `7`) or its name (`err`, `warning`, ...; also `error`
/// and `warn`).
pub fn parse_level(field: &[u8]) -> Option<u8> {
    if let [d @ b'0'..=b'7'] = field {
        return Some(d - b'0');
    }
    match field {
        b"error" => return Some(3),
        b"warn" => return Some(4),
        _ => {}
    }
    LEVELS
        .iter()
        .position(|l| l.as_bytes() == field)
        .map(|i| i as u8)
}

/// The level's name, `?` beyond 7.
pub fn level_name(level: u8) -> &'static str {
    LEVELS.get(usize::from(level)).copied().unwrap_or("?")
}

/// Which of a service's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// Its fd 1.
    Stdout,
    /// Its fd 2.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`, as the wire spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }

    fn from_field(field: &[u8]) -> Option<LogStream> {
        match field {
            b"stdout" => Some(LogStream::Stdout),
            b"stderr" => Some(LogStream::Stderr),
            _ => None,
        }
    }
}

/// The word of a `Log` row's last field when the line was longer than
/// [`MAX_LOG_LINE`](crate::limits::MAX_LOG_LINE) and was cut there: the rest of it comes as
/// the next line.
pub const CUT: &str = "cut";

/// One line: `Log,<time>,<stream>,<level>,<text>[,cut]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogLine {
    /// When archon read it, in milliseconds since the epoch (on the wire `<s>.<ms>`).
    pub time_ms: u64,
    /// stdout or stderr.
    pub stream: LogStream,
    /// Its level: from its `<N>` prefix, else [`DEFAULT_LEVEL`].
    pub level: u8,
    /// The line without its prefix and its `\n`; never holds `\n` or NUL.
    pub text: Vec<u8>,
    /// It was cut at [`MAX_LOG_LINE`](crate::limits::MAX_LOG_LINE) bytes.
    pub cut: bool,
}

impl LogLine {
    /// Appends the line's record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let time = millis_to_field(self.time_ms);
        let level = [b'0' + self.level.min(LEVEL_DEBUG)];
        let head: [&[u8]; 5] = [
            kind::LOG.as_bytes(),
            &time,
            self.stream.as_str().as_bytes(),
            &level,
            &self.text,
        ];
        if self.cut {
            record::join_into(head.into_iter().chain([CUT.as_bytes()]), out);
        } else {
            record::join_into(head, out);
        }
    }

    /// The line's record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Reads a `Log` record.
    pub fn from_fields(fields: &[Vec<u8>]) -> Result<LogLine, ReplyError> {
        let (head, time, stream, level, text, cut) = match fields {
            [h, t, s, l, x] => (h, t, s, l, x, false),
            [h, t, s, l, x, c] if c == CUT.as_bytes() => (h, t, s, l, x, true),
            _ => return Err(bad("a Log row has five or six fields")),
        };
        if head != kind::LOG.as_bytes() {
            return Err(bad("expected a Log row"));
        }
        Ok(LogLine {
            time_ms: millis_from_field(time).ok_or_else(|| bad("log time"))?,
            stream: LogStream::from_field(stream).ok_or_else(|| bad("log stream"))?,
            level: parse_u64(level)
                .filter(|&l| l <= u64::from(LEVEL_DEBUG) && level.len() == 1)
                .map(|l| l as u8)
                .ok_or_else(|| bad("log level"))?,
            text: text.clone(),
            cut,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_read_as_numbers_and_names() {
        assert_eq!(parse_level(b"3"), Some(3));
        assert_eq!(parse_level(b"err"), Some(3));
        assert_eq!(parse_level(b"error"), Some(3));
        assert_eq!(parse_level(b"warn"), Some(4));
        assert_eq!(parse_level(b"debug"), Some(7));
        assert_eq!(parse_level(b"8"), None);
        assert_eq!(parse_level(b"03"), None);
        assert_eq!(parse_level(b""), None);
        assert_eq!(level_name(6), "info");
    }

    #[test]
    fn a_line_reads_back_as_itself() {
        for (line, wire) in [
            (
                LogLine {
                    time_ms: 1_500,
                    stream: LogStream::Stderr,
                    level: 3,
                    text: b"oops, \"quoted\"".to_vec(),
                    cut: false,
                },
                &b"Log,1.500,stderr,3,\"oops, \"\"quoted\"\"\"\n"[..],
            ),
            (
                LogLine {
                    time_ms: 2,
                    stream: LogStream::Stdout,
                    level: 6,
                    text: Vec::new(),
                    cut: true,
                },
                b"Log,0.002,stdout,6,,cut\n",
            ),
        ] {
            assert_eq!(line.encode(), wire);
            let fields = record::split(&wire[..wire.len() - 1]);
            assert_eq!(LogLine::from_fields(&fields), Ok(line));
        }
        for bad in [
            "Log,1.000,stdout,6",
            "Log,1.000,stdin,6,x",
            "Log,1.000,stdout,8,x",
            "Log,1.000,stdout,6,x,y",
            "Log,1,stdout,6,x",
        ] {
            assert!(
                LogLine::from_fields(&record::split(bad.as_bytes())).is_err(),
                "{bad}"
            );
        }
    }
}
