//! What a Lua handler costs: `signal` events through archon (`Signal,<id>,CONT` to a sleeping
//! daemon, pipelined, as in `events.rs`, with no subscriber) under four configurations: no
//! handler at all (no Lua state), a handler that matches none of them (decided in Rust: a
//! kind and glob test per event), a trivial handler that runs for each (an empty Lua
//! function: the event's table, the budget, the call), and one that also logs (a `note`
//! event per event, and a line in archon's log).
//!
//! `archon-bench [--archon PATH] handlers` (`bench/run handlers`).

use std::ffi::OsString;
use std::time::Instant;

use crate::archon::{Archon, TempDir};
use crate::conn::number;
use crate::cpu;
use crate::stats::{count, duration, rate};
use crate::table::{Row, render};

/// Events per configuration.
const EVENTS: usize = 50_000;
/// Requests sent before their replies are read.
const BATCH: usize = 1_000;

/// The configurations measured: a name, and the file's text.
const CONFIGS: [(&str, &str); 4] = [
    ("no handler", ""),
    (
        "a handler that matches no event",
        r#"on("exit", "nothing-is-called-so", function(ev) end)"#,
    ),
    (
        "a trivial handler for every event",
        r#"on("signal", "*", function(ev) end)"#,
    ),
    (
        "a handler that logs every event",
        r#"on("signal", "*", function(ev) archon.log(ev.subject) end)"#,
    ),
];

/// Runs the bench and prints its table.
pub fn run(archon_bin: &std::path::Path) -> Result<(), String> {
    let dir = TempDir::new()?;
    let mut rows = Vec::new();
    for (i, (what, lua)) in CONFIGS.iter().enumerate() {
        let config = dir.path().join(format!("h{i}.lua"));
        std::fs::write(&config, lua).map_err(|e| format!("write {}: {e}", config.display()))?;
        let args: [OsString; 2] = ["--config".into(), config.into_os_string()];
        let archon = Archon::start_with(archon_bin, &args, dir.path(), &format!("h{i}"))?;
        let rss = archon.rss_kib()?;
        let mut conn = archon.connect()?;
        let reply = conn.fields(b"StartDaemon,sleep,1000\n")?;
        let id = match (reply.first().map(|f| &f[..]), number(reply.get(1))) {
            (Some(b"Ok"), Some(id)) => id,
            _ => return Err("StartDaemon for the handler bench failed".to_string()),
        };
        let line = format!("Signal,{id},CONT\n").into_bytes();
        let ok = format!("Ok,{id}").into_bytes();
        let cpu_before = cpu::process(archon.pid())?;
        let start = Instant::now();
        let mut left = EVENTS;
        while left > 0 {
            let k = left.min(BATCH);
            conn.send(&line.repeat(k))?;
            for _ in 0..k {
                conn.expect_reply(&line, &ok)?;
            }
            left -= k;
        }
        // The handlers run at the end of each turn of the loop: a Ping's answer comes after
        // the ones its turn queued.
        conn.expect(b"Ping\n", b"Pong")?;
        let wall = start.elapsed();
        let cpu = cpu::process(archon.pid())?.saturating_sub(cpu_before);
        conn.send(format!("Stop,{id}\n").as_bytes())?;
        conn.line()?;
        drop(conn);
        archon.stop()?;
        rows.push(
            Row::value(
                format!("Signal events, {what}"),
                format!(
                    "{} events/s; archon's CPU per event {}; RSS at start {} KiB",
                    count(rate(EVENTS, wall)),
                    duration(cpu / EVENTS as u32),
                    rss
                ),
            )
            .n(count(EVENTS as f64))
            .total(duration(wall)),
        );
    }
    println!("## archon handler bench\n");
    print!("{}", render(&rows));
    Ok(())
}
