//! The configuration as a user meets it: every field, every default, every error with its line.

use super::*;
use crate::model::*;

type Res = Result<(), String>;

fn load(src: &str) -> Result<Config, LoadError> {
    load_str("t.lua", src.as_bytes())
}

/// The one declaration `src` makes.
fn one(src: &str) -> Result<Service, String> {
    let config = load(src).map_err(|e| e.to_string())?;
    match <[Service; 1]>::try_from(config.services) {
        Ok([s]) => Ok(s),
        Err(v) => Err(format!("{} declarations", v.len())),
    }
}

/// `x`'s fields: `service "x" { argv = {"/bin/true"}, <fields> }`.
fn with(fields: &str) -> Result<Service, String> {
    one(&format!(
        "service \"x\" {{ argv = {{\"/bin/true\"}}, {fields} }}"
    ))
}

fn task_with(fields: &str) -> Result<Service, String> {
    one(&format!(
        "task \"x\" {{ argv = {{\"/bin/true\"}}, {fields} }}"
    ))
}

/// Checks every `(source, line, message)`; reports all mismatches at once.
fn errors(cases: &[(&str, Option<u32>, &str)]) -> Res {
    let mut wrong = Vec::new();
    for (src, line, message) in cases {
        match load(src) {
            Ok(_) => wrong.push(format!("{src:?}: loaded")),
            Err(e) => {
                if e.file != "t.lua" || e.line != *line || e.message != *message {
                    wrong.push(format!(
                        "{src:?}\n   got: {:?} {}\n  want: {line:?} {message}",
                        e.line, e.message
                    ));
                }
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("\n"))
    }
}

/// Errors about a field of `service "x"` on line 1.
fn field_errors(cases: &[(&str, &str)]) -> Res {
    let sources: Vec<String> = cases
        .iter()
        .map(|(fields, _)| format!("service \"x\" {{ argv = {{\"/bin/true\"}}, {fields} }}"))
        .collect();
    let messages: Vec<String> = cases.iter().map(|(_, m)| format!("x: {m}")).collect();
    let cases: Vec<(&str, Option<u32>, &str)> = sources
        .iter()
        .zip(&messages)
        .map(|(s, m)| (s.as_str(), Some(1), m.as_str()))
        .collect();
    errors(&cases)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---- the example and the defaults ----

#[test]
fn the_briefs_example_loads() -> Res {
    let config = load(
        r#"
service "db"  { argv = {"/usr/bin/redis-server", "--port", "6390"}, ready = "notify" }
service "web" { argv = {"/usr/bin/python3", "-m", "http.server", "8080"},
                requires = {"db"}, restart = "on-failure", env = {PYTHONUNBUFFERED = "1"} }
task "migrate" { argv = {"/bin/sh", "-c", "echo migrated"}, before = {"web"} }
for i = 1, 4 do service("worker" .. i) { argv = {"/usr/bin/sleep", "1000"} } end
"#,
    )
    .map_err(|e| e.to_string())?;
    let got: Vec<(&str, UnitKind, u32)> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.kind, s.line))
        .collect();
    assert_eq!(
        got,
        [
            ("db", UnitKind::Service, 2),
            ("web", UnitKind::Service, 3),
            ("migrate", UnitKind::Task, 5),
            ("worker1", UnitKind::Service, 6),
            ("worker2", UnitKind::Service, 6),
            ("worker3", UnitKind::Service, 6),
            ("worker4", UnitKind::Service, 6),
        ]
    );
    let web = config.get("web").ok_or("no web")?;
    assert_eq!(web.argv[3], b"8080");
    assert_eq!(web.extras.requires, names(&["db"]));
    assert_eq!(web.extras.after, names(&["db", "migrate"]));
    assert_eq!(web.restart, Restart::OnFailure);
    assert_eq!(web.env, [(b"PYTHONUNBUFFERED".to_vec(), b"1".to_vec())]);
    assert_eq!(config.get("db").map(|s| s.ready), Some(Ready::Notify));
    assert_eq!(
        config.get("migrate").map(|s| s.restart),
        Some(Restart::Never)
    );
    Ok(())
}

#[test]
fn defaults_of_a_service() -> Res {
    let s = one("service \"x\" { argv = {\"/bin/true\"} }")?;
    let mut want = Service::new("x", UnitKind::Service, vec![b"/bin/true".to_vec()]);
    want.line = 1;
    assert_eq!(s, want);
    assert_eq!(s.restart, Restart::Always);
    assert_eq!(
        s.extras.backoff,
        Backoff {
            initial_ms: 100,
            max_ms: 30_000,
            multiplier: 2.0,
            reset_after_ms: 10_000
        }
    );
    assert_eq!(
        s.extras.flap,
        Flap {
            restarts: 5,
            within_ms: 10_000
        }
    );
    assert_eq!((s.stop_signal, s.stop_timeout_ms), (libc::SIGTERM, 7000));
    assert_eq!((s.enabled, s.autostart, s.critical), (true, true, false));
    assert_eq!(
        (s.ready, s.ready_timeout_ms, s.extras.watchdog_ms),
        (Ready::Exec, 60_000, None)
    );
    assert_eq!(
        (
            s.extras.cwd.as_ref(),
            s.extras.user.as_ref(),
            s.extras.umask,
            s.extras.nice
        ),
        (None, None, None, None)
    );
    assert!(s.env.is_empty() && s.extras.rlimits.is_empty() && s.health.is_none());
    assert!(
        s.extras.requires.is_empty() && s.extras.after.is_empty() && s.extras.before.is_empty()
    );
    Ok(())
}

#[test]
fn defaults_of_a_task() -> Res {
    let s = one("task \"x\" { argv = {\"/bin/true\"} }")?;
    let mut want = Service::new("x", UnitKind::Task, vec![b"/bin/true".to_vec()]);
    want.line = 1;
    assert_eq!(s, want);
    assert_eq!(s.restart, Restart::Never);
    Ok(())
}

#[test]
fn an_empty_file_declares_nothing() -> Res {
    assert_eq!(load("").map_err(|e| e.to_string())?.services, []);
    assert_eq!(
        load("-- nothing\nlocal x = 1\n")
            .map_err(|e| e.to_string())?
            .services,
        []
    );
    Ok(())
}

// ---- every field ----

#[test]
fn argv_takes_strings_and_numbers() -> Res {
    let s = one("service \"x\" { argv = {\"/bin/sleep\", 10, 1.5, \"\", \"caf\\xe9\"} }")?;
    let want: Vec<Vec<u8>> = vec![
        b"/bin/sleep".to_vec(),
        b"10".to_vec(),
        b"1.5".to_vec(),
        b"".to_vec(),
        b"caf\xe9".to_vec(),
    ];
    assert_eq!(s.argv, want);
    Ok(())
}

#[test]
fn the_other_form_of_a_declaration() -> Res {
    let s = one("service(\"x\", { argv = {\"/bin/true\"} })")?;
    assert_eq!(s.argv, [b"/bin/true".to_vec()]);
    let s = one("local decl = task \"x\"\ndecl { argv = {\"/bin/true\"} }")?;
    assert_eq!((s.kind, s.line), (UnitKind::Task, 1));
    Ok(())
}

#[test]
fn env_is_sorted_and_numbers_are_text() -> Res {
    let s = with("env = {B = 1, A = \"x\", C = 2.5, [\"odd-name\"] = \"\", D = 1e100}")?;
    let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"A".to_vec(), b"x".to_vec()),
        (b"B".to_vec(), b"1".to_vec()),
        (b"C".to_vec(), b"2.5".to_vec()),
        (b"D".to_vec(), b"1e+100".to_vec()),
        (b"odd-name".to_vec(), b"".to_vec()),
    ];
    assert_eq!(s.env, want);
    Ok(())
}

#[test]
fn cwd_umask_nice() -> Res {
    let s = with("cwd = \"/srv/www\", umask = \"027\", nice = -5")?;
    assert_eq!(s.extras.cwd, Some(std::path::PathBuf::from("/srv/www")));
    assert_eq!((s.extras.umask, s.extras.nice), (Some(0o027), Some(-5)));
    assert_eq!(with("umask = 18")?.extras.umask, Some(0o022));
    assert_eq!(with("umask = \"0\"")?.extras.umask, Some(0));
    assert_eq!(with("umask = \"0777\"")?.extras.umask, Some(0o777));
    assert_eq!(with("nice = 19")?.extras.nice, Some(19));
    assert_eq!(with("nice = 4.0")?.extras.nice, Some(4));
    Ok(())
}

#[test]
fn user_group_groups_are_resolved() -> Res {
    let s = with("user = \"root\"")?;
    let c = s.extras.user.clone().ok_or("no user")?;
    assert_eq!((c.uid, c.gid), (0, 0));
    assert!(c.groups.contains(&0));
    let s = with("user = 0, group = \"root\", groups = {5, \"root\"}")?;
    assert_eq!(
        s.extras.user,
        Some(Credentials {
            uid: 0,
            gid: 0,
            groups: vec![5, 0]
        })
    );
    let s = with("group = 7")?;
    let me = nix::unistd::getuid().as_raw();
    assert_eq!(
        s.extras.user,
        Some(Credentials {
            uid: me,
            gid: 7,
            groups: vec![7]
        })
    );
    Ok(())
}

#[test]
fn rlimits_every_name_and_form() -> Res {
    let all: Vec<String> = RESOURCES.iter().map(|(n, _)| format!("{n} = 1")).collect();
    let s = with(&format!("rlimits = {{{}}}", all.join(", ")))?;
    assert_eq!(s.extras.rlimits.len(), 15);
    let want: Vec<i32> = RESOURCES.iter().map(|(_, r)| *r).collect();
    let got: Vec<i32> = s.extras.rlimits.iter().map(|r| r.resource).collect();
    assert_eq!(got, want);
    let s = with(
        "rlimits = {nofile = {1024, 4096}, core = \"infinity\", stack = {soft = 8, hard = \"infinity\"}}",
    )?;
    let inf = libc::RLIM_INFINITY;
    assert_eq!(
        s.extras.rlimits,
        [
            Rlimit {
                resource: libc::RLIMIT_CORE as i32,
                soft: inf,
                hard: inf
            },
            Rlimit {
                resource: libc::RLIMIT_NOFILE as i32,
                soft: 1024,
                hard: 4096
            },
            Rlimit {
                resource: libc::RLIMIT_STACK as i32,
                soft: 8,
                hard: inf
            },
        ]
    );
    Ok(())
}

#[test]
fn restart_backoff_flap() -> Res {
    let s = with(
        "restart = \"never\", backoff = {initial = 0.5, max = \"1m\", multiplier = 1.5, reset_after = 60}, flap = {restarts = 0, within = \"30s\"}",
    )?;
    assert_eq!(s.restart, Restart::Never);
    assert_eq!(
        s.extras.backoff,
        Backoff {
            initial_ms: 500,
            max_ms: 60_000,
            multiplier: 1.5,
            reset_after_ms: 60_000
        }
    );
    assert_eq!(
        s.extras.flap,
        Flap {
            restarts: 0,
            within_ms: 30_000
        }
    );
    // A partial table keeps the other defaults.
    let s = with("backoff = {max = 60}, flap = {restarts = 9}")?;
    assert_eq!(
        (s.extras.backoff.initial_ms, s.extras.backoff.max_ms),
        (100, 60_000)
    );
    assert_eq!(
        s.extras.flap,
        Flap {
            restarts: 9,
            within_ms: 10_000
        }
    );
    assert_eq!(with("restart = \"always\"")?.restart, Restart::Always);
    assert_eq!(
        task_with("restart = \"on-failure\"")?.restart,
        Restart::OnFailure
    );
    Ok(())
}

#[test]
fn stop_signal_and_timeout() -> Res {
    for (text, signo) in [
        ("\"TERM\"", 15),
        ("\"SIGINT\"", 2),
        ("\"hup\"", 1),
        ("9", 9),
        ("\"RTMIN+2\"", 36),
        ("\"SIGRTMAX\"", 64),
    ] {
        assert_eq!(
            with(&format!("stop_signal = {text}"))?.stop_signal,
            signo,
            "{text}"
        );
    }
    assert_eq!(with("stop_timeout = 0")?.stop_timeout_ms, 0);
    assert_eq!(with("stop_timeout = \"1h\"")?.stop_timeout_ms, 3_600_000);
    Ok(())
}

#[test]
fn durations_in_every_spelling() -> Res {
    for (text, ms) in [
        ("1", 1000),
        ("1.5", 1500),
        ("0.0004", 0),
        ("0.0005", 1),
        ("\"250ms\"", 250),
        ("\"5s\"", 5000),
        ("\"1.25s\"", 1250),
        ("\"2m\"", 120_000),
        ("\"1h\"", 3_600_000),
        ("365 * 24 * 3600", 31_536_000_000),
    ] {
        assert_eq!(
            with(&format!("stop_timeout = {text}"))?.stop_timeout_ms,
            ms,
            "{text}"
        );
    }
    Ok(())
}

#[test]
fn flags() -> Res {
    let s = with("enabled = false, autostart = false, critical = true")?;
    assert_eq!((s.enabled, s.autostart, s.critical), (false, false, true));
    Ok(())
}

#[test]
fn readiness() -> Res {
    let s = with("ready = \"notify\", ready_timeout = 5, watchdog = \"2s\"")?;
    assert_eq!(
        (s.ready, s.ready_timeout_ms, s.extras.watchdog_ms),
        (Ready::Notify, 5000, Some(2000))
    );
    assert_eq!(with("ready = \"fd\"")?.ready, Ready::Fd(3));
    assert_eq!(with("ready = \"fd\", ready_fd = 9")?.ready, Ready::Fd(9));
    assert_eq!(with("ready = \"exec\"")?.ready, Ready::Exec);
    Ok(())
}

#[test]
fn health_checks() -> Res {
    let s = with(
        "health = {command = {\"/bin/check\", \"-q\"}, interval = 2, timeout = \"500ms\", retries = 5, start_period = 30}",
    )?;
    assert_eq!(
        s.health.as_deref(),
        Some(&Health {
            check: Check::Command(vec![b"/bin/check".to_vec(), b"-q".to_vec()]),
            interval_ms: 2000,
            timeout_ms: 500,
            retries: 5,
            start_period_ms: 30_000
        })
    );
    let s = with("health = {tcp = \"[::1]:8080\"}")?;
    assert_eq!(
        s.health.as_deref(),
        Some(&Health {
            check: Check::Tcp(crate::TcpTarget {
                ip: "::1".parse().map_err(|_| "addr")?,
                port: crate::Port::Number(8080)
            }),
            interval_ms: 10_000,
            timeout_ms: 5_000,
            retries: 3,
            start_period_ms: 0
        })
    );
    Ok(())
}

// ---- dependencies ----

#[test]
fn after_is_normalized_and_before_kept() -> Res {
    let config = load(
        r#"
service "a" { argv = {"/bin/true"} }
service "b" { argv = {"/bin/true"}, after = {"a"}, requires = {"c", "a", "c"} }
service "c" { argv = {"/bin/true"}, before = {"b", "d"} }
task "d" { argv = {"/bin/true"}, before = {"b"} }
service "e" { argv = {"/bin/true"}, before = {"a"} }
"#,
    )
    .map_err(|e| e.to_string())?;
    let after = |n: &str| {
        config
            .get(n)
            .map(|s| s.extras.after.clone())
            .unwrap_or_default()
    };
    assert_eq!(after("a"), names(&["e"]));
    assert_eq!(after("b"), names(&["a", "c", "d"]));
    assert_eq!(after("c"), names(&[]));
    assert_eq!(after("d"), names(&["c"]));
    assert_eq!(
        config.get("b").map(|s| s.extras.requires.clone()),
        Some(names(&["c", "a"]))
    );
    assert_eq!(
        config.get("c").map(|s| s.extras.before.clone()),
        Some(names(&["b", "d"]))
    );
    Ok(())
}

#[test]
fn dependency_errors_name_what_is_wrong() -> Res {
    errors(&[
        (
            "service \"web\" { argv = {\"a\"}, requires = {\"db\"} }",
            Some(1),
            "web requires db, which is not declared",
        ),
        (
            "service \"db\" { argv = {\"a\"} }\nservice \"web\" { argv = {\"a\"}, requires = {\"dbb\"} }",
            Some(2),
            "web requires dbb, which is not declared (did you mean db?)",
        ),
        (
            "service \"web\" { argv = {\"a\"}, after = {\"db\"} }",
            Some(1),
            "web: after names db, which is not declared",
        ),
        (
            "service \"web\" { argv = {\"a\"}, before = {\"db\"} }",
            Some(1),
            "web: before names db, which is not declared",
        ),
        (
            "service \"web\" { argv = {\"a\"}, requires = {\"web\"} }",
            Some(1),
            "web: requires names web itself",
        ),
        (
            "service \"web\" { argv = {\"a\"}, before = {\"web\"} }",
            Some(1),
            "web: before names web itself",
        ),
        (
            "service \"web\" { argv = {\"a\"}, requires = {\"bad name\"} }",
            Some(1),
            "web: requires[1] \"bad name\" is not a valid name: ' ' is not allowed in a name (only letters, digits and _ . @ : -)",
        ),
        (
            "service \"web\" { argv = {\"a\"}, after = \"db\" }",
            Some(1),
            "web: after must be a list of names, got string",
        ),
        (
            "service \"web\" { argv = {\"a\"}, requires = {42} }",
            Some(1),
            "web: requires[1] must be a name, got number",
        ),
    ])
}

#[test]
fn cycles_are_named() -> Res {
    errors(&[
        (
            "service \"a\" { argv = {\"x\"}, requires = {\"b\"} }\n\
             service \"b\" { argv = {\"x\"}, after = {\"c\"} }\n\
             service \"c\" { argv = {\"x\"}, requires = {\"a\"} }",
            Some(1),
            "dependency cycle: a -> b -> c -> a",
        ),
        (
            "service \"a\" { argv = {\"x\"} }\n\
             service \"b\" { argv = {\"x\"}, before = {\"c\"} }\n\
             service \"c\" { argv = {\"x\"}, before = {\"b\"} }",
            Some(2),
            "dependency cycle: b -> c -> b",
        ),
        (
            "task \"t\" { argv = {\"x\"}, before = {\"s\"} }\n\
             service \"s\" { argv = {\"x\"}, before = {\"t\"} }",
            Some(1),
            "dependency cycle: t -> s -> t",
        ),
    ])
}

#[test]
fn early_tasks_may_come_after_early_tasks_only() -> Res {
    let config = load(
        "task \"mounts\" { argv = {\"x\"}, early = true }\n\
         task \"keys\" { argv = {\"x\"}, early = true, after = {\"mounts\"} }\n\
         service \"web\" { argv = {\"x\"} }",
    )
    .map_err(|e| e.to_string())?;
    let early: Vec<(&str, bool)> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.early))
        .collect();
    assert_eq!(early, [("mounts", true), ("keys", true), ("web", false)]);
    // The implicit edge from every other unit is not written into its `after`.
    assert_eq!(
        config.get("web").map(|s| s.extras.after.clone()),
        Some(vec![])
    );
    assert!(!task_with("early = false")?.early);
    errors(&[
        (
            "service \"db\" { argv = {\"x\"} }\n\
             task \"setup\" { argv = {\"x\"}, early = true, requires = {\"db\"} }",
            Some(2),
            "setup: an early task cannot come after db, which is not early (requires, after, or its before)",
        ),
        (
            "task \"setup\" { argv = {\"x\"}, early = true }\n\
             task \"t\" { argv = {\"x\"}, before = {\"setup\"} }",
            Some(1),
            "setup: an early task cannot come after t, which is not early (requires, after, or its before)",
        ),
        (
            "service \"x\" { argv = {\"x\"}, early = true }",
            Some(1),
            "x: early is for tasks (run before everything else at boot); a service keeps running",
        ),
        (
            "task \"x\" { argv = {\"x\"}, early = 1 }",
            Some(1),
            "x: early must be true or false, got 1",
        ),
    ])
}

// ---- declaration errors ----

#[test]
fn declaration_errors() -> Res {
    errors(&[
        (
            "service \"x\"",
            Some(1),
            "x: service \"x\" has no table of fields; write service \"x\" { argv = {...} }",
        ),
        (
            "\ntask \"t\"\n",
            Some(2),
            "t: task \"t\" has no table of fields; write task \"t\" { argv = {...} }",
        ),
        (
            "service(42)",
            Some(1),
            "service needs a name first, as in service \"web\" { argv = {...} }; got 42",
        ),
        (
            "service { argv = {\"a\"} }",
            Some(1),
            "service needs a name first, as in service \"web\" { argv = {...} }; got table",
        ),
        (
            "service()",
            Some(1),
            "service needs a name first, as in service \"web\" { argv = {...} }; got nil",
        ),
        (
            "service(\"x\", {argv = {\"a\"}}, 3)",
            Some(1),
            "service takes a name and a table of fields: service \"name\" { argv = {...} }",
        ),
        (
            "service \"a b\" { argv = {\"a\"} }",
            Some(1),
            "service name \"a b\" is not valid: ' ' is not allowed in a name (only letters, digits and _ . @ : -)",
        ),
        (
            "task \"123\" { argv = {\"a\"} }",
            Some(1),
            "task name \"123\" is not valid: a name may not be all digits (that is a process id)",
        ),
        (
            "service \".x\" { argv = {\"a\"} }",
            Some(1),
            "service name \".x\" is not valid: a name may not start with '.'",
        ),
        (
            "service(string.rep(\"a\", 65)) { argv = {\"a\"} }",
            Some(1),
            "service name \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" is not valid: a name is at most 64 bytes, this one has 65",
        ),
        (
            "service \"db\" { argv = {\"a\"} }\n\ntask \"db\" { argv = {\"a\"} }",
            Some(3),
            "db declared twice (first at t.lua:1)",
        ),
        (
            "service \"x\" \"y\"",
            Some(1),
            "x: the declaration must be a table of fields, got string",
        ),
        (
            "service \"x\" (nil)",
            Some(1),
            "x: the declaration needs a table of fields, got nil",
        ),
        (
            "service \"x\" (function() end)",
            Some(1),
            "x: the declaration must be a table of fields, got function",
        ),
        (
            "local s = service \"x\"\ns { argv = {\"a\"} }\ns { argv = {\"a\"} }",
            Some(1),
            "x: its table of fields was given twice",
        ),
        (
            "service \"x\" {}",
            Some(1),
            "x: argv is required: the program and its arguments, as in argv = {\"/usr/bin/prog\", \"--flag\"}",
        ),
        (
            "service \"x\" { \"/bin/true\" }",
            Some(1),
            "x: fields are named, as in argv = {...}, but the table has the key [1]",
        ),
        (
            "service \"x\" (setmetatable({}, {__index = {argv = {\"a\"}}}))",
            Some(1),
            "x: the declaration is a table with a metatable; archon reads a table's own fields only, so copy inherited ones into it",
        ),
    ])
}

#[test]
fn the_line_is_the_declarations() -> Res {
    errors(&[
        (
            "\n\nservice \"web\" {\n  argv = 42,\n}\n",
            Some(3),
            "web: argv must be a list of strings, got number",
        ),
        // Inside a helper, the line of the call in the helper.
        (
            "local function mk(n)\n  service(n) { argv = {\"a\"}, bogus = 1 }\nend\n\nmk(\"x\")",
            Some(2),
            "x: unknown field \"bogus\"",
        ),
        // Declared from a string given to load: the line in the file that ran it.
        (
            "local f = load('service \"x\" { argv = 1 }')\n\nf()",
            Some(3),
            "x: argv must be a list of strings, got number",
        ),
    ])
}

#[test]
fn unknown_fields_suggest_a_near_name() -> Res {
    field_errors(&[
        (
            "requries = {}",
            "unknown field \"requries\" (did you mean \"requires\"?)",
        ),
        (
            "Restart = \"never\"",
            "unknown field \"Restart\" (did you mean \"restart\"?)",
        ),
        (
            "stop_timout = 1",
            "unknown field \"stop_timout\" (did you mean \"stop_timeout\"?)",
        ),
        ("zzz = 1, aaa = 2", "unknown field \"aaa\""),
        (
            "backoff = {mux = 3}",
            "unknown field \"backoff.mux\" (did you mean \"backoff.max\"?)",
        ),
        (
            "flap = {restart = 3}",
            "unknown field \"flap.restart\" (did you mean \"flap.restarts\"?)",
        ),
        (
            "health = {tcp = \"127.0.0.1:1\", intervall = 3}",
            "unknown field \"health.intervall\" (did you mean \"health.interval\"?)",
        ),
        (
            "backoff = {1}",
            "fields are named, as in max = 30, but backoff has the key [1]",
        ),
    ])
}

#[test]
fn argv_errors() -> Res {
    errors(&[
        (
            "service \"x\" { argv = 42 }",
            Some(1),
            "x: argv must be a list of strings, got number",
        ),
        (
            "service \"x\" { argv = \"/bin/true\" }",
            Some(1),
            "x: argv must be a list of strings, got string",
        ),
        (
            "service \"x\" { argv = function() end }",
            Some(1),
            "x: argv must be a list of strings, got function",
        ),
        (
            "service \"x\" { argv = {} }",
            Some(1),
            "x: argv is empty: it needs at least the program to run",
        ),
        (
            "service \"x\" { argv = {\"a\", {}} }",
            Some(1),
            "x: argv[2] must be a string, got table",
        ),
        (
            "service \"x\" { argv = {\"a\", true} }",
            Some(1),
            "x: argv[2] must be a string, got boolean",
        ),
        (
            "service \"x\" { argv = {function() end} }",
            Some(1),
            "x: argv[1] must be a string, got function",
        ),
        (
            "service \"x\" { argv = {\"a\", \"b\\0c\"} }",
            Some(1),
            "x: argv[2] contains a NUL byte",
        ),
        (
            "service \"x\" { argv = {\"\"} }",
            Some(1),
            "x: argv[1] is empty: it must name the program",
        ),
        (
            "service \"x\" { argv = {\"a\", x = 1} }",
            Some(1),
            "x: argv must be a list of strings, but it has the key \"x\"",
        ),
        (
            "service \"x\" { argv = {\"a\", nil, \"c\"} }",
            Some(1),
            "x: argv must be a list of strings, but it has a hole: nothing at [2]",
        ),
        (
            "service \"x\" { argv = {[0] = \"a\", \"b\"} }",
            Some(1),
            "x: argv must be a list of strings, but it has the key 0",
        ),
    ])
}

#[test]
fn field_type_and_value_errors() -> Res {
    field_errors(&[
        (
            "env = \"A=1\"",
            "env must be a table of NAME = value, got string",
        ),
        (
            "env = {\"A=1\"}",
            "env must map names to values, as in env = {NAME = \"value\"}, but it has the key [1]",
        ),
        ("env = {[\"A=B\"] = \"1\"}", "env name \"A=B\" contains '='"),
        ("env = {[\"\"] = \"1\"}", "env has an empty variable name"),
        (
            "env = {A = true}",
            "env[\"A\"] must be a string or a number, got boolean",
        ),
        (
            "env = {A = {}}",
            "env[\"A\"] must be a string or a number, got table",
        ),
        ("env = {A = \"a\\0\"}", "env[\"A\"] contains a NUL byte"),
        ("cwd = \"srv\"", "cwd must be an absolute path, got \"srv\""),
        ("cwd = 1", "cwd must be an absolute path, got number"),
        ("cwd = \"/a\\0b\"", "cwd contains a NUL byte"),
        (
            "user = \"no-such-user-archon\"",
            "user \"no-such-user-archon\" does not exist",
        ),
        (
            "user = -1",
            "user must be a user name or number (0 to 4294967294), got -1",
        ),
        (
            "user = 4294967295",
            "user must be a user name or number (0 to 4294967294), got 4294967295",
        ),
        ("user = {}", "user must be a user name or number, got table"),
        (
            "user = \"\"",
            "user must be a user name or number, got \"\"",
        ),
        (
            "group = \"no-such-group-archon\"",
            "group \"no-such-group-archon\" does not exist",
        ),
        (
            "group = 1.5",
            "group must be a group name or number (0 to 4294967294), got 1.5",
        ),
        (
            "groups = \"root\"",
            "groups must be a list of group names or numbers, got string",
        ),
        (
            "groups = {\"root\", {}}",
            "groups[2] must be a group name or number, got table",
        ),
        (
            "umask = \"0999\"",
            "umask must be an octal string like \"027\" or a number from 0 to 511 (0o777), got \"0999\"",
        ),
        (
            "umask = 512",
            "umask must be an octal string like \"027\" or a number from 0 to 511 (0o777), got 512",
        ),
        (
            "umask = true",
            "umask must be an octal string like \"027\" or a number from 0 to 511 (0o777), got boolean",
        ),
        (
            "rlimits = 5",
            "rlimits must be a table like {nofile = 1024}, got number",
        ),
        (
            "rlimits = {nofiles = 1}",
            "unknown resource limit \"nofiles\" (did you mean \"nofile\"?)",
        ),
        (
            "rlimits = {zz = 1}",
            "unknown resource limit \"zz\" (known: as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, sigpending, stack)",
        ),
        (
            "rlimits = {4}",
            "rlimits names its limits, as in {nofile = 1024}, but it has the key [1]",
        ),
        (
            "rlimits = {nofile = {10, 5}}",
            "rlimits.nofile: the soft limit 10 is above the hard limit 5",
        ),
        (
            "rlimits = {nofile = {\"infinity\", 5}}",
            "rlimits.nofile: the soft limit infinity is above the hard limit 5",
        ),
        (
            "rlimits = {nofile = -1}",
            "rlimits.nofile must be a number from 0 on, or \"infinity\", got -1",
        ),
        (
            "rlimits = {core = \"unlimited\"}",
            "rlimits.core must be a number from 0 on, or \"infinity\", got \"unlimited\"",
        ),
        (
            "rlimits = {nofile = {1}}",
            "rlimits.nofile must be a number, \"infinity\", or {soft, hard}: it needs both the soft and the hard limit",
        ),
        (
            "rlimits = {nofile = {1, 2, 3}}",
            "rlimits.nofile must be a number, \"infinity\", or {soft, hard}, but it has the key [3]",
        ),
        (
            "rlimits = {nofile = {1, soft = 2, hard = 3}}",
            "rlimits.nofile gives a limit twice",
        ),
        (
            "nice = 20",
            "nice must be a whole number from -20 to 19, got 20",
        ),
        (
            "nice = -21",
            "nice must be a whole number from -20 to 19, got -21",
        ),
        (
            "nice = 1.5",
            "nice must be a whole number from -20 to 19, got 1.5",
        ),
        (
            "nice = \"5\"",
            "nice must be a whole number from -20 to 19, got string",
        ),
        (
            "nice = 0/0",
            "nice must be a whole number from -20 to 19, got NaN",
        ),
        (
            "nice = math.huge",
            "nice must be a whole number from -20 to 19, got inf",
        ),
        (
            "restart = \"sometimes\"",
            "restart must be \"always\", \"on-failure\" or \"never\", got \"sometimes\"",
        ),
        (
            "restart = true",
            "restart must be \"always\", \"on-failure\" or \"never\", got true",
        ),
        (
            "backoff = 5",
            "backoff must be a table like {initial = 0.1, max = 30, multiplier = 2, reset_after = 10}, got number",
        ),
        (
            "backoff = {initial = 10, max = 1}",
            "backoff.max (1000ms) is less than backoff.initial (10000ms)",
        ),
        (
            "backoff = {multiplier = 0.5}",
            "backoff.multiplier must be a number from 1 to 100, got 0.5",
        ),
        (
            "backoff = {multiplier = 0/0}",
            "backoff.multiplier must be a number from 1 to 100, got NaN",
        ),
        (
            "backoff = {multiplier = \"2\"}",
            "backoff.multiplier must be a number from 1 to 100, got string",
        ),
        (
            "flap = {restarts = -1}",
            "flap.restarts must be a whole number from 0 to 1000000, got -1",
        ),
        ("flap = {within = 0}", "flap.within must be more than 0"),
        (
            "flap = true",
            "flap must be a table like {restarts = 5, within = 10}, got boolean",
        ),
        (
            "stop_signal = \"FOO\"",
            "stop_signal must be a signal name or number, like \"TERM\" or 15, got \"FOO\"",
        ),
        (
            "stop_signal = 0",
            "stop_signal must be a signal name or number, like \"TERM\" or 15, got 0",
        ),
        (
            "stop_signal = \"0\"",
            "stop_signal must be a signal name or number, like \"TERM\" or 15, got \"0\"",
        ),
        (
            "stop_signal = 65",
            "stop_signal must be a signal name or number, like \"TERM\" or 15, got 65",
        ),
        (
            "stop_signal = {}",
            "stop_signal must be a signal name or number, like \"TERM\" or 15, got table",
        ),
        (
            "stop_timeout = -1",
            "stop_timeout must not be negative, got -1",
        ),
        (
            "stop_timeout = \"-1s\"",
            "stop_timeout must be a duration (seconds, or a string like \"250ms\", \"5s\", \"2m\", \"1h\"), got \"-1s\"",
        ),
        (
            "stop_timeout = 0/0",
            "stop_timeout must be a finite duration, got NaN",
        ),
        (
            "stop_timeout = math.huge",
            "stop_timeout must be a finite duration, got inf",
        ),
        (
            "stop_timeout = -math.huge",
            "stop_timeout must be a finite duration, got -inf",
        ),
        (
            "stop_timeout = 1e12",
            "stop_timeout is too long: at most 365 days, got 1000000000000",
        ),
        (
            "stop_timeout = math.maxinteger",
            "stop_timeout is too long: at most 365 days, got 9223372036854775807",
        ),
        (
            "stop_timeout = \"5 s\"",
            "stop_timeout must be a duration (seconds, or a string like \"250ms\", \"5s\", \"2m\", \"1h\"), got \"5 s\"",
        ),
        (
            "stop_timeout = {}",
            "stop_timeout must be a duration (seconds, or a string like \"250ms\", \"5s\", \"2m\", \"1h\"), got table",
        ),
        (
            "enabled = \"yes\"",
            "enabled must be true or false, got \"yes\"",
        ),
        ("autostart = 1", "autostart must be true or false, got 1"),
        ("critical = {}", "critical must be true or false, got table"),
        (
            "ready = \"socket\"",
            "ready must be \"exec\", \"notify\" or \"fd\", got \"socket\"",
        ),
        ("ready_fd = 5", "ready_fd needs ready = \"fd\""),
        (
            "ready = \"fd\", ready_fd = 2",
            "ready_fd must be a descriptor number from 3 to 1023, got 2",
        ),
        (
            "ready = \"fd\", ready_fd = \"4\"",
            "ready_fd must be a descriptor number from 3 to 1023, got string",
        ),
        ("ready_timeout = 0", "ready_timeout must be more than 0"),
        (
            "watchdog = 5",
            "watchdog needs ready = \"notify\" (WATCHDOG=1 arrives on NOTIFY_SOCKET)",
        ),
        (
            "ready = \"notify\", watchdog = \"0ms\"",
            "watchdog must be more than 0",
        ),
        (
            "health = {}",
            "health needs command = {\"/path/check\", ...} or tcp = \"host:port\"",
        ),
        (
            "health = {tcp = \"127.0.0.1:1\", command = {\"a\"}}",
            "health has both command and tcp; give one",
        ),
        (
            "health = {tcp = \"localhost:80\"}",
            "health.tcp must be an address like \"127.0.0.1:8080\", \"[::1]:8080\" or \"127.0.0.1:${db.port}\", got \"localhost:80\"",
        ),
        (
            "health = {command = {}}",
            "health.command is empty: it needs at least the program to run",
        ),
        (
            "health = {command = \"check\"}",
            "health.command must be a list of strings, got string",
        ),
        (
            "health = {tcp = \"127.0.0.1:1\", retries = 0}",
            "health.retries must be a whole number from 1 to 1000, got 0",
        ),
        (
            "health = {tcp = \"127.0.0.1:1\", interval = 0}",
            "health.interval must be more than 0",
        ),
        (
            "health = {tcp = \"127.0.0.1:1\", timeout = -1}",
            "health.timeout must not be negative, got -1",
        ),
        (
            "health = \"tcp\"",
            "health must be a table like {tcp = \"127.0.0.1:8080\"} or {command = {...}}, got string",
        ),
    ])
}

#[test]
fn lists_have_a_length_limit() -> Res {
    errors(&[
        (
            "local t = {}\nfor i = 1, 65537 do t[i] = \"a\" end\nservice \"x\" { argv = t }",
            Some(3),
            "x: argv has 65537 items; at most 65536",
        ),
        (
            "local t = {}\nfor i = 1, 65537 do t[\"V\" .. i] = \"a\" end\nservice \"x\" { argv = {\"a\"}, env = t }",
            Some(3),
            "x: env has more than 65536 variables",
        ),
        (
            "local t = {}\nfor i = 1, 65537 do t[i] = \"a\" end\nservice \"x\" { argv = {\"a\"}, after = t }",
            Some(3),
            "x: after has 65537 items; at most 65536",
        ),
    ])?;
    let s =
        one("local t = {}\nfor i = 1, 65536 do t[i] = \"a\" .. i end\nservice \"x\" { argv = t }")?;
    assert_eq!(s.argv.len(), 65536);
    assert_eq!(s.argv[65535], b"a65536");
    Ok(())
}

#[test]
fn task_only_errors() -> Res {
    errors(&[
        (
            "task \"x\" { argv = {\"a\"}, restart = \"always\" }",
            Some(1),
            "x: a task cannot restart = \"always\" (it runs to completion); use \"on-failure\" or \"never\"",
        ),
        (
            "task \"x\" { argv = {\"a\"}, health = {tcp = \"127.0.0.1:1\"} }",
            Some(1),
            "x: health checks are for services; a task runs to completion",
        ),
    ])
}

// ---- Lua's own errors, the sandbox, the budgets ----

#[test]
fn lua_errors_keep_their_line() -> Res {
    errors(&[
        (
            "service \"a\" { argv = {\"/bin/true\"}\n",
            Some(2),
            "'}' expected (to close '{' at line 1) near <eof>",
        ),
        ("x = = 1", Some(1), "unexpected symbol near '='"),
        (
            "local x\nx.y = 1",
            Some(2),
            "attempt to index a nil value (local 'x')",
        ),
        ("\nerror(\"boom\")", Some(2), "boom"),
        ("\n\nerror(\"boom\", 0)", Some(3), "boom"),
        (
            "error({})",
            Some(1),
            "error() was called with a table value instead of a message",
        ),
        (
            "error()",
            Some(1),
            "error() was called with a nil value instead of a message",
        ),
        (
            "local t = {} .. 1",
            Some(1),
            "attempt to concatenate a table value",
        ),
        (
            "\x1bLua",
            None,
            "attempt to load a binary chunk (mode is 't')",
        ),
    ])
}

#[test]
fn the_sandbox_has_no_way_out() -> Res {
    errors(&[
        (
            "require(\"os\")",
            Some(1),
            "attempt to call a nil value (global 'require')",
        ),
        (
            "io.open(\"/etc/passwd\")",
            Some(1),
            "attempt to index a nil value (global 'io')",
        ),
        (
            "os.execute(\"true\")",
            Some(1),
            "attempt to call a nil value (field 'execute')",
        ),
        (
            "os.remove(\"/tmp/x\")",
            Some(1),
            "attempt to call a nil value (field 'remove')",
        ),
        (
            "os.exit(1)",
            Some(1),
            "attempt to call a nil value (field 'exit')",
        ),
        (
            "debug.sethook()",
            Some(1),
            "attempt to index a nil value (global 'debug')",
        ),
        (
            "package.loadlib(\"x\", \"y\")",
            Some(1),
            "attempt to index a nil value (global 'package')",
        ),
        (
            "dofile(\"/etc/passwd\")",
            Some(1),
            "attempt to call a nil value (global 'dofile')",
        ),
        (
            "loadfile(\"/etc/passwd\")",
            Some(1),
            "attempt to call a nil value (global 'loadfile')",
        ),
        (
            "print(1)",
            Some(1),
            "attempt to call a nil value (global 'print')",
        ),
        (
            "collectgarbage()",
            Some(1),
            "attempt to call a nil value (global 'collectgarbage')",
        ),
        (
            "coroutine.wrap(print)",
            Some(1),
            "attempt to index a nil value (global 'coroutine')",
        ),
        (
            "string.dump(function() end)",
            Some(1),
            "attempt to call a nil value (field 'dump')",
        ),
        (
            "(\"\").dump(function() end)",
            Some(1),
            "attempt to call a nil value (field 'dump')",
        ),
        (
            "local f, e = load(\"\\27Lua\\84\\0\")\nerror(e, 0)",
            Some(2),
            "attempt to load a binary chunk (mode is 't')",
        ),
        (
            "local f, e = load(\"\\27Lua\", \"x\", \"b\")\nerror(e, 0)",
            Some(2),
            "attempt to load a binary chunk (mode is 't')",
        ),
        (
            "setmetatable({}, {__gc = function() while true do end end})",
            Some(1),
            "__gc metamethods are not allowed in archon's configuration",
        ),
        (
            "local t = setmetatable({}, {__len = function() return 2^60 end})\ntable.insert(t, 1, 0)",
            Some(1),
            "__len metamethods are not allowed in archon's configuration",
        ),
        (
            "table.move({}, 1, 1e15, 2)",
            Some(1),
            "table.move: too many elements (at most 16777216)",
        ),
    ])
}

#[test]
fn the_sandbox_keeps_what_a_config_needs() -> Res {
    let s = one(r#"
local home = os.getenv("HOME") or "/"
assert(type(os.time()) == "number" and type(os.clock()) == "number")
assert(type(os.date("%Y")) == "string")
local f = assert(load("return 1 + 1"))
assert(f() == 2)
local g = load("return x", "chunk", "t", {x = 5})
assert(g() == 5)
local ok, e = pcall(error, "caught", 0)
assert(not ok and e == "caught")
assert(select(2, xpcall(error, function(m) return "handled " .. m end, "it", 0)) == "handled it")
local t = setmetatable({}, {__index = function() return 3 end})
assert(t.anything == 3)
local parts = {}
for w in ("a b c"):gmatch("%S+") do table.insert(parts, w:upper()) end
assert(table.concat(parts) == "ABC" and math.max(1, 2) == 2 and utf8.char(233) == "é")
assert(string.rep("", 1e18) == "" and (""):rep(1e18, "") == "" and ("ab"):rep(3, ",") == "ab,ab,ab")
assert(string.rep("", 0) == "" and string.rep("x", 0) == "")
local moved = table.move({1, 2, 3}, 1, 3, 2)
assert(moved[1] == 1 and moved[4] == 3)
service "x" { argv = {"/bin/echo", home, string.format("%03d", 7)} }
"#)?;
    assert_eq!(s.argv[2], b"007");
    Ok(())
}

#[test]
fn pcall_cannot_catch_archons_errors() -> Res {
    errors(&[
        (
            "pcall(service, 42)\nservice \"ok\" { argv = {\"a\"} }",
            Some(1),
            "service needs a name first, as in service \"web\" { argv = {...} }; got 42",
        ),
        (
            "local ok = pcall(function() service \"x\" { argv = 1 } end)\nservice \"y\" { argv = {\"a\"} }",
            Some(1),
            "x: argv must be a list of strings, got number",
        ),
    ])
}

#[test]
fn an_endless_loop_is_interrupted() -> Res {
    let message = format!(
        "configuration did not finish: over {MAX_INSTRUCTIONS} instructions (an endless loop?)"
    );
    errors(&[
        ("\nwhile true do end", Some(2), &message),
        // Catching the interruption does not help.
        (
            "while true do\n  pcall(function() while true do end end)\nend",
            Some(2),
            &message,
        ),
    ])?;
    // A tail call that never returns is an endless loop too.
    let limits = small(1_000_000, MAX_MEMORY_BYTES, MAX_DECLARED_BYTES);
    let e = load_with("t.lua", b"local function f() return f() end\nf()", limits)
        .err()
        .ok_or("loaded")?;
    assert_eq!(
        e.to_string(),
        "t.lua:1: configuration did not finish: over 1000000 instructions (an endless loop?)"
    );
    Ok(())
}

fn small(instructions: u64, memory: usize, declared: usize) -> sandbox::Limits {
    sandbox::Limits {
        instructions,
        memory,
        declared,
        time: MAX_EVAL_TIME,
    }
}

#[test]
fn the_memory_limit_holds() -> Res {
    let limits = small(MAX_INSTRUCTIONS, 2 << 20, MAX_DECLARED_BYTES);
    for src in [
        "local t = {}\nfor i = 1, 1e9 do t[i] = i end",
        "local s = string.rep(\"x\", 1e9)",
        "local s = \"x\"\nwhile true do s = s .. s end",
        // A memory error caught by pcall still ends in one.
        "local t = {}\nfor i = 1, 1e9 do pcall(function() t[#t + 1] = string.rep(\"y\", 1000) end) end",
    ] {
        let e = load_with("t.lua", src.as_bytes(), limits)
            .err()
            .ok_or(format!("{src}: loaded"))?;
        let budget = format!(
            "configuration did not finish: over {MAX_INSTRUCTIONS} instructions (an endless loop?)"
        );
        assert!(
            e.message == "configuration uses more than 2 MiB of memory" || e.message == budget,
            "{src}: {e}"
        );
    }
    // The default: a plain loop that allocates is stopped well before archon's memory is.
    let e = load_with(
        "t.lua",
        b"local s = string.rep(\"x\", 100 * 1024 * 1024)",
        LIMITS,
    )
    .err()
    .ok_or("loaded")?;
    assert_eq!(
        e.to_string(),
        "t.lua: configuration uses more than 64 MiB of memory"
    );
    // Memory errors caught by pcall end the evaluation at the first one: retrying each
    // costs a full collection.
    let e = load_with(
        "t.lua",
        b"local t = {}\nfor i = 1, 1e9 do\n  pcall(function() t[#t + 1] = string.rep(\"y\", 1000) end)\nend",
        LIMITS,
    )
    .err()
    .ok_or("loaded")?;
    assert_eq!(
        e.to_string(),
        "t.lua:3: configuration uses more than 64 MiB of memory"
    );
    Ok(())
}

#[test]
fn work_the_budget_does_not_count_is_bounded_by_time() -> Res {
    // Each concatenation copies a MiB: 20M instructions of it would take many minutes.
    let mut limits = small(MAX_INSTRUCTIONS, MAX_MEMORY_BYTES, MAX_DECLARED_BYTES);
    limits.time = std::time::Duration::from_millis(100);
    let src = "local s = string.rep(\"x\", 1 << 20)\nwhile true do\n  local t = s .. \"y\"\nend";
    let e = load_with("t.lua", src.as_bytes(), limits)
        .err()
        .ok_or("loaded")?;
    assert_eq!(
        e.message,
        "configuration did not finish in 0.1 s of CPU time (an endless loop?)"
    );
    assert!(matches!(e.line, Some(2..=3)), "{e}");
    Ok(())
}

#[test]
fn declarations_may_not_hold_too_much() -> Res {
    let limits = small(MAX_INSTRUCTIONS, MAX_MEMORY_BYTES, 1 << 20);
    let src = "local big = string.rep(\"x\", 100000)\nfor i = 1, 100 do\n  service(\"w\" .. i) { argv = {\"/bin/true\", big} }\nend";
    let e = load_with("t.lua", src.as_bytes(), limits)
        .err()
        .ok_or("loaded")?;
    assert_eq!(
        e.to_string(),
        "t.lua:3: w11: the configuration is too large: its declarations hold more than 1 MiB"
    );
    // One declaration that names one long string many times is stopped while it is copied.
    let src = "local big = string.rep(\"x\", 1 << 20)\nlocal t = {}\nfor i = 1, 60000 do t[i] = big end\nservice \"x\" { argv = t }";
    let e = load_str("t.lua", src.as_bytes()).err().ok_or("loaded")?;
    assert_eq!(
        e.to_string(),
        "t.lua:4: x: the configuration is too large: its declarations hold more than 64 MiB"
    );
    Ok(())
}

#[test]
fn at_most_max_services() -> Res {
    let fits = format!(
        "for i = 1, {MAX_SERVICES} do service(\"w\" .. i) {{ argv = {{\"/bin/true\"}} }} end"
    );
    // With a hundredth of the instruction budget: the man page says so.
    let limits = small(MAX_INSTRUCTIONS / 100, MAX_MEMORY_BYTES, MAX_DECLARED_BYTES);
    let config = load_with("t.lua", fits.as_bytes(), limits)
        .map(|l| l.config)
        .map_err(|e| e.to_string())?;
    assert_eq!(config.services.len(), MAX_SERVICES);
    assert_eq!(
        config.services.last().map(|s| s.name.as_str()),
        Some("w16384")
    );
    errors(&[(
        "for i = 1, 100000 do\n  service(\"w\" .. i) { argv = {\"/bin/true\"} }\nend",
        Some(2),
        "too many declarations: at most 16384",
    )])
}

#[test]
fn files_that_are_not_text_or_too_big() -> Res {
    let e = load_str("t.lua", b"service \"a\" { argv = {\"a\"} }\n-- \xff\n")
        .err()
        .ok_or("loaded")?;
    assert_eq!(
        e.to_string(),
        "t.lua:2: the file is not UTF-8 text (byte 0xff)"
    );
    let big = vec![b' '; MAX_FILE_BYTES + 1];
    let e = load_str("t.lua", &big).err().ok_or("loaded")?;
    assert_eq!(e.to_string(), "t.lua: the file is larger than 4 MiB");
    // A byte order mark is skipped; lines still count from the first.
    let s = load_str("t.lua", b"\xef\xbb\xbf\nservice \"a\" { argv = {\"a\"} }")
        .map_err(|e| e.to_string())?;
    assert_eq!(s.services[0].line, 2);
    Ok(())
}

// ---- files ----

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir, String> {
        let dir = std::env::temp_dir().join(format!("archon-lua-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_file_reads_a_file_and_names_it() -> Res {
    let dir = TempDir::new("file")?;
    let path = dir.0.join("archon.lua");
    std::fs::write(
        &path,
        "\nservice \"a\" { argv = {\"/bin/true\"} }\nservice \"b\" { argv = 1 }\n",
    )
    .map_err(|e| e.to_string())?;
    let e = load_file(&path).err().ok_or("loaded")?;
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(
        (e.line, e.message.as_str()),
        (Some(3), "b: argv must be a list of strings, got number")
    );
    std::fs::write(
        &path,
        "service \"a\" { argv = {\"/bin/true\"} }\nservice \"a\" { argv = {\"x\"} }",
    )
    .map_err(|e| e.to_string())?;
    let e = load_file(&path).err().ok_or("loaded")?;
    assert_eq!(
        e.message,
        format!("a declared twice (first at {}:1)", path.display())
    );
    std::fs::write(&path, "service \"a\" { argv = {\"/bin/true\"} }").map_err(|e| e.to_string())?;
    assert_eq!(
        load_file(&path).map_err(|e| e.to_string())?.services.len(),
        1
    );

    let missing = dir.0.join("missing.lua");
    let e = load_file(&missing).err().ok_or("loaded")?;
    assert!(e.message.starts_with("cannot open: "), "{e}");
    let e = load_file(&dir.0).err().ok_or("loaded")?;
    assert_eq!(e.message, "not a regular file");
    let fifo = dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).map_err(|e| e.to_string())?;
    let e = load_file(&fifo).err().ok_or("loaded")?;
    assert_eq!(e.message, "not a regular file");
    Ok(())
}

#[test]
fn long_paths_keep_their_lines() -> Res {
    let dir = TempDir::new(&"d".repeat(80))?;
    let path = dir.0.join("archon.lua");
    std::fs::write(&path, "\n\nlocal x = nil + 1").map_err(|e| e.to_string())?;
    let e = load_file(&path).err().ok_or("loaded")?;
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(e.line, Some(3));
    assert_eq!(e.message, "attempt to perform arithmetic on a nil value");
    Ok(())
}

// ---- the dump ----

#[test]
fn settings_name_every_field_in_order() -> Res {
    let s = one("service \"x\" { argv = {\"/bin/true\"} }")?;
    let keys: Vec<&str> = s.settings().iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, fields::FIELDS);
    let got: Vec<(&str, String)> = s.settings();
    let want = [
        ("argv", "{\"/bin/true\"}"),
        ("env", "{}"),
        ("cwd", "nil"),
        ("user", "nil"),
        ("group", "nil"),
        ("groups", "nil"),
        ("umask", "nil"),
        ("rlimits", "{}"),
        ("nice", "nil"),
        ("restart", "\"always\""),
        (
            "backoff",
            "{initial = \"100ms\", max = \"30000ms\", multiplier = 2, reset_after = \"10000ms\"}",
        ),
        ("flap", "{restarts = 5, within = \"10000ms\"}"),
        ("stop_signal", "\"TERM\""),
        ("stop_timeout", "\"7000ms\""),
        ("enabled", "true"),
        ("autostart", "true"),
        ("on_demand", "false"),
        ("accept", "false"),
        ("max_connections", "nil"),
        ("critical", "false"),
        ("early", "false"),
        ("requires", "{}"),
        ("after", "{}"),
        ("before", "{}"),
        ("ready", "\"exec\""),
        ("ready_fd", "nil"),
        ("ready_timeout", "\"60000ms\""),
        ("watchdog", "nil"),
        ("health", "nil"),
        ("sockets", "{}"),
        ("bind_shim", "false"),
        ("log", "{ring = 65536, max_size = 1048576, keep = 5}"),
    ];
    let want: Vec<(&str, String)> = want.iter().map(|(k, v)| (*k, v.to_string())).collect();
    assert_eq!(got, want);
    Ok(())
}

/// Writes every declaration back from its settings and loads that: the same configuration.
#[test]
fn settings_read_back_as_the_same_config() -> Res {
    let src = r#"
service "db" { argv = {"/usr/bin/redis", "--port", 6390, "a\"b\\c\nd\0e" == nil and "" or "q\"uote"},
  env = {A = "1", ["odd-name"] = "x\ty", ["end"] = "kw", B = 2.5}, cwd = "/srv",
  user = "root", umask = "027", nice = 5, restart = "on-failure",
  rlimits = {nofile = {1024, 4096}, core = "infinity", stack = {8, "infinity"}},
  backoff = {initial = 0.25, max = 90, multiplier = 1.5, reset_after = "2m"},
  flap = {restarts = 3, within = 60}, stop_signal = "INT", stop_timeout = 1.5,
  enabled = false, autostart = false, critical = true,
  ready = "notify", ready_timeout = 30, watchdog = "10s",
  health = {command = {"/bin/check", "-x"}, interval = 5, timeout = 1, retries = 2, start_period = 3},
  sockets = {{name = "main", tcp = "127.0.0.1:0"}, {name = "v6", udp = "[::1]:5353"},
    {name = "ctl", unix = "/run/db,\"x.sock", mode = "0640", owner = "root", backlog = 7}},
  bind_shim = "/opt/lib/libarchon_bind.so" }
task "mig" { argv = {"/bin/sh", "-c", "caf\195\169 \1"}, before = {"web"}, group = 5, groups = {1, 2},
  ready = "fd", ready_fd = 7 }
service "web" { argv = {"/bin/web", "--db=${db.port}", "$${db.port}"}, requires = {"db"},
  after = {"mig"}, health = {tcp = "[::1]:80"}, user = 4000000000, group = 4,
  sockets = {{unix = "/run/web.sock", group = 0}}, bind_shim = true, env = {V6 = "${db.v6.port}"} }
service "lazy" { argv = {"/bin/lazy"}, on_demand = true, health = {tcp = "127.0.0.1:${db.main.port}"},
  sockets = {{name = "g", unixgram = "/run/g.sock", mode = "0600"}, {name = "a", unix = "@lazy"}} }
"#;
    let first = load(src).map_err(|e| e.to_string())?;
    let mut again = String::new();
    for s in &first.services {
        let fields: Vec<String> = s
            .settings()
            .into_iter()
            .filter(|(_, v)| v != "nil")
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        again.push_str(&format!(
            "{} \"{}\" {{ {} }}\n",
            s.kind.as_str(),
            s.name,
            fields.join(", ")
        ));
    }
    let second = load(&again).map_err(|e| format!("{e}\n{again}"))?;
    assert_eq!(first.services.len(), second.services.len());
    for (a, b) in first.services.iter().zip(&second.services) {
        let b = Service {
            line: a.line,
            ..b.clone()
        };
        assert_eq!(*a, b, "{again}");
    }
    Ok(())
}

#[test]
fn moving_a_declaration_keeps_its_settings() -> Res {
    let a = one("service \"x\" { argv = {\"/bin/true\"} }")?;
    let b = one("\n\nservice \"x\" { argv = {\"/bin/true\"} }")?;
    let c = one("service \"x\" { argv = {\"/bin/true\"}, nice = 1 }")?;
    assert_ne!(a, b);
    assert!(a.same_settings(&b) && b.same_settings(&a));
    assert!(!a.same_settings(&c));
    Ok(())
}

// ---- sockets ----

#[test]
fn sockets_every_kind_and_default() -> Res {
    let s = with(
        r#"sockets = {{name = "http", tcp = "127.0.0.1:8080"}, {name = "v6", udp = "[::]:0", },
          {name = "ctl", unix = "/run/x.sock", mode = 416, owner = 0, backlog = 16}},
          ready = "fd", ready_fd = 6"#,
    )?;
    let want = vec![
        Socket {
            name: "http".into(),
            listen: Listen::Tcp(([127, 0, 0, 1], 8080).into()),
            backlog: DEFAULT_BACKLOG,
            mode: DEFAULT_SOCKET_MODE,
            owner: None,
        },
        Socket {
            name: "v6".into(),
            listen: Listen::Udp((std::net::Ipv6Addr::UNSPECIFIED, 0).into()),
            backlog: DEFAULT_BACKLOG,
            mode: DEFAULT_SOCKET_MODE,
            owner: None,
        },
        Socket {
            name: "ctl".into(),
            listen: Listen::Unix(crate::model::UnixAddr::Path("/run/x.sock".into())),
            backlog: 16,
            mode: 0o640,
            owner: Some((0, 0)),
        },
    ];
    assert_eq!(s.extras.sockets, want);
    assert_eq!(s.ready, Ready::Fd(6));
    assert_eq!(s.extras.bind_shim, BindShim::Off);
    assert_eq!(
        with("bind_shim = true")?.extras.bind_shim,
        BindShim::Default
    );
    assert_eq!(
        with("bind_shim = \"/l/libarchon_bind.so\"")?
            .extras
            .bind_shim,
        BindShim::Path("/l/libarchon_bind.so".into())
    );
    // Unix datagram sockets, and abstract names (which have no file, so no mode or owner).
    let s = with(
        r#"sockets = {{name = "log", unixgram = "/run/log.sock", mode = "0620"},
          {name = "at", unix = "@archon-web"}, {name = "atg", unixgram = "@archon-log"}}"#,
    )?;
    let listens: Vec<&Listen> = s.extras.sockets.iter().map(|s| &s.listen).collect();
    assert_eq!(
        listens,
        [
            &Listen::UnixGram(UnixAddr::Path("/run/log.sock".into())),
            &Listen::Unix(UnixAddr::Abstract(b"archon-web".to_vec())),
            &Listen::UnixGram(UnixAddr::Abstract(b"archon-log".to_vec())),
        ]
    );
    assert_eq!(s.extras.sockets[0].mode, 0o620);
    let dump = s.settings_bound(&[]);
    let sockets = dump
        .iter()
        .find(|(k, _)| *k == "sockets")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        sockets,
        Some(
            "{{name = \"log\", unixgram = \"/run/log.sock\", mode = \"0620\"}, \
             {name = \"at\", unix = \"@archon-web\", backlog = 4096}, \
             {name = \"atg\", unixgram = \"@archon-log\"}}"
        )
    );
    // Named after the service when it is the only one.
    let s = one(r#"service "getty@tty1" { argv = {"/bin/true"}, sockets = {{tcp = "[::1]:1"}} }"#)?;
    assert_eq!(s.extras.sockets[0].name, "getty@tty1");
    Ok(())
}

#[test]
fn socket_errors_name_what_is_wrong() -> Res {
    field_errors(&[
        (
            "sockets = 1",
            "sockets must be a list of tables like {tcp = \"127.0.0.1:8080\"}, got number",
        ),
        (
            "sockets = {{}}",
            "sockets[1] needs one of tcp = \"host:port\", udp = \"host:port\", unix = \"/path\" or unixgram = \"/path\"",
        ),
        (
            "sockets = {{tcp = \"127.0.0.1:1\", udp = \"127.0.0.1:1\"}}",
            "sockets[1] has both tcp and udp; give one",
        ),
        (
            "sockets = {{tcp = \"localhost:80\"}}",
            "sockets[1].tcp must be an address like \"127.0.0.1:8080\", \"[::1]:8080\" or \"0.0.0.0:0\" (port 0: any free port), got \"localhost:80\"",
        ),
        (
            "sockets = {{tcpp = \"127.0.0.1:1\"}}",
            "sockets[1]: unknown field \"tcpp\" (did you mean \"tcp\"?)",
        ),
        (
            "sockets = {{unix = \"rel.sock\"}}",
            "sockets[1].unix must be an absolute path or @name (an abstract socket), got \"rel.sock\"",
        ),
        (
            "sockets = {{unixgram = \"@\"}}",
            "sockets[1].unixgram must be an absolute path or @name (an abstract socket), got \"@\"",
        ),
        (
            "sockets = {{unix = \"/a\", unixgram = \"/b\"}}",
            "sockets[1] has both unix and unixgram; give one",
        ),
        (
            "sockets = {{unix = \"@web\", mode = \"0600\"}}",
            "sockets[1].mode is for Unix sockets bound to a path (unix = \"/path\"): unix @web has no file",
        ),
        (
            "sockets = {{unixgram = \"/log\", backlog = 5}}",
            "sockets[1].backlog is for tcp and unix sockets: a datagram socket does not listen",
        ),
        (
            "sockets = {{udp = \"127.0.0.1:1\", backlog = 5}}",
            "sockets[1].backlog is for tcp and unix sockets: a datagram socket does not listen",
        ),
        (
            "sockets = {{tcp = \"127.0.0.1:1\", mode = \"0600\"}}",
            "sockets[1].mode is for Unix sockets bound to a path (unix = \"/path\"): tcp 127.0.0.1:1 has no file",
        ),
        (
            "sockets = {{unix = \"/a\", mode = \"999\"}}",
            "sockets[1].mode must be an octal string like \"0660\" or a number from 0 to 511 (0o777), got \"999\"",
        ),
        (
            "sockets = {{unix = \"/a\", owner = \"no-such-user-x\"}}",
            "sockets[1]: user \"no-such-user-x\" does not exist",
        ),
        (
            "sockets = {{tcp = \"127.0.0.1:1\"}, {tcp = \"127.0.0.1:2\"}}",
            "sockets[1] needs a name: a service with several sockets names each, as in {name = \"admin\", tcp = \"127.0.0.1:8081\"}",
        ),
        (
            "sockets = {{name = \"a\", tcp = \"127.0.0.1:1\"}, {name = \"a\", tcp = \"127.0.0.1:2\"}}",
            "sockets[2] is named \"a\", as sockets[1] is",
        ),
        (
            "sockets = {{name = \"a:b\", tcp = \"127.0.0.1:1\"}}",
            "sockets[1].name \"a:b\" is not a valid name: ':' separates the names in LISTEN_FDNAMES",
        ),
        (
            "sockets = {{tcp = \"127.0.0.1:1\"}}, ready = \"fd\"",
            "ready_fd 3 is taken: the sockets are passed as fds 3 to 3 (LISTEN_FDS); give ready_fd = 4 or more",
        ),
        (
            "bind_shim = \"lib.so\"",
            "bind_shim must be true, false, or the absolute path of libarchon_bind.so (without spaces or colons), got \"lib.so\"",
        ),
        (
            "bind_shim = 1",
            "bind_shim must be true, false, or the absolute path of libarchon_bind.so, got number",
        ),
    ])?;
    let many: Vec<String> = (0..=MAX_SOCKETS)
        .map(|i| format!("{{name = \"s{i}\", tcp = \"127.0.0.1:0\"}}"))
        .collect();
    field_errors(&[(
        &format!("sockets = {{{}}}", many.join(", ")),
        "sockets lists 33 sockets; a service may have at most 32",
    )])
}

#[test]
fn an_address_is_declared_once() -> Res {
    errors(&[
        (
            "service \"a\" { argv = {\"/bin/true\"}, sockets = {{tcp = \"127.0.0.1:80\"}} }\n\
             service \"b\" { argv = {\"/bin/true\"}, sockets = {{tcp = \"127.0.0.1:80\"}} }",
            Some(2),
            "b: sockets[1]: tcp 127.0.0.1:80 is also declared by a",
        ),
        (
            "service \"a\" { argv = {\"/bin/true\"}, sockets = {{name = \"x\", unix = \"/s\"}, {name = \"y\", unix = \"/s\"}} }",
            Some(1),
            "a: sockets[2]: unix /s is also declared by sockets[1]",
        ),
        (
            "service \"a\" { argv = {\"/bin/true\"}, sockets = {{name = \"x\", unix = \"@s\"}, {name = \"y\", unixgram = \"@s\"}} }",
            Some(1),
            "a: sockets[2]: unixgram @s is also declared by sockets[1]",
        ),
    ])?;
    // Port 0 is any free port; and TCP and UDP on one port are two sockets.
    load(
        "service \"a\" { argv = {\"/bin/true\"}, sockets = {{tcp = \"127.0.0.1:0\"}} }\n\
         service \"b\" { argv = {\"/bin/true\"}, sockets = {{name = \"t\", tcp = \"127.0.0.1:0\"}, {name = \"u\", udp = \"127.0.0.1:53\"}, {name = \"v\", tcp = \"127.0.0.1:53\"}} }",
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn references_must_name_a_port() -> Res {
    let ok = load(
        "service \"db\" { argv = {\"/bin/db\", \"${db.port}\"}, sockets = {{tcp = \"127.0.0.1:0\"}} }\n\
         service \"web\" { argv = {\"/bin/web\", \"--db=${db.port}\", \"${HOME}\"}, env = {DB = \"${db.db.port}\"} }",
    )
    .map_err(|e| e.to_string())?;
    // Kept as written: the supervisor substitutes when it starts the process.
    assert_eq!(ok.services[1].argv[1], b"--db=${db.port}");
    errors(&[
        (
            "service \"db\" { argv = {\"/bin/db\"} }\n\n\
             service \"web\" { argv = {\"/bin/web\", \"--db=${dbb.port}\"} }",
            Some(3),
            "web: argv[2]: ${dbb.port}: no service is named dbb",
        ),
        (
            "service \"db\" { argv = {\"/bin/db\"} }\n\
             service \"web\" { argv = {\"/bin/web\"}, env = {DB = \"${db.port}\"} }",
            Some(2),
            "web: env[\"DB\"]: ${db.port}: db declares no sockets",
        ),
        (
            "service \"db\" { argv = {\"/bin/db\"}, sockets = {{unix = \"/db.sock\"}} }\n\
             service \"web\" { argv = {\"/bin/web\", \"${db.port}\"} }",
            Some(2),
            "web: argv[2]: ${db.port}: the socket db of db is a Unix socket: it has no port",
        ),
        (
            "service \"db\" { argv = {\"/bin/db\"} }\n\
             service \"web\" { argv = {\"/bin/web\"}, health = {tcp = \"127.0.0.1:${db.port}\"} }",
            Some(2),
            "web: health.tcp: ${db.port}: db declares no sockets",
        ),
        (
            "service \"db\" { argv = {\"/bin/db\"}, sockets = {{udp = \"127.0.0.1:53\"}} }\n\
             service \"web\" { argv = {\"/bin/web\"}, health = {tcp = \"127.0.0.1:${db.port}\"} }",
            Some(2),
            "web: health.tcp: ${db.port}: the socket db of db is udp 127.0.0.1:53: a tcp check connects to a TCP port",
        ),
    ])
}

#[test]
fn a_health_check_may_name_a_port() -> Res {
    let c = load(
        "service \"db\" { argv = {\"/bin/db\"}, sockets = {{tcp = \"127.0.0.1:0\"}} }\n\
         service \"web\" { argv = {\"/bin/web\"}, health = {tcp = \"[::1]:${db.port}\"} }",
    )
    .map_err(|e| e.to_string())?;
    let check = c.services[1].health.as_deref().map(|h| &h.check);
    let want = Check::Tcp(crate::TcpTarget {
        ip: "::1".parse().map_err(|_| "ip")?,
        port: crate::Port::Of(b"db.port".to_vec()),
    });
    assert_eq!(check, Some(&want));
    // Dumped as written, and read back.
    let dump = c.services[1].settings();
    let health = dump
        .iter()
        .find(|(k, _)| *k == "health")
        .map(|(_, v)| v.as_str());
    assert!(
        health.is_some_and(|h| h.starts_with("{tcp = \"[::1]:${db.port}\", ")),
        "{health:?}"
    );
    field_errors(&[
        (
            "health = {tcp = \"127.0.0.1:${db}\"}",
            "health.tcp must be an address like \"127.0.0.1:8080\", \"[::1]:8080\" or \"127.0.0.1:${db.port}\", got \"127.0.0.1:${db}\"",
        ),
        (
            "health = {tcp = \"::1:${db.port}\"}",
            "health.tcp must be an address like \"127.0.0.1:8080\", \"[::1]:8080\" or \"127.0.0.1:${db.port}\", got \"::1:${db.port}\"",
        ),
    ])
}

#[test]
fn on_demand_services() -> Res {
    let s = with("sockets = {{tcp = \"127.0.0.1:0\"}}, on_demand = true")?;
    assert!(s.on_demand);
    assert!(!s.autostart);
    assert_eq!(s.restart, Restart::OnFailure);
    let s = with(
        "sockets = {{tcp = \"127.0.0.1:0\"}}, on_demand = true, restart = \"always\", autostart = false",
    )?;
    assert_eq!(s.restart, Restart::Always);
    assert!(!with("on_demand = false")?.on_demand);
    field_errors(&[
        (
            "on_demand = true",
            "on_demand needs sockets: the service starts at the first connection on one of them",
        ),
        (
            "sockets = {{tcp = \"127.0.0.1:0\"}}, on_demand = true, autostart = true",
            "on_demand starts the service at the first connection on its sockets; it cannot also have autostart = true",
        ),
        ("on_demand = 1", "on_demand must be true or false, got 1"),
    ])?;
    errors(&[(
        "task \"t\" { argv = {\"/bin/true\"}, sockets = {{tcp = \"127.0.0.1:0\"}}, on_demand = true }",
        Some(1),
        "t: on_demand is for services; a task runs when it is started or required",
    )])
}

#[test]
fn accept_services() -> Res {
    let s = with(
        "sockets = {{name = \"t\", tcp = \"127.0.0.1:0\"}, {name = \"u\", unix = \"@x\"}}, accept = true",
    )?;
    assert!(s.accept);
    assert_eq!(s.max_connections, crate::model::DEFAULT_MAX_CONNECTIONS);
    assert_eq!(s.restart, Restart::Never);
    assert!(s.autostart);
    let s = with(
        "sockets = {{tcp = \"127.0.0.1:0\"}}, accept = true, max_connections = 2, restart = \"never\"",
    )?;
    assert_eq!(s.max_connections, 2);
    let dumped: Vec<(&str, String)> = s.settings();
    assert!(dumped.contains(&("accept", "true".to_string())));
    assert!(dumped.contains(&("max_connections", "2".to_string())));
    let plain = with("sockets = {{tcp = \"127.0.0.1:0\"}}")?;
    assert!(
        plain
            .settings()
            .contains(&("max_connections", "nil".to_string()))
    );
    const TCP: &str = "sockets = {{tcp = \"127.0.0.1:0\"}}, accept = true";
    field_errors(&[
        (
            "accept = true",
            "accept = true starts a process per connection: it needs sockets, as in sockets = {{tcp = \"127.0.0.1:7000\"}}",
        ),
        (
            "accept = true, sockets = {{name = \"t\", tcp = \"127.0.0.1:0\"}, {name = \"d\", udp = \"127.0.0.1:0\"}}",
            "accept = true starts a process per connection: sockets[2] is udp 127.0.0.1:0, but only tcp and unix sockets take connections",
        ),
        (
            &format!("{TCP}, restart = \"always\""),
            "accept = true starts a process per connection: instances are not restarted; leave restart out (it is \"never\")",
        ),
        (
            &format!("{TCP}, ready = \"notify\""),
            "accept = true starts a process per connection: an instance has no readiness to wait for; leave ready, ready_fd and watchdog out",
        ),
        (
            &format!("{TCP}, health = {{command = {{\"/bin/true\"}}}}"),
            "accept = true starts a process per connection: there is no one process to check; leave health out",
        ),
        (
            &format!("{TCP}, bind_shim = true"),
            "accept = true starts a process per connection: an instance gets its connection, not a listening socket; leave bind_shim out",
        ),
        (
            &format!("{TCP}, on_demand = true, autostart = false"),
            "accept = true starts a process per connection: it cannot also be on_demand (archon already takes the first connection)",
        ),
        (
            "sockets = {{tcp = \"127.0.0.1:0\"}}, max_connections = 3",
            "max_connections needs accept = true (the most instances, one per connection, at once)",
        ),
        (
            &format!("{TCP}, max_connections = 0"),
            "max_connections must be a number from 1 to 16384, got 0",
        ),
        (
            "accept = \"yes\"",
            "accept must be true or false, got \"yes\"",
        ),
    ])?;
    errors(&[(
        "\ntask \"t\" { argv = {\"/bin/true\"}, sockets = {{tcp = \"127.0.0.1:0\"}}, accept = true }",
        Some(2),
        "t: accept = true starts a process per connection: it is for services, not tasks",
    )])
}

// ---- never a panic ----

/// A small deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn odd_input_never_panics() -> Res {
    let pieces = [
        "service",
        "task",
        "\"x\"",
        "\"y\"",
        "{",
        "}",
        "(",
        ")",
        "argv",
        "=",
        "{\"/bin/true\"}",
        ",",
        "env",
        "requires",
        "{\"x\"}",
        "{\"y\"}",
        "42",
        "-1",
        "0/0",
        "math.huge",
        "nil",
        "true",
        "\"\\0\"",
        "function() end",
        "ready",
        "\"fd\"",
        "ready_fd",
        "health",
        "{tcp = 1}",
        "rlimits",
        "{nofile = {2, 1}}",
        "backoff",
        "{max = -1}",
        "stop_signal",
        "\"TERM\"",
        ";",
        "\n",
        "local",
        "t",
        "setmetatable",
        "pcall",
        "error",
        "load",
        "..",
        "#",
        "[1]",
        "before",
        "after",
        "user",
        "\"root\"",
        "groups",
        "umask",
        "\"777\"",
        "watchdog",
        "sockets",
        "{{tcp = \"127.0.0.1:0\"}}",
        "{{name = \"a\", unix = \"/s\"}, {udp = 1}}",
        "bind_shim",
        "\"${x.port}\"",
        "{\"/bin/true\", \"${y.a.port}\"}",
        "--",
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..2000 {
        let n = 1 + rng.next() % 24;
        let src: Vec<&str> = (0..n).map(|_| rng.pick(&pieces)).collect();
        let src = src.join(" ");
        if let Err(e) = load(&src) {
            assert!(!e.message.contains("internal error"), "{src}: {e}");
            assert!(!e.message.is_empty(), "{src}");
        }
    }
    for _ in 0..300 {
        let n = (rng.next() % 200) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if let Err(e) = load_str("t.lua", &bytes) {
            assert!(!e.message.contains("internal error"), "{bytes:?}: {e}");
        }
    }
    Ok(())
}

#[test]
fn log_takes_sizes_with_suffixes_and_a_file() -> Res {
    let web =
        with(r#"log = {ring = "8K", file = "/var/log/web/current", max_size = "2M", keep = 3}"#)?;
    assert_eq!(web.log().ring, 8192);
    assert_eq!(
        web.log().file.as_deref(),
        Some(std::path::Path::new("/var/log/web/current"))
    );
    assert_eq!((web.log().max_size, web.log().keep), (2 << 20, 3));
    assert_eq!(with("log = {ring = 0}")?.log().ring, 0);
    // The default is kept unboxed.
    assert!(with("log = {ring = \"64K\"}")?.log.is_none());
    for (bad, want) in [
        ("ring = \"64X\"", "log.ring must be a size in bytes"),
        ("ring = \"17M\"", "log.ring must be a size in bytes"),
        ("ring = -1", "log.ring must be"),
        ("file = \"relative\"", "log.file must be an absolute path"),
        (
            "keep = 1001",
            "log.keep must be a whole number from 0 to 1000",
        ),
        ("rings = 1", "unknown field \"log.rings\""),
    ] {
        let err = with(&format!("log = {{{bad}}}"))
            .err()
            .ok_or(format!("{bad} loaded"))?;
        assert!(err.contains(want), "{bad}: {err}");
    }
    Ok(())
}
