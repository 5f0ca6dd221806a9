//! One CSV record as a list of byte fields: split a framed record, join fields into a line.
//!
//! [`crate::frame`] has already checked the record against the strict grammar, so splitting it with
//! the `csv` crate cannot misread it; joining quotes exactly the fields that need it.

use std::cell::RefCell;

use csv::{QuoteStyle, Terminator, WriterBuilder};
use csv_core::{ReadRecordResult, Reader, ReaderBuilder};

/// A record's fields, as bytes.
pub type Fields = Vec<Vec<u8>>;

thread_local! {
    /// Building a reader compiles its state machine, which costs far more than reading a short
    /// record; one reader per thread is built once and reset for each record.
    static READER: RefCell<Reader> = RefCell::new(
        ReaderBuilder::new().terminator(csv_core::Terminator::Any(b'\n')).build(),
    );
}

/// Splits the text of one framed record (without its terminator) into its fields.
///
/// The empty record has no fields.
pub fn split(body: &[u8]) -> Fields {
    if body.is_empty() {
        return Vec::new();
    }
    // Unquoting only shrinks a field, and a record has at most one field more than it has bytes.
    let mut out = vec![0u8; body.len()];
    let mut ends = vec![0usize; body.len() + 1];
    let (mut nin, mut nout, mut nend) = (0, 0, 0);
    READER.with_borrow_mut(|reader| {
        reader.reset();
        loop {
            // csv_core drops a UTF-8 byte order mark from the first input it is given after a
            // reset, if that input holds one; fields are bytes, so the first call gets one byte.
            let input = if nin == 0 { &body[..1] } else { &body[nin..] };
            let (res, i, o, e) = reader.read_record(input, &mut out[nout..], &mut ends[nend..]);
            nin += i;
            nout += o;
            nend += e;
            match res {
                // The body has no terminator: an empty input then says the record is complete.
                ReadRecordResult::InputEmpty if nin == body.len() && i == 0 => {
                    let (_, _, o, e) = reader.read_record(&[], &mut out[nout..], &mut ends[nend..]);
                    nout += o;
                    nend += e;
                    break;
                }
                ReadRecordResult::InputEmpty => continue,
                // The buffers are sized so that they never fill; a record ends the loop.
                _ => break,
            }
        }
    });
    let mut fields = Vec::with_capacity(nend);
    let mut start = 0;
    for &end in &ends[..nend] {
        fields.push(out[start..end].to_vec());
        start = end;
    }
    fields
}

/// Appends `fields` to `out` as one record ended by `\n`, quoting the fields that hold `,`, `"`,
/// `\r` or `\n` (and a lone empty field, which would otherwise be an empty line).
pub fn join_into<I, F>(fields: I, out: &mut Vec<u8>)
where
    I: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut writer = WriterBuilder::new()
        .has_headers(false)
        .flexible(true)
        .quote_style(QuoteStyle::Necessary)
        .terminator(Terminator::Any(b'\n'))
        // The default 8 KiB buffer would be zeroed for every reply.
        .buffer_capacity(256)
        .from_writer(std::mem::take(out));
    // Writing into a Vec cannot fail.
    let _ = writer.write_record(fields);
    *out = writer
        .into_inner()
        .unwrap_or_else(|e| e.into_inner().get_ref().clone());
}

/// `fields` as one record ended by `\n`.
pub fn join<I, F>(fields: I) -> Vec<u8>
where
    I: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut out = Vec::new();
    join_into(fields, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Framer};

    fn split_line(line: &[u8]) -> Fields {
        match Framer::default().next_frame(line) {
            Frame::Record { body, .. } => split(&line[..body]),
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn splits_rfc4180() {
        assert_eq!(
            split_line(b"Run,/bin/echo,hi\n"),
            vec![b"Run".to_vec(), b"/bin/echo".to_vec(), b"hi".to_vec()]
        );
        assert_eq!(
            split_line(b"a,,\"\"\n"),
            vec![b"a".to_vec(), vec![], vec![]]
        );
        assert_eq!(
            split_line(b"\"x,\"\"y\"\"\n\r\"\n"),
            vec![b"x,\"y\"\n\r".to_vec()]
        );
        assert_eq!(split_line(b"a\rb\n"), vec![b"a\rb".to_vec()]);
        assert_eq!(
            split_line(b"\xff\xfe,x\n"),
            vec![b"\xff\xfe".to_vec(), b"x".to_vec()]
        );
        // A byte order mark is bytes like any other, at the start of a record too.
        assert_eq!(
            split(b"\xef\xbb\xbfPing"),
            vec![b"\xef\xbb\xbfPing".to_vec()]
        );
        assert_eq!(split(b"\xef\xbb\xbf"), vec![b"\xef\xbb\xbf".to_vec()]);
        assert!(split(b"").is_empty());
    }

    #[test]
    fn joins_with_minimal_quoting() {
        assert_eq!(join(["Ok", "1", "2"]), b"Ok,1,2\n");
        assert_eq!(
            join(["a,b", "c\"d", "e\nf", ""]),
            b"\"a,b\",\"c\"\"d\",\"e\nf\",\n"
        );
        assert_eq!(join([""]), b"\"\"\n");
        assert_eq!(join(["x", ""]), b"x,\n");
    }

    #[test]
    fn join_then_split_is_identity() {
        let samples: &[&[&[u8]]] = &[
            &[b"Run", b"", b"2", b"/bin/echo", b"A=1"],
            &[b"", b""],
            &[b"\r", b"\n", b"\r\n", b"\"", b","],
            &[b" lead", b"trail ", b"#hash"],
        ];
        for fields in samples {
            let line = join(fields.iter());
            assert_eq!(
                split_line(&line),
                fields.iter().map(|f| f.to_vec()).collect::<Fields>()
            );
        }
    }
}
