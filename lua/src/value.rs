//! Reading Lua values as the plain types a field wants, with errors that say which field, what
//! it wants and what it got.
//!
//! Tables are read raw (no metamethods run), and a table with a metatable is refused: archon
//! would otherwise silently miss what an `__index` provides.

use mlua::{Lua, Table, Value};

/// An error message without its `name: ` prefix or location.
pub(crate) type Res<T> = Result<T, String>;

/// The longest duration, in ms: a year. Longer ones are surely mistakes, and every deadline
/// archon computes from one stays far from overflowing.
pub(crate) const MAX_DURATION_MS: u64 = 365 * 24 * 3600 * 1000;

/// How a duration may be written, for error messages.
const DURATION: &str = "a duration (seconds, or a string like \"250ms\", \"5s\", \"2m\", \"1h\")";

/// The Lua type of `v` as a user knows it (integers and floats are both numbers).
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        Value::LightUserData(_) | Value::UserData(_) => "userdata",
        _ => "value",
    }
}

/// `v` shown in an error: a string quoted (and cut when long), a number as it is, anything
/// else by its type.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => quote(&s.as_bytes()),
        Value::Integer(i) => i.to_string(),
        Value::Number(f) => float(*f),
        Value::Boolean(b) => b.to_string(),
        other => type_name(other).to_string(),
    }
}

/// Bytes shown in an error: quoted as Lua would, and cut after 40 bytes.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(40)];
    let mut shown = crate::literal::string(cut);
    if cut.len() < bytes.len() {
        shown.insert_str(shown.len() - 1, "...");
    }
    shown
}

fn float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_string()
    } else {
        format!("{f}")
    }
}

/// Whether `v` is the string `text`.
pub(crate) fn is(v: &Value, text: &str) -> bool {
    matches!(v, Value::String(s) if *s.as_bytes() == *text.as_bytes())
}

/// `v` as a table without a metatable.
pub(crate) fn table(v: &Value, what: &str, expected: &str) -> Res<Table> {
    match v {
        Value::Table(t) if t.metatable().is_some() => Err(format!(
            "{what} is a table with a metatable; archon reads a table's own fields only, so \
             copy inherited ones into it"
        )),
        Value::Table(t) => Ok(t.clone()),
        other => Err(format!(
            "{what} must be {expected}, got {}",
            type_name(other)
        )),
    }
}

/// The key-value pairs of `t`, read raw.
pub(crate) fn entries(t: &Table, what: &str) -> Res<Vec<(Value, Value)>> {
    let mut out = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        out.push(pair.map_err(|e| format!("{what}: {e}"))?);
    }
    Ok(out)
}

/// The index of a list key: an integer from 1 on.
fn index(k: &Value) -> Option<i64> {
    match k {
        Value::Integer(i) if *i >= 1 => Some(*i),
        Value::Number(f) if f.fract() == 0.0 && *f >= 1.0 && *f < 9e15 => Some(*f as i64),
        _ => None,
    }
}

/// `v` as a list (a table with the keys 1..n only), its items in order.
pub(crate) fn list(v: &Value, what: &str, expected: &str) -> Res<Vec<Value>> {
    let t = table(v, what, expected)?;
    let mut items = Vec::new();
    for (k, v) in entries(&t, what)? {
        match index(&k) {
            Some(i) => items.push((i, v)),
            None => {
                return Err(format!(
                    "{what} must be {expected}, but it has the key {}",
                    describe(&k)
                ));
            }
        }
    }
    items.sort_by_key(|(i, _)| *i);
    for (n, (i, _)) in items.iter().enumerate() {
        if *i != n as i64 + 1 {
            return Err(format!(
                "{what} must be {expected}, but it has a hole: nothing at [{}]",
                n + 1
            ));
        }
    }
    Ok(items.into_iter().map(|(_, v)| v).collect())
}

/// `v` as a Lua string's bytes.
pub(crate) fn string(v: &Value, what: &str, expected: &str) -> Res<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        other => Err(format!(
            "{what} must be {expected}, got {}",
            type_name(other)
        )),
    }
}

/// `v` as text: a string, or a number written as Lua's `tostring` writes it.
pub(crate) fn text(lua: &Lua, v: &Value, what: &str, expected: &str) -> Res<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(i) => Ok(i.to_string().into_bytes()),
        Value::Number(_) => match lua.coerce_string(v.clone()) {
            Ok(Some(s)) => Ok(s.as_bytes().to_vec()),
            _ => Err(format!("{what} could not be converted to text")),
        },
        other => Err(format!(
            "{what} must be {expected}, got {}",
            type_name(other)
        )),
    }
}

/// Refuses a NUL byte, which no C string (argv, environment, path) can hold.
pub(crate) fn no_nul(bytes: &[u8], what: &str) -> Res<()> {
    if bytes.contains(&0) {
        Err(format!("{what} contains a NUL byte"))
    } else {
        Ok(())
    }
}

/// `v` as a whole number within `range`; `expected` says so in words.
pub(crate) fn integer(
    v: &Value,
    what: &str,
    range: std::ops::RangeInclusive<i64>,
    expected: &str,
) -> Res<i64> {
    let n = match v {
        Value::Integer(i) => *i,
        Value::Number(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.2e18 => *f as i64,
        Value::Number(f) => {
            return Err(format!("{what} must be {expected}, got {}", float(*f)));
        }
        other => {
            return Err(format!(
                "{what} must be {expected}, got {}",
                type_name(other)
            ));
        }
    };
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!("{what} must be {expected}, got {n}"))
    }
}

/// `v` as a boolean.
pub(crate) fn boolean(v: &Value, what: &str) -> Res<bool> {
    match v {
        Value::Boolean(b) => Ok(*b),
        other => Err(format!(
            "{what} must be true or false, got {}",
            describe(other)
        )),
    }
}

/// `v` as a duration in ms: seconds as a number (fractions allowed), or a string with a unit
/// (`"250ms"`, `"1.5s"`, `"2m"`, `"1h"`). Rounded to the nearest ms.
pub(crate) fn duration(v: &Value, what: &str) -> Res<u64> {
    let ms = match v {
        Value::Integer(i) => *i as f64 * 1000.0,
        Value::Number(f) => *f * 1000.0,
        Value::String(s) => match parse_duration(&s.as_bytes()) {
            Some(ms) => ms,
            None => return Err(format!("{what} must be {DURATION}, got {}", describe(v))),
        },
        other => {
            return Err(format!(
                "{what} must be {DURATION}, got {}",
                type_name(other)
            ));
        }
    };
    if ms.is_nan() || ms.is_infinite() {
        return Err(format!(
            "{what} must be a finite duration, got {}",
            describe(v)
        ));
    }
    if ms < 0.0 {
        return Err(format!("{what} must not be negative, got {}", describe(v)));
    }
    let ms = ms.round();
    if ms > MAX_DURATION_MS as f64 {
        return Err(format!(
            "{what} is too long: at most 365 days, got {}",
            describe(v)
        ));
    }
    Ok(ms as u64)
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1.5s"`, as ms; `None` when it is not that.
fn parse_duration(text: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(text).ok()?;
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    let well_formed = number.starts_with(|c: char| c.is_ascii_digit())
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    if !well_formed {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_duration_strings() {
        assert_eq!(parse_duration(b"250ms"), Some(250.0));
        assert_eq!(parse_duration(b"5s"), Some(5000.0));
        assert_eq!(parse_duration(b"1.5s"), Some(1500.0));
        assert_eq!(parse_duration(b"2m"), Some(120_000.0));
        assert_eq!(parse_duration(b"1h"), Some(3_600_000.0));
        assert_eq!(parse_duration(b"0ms"), Some(0.0));
        for bad in [
            &b""[..],
            b"5",
            b"s",
            b"5 s",
            b" 5s",
            b"-5s",
            b"5S",
            b".5s",
            b"5.s",
            b"1.2.3s",
            b"5sec",
            b"1e3ms",
            b"5d",
            b"\xff",
        ] {
            assert_eq!(
                parse_duration(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
