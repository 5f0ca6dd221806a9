//! Sockets, named after archon.lua(5)'s SOCKETS and libarchon_bind(8): archon binds what a
//! service declares and passes it the systemd way (a Python program checks `LISTEN_PID`,
//! `LISTEN_FDS` and `LISTEN_FDNAMES` and serves on them), `${service.port}` references, the
//! `Bind` request on the wire and from the Rust client, the bind shim preloaded into programs
//! that bind their own port (`python3 -m http.server`, `redis-server`, `nginx` as www-data on a
//! privileged port) with restarts that refuse no connection, the shim refusing another
//! service's socket and falling back outside archon, and reloads that keep, bind and close.
//!
//! Every client here connects over loopback only. Programs that CI installs (curl, redis,
//! nginx) are looked for on PATH; a test whose program is missing says so and passes.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use archon_tests::archon_proto::{self, ServiceState};
use archon_tests::*;

/// The Python the tests run (Debian's; not a version manager's shim on PATH).
const PYTHON: &str = "/usr/bin/python3";

/// Connections the zero-downtime tests make, one after the other, while the service restarts.
const CONNECTIONS: usize = 500;

/// Restarts during those connections, spread evenly among them.
const RESTARTS: usize = 3;

/// Writes `lua` (with `@DIR@` replaced by the config's directory, `@SHIM@` by the shim's path
/// and `@PYTHON@` by [`PYTHON`]) and starts archon on it.
fn start(lua: &str) -> Result<Configured> {
    let cfg = ConfigFile::new()?;
    cfg.write(&fill(lua, cfg.dir())?)?;
    cfg.start(Archon::builder())
}

fn fill(lua: &str, dir: &Path) -> Result<String> {
    Ok(lua
        .replace("@DIR@", &dir.display().to_string())
        .replace("@SHIM@", &shim_path()?.display().to_string())
        .replace("@PYTHON@", PYTHON))
}

/// The value of setting `key` of service `name` in the `Config` dump.
fn setting(a: &Archon, name: &str, key: &str) -> Result<String> {
    let settings = a.conn()?.config()?;
    settings
        .iter()
        .find(|s| s.name == name.as_bytes() && s.key == key.as_bytes())
        .map(|s| String::from_utf8_lossy(&s.value).into_owned())
        .context(format!("no setting {key} of {name}"))
}

/// The port of the first `tcp = "host:port"` in service `name`'s `sockets` setting.
fn bound_port(a: &Archon, name: &str) -> Result<u16> {
    let sockets = setting(a, name, "sockets")?;
    let port = sockets
        .split("tcp = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .context(format!("a tcp address in {sockets}"))?;
    ensure!(port != 0, "port 0 is shown as it was bound: {sockets}");
    Ok(port)
}

/// The sockets (`socket:[inode]`) process `pid` has open.
fn sockets_of(pid: i32) -> Vec<String> {
    fd_targets(pid)
        .into_iter()
        .filter_map(|t| t.split_once(" -> ").map(|(_, target)| target.to_string()))
        .filter(|t| t.starts_with("socket:"))
        .collect()
}

/// Fails unless process `pid` has a socket open that archon holds too: the one it was given.
fn shares_archon_socket(a: &Archon, pid: i32) -> Result {
    let archon = sockets_of(a.pid());
    let its = sockets_of(pid);
    ensure!(
        its.iter().any(|s| archon.contains(s)),
        "process {pid} holds none of archon's sockets: {its:?}, archon's {archon:?}"
    );
    Ok(())
}

/// Whether `program` is on PATH.
fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One line from a TCP connection to the loopback port.
fn ask_tcp(port: u16, send: &[u8]) -> Result<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).context(format!("connect to {port}"))?;
    c.set_read_timeout(Some(BOUND)).context("timeout")?;
    c.write_all(send).context("send")?;
    let mut out = String::new();
    c.read_to_string(&mut out).context("read")?;
    Ok(out)
}

/// What a connection loop saw.
#[derive(Debug, Default)]
struct Counts {
    tried: usize,
    ok: usize,
    refused: usize,
    /// Connections that failed in another way (reset while the process that accepted them was
    /// killed): not a refusal, but counted and shown.
    other: usize,
    /// How each of those failed.
    others: Vec<String>,
}

/// Makes [`CONNECTIONS`] connections to the loopback port one after the other, each sending
/// `request` and expecting an answer that starts with `answer`; meanwhile restarts `service`
/// [`RESTARTS`] times, each once a share of the connections is done, and checks that its pid
/// changed each time. Returns the counts and prints them.
fn connect_through_restarts(
    a: &Archon,
    service: &str,
    port: u16,
    request: &'static [u8],
    answer: &'static [u8],
) -> Result<Counts> {
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let loop_done = done.clone();
    let loop_stop = stop.clone();
    let client = std::thread::spawn(move || {
        let mut counts = Counts::default();
        while counts.tried < CONNECTIONS && !loop_stop.load(Ordering::Relaxed) {
            counts.tried += 1;
            match one_exchange(port, request, answer) {
                Ok(true) => counts.ok += 1,
                Ok(false) => {
                    counts.other += 1;
                    counts.others.push("closed without an answer".to_string());
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => counts.refused += 1,
                Err(e) => {
                    counts.other += 1;
                    counts.others.push(e.to_string());
                }
            }
            loop_done.fetch_add(1, Ordering::Relaxed);
        }
        counts
    });
    let restarts = (|| -> Result {
        for i in 1..=RESTARTS {
            let at = CONNECTIONS * i / (RESTARTS + 1);
            wait_until("the connection loop to get on", LONG_BOUND, || {
                done.load(Ordering::Relaxed) >= at
            })?;
            let before = a.service(service)?.pid;
            let reply = a.request(&format!("Restart,{service}"))?;
            ensure_eq!(reply, format!("Ok,{service}"));
            let after = a.service(service)?.pid;
            ensure!(
                after.is_some() && after != before,
                "restart {i}: pid {before:?} then {after:?}"
            );
        }
        Ok(())
    })();
    if restarts.is_err() {
        stop.store(true, Ordering::Relaxed);
    }
    let counts = client
        .join()
        .map_err(|_| Fail::new("the connection loop panicked"))?;
    restarts?;
    eprintln!(
        "{service}: {} connections tried while restarting {RESTARTS} times: {} answered, {} \
         refused, {} failed otherwise {:?}",
        counts.tried, counts.ok, counts.refused, counts.other, counts.others
    );
    Ok(counts)
}

/// One connection: send `request`, read to the end, check the start of the answer.
fn one_exchange(port: u16, request: &[u8], answer: &[u8]) -> std::io::Result<bool> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(LONG_BOUND))?;
    c.write_all(request)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.starts_with(answer) && got.len() < answer.len() {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let _ = c.shutdown(Shutdown::Both);
    Ok(got.starts_with(answer))
}

// ---- LISTEN_FDS ----

/// A program that serves on the sockets archon passes, after checking what systemd's
/// `sd_listen_fds_with_names` checks: `LISTEN_PID` is its own pid, `LISTEN_FDS` counts the fds
/// from 3, `LISTEN_FDNAMES` names them. It writes `ok` (or what is wrong) to argv[2], then
/// answers each connection with its pid and the socket's name. argv[1] is `${echo.port}`.
const SERVE_PY: &str = r#"
import os, select, socket, sys
n = int(os.environ.get("LISTEN_FDS", "0"))
names = os.environ.get("LISTEN_FDNAMES", "").split(":")
problems = []
if os.environ.get("LISTEN_PID") != str(os.getpid()):
    problems.append("LISTEN_PID %r is not %d" % (os.environ.get("LISTEN_PID"), os.getpid()))
if n != 2 or names != ["main", "ctl"]:
    problems.append("LISTEN_FDS %d LISTEN_FDNAMES %r" % (n, names))
socks = [socket.socket(fileno=3 + i) for i in range(n)]
port = socks[0].getsockname()[1]
if sys.argv[1] != str(port):
    problems.append("argv[1] %s is not the port %d" % (sys.argv[1], port))
if os.environ.get("PORT", str(port)) != str(port):
    problems.append("PORT %s is not the port %d" % (os.environ.get("PORT"), port))
if socks[1].family != socket.AF_UNIX:
    problems.append("fd 4 is not the unix socket")
with open(sys.argv[2], "w") as f:
    f.write(("ok" if not problems else "; ".join(problems)) + "\n")
while True:
    ready, _, _ = select.select(socks, [], [])
    for s in ready:
        c, _ = s.accept()
        c.sendall(("%d %s\n" % (os.getpid(), names[socks.index(s)])).encode())
        c.close()
"#;

#[test]
fn listen_fds_reach_a_program_that_serves_on_them() -> Result {
    let cfg = ConfigFile::new()?;
    fs::write(cfg.dir().join("serve.py"), SERVE_PY).context("write serve.py")?;
    cfg.write(&fill(
        r#"
service "echo" { argv = {"@PYTHON@", "@DIR@/serve.py", "${echo.port}", "@DIR@/checked"},
                 env = {PORT = "${echo.main.port}"},
                 sockets = {{name = "main", tcp = "127.0.0.1:0"},
                            {name = "ctl", unix = "@DIR@/echo.sock", mode = "0660"}} }
task "tell" { argv = {"/bin/sh", "-c", "echo ${echo.port} ${echo.main.port} > @DIR@/port"} }
"#,
        cfg.dir(),
    )?)?;
    let a = cfg.start(Archon::builder())?;
    let pid = a
        .wait_state("echo", ServiceState::Ready)?
        .pid
        .context("echo's pid")?;
    ensure_eq!(wait_line_in(a.config().file("checked"))?, "ok");
    ensure!(
        environ(pid)?.contains(&format!("PORT={}", bound_port(&a, "echo")?)),
        "the port in the service's environment"
    );
    // Port 0 became a real port, shown in the dump and given to the other service.
    let port = bound_port(&a, "echo")?;
    ensure_eq!(
        wait_line_in(a.config().file("port"))?,
        format!("{port} {port}")
    );
    ensure_eq!(ask_tcp(port, b"")?, format!("{pid} main\n"));
    let path = a.config().dir().join("echo.sock");
    let mode = fs::metadata(&path).context("the unix socket")?.mode() & 0o777;
    ensure_eq!(mode, 0o660, "the unix socket's mode");
    let mut u = UnixStream::connect(&path).context("connect to echo.sock")?;
    let mut text = String::new();
    u.read_to_string(&mut text).context("read echo.sock")?;
    ensure_eq!(text, format!("{pid} ctl\n"));
    // The environment the other services get names the bind socket, and only the service
    // that has sockets gets LISTEN_*.
    let env = environ(pid)?;
    let bind = format!("ARCHON_BIND_SOCKET={}.bind", a.socket().display());
    ensure!(env.contains(&bind), "{bind} in {env:?}");
    Ok(())
}

#[test]
fn a_restart_keeps_the_socket_and_refuses_no_connection_listen_fds() -> Result {
    let cfg = ConfigFile::new()?;
    fs::write(cfg.dir().join("serve.py"), SERVE_PY).context("write serve.py")?;
    cfg.write(&fill(
        r#"
service "echo" { argv = {"@PYTHON@", "@DIR@/serve.py", "${echo.port}", "@DIR@/checked"},
                 sockets = {{name = "main", tcp = "127.0.0.1:0"},
                            {name = "ctl", unix = "@DIR@/echo.sock"}} }
"#,
        cfg.dir(),
    )?)?;
    let a = cfg.start(Archon::builder())?;
    a.wait_state("echo", ServiceState::Ready)?;
    let port = bound_port(&a, "echo")?;
    let counts = connect_through_restarts(&a, "echo", port, b"", b"")?;
    ensure_eq!(counts.refused, 0, "{counts:?}");
    ensure_eq!(
        bound_port(&a, "echo")?,
        port,
        "the same port after the restarts"
    );
    Ok(())
}

// ---- the Bind request ----

#[test]
fn bind_requests_on_the_wire() -> Result {
    let owner = free_port()?;
    let a = start(&format!(
        r#"service "owner" {{ argv = {{"/bin/sleep", "1000"}}, sockets = {{{{tcp = "127.0.0.1:{owner}"}}}} }}"#
    ))?;
    a.wait_state("owner", ServiceState::Ready)?;
    // The test is in no service: refused, on either socket.
    let me = std::process::id();
    let refused = format!("Error,process {me} is in no service");
    ensure_eq!(a.request(&format!("Bind,tcp,127.0.0.1,{owner}"))?, refused);
    let bind_socket = PathBuf::from(format!("{}.bind", a.socket().display()));
    // One request per connection on the bind socket.
    let ask = |line: &str| Conn::connect(&bind_socket)?.request(line);
    ensure_eq!(ask(&format!("Bind,tcp,127.0.0.1,{owner}"))?, refused);
    // The bind socket serves Bind alone, to anyone; bad fields are named.
    ensure_eq!(
        ask("Ping")?,
        format!("Error,only Bind is served on {}", bind_socket.display())
    );
    for (line, why) in [
        (
            "Bind,tcp,localhost,80",
            "bad address: an IPv4 or IPv6 address",
        ),
        ("Bind,tcp,127.0.0.1,0", "bad port: a number from 1 to 65535"),
        ("Bind,sctp,127.0.0.1,80", "bad transport: tcp, udp or unix"),
        ("Bind,unix", "missing path"),
    ] {
        ensure_eq!(error_reason(&ask(line)?)?, why, "{line}");
    }
    let mode = fs::metadata(&bind_socket)
        .context("the bind socket")?
        .mode()
        & 0o777;
    ensure_eq!(mode, 0o666, "anyone may connect to the bind socket");
    // Another user is served on the bind socket (and refused as the test is), once it can reach
    // it in archon's private temp dir.
    fs::set_permissions(a.dir(), fs::Permissions::from_mode(0o711)).context("chmod")?;
    let nobody = 65534;
    let mut as_nobody = Conn::from_stream(connect_as(nobody, nobody, &bind_socket)?)?;
    let reply = as_nobody.request(&format!("Bind,tcp,127.0.0.1,{owner}"))?;
    ensure!(reply.starts_with("Error,process "), "{reply}");
    Ok(())
}

#[test]
fn the_bind_socket_takes_one_request_and_cannot_crowd_out_archons_clients() -> Result {
    let a = Archon::start()?;
    let bind_socket = PathBuf::from(format!("{}.bind", a.socket().display()));
    // One request per connection: the reply, then the end.
    let mut c = Conn::connect(&bind_socket)?;
    c.send(b"Bind,tcp,127.0.0.1,1\nBind,tcp,127.0.0.1,2\n")?;
    let reply = c.reply_text()?;
    ensure!(reply.starts_with("Error,process "), "{reply}");
    c.expect_eof()?;
    // 64 connections held open fill the bind socket; the next is refused, and archon's own
    // socket still serves.
    let held: Vec<UnixStream> = (0..archon_proto::limits::MAX_BIND_CLIENTS)
        .map(|_| UnixStream::connect(&bind_socket).context("connect"))
        .collect::<Result<_>>()?;
    // Each is admitted in turn: a Ping on archon's socket answered means those before it were.
    ensure_eq!(a.request("Ping")?, "Pong");
    let mut extra = Conn::connect(&bind_socket)?;
    ensure_eq!(extra.reply_text()?, "Error,too many clients");
    ensure_eq!(a.request("Ping")?, "Pong");
    // A connection that sends nothing is closed after BIND_CONNECTION_MS.
    let mut idle = Conn::from_stream(held.into_iter().next().context("a held connection")?)?;
    idle.expect_eof()?;
    Ok(())
}

#[test]
fn the_rust_client_receives_its_socket_with_bind() -> Result {
    let client = bin("bind_client")?;
    let a = start(&format!(
        r#"
service "tcp" {{ argv = {{"{c}", "tcp", "127.0.0.1", "${{tcp.port}}", "@DIR@/tcp.out"}},
                sockets = {{{{tcp = "127.0.0.1:0"}}}} }}
service "unix" {{ argv = {{"{c}", "unix", "@DIR@/u.sock", "@DIR@/unix.out"}},
                 sockets = {{{{unix = "@DIR@/u.sock"}}}} }}
service "v6" {{ argv = {{"{c}", "udp", "::1", "${{v6.port}}", "@DIR@/v6.out"}},
               sockets = {{{{udp = "[::1]:0"}}}}, restart = "never" }}
service "stranger" {{ argv = {{"{c}", "tcp", "127.0.0.1", "${{tcp.port}}", "@DIR@/stranger.out"}},
                     restart = "never" }}
"#,
        c = client.display()
    ))?;
    let port = bound_port(&a, "tcp")?;
    ensure_eq!(
        wait_line_in(a.config().file("tcp.out"))?,
        format!("ok {port}")
    );
    let pid = a.service("tcp")?.pid.context("tcp's pid")?;
    ensure_eq!(ask_tcp(port, b"")?, format!("served by {pid}\n"));
    ensure_eq!(wait_line_in(a.config().file("unix.out"))?, "ok 0");
    let mut u = UnixStream::connect(a.config().dir().join("u.sock")).context("u.sock")?;
    let mut text = String::new();
    u.read_to_string(&mut text).context("read u.sock")?;
    ensure!(text.starts_with("served by "), "{text}");
    let v6 = wait_line_in(a.config().file("v6.out"))?;
    ensure!(v6.starts_with("ok ") && v6 != "ok 0", "{v6}");
    ensure_eq!(
        wait_line_in(a.config().file("stranger.out"))?,
        format!("error archon: stranger declares no socket at tcp 127.0.0.1:{port}")
    );
    Ok(())
}

// ---- the shim ----

/// Binds (with Python's socket module) each `host:port` of argv[2..] in turn, TCP, and writes
/// `bound <port>` or the errno's name for each to argv[1]; then sleeps.
const TRY_BIND_PY: &str = r#"
import errno, socket, sys, time
out = []
for spec in sys.argv[2:]:
    host, port = spec.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, int(port)))
        s.listen(5)
        out.append("bound %d" % s.getsockname()[1])
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
with open(sys.argv[1], "w") as f:
    f.write(", ".join(out) + "\n")
time.sleep(1000)
"#;

#[test]
fn the_shim_gives_a_service_its_own_socket_only() -> Result {
    let cfg = ConfigFile::new()?;
    fs::write(cfg.dir().join("try_bind.py"), TRY_BIND_PY).context("write try_bind.py")?;
    let free = free_port()?;
    cfg.write(&fill(
        &format!(
            r#"
service "owner" {{ argv = {{"@PYTHON@", "@DIR@/try_bind.py", "@DIR@/owner.out",
                           "127.0.0.1:${{owner.port}}", "127.0.0.1:0"}},
                  sockets = {{{{tcp = "127.0.0.1:0"}}}}, bind_shim = "@SHIM@" }}
service "thief" {{ argv = {{"@PYTHON@", "@DIR@/try_bind.py", "@DIR@/thief.out",
                           "127.0.0.1:${{owner.port}}", "127.0.0.1:{free}"}},
                  bind_shim = "@SHIM@", after = {{"owner"}} }}
"#
        ),
        cfg.dir(),
    )?)?;
    let a = cfg.start(Archon::builder())?;
    let port = bound_port(&a, "owner")?;
    // The owner gets archon's socket at its port, and binds port 0 as usual.
    let owner = wait_line_in(a.config().file("owner.out"))?;
    let (first, second) = owner.split_once(", ").context(owner.clone())?;
    ensure_eq!(first, format!("bound {port}"));
    ensure!(
        second.starts_with("bound ") && second != "bound 0",
        "{owner}"
    );
    // Another service asking for it is refused by archon: its real bind() finds the port in use
    // (archon holds it); a port nobody holds it binds as usual.
    ensure_eq!(
        wait_line_in(a.config().file("thief.out"))?,
        format!("EADDRINUSE, bound {free}")
    );
    let pid = a.service("owner")?.pid.context("owner's pid")?;
    let env = environ(pid)?;
    let preload = format!("LD_PRELOAD={}", shim_path()?.display());
    ensure!(env.contains(&preload), "{preload} in {env:?}");
    Ok(())
}

#[test]
fn outside_archon_the_shim_binds_as_usual() -> Result {
    let owner = free_port()?;
    let a = start(&format!(
        r#"service "owner" {{ argv = {{"/bin/sleep", "1000"}}, sockets = {{{{tcp = "127.0.0.1:{owner}"}}}} }}"#
    ))?;
    a.wait_state("owner", ServiceState::Ready)?;
    let dir = TempDir::new()?;
    let script = dir.join("try_bind.py");
    fs::write(&script, TRY_BIND_PY).context("write try_bind.py")?;
    let free = free_port()?;
    let bind_socket = format!("{}.bind", a.socket().display());
    // Without ARCHON_BIND_SOCKET the shim asks no one; with it, archon refuses a process that is
    // in no service, and the real bind() runs: the free port binds, archon's is in use.
    for (with_archon, want) in [
        (false, format!("bound {free}, EADDRINUSE")),
        (true, format!("bound {free}, EADDRINUSE")),
    ] {
        let out = dir.join(format!("out.{with_archon}"));
        let mut cmd = Command::new(PYTHON);
        cmd.arg(&script)
            .arg(&out)
            .arg(format!("127.0.0.1:{free}"))
            .arg(format!("127.0.0.1:{owner}"))
            .env("LD_PRELOAD", shim_path()?)
            .env_remove("ARCHON_BIND_SOCKET");
        if with_archon {
            cmd.env("ARCHON_BIND_SOCKET", &bind_socket);
        }
        let child = ChildGuard::spawn(&mut cmd)?;
        ensure_eq!(
            wait_line_in(&out)?,
            want,
            "with ARCHON_BIND_SOCKET: {with_archon}"
        );
        drop(child);
    }
    Ok(())
}

/// Binds each of the loops below makes.
const TIGHT_BINDS: usize = 3000;

#[test]
fn binds_in_tight_loops_are_all_served() -> Result {
    // Two services and a process in none bind as fast as they can, all through archon's bind
    // socket: every connection is served and closed, none is refused for too many clients.
    let lp = bin("bind_loop")?;
    let a = start(&format!(
        r#"
service "one" {{ argv = {{"{lp}", "{TIGHT_BINDS}", "${{one.port}}", "@DIR@/one.out"}},
                sockets = {{{{tcp = "127.0.0.1:0"}}}}, bind_shim = "@SHIM@", restart = "never" }}
service "two" {{ argv = {{"{lp}", "{TIGHT_BINDS}", "${{two.port}}", "@DIR@/two.out"}},
                sockets = {{{{tcp = "127.0.0.1:0"}}}}, bind_shim = "@SHIM@", restart = "never" }}
"#,
        lp = lp.display()
    ))?;
    let dir = TempDir::new()?;
    let out = dir.join("outside.out");
    let mut outside = Command::new(&lp);
    outside
        .arg(TIGHT_BINDS.to_string())
        .arg(free_port()?.to_string())
        .arg(&out)
        .env("LD_PRELOAD", shim_path()?)
        .env(
            "ARCHON_BIND_SOCKET",
            format!("{}.bind", a.socket().display()),
        );
    let child = ChildGuard::spawn(&mut outside)?;
    let want = format!("ok {TIGHT_BINDS}");
    ensure_eq!(wait_line_in(a.config().file("one.out"))?, want);
    ensure_eq!(wait_line_in(a.config().file("two.out"))?, want);
    ensure_eq!(wait_line_in(&out)?, want);
    drop(child);
    ensure!(
        !a.log_text().contains("clients already connected"),
        "archon refused clients: {}",
        a.log_text()
    );
    Ok(())
}

#[test]
fn http_server_through_the_shim_restarts_without_refusing() -> Result {
    let a = start(
        r#"
service "web" { argv = {"@PYTHON@", "-m", "http.server", "--bind", "127.0.0.1", "${web.port}"},
                cwd = "@DIR@", sockets = {{tcp = "127.0.0.1:0"}}, bind_shim = "@SHIM@",
                env = {PYTHONDONTWRITEBYTECODE = "1"} }
"#,
    )?;
    fs::write(a.config().dir().join("index.html"), "hello from archon\n").context("index")?;
    a.wait_state("web", ServiceState::Ready)?;
    let port = bound_port(&a, "web")?;
    wait_until("http.server to take archon's socket", LONG_BOUND, || {
        a.service("web")
            .ok()
            .and_then(|r| r.pid)
            .is_some_and(|pid| shares_archon_socket(&a, pid).is_ok())
    })?;
    if have("curl") {
        let out = output_within(
            Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{port}/index.html")]),
            LONG_BOUND,
        )?;
        ensure_eq!(String::from_utf8_lossy(&out.stdout), "hello from archon\n");
    } else {
        eprintln!("curl is not installed: the HTTP check uses the test's own client only");
    }
    let counts = connect_through_restarts(
        &a,
        "web",
        port,
        b"GET /index.html HTTP/1.0\r\n\r\n",
        b"HTTP/1.0 200",
    )?;
    ensure_eq!(counts.refused, 0, "{counts:?}");
    ensure!(counts.ok > CONNECTIONS / 2, "{counts:?}");
    Ok(())
}

#[test]
fn redis_through_the_shim_restarts_without_refusing() -> Result {
    if !have("redis-server") {
        eprintln!("redis-server is not installed: skipped");
        return Ok(());
    }
    let a = start(
        r#"
service "db" { argv = {"redis-server", "--port", "${db.port}", "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", "@DIR@",
                       "--protected-mode", "no", "--daemonize", "no"},
               sockets = {{tcp = "127.0.0.1:0"}}, bind_shim = "@SHIM@" }
"#,
    )?;
    a.wait_state("db", ServiceState::Ready)?;
    let port = bound_port(&a, "db")?;
    // redis answers once it has bound: wait for its first PONG.
    wait_until("redis to answer PING", LONG_BOUND, || {
        one_exchange(port, b"PING\r\n", b"+PONG").unwrap_or(false)
    })?;
    if have("redis-cli") {
        let out = output_within(
            Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"]),
            LONG_BOUND,
        )?;
        ensure_eq!(String::from_utf8_lossy(&out.stdout), "PONG\n");
    }
    let counts = connect_through_restarts(&a, "db", port, b"PING\r\n", b"+PONG")?;
    ensure_eq!(counts.refused, 0, "{counts:?}");
    ensure!(counts.ok > CONNECTIONS / 2, "{counts:?}");
    Ok(())
}

/// A privileged loopback port nobody listens on: 80 when free, else the first free one from
/// 81 down the list (the machine may run a web server of its own).
fn privileged_port() -> Result<u16> {
    for port in std::iter::once(80).chain(81..1024) {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    fail("no privileged loopback port is free")
}

#[test]
fn nginx_as_www_data_serves_on_a_privileged_port() -> Result {
    let nginx = "/usr/sbin/nginx";
    if !Path::new(nginx).exists() {
        eprintln!("nginx is not installed: skipped");
        return Ok(());
    }
    if nix::unistd::User::from_name("www-data")
        .ok()
        .flatten()
        .is_none()
    {
        eprintln!("there is no user www-data: skipped");
        return Ok(());
    }
    let port = privileged_port()?;
    if port != 80 {
        eprintln!("port 80 is taken on this machine: nginx listens on {port} instead");
    }
    eprintln!("nginx as www-data on 127.0.0.1:{port}");
    let cfg = ConfigFile::new()?;
    let dir = cfg.dir().to_path_buf();
    let root = dir.join("nginx");
    for sub in ["", "html", "tmp"] {
        fs::create_dir_all(root.join(sub)).context("nginx dirs")?;
    }
    fs::write(root.join("html/index.html"), "nginx via archon\n").context("index")?;
    let conf = format!(
        "worker_processes 1;\npid {r}/nginx.pid;\nerror_log stderr;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {r}/tmp/body;\n\
         proxy_temp_path {r}/tmp/proxy;\n fastcgi_temp_path {r}/tmp/fastcgi;\n\
         uwsgi_temp_path {r}/tmp/uwsgi;\n scgi_temp_path {r}/tmp/scgi;\n\
         server {{ listen 127.0.0.1:{port}; root {r}/html; }}\n}}\n",
        r = root.display()
    );
    fs::write(root.join("nginx.conf"), conf).context("nginx.conf")?;
    let www = nix::unistd::User::from_name("www-data")
        .ok()
        .flatten()
        .context("www-data")?;
    for entry in ["", "tmp", "html", "html/index.html", "nginx.conf"] {
        std::os::unix::fs::chown(
            root.join(entry),
            Some(www.uid.as_raw()),
            Some(www.gid.as_raw()),
        )
        .context("chown for www-data")?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).context("chmod the dir")?;
    cfg.write(&fill(
        &format!(
            r#"
service "nginx" {{ argv = {{"{nginx}", "-p", "@DIR@/nginx", "-c", "@DIR@/nginx/nginx.conf",
                           "-e", "stderr", "-g", "daemon off;"}},
                  user = "www-data", autostart = false,
                  sockets = {{{{tcp = "127.0.0.1:{port}"}}}}, bind_shim = "@SHIM@" }}
"#
        ),
        &dir,
    )?)?;
    let a = cfg.start(Archon::builder())?;
    // www-data must reach the bind socket in archon's (private) temp dir.
    fs::set_permissions(a.dir(), fs::Permissions::from_mode(0o711)).context("chmod")?;
    ensure_eq!(a.request("Start,nginx")?, "Ok,nginx");
    let pid = a.service("nginx")?.pid.context("nginx's pid")?;
    let uid = status_field(pid, "Uid")?;
    ensure!(
        uid.starts_with(&format!("{}\t", www.uid)),
        "nginx runs as www-data: {uid}"
    );
    let page = wait_for("nginx to answer", LONG_BOUND, || {
        ask_tcp(port, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200"))
    })?;
    ensure!(page.ends_with("nginx via archon\n"), "{page}");
    shares_archon_socket(&a, pid)?;
    if have("curl") {
        let out = output_within(
            Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{port}/")]),
            LONG_BOUND,
        )?;
        ensure_eq!(String::from_utf8_lossy(&out.stdout), "nginx via archon\n");
    }
    Ok(())
}

// ---- reload and errors ----

#[test]
fn a_reload_keeps_rebinds_and_closes() -> Result {
    let cfg = ConfigFile::new()?;
    let d = cfg.dir().display().to_string();
    cfg.write(&format!(
        r#"
service "a" {{ argv = {{"/bin/sleep", "1000"}}, sockets = {{{{name = "keep", tcp = "127.0.0.1:0"}}}} }}
service "b" {{ argv = {{"/bin/sleep", "1000"}}, sockets = {{{{unix = "{d}/b.sock"}}}} }}
"#
    ))?;
    let a = cfg.start(Archon::builder())?;
    a.wait_state("a", ServiceState::Ready)?;
    let port = bound_port(&a, "a")?;
    // A connection nobody accepts waits in the backlog: it would be reset if the socket closed.
    let mut queued = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let b_sock = a.config().dir().join("b.sock");
    ensure!(b_sock.exists(), "b's socket file");
    a.config().write(
        r#"
service "a" { argv = {"/bin/sleep", "1000"},
              sockets = {{name = "keep", tcp = "127.0.0.1:0", backlog = 16},
                         {name = "new", tcp = "127.0.0.1:0"}} }
"#,
    )?;
    ensure_eq!(a.request("Reload")?, "Ok,0,1,1,0");
    ensure_eq!(bound_port(&a, "a")?, port, "the kept socket keeps its port");
    queued.set_nonblocking(true).context("nonblocking")?;
    queued
        .write_all(b"x")
        .context("the queued connection lives on")?;
    let mut byte = [0u8; 1];
    match queued.read(&mut byte) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => return fail(format!("the queued connection was closed: {other:?}")),
    }
    ensure!(!b_sock.exists(), "the removed socket's file is gone");
    let sockets = setting(&a, "a", "sockets")?;
    let new_port: u16 = sockets
        .split("tcp = \"")
        .nth(2)
        .and_then(|r| r.split('"').next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .context(sockets.clone())?;
    TcpStream::connect(("127.0.0.1", new_port)).context("the new socket listens")?;
    // A port in use refuses the whole file, and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
    let taken_port = taken.local_addr().context("addr")?.port();
    a.config().write(&format!(
        r#"
service "a" {{ argv = {{"/bin/sleep", "1000"}}, sockets = {{{{name = "keep", tcp = "127.0.0.1:0"}}}} }}
service "c" {{ argv = {{"/bin/sleep", "1000"}}, sockets = {{{{tcp = "127.0.0.1:{taken_port}"}}}} }}
"#
    ))?;
    let path = a.config().path().display().to_string();
    ensure_eq!(
        a.request("Reload")?,
        format!(
            "Error,{path}:3: c: sockets[1]: cannot bind tcp 127.0.0.1:{taken_port}: Address already in use"
        )
    );
    ensure_eq!(setting(&a, "a", "sockets")?, sockets, "nothing changed");
    ensure!(a.try_service("c")?.is_none(), "c was not added");
    Ok(())
}

#[test]
fn a_socket_that_cannot_be_bound_stops_archon_at_start() -> Result {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
    let port = taken.local_addr().context("addr")?.port();
    let cfg = ConfigFile::with(&format!(
        "\nservice \"web\" {{ argv = {{\"/bin/sleep\", \"1000\"}}, sockets = {{{{tcp = \"127.0.0.1:{port}\"}}}} }}\n"
    ))?;
    let path = cfg.path().display().to_string();
    let mut a = cfg.start(Archon::builder().no_wait())?;
    let status = a.wait_exit(LONG_BOUND)?;
    ensure_eq!(status.code(), Some(EXIT_CONFIG), "{}", a.log_text());
    let want = format!(
        "{path}:2: web: sockets[1]: cannot bind tcp 127.0.0.1:{port}: Address already in use"
    );
    ensure!(a.log_text().contains(&want), "{want} in {}", a.log_text());
    Ok(())
}

#[test]
fn an_unknown_reference_is_a_load_error_with_its_line() -> Result {
    let cfg = ConfigFile::with(
        "service \"db\" { argv = {\"/bin/sleep\", \"1000\"}, sockets = {{tcp = \"127.0.0.1:0\"}} }\n\
         service \"web\" { argv = {\"/bin/echo\", \"--db=${dbb.port}\"} }\n",
    )?;
    let out = output_within(
        Command::new(archon_bin()?).arg("--check").arg(cfg.path()),
        LONG_BOUND,
    )?;
    ensure_eq!(out.status.code(), Some(EXIT_CONFIG));
    ensure_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "archon: {}:2: web: argv[2]: ${{dbb.port}}: no service is named dbb\n",
            cfg.path().display()
        )
    );
    Ok(())
}
