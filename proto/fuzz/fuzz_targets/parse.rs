//! Fuzz target `parse`: arbitrary bytes through archon's reading loop and the request and reply
//! parsers.
//!
//! The bytes are framed as archon frames a connection (frame, remove `consumed`, repeat, `finish`
//! at the end of the stream), at once, one byte per read and in small reads: the three must agree,
//! and every frame must keep the framer's promises. Every record is parsed as a request; one that
//! parses must encode to one line that parses back to it, and the `Error` reply to one that does
//! not must read back whole. The records also go through a `ReplyParser`, as a client reads them,
//! and every reply it completes must encode and read back to itself; and as an item of a
//! `Subscribe` stream, which must do the same. A framed record must split into the fields RFC
//! 4180 gives it.
#![no_main]

use archon_proto::limits::MAX_REQUEST_LEN;
use archon_proto::{
    Frame, FrameError, Framer, Reply, ReplyParser, Request, RequestError, StreamItem, record,
};
use libfuzzer_sys::fuzz_target;

/// What the framer made of one record.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Record(Vec<u8>),
    Invalid(FrameError),
    TooLong,
}

/// archon's loop over `data` arriving in reads of `chunk` bytes, checking every frame.
fn serve(data: &[u8], chunk: usize, limit: usize) -> (Vec<Item>, Option<FrameError>) {
    let mut framer = Framer::new(limit);
    let mut items = Vec::new();
    let mut start = 0;
    let mut arrived = 0;
    while arrived < data.len() {
        arrived = (arrived + chunk).min(data.len());
        loop {
            let buf = &data[start..arrived];
            match framer.next_frame(buf) {
                Frame::Incomplete => {
                    assert!(buf.len() < limit, "Incomplete at the limit");
                    break;
                }
                Frame::Record { body, consumed } => {
                    assert!(
                        consumed <= buf.len() && consumed <= limit,
                        "consumed {consumed}"
                    );
                    assert!(body < consumed, "body {body} consumed {consumed}");
                    assert_eq!(buf[consumed - 1], b'\n');
                    assert!(
                        body + 1 == consumed || (body + 2 == consumed && buf[body] == b'\r'),
                        "bytes between body and terminator"
                    );
                    assert!(!buf[..body].contains(&0), "record with a NUL");
                    items.push(Item::Record(buf[..body].to_vec()));
                    start += consumed;
                }
                Frame::Invalid { consumed, error } => {
                    assert!(consumed >= 1, "Invalid consumed nothing");
                    assert!(
                        consumed <= buf.len() && consumed <= limit,
                        "consumed {consumed}"
                    );
                    assert_eq!(buf[consumed - 1], b'\n');
                    if error == FrameError::Nul {
                        assert!(buf[..consumed].contains(&0), "Nul without a NUL");
                    }
                    items.push(Item::Invalid(error));
                    start += consumed;
                }
                Frame::TooLong => {
                    assert!(buf.len() >= limit, "TooLong below the limit");
                    items.push(Item::TooLong);
                    return (items, None);
                }
            }
            assert!(framer.at_boundary(), "framer not reset");
        }
    }
    let rest = &data[start..];
    let finish = framer.finish(rest);
    assert_eq!(finish.is_some(), !rest.is_empty(), "finish on {rest:?}");
    (items, finish)
}

#[path = "../../tests/support/reference.rs"]
mod reference;
use reference::reference_split;

/// The records of bytes an encoder wrote: all of them must frame cleanly.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let (items, finish) = serve(bytes, bytes.len().max(1), usize::MAX);
    assert_eq!(
        finish, None,
        "encoder left an unterminated record: {bytes:?}"
    );
    items
        .into_iter()
        .map(|item| match item {
            Item::Record(body) => body,
            other => panic!("encoder wrote {other:?}: {bytes:?}"),
        })
        .collect()
}

fn check_request(r: &Request) {
    for fds in 0..=4 {
        let _ = r.check_fds(fds).map_err(|e| e.to_string());
    }
    match r.encode() {
        Ok(line) => {
            let bodies = records(&line);
            assert_eq!(bodies.len(), 1, "{r:?} encodes as {line:?}");
            assert_eq!(Request::parse(&bodies[0]).as_ref(), Ok(r), "line {line:?}");
        }
        Err(RequestError::TooLong) => {
            assert!(
                record::join(r.to_fields()).len() > MAX_REQUEST_LEN,
                "TooLong: {r:?}"
            )
        }
        Err(e) => panic!("encode({r:?}): {e}"),
    }
}

fn check_reply(reply: &Reply) {
    let bytes = reply.encode();
    let mut parser = ReplyParser::new();
    let bodies = records(&bytes);
    for (i, body) in bodies.iter().enumerate() {
        match parser.push(&record::split(body)) {
            Ok(Some(back)) => {
                assert_eq!(i + 1, bodies.len(), "{reply:?} ends early: {bytes:?}");
                assert_eq!(&back, reply, "{bytes:?}");
                return;
            }
            Ok(None) => {}
            Err(e) => panic!("{reply:?} encodes as {bytes:?}, read back: {e}"),
        }
    }
    panic!("{reply:?} encodes as {bytes:?}, which never ends");
}

fuzz_target!(|data: &[u8]| {
    let whole = serve(data, data.len().max(1), MAX_REQUEST_LEN);
    assert_eq!(
        serve(data, 1, MAX_REQUEST_LEN),
        whole,
        "framing byte by byte differs"
    );
    let reads = 2 + data.len() % 11;
    assert_eq!(
        serve(data, reads, MAX_REQUEST_LEN),
        whole,
        "framing in {reads}-byte reads differs"
    );
    let (items, finish) = whole;
    // A small limit, to reach TooLong: the same promises, whatever the reads.
    assert_eq!(serve(data, 1, 24), serve(data, data.len().max(1), 24));

    let mut replies = ReplyParser::new();
    for item in &items {
        let body = match item {
            Item::Record(body) => body,
            Item::Invalid(e) => {
                check_reply(&Reply::error(e));
                continue;
            }
            Item::TooLong => {
                check_reply(&Reply::error(RequestError::TooLong));
                continue;
            }
        };
        let fields = record::split(body);
        let want = reference_split(body);
        assert!(want.is_some(), "framed against the grammar: {body:?}");
        assert_eq!(Some(&fields), want.as_ref(), "split({body:?})");
        match Request::from_fields(&fields) {
            Ok(r) => check_request(&r),
            Err(e) => check_reply(&Reply::error(e)),
        }
        if let Ok(item) = StreamItem::from_fields(&fields) {
            let bytes = item.encode();
            let bodies = records(&bytes);
            assert_eq!(bodies.len(), 1, "{item:?} encodes as {bytes:?}");
            assert_eq!(
                StreamItem::from_fields(&record::split(&bodies[0])).as_ref(),
                Ok(&item),
                "{bytes:?}"
            );
        }
        match replies.push(&fields) {
            Ok(Some(reply)) => check_reply(&reply),
            Ok(None) => {}
            Err(e) => {
                let _ = e.to_string();
                replies = ReplyParser::new();
            }
        }
    }
    if let Some(e) = finish {
        check_reply(&Reply::error(e));
    }
});
