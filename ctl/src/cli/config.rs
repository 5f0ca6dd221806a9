//! `archonctl config`'s listing: one `name.key = value` line per setting, in archon's order.
//!
//! The value is shown as archon wrote it (a Lua literal: `{"a","b"}`, `"always"`, `7000ms`),
//! through [`printable_literal`], so that its own escapes read as written and a raw control
//! character cannot break the line.

use archon_proto::Setting;

use super::table::{printable, printable_literal};

/// The listing, every line ended by `\n`; empty when there are no settings.
pub fn render(settings: &[Setting]) -> String {
    let mut out = String::new();
    for s in settings {
        out.push_str(&printable(&s.name));
        out.push('.');
        out.push_str(&printable(&s.key));
        out.push_str(" = ");
        out.push_str(&printable_literal(&s.value));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, key: &str, value: &str) -> Setting {
        Setting {
            name: name.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[test]
    fn one_line_per_setting() {
        let settings = [
            setting("web", "argv", r#"{"/usr/bin/python3","-m","http.server"}"#),
            setting("web", "restart", r#""on-failure""#),
            setting("web", "stop_timeout", "7000ms"),
            setting("db", "env.GREETING", r#""a\nb\\""#),
            setting("db", "cwd", "\"/tmp/\x1b[2J\""),
        ];
        let want = r#"web.argv = {"/usr/bin/python3","-m","http.server"}
web.restart = "on-failure"
web.stop_timeout = 7000ms
db.env.GREETING = "a\nb\\"
db.cwd = "/tmp/\x1b[2J"
"#;
        assert_eq!(render(&settings), want);
        assert_eq!(render(&[]), "");
    }
}
