//! `logs`: a service's captured lines for people, `TIME STREAM LEVEL TEXT`, as archon's log
//! files write them.

use archon_proto::LogLine;
use archon_proto::log::level_name;

use super::events::iso_utc_ms;

/// One line: `2026-11-21T23:27:00.093Z stderr err text`, with `[cut]` after a cut one.
pub fn line(l: &LogLine) -> String {
    format!(
        "{} {} {} {}{}\n",
        iso_utc_ms(l.time_ms),
        l.stream.as_str(),
        level_name(l.level),
        String::from_utf8_lossy(&l.text),
        if l.cut { " [cut]" } else { "" }
    )
}

/// The line that says `n` lines were lost here.
pub fn dropped_line(n: u64) -> String {
    format!("-- {n} lines dropped here: archonctl did not read them in time --\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::LogStream;

    #[test]
    fn lines_read_like_the_log_files() {
        let l = LogLine {
            time_ms: 1_764_545_220_093,
            stream: LogStream::Stderr,
            level: 3,
            text: b"oops".to_vec(),
            cut: false,
        };
        assert_eq!(line(&l), "2025-11-30T23:27:00.093Z stderr err oops\n");
        let cut = LogLine { cut: true, ..l };
        assert!(line(&cut).ends_with("oops [cut]\n"));
    }
}
