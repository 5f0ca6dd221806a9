//! Replies out of a byte stream: framing, splitting and parsing, with the raw bytes kept.
//!
//! Pure: bytes go in with [`ReplyReader::feed`], whole replies come out of
//! [`ReplyReader::next_reply`], however the bytes were split by the reads. A `List` reply is
//! several records; it comes out once its last row is in. After a `Subscribe`'s reply, the
//! stream's items (`Event`, `Dropped`) come out of [`ReplyReader::next_item`], one record each.

use archon_proto::frame::{Frame, Framer};
use archon_proto::record;
use archon_proto::{Reply, ReplyError, ReplyParser, StreamItem};

/// Longest reply record accepted, in bytes (1 MiB). archon's longest record is a `List` row,
/// whose argv came in a request of at most 64 KiB; the margin allows for quoting. A longer record
/// means the stream is not archon's.
pub const MAX_REPLY_RECORD_LEN: usize = 1024 * 1024;

/// A reply, typed and as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The reply.
    pub reply: Reply,
    /// Its bytes exactly as received, every record with its terminator (`List,<n>` and its rows).
    pub raw: Vec<u8>,
}

/// An item of a `Subscribe` stream, typed and as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedItem {
    /// The item.
    pub item: StreamItem,
    /// Its record exactly as received, terminator included.
    pub raw: Vec<u8>,
}

/// Assembles replies from the bytes of a stream.
#[derive(Debug)]
pub struct ReplyReader {
    /// Bytes received and not yet returned; the reply being assembled starts at 0.
    buf: Vec<u8>,
    /// Where the record being framed starts in `buf`; the records before it belong to the reply
    /// being assembled and have been given to `parser`.
    rec: usize,
    framer: Framer,
    parser: ReplyParser,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    /// A reader at the start of a stream.
    pub fn new() -> Self {
        ReplyReader {
            buf: Vec::new(),
            rec: 0,
            framer: Framer::new(MAX_REPLY_RECORD_LEN),
            parser: ReplyParser::new(),
        }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received that are not part of a returned reply.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete reply, or `None` until more bytes are fed.
    ///
    /// A malformed reply is dropped from the buffer and reported; what follows it cannot be
    /// trusted to start a reply.
    pub fn next_reply(&mut self) -> Result<Option<Received>, ReplyError> {
        loop {
            match self.framer.next_frame(&self.buf[self.rec..]) {
                Frame::Incomplete => return Ok(None),
                Frame::Record { body, consumed } => {
                    let fields = record::split(&self.buf[self.rec..self.rec + body]);
                    self.rec += consumed;
                    match self.parser.push(&fields) {
                        Ok(None) => {}
                        Ok(Some(reply)) => {
                            let raw = self.buf.drain(..self.rec).collect();
                            self.rec = 0;
                            return Ok(Some(Received { reply, raw }));
                        }
                        Err(e) => return Err(self.drop_reply(e)),
                    }
                }
                Frame::Invalid { consumed, error } => {
                    self.rec += consumed;
                    return Err(self.drop_reply(ReplyError(error.reason().to_string())));
                }
                Frame::TooLong => {
                    // No way to find the next record: drop everything.
                    self.rec = self.buf.len();
                    return Err(self.drop_reply(ReplyError(format!(
                        "record longer than {MAX_REPLY_RECORD_LEN} bytes"
                    ))));
                }
            }
        }
    }

    /// The next item of a `Subscribe` stream, or `None` until more bytes are fed. Call it only
    /// between replies (after the `Subscribe`'s `Ok`): every record is then one item. A malformed
    /// record is dropped and reported.
    pub fn next_item(&mut self) -> Result<Option<ReceivedItem>, ReplyError> {
        match self.framer.next_frame(&self.buf[self.rec..]) {
            Frame::Incomplete => Ok(None),
            Frame::Record { body, consumed } => {
                let fields = record::split(&self.buf[self.rec..self.rec + body]);
                self.rec += consumed;
                let raw: Vec<u8> = self.buf.drain(..self.rec).collect();
                self.rec = 0;
                let item = StreamItem::from_fields(&fields)?;
                Ok(Some(ReceivedItem { item, raw }))
            }
            Frame::Invalid { consumed, error } => {
                self.rec += consumed;
                Err(self.drop_reply(ReplyError(error.reason().to_string())))
            }
            Frame::TooLong => {
                self.rec = self.buf.len();
                Err(self.drop_reply(ReplyError(format!(
                    "record longer than {MAX_REPLY_RECORD_LEN} bytes"
                ))))
            }
        }
    }

    fn drop_reply(&mut self, e: ReplyError) -> ReplyError {
        self.buf.drain(..self.rec);
        self.rec = 0;
        self.parser = ReplyParser::new();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{Kind, ProcState, ProcessRow, Status};

    fn rows() -> Vec<ProcessRow> {
        vec![
            ProcessRow {
                id: 1,
                kind: Kind::Run,
                pid: 10,
                state: ProcState::Exited,
                started_ms: 1_763_769_600_250,
                status: Some(Status::Signaled(9)),
                argv: vec![
                    b"/bin/sh".to_vec(),
                    b"-c".to_vec(),
                    b"printf '%s\\n' \"a,b\"\r\nexit 3".to_vec(),
                ],
            },
            ProcessRow {
                id: 2,
                kind: Kind::Monitor,
                pid: 11,
                state: ProcState::Running,
                started_ms: 5,
                status: None,
                argv: vec![],
            },
        ]
    }

    /// A stream of replies, as archon would write them on one connection.
    fn stream() -> (Vec<u8>, Vec<Reply>) {
        let replies = vec![
            Reply::started(3, 77),
            Reply::List(rows()),
            Reply::error("unknown request: \"x\"\nwith newline"),
            Reply::List(vec![]),
            Reply::ExitStatus(Status::Signaled(15)),
            Reply::Pong,
        ];
        let bytes = replies.iter().flat_map(Reply::encode).collect();
        (bytes, replies)
    }

    fn drain(reader: &mut ReplyReader, out: &mut Vec<Received>) {
        loop {
            match reader.next_reply() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => return,
                Err(e) => unreachable!("{e}"),
            }
        }
    }

    #[test]
    fn split_at_every_position() {
        let (bytes, replies) = stream();
        for cut in 0..=bytes.len() {
            let mut reader = ReplyReader::new();
            let mut got = Vec::new();
            reader.feed(&bytes[..cut]);
            drain(&mut reader, &mut got);
            reader.feed(&bytes[cut..]);
            drain(&mut reader, &mut got);
            assert_eq!(reader.pending(), 0, "cut at {cut}");
            let typed: Vec<Reply> = got.iter().map(|r| r.reply.clone()).collect();
            assert_eq!(typed, replies, "cut at {cut}");
            for r in &got {
                assert_eq!(r.raw, r.reply.encode(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let (bytes, replies) = stream();
        let mut reader = ReplyReader::new();
        let mut got = Vec::new();
        for b in &bytes {
            reader.feed(std::slice::from_ref(b));
            drain(&mut reader, &mut got);
        }
        assert_eq!(
            got.into_iter().map(|r| r.reply).collect::<Vec<_>>(),
            replies
        );
    }

    #[test]
    fn raw_bytes_are_kept_as_sent() {
        // \r\n terminators and needless quotes are legal; raw keeps them, the typed reply
        // does not care.
        let wire = b"\"Ok\",3,\"4\"\r\nList,1\r\nProcess,1,run,2,exited,0.000,0,\"echo\"\n";
        let mut reader = ReplyReader::new();
        reader.feed(wire);
        let Ok(Some(first)) = reader.next_reply() else {
            unreachable!("first reply")
        };
        assert_eq!(first.reply, Reply::started(3, 4));
        assert_eq!(first.raw, b"\"Ok\",3,\"4\"\r\n");
        let Ok(Some(second)) = reader.next_reply() else {
            unreachable!("second reply")
        };
        assert_eq!(second.raw, &wire[first.raw.len()..]);
        assert!(matches!(second.reply, Reply::List(ref rows) if rows.len() == 1));
    }

    #[test]
    fn malformed_replies_are_dropped_and_reported() {
        let mut reader = ReplyReader::new();
        reader.feed(b"Nope,1\nPong\nList,2\nProcess,1,run,2,exited,0.000,0\nBad\nOk\"x\nPong\n");
        assert!(reader.next_reply().is_err());
        assert!(matches!(
            reader.next_reply(),
            Ok(Some(Received {
                reply: Reply::Pong,
                ..
            }))
        ));
        // A bad row drops the List so far.
        assert!(reader.next_reply().is_err());
        // A framing error drops its line.
        assert!(reader.next_reply().is_err());
        assert!(matches!(
            reader.next_reply(),
            Ok(Some(Received {
                reply: Reply::Pong,
                ..
            }))
        ));
        assert_eq!(reader.pending(), 0);
    }

    #[test]
    fn overlong_records_are_refused() {
        let mut reader = ReplyReader::new();
        reader.feed(&vec![b'x'; MAX_REPLY_RECORD_LEN + 1]);
        assert!(reader.next_reply().is_err());
        assert_eq!(reader.pending(), 0);
    }
    #[test]
    fn a_subscribe_reply_then_its_stream() {
        use archon_proto::{Cause, Event, EventKind, ServiceKind, ServiceState};
        let event = Event {
            seq: 9,
            time_ms: 1_000,
            subject: b"web".to_vec(),
            kind: ServiceKind::Service,
            what: EventKind::Exit,
            old: Some(ServiceState::Ready),
            new: Some(ServiceState::Backoff),
            pid: Some(5),
            status: Some(Status::Exited(1)),
            reason: b"exited with code 1,\nand more".to_vec(),
            cause: Cause::Archon,
        };
        let mut wire = Reply::subscribed(9).encode();
        let items = [StreamItem::Event(event), StreamItem::Dropped(3)];
        for i in &items {
            i.encode_into(&mut wire);
        }
        for cut in 0..=wire.len() {
            let mut reader = ReplyReader::new();
            reader.feed(&wire[..cut]);
            let mut first = reader.next_reply();
            if matches!(first, Ok(None)) {
                reader.feed(&wire[cut..]);
                first = reader.next_reply();
                assert!(matches!(first, Ok(Some(ref r)) if r.reply == Reply::subscribed(9)));
            } else {
                assert!(matches!(first, Ok(Some(ref r)) if r.reply == Reply::subscribed(9)));
                reader.feed(&wire[cut..]);
            }
            let mut got = Vec::new();
            while let Ok(Some(r)) = reader.next_item() {
                assert_eq!(r.raw, r.item.encode());
                got.push(r.item);
            }
            assert_eq!(got, items, "cut at {cut}");
            assert_eq!(reader.pending(), 0);
        }
        let mut reader = ReplyReader::new();
        reader.feed(b"Pong\nDropped,1\n");
        assert!(reader.next_item().is_err());
        assert!(matches!(
            reader.next_item(),
            Ok(Some(ReceivedItem {
                item: StreamItem::Dropped(1),
                ..
            }))
        ));
    }
}
