//! `archonctl list`'s table: one row per process, columns padded, the command last; and the
//! text helpers the other tables share.
//!
//! Start times are shown in UTC, `2026-11-21T23:27:00Z`, the form of archon's own log lines, so
//! the two can be read side by side. A command is shown as a shell would need it typed: plain
//! words as they are, others in single quotes, and anything with control characters or bytes that
//! are not UTF-8 in `$'...'` with escapes, so that one row is always one line.

use std::fmt::Write;

use archon_proto::{ProcessRow, Status};

/// The column titles.
const HEADER: [&str; 7] = ["ID", "KIND", "PID", "STATE", "STARTED", "STATUS", "COMMAND"];

/// Columns are separated by this many spaces.
const GAP: usize = 2;

/// The table, header included, every line ended by `\n`.
pub fn render(rows: &[ProcessRow]) -> String {
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.kind.to_string(),
                r.pid.to_string(),
                r.state.to_string(),
                iso_utc(r.started_ms),
                status_text(r.status),
                command_text(&r.argv),
            ]
        })
        .collect();
    columns(HEADER, &cells)
}

/// How it ended: `-` while it runs, else the exit code, the signal's name, or `unknown`.
pub fn status_text(status: Option<Status>) -> String {
    match status {
        None => "-".to_string(),
        Some(s) => String::from_utf8_lossy(&s.to_field()).into_owned(),
    }
}

/// `ms` milliseconds after the Unix epoch, in UTC to the second: `1970-01-01T00:00:00Z`.
pub fn iso_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The command line, each argument quoted as a shell needs it; `-` when there is none (a
/// monitored process).
pub fn command_text(argv: &[Vec<u8>]) -> String {
    if argv.is_empty() {
        return "-".to_string();
    }
    let words: Vec<String> = argv.iter().map(|a| shell_word(a)).collect();
    words.join(" ")
}

fn shell_word(arg: &[u8]) -> String {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(b);
    if !arg.is_empty() && arg.iter().all(plain) {
        // Only ASCII, so this is the text itself.
        return String::from_utf8_lossy(arg).into_owned();
    }
    match std::str::from_utf8(arg) {
        Ok(text) if !text.chars().any(char::is_control) => {
            format!("'{}'", text.replace('\'', r"'\''"))
        }
        _ => ansi_c_quoted(arg),
    }
}

/// `$'...'`: printable UTF-8 as it is, the rest as escapes.
fn ansi_c_quoted(arg: &[u8]) -> String {
    let mut out = String::from("$'");
    escape_into(arg, &['\'', '\\'], &mut out);
    out.push('\'');
    out
}

/// Text from a reply (a reason, a command name, a value) made safe for one line of a terminal:
/// printable UTF-8 as it is, control characters and bytes that are not UTF-8 as `\n`, `\t`,
/// `\r`, `\\` and `\xNN` escapes, so that no byte archon sends can move the cursor.
pub fn printable(text: &[u8]) -> String {
    let mut out = String::new();
    escape_into(text, &['\\'], &mut out);
    out
}

/// As [`printable`], but a backslash stays as it is: for text that is already a literal with
/// escapes of its own (a Lua value in `config`), which escaping again would garble.
pub fn printable_literal(text: &[u8]) -> String {
    let mut out = String::new();
    escape_into(text, &[], &mut out);
    out
}

/// Appends `bytes` with control characters, invalid UTF-8 and the characters of `also` escaped.
fn escape_into(bytes: &[u8], also: &[char], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str(r"\n"),
                '\t' => out.push_str(r"\t"),
                '\r' => out.push_str(r"\r"),
                c if also.contains(&c) => {
                    out.push('\\');
                    out.push(c);
                }
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Lays out rows of cells under `header`: every column but the last padded to its widest
/// cell, [`GAP`] spaces between columns, trailing blanks trimmed; every line ends with `\n`.
pub fn columns<const N: usize>(header: [&str; N], cells: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(cells) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count() + GAP;
                let _ = write!(line, "{cell}{:pad$}", "");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{Kind, ProcState};

    #[test]
    fn dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(999), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso_utc(1_763_769_600_250), "2025-11-22T00:00:00Z");
        assert_eq!(iso_utc(1_795_303_620_123), "2026-11-21T23:27:00Z");
        assert_eq!(iso_utc(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn words_are_quoted_as_a_shell_needs() {
        let cases: &[(&[u8], &str)] = &[
            (b"/usr/bin/sleep", "/usr/bin/sleep"),
            (b"A=1", "A=1"),
            (b"", "''"),
            (b"a b", "'a b'"),
            (b"it's", r"'it'\''s'"),
            (b"$HOME", "'$HOME'"),
            ("caf\u{e9}".as_bytes(), "'caf\u{e9}'"),
            (b"a\nb", r"$'a\nb'"),
            (b"\x1b[0m'", r"$'\x1b[0m\''"),
            (b"\xff\\", r"$'\xff\\'"),
        ];
        for (arg, want) in cases {
            assert_eq!(shell_word(arg), *want);
        }
        assert_eq!(command_text(&[]), "-");
        assert_eq!(printable(b"plain text, 'quotes'"), "plain text, 'quotes'");
        assert_eq!(
            printable(b"a\nb\x1b[2J\\\xff caf\xc3\xa9"),
            r"a\nb\x1b[2J\\\xff café"
        );
        assert_eq!(
            command_text(&[b"sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()]),
            "sh -c 'echo hi'"
        );
    }

    #[test]
    fn table() {
        let rows = [
            ProcessRow {
                id: 1,
                kind: Kind::Daemon,
                pid: 4242,
                state: ProcState::Running,
                started_ms: 1_763_769_600_250,
                status: None,
                argv: vec![b"/usr/bin/sleep".to_vec(), b"100".to_vec()],
            },
            ProcessRow {
                id: 12,
                kind: Kind::Monitor,
                pid: 7,
                state: ProcState::Exited,
                started_ms: 1_763_769_661_000,
                status: Some(Status::Signaled(15)),
                argv: vec![],
            },
        ];
        let want = "\
ID  KIND     PID   STATE    STARTED               STATUS   COMMAND
1   daemon   4242  running  2025-11-22T00:00:00Z  -        /usr/bin/sleep 100
12  monitor  7     exited   2025-11-22T00:01:01Z  SIGTERM  -
";
        assert_eq!(render(&rows), want);
        assert_eq!(
            render(&[]),
            "ID  KIND  PID  STATE  STARTED  STATUS  COMMAND\n"
        );
    }
}
