//! An independent reading of a strict RFC 4180 record, written the plain way, to hold
//! `archon_proto::record::split` (csv-core) against. Shared by the round-trip property test and
//! the `parse` fuzz target, which include this file with `#[path]`.

/// RFC 4180's fields, read the plain way; `None` when `body` breaks the strict grammar.
pub fn reference_split(body: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut fields = Vec::new();
    if body.is_empty() {
        return Some(fields);
    }
    let mut i = 0;
    loop {
        let mut field = Vec::new();
        if body.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match body.get(i) {
                    None => return None,
                    Some(b'"') if body.get(i + 1) == Some(&b'"') => {
                        field.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&b) => {
                        field.push(b);
                        i += 1;
                    }
                }
            }
            if i < body.len() && body[i] != b',' {
                return None;
            }
        } else {
            while let Some(&b) = body.get(i) {
                match b {
                    b',' => break,
                    b'"' | b'\n' => return None,
                    _ => field.push(b),
                }
                i += 1;
            }
        }
        fields.push(field);
        if i == body.len() {
            return Some(fields);
        }
        i += 1;
    }
}
