//! archon's own log in the kernel's log (archon(8), LOGGING): as process 1 whose stderr is
//! closed, `/dev/null`, or goes away, archon writes its messages to `/dev/kmsg`, one record
//! each with its syslog priority; with a usable stderr, or when it is not process 1, it does not.
//!
//! The test reads `/dev/kmsg` from its end, as `dmesg --follow` does, and looks for archon's
//! `listening on <socket>` record: the socket's path is in a temp dir of its own, so records of
//! other tests' archons are not taken for this one's. Needs root (namespaces, reading the
//! kernel's log); passes with a note otherwise.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use archon_tests::*;
use nix::sys::signal::Signal;

/// True (and says so) when the test cannot run.
fn skipped() -> bool {
    let skip = !nix::unistd::geteuid().is_root() || File::open("/dev/kmsg").is_err();
    if skip {
        println!("skipped: needs root and a readable /dev/kmsg");
    }
    skip
}

/// The kernel's log from now on.
struct Kmsg {
    file: File,
    /// The records read so far, as `dmesg -r` would show their text: `<prio>,<seq>,...;<text>`.
    seen: Vec<String>,
}

impl Kmsg {
    fn open() -> Result<Kmsg> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("open /dev/kmsg")?;
        file.seek(SeekFrom::End(0))
            .context("seek to the end of /dev/kmsg")?;
        Ok(Kmsg {
            file,
            seen: Vec::new(),
        })
    }

    /// Reads the records there are now (one per read).
    fn read_now(&mut self) {
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => self
                    .seen
                    .push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string()),
                // EPIPE: records were overwritten before they were read; go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => return,
            }
        }
    }

    /// The record whose text holds `needle`, once one comes: `(priority, text)`.
    fn wait_for(&mut self, needle: &str) -> Result<(u32, String)> {
        let found = wait_for(
            format!("a kernel log record with {needle:?}"),
            BOUND,
            || {
                self.read_now();
                self.seen
                    .iter()
                    .find_map(|r| parse(r).filter(|(_, t)| t.contains(needle)))
            },
        );
        found.map_err(|e| Fail::new(format!("{e:?}; records seen:\n{}", self.seen.join("\n"))))
    }

    /// The records read that hold `needle`.
    fn matching(&mut self, needle: &str) -> Vec<String> {
        self.read_now();
        self.seen
            .iter()
            .filter(|r| r.contains(needle))
            .cloned()
            .collect()
    }
}

/// `<prio>,<seq>,<usec>,<flags>[,...];<text>` into the priority and the text.
fn parse(record: &str) -> Option<(u32, String)> {
    let (head, text) = record.split_once(';')?;
    let prio = head.split(',').next()?.parse().ok()?;
    let text = text.lines().next().unwrap_or_default().to_string();
    Some((prio, text))
}

/// `LOG_DAEMON | LOG_INFO` and `LOG_DAEMON | LOG_WARNING`.
const DAEMON_INFO: u32 = (3 << 3) | 6;
const DAEMON_WARNING: u32 = (3 << 3) | 4;

#[test]
fn process_1_with_its_stderr_closed_or_dev_null_logs_to_kmsg() -> Result {
    if skipped() {
        return Ok(());
    }
    for to in [StderrTo::Closed, StderrTo::DevNull] {
        let what = format!("{to:?}");
        let mut kmsg = Kmsg::open()?;
        let a = Archon::builder().pid1().stderr(to).start()?;
        let needle = format!("archon[1]: listening on {}", a.socket().display());
        let (prio, text) = kmsg.wait_for(&needle).context(&what)?;
        ensure_eq!(prio, DAEMON_INFO, "{what}: {text}");
        ensure!(text.starts_with("archon[1]: "), "{what}: {text}");
        // A warning on demand: SIGHUP without a configuration file.
        a.signal(Signal::SIGHUP)?;
        let (prio, text) = kmsg
            .wait_for("archon[1]: SIGHUP: configuration not reloaded")
            .context(&what)?;
        ensure_eq!(prio, DAEMON_WARNING, "{what}: {text}");
        ensure_eq!(a.request("Ping")?, "Pong");
    }
    Ok(())
}

#[test]
fn process_1_whose_stderr_goes_away_turns_to_kmsg() -> Result {
    if skipped() {
        return Ok(());
    }
    let mut kmsg = Kmsg::open()?;
    let (read, write) = pipe()?;
    let a = Archon::builder()
        .pid1()
        .stderr(StderrTo::Fd(write))
        .start()?;
    let socket = a.socket().display().to_string();
    // Its start went to the pipe, not to the kernel's log.
    ensure!(
        kmsg.matching(&socket).is_empty(),
        "nothing in the kernel's log while stderr is usable: {:?}",
        kmsg.matching(&socket)
    );
    drop(read);
    a.signal(Signal::SIGHUP)?;
    let (prio, text) = kmsg.wait_for("archon[1]: SIGHUP: configuration not reloaded")?;
    ensure_eq!(prio, DAEMON_WARNING, "{text}");
    ensure_eq!(a.request("Ping")?, "Pong");
    Ok(())
}

#[test]
fn an_archon_that_is_not_process_1_never_writes_to_kmsg() -> Result {
    if skipped() {
        return Ok(());
    }
    let mut kmsg = Kmsg::open()?;
    let a = Archon::builder().stderr(StderrTo::DevNull).start()?;
    // It said that it listens before it answered anything.
    ensure_eq!(a.request("Ping")?, "Pong");
    let socket = a.socket().display().to_string();
    ensure!(
        kmsg.matching(&socket).is_empty(),
        "{:?}",
        kmsg.matching(&socket)
    );
    Ok(())
}
