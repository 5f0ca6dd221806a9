//! The rule for service names, shared by the configuration and the wire.
//!
//! A name is 1 to [`MAX_LEN`] bytes of `[A-Za-z0-9_.@:-]`. It may not be all digits, because a
//! target made of digits on the wire is a process id, and it may not start with `.` (no hidden
//! files or `..` in the paths archon builds from it, such as cgroup directories) or `-` (it would
//! read as an option on a command line).

/// The longest name, in bytes.
pub const MAX_LEN: usize = 64;

/// Whether `name` is a valid service name; the error says what is wrong with it.
pub fn check(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name may not be empty".to_string());
    }
    if name.len() > MAX_LEN {
        return Err(format!(
            "a name is at most {MAX_LEN} bytes, this one has {}",
            name.len()
        ));
    }
    if let Some(&b) = name.iter().find(|&&b| !allowed(b)) {
        let shown = if b.is_ascii_graphic() || b == b' ' {
            format!("'{}'", b as char)
        } else {
            format!("byte 0x{b:02x}")
        };
        return Err(format!(
            "{shown} is not allowed in a name (only letters, digits and _ . @ : -)"
        ));
    }
    if name.iter().all(u8::is_ascii_digit) {
        return Err("a name may not be all digits (that is a process id)".to_string());
    }
    match name[0] {
        b'.' => Err("a name may not start with '.'".to_string()),
        b'-' => Err("a name may not start with '-'".to_string()),
        _ => Ok(()),
    }
}

/// Whether a name may hold byte `b`.
pub(crate) fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b':' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        let longest = [b'a'; MAX_LEN];
        for good in [
            &b"db"[..],
            b"web-1",
            b"getty@tty1",
            b"a.b_c:d",
            b"1a",
            b"a1",
            b"0x",
            b"_",
            b"A",
            &longest,
        ] {
            assert_eq!(check(good), Ok(()), "{}", String::from_utf8_lossy(good));
        }
    }

    #[test]
    fn refuses_bad_names_with_the_reason() {
        let too_long = [b'a'; MAX_LEN + 1];
        let cases: [(&[u8], &str); 11] = [
            (b"", "a name may not be empty"),
            (&too_long, "a name is at most 64 bytes, this one has 65"),
            (
                b"123",
                "a name may not be all digits (that is a process id)",
            ),
            (b"0", "a name may not be all digits (that is a process id)"),
            (b".hidden", "a name may not start with '.'"),
            (b"..", "a name may not start with '.'"),
            (b"-v", "a name may not start with '-'"),
            (
                b"a b",
                "' ' is not allowed in a name (only letters, digits and _ . @ : -)",
            ),
            (
                b"a/b",
                "'/' is not allowed in a name (only letters, digits and _ . @ : -)",
            ),
            (
                b"a,b",
                "',' is not allowed in a name (only letters, digits and _ . @ : -)",
            ),
            (
                b"a\0",
                "byte 0x00 is not allowed in a name (only letters, digits and _ . @ : -)",
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(check(bad), Err(why.to_string()));
        }
    }

    #[test]
    fn refuses_non_ascii() {
        assert!(check("café".as_bytes()).is_err());
        assert!(check(b"\xff").is_err());
        assert!(check(b"a\n").is_err());
    }
}
