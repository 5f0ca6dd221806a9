//! What went wrong with a configuration file, and where.

use std::fmt;

/// Why a configuration file was refused: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file, as it was named to [`crate::load_file`] or [`crate::load_str`].
    pub file: String,
    /// The line the error is about, when there is one: the declaration's for a declaration's
    /// errors, Lua's own for syntax and runtime errors.
    pub line: Option<u32>,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for LoadError {}

/// The known name closest to `word`, when one is close enough to be a likely typo.
pub(crate) fn nearest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let (distance, best) = known
        .iter()
        .map(|k| (edit_distance(word.as_bytes(), k.as_bytes()), *k))
        .min_by_key(|(d, _)| *d)?;
    // One edit in a short word, two in a longer one; a transposition counts as two.
    let allowed = if word.len() <= 4 { 1 } else { 2 };
    (distance <= allowed).then_some(best)
}

/// Levenshtein distance, with both words short (field names); longer input is cut.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let a = &a[..a.len().min(64)];
    let b = &b[..b.len().min(64)];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let swap = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + swap).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_file_line_message() {
        let e = LoadError {
            file: "a.lua".into(),
            line: Some(3),
            message: "oops".into(),
        };
        assert_eq!(e.to_string(), "a.lua:3: oops");
        let e = LoadError { line: None, ..e };
        assert_eq!(e.to_string(), "a.lua: oops");
    }

    #[test]
    fn suggests_only_close_names() {
        let known = ["argv", "env", "requires", "restart", "ready_timeout"];
        assert_eq!(nearest("requries", &known), Some("requires"));
        assert_eq!(nearest("Argv", &known), Some("argv"));
        assert_eq!(nearest("args", &known), Some("argv"));
        assert_eq!(nearest("restar", &known), Some("restart"));
        assert_eq!(nearest("readytimeout", &known), Some("ready_timeout"));
        assert_eq!(nearest("command", &known), None);
        assert_eq!(nearest("x", &known), None);
        assert_eq!(nearest("", &known), None);
    }
}
