//! Framing: where one CSV record ends in a byte stream.
//!
//! A record ends at the first `\n` that is not inside a quoted field (a `\r` just before it is
//! dropped). The grammar is strict RFC 4180, so that the quote state is always known and an error
//! is found at once instead of swallowing the following lines:
//!
//! - a `"` may appear only as the first byte of a field (which is then quoted) or, doubled, inside a
//!   quoted field;
//! - after a quoted field's closing quote comes `,` or the end of the record;
//! - a NUL byte is an error anywhere, quoted or not.
//!
//! A quoted field may hold `,`, `\r` and `\n`, so any argument can be sent. After an error the
//! record is skipped up to the next `\n`, whatever the quotes, so one bad line costs one reply.
//! The scan is incremental: a line that arrives in many pieces is scanned once.

use memchr::{memchr, memchr3};

use crate::limits::MAX_REQUEST_LEN;

/// What is wrong with a record, found while framing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A NUL byte, which no argument, variable or name can hold.
    Nul,
    /// A `"` inside an unquoted field.
    StrayQuote,
    /// Something other than `,` or the end of the record after a closing quote.
    AfterQuote,
    /// The stream ended inside a quoted field.
    UnbalancedQuote,
    /// The stream ended in the middle of a record (no terminating `\n`).
    Unterminated,
}

impl FrameError {
    /// The reason given in the `Error,<reason>` reply.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Nul => "NUL byte in request",
            FrameError::StrayQuote => "unbalanced quote: '\"' inside an unquoted field",
            FrameError::AfterQuote => "unbalanced quote: text after a closing quote",
            FrameError::UnbalancedQuote => "unbalanced quote: request ends inside a quoted field",
            FrameError::Unterminated => "unterminated request: no newline before end of stream",
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// What [`Framer::next_frame`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// No complete record yet: read more and call again.
    Incomplete,
    /// A record: its text is `buf[..body]` (without `\r\n`), and `consumed` bytes (with the
    /// terminator) must be removed from the front of the buffer before the next call.
    Record {
        /// Length of the record's text.
        body: usize,
        /// Bytes to remove from the front of the buffer.
        consumed: usize,
    },
    /// A malformed record, skipped up to and with its `\n`: remove `consumed` bytes and answer
    /// `Error,<reason>`.
    Invalid {
        /// Bytes to remove from the front of the buffer.
        consumed: usize,
        /// What is wrong.
        error: FrameError,
    },
    /// The record is longer than the limit. The stream cannot be resynchronised: answer
    /// `Error,request too long` and close.
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first byte of a field.
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just after a `"` inside a quoted field: a doubled quote or the closing one.
    QuoteSeen,
    /// A `\r` after a closing quote: only `\n` may follow.
    CrAfterQuote,
    /// Skipping a malformed record up to its `\n`.
    Skip(FrameError),
}

/// Finds record boundaries in a growing buffer; see the module documentation for the grammar.
///
/// Call [`next_frame`](Self::next_frame) with a buffer that starts at the record being framed. The
/// buffer may only grow at its end between calls, until a call returns something other than
/// [`Frame::Incomplete`]; the caller then removes `consumed` bytes from its front and the framer
/// starts afresh.
#[derive(Debug, Clone)]
pub struct Framer {
    pos: usize,
    state: State,
    limit: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new(MAX_REQUEST_LEN)
    }
}

impl Framer {
    /// A framer for records of at most `limit` bytes, terminator included.
    pub fn new(limit: usize) -> Self {
        Framer {
            pos: 0,
            state: State::FieldStart,
            limit,
        }
    }

    /// True when no byte of a record has been scanned: the stream is between records.
    pub fn at_boundary(&self) -> bool {
        self.pos == 0
    }

    fn reset(&mut self) {
        self.pos = 0;
        self.state = State::FieldStart;
    }

    /// Frames the record at the front of `buf`.
    pub fn next_frame(&mut self, buf: &[u8]) -> Frame {
        let frame = self.scan(buf);
        match frame {
            Frame::Incomplete if buf.len() >= self.limit => {
                self.reset();
                Frame::TooLong
            }
            Frame::Incomplete => frame,
            Frame::Record { consumed, .. } | Frame::Invalid { consumed, .. }
                if consumed > self.limit =>
            {
                self.reset();
                Frame::TooLong
            }
            Frame::Record { body, consumed } => {
                self.reset();
                match memchr(0, &buf[..body]) {
                    Some(_) => Frame::Invalid {
                        consumed,
                        error: FrameError::Nul,
                    },
                    None => frame,
                }
            }
            _ => {
                self.reset();
                frame
            }
        }
    }

    /// The stream has ended with `buf` unconsumed: says what is wrong with the unterminated record
    /// it holds, if it holds any. The record is never executed: a client that disconnects mid-line
    /// has not asked for anything.
    pub fn finish(&mut self, buf: &[u8]) -> Option<FrameError> {
        if buf.is_empty() {
            return None;
        }
        let _ = self.scan(buf);
        let error = match self.state {
            State::Skip(error) => error,
            State::Quoted => FrameError::UnbalancedQuote,
            _ if memchr(0, buf).is_some() => FrameError::Nul,
            _ => FrameError::Unterminated,
        };
        self.reset();
        Some(error)
    }

    fn scan(&mut self, buf: &[u8]) -> Frame {
        let end = buf.len().min(self.limit);
        while self.pos < end {
            let i = self.pos;
            match self.state {
                State::FieldStart => {
                    self.state = match buf[i] {
                        b'"' => State::Quoted,
                        b',' => State::FieldStart,
                        b'\n' => return record_at(buf, i),
                        _ => State::Unquoted,
                    };
                    self.pos += 1;
                }
                State::Unquoted => match memchr3(b',', b'"', b'\n', &buf[i..end]) {
                    None => self.pos = end,
                    Some(off) => {
                        let j = i + off;
                        self.pos = j + 1;
                        match buf[j] {
                            b',' => self.state = State::FieldStart,
                            b'\n' => return record_at(buf, j),
                            _ => self.skip(FrameError::StrayQuote),
                        }
                    }
                },
                State::Quoted => match memchr(b'"', &buf[i..end]) {
                    None => self.pos = end,
                    Some(off) => {
                        self.pos = i + off + 1;
                        self.state = State::QuoteSeen;
                    }
                },
                State::QuoteSeen => {
                    self.pos += 1;
                    match buf[i] {
                        b'"' => self.state = State::Quoted,
                        b',' => self.state = State::FieldStart,
                        b'\r' => self.state = State::CrAfterQuote,
                        b'\n' => return record_at(buf, i),
                        _ => self.skip(FrameError::AfterQuote),
                    }
                }
                State::CrAfterQuote => {
                    self.pos += 1;
                    match buf[i] {
                        b'\n' => return record_at(buf, i),
                        _ => self.skip(FrameError::AfterQuote),
                    }
                }
                State::Skip(error) => match memchr(b'\n', &buf[i..end]) {
                    None => self.pos = end,
                    Some(off) => {
                        return Frame::Invalid {
                            consumed: i + off + 1,
                            error,
                        };
                    }
                },
            }
        }
        Frame::Incomplete
    }

    fn skip(&mut self, error: FrameError) {
        self.state = State::Skip(error);
    }
}

/// The record that ends with the `\n` at `lf`.
fn record_at(buf: &[u8], lf: usize) -> Frame {
    let body = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Frame::Record {
        body,
        consumed: lf + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(input: &[u8]) -> Frame {
        Framer::default().next_frame(input)
    }

    /// Feeds `input` one byte at a time; the result must not depend on how the bytes arrive.
    fn frame_bytewise(input: &[u8]) -> Frame {
        let mut f = Framer::default();
        for n in 1..=input.len() {
            let r = f.next_frame(&input[..n]);
            if r != Frame::Incomplete {
                return r;
            }
        }
        Frame::Incomplete
    }

    #[test]
    fn table() {
        use FrameError::*;
        let cases: &[(&[u8], Frame)] = &[
            (
                b"Ping\n",
                Frame::Record {
                    body: 4,
                    consumed: 5,
                },
            ),
            (
                b"Ping\r\n",
                Frame::Record {
                    body: 4,
                    consumed: 6,
                },
            ),
            (
                b"\n",
                Frame::Record {
                    body: 0,
                    consumed: 1,
                },
            ),
            (b"Ping", Frame::Incomplete),
            (
                b"Run,\"a\nb\",x\n",
                Frame::Record {
                    body: 11,
                    consumed: 12,
                },
            ),
            (
                b"Run,\"a,\"\"b\"\"\"\n",
                Frame::Record {
                    body: 13,
                    consumed: 14,
                },
            ),
            (
                b"Run,\"a\"\r\n",
                Frame::Record {
                    body: 7,
                    consumed: 9,
                },
            ),
            (b"Run,\"a", Frame::Incomplete),
            (b"Run,\"a\"", Frame::Incomplete),
            (
                b"Run,a\"b\nPing\n",
                Frame::Invalid {
                    consumed: 8,
                    error: StrayQuote,
                },
            ),
            (
                b"Run,\"a\"b\nPing\n",
                Frame::Invalid {
                    consumed: 9,
                    error: AfterQuote,
                },
            ),
            (
                b"Run,\"a\"\rb\n",
                Frame::Invalid {
                    consumed: 10,
                    error: AfterQuote,
                },
            ),
            (
                b"Run,\"a\" \n",
                Frame::Invalid {
                    consumed: 9,
                    error: AfterQuote,
                },
            ),
            (
                b"Ru\0n\n",
                Frame::Invalid {
                    consumed: 5,
                    error: Nul,
                },
            ),
            (
                b"Run,\"\0\"\n",
                Frame::Invalid {
                    consumed: 8,
                    error: Nul,
                },
            ),
            (
                b"a,,b\n",
                Frame::Record {
                    body: 4,
                    consumed: 5,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                frame(input),
                *want,
                "whole: {:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                frame_bytewise(input),
                *want,
                "bytewise: {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limit_counts_the_terminator() {
        let mut line = vec![b'a'; MAX_REQUEST_LEN - 1];
        line.push(b'\n');
        assert_eq!(
            frame(&line),
            Frame::Record {
                body: MAX_REQUEST_LEN - 1,
                consumed: MAX_REQUEST_LEN
            }
        );
        let mut line = vec![b'a'; MAX_REQUEST_LEN];
        line.push(b'\n');
        assert_eq!(frame(&line), Frame::TooLong);
        assert_eq!(frame(&vec![b'a'; MAX_REQUEST_LEN]), Frame::TooLong);
        // An open quote does not lift the limit.
        let mut line = b"Run,\"".to_vec();
        line.resize(MAX_REQUEST_LEN + 10, b'\n');
        assert_eq!(frame(&line), Frame::TooLong);
    }

    #[test]
    fn framer_resets_after_each_record() {
        let mut f = Framer::default();
        let buf = b"Run,\"x\ny\"\nPing\n";
        let Frame::Record { consumed, .. } = f.next_frame(buf) else {
            unreachable!("first record");
        };
        assert!(f.at_boundary());
        assert_eq!(
            f.next_frame(&buf[consumed..]),
            Frame::Record {
                body: 4,
                consumed: 5
            }
        );
    }

    #[test]
    fn finish_names_what_is_left() {
        assert_eq!(Framer::default().finish(b""), None);
        assert_eq!(
            Framer::default().finish(b"Run,/bin/sl"),
            Some(FrameError::Unterminated)
        );
        assert_eq!(
            Framer::default().finish(b"Run,\"abc"),
            Some(FrameError::UnbalancedQuote)
        );
        assert_eq!(
            Framer::default().finish(b"Run,\"abc\nxyz"),
            Some(FrameError::UnbalancedQuote)
        );
        assert_eq!(
            Framer::default().finish(b"Run,a\"b"),
            Some(FrameError::StrayQuote)
        );
        assert_eq!(Framer::default().finish(b"Ru\0n"), Some(FrameError::Nul));
    }
}
