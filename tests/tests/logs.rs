//! Captured logs against the real archon, named after archon.lua(5)'s `log` and
//! archon-protocol(7)'s LOGS: a service's stdout and stderr as lines with their stream and
//! level, nothing lost across restarts, following, the level filter, a bounded ring under a
//! flood while other clients are answered, rotated files, a log directory that cannot be
//! written, bad arguments, and `archonctl logs`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use archon_tests::archon_proto::{LogLine, LogStream, Reply, ServiceState, StreamItem};
use archon_tests::*;

/// Writes `lua` (with `@DIR@` replaced by the config's directory) and starts archon on it.
fn start(lua: &str) -> Result<Configured> {
    let cfg = ConfigFile::new()?;
    cfg.write(&lua.replace("@DIR@", &cfg.dir().display().to_string()))?;
    cfg.start(Archon::builder())
}

/// `Logs` with `args`: the lines.
fn logs(conn: &mut Conn, args: &[&str]) -> Result<Vec<LogLine>> {
    let mut fields = vec!["Logs"];
    fields.extend_from_slice(args);
    conn.send(&line(&fields))?;
    match conn.reply()? {
        (Reply::Logs(lines), _) => Ok(lines),
        (_, got) => fail(format!("{fields:?} got {got:?}")),
    }
}

fn text(l: &LogLine) -> String {
    String::from_utf8_lossy(&l.text).into_owned()
}

/// Waits until `Logs` with `args` holds a line whose text is `last`; returns the lines.
fn wait_lines(
    a: &Archon,
    args: &[&str],
    last: &str,
    bound: std::time::Duration,
) -> Result<Vec<LogLine>> {
    let mut seen = Vec::new();
    let found = wait_for(format!("a line {last:?}"), bound, || {
        seen = a.conn().and_then(|mut c| logs(&mut c, args)).ok()?;
        seen.iter().any(|l| text(l) == last).then(|| seen.clone())
    });
    found.map_err(|e| {
        Fail::new(format!(
            "{e:?}; lines: {:?}",
            seen.iter().map(text).collect::<Vec<_>>()
        ))
    })
}

/// archon's resident memory, in KiB.
fn vm_rss_kib(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("/proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

#[test]
fn stdout_and_stderr_lines_come_with_their_stream_and_level() -> Result {
    let a = start(
        r#"service "web" { argv = {"/bin/sh", "-c", "echo hello; echo '<3>oops' >&2; echo '<7>detail'; echo plain >&2; exec sleep 100"} }"#,
    )?;
    let lines = wait_lines(&a, &["web"], "plain", BOUND)?;
    let got: Vec<(LogStream, u8, String)> =
        lines.iter().map(|l| (l.stream, l.level, text(l))).collect();
    let mut want = vec![
        (LogStream::Stdout, 6, "hello".to_string()),
        (LogStream::Stderr, 3, "oops".to_string()),
        (LogStream::Stdout, 7, "detail".to_string()),
        (LogStream::Stderr, 6, "plain".to_string()),
    ];
    // Two pipes: the order between stdout and stderr is not kept, each stream's is.
    let mut sorted = got.clone();
    sorted.sort_by_key(|(s, _, t)| (*s == LogStream::Stderr, want.iter().position(|w| &w.2 == t)));
    want.sort_by_key(|(s, _, _)| *s == LogStream::Stderr);
    ensure_eq!(sorted, want, "all lines: {got:?}");
    ensure!(lines.iter().all(|l| !l.cut), "nothing was cut");

    let mut conn = a.conn()?;
    let errors: Vec<String> = logs(&mut conn, &["web", "err"])?.iter().map(text).collect();
    ensure_eq!(errors, ["oops"], "--level err");
    let info: Vec<String> = logs(&mut conn, &["web", "6"])?.iter().map(text).collect();
    ensure_eq!(info.len(), 3, "level 6 leaves out the debug line: {info:?}");
    ensure!(!info.contains(&"detail".to_string()), "{info:?}");
    ensure_eq!(
        logs(&mut conn, &["web", "", "1"])?.len(),
        1,
        "the newest one"
    );
    Ok(())
}

#[test]
fn lines_written_across_restarts_are_not_lost() -> Result {
    const N: u32 = 25;
    // Each run writes its number and exits at once: what it wrote is still in the pipe when
    // archon reaps it and starts the next.
    let a = start(&format!(
        r#"service "blink" {{
  argv = {{"/bin/sh", "-c", "n=$(cat @DIR@/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > @DIR@/n; echo run $n; [ $n -ge {N} ] && exec sleep 100; exit 1"}},
  backoff = {{initial = 0.001, max = 0.005}},
  flap = {{restarts = 1000, within = 1}},
}}"#
    ))?;
    let lines = wait_lines(&a, &["blink"], &format!("run {N}"), LONG_BOUND)?;
    let got: Vec<String> = lines.iter().map(text).collect();
    let want: Vec<String> = (1..=N).map(|n| format!("run {n}")).collect();
    ensure_eq!(got, want, "every run's line, in order");
    Ok(())
}

/// The pipe an fd of `pid` is (its `pipe:[inode]` link), if it is one.
fn pipe_of(pid: i32, fd: i32) -> Option<String> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_string_lossy().into_owned();
    link.starts_with("pipe:").then_some(link)
}

#[test]
fn archon_keeps_only_the_read_ends_and_sleeps_once_a_service_has_ended() -> Result {
    let a = start(
        r#"service "web" { argv = {"/bin/sh", "-c", "echo up; exec sleep 100"} }
service "once" { argv = {"/bin/sh", "-c", "echo done; echo bye >&2"}, restart = "never" }"#,
    )?;
    wait_lines(&a, &["web"], "up", BOUND)?;
    let web = a.wait_state("web", ServiceState::Ready)?;
    let pid = web.pid.context("web has no pid")?;
    let archon_fds: Vec<String> = fs::read_dir(format!("/proc/{}/fd", a.pid()))
        .context("archon's fds")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|fd| pipe_of(a.pid(), fd))
        .collect();
    for fd in [1, 2] {
        let pipe = pipe_of(pid, fd).context(format!("web's fd {fd} is not a pipe"))?;
        let held = archon_fds.iter().filter(|p| **p == pipe).count();
        ensure_eq!(held, 1, "archon's ends of web's fd {fd} ({pipe})");
    }
    // "once" has ended: its pipes have no writer left, and archon, which read their last
    // lines, is not woken again by their end of file.
    wait_lines(&a, &["once"], "bye", BOUND)?;
    let lines: Vec<String> = logs(&mut a.conn()?, &["once"])?.iter().map(text).collect();
    ensure!(lines.contains(&"done".to_string()), "{lines:?}");
    stays_asleep(a.pid(), "once a service's log pipes have no writer")?;
    Ok(())
}

#[test]
fn follow_gets_new_lines_live_at_its_level() -> Result {
    let a = start(
        r#"service "tick" { argv = {"/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; echo \"<3>bad $i\" >&2; sleep 0.05; done"} }"#,
    )?;
    wait_lines(&a, &["tick"], "bad 2", BOUND)?;
    let mut all = a.conn()?;
    ensure_eq!(all.request("FollowLogs,tick,,1")?, "Ok,tick");
    let mut errs = a.conn()?;
    ensure_eq!(errs.request("FollowLogs,tick,err")?, "Ok,tick");
    let mut last = 0;
    for _ in 0..6 {
        match errs.stream_item()? {
            (StreamItem::Log(l), _) => {
                ensure_eq!((l.stream, l.level), (LogStream::Stderr, 3), "{}", text(&l));
                let n: u32 = text(&l)
                    .strip_prefix("bad ")
                    .and_then(|n| n.parse().ok())
                    .context(format!("a bad line: {:?}", text(&l)))?;
                ensure!(n > last, "in order: {n} after {last}");
                last = n;
            }
            (_, line) => return fail(format!("expected a line, got {line:?}")),
        }
    }
    let mut streams = Vec::new();
    for _ in 0..6 {
        match all.stream_item()? {
            (StreamItem::Log(l), _) => streams.push(l.stream),
            (_, line) => return fail(format!("expected a line, got {line:?}")),
        }
    }
    ensure!(
        streams.contains(&LogStream::Stdout) && streams.contains(&LogStream::Stderr),
        "level 7 takes both streams: {streams:?}"
    );
    ensure_eq!(
        a.request("Ping")?,
        "Pong",
        "followers take no requests, others do"
    );
    Ok(())
}

/// Floods `size` bytes of 100-byte lines (99 and a line end) through a service with a 16 KiB ring, pinging archon
/// all along; returns how long the flood took through archon, and how many pings were
/// answered meanwhile.
fn flood(size: u64) -> Result<(std::time::Duration, u32, u64, Vec<LogLine>)> {
    let a = start(&format!(
        r#"service "flood" {{
  argv = {{"/bin/sh", "-c", "while [ ! -e @DIR@/go ]; do sleep 0.01; done; yes 012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678 | head -c {size}; echo last-line; exec sleep 100"}},
  log = {{ring = "16K"}},
}}"#
    ))?;
    a.wait_state("flood", archon_tests::archon_proto::ServiceState::Ready)?;
    let mut pinger = a.conn()?;
    let mut watcher = a.conn()?;
    let began = Instant::now();
    fs::write(a.config().dir().join("go"), "").context("create go")?;
    let mut pongs = 0;
    let mut peak = 0;
    let lines = loop {
        ensure_eq!(pinger.request("Ping")?, "Pong", "a ping during the flood");
        pongs += 1;
        peak = peak.max(vm_rss_kib(a.pid())?);
        let lines = logs(&mut watcher, &["flood"])?;
        if lines.last().is_some_and(|l| text(l) == "last-line") {
            break lines;
        }
        if began.elapsed() > LONG_BOUND * 4 {
            return fail(format!("the flood of {size} bytes did not get through"));
        }
    };
    Ok((began.elapsed(), pongs, peak, lines))
}

#[test]
fn a_flood_keeps_the_ring_bounded_and_archon_answering() -> Result {
    let (took, pongs, peak_kib, lines) = flood(10_000_000)?;
    eprintln!("10 MB flood: {took:?}, {pongs} pings answered, archon's peak VmRSS {peak_kib} KiB");
    let bytes: usize = lines.iter().map(|l| l.text.len() + 48).sum();
    ensure!(
        bytes <= 16 * 1024,
        "the ring holds {bytes} bytes, over its 16 KiB"
    );
    ensure!(
        lines.len() > 50,
        "the ring holds the newest lines: {}",
        lines.len()
    );
    ensure!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.text.starts_with(b"0123456789") && l.text.len() == 99),
        "whole flood lines"
    );
    ensure!(pongs > 1, "pings answered while it floods: {pongs}");
    ensure!(
        peak_kib < 64 * 1024,
        "archon's memory stays bounded: peak VmRSS {peak_kib} KiB"
    );
    Ok(())
}

#[test]
fn a_flood_of_100_mb_does_not_starve_the_loop() -> Result {
    let (took, pongs, peak_kib, _) = flood(100_000_000)?;
    let mbps = 100.0 / took.as_secs_f64();
    eprintln!(
        "100 MB flood: {took:?} ({mbps:.0} MB/s), {pongs} pings answered, archon's peak VmRSS \
         {peak_kib} KiB"
    );
    ensure!(pongs > 1, "pings answered while it floods: {pongs}");
    ensure!(
        peak_kib < 64 * 1024,
        "archon's memory stays bounded: peak VmRSS {peak_kib} KiB"
    );
    Ok(())
}

#[test]
fn a_log_file_is_rotated_and_keeps_its_files_in_order() -> Result {
    const N: u32 = 200;
    let a = start(&format!(
        r#"service "rot" {{
  argv = {{"/bin/sh", "-c", "i=1; while [ $i -le {N} ]; do echo line $i; i=$((i+1)); done; exec sleep 100"}},
  log = {{file = "@DIR@/current", max_size = 2000, keep = 3}},
}}"#
    ))?;
    let dir = a.config().dir().to_path_buf();
    let current = dir.join("current");
    wait_until("the last line in the file", LONG_BOUND, || {
        fs::read_to_string(&current).is_ok_and(|t| t.contains(&format!(" line {N}\n")))
    })?;
    let name = |n: u32| dir.join(format!("current.{n}"));
    ensure!(!name(4).exists(), "only 3 rotated files are kept");
    let mut numbers = Vec::new();
    for path in [name(3), name(2), name(1), current.clone()] {
        let body = fs::read_to_string(&path).context(format!("{}", path.display()))?;
        ensure!(
            body.len() <= 2000,
            "{} has {} bytes",
            path.display(),
            body.len()
        );
        for l in body.lines() {
            // `<time> stdout info line <n>`
            let fields: Vec<&str> = l.split(' ').collect();
            ensure_eq!(
                fields.get(1..4),
                Some(&["stdout", "info", "line"][..]),
                "{l:?}"
            );
            numbers.push(
                fields
                    .get(4)
                    .and_then(|n| n.parse::<u32>().ok())
                    .context(l.to_string())?,
            );
        }
    }
    ensure_eq!(numbers.last(), Some(&N), "the newest line is in current");
    let first = numbers.first().copied().unwrap_or_default();
    ensure!(first > 1, "the oldest files were removed");
    let want: Vec<u32> = (first..=N).collect();
    ensure_eq!(numbers, want, "every line kept, in order");
    Ok(())
}

#[test]
fn an_unwritable_log_directory_is_reported_and_the_lines_stay_in_memory() -> Result {
    let a = start(
        r#"service "lost" {
  argv = {"/bin/sh", "-c", "echo still here; exec sleep 100"},
  log = {file = "@DIR@/archon.lua/current"},
}"#,
    )?;
    wait_lines(&a, &["lost"], "still here", BOUND)?;
    let log = a.log_text();
    ensure!(
        log.contains("lost: cannot open the log file") && log.contains("stay in memory"),
        "archon's log: {log}"
    );
    ensure!(
        !Path::new(&a.config().file("archon.lua/current")).exists(),
        "no file under a file"
    );
    Ok(())
}

#[test]
fn bad_logs_arguments_get_an_error() -> Result {
    let a = start(r#"service "web" { argv = {"/bin/sleep", "100"} }"#)?;
    let mut conn = a.conn()?;
    for (request, reason) in [
        ("Logs", "missing name"),
        ("Logs,nope", "no such service: nope"),
        ("Logs,a/b", "bad name"),
        ("Logs,web,8", "bad level"),
        ("Logs,web,loud", "bad level"),
        ("Logs,web,err,x", "bad count"),
        ("Logs,web,err,65537", "bad count"),
        ("Logs,web,err,1,2", "too many fields for Logs"),
        ("FollowLogs", "missing name"),
        ("FollowLogs,nope", "no such service: nope"),
        ("FollowLogs,web,9", "bad level"),
    ] {
        let reply = conn.request(request)?;
        ensure!(
            error_reason(&reply)?.starts_with(reason),
            "{request} got {reply:?}, not {reason:?}"
        );
    }
    ensure_eq!(conn.request("Ping")?, "Pong", "the connection goes on");
    Ok(())
}

#[test]
fn archonctl_logs_prints_the_lines_at_a_level() -> Result {
    let a = start(
        r#"service "web" { argv = {"/bin/sh", "-c", "echo fine; echo '<3>broken' >&2; exec sleep 100"} }"#,
    )?;
    wait_lines(&a, &["web"], "broken", BOUND)?;
    wait_lines(&a, &["web"], "fine", BOUND)?;
    let out = output_within(
        Command::new(archonctl_bin()?)
            .env_remove("ARCHON_SOCKET")
            .arg("--socket")
            .arg(a.socket())
            .args(["logs", "web", "--level", "err", "--table"]),
        BOUND,
    )?;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure_eq!(out.status.code(), Some(0), "{shown:?}");
    let lines: Vec<&str> = shown.lines().collect();
    ensure_eq!(lines.len(), 1, "{shown:?}");
    ensure!(lines[0].ends_with(" stderr err broken"), "{shown:?}");
    let out = output_within(
        Command::new(archonctl_bin()?)
            .env_remove("ARCHON_SOCKET")
            .arg("--socket")
            .arg(a.socket())
            .args(["logs", "web", "-n", "1", "--csv"]),
        BOUND,
    )?;
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        csv.starts_with("Log,") && csv.lines().count() == 1,
        "CSV rows without their header: {csv:?}"
    );
    Ok(())
}

#[test]
fn short_of_open_files_later_services_run_without_log_pipes() -> Result {
    // Under an open files limit of 1400, 200 services cannot each have a pidfd and four log
    // fds with archon's reserve of 1024 left over: the first ones get log pipes, the rest run
    // with their output on archon's stderr, and every one of them runs.
    let mut lua = String::new();
    for i in 0..200 {
        lua.push_str(&format!(
            "service \"s{i}\" {{ argv = {{\"/bin/sh\", \"-c\", \"echo up; exec sleep 1000\"}} }}\n"
        ));
    }
    let cfg = ConfigFile::new()?;
    cfg.write(&lua)?;
    let a = cfg.start(Archon::builder().under(["prlimit", "--nofile=1400:1400", "--"], false))?;
    let rows = wait_for("200 services ready", LONG_BOUND, || {
        let rows = a.status().ok()?;
        (rows.len() == 200
            && rows
                .iter()
                .all(|r| r.state == archon_tests::archon_proto::ServiceState::Ready))
        .then_some(rows)
    })?;
    ensure_eq!(rows.len(), 200, "services");
    let mut conn = a.conn()?;
    let first = wait_for("s0's line", BOUND, || {
        logs(&mut conn, &["s0"]).ok().filter(|l| !l.is_empty())
    })?;
    ensure_eq!(text(&first[0]), "up", "s0 has log pipes");
    let last = logs(&mut conn, &["s199"])?;
    ensure!(last.is_empty(), "s199 has no log pipes: {last:?}");
    let log = fs::read_to_string(a.path("archon.log")).unwrap_or_default();
    ensure!(
        log.contains("no log pipes"),
        "archon says why some services have no log pipes"
    );
    Ok(())
}

#[test]
fn echo_logs_copies_service_lines_to_archons_stderr() -> Result {
    let lua = "service \"talker\" { argv = {\"/bin/sh\", \"-c\", \"echo hello; echo oops >&2; exec sleep 1000\"} }\n";
    for echo in [false, true] {
        let cfg = ConfigFile::new()?;
        cfg.write(lua)?;
        let builder = if echo {
            Archon::builder().arg("--echo-logs")
        } else {
            Archon::builder()
        };
        let a = cfg.start(builder)?;
        let mut conn = a.conn()?;
        wait_for("talker's two lines", BOUND, || {
            logs(&mut conn, &["talker"]).ok().filter(|l| l.len() == 2)
        })?;
        let stderr = wait_for("archon's log", BOUND, || {
            let log = fs::read_to_string(a.path("archon.log")).ok()?;
            (!echo || log.contains("talker[stderr]: oops")).then_some(log)
        })?;
        ensure_eq!(
            stderr.contains("talker[stdout]: hello"),
            echo,
            "with --echo-logs {echo}: {stderr}"
        );
        ensure!(
            !stderr.lines().any(|l| l == "hello"),
            "the service's output is captured, not on archon's stderr as it is: {stderr}"
        );
    }
    Ok(())
}
