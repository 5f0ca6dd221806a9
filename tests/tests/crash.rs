//! Faults of process 1: archon runs as process 1 of a new PID namespace
//! (`unshare --pid --fork --mount-proc`) with a service, and faults for real (a debug build's
//! hidden `DebugFault,<kind>` request: a read near null, a stack overflow, an abort, a panic) or
//! gets a fault's signal from outside. It must not end the namespace: it executes itself in
//! emergency mode (`archon --emergency <why>`), still process 1, its service still running with
//! the same pid, its socket answering `Ping` and `List`, orphans still reaped, and `Poweroff`, an
//! init signal or `Reboot` ends the namespace in order.
//!
//! Everything but the last test needs root (namespaces); they say so and pass otherwise.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use archon_tests::archon_proto::{Kind, ServiceState};
use archon_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// True (and says so) when the test cannot run: it needs root.
fn skipped() -> bool {
    let skip = !nix::unistd::geteuid().is_root();
    if skip {
        println!("skipped: needs root (PID and mount namespaces)");
    }
    skip
}

/// A service that writes to its stdout (4 KB a turn) and stderr, pipes to archon, and counts its turns in
/// `<dir>/ticks`; on SIGTERM it says so in `<dir>/seq` and exits.
fn talker(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "service \"talker\" {{ argv = {{\"/bin/sh\", \"-c\", \"trap 'echo talker >> {d}/seq; \
         exit 0' TERM; while :; do printf '%4000s\\n' tick; echo tock >&2; echo x >> {d}/ticks; sleep 0.02; \
         done\"}} }}\n"
    )
}

/// archon as process 1 with the talker running; the talker's pid (as the test sees it).
fn start(extra: &[&str]) -> Result<(Configured, i32)> {
    let cfg = ConfigFile::new()?;
    cfg.write(&talker(cfg.dir()))?;
    let a = cfg.start(Archon::builder().pid1().args(extra))?;
    a.wait_state("talker", ServiceState::Ready)?;
    let talker = wait_for("the talker's pid", BOUND, || {
        children_of(a.pid()).into_iter().next()
    })?;
    Ok((a, talker))
}

/// The turns the talker has made, counted in `dir`.
fn ticks(dir: &Path) -> usize {
    fs::read_to_string(dir.join("ticks"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Makes archon fault: the request is sent and its connection ends unanswered.
fn fault(a: &Archon, kind: &str) -> Result {
    let mut c = a.conn()?;
    c.send(format!("DebugFault,{kind}\n").as_bytes())?;
    c.expect_eof()
}

/// Waits until archon (still its pid, so still process 1 of the namespace) runs in emergency
/// mode for `why`.
fn wait_emergency(a: &Archon, why: &str) -> Result {
    wait_until("archon to run in emergency mode", LONG_BOUND, || {
        cmdline(a.pid()).is_some_and(|argv| {
            argv.get(1).map(String::as_str) == Some("--emergency")
                && argv.get(2).map(String::as_str) == Some(why)
        })
    })?;
    wait_until("the new image to say so", BOUND, || {
        a.log_text().contains("runs in emergency mode")
    })
}

/// Fails unless `pid` is alive (not a zombie) and still archon's child, and the talker's count
/// goes on growing: it writes to its pipes and neither blocks nor dies of SIGPIPE.
fn ensure_talker_runs(a: &Archon, pid: i32, count: impl Fn() -> usize) -> Result {
    let st = stat(pid).context("the talker is gone")?;
    ensure!(st.state != 'Z', "the talker ended");
    ensure_eq!(st.ppid, a.pid(), "the talker's parent");
    let now = count();
    // A pipe holds 64 KiB: 30 turns write more than that to stdout, which must be drained.
    let target = now + 30;
    wait_until("the talker to go on", LONG_BOUND, || count() >= target)
}

/// An orphan is reaped: a process entered into the namespace (nsenter) starts a grandchild and
/// exits; the grandchild, orphaned, is archon's child, and once it ends no zombie is left.
fn ensure_orphans_reaped(a: &Archon, dir: &Path) -> Result {
    let target = a.pid().to_string();
    let marker = dir.join("orphan");
    let status = Command::new("nsenter")
        .args(["--target", &target, "--pid", "--", "/bin/sh", "-c"])
        .arg(format!(
            "( /bin/sleep 0.77 >/dev/null 2>&1 & echo $! > {} ); exit 0",
            marker.display()
        ))
        .status()
        .context("nsenter")?;
    ensure!(status.success(), "nsenter: {status}");
    wait_line_in(&marker)?;
    let orphan = procs_in_namespace_of(a.pid())
        .into_iter()
        .find(|p| cmdline(p.pid).is_some_and(|c| c.iter().any(|w| w == "0.77")));
    if let Some(o) = orphan.filter(|o| o.state != 'Z') {
        ensure_eq!(o.ppid, a.pid(), "the orphan's parent");
        wait_until("the orphan to end", BOUND, || {
            stat(o.pid).is_none_or(|s| s.ppid != a.pid() || s.state == 'Z')
        })?;
    }
    // (The talker's own children are its to reap: a zombie of its sleep may be seen.)
    a.wait_no_zombies()
}

/// Fails unless `List` shows the talker's command line.
fn ensure_list_shows_talker(a: &Archon) -> Result {
    let rows = a.list()?;
    ensure!(
        rows.iter()
            .any(|r| r.kind == Kind::Monitor && r.argv.first().is_some_and(|a| a == b"/bin/sh")),
        "List in emergency mode: {rows:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A read through an address near null: SIGSEGV, the emergency mode, every promise kept, then
/// `Poweroff` stops the talker and ends the namespace.
#[test]
fn a_bad_pointer_takes_the_emergency_path() -> Result {
    if skipped() {
        return Ok(());
    }
    let (mut a, talker) = start(&[])?;
    let dir = a.config().dir().to_path_buf();
    let count = || ticks(&dir);
    fault(&a, "null")?;
    wait_emergency(&a, "SIGSEGV")?;
    ensure!(
        a.log_text()
            .contains("archon: fatal: SIGSEGV at address 0x10: executing archon --emergency"),
        "the fault is said: {}",
        a.log_text()
    );
    ensure_eq!(a.request("Ping")?, "Pong");
    ensure_talker_runs(&a, talker, count)?;
    ensure_list_shows_talker(&a)?;
    ensure_orphans_reaped(&a, &dir)?;
    ensure_eq!(a.request("Poweroff")?, "Ok,poweroff");
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.signal(), Some(libc::SIGINT), "the namespace ended");
    ensure_eq!(
        fs::read_to_string(dir.join("seq")).unwrap_or_default(),
        "talker\n",
        "the talker got SIGTERM"
    );
    Ok(())
}

/// A stack overflow is handled on the alternate stack and said as such; in emergency mode
/// SIGPWR still powers off.
#[test]
fn a_stack_overflow_takes_the_emergency_path() -> Result {
    if skipped() {
        return Ok(());
    }
    let (mut a, talker) = start(&[])?;
    let dir = a.config().dir().to_path_buf();
    let count = || ticks(&dir);
    fault(&a, "overflow")?;
    wait_emergency(&a, "stack-overflow")?;
    ensure!(
        a.log_text()
            .contains("archon: fatal: stack overflow (SIGSEGV at 0x"),
        "the overflow is said: {}",
        a.log_text()
    );
    ensure_eq!(a.request("Ping")?, "Pong");
    ensure_talker_runs(&a, talker, count)?;
    a.signal(Signal::SIGPWR)?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.signal(), Some(libc::SIGINT), "the namespace ended");
    ensure!(
        a.log_text().contains("emergency: SIGPWR: poweroff"),
        "{}",
        a.log_text()
    );
    Ok(())
}

/// An abort (what a double panic or a failed allocation does) and a panic take the same path;
/// the requests the emergency mode does not serve get an `Error`; `Reboot` ends the namespace as
/// a reboot does.
#[test]
fn an_abort_and_a_panic_take_the_emergency_path() -> Result {
    if skipped() {
        return Ok(());
    }
    for (kind, why, said) in [
        (
            "abort",
            "SIGABRT",
            "archon: fatal: SIGABRT (abort: a double panic or no memory left)",
        ),
        ("panic", "panic", "archon panicked: panicked at"),
    ] {
        let (mut a, talker) = start(&[])?;
        fault(&a, kind)?;
        wait_emergency(&a, why)?;
        ensure!(a.log_text().contains(said), "{kind}: {}", a.log_text());
        ensure_eq!(a.request("Ping")?, "Pong", "{kind}");
        ensure_list_shows_talker(&a)?;
        ensure!(
            stat(talker).is_some_and(|s| s.state != 'Z'),
            "{kind}: the talker ended"
        );
        let reply = a.request("Status")?;
        ensure!(
            reply.starts_with("Error,") && reply.contains("emergency mode"),
            "{kind}: {reply}"
        );
        ensure_eq!(a.request("Reboot")?, "Ok,reboot", "{kind}");
        let status = a.wait_exit(LONG_BOUND)?;
        ensure_eq!(
            status.signal(),
            Some(libc::SIGHUP),
            "{kind}: the namespace ended"
        );
    }
    Ok(())
}

/// A fault's signal sent from outside the namespace reaches process 1 (it has a handler) and
/// takes the emergency path; a second one, in emergency mode already, leaves archon reaping in
/// its handler: still process 1, its service still there, orphans still reaped.
#[test]
fn fault_signals_sent_from_outside() -> Result {
    if skipped() {
        return Ok(());
    }
    let (a, talker) = start(&[])?;
    let dir = a.config().dir().to_path_buf();
    kill(Pid::from_raw(a.pid()), Signal::SIGSEGV)?;
    wait_emergency(&a, "SIGSEGV")?;
    ensure!(
        a.log_text()
            .contains("archon: fatal: SIGSEGV sent from outside archon's PID namespace"),
        "the sender is said: {}",
        a.log_text()
    );
    ensure_eq!(a.request("Ping")?, "Pong");
    kill(Pid::from_raw(a.pid()), Signal::SIGBUS)?;
    wait_until("the second fault to be said", BOUND, || {
        a.log_text().contains("SIGBUS sent from outside")
            && a.log_text()
                .contains("in emergency mode already: archon only reaps from now on")
    })?;
    ensure!(
        stat(a.pid()).is_some_and(|s| s.state != 'Z'),
        "archon is still there"
    );
    ensure!(
        stat(talker).is_some_and(|s| s.state != 'Z'),
        "the talker ended"
    );
    ensure_orphans_reaped(&a, &dir)?;
    Ok(())
}

/// After a re-exec (an upgrade in place) the new image is protected as the first was: a fault
/// takes the emergency path, whose socket is the one the re-exec handed over.
#[test]
fn a_fault_after_a_re_exec() -> Result {
    if skipped() {
        return Ok(());
    }
    let (mut a, talker) = start(&[])?;
    let reply = a.conn()?.request_fields(&["ReExec"])?;
    ensure!(reply.starts_with("Ok,"), "ReExec: {reply}");
    ensure_eq!(a.request("Ping")?, "Pong");
    fault(&a, "null")?;
    wait_emergency(&a, "SIGSEGV")?;
    ensure_eq!(a.request("Ping")?, "Pong");
    ensure!(
        stat(talker).is_some_and(|s| s.state != 'Z' && s.ppid == a.pid()),
        "the talker"
    );
    ensure_eq!(a.request("Halt")?, "Ok,halt");
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.signal(), Some(libc::SIGINT), "the namespace ended");
    Ok(())
}

/// Process 1 is out of the OOM killer's reach (`oom_score_adj` -1000); its service is not: it
/// has the value archon was started with. Without `CAP_SYS_RESOURCE` (some sandboxes drop it)
/// archon cannot lower its value, and says so.
#[test]
fn process_1_is_out_of_the_oom_killers_reach() -> Result {
    if skipped() {
        return Ok(());
    }
    let (a, talker) = start(&["--log-level", "debug"])?;
    let adj = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mine = fs::read_to_string("/proc/self/oom_score_adj")?
        .trim()
        .to_string();
    ensure_eq!(adj(talker), mine, "the talker, as archon was started");
    if has_cap_sys_resource()? {
        ensure_eq!(adj(a.pid()), "-1000", "archon");
    } else {
        println!("no CAP_SYS_RESOURCE: archon cannot lower its oom_score_adj");
        ensure_eq!(adj(a.pid()), mine, "archon, unprotected");
        ensure!(
            a.log_text()
                .contains("oom_score_adj stays as it is: Permission denied"),
            "{}",
            a.log_text()
        );
    }
    Ok(())
}

/// True when the test has `CAP_SYS_RESOURCE`, as archon started by it has.
fn has_cap_sys_resource() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("CapEff")?;
    // CAP_SYS_RESOURCE is capability 24 (linux/capability.h).
    Ok(eff & (1 << 24) != 0)
}

/// `--emergency` is for process 1 alone: anywhere else it is a usage error.
#[test]
fn the_emergency_mode_is_for_process_1_only() -> Result {
    let out = Command::new(archon_bin()?)
        .args(["--emergency", "SIGSEGV"])
        .output()
        .context("run archon")?;
    ensure_eq!(out.status.code(), Some(100));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("--emergency is internal"),
        "{out:?}"
    );
    Ok(())
}
