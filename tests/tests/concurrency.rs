//! Concurrency and order: replies in request order per connection, Runs that do not wait for each
//! other, a client that stops reading, and the bounded run pool. Every check is on the order of
//! events, never on how long something took.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use archon_tests::archon_proto::{Kind, ProcState};
use archon_tests::*;

#[test]
fn pipelined_requests_are_answered_in_order() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    // The Ping is answered at once but must wait for the Run's reply before it.
    c.send(b"Run,/bin/sleep,0.3\nPing\n")?;
    ensure_eq!(c.reply_text()?, "ExitStatus,0");
    ensure_eq!(c.reply_text()?, "Pong");
    c.send(b"Ping\nVersion\nRun,/bin/sh,-c,exit 3\nList\nPing\n")?;
    ensure_eq!(c.reply_text()?, "Pong");
    ensure!(c.reply_text()?.starts_with("Version,"), "second reply");
    ensure_eq!(c.reply_text()?, "ExitStatus,3");
    ensure!(c.reply_text()?.starts_with("List,2\n"), "fourth reply");
    ensure_eq!(c.reply_text()?, "Pong");
    Ok(())
}

#[test]
fn many_pipelined_requests_are_all_answered() -> Result {
    let a = Archon::start()?;
    let mut c = a.conn()?;
    // More than MAX_PIPELINED in one write: back-pressure, not an error.
    c.send("Ping\n".repeat(500).as_bytes())?;
    for i in 0..500 {
        ensure_eq!(c.reply_text()?, "Pong", "reply #{i}");
    }
    Ok(())
}

#[test]
fn a_long_run_does_not_delay_a_run_on_another_connection() -> Result {
    let a = Archon::start()?;
    let mut slow = a.conn()?;
    slow.send(b"Run,/bin/sleep,5\n")?;
    wait_until("the slow Run to be running", BOUND, || {
        a.list().is_ok_and(|rows| {
            rows.iter()
                .any(|r| r.kind == Kind::Run && r.state == ProcState::Running)
        })
    })?;
    let mut fast = a.conn()?;
    ensure_eq!(fast.request("Run,/bin/true")?, "ExitStatus,0");
    ensure!(
        !slow.has_data()?,
        "the sleep's connection got its reply before /bin/true's"
    );
    Ok(())
}

#[test]
fn runs_on_different_connections_run_at_the_same_time() -> Result {
    let a = Archon::start()?;
    let flag = a.path("flag");
    // The first Run can only end once the second has run: if Runs waited for each other this
    // would never finish (and fail after the bound).
    let waiter = format!(
        "until [ -e '{}' ]; do /bin/sleep 0.01; done",
        flag.display()
    );
    let mut first = a.conn()?;
    first.send(&line(&["Run", "/bin/sh", "-c", &waiter]))?;
    first.wait_consumed()?;
    let mut second = a.conn()?;
    ensure_eq!(
        second.request_fields(&["Run", "/bin/touch", &flag.display().to_string()])?,
        "ExitStatus,0"
    );
    ensure_eq!(first.reply_text()?, "ExitStatus,0");
    Ok(())
}

#[test]
fn a_client_that_stops_reading_does_not_stall_others() -> Result {
    let a = Archon::start()?;
    let stalled = a.conn()?;
    let mut writer = stalled.stream().try_clone()?;
    let written = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    // Requests flood in, replies are never read: archon must stop reading this client, not block.
    let flood = std::thread::spawn(move || {
        let chunk = "Version\n".repeat(8192);
        while writer.write_all(chunk.as_bytes()).is_ok() {
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    // Once archon stops reading the flood (its replies pile up unread), the writer blocks.
    let mut last = 0;
    wait_until(
        "archon to stop reading a client that reads no replies",
        LONG_BOUND,
        || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let now = written.load(Ordering::Relaxed);
            let stalled = now > 0 && now == last;
            last = now;
            stalled
        },
    )?;
    let mut other = a.conn()?;
    ensure_eq!(other.request("Ping")?, "Pong");
    ensure_eq!(other.request("Run,/bin/true")?, "ExitStatus,0");
    let _ = stalled.stream().shutdown(std::net::Shutdown::Both);
    let _ = flood.join();
    drop(stalled);
    ensure_eq!(
        other.request("Ping")?,
        "Pong",
        "after the flooding client left"
    );
    Ok(())
}

#[test]
fn run_pool_refuses_beyond_max_runs_and_queue_with_busy() -> Result {
    let a = Archon::with_args(["--max-runs", "1", "--run-queue", "1"])?;
    let mut running = a.conn()?;
    running.send(b"Run,/bin/sleep,10\n")?;
    wait_until("the first Run to be running", BOUND, || {
        a.list().is_ok_and(|rows| {
            rows.iter()
                .any(|r| r.kind == Kind::Run && r.state == ProcState::Running)
        })
    })?;
    let mut queued = a.conn()?;
    queued.send(b"Run,/bin/true\n")?;
    queued.wait_consumed()?;
    let mut refused = a.conn()?;
    ensure_eq!(refused.request("Run,/bin/true")?, "Error,busy");
    ensure!(
        !queued.has_data()?,
        "the queued Run ran while the pool was full"
    );
    ensure_eq!(
        refused.request("Ping")?,
        "Pong",
        "other requests are still served"
    );
    Ok(())
}

#[test]
fn queued_run_starts_when_a_slot_frees() -> Result {
    let a = Archon::with_args(["--max-runs", "1"])?;
    let mut first = a.conn()?;
    first.send(b"Run,/bin/sleep,0.3\n")?;
    wait_until("the first Run to be running", BOUND, || {
        a.list().is_ok_and(|rows| {
            rows.iter()
                .any(|r| r.kind == Kind::Run && r.state == ProcState::Running)
        })
    })?;
    let mut second = a.conn()?;
    ensure_eq!(second.request("Run,/bin/true")?, "ExitStatus,0");
    ensure!(
        first.has_data()?,
        "the queued Run finished before the one holding the only slot"
    );
    ensure_eq!(first.reply_text()?, "ExitStatus,0");
    Ok(())
}
