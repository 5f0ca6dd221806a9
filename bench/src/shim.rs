//! What the bind shim (`libarchon_bind.so`) adds to a `bind()`: a loop of binds, each timed, in a
//! program of its own (this one, as `archon-bench bind-loop`), without the shim, with it and no
//! archon, with it and archon saying no, and with it in a service that archon gives its socket
//! to. Nothing here asserts anything about time.
//!
//! `archon-bench [--archon PATH] shim`; the shim is looked for beside archon.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::archon::{Archon, TempDir};
use crate::stats::{Summary, count};
use crate::table::{Row, render};

/// Binds timed in each case (after `WARMUP` untimed).
const BINDS: usize = 20_000;
const WARMUP: usize = 1_000;

/// How long the loop in a service may take before the bench gives up.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(120);

/// Pause between two looks for the service's result.
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// `bind-loop COUNT PORT OUT`: makes a TCP socket, binds it to 127.0.0.1:PORT and closes it,
/// `WARMUP + COUNT` times, and writes the nanoseconds of each of the last `COUNT` binds to OUT,
/// one per line. The `bind()` is the C library's, or the shim's when it is preloaded.
pub fn bind_loop(args: &[OsString]) -> Result<(), String> {
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let [n, port, out] = text.as_slice() else {
        return Err("usage: archon-bench bind-loop COUNT PORT OUT".to_string());
    };
    let n: usize = n.parse().map_err(|_| format!("bad count {n}"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        // SAFETY: socket takes integers and returns a new fd or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the fd is new and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let t = Instant::now();
        // SAFETY: addr is a valid sockaddr_in of the length given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let took = t.elapsed();
        if ret != 0 {
            return Err(format!("bind {port}: {}", std::io::Error::last_os_error()));
        }
        if i >= WARMUP {
            samples.push(took.as_nanos().to_string());
        }
    }
    std::fs::write(out, samples.join("\n") + "\n").map_err(|e| format!("{out}: {e}"))
}

/// Reads what `bind_loop` wrote.
fn samples(out: &Path) -> Result<Summary, String> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let samples: Vec<Duration> = text
        .lines()
        .filter_map(|l| l.parse().ok())
        .map(Duration::from_nanos)
        .collect();
    if samples.len() != BINDS {
        return Err(format!(
            "{}: {} samples, not {BINDS}",
            out.display(),
            samples.len()
        ));
    }
    Ok(Summary::of(samples))
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Runs the loop in a process of its own, with `env`.
fn run_loop(
    me: &Path,
    port: u16,
    out: &Path,
    env: &[(&str, &OsString)],
) -> Result<Summary, String> {
    let mut cmd = Command::new(me);
    cmd.arg("bind-loop")
        .arg(BINDS.to_string())
        .arg(port.to_string())
        .arg(out)
        .env_remove("LD_PRELOAD")
        .env_remove("ARCHON_BIND_SOCKET")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| format!("{}: {e}", me.display()))?;
    if !status.success() {
        return Err(format!("bind-loop exited with {status}"));
    }
    samples(out)
}

/// The bench: every case, one table.
pub fn run(archon_bin: &Path) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let shim = archon_bin.with_file_name("libarchon_bind.so");
    if !shim.is_file() {
        return Err(format!(
            "{} is missing: build it (bench/run does)",
            shim.display()
        ));
    }
    let shim_os = OsString::from(&shim);
    let dir = TempDir::new()?;
    let port = free_port()?;
    let out = |name: &str| dir.path().join(name);

    // Each case with the index of the case it is compared with: the same bind() without the
    // shim (a bind to port 0 has the kernel look for a free port, a cost of its own).
    let mut cases: Vec<(&str, Summary, usize)> = Vec::new();
    let shim_env = [("LD_PRELOAD", &shim_os)];
    cases.push((
        "bind() to a free port, no shim",
        run_loop(&me, port, &out("plain"), &[])?,
        0,
    ));
    cases.push((
        "… shim preloaded, no ARCHON_BIND_SOCKET",
        run_loop(&me, port, &out("no-archon"), &shim_env)?,
        0,
    ));
    cases.push((
        "bind() to port 0, no shim",
        run_loop(&me, 0, &out("port0-plain"), &[])?,
        2,
    ));
    let nowhere = OsString::from("/nonexistent");
    cases.push((
        "… shim preloaded, ARCHON_BIND_SOCKET set (port 0: nothing to ask)",
        run_loop(
            &me,
            0,
            &out("port0"),
            &[("LD_PRELOAD", &shim_os), ("ARCHON_BIND_SOCKET", &nowhere)],
        )?,
        2,
    ));

    // An archon with a service that runs the loop on its declared socket once started, after
    // the loop it refuses, so that the two do not share the CPUs.
    let config = dir.path().join("shim.lua");
    let result = out("service");
    std::fs::write(
        &config,
        format!(
            "service \"loop\" {{ argv = {{\"{me}\", \"bind-loop\", \"{BINDS}\", \"${{loop.port}}\", \
             \"{result}\"}}, sockets = {{{{tcp = \"127.0.0.1:0\"}}}}, bind_shim = \"{shim}\", \
             restart = \"never\", autostart = false }}\n",
            me = me.display(),
            result = result.display(),
            shim = shim.display()
        ),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let archon = Archon::start_with(
        archon_bin,
        &[OsString::from("--config"), config.into_os_string()],
        dir.path(),
        "shim",
    )?;
    let bind_socket = OsString::from(format!("{}.bind", dir.path().join("shim.sock").display()));
    cases.push((
        "… shim, archon says no (a process in no service), then the real bind()",
        run_loop(
            &me,
            port,
            &out("refused"),
            &[
                ("LD_PRELOAD", &shim_os),
                ("ARCHON_BIND_SOCKET", &bind_socket),
            ],
        )?,
        0,
    ));
    archon.connect()?.expect(b"Start,loop\n", b"Ok,loop")?;
    let deadline = Instant::now() + SERVICE_TIMEOUT;
    let served = loop {
        if let Ok(s) = samples(&result) {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the service's loop did not finish{}",
                archon.log_tail()
            ));
        }
        std::thread::sleep(POLL_PAUSE);
    };
    cases.push((
        "… shim, archon gives the service its socket (dup3)",
        served,
        0,
    ));
    archon.stop()?;

    let rows: Vec<Row> = cases
        .iter()
        .enumerate()
        .map(|(i, (what, s, base))| {
            let median = s.median.as_nanos() as f64;
            let result = if i == *base {
                format!("{:.2} µs per bind", median / 1e3)
            } else {
                let base = cases
                    .get(*base)
                    .map_or(0.0, |c| c.1.median.as_nanos() as f64);
                format!("{:+.2} µs per bind", (median - base) / 1e3)
            };
            Row::value(*what, result)
                .n(count(s.n as f64))
                .quantiles(
                    crate::stats::duration(s.median),
                    crate::stats::duration(s.p99),
                )
                .total(crate::stats::duration(s.total))
        })
        .collect();

    println!(
        "## the bind shim: {} binds per case, each timed (median, p99)\n",
        count(BINDS as f64)
    );
    print!("{}", render(&rows));
    Ok(())
}
