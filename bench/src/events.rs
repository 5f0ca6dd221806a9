//! Events through subscribers: how many a second archon makes and streams to one subscriber and
//! to many, what each costs archon, and how many a subscriber that reads as fast as it can
//! still loses.
//!
//! The events are `signal` events: `Signal,<id>,CONT` to a sleeping daemon, pipelined in
//! batches on one connection, so that what is measured is archon's event path (a request, a
//! record, the history, one encoding, a line queued per subscriber) rather than a fork. Each
//! subscriber is read by a thread of its own that counts `Event` lines and the events that
//! `Dropped` lines say were lost; the figure is events over the time from the first request to
//! the last subscriber's last line.

use std::time::{Duration, Instant};

use crate::archon::Archon;
use crate::conn::{Conn, number};
use crate::cpu;
use crate::stats::{count, duration, rate};
use crate::table::Row;

/// Events through one subscriber.
const EVENTS_ONE: usize = 100_000;
/// Subscribers at once, and events through them.
const SUBSCRIBERS: usize = 100;
const EVENTS_MANY: usize = 10_000;
/// Requests sent before their replies are read.
const BATCH: usize = 1_000;

/// What one run measured.
struct Through {
    wall: Duration,
    delivered: u64,
    dropped: u64,
    cpu: Duration,
}

/// The rows: one subscriber, then `SUBSCRIBERS`.
pub fn events(archon: &Archon) -> Result<Vec<Row>, String> {
    let mut conn = archon.connect()?;
    let reply = conn.fields(b"StartDaemon,sleep,1000\n")?;
    let id = match (reply.first().map(|f| &f[..]), number(reply.get(1))) {
        (Some(b"Ok"), Some(id)) => id,
        _ => return Err("StartDaemon for the event bench failed".to_string()),
    };
    let signal = format!("Signal,{id},CONT\n").into_bytes();
    let ok = format!("Ok,{id}").into_bytes();
    let one = through(archon, &mut conn, (&signal, &ok), 1, EVENTS_ONE)?;
    let many = through(archon, &mut conn, (&signal, &ok), SUBSCRIBERS, EVENTS_MANY)?;
    conn.send(format!("Stop,{id}\n").as_bytes())?;
    conn.line()?;
    let per_event = |t: &Through, n: usize| {
        let n32 = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        duration(t.cpu / n32)
    };
    Ok(vec![
        Row::value(
            "Events through 1 subscriber (Signal, pipelined)",
            format!("{} events/s", count(rate(EVENTS_ONE, one.wall))),
        )
        .n(count(EVENTS_ONE as f64))
        .total(duration(one.wall)),
        Row::value(
            "… per event: archon's CPU; delivered / dropped",
            format!(
                "{}; {} / {}",
                per_event(&one, EVENTS_ONE),
                count(one.delivered as f64),
                count(one.dropped as f64)
            ),
        ),
        Row::value(
            format!("Events through {SUBSCRIBERS} subscribers"),
            format!(
                "{} events/s, {} lines/s",
                count(rate(EVENTS_MANY, many.wall)),
                count(rate(EVENTS_MANY * SUBSCRIBERS, many.wall))
            ),
        )
        .n(format!("{SUBSCRIBERS}×{}", count(EVENTS_MANY as f64)))
        .total(duration(many.wall)),
        Row::value(
            "… per event: archon's CPU; delivered / dropped",
            format!(
                "{}; {} / {}",
                per_event(&many, EVENTS_MANY),
                count(many.delivered as f64),
                count(many.dropped as f64)
            ),
        ),
    ])
}

/// `events` requests `line` (each answered `reply`) with `subscribers` subscribed.
fn through(
    archon: &Archon,
    conn: &mut Conn,
    (line, reply): (&[u8], &[u8]),
    subscribers: usize,
    events: usize,
) -> Result<Through, String> {
    let mut subs = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut c = archon.connect()?;
        let ok = c.fields(b"Subscribe\n")?;
        if ok.first().map(|f| &f[..]) != Some(b"Ok") {
            return Err("Subscribe was refused".to_string());
        }
        subs.push(c);
    }
    let cpu_before = cpu::process(archon.pid())?;
    let start = Instant::now();
    let (sent, read) = std::thread::scope(|s| {
        let readers: Vec<_> = subs
            .iter_mut()
            .map(|c| s.spawn(move || read_events(c, events as u64)))
            .collect();
        let sent = send(conn, line, reply, events);
        let read: Vec<_> = readers
            .into_iter()
            .map(|r| {
                r.join()
                    .unwrap_or_else(|_| Err("a subscriber thread panicked".to_string()))
            })
            .collect();
        (sent, read)
    });
    sent?;
    let mut out = Through {
        wall: Duration::ZERO,
        delivered: 0,
        dropped: 0,
        cpu: cpu::process(archon.pid())?.saturating_sub(cpu_before),
    };
    for r in read {
        let (end, delivered, dropped) = r?;
        out.wall = out.wall.max(end.saturating_duration_since(start));
        out.delivered += delivered;
        out.dropped += dropped;
    }
    Ok(out)
}

/// Sends `n` × `line` in batches of `BATCH`, reading the replies of each.
fn send(conn: &mut Conn, line: &[u8], reply: &[u8], n: usize) -> Result<(), String> {
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH);
        conn.send(&line.repeat(k))?;
        for _ in 0..k {
            conn.expect_reply(line, reply)?;
        }
        left -= k;
    }
    Ok(())
}

/// Reads a subscription until `n` events have come or been counted as dropped: when the last
/// came, how many came, how many were dropped.
fn read_events(c: &mut Conn, n: u64) -> Result<(Instant, u64, u64), String> {
    let (mut delivered, mut dropped) = (0, 0);
    while delivered + dropped < n {
        let line = c.line()?;
        if line.starts_with(b"Event,") {
            delivered += 1;
        } else if let Some(k) = line.strip_prefix(b"Dropped,") {
            dropped += std::str::from_utf8(k)
                .ok()
                .and_then(|k| k.parse::<u64>().ok())
                .ok_or("a malformed Dropped line")?;
        } else {
            return Err(format!(
                "a subscriber got {:?}",
                String::from_utf8_lossy(line)
            ));
        }
    }
    Ok((Instant::now(), delivered, dropped))
}
