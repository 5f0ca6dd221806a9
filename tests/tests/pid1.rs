//! archon as an init: `Poweroff`, `Reboot` and `Halt`, the init signals, the end of every
//! process of the PID namespace, the early mounts and the early tasks.
//!
//! archon runs as process 1 of a new PID namespace (`unshare --pid --fork --mount-proc`), where
//! `reboot(2)` ends the namespace instead of the machine: the kernel kills archon, and unshare,
//! which waits for it, kills itself with the same signal, SIGINT for a power off or a halt and
//! SIGHUP for a reboot (see reboot(2), "Behavior inside PID namespaces"). That is what these
//! tests see of a power off. An archon that is not process 1 never calls `reboot(2)`: it exits.
//!
//! Everything here needs root (namespaces, another uid); the tests say so and pass otherwise.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use archon_tests::archon_proto::ServiceState;
use archon_tests::*;
use nix::sys::signal::Signal;

/// True (and says so) when the test cannot run: it needs root.
fn skipped() -> bool {
    let skip = !nix::unistd::geteuid().is_root();
    if skip {
        println!("skipped: needs root (PID and mount namespaces)");
    }
    skip
}

/// `text` with `@DIR@` replaced by `dir`.
fn fill(dir: &Path, text: &str) -> String {
    text.replace("@DIR@", &dir.display().to_string())
}

/// The lines of a file, or none.
fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Fails unless `status` is a death by `sig`.
fn ensure_killed_by(status: ExitStatus, sig: i32, what: &str) -> Result {
    ensure!(
        status.signal() == Some(sig),
        "{what}: expected death by signal {sig}, got {status}"
    );
    Ok(())
}

/// A shell line for a service or a stray that appends `word` to `@DIR@/seq` on SIGTERM and
/// exits, once it has said it is up in `@DIR@/<word>.up`.
fn polite(word: &str) -> String {
    format!(
        "trap 'echo {word} >> @DIR@/seq; exit 0' TERM; echo up > @DIR@/{word}.up; \
         while :; do sleep 0.02; done"
    )
}

// ---------------------------------------------------------------------------------------------
// The end of the namespace
// ---------------------------------------------------------------------------------------------

/// `Poweroff` and `Halt` end the namespace as a death by SIGINT, `Reboot` as one by SIGHUP; the
/// reply comes first.
#[test]
fn power_requests_end_the_namespace() -> Result {
    if skipped() {
        return Ok(());
    }
    for (verb, word, sig) in [
        ("Poweroff", "poweroff", libc::SIGINT),
        ("Reboot", "reboot", libc::SIGHUP),
        ("Halt", "halt", libc::SIGINT),
    ] {
        let mut a = Archon::builder().pid1().start()?;
        ensure_eq!(a.request(verb)?, format!("Ok,{word}"));
        let status = a.wait_exit(LONG_BOUND)?;
        ensure_killed_by(status, sig, verb)?;
        ensure!(
            a.log_text().contains(&format!("info: {word}\n")),
            "archon says what it does last: {}",
            a.log_text()
        );
    }
    Ok(())
}

/// As process 1, SIGUSR2 and SIGPWR power off and SIGUSR1 halts, as for busybox init: the
/// namespace ends by SIGINT.
#[test]
fn init_signals_power_off_and_halt() -> Result {
    if skipped() {
        return Ok(());
    }
    for sig in [Signal::SIGUSR2, Signal::SIGPWR, Signal::SIGUSR1] {
        let mut a = Archon::builder().pid1().start()?;
        a.signal(sig)?;
        let status = a.wait_exit(LONG_BOUND)?;
        ensure_killed_by(status, libc::SIGINT, sig.as_str())?;
        let want = if sig == Signal::SIGUSR1 {
            "halt"
        } else {
            "poweroff"
        };
        ensure!(
            a.log_text().contains(&format!("{}: {want}", sig.as_str())),
            "{sig}: {}",
            a.log_text()
        );
    }
    Ok(())
}

/// Services stop in reverse dependency order; then a process left in the namespace that is not
/// archon's child (it entered with nsenter) gets SIGTERM, and one that ignores SIGTERM gets
/// SIGKILL once the stop grace is over; then the namespace ends.
#[test]
fn poweroff_stops_services_in_order_then_every_process_left() -> Result {
    if skipped() {
        return Ok(());
    }
    let cfg = ConfigFile::new()?;
    let dir = cfg.dir().to_path_buf();
    cfg.write(&fill(
        &dir,
        &format!(
            "service \"a\" {{ argv = {{\"/bin/sh\", \"-c\", \"{}\"}} }}\n\
             service \"b\" {{ argv = {{\"/bin/sh\", \"-c\", \"{}\"}}, requires = {{\"a\"}} }}\n",
            polite("a"),
            polite("b")
        ),
    ))?;
    let mut a = cfg.start(Archon::builder().pid1().args(["--stop-grace", "300"]))?;
    a.wait_state("b", ServiceState::Ready)?;
    let target = a.pid().to_string();
    let enter = |script: &str| -> Result<ChildGuard> {
        ChildGuard::spawn(
            Command::new("nsenter")
                .args(["--target", &target, "--pid", "--", "/bin/sh", "-c"])
                .arg(fill(&dir, script)),
        )
    };
    let _polite = enter(&polite("stray"))?;
    let mut stubborn = enter("trap '' TERM; echo up > @DIR@/stubborn.up; exec sleep 1000")?;
    for up in ["a", "b", "stray", "stubborn"] {
        wait_line_in(dir.join(format!("{up}.up")))?;
    }
    ensure_eq!(a.request("Poweroff")?, "Ok,poweroff");
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_killed_by(status, libc::SIGINT, "the namespace")?;
    ensure_eq!(
        lines(&dir.join("seq")),
        ["b", "a", "stray"],
        "who got SIGTERM, in order"
    );
    // nsenter, the stubborn one's parent outside, dies as its child did.
    let stubborn_end = stubborn.child.wait().context("wait for nsenter")?;
    ensure_killed_by(stubborn_end, libc::SIGKILL, "the stubborn stray")?;
    let log = a.log_text();
    ensure!(
        log.contains("every process left: SIGTERM")
            && log.contains("did not end on SIGTERM: SIGKILL")
            && log.contains("every process has ended"),
        "archon ended the strays itself: {log}"
    );
    Ok(())
}

/// Only root may power off: a client of another uid (archon runs as that uid too, so it is
/// served at all) gets `Error,permission denied` and its connection goes on. Root may; archon,
/// without the right to call reboot(2), then exits with the code of a power off (130).
#[test]
fn power_requests_need_root() -> Result {
    if skipped() {
        return Ok(());
    }
    let sockdir = TempDir::new()?;
    fs::set_permissions(sockdir.path(), fs::Permissions::from_mode(0o777))?;
    let socket = sockdir.join("archon.sock");
    let mut a = Archon::builder()
        .socket(&socket)
        .under(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            true,
        )
        .start()?;
    let mut c = Conn::from_stream(connect_as(65534, 65534, &socket)?)?;
    for verb in ["Poweroff", "Reboot", "Halt"] {
        ensure_eq!(c.request(verb)?, "Error,permission denied", "{verb}");
    }
    ensure_eq!(c.request("Ping")?, "Pong", "the connection goes on");
    ensure!(a.try_exit()?.is_none(), "archon went down");
    ensure_eq!(a.request("Poweroff")?, "Ok,poweroff", "root may");
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(130), "{status}");
    ensure!(
        a.log_text().contains("cannot poweroff: reboot(2)"),
        "{}",
        a.log_text()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Not process 1
// ---------------------------------------------------------------------------------------------

/// An archon that is not process 1 stops its services on `Poweroff` and exits 130 (129 for
/// `Reboot`), without calling reboot(2) or signalling anything it did not start.
#[test]
fn power_requests_to_a_plain_archon_stop_it_and_exit() -> Result {
    if skipped() {
        return Ok(());
    }
    for (verb, code) in [("Poweroff", 130), ("Reboot", 129), ("Halt", 130)] {
        let cfg = ConfigFile::new()?;
        let dir = cfg.dir().to_path_buf();
        cfg.write(&fill(
            &dir,
            &format!(
                "service \"a\" {{ argv = {{\"/bin/sh\", \"-c\", \"{}\"}} }}\n",
                polite("a")
            ),
        ))?;
        // A process of the test's own, of the same user as archon: it must not be touched.
        let bystander = ChildGuard::sleep(1000)?;
        let mut a = cfg.start(Archon::builder())?;
        wait_line_in(dir.join("a.up"))?;
        let reply = a.request(verb)?;
        ensure_eq!(reply, format!("Ok,{}", verb.to_lowercase()));
        let status = a.wait_exit(LONG_BOUND)?;
        ensure_eq!(status.code(), Some(code), "{verb}: {status}");
        ensure_eq!(
            lines(&dir.join("seq")),
            ["a"],
            "{verb}: the service stopped"
        );
        ensure!(alive(bystander.pid()), "{verb}: a bystander was signalled");
        ensure!(
            !a.log_text().contains("every process left"),
            "{verb}: {}",
            a.log_text()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The early boot
// ---------------------------------------------------------------------------------------------

/// The file system type mounted last on `target` in `/proc/<pid>/mountinfo`.
fn fstype_at(pid: i32, target: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    text.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        (point == target).then(|| right.split(' ').next().map(str::to_string))?
    })
}

/// With `--early-mounts`, in a mount namespace of its own where /sys, /dev and /run were
/// unmounted and /proc is the one of another PID namespace, archon mounts sysfs, devtmpfs, tmpfs
/// and cgroup2, and a /proc of its own: its children find archon as process 1 there, and
/// /dev/null.
#[test]
fn early_mounts_in_a_fresh_mount_namespace() -> Result {
    if skipped() {
        return Ok(());
    }
    let dir = TempDir::new()?;
    let script = fill(
        dir.path(),
        "set -e; mount --make-rprivate /; \
         for m in /run /dev /sys; do umount -l $m 2>/dev/null || true; done; \
         cat /proc/self/mountinfo > @DIR@/before; exec \"$@\"",
    );
    let mut a = Archon::builder()
        .under(
            [
                "unshare", "--mount", "--pid", "--fork", "--", "/bin/sh", "-c", &script, "sh",
            ],
            true,
        )
        .arg("--early-mounts")
        .start()?;
    let before: Vec<String> = lines(&dir.join("before"))
        .iter()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect();
    for gone in ["/sys", "/dev", "/run"] {
        ensure!(
            !before.contains(&gone.to_string()),
            "{gone} was still mounted before archon: {before:?}"
        );
    }
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        ensure_eq!(
            fstype_at(a.pid(), target),
            Some(fstype.to_string()),
            "what is mounted on {target}"
        );
        ensure!(
            a.log_text()
                .contains(&format!("mounted {fstype} on {target}\n")),
            "{}",
            a.log_text()
        );
    }
    let mut c = a.conn()?;
    let (reply, out) = run_captured(
        &mut c,
        &[
            "Run",
            "/bin/sh",
            "-c",
            "tr '\\0' ' ' < /proc/1/cmdline; echo; test -c /dev/null && echo null",
        ],
    )?;
    ensure_eq!(reply, "ExitStatus,0");
    let out: Vec<&str> = out.lines().collect();
    ensure!(
        out.first().is_some_and(|l| l.contains("archon")) && out.get(1) == Some(&"null"),
        "what a child sees: {out:?}"
    );
    a.signal(Signal::SIGTERM)?;
    ensure_eq!(a.wait_exit(LONG_BOUND)?.code(), Some(0));
    Ok(())
}

/// An early task runs before everything else, even a service that names nothing to wait for;
/// one that fails holds nothing back.
#[test]
fn early_tasks_run_before_everything_else() -> Result {
    let cfg = ConfigFile::new()?;
    let dir = cfg.dir().to_path_buf();
    cfg.write(&fill(
        &dir,
        "service \"web\" { argv = {\"/bin/sh\", \"-c\", \"echo web >> @DIR@/seq; exec sleep 1000\"} }\n\
         task \"setup\" { argv = {\"/bin/sh\", \"-c\", \"sleep 0.3; echo setup >> @DIR@/seq\"}, early = true }\n\
         task \"broken\" { argv = {\"/bin/sh\", \"-c\", \"exit 3\"}, early = true }\n",
    ))?;
    let mut a = cfg.start(Archon::builder())?;
    a.wait_state("web", ServiceState::Ready)?;
    wait_until("web to have written its line", BOUND, || {
        lines(&dir.join("seq")).len() >= 2
    })?;
    ensure_eq!(a.service("setup")?.state, ServiceState::Done);
    ensure_eq!(a.service("broken")?.state, ServiceState::Failed);
    ensure_eq!(lines(&dir.join("seq")), ["setup", "web"]);
    a.signal(Signal::SIGTERM)?;
    ensure_eq!(a.wait_exit(LONG_BOUND)?.code(), Some(0));
    Ok(())
}
