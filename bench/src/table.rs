//! The one markdown table the bench prints.

use crate::stats::{Summary, count, duration};

/// One row: what was measured, how many times, and the figures (empty cells where a figure
/// does not apply).
pub struct Row {
    what: String,
    n: String,
    median: String,
    p99: String,
    total: String,
    result: String,
}

impl Row {
    /// A row with only a result.
    pub fn value(what: impl Into<String>, result: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            n: String::new(),
            median: String::new(),
            p99: String::new(),
            total: String::new(),
            result: result.into(),
        }
    }

    /// A row of timed operations, its result their rate in `unit` per second.
    pub fn timed(what: impl Into<String>, s: &Summary, rate: f64, unit: &str) -> Row {
        Row {
            what: what.into(),
            n: count(s.n as f64),
            median: duration(s.median),
            p99: duration(s.p99),
            total: duration(s.total),
            result: format!("{} {unit}/s", count(rate)),
        }
    }

    /// Sets the count cell.
    pub fn n(mut self, n: impl Into<String>) -> Row {
        self.n = n.into();
        self
    }

    /// Sets the median and p99 cells.
    pub fn quantiles(mut self, median: impl Into<String>, p99: impl Into<String>) -> Row {
        self.median = median.into();
        self.p99 = p99.into();
        self
    }

    /// Sets the total cell.
    pub fn total(mut self, total: impl Into<String>) -> Row {
        self.total = total.into();
        self
    }
}

/// The table as markdown, columns padded so that it also reads as plain text.
pub fn render(rows: &[Row]) -> String {
    let header = ["measurement", "n", "median", "p99", "total", "result"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            [&r.what, &r.n, &r.median, &r.p99, &r.total, &r.result]
                .map(String::clone)
                .to_vec()
        })
        .collect();
    markdown(&header, &cells)
}

/// A markdown table of `rows` under `header`: the first column left-aligned, the others right,
/// padded so that it also reads as plain text. A row with fewer cells is padded with empty ones.
pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    // Markdown wants at least one `-` besides the alignment colon.
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count().max(3)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[&str]| -> String {
        let mut out = String::from("|");
        for (i, w) in widths.iter().enumerate() {
            let cell = row.get(i).copied().unwrap_or("");
            let pad = " ".repeat(w - cell.chars().count().min(*w));
            if i == 0 {
                out.push_str(&format!(" {cell}{pad} |"));
            } else {
                out.push_str(&format!(" {pad}{cell} |"));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        let dashes = "-".repeat(w.saturating_sub(1));
        if i == 0 {
            out.push_str(&format!(" {dashes}- |"));
        } else {
            out.push_str(&format!(" {dashes}: |"));
        }
    }
    out.push('\n');
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_with_aligned_columns() {
        let rows = [Row::value("idle RSS", "2.0 MiB").n("1")];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with("| ----------- | --: |"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].starts_with("| idle RSS    |   1 |"),
            "{}",
            lines[2]
        );
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count())
        );
    }
}
