//! `archonctl events`' table: one row per event, its time in UTC to the millisecond, who caused
//! it as `archon` or `<uid>:<pid>`, anything archon does not say as `-`.
//!
//! The history alone is laid out like the other tables, each column as wide as its widest cell.
//! Followed, events come one at a time, so the columns have fixed widths instead (a wider cell
//! pushes the rest of its line along), and a `Dropped` mark is a line of its own.

use std::fmt::Write;

use archon_proto::{Cause, Event, ServiceState};

use super::table::{columns, iso_utc, printable, status_text};

/// The column titles.
const HEADER: [&str; 10] = [
    "TIME", "SUBJECT", "KIND", "EVENT", "FROM", "TO", "PID", "STATUS", "BY", "REASON",
];

/// The widths of the columns but the last when events are followed: room for a time, a short
/// name, the longest kind, event and state words, a pid, a signal's name, a uid and pid.
const FOLLOW_WIDTHS: [usize; 9] = [24, 12, 7, 7, 8, 8, 7, 7, 12];

/// Columns are separated by this many spaces, as in the other tables.
const GAP: usize = 2;

/// `ms` milliseconds after the Unix epoch, in UTC: `2026-11-21T23:27:00.093Z`.
pub(crate) fn iso_utc_ms(ms: u64) -> String {
    let seconds = iso_utc(ms);
    let stem = seconds.strip_suffix('Z').unwrap_or(&seconds);
    format!("{stem}.{:03}Z", ms % 1000)
}

fn state(s: Option<ServiceState>) -> String {
    s.map_or_else(|| "-".to_string(), |s| s.to_string())
}

/// Who caused it: `archon`, the client's `<uid>:<pid>`, or a Lua handler's `lua:<line>`.
fn cause(c: Cause) -> String {
    match c {
        Cause::Archon => "archon".to_string(),
        Cause::Client { uid, pid } => format!("{uid}:{pid}"),
        Cause::Lua { line } => format!("lua:{line}"),
    }
}

fn cells(e: &Event) -> [String; 10] {
    [
        iso_utc_ms(e.time_ms),
        printable(&e.subject),
        e.kind.to_string(),
        e.what.to_string(),
        state(e.old),
        state(e.new),
        e.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
        status_text(e.status),
        cause(e.cause),
        printable(&e.reason),
    ]
}

/// The table of `events`, header included, every line ended by `\n`.
pub fn render(events: &[Event]) -> String {
    let cells: Vec<[String; 10]> = events.iter().map(cells).collect();
    columns(HEADER, &cells)
}

/// One line of cells at the fixed widths of a followed table.
fn fixed(cells: &[String]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        match FOLLOW_WIDTHS.get(i) {
            Some(&w) => {
                let pad = w.saturating_sub(cell.chars().count()) + GAP;
                let _ = write!(line, "{cell}{:pad$}", "");
            }
            None => line.push_str(cell),
        }
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

/// The header of a followed table.
pub fn follow_header() -> String {
    let titles: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
    fixed(&titles)
}

/// One event of a followed table.
pub fn follow_line(e: &Event) -> String {
    fixed(&cells(e))
}

/// The line that says `n` events were lost here.
pub fn dropped_line(n: u64) -> String {
    format!("-- {n} events dropped here: archonctl did not read them in time --\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{EventKind, ServiceKind, Status};

    fn crash() -> Event {
        Event {
            seq: 17,
            time_ms: 1_795_303_620_093,
            subject: b"web".to_vec(),
            kind: ServiceKind::Service,
            what: EventKind::Exit,
            old: Some(ServiceState::Ready),
            new: Some(ServiceState::Backoff),
            pid: Some(4242),
            status: Some(Status::Signaled(9)),
            reason: b"killed by SIGKILL".to_vec(),
            cause: Cause::Archon,
        }
    }

    fn spawn() -> Event {
        Event {
            seq: 18,
            time_ms: 1_795_303_621_000,
            subject: b"3".to_vec(),
            kind: ServiceKind::Daemon,
            what: EventKind::Spawn,
            old: None,
            new: Some(ServiceState::Running),
            pid: Some(77),
            status: None,
            reason: b"a\nb".to_vec(),
            cause: Cause::Client { uid: 1000, pid: 42 },
        }
    }

    #[test]
    fn table() {
        let want = "\
TIME                      SUBJECT  KIND     EVENT  FROM   TO       PID   STATUS   BY       REASON
2026-11-21T23:27:00.093Z  web      service  exit   ready  backoff  4242  SIGKILL  archon   killed by SIGKILL
2026-11-21T23:27:01.000Z  3        daemon   spawn  -      running  77    -        1000:42  a\\nb
";
        assert_eq!(render(&[crash(), spawn()]), want);
    }

    #[test]
    fn followed_lines_have_fixed_columns() {
        let header = follow_header();
        let line = follow_line(&crash());
        assert_eq!(header.find("SUBJECT"), line.find("web"));
        assert_eq!(header.find("REASON"), line.find("killed by"));
        assert_eq!(
            follow_line(&spawn()).find("1000:42"),
            header.find("BY"),
            "{header}{line}"
        );
        assert!(dropped_line(3).starts_with("-- 3 events dropped"));
    }
}
