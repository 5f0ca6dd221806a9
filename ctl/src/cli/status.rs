//! `archonctl status`'s table: one row per service, task and process, in human units.
//!
//! Durations read like `3h12m` (two units, the second zero-padded), memory like `12.3M` (powers
//! of 1024, one decimal from MiB up), CPU time like `1.5s` below a minute and as a duration
//! above. Anything archon does not know is `-`. Text from archon (names, reasons) goes through
//! [`printable`], so that one row is always one line.

use archon_proto::reply::ready;
use archon_proto::{ServiceRow, ServiceState};

use super::table::{columns, printable, status_text};

/// The column titles.
const HEADER: [&str; 13] = [
    "NAME", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "LAST", "READY", "HEALTH", "RSS", "CPU",
    "SOCKETS", "REASON",
];

/// The table, header included, every line ended by `\n`. `now_ms` (milliseconds since the Unix
/// epoch) is what uptimes are counted to.
pub fn render(rows: &[ServiceRow], now_ms: u64) -> String {
    let none = || ready::NONE.to_string();
    let cells: Vec<[String; 13]> = rows
        .iter()
        .map(|r| {
            [
                printable(&r.name),
                r.kind.to_string(),
                r.state.to_string(),
                r.pid.map_or_else(none, |p| p.to_string()),
                uptime(r, now_ms),
                r.restarts.to_string(),
                status_text(r.last),
                match r.ready {
                    Some(true) => ready::YES.to_string(),
                    Some(false) => ready::NO.to_string(),
                    None => none(),
                },
                r.health.map_or_else(none, |h| h.to_string()),
                r.rss_kib.map_or_else(none, memory),
                r.cpu_ms.map_or_else(none, cpu),
                if r.sockets.is_empty() {
                    none()
                } else {
                    printable(&r.sockets)
                },
                printable(&r.reason),
            ]
        })
        .collect();
    columns(HEADER, &cells)
}

/// How long it has run, for a running or ready row; `-` for the other states, whose `since`
/// is not a start.
fn uptime(row: &ServiceRow, now_ms: u64) -> String {
    match row.state {
        ServiceState::Running | ServiceState::Ready => {
            duration(now_ms.saturating_sub(row.since_ms) / 1000)
        }
        _ => ready::NONE.to_string(),
    }
}

/// `secs` as at most two units: `45s`, `5m07s`, `3h12m`, `2d03h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `kib` KiB: `812K` below a MiB, else one decimal in the largest unit that keeps the number
/// below 1024 (`12.3M`, `1.5G`).
pub fn memory(kib: u64) -> String {
    const UNITS: [&str; 5] = ["M", "G", "T", "P", "E"];
    if kib < 1024 {
        return format!("{kib}K");
    }
    // Rounded to tenths first, so that 1023.96 MiB is 1.0G rather than 1024.0M.
    let tenths = |div: u128| (u128::from(kib) * 10 + div / 2) / div;
    let (mut unit, mut div) = (0, 1024);
    while tenths(div) >= 10 * 1024 && unit + 1 < UNITS.len() {
        unit += 1;
        div *= 1024;
    }
    let t = tenths(div);
    format!("{}.{}{}", t / 10, t % 10, UNITS[unit])
}

/// `ms` of CPU time: `0.4s`, `12.5s` below a minute (tenths, rounded down), a duration above.
pub fn cpu(ms: u64) -> String {
    if ms < 60_000 {
        format!("{}.{}s", ms / 1000, ms % 1000 / 100)
    } else {
        duration(ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{Health, ServiceKind, Status};

    #[test]
    fn durations() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (307, "5m07s"),
            (3599, "59m59s"),
            (3600, "1h00m"),
            (3 * 3600 + 12 * 60 + 5, "3h12m"),
            (86_399, "23h59m"),
            (86_400, "1d00h"),
            (2 * 86_400 + 3 * 3600 + 59, "2d03h"),
            (u64::MAX, "213503982334601d07h"),
        ];
        for (secs, want) in cases {
            assert_eq!(duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn memory_sizes() {
        let cases = [
            (0, "0K"),
            (812, "812K"),
            (1023, "1023K"),
            (1024, "1.0M"),
            (12_600, "12.3M"),
            (1024 * 1024 - 1, "1.0G"),
            (1024 * 1023, "1023.0M"),
            (3 * 1024 * 1024 / 2, "1.5G"),
            (5 << 30, "5.0T"),
            (u64::MAX, "16384.0E"),
        ];
        for (kib, want) in cases {
            assert_eq!(memory(kib), want, "{kib}");
        }
    }

    #[test]
    fn cpu_times() {
        let cases = [
            (0, "0.0s"),
            (450, "0.4s"),
            (12_599, "12.5s"),
            (59_999, "59.9s"),
            (60_000, "1m00s"),
            (192_000, "3m12s"),
            (7_380_000, "2h03m"),
        ];
        for (ms, want) in cases {
            assert_eq!(cpu(ms), want, "{ms}");
        }
    }

    fn row(name: &str, kind: ServiceKind, state: ServiceState) -> ServiceRow {
        ServiceRow {
            name: name.as_bytes().to_vec(),
            kind,
            state,
            pid: None,
            since_ms: 0,
            restarts: 0,
            last: None,
            ready: None,
            health: None,
            rss_kib: None,
            cpu_ms: None,
            reason: Vec::new(),
            sockets: Vec::new(),
        }
    }

    #[test]
    fn table() {
        let now = 1_763_780_000_000;
        let rows = [
            ServiceRow {
                pid: Some(4242),
                since_ms: now - (3 * 3600 + 12 * 60) * 1000 - 400,
                restarts: 2,
                last: Some(Status::Signaled(9)),
                ready: Some(true),
                health: Some(Health::Healthy),
                rss_kib: Some(12_600),
                cpu_ms: Some(1_500),
                sockets: b"tcp:127.0.0.1:43211".to_vec(),
                ..row("web", ServiceKind::Service, ServiceState::Ready)
            },
            ServiceRow {
                since_ms: now - 5000,
                restarts: 5,
                last: Some(Status::Exited(1)),
                reason: b"exited with code 1\nafter 0.1s".to_vec(),
                ..row("worker-10", ServiceKind::Service, ServiceState::Failed)
            },
            ServiceRow {
                last: Some(Status::Exited(0)),
                ..row("migrate", ServiceKind::Task, ServiceState::Done)
            },
            ServiceRow {
                pid: Some(77),
                since_ms: now + 5000,
                rss_kib: Some(800),
                cpu_ms: Some(0),
                ..row("3", ServiceKind::Daemon, ServiceState::Running)
            },
        ];
        let want = "\
NAME       KIND     STATE    PID   UPTIME  RESTARTS  LAST     READY  HEALTH   RSS    CPU   SOCKETS              REASON
web        service  ready    4242  3h12m   2         SIGKILL  yes    healthy  12.3M  1.5s  tcp:127.0.0.1:43211
worker-10  service  failed   -     -       5         1        -      -        -      -     -                    exited with code 1\\nafter 0.1s
migrate    task     done     -     -       0         0        -      -        -      -     -
3          daemon   running  77    0s      0         -        -      -        800K   0.0s  -
";
        assert_eq!(render(&rows, now), want);
        assert_eq!(
            render(&[], now),
            "NAME  KIND  STATE  PID  UPTIME  RESTARTS  LAST  READY  HEALTH  RSS  CPU  SOCKETS  REASON\n"
        );
    }
}
