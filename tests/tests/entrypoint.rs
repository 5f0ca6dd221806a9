//! archon as a container's entrypoint, `archon [options] -- CMD ARGS`, in the spirit of tini's
//! and dumb-init's own tests: every exit code passes through, death by signal N gives 128 + N,
//! every forwardable signal reaches CMD (and its process group when asked), zombies of
//! double-forked grandchildren are reaped, what CMD leaves behind is waited for and then killed,
//! the socket answers while CMD runs, configured services stop before archon exits, and nothing
//! archon started outlives it when it is killed.
//!
//! Each behaviour runs twice: with archon as a plain process (a child subreaper), and as process
//! 1 of a new PID namespace (`unshare --pid --fork --mount-proc`), as in a container
//! (`<name>::plain` and `<name>::as_pid1`). Scripts the commands run live in a temp dir of the
//! test's own, named `@DIR@` in them.

use std::fs;
use std::path::Path;

use archon_tests::archon_proto::{ProcState, ServiceState};
use archon_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The helper that records every signal it receives (tests/src/bin/sigcatch.rs).
const SIGCATCH: &str = env!("CARGO_BIN_EXE_sigcatch");

/// The signals archon(8) says it forwards: 1 to 31 but KILL, STOP, CHLD, TTIN, TTOU and the
/// faults ILL, TRAP, BUS, FPE, SEGV, SYS. In increasing order.
const FORWARDED: [i32; 20] = [
    1, 2, 3, 6, 10, 12, 13, 14, 15, 16, 18, 20, 23, 24, 25, 26, 27, 28, 29, 30,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// archon as a plain process: a child subreaper.
    Plain,
    /// archon as process 1 of a PID namespace.
    Pid1,
}

/// Runs each named behaviour in both modes, as `<name>::plain` and `<name>::as_pid1`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[test]
            fn plain() -> Result {
                super::$name(Mode::Plain)
            }
            #[test]
            fn as_pid1() -> Result {
                super::$name(Mode::Pid1)
            }
        }
    )*};
}

in_both_modes!(
    exit_codes_pass_through,
    death_by_signal_n_gives_128_plus_n,
    a_command_that_cannot_be_executed_gives_127_or_126,
    forwarded_signals_reach_cmd_and_kept_ones_do_not,
    forward_to_group_reaches_a_grandchild,
    zombies_of_double_forked_grandchildren_are_reaped,
    descendants_are_waited_for_after_cmd_exits,
    orphans_are_terminated_then_killed_on_exit,
    the_socket_answers_while_cmd_runs,
    services_are_stopped_before_archon_exits,
    cmd_has_archons_stdio_and_socket,
);

/// A builder for `mode`.
fn builder(mode: Mode) -> Builder {
    match mode {
        Mode::Plain => Archon::builder(),
        Mode::Pid1 => Archon::builder().pid1(),
    }
}

/// Runs archon with `opts` and `-- cmd` to its end (without waiting for its socket): its exit
/// code, and archon for its log and files.
fn run_to_end(mode: Mode, opts: &[&str], cmd: &[&str]) -> Result<(Option<i32>, Archon)> {
    let mut a = builder(mode)
        .args(opts)
        .main_command(cmd)
        .no_wait()
        .start()?;
    let status = a.wait_exit(LONG_BOUND)?;
    Ok((status.code(), a))
}

/// A temp dir for scripts and the files they write, and `text` with `@DIR@` replaced by it.
fn scripts() -> Result<TempDir> {
    TempDir::new()
}

fn fill(dir: &TempDir, text: &str) -> String {
    text.replace("@DIR@", &dir.path().display().to_string())
}

/// Sends `sig` (a number) to `pid`.
fn send(pid: i32, sig: i32) -> Result {
    let signal = Signal::try_from(sig).context(format!("signal {sig}"))?;
    kill(Pid::from_raw(pid), signal).context(format!("kill({pid}, {signal})"))
}

/// The lines of a file sigcatch writes, as text ("ready", then signal numbers).
fn caught(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until sigcatch has written `line` to `path` as its last line.
fn wait_caught(path: &Path, line: &str) -> Result {
    wait_until(
        format!("{line} in {} (so far {:?})", path.display(), caught(path)),
        BOUND,
        || caught(path).last().is_some_and(|l| l == line),
    )
}

/// The pid here of the process in archon's namespace whose argv[0] is `program`.
fn find_program(a: &Archon, program: &str) -> Result<i32> {
    wait_for(format!("{program} to run under archon"), BOUND, || {
        procs_in_namespace_of(a.pid())
            .into_iter()
            .map(|p| p.pid)
            .find(|&pid| {
                cmdline(pid).is_some_and(|argv| argv.first().is_some_and(|a0| a0 == program))
            })
    })
}

/// archon's pid as its own namespace numbers it: 1 as process 1.
fn archon_inner_pid(mode: Mode, a: &Archon) -> i32 {
    match mode {
        Mode::Plain => a.pid(),
        Mode::Pid1 => 1,
    }
}

/// The zombies that archon would be the one to reap: its own zombie children, and as process 1
/// every zombie of its namespace.
fn zombies(mode: Mode, a: &Archon) -> Vec<i32> {
    match mode {
        Mode::Plain => zombies_of(a.pid()),
        Mode::Pid1 => zombies_in_namespace_of(a.pid()),
    }
}

// ---------------------------------------------------------------------------------------------
// Exit codes
// ---------------------------------------------------------------------------------------------

/// All 256: one archon per code (a few milliseconds each).
fn exit_codes_pass_through(mode: Mode) -> Result {
    for code in 0..=255 {
        let script = format!("exit {code}");
        let (got, a) = run_to_end(mode, &[], &["/bin/sh", "-c", &script])?;
        ensure_eq!(got, Some(code), "exit {code}; log:\n{}", a.log_text());
    }
    Ok(())
}

/// Every signal whose default action ends a process (no core: the shell sets `ulimit -c 0`).
fn death_by_signal_n_gives_128_plus_n(mode: Mode) -> Result {
    let fatal = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26, 27, 29, 30, 31,
    ];
    for sig in fatal {
        let script = format!("ulimit -c 0; kill -{sig} $$; exit 200");
        let (got, a) = run_to_end(mode, &[], &["/bin/sh", "-c", &script])?;
        ensure_eq!(
            got,
            Some(128 + sig),
            "killed by signal {sig}; log:\n{}",
            a.log_text()
        );
    }
    Ok(())
}

fn a_command_that_cannot_be_executed_gives_127_or_126(mode: Mode) -> Result {
    let dir = scripts()?;
    let not_executable = dir.join("data");
    fs::write(&not_executable, "not a program\n").context("write a data file")?;
    let not_executable = not_executable.display().to_string();
    for (cmd, want) in [
        ("/nonexistent/program", 127),
        ("no-such-program-archon", 127),
        (not_executable.as_str(), 126),
    ] {
        let (got, a) = run_to_end(mode, &[], &[cmd])?;
        ensure_eq!(got, Some(want), "{cmd}; log:\n{}", a.log_text());
        ensure!(
            a.log_text().contains("cannot execute"),
            "archon says why: {}",
            a.log_text()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

/// Each forwardable signal, sent to archon, reaches CMD; SIGCHLD, SIGTTIN and SIGTTOU do not.
/// SIGTERM goes last: CMD exits on it.
///
/// CMD takes signals in increasing order when several are pending, and writes each before it
/// takes the next; each kept signal is sent just before a forwarded one with a higher number, so
/// had it been forwarded it would show before that one.
fn forwarded_signals_reach_cmd_and_kept_ones_do_not(mode: Mode) -> Result {
    let dir = scripts()?;
    let file = dir.join("caught");
    let file_arg = file.display().to_string();
    let mut a = builder(mode)
        .main_command([SIGCATCH, &file_arg, "15"])
        .start()?;
    wait_caught(&file, "ready")?;
    let order: Vec<i32> = FORWARDED
        .iter()
        .copied()
        .filter(|&s| s != libc::SIGTERM)
        .chain([libc::SIGTERM])
        .collect();
    for &sig in &order {
        let kept: &[i32] = match sig {
            18 => &[libc::SIGCHLD],
            23 => &[libc::SIGTTIN, libc::SIGTTOU],
            _ => &[],
        };
        for &k in kept {
            send(a.pid(), k)?;
        }
        if !kept.is_empty() {
            // archon has run (and so handled the kept signals) by the time it answers.
            ensure_eq!(a.request("Ping")?, "Pong");
        }
        send(a.pid(), sig)?;
        wait_caught(&file, &sig.to_string())?;
    }
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(0), "CMD exited 0 on SIGTERM ({status})");
    let mut want = vec!["ready".to_string()];
    want.extend(order.iter().map(i32::to_string));
    ensure_eq!(caught(&file), want, "what CMD received, in order");
    Ok(())
}

/// With `--forward-to-group` a signal reaches CMD's child (in CMD's process group); without it,
/// only CMD gets it. CMD is a shell that ignores SIGWINCH and waits for its child, sigcatch.
fn forward_to_group_reaches_a_grandchild(mode: Mode) -> Result {
    for to_group in [true, false] {
        let dir = scripts()?;
        let file = dir.join("caught");
        let script = format!("{SIGCATCH} {} 15 & wait", file.display());
        let mut opts = vec!["--stop-grace", "200"];
        if to_group {
            opts.push("--forward-to-group");
        }
        let mut a = builder(mode)
            .args(&opts)
            .main_command(["/bin/sh", "-c", &script])
            .start()?;
        wait_caught(&file, "ready")?;
        send(a.pid(), libc::SIGWINCH)?;
        if to_group {
            wait_caught(&file, &libc::SIGWINCH.to_string())?;
        } else {
            ensure_eq!(a.request("Ping")?, "Pong");
            // A marker sent to the grandchild directly, with a higher number: a SIGWINCH
            // forwarded to it would be written first.
            let grandchild = find_program(&a, SIGCATCH)?;
            send(grandchild, libc::SIGSYS)?;
            wait_caught(&file, &libc::SIGSYS.to_string())?;
        }
        // SIGTERM: the shell dies of it (143); with the group, sigcatch gets it at once and
        // exits, else it is left behind and gets SIGTERM once the grace is over.
        send(a.pid(), libc::SIGTERM)?;
        let status = a.wait_exit(LONG_BOUND)?;
        ensure_eq!(status.code(), Some(143), "to group: {to_group}");
        let middle = if to_group {
            libc::SIGWINCH
        } else {
            libc::SIGSYS
        };
        ensure_eq!(
            caught(&file),
            vec!["ready".to_string(), middle.to_string(), "15".to_string()],
            "what the grandchild received, to group: {to_group}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reaping, leftovers
// ---------------------------------------------------------------------------------------------

/// Ten `sleep`s forked by subshells that exit at once are reparented to archon; killed by the
/// test, they are zombies until archon reaps them.
fn zombies_of_double_forked_grandchildren_are_reaped(mode: Mode) -> Result {
    let dir = scripts()?;
    let file = dir.join("caught");
    let script = format!(
        "i=0; while [ $i -lt 10 ]; do (sleep 1000 &); i=$((i+1)); done; exec {SIGCATCH} {} 15",
        file.display()
    );
    let mut a = builder(mode)
        .main_command(["/bin/sh", "-c", &script])
        .start()?;
    wait_caught(&file, "ready")?;
    let sleeps = wait_for("ten orphaned sleeps reparented to archon", BOUND, || {
        let found: Vec<i32> = children_of(a.pid())
            .into_iter()
            .filter(|&pid| cmdline(pid).is_some_and(|v| v == ["sleep", "1000"]))
            .collect();
        (found.len() == 10).then_some(found)
    })?;
    for &pid in &sleeps {
        send(pid, libc::SIGKILL)?;
    }
    for &pid in &sleeps {
        wait_gone(pid, "a killed orphan")?;
    }
    wait_until(
        format!("no zombie for archon to reap ({:?})", zombies(mode, &a)),
        BOUND,
        || zombies(mode, &a).is_empty(),
    )?;
    send(a.pid(), libc::SIGTERM)?;
    ensure_eq!(a.wait_exit(LONG_BOUND)?.code(), Some(0));
    Ok(())
}

/// tini#180: after CMD exits, archon waits for what CMD left behind to end on its own (here,
/// when the test says so, well within a long grace), serving requests meanwhile, and then exits
/// with CMD's code. The leftover writes who its parent is at its end: still archon.
fn descendants_are_waited_for_after_cmd_exits(mode: Mode) -> Result {
    let dir = scripts()?;
    fs::write(
        dir.join("leftover.sh"),
        fill(
            &dir,
            "while [ ! -e @DIR@/go ]; do sleep 0.02; done\n\
             read -r stat < /proc/$$/stat\n\
             set -- $stat\n\
             echo $4 > @DIR@/ppid.new && mv @DIR@/ppid.new @DIR@/ppid\n",
        ),
    )
    .context("write leftover.sh")?;
    let script = fill(&dir, "sh @DIR@/leftover.sh & exit 7");
    let mut a = builder(mode)
        .args(["--stop-grace", "600000"])
        .main_command(["/bin/sh", "-c", &script])
        .start()?;
    wait_until("CMD to have ended, as List says", BOUND, || {
        a.list().is_ok_and(|rows| {
            rows.iter()
                .any(|r| r.id == 1 && r.state == ProcState::Exited)
        })
    })?;
    ensure_eq!(a.request("Ping")?, "Pong", "archon serves while it waits");
    let leftover = children_of(a.pid())
        .into_iter()
        .find(|&pid| cmdline(pid).is_some_and(|v| v.first().is_some_and(|a0| a0 == "sh")))
        .context("the leftover shell, reparented to archon")?;
    ensure!(alive(leftover), "the leftover runs");
    ensure!(a.try_exit()?.is_none(), "archon has not exited");
    fs::write(dir.join("go"), "").context("create go")?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(7), "CMD's code");
    ensure_eq!(
        wait_line_in(dir.join("ppid"))?,
        archon_inner_pid(mode, &a).to_string(),
        "the leftover's parent at its end"
    );
    Ok(())
}

/// tini#236: what CMD left behind and does not end is sent SIGTERM once the grace is over, and
/// SIGKILL after another: one leftover obeys SIGTERM, one ignores it. archon exits with CMD's
/// code and leaves neither behind.
fn orphans_are_terminated_then_killed_on_exit(mode: Mode) -> Result {
    let dir = scripts()?;
    fs::write(
        dir.join("polite.sh"),
        fill(
            &dir,
            "trap 'echo term > @DIR@/polite; exit 0' TERM\n\
             echo $$ > @DIR@/polite.pid\n\
             while :; do sleep 0.02; done\n",
        ),
    )
    .context("write polite.sh")?;
    fs::write(
        dir.join("stubborn.sh"),
        fill(
            &dir,
            "trap '' TERM\necho $$ > @DIR@/stubborn.pid\nexec sleep 1000\n",
        ),
    )
    .context("write stubborn.sh")?;
    let script = fill(
        &dir,
        "sh @DIR@/polite.sh & sh @DIR@/stubborn.sh &\n\
         while [ ! -s @DIR@/polite.pid ] || [ ! -s @DIR@/stubborn.pid ]; do sleep 0.02; done\n\
         exit 3",
    );
    let mut a = builder(mode)
        .args(["--stop-grace", "300"])
        .main_command(["/bin/sh", "-c", &script])
        .start()?;
    let archon = a.pid();
    let stubborn = wait_line_in(dir.join("stubborn.pid"))?;
    let stubborn: i32 = stubborn.parse().context("stubborn.pid")?;
    let stubborn = pid_here(archon, stubborn).context("the stubborn leftover's pid here")?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(3), "CMD's code");
    ensure_eq!(
        wait_line_in(dir.join("polite"))?,
        "term",
        "the polite leftover"
    );
    ensure!(
        !alive(stubborn),
        "the leftover that ignores SIGTERM was left running: {:?}",
        stat(stubborn)
    );
    ensure!(
        !a.log_text().contains("left behind"),
        "archon gave up on them: {}",
        a.log_text()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// archon's other duties
// ---------------------------------------------------------------------------------------------

/// While CMD runs, archon answers Ping and Status, which lists CMD as process 1.
fn the_socket_answers_while_cmd_runs(mode: Mode) -> Result {
    let dir = scripts()?;
    let file = dir.join("caught");
    let file_arg = file.display().to_string();
    let mut a = builder(mode)
        .main_command([SIGCATCH, &file_arg, "15"])
        .start()?;
    wait_caught(&file, "ready")?;
    ensure_eq!(a.request("Ping")?, "Pong");
    let rows = a.status()?;
    let row = rows
        .iter()
        .find(|r| r.name == b"1")
        .context(format!("no row for CMD in {rows:?}"))?;
    ensure_eq!(row.state, ServiceState::Running, "{}", show_row(row));
    let inner = row.pid.context("CMD's row has a pid")?;
    ensure_eq!(
        pid_here(a.pid(), inner),
        Some(find_program(&a, SIGCATCH)?),
        "the pid Status gives is CMD's"
    );
    send(a.pid(), libc::SIGTERM)?;
    ensure_eq!(a.wait_exit(LONG_BOUND)?.code(), Some(0));
    Ok(())
}

/// A configured service runs beside CMD; when CMD exits, archon stops the service (its SIGTERM
/// trap writes a file) and only then exits, with CMD's code.
fn services_are_stopped_before_archon_exits(mode: Mode) -> Result {
    let dir = scripts()?;
    let cfg = ConfigFile::new()?;
    cfg.write(&fill(
        &dir,
        r#"
service "side" { argv = {"/bin/sh", "-c",
    "trap 'echo stopped > @DIR@/side; exit 0' TERM; while :; do sleep 0.02; done"} }
"#,
    ))?;
    let script = fill(&dir, "while [ ! -e @DIR@/go ]; do sleep 0.02; done; exit 5");
    let mut a = cfg.start(builder(mode).main_command(["/bin/sh", "-c", &script]))?;
    let row = a.wait_state("side", ServiceState::Ready)?;
    let side = pid_here(a.pid(), row.pid.context("the service's pid")?)
        .context("the service's pid here")?;
    fs::write(dir.join("go"), "").context("create go")?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(5), "CMD's code");
    ensure_eq!(
        fs::read_to_string(dir.join("side")).unwrap_or_default(),
        "stopped\n",
        "the service was stopped (its trap ran) before archon exited"
    );
    ensure!(!alive(side), "the service outlived archon");
    Ok(())
}

/// CMD writes to archon's stdout and finds archon's socket in `ARCHON_SOCKET`.
fn cmd_has_archons_stdio_and_socket(mode: Mode) -> Result {
    let (got, a) = run_to_end(
        mode,
        &[],
        &["/bin/sh", "-c", "echo \"socket=$ARCHON_SOCKET\""],
    )?;
    ensure_eq!(got, Some(0));
    let out = fs::read_to_string(a.path("archon.stdout")).context("archon.stdout")?;
    ensure_eq!(out, format!("socket={}\n", a.socket().display()));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One mode only
// ---------------------------------------------------------------------------------------------

/// archon killed with SIGKILL leaves nothing running: CMD and a configured service get
/// SIGKILL from the kernel (their parent-death signal). (As process 1 the kernel kills the
/// namespace anyway.)
#[test]
fn cmd_and_services_die_with_a_killed_archon() -> Result {
    let dir = scripts()?;
    let file = dir.join("caught");
    let file_arg = file.display().to_string();
    let cfg = ConfigFile::with(r#"service "side" { argv = {"/bin/sleep", "1000"} }"#)?;
    let mut a = cfg.start(Archon::builder().main_command([SIGCATCH, &file_arg, "15"]))?;
    wait_caught(&file, "ready")?;
    let side = a
        .wait_state("side", ServiceState::Ready)?
        .pid
        .context("the service's pid")?;
    let cmd = find_program(&a, SIGCATCH)?;
    a.signal(Signal::SIGKILL)?;
    a.wait_exit(BOUND)?;
    for (pid, what) in [(cmd, "CMD"), (side, "the service")] {
        wait_until(
            format!("{what} (pid {pid}) to die with archon"),
            BOUND,
            || !alive(pid),
        )?;
    }
    Ok(())
}

/// As process 1 without a command, archon does not die of a signal it has no use for: the
/// kernel drops them (it has no handler), or it logs and ignores them. SIGTERM still shuts it
/// down. (SIGUSR1, SIGUSR2 and SIGPWR halt or power off: see pid1.rs.)
#[test]
fn as_pid1_stray_signals_do_not_end_archon() -> Result {
    let mut a = builder(Mode::Pid1).start()?;
    for sig in [
        libc::SIGQUIT,
        libc::SIGALRM,
        libc::SIGPIPE,
        libc::SIGXCPU,
        libc::SIGTSTP,
        libc::SIGTTIN,
    ] {
        send(a.pid(), sig)?;
        ensure_eq!(a.request("Ping")?, "Pong", "after signal {sig}");
    }
    ensure!(a.try_exit()?.is_none(), "archon exited");
    a.signal(Signal::SIGTERM)?;
    ensure_eq!(a.wait_exit(LONG_BOUND)?.code(), Some(0));
    Ok(())
}

/// With a main command that runs and nothing else to do, archon stays blocked in epoll_wait:
/// no timer, no tick.
#[test]
fn an_idle_entrypoint_does_not_wake_up() -> Result {
    let a = builder(Mode::Plain)
        .main_command(["/bin/sleep", "1000"])
        .start()?;
    let sleep = find_program(&a, "/bin/sleep")?;
    wait_in_nanosleep(sleep)?;
    ensure_eq!(a.request("Ping")?, "Pong");
    stays_asleep(a.pid(), "while idle")?;
    Ok(())
}

/// `--help` shows the `-- CMD` form; `--` without a command, and `--forward-to-group` without
/// one, are usage errors (100), said before anything starts.
#[test]
fn help_shows_the_command_form_and_misuse_exits_100() -> Result {
    let archon = archon_bin()?;
    let out = output_within(std::process::Command::new(&archon).arg("--help"), BOUND)?;
    ensure_eq!(out.status.code(), Some(0), "--help");
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["-- CMD [ARG...]", "--forward-to-group"] {
        ensure!(help.contains(want), "--help lacks {want:?}: {help}");
    }
    for args in [
        &["--"][..],
        &["--forward-to-group"],
        &["--forward-to-group", "-s", "x"],
    ] {
        let out = output_within(std::process::Command::new(&archon).args(args), BOUND)?;
        ensure_eq!(out.status.code(), Some(100), "{args:?}");
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("usage:"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
