//! Broken and hostile configuration files through the real binary, named after archon.lua(5)'s
//! errors: `archon --check FILE` and `archon --config FILE` both refuse each one with exit code
//! 78 and `file:line: what` on stderr, and `--config` never creates its socket.

use std::process::Command;

use archon_tests::*;

/// What archon said of a file it refused, with the file's path.
struct Refusal {
    path: String,
    /// The first line of `--check`'s stderr.
    message: String,
}

impl Refusal {
    /// Fails unless the message is `<path>:<line>: ...` with `line` in `lines`, and contains
    /// each of `parts`.
    fn ensure(&self, lines: std::ops::RangeInclusive<u32>, parts: &[&str]) -> Result {
        let Refusal { path, message } = self;
        let rest = message.strip_prefix(&format!("{path}:")).context(format!(
            "the message does not start with {path}: {message:?}"
        ))?;
        let (line, what) = rest
            .split_once(": ")
            .context(format!("no line number: {message:?}"))?;
        ensure!(
            line.parse::<u32>().is_ok_and(|n| lines.contains(&n)),
            "the message names line {line}, want {lines:?}: {message:?}"
        );
        for p in parts {
            ensure!(what.contains(p), "the message lacks {p:?}: {message:?}");
        }
        Ok(())
    }
}

/// Runs `archon --check` and `archon --config` on a file holding `lua`: both must refuse it with
/// exit code 78 and the same message, and `--config` must not create its socket.
fn refused(lua: &str) -> Result<Refusal> {
    refused_by_both(lua, true)
}

/// [`refused`]; with `same` false, `--config` may word its message differently from `--check`
/// but must name the same file and line.
fn refused_by_both(lua: &str, same: bool) -> Result<Refusal> {
    let cfg = ConfigFile::with(lua)?;
    let path = cfg.path().display().to_string();
    let message = check_refuses(cfg.path())?;
    let mut a = cfg.start(Archon::builder().no_wait())?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(
        status.code(),
        Some(EXIT_CONFIG),
        "archon --config on a broken file ({status}); log: {}",
        a.log_text()
    );
    ensure!(
        !a.socket().exists(),
        "archon --config created its socket for a broken file"
    );
    let log = a.log_text();
    let want = if same {
        message.as_str()
    } else {
        message.split(": ").next().unwrap_or_default()
    };
    ensure!(
        log.contains(want),
        "archon --config's stderr does not say what --check said ({message:?}): {log:?}"
    );
    Ok(Refusal { path, message })
}

/// Runs `archon --check <path>`: exit 78, and returns the first line of its stderr.
fn check_refuses(path: &std::path::Path) -> Result<String> {
    let out = output_within(
        Command::new(archon_bin()?).arg("--check").arg(path),
        LONG_BOUND,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "archon --check on a broken file: stdout {:?}, stderr {stderr:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let first = stderr.lines().next().unwrap_or_default().to_string();
    // archon may prefix its name; the message proper starts at the path.
    let at = first.find(&path.display().to_string()).context(format!(
        "--check's stderr does not name the file: {stderr:?}"
    ))?;
    Ok(first[at..].to_string())
}

#[test]
fn check_lists_what_a_good_file_declares() -> Result {
    let cfg = ConfigFile::with(
        r#"
service "db" { argv = {"/bin/sleep", "100"} }
task "migrate" { argv = {"/bin/true"}, before = {"web"} }
for i = 1, 2 do service("web" .. i) { argv = {"/bin/sleep", "100"} } end
service "web" { argv = {"/bin/sleep", "100"}, requires = {"db"} }
"#,
    )?;
    let out = output_within(
        Command::new(archon_bin()?).arg("--check").arg(cfg.path()),
        LONG_BOUND,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure_eq!(
        out.status.code(),
        Some(0),
        "archon --check on a good file: {stdout:?} {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    ensure_eq!(
        lines,
        vec![
            "service db",
            "service web",
            "service web1",
            "service web2",
            "task migrate"
        ],
        "what --check prints"
    );
    Ok(())
}

#[test]
fn a_syntax_error() -> Result {
    refused("service \"a\" { argv = {\"/bin/true\"} }\nservice \"b\" { argv = {\"/bin/true\"}\n")?
        .ensure(2..=3, &["expected"])
}

#[test]
fn an_unknown_field() -> Result {
    refused("\nservice \"x\" { argv = {\"/bin/true\"}, bogus = 1 }\n")?
        .ensure(2..=2, &["x: unknown field \"bogus\""])?;
    refused("service \"x\" {\n  argv = {\"/bin/true\"},\n  requries = {}\n}\n")?
        .ensure(1..=3, &["unknown field \"requries\"", "requires"])
}

#[test]
fn a_field_of_the_wrong_type() -> Result {
    refused("service \"a\" { argv = {\"/bin/true\"} }\nservice \"x\" { argv = 1 }\n")?
        .ensure(2..=2, &["x: argv must be a list of strings, got number"])?;
    refused("service \"x\" { argv = {\"/bin/true\"}, restart = \"sometimes\" }\n")?
        .ensure(1..=1, &["restart", "sometimes"])
}

#[test]
fn what_accept_rules_out() -> Result {
    refused(
        "service \"a\" { argv = {\"/bin/true\"} }\nservice \"x\" { argv = {\"/bin/cat\"}, accept = true }\n",
    )?
    .ensure(2..=2, &["x: accept = true starts a process per connection: it needs sockets"])?;
    refused(
        "\nservice \"x\" { argv = {\"/bin/cat\"}, accept = true,\n  sockets = {{udp = \"127.0.0.1:0\"}} }\n",
    )?
    .ensure(2..=3, &["sockets[1] is udp", "only tcp and unix sockets take connections"])?;
    refused(
        "service \"x\" { argv = {\"/bin/cat\"}, accept = true, restart = \"always\",\n  sockets = {{tcp = \"127.0.0.1:0\"}} }\n",
    )?
    .ensure(1..=2, &["instances are not restarted"])?;
    refused(
        "service \"x\" { argv = {\"/bin/cat\"}, accept = true, ready = \"notify\",\n  sockets = {{tcp = \"127.0.0.1:0\"}} }\n",
    )?
    .ensure(1..=2, &["no readiness to wait for"])?;
    refused(
        "service \"x\" { argv = {\"/bin/cat\"}, max_connections = 4,\n  sockets = {{tcp = \"127.0.0.1:0\"}} }\n",
    )?
    .ensure(1..=2, &["max_connections needs accept = true"])
}

#[test]
fn a_user_or_group_that_does_not_exist() -> Result {
    // Names are looked up when the file is loaded: the file is refused, no service starts as
    // someone who is not there.
    refused(
        "service \"a\" { argv = {\"/bin/true\"} }\nservice \"web\" { argv = {\"/bin/true\"}, user = \"archon-no-such-user\" }\n",
    )?
    .ensure(2..=2, &["web: user \"archon-no-such-user\" does not exist"])?;
    refused(
        "service \"web\" { argv = {\"/bin/true\"}, user = \"nobody\", group = \"archon-no-such-group\" }\n",
    )?
    .ensure(1..=1, &["web: group \"archon-no-such-group\" does not exist"])?;
    refused(
        "service \"web\" { argv = {\"/bin/true\"}, groups = {\"daemon\", \"archon-no-such-group\"} }\n",
    )?
    .ensure(1..=1, &["web: group \"archon-no-such-group\" does not exist"])?;
    // A number is taken as it is, but without a database entry it has no primary group.
    refused("service \"web\" { argv = {\"/bin/true\"}, user = 4000000 }\n")?.ensure(
        1..=1,
        &["web: user 4000000 is not in the user database, so it has no primary group: give group too"],
    )
}

#[test]
fn an_unknown_dependency() -> Result {
    refused(
        "service \"db\" { argv = {\"/bin/true\"} }\nservice \"web\" { argv = {\"/bin/true\"}, requires = {\"dbb\"} }\n",
    )?
    .ensure(2..=2, &["web requires dbb, which is not declared"])
}

#[test]
fn a_duplicate_name() -> Result {
    let r = refused(
        "service \"a\" { argv = {\"/bin/true\"} }\ntask \"a\" { argv = {\"/bin/true\"} }\n",
    )?;
    r.ensure(2..=2, &["a declared twice", &format!("{}:1", r.path)])
}

#[test]
fn a_dependency_cycle_is_named() -> Result {
    let r = refused(
        r#"service "a" { argv = {"/bin/true"}, requires = {"b"} }
service "b" { argv = {"/bin/true"}, after = {"c"} }
service "c" { argv = {"/bin/true"}, requires = {"a"} }
service "d" { argv = {"/bin/true"}, requires = {"a"} }
"#,
    )?;
    r.ensure(1..=3, &["dependency cycle: "])?;
    // The cycle, from whichever member it starts at, and nothing outside it.
    let cycle = r
        .message
        .split("dependency cycle: ")
        .nth(1)
        .unwrap_or_default();
    ensure!(
        ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]
            .iter()
            .any(|c| cycle.starts_with(c)),
        "the cycle named: {:?}",
        r.message
    );
    ensure!(
        !cycle.contains('d'),
        "d is not in the cycle: {:?}",
        r.message
    );
    Ok(())
}

#[test]
fn an_endless_loop_is_interrupted() -> Result {
    refused("service \"a\" { argv = {\"/bin/true\"} }\nwhile true do end\n")?
        .ensure(2..=2, &["did not finish", "endless loop"])
}

#[test]
fn a_hundred_thousand_services_are_too_many() -> Result {
    let r = refused_by_both(
        "for i = 1, 100000 do\n  service(\"w\" .. i) { argv = {\"/bin/sleep\", \"1000\"} }\nend\n",
        false,
    )?;
    // The declaration limit stops it; a slow (debug, loaded) machine may reach the time limit
    // first: both are clear, and neither hangs.
    if r.message.contains("did not finish in") {
        return r.ensure(1..=3, &["configuration did not finish in"]);
    }
    r.ensure(2..=2, &["too many declarations: at most 16384"])
}

#[test]
fn memory_hungry_files_are_refused() -> Result {
    let r = refused("local s = string.rep(\"x\", 200 * 1024 * 1024)\n")?;
    // The allocation fails inside a C function: archon-lua names no line for it.
    let want = format!("{}: configuration uses more than 64 MiB of memory", r.path);
    if r.message == want {
        return Ok(());
    }
    r.ensure(1..=1, &["configuration uses more than 64 MiB of memory"])
}

#[test]
fn the_sandbox_has_no_io_os_execute_or_require() -> Result {
    for (src, part) in [
        (
            "local f = io.open(\"/etc/passwd\")",
            "attempt to index a nil value (global 'io')",
        ),
        (
            "os.execute(\"touch /tmp/archon-was-here\")",
            "attempt to call a nil value (field 'execute')",
        ),
        (
            "require(\"os\")",
            "attempt to call a nil value (global 'require')",
        ),
        (
            "dofile(\"/etc/passwd\")",
            "attempt to call a nil value (global 'dofile')",
        ),
    ] {
        refused(&format!(
            "service \"a\" {{ argv = {{\"/bin/true\"}} }}\n{src}\n"
        ))?
        .ensure(2..=2, &[part])?;
    }
    Ok(())
}

#[test]
fn a_file_that_does_not_exist() -> Result {
    let dir = TempDir::new()?;
    let path = dir.join("nowhere.lua");
    let message = check_refuses(&path)?;
    let shown = path.display().to_string();
    ensure!(
        message.starts_with(&format!("{shown}: cannot open")),
        "--check of a missing file: {message:?}"
    );
    let socket = dir.join("archon.sock");
    let out = output_within(
        Command::new(archon_bin()?)
            .env_remove("ARCHON_SOCKET")
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&path),
        LONG_BOUND,
    )?;
    ensure_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "archon --config of a missing file: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{shown}: cannot open")),
        "archon --config of a missing file says so: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!socket.exists(), "the socket was created");
    Ok(())
}
