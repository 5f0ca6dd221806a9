//! One CSV record as a list of byte fields: split a framed record, join fields into a line.
//!
//! [`crate::frame`] has already checked the record against the strict grammar, so splitting it with
//! the `csv` crate cannot misread it; joining quotes exactly the fields that need it.

use csv::{ByteRecord, QuoteStyle, ReaderBuilder, Terminator, WriterBuilder};

/// A record's fields, as bytes.
pub type Fields = Vec<Vec<u8>>;

/// Splits the text of one framed record (without its terminator) into its fields.
///
/// The empty record has no fields.
pub fn split(body: &[u8]) -> Fields {
    if body.is_empty() {
        return Vec::new();
    }
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(Terminator::Any(b'\n'))
        .buffer_capacity(body.len().clamp(64, 8 * 1024))
        .from_reader(body);
    let mut record = ByteRecord::new();
    match reader.read_byte_record(&mut record) {
        Ok(true) => record.iter().map(<[u8]>::to_vec).collect(),
        // Reading from a slice cannot fail, and a non-empty body holds one record; an empty
        // result is answered as an empty request.
        Ok(false) | Err(_) => Vec::new(),
    }
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
