//! Raw lines: text a user typed, sent to archon as it is, with only a `\n` added when missing.
//!
//! The text is not checked (archon's replies to bad lines are part of what a raw line shows),
//! but the client must know how many replies it will get, and whether archon needs to see the end
//! of the stream to give the last one: it frames the text as archon will.

use archon_proto::frame::{Frame, Framer};
use archon_proto::record;

/// A raw line ready to send, and what archon will make of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// The bytes to send: the text, with a `\n` appended unless it ends with one.
    pub bytes: Vec<u8>,
    /// The first field of each record archon will answer, in order: `Some(verb)` for a record
    /// that frames, `None` for one archon answers with a framing error (or the too-long error).
    /// One entry per reply to expect.
    pub verbs: Vec<Option<Vec<u8>>>,
    /// The text ends inside a quoted field, so its last record never ends: archon answers it
    /// (with an error) only once the client shuts down its side of the connection.
    pub unterminated: bool,
    /// Length of the first record with its terminator: fds go with exactly these bytes, in one
    /// sendmsg, because archon gives fds to the request that holds the last byte of the read
    /// that brought them.
    pub first_len: usize,
}

impl RawLine {
    /// Frames `text` as archon will.
    pub fn new(text: &[u8]) -> RawLine {
        let bytes = with_newline(text);
        let mut verbs = Vec::new();
        let mut unterminated = false;
        let mut framer = Framer::default();
        let mut rest = &bytes[..];
        let mut first_len = bytes.len();
        while !rest.is_empty() {
            if verbs.len() == 1 {
                first_len = bytes.len() - rest.len();
            }
            match framer.next_frame(rest) {
                Frame::Record { body, consumed } => {
                    verbs.push(Some(
                        record::split(&rest[..body])
                            .into_iter()
                            .next()
                            .unwrap_or_default(),
                    ));
                    rest = &rest[consumed..];
                }
                Frame::Invalid { consumed, .. } => {
                    verbs.push(None);
                    rest = &rest[consumed..];
                }
                // archon answers `Error,request too long` and closes the connection.
                Frame::TooLong => {
                    verbs.push(None);
                    break;
                }
                Frame::Incomplete => {
                    verbs.push(None);
                    unterminated = true;
                    break;
                }
            }
        }
        RawLine {
            bytes,
            verbs,
            unterminated,
            first_len,
        }
    }

    /// True when the first request is a `Run`: archonctl then attaches its own stdio.
    pub fn starts_with_run(&self) -> bool {
        matches!(self.verbs.first(), Some(Some(v)) if v == archon_proto::request::verb::RUN.as_bytes())
    }
}

/// `text` with a `\n` appended unless it already ends with one.
pub fn with_newline(text: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(text.len() + 1);
    line.extend_from_slice(text);
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::limits::MAX_REQUEST_LEN;

    fn verbs(list: &[Option<&str>]) -> Vec<Option<Vec<u8>>> {
        list.iter()
            .map(|v| v.map(|s| s.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn newline_is_added_only_when_missing() {
        assert_eq!(with_newline(b"Ping"), b"Ping\n");
        assert_eq!(with_newline(b"Ping\n"), b"Ping\n");
        assert_eq!(with_newline(b"Ping\r"), b"Ping\r\n");
        assert_eq!(with_newline(b""), b"\n");
    }

    /// A raw text, the verbs archon will see, and whether it ends inside a quoted field.
    type Case<'a> = (&'a [u8], &'a [Option<&'a str>], bool);

    #[test]
    fn one_reply_per_record() {
        let cases: &[Case<'_>] = &[
            (b"Ping", &[Some("Ping")], false),
            (b"Run,/bin/echo,hi", &[Some("Run")], false),
            (b"", &[Some("")], false),
            (b"Ping\nVersion", &[Some("Ping"), Some("Version")], false),
            (b"Ping\n\n", &[Some("Ping"), Some("")], false),
            (b"Run,\"a\nb\",c", &[Some("Run")], false),
            (b"\"Run\",x", &[Some("Run")], false),
            (b"Run,a\"b\nPing", &[None, Some("Ping")], false),
            (b"Ru\0n", &[None], false),
            (b"Run,\"abc", &[None], true),
            (b"Ping\nRun,\"abc", &[Some("Ping"), None], true),
        ];
        for (text, want, unterminated) in cases {
            let line = RawLine::new(text);
            let show = String::from_utf8_lossy(text);
            assert_eq!(line.verbs, verbs(want), "{show:?}");
            assert_eq!(line.unterminated, *unterminated, "{show:?}");
            assert_eq!(line.bytes, with_newline(text), "{show:?}");
        }
    }

    #[test]
    fn too_long_is_one_reply_then_the_end() {
        let mut text = vec![b'x'; MAX_REQUEST_LEN + 5];
        text.extend_from_slice(b"\nPing");
        let line = RawLine::new(&text);
        assert_eq!(line.verbs, vec![None]);
        assert!(!line.unterminated);
    }

    #[test]
    fn run_lines_are_recognised() {
        assert!(RawLine::new(b"Run,/bin/true").starts_with_run());
        assert!(RawLine::new(b"Run,,1,/bin/true\nPing").starts_with_run());
        assert!(!RawLine::new(b"run,/bin/true").starts_with_run());
        assert!(!RawLine::new(b"StartDaemon,/bin/true").starts_with_run());
        assert!(!RawLine::new(b"Run,a\"b").starts_with_run());
    }

    #[test]
    fn first_record_is_split_off_for_its_fds() {
        assert_eq!(RawLine::new(b"Run,/bin/true").first_len, 14);
        assert_eq!(RawLine::new(b"Run,/bin/true\nPing").first_len, 14);
        assert_eq!(RawLine::new(b"Run,\"a\nb\"\nPing\n").first_len, 10);
        assert_eq!(RawLine::new(b"Run,\"abc").first_len, 9);
    }
}
