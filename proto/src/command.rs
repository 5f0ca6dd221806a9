//! A command to run: its argv and the changes to its environment, in the two forms a request can
//! spell them.
//!
//! **Simple form** (the seed's): `<argv0>[,<arg>...][,<NAME=value>...]`. argv0 is always the first
//! field; the trailing fields that look like `NAME=value` (NAME is `[A-Za-z_][A-Za-z0-9_]*`) set
//! variables, everything before them is argv. `Run,/bin/sh,-c,echo $A,A=1` runs `sh -c 'echo $A'`
//! with `A=1`.
//!
//! **Explicit form**: an empty first field, then the number of argv fields, then argv, then the
//! environment: `,<argc>,<argv0>,...,<argv[argc-1]>[,<env>...]`. Every argv is taken as it is (one
//! that looks like `NAME=value`, an empty one), and each env field is `NAME=value` (any NAME without
//! `=`) to set a variable or a bare `NAME` to remove it from the base environment.
//! `Run,,2,/bin/echo,A=1,B=2` runs `echo A=1` with `B=2`. The form is unambiguous because argv0 can
//! never be empty in the simple form.

use crate::record::Fields;

/// A change to the base environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvEntry {
    /// The variable's name: not empty, no `=`.
    pub name: Vec<u8>,
    /// Its new value, or `None` to remove it.
    pub value: Option<Vec<u8>>,
}

impl EnvEntry {
    /// `name=value`.
    pub fn set(name: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        EnvEntry {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    /// Removes `name`.
    pub fn unset(name: impl Into<Vec<u8>>) -> Self {
        EnvEntry {
            name: name.into(),
            value: None,
        }
    }

    /// The entry as `NAME=value`, or `NAME` for a removal.
    pub fn to_field(&self) -> Vec<u8> {
        let mut f = self.name.clone();
        if let Some(v) = &self.value {
            f.push(b'=');
            f.extend_from_slice(v);
        }
        f
    }
}

/// A command: what `Run` and `StartDaemon` carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Command {
    /// The arguments; `argv[0]` is the program, searched in `PATH` when it has no `/`.
    pub argv: Vec<Vec<u8>>,
    /// Changes to the base environment, applied in order.
    pub env: Vec<EnvEntry>,
}

/// What is wrong with a command's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// No program at all.
    Missing,
    /// The explicit form's argument count is not a number from 1 to the number of fields.
    BadCount,
    /// The program (argv0) is empty.
    EmptyProgram,
    /// An explicit-form env field has an empty name.
    EmptyName,
}

impl CommandError {
    /// The reason given in the `Error,<reason>` reply.
    pub fn reason(self) -> &'static str {
        match self {
            CommandError::Missing => "missing command",
            CommandError::BadCount => "explicit form: bad argument count",
            CommandError::EmptyProgram => "empty program name",
            CommandError::EmptyName => "explicit form: empty environment variable name",
        }
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// True for `NAME=value` with NAME in `[A-Za-z_][A-Za-z0-9_]*`: a simple-form assignment.
pub fn is_assignment(field: &[u8]) -> bool {
    let Some(eq) = field.iter().position(|&b| b == b'=') else {
        return false;
    };
    let name = &field[..eq];
    match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

impl Command {
    /// A command with no environment changes.
    pub fn new<I, A>(argv: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<Vec<u8>>,
    {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// Parses the fields after the verb, in either form.
    pub fn from_fields(fields: &[Vec<u8>]) -> Result<Command, CommandError> {
        let Some(first) = fields.first() else {
            return Err(CommandError::Missing);
        };
        if !first.is_empty() {
            let split = fields[1..]
                .iter()
                .rposition(|f| !is_assignment(f))
                .map_or(1, |i| i + 2);
            let env = fields[split..]
                .iter()
                .map(|f| {
                    let eq = f.iter().position(|&b| b == b'=').unwrap_or(f.len());
                    EnvEntry::set(&f[..eq], f.get(eq + 1..).unwrap_or_default())
                })
                .collect();
            return Ok(Command {
                argv: fields[..split].to_vec(),
                env,
            });
        }
        // Explicit form.
        let count = fields.get(1).ok_or(CommandError::Missing)?;
        let argc = parse_count(count).ok_or(CommandError::BadCount)?;
        if argc == 0 || argc > fields.len() - 2 {
            return Err(CommandError::BadCount);
        }
        let argv = fields[2..2 + argc].to_vec();
        if argv[0].is_empty() {
            return Err(CommandError::EmptyProgram);
        }
        let env = fields[2 + argc..]
            .iter()
            .map(|f| match f.iter().position(|&b| b == b'=') {
                Some(0) => Err(CommandError::EmptyName),
                Some(eq) => Ok(EnvEntry::set(&f[..eq], &f[eq + 1..])),
                None if f.is_empty() => Err(CommandError::EmptyName),
                None => Ok(EnvEntry::unset(f.as_slice())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Command { argv, env })
    }

    /// True when the simple form spells this command exactly.
    pub fn fits_simple_form(&self) -> bool {
        let argv_ok = match self.argv.split_first() {
            None => false,
            Some((first, [])) => !first.is_empty(),
            Some((first, [.., last])) => !first.is_empty() && !is_assignment(last),
        };
        argv_ok
            && self
                .env
                .iter()
                .all(|e| e.value.is_some() && is_assignment(&e.to_field()))
    }

    /// The fields that spell this command: the simple form where it is exact, else the explicit
    /// form.
    pub fn to_fields(&self) -> Fields {
        let mut out = Vec::with_capacity(self.argv.len() + self.env.len() + 2);
        if !self.fits_simple_form() {
            out.push(Vec::new());
            out.push(self.argv.len().to_string().into_bytes());
        }
        out.extend(self.argv.iter().cloned());
        out.extend(self.env.iter().map(EnvEntry::to_field));
        out
    }

    /// The fields of the explicit form, whatever the command.
    pub fn to_explicit_fields(&self) -> Fields {
        let mut out = vec![Vec::new(), self.argv.len().to_string().into_bytes()];
        out.extend(self.argv.iter().cloned());
        out.extend(self.env.iter().map(EnvEntry::to_field));
        out
    }
}

/// A decimal count: digits only, no sign, at most 9 digits.
fn parse_count(field: &[u8]) -> Option<usize> {
    if field.is_empty() || field.len() > 9 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(s: &[&str]) -> Fields {
        s.iter().map(|f| f.as_bytes().to_vec()).collect()
    }

    #[test]
    fn simple_form() {
        let c = Command::from_fields(&fields(&["/bin/sh", "-c", "echo $A", "A=1"]));
        assert_eq!(
            c,
            Ok(Command {
                argv: fields(&["/bin/sh", "-c", "echo $A"]),
                env: vec![EnvEntry::set("A", "1")],
            })
        );
        // argv0 is never an assignment; the env is only a trailing run.
        let c = Command::from_fields(&fields(&["A=1", "x", "B=2", "y", "C=3", "D_4="]));
        assert_eq!(
            c,
            Ok(Command {
                argv: fields(&["A=1", "x", "B=2", "y"]),
                env: vec![EnvEntry::set("C", "3"), EnvEntry::set("D_4", "")],
            })
        );
        // A value may hold '='; a name may not start with a digit or hold '-'.
        let c = Command::from_fields(&fields(&["env", "1A=x", "a-b=y", "X=a=b"]));
        assert_eq!(
            c,
            Ok(Command {
                argv: fields(&["env", "1A=x", "a-b=y"]),
                env: vec![EnvEntry::set("X", "a=b")],
            })
        );
        assert_eq!(
            Command::from_fields(&fields(&["/bin/true"])),
            Ok(Command::new(["/bin/true"]))
        );
        assert_eq!(Command::from_fields(&[]), Err(CommandError::Missing));
    }

    #[test]
    fn explicit_form() {
        let c = Command::from_fields(&fields(&[
            "",
            "2",
            "/bin/echo",
            "A=1",
            "B=2",
            "-my-var=x",
            "HOME",
        ]));
        assert_eq!(
            c,
            Ok(Command {
                argv: fields(&["/bin/echo", "A=1"]),
                env: vec![
                    EnvEntry::set("B", "2"),
                    EnvEntry::set("-my-var", "x"),
                    EnvEntry::unset("HOME")
                ],
            })
        );
        let c = Command::from_fields(&fields(&["", "3", "printf", "", "=", "X=="]));
        assert_eq!(
            c,
            Ok(Command {
                argv: fields(&["printf", "", "="]),
                env: vec![EnvEntry::set("X", "=")],
            })
        );
        for bad in [
            &["", ""][..],
            &["", "0", "x"],
            &["", "2", "x"],
            &["", "-1", "x"],
            &["", "+1", "x"],
            &["", "1x", "x"],
            &["", "99999999999", "x"],
        ] {
            assert_eq!(
                Command::from_fields(&fields(bad)),
                Err(CommandError::BadCount),
                "{bad:?}"
            );
        }
        assert_eq!(
            Command::from_fields(&fields(&[""])),
            Err(CommandError::Missing)
        );
        assert_eq!(
            Command::from_fields(&fields(&["", "1", ""])),
            Err(CommandError::EmptyProgram)
        );
        assert_eq!(
            Command::from_fields(&fields(&["", "1", "x", "=v"])),
            Err(CommandError::EmptyName)
        );
        assert_eq!(
            Command::from_fields(&fields(&["", "1", "x", ""])),
            Err(CommandError::EmptyName)
        );
    }

    #[test]
    fn to_fields_picks_the_form_that_is_exact() {
        let simple = Command {
            argv: fields(&["/bin/sh", "-c", "echo $A"]),
            env: vec![EnvEntry::set("A", "1")],
        };
        assert_eq!(
            simple.to_fields(),
            fields(&["/bin/sh", "-c", "echo $A", "A=1"])
        );
        let tricky = Command::new(["/bin/echo", "A=1"]);
        assert_eq!(tricky.to_fields(), fields(&["", "2", "/bin/echo", "A=1"]));
        let unset = Command {
            argv: fields(&["x"]),
            env: vec![EnvEntry::unset("HOME")],
        };
        assert_eq!(unset.to_fields(), fields(&["", "1", "x", "HOME"]));
        for c in [simple, tricky, unset] {
            assert_eq!(Command::from_fields(&c.to_fields()), Ok(c.clone()));
            assert_eq!(Command::from_fields(&c.to_explicit_fields()), Ok(c));
        }
    }
}
