//! On-demand services, named after archon.lua(5)'s `on_demand` and SOCKETS: archon holds the
//! sockets of a service that is down and starts it at the first connection or datagram, which
//! waits for it in the socket; after the service exits the next one starts it again. A failing
//! service backs off and fails without archon spinning on the connection that keeps waiting
//! (counted in context switches, as the idle tests do). Also: Unix datagram sockets and abstract
//! names, the ports archon picked in `Status`, and `${db.port}` in a `tcp` health check.
//!
//! Every client here connects over loopback or to sockets in the test's own directory.

use std::fs;
use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixStream};
use std::path::Path;

use archon_tests::archon_proto::{Health, ServiceRow, ServiceState};
use archon_tests::*;

/// The Python the tests run (Debian's; not a version manager's shim on PATH).
const PYTHON: &str = "/usr/bin/python3";

/// A server started by its sockets: it takes the one connection or datagram waiting on any of
/// the sockets archon passed (`LISTEN_FDS`, named by `LISTEN_FDNAMES`), answers a connection with
/// its pid and the socket's name, writes a datagram as `<pid> <name> <text>` to argv[1], and
/// exits 0: the next one starts it again.
const ONCE_PY: &str = r#"
import os, select, socket, sys
n = int(os.environ["LISTEN_FDS"])
assert os.environ["LISTEN_PID"] == str(os.getpid())
names = os.environ["LISTEN_FDNAMES"].split(":")
socks = [socket.socket(fileno=3 + i) for i in range(n)]
ready, _, _ = select.select(socks, [], [])
s = ready[0]
name = names[socks.index(s)]
if s.type == socket.SOCK_STREAM:
    c, _ = s.accept()
    c.sendall(("%d %s\n" % (os.getpid(), name)).encode())
    c.close()
else:
    data = s.recv(1024)
    with open(sys.argv[1], "a") as f:
        f.write("%d %s %s\n" % (os.getpid(), name, data.decode()))
"#;

/// Writes `lua` (with `@DIR@` replaced by the config's directory and `@PYTHON@` by [`PYTHON`])
/// and `once.py` beside it, and starts archon on it.
fn start(lua: &str) -> Result<Configured> {
    let cfg = ConfigFile::new()?;
    fs::write(cfg.dir().join("once.py"), ONCE_PY).context("write once.py")?;
    cfg.write(
        &lua.replace("@DIR@", &cfg.dir().display().to_string())
            .replace("@PYTHON@", PYTHON),
    )?;
    cfg.start(Archon::builder())
}

/// The line a stream socket answers with.
fn read_answer(mut s: impl Read) -> Result<String> {
    let mut out = String::new();
    s.read_to_string(&mut out).context("read the answer")?;
    Ok(out)
}

/// The address of the first socket of `row` whose Status entry starts with `transport:`.
fn listed(row: &ServiceRow, transport: &str) -> Result<String> {
    let sockets = String::from_utf8_lossy(&row.sockets).into_owned();
    sockets
        .split(' ')
        .find_map(|s| s.strip_prefix(&format!("{transport}:")))
        .map(str::to_string)
        .context(format!("a {transport} socket in {sockets:?}"))
}

/// The port of a `tcp:` or `udp:` entry of `row`'s sockets.
fn listed_port(row: &ServiceRow, transport: &str) -> Result<u16> {
    let addr = listed(row, transport)?;
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context(format!("a port in {addr}"))?;
    ensure!(port != 0, "port 0 is shown as it was bound: {addr}");
    Ok(port)
}

/// Waits until `name` has gone back to waiting for a connection after a run (stopped, with a
/// last exit), and returns its row.
fn wait_waiting(a: &Archon, name: &str) -> Result<ServiceRow> {
    a.wait_service(name, "stopped after a run", LONG_BOUND, |r| {
        r.state == ServiceState::Stopped && r.last.is_some() && r.pid.is_none()
    })
}

#[test]
fn a_connection_starts_an_on_demand_service_and_the_next_one_starts_it_again() -> Result {
    let abstract_name = format!("archon-test-activation-{}", std::process::id());
    let a = start(&format!(
        r#"
service "echo" {{ argv = {{"@PYTHON@", "@DIR@/once.py", "@DIR@/got"}}, on_demand = true,
                 flap = {{restarts = 100, within = 1}},
                 sockets = {{{{name = "main", tcp = "127.0.0.1:0"}},
                            {{name = "ctl", unix = "@DIR@/echo.sock", mode = "0660"}},
                            {{name = "at", unix = "@{abstract_name}"}}}} }}
service "web" {{ argv = {{"/bin/sleep", "100"}}, requires = {{"echo"}} }}
"#
    ))?;
    // What requires an on-demand service starts without it: its sockets stand in for it.
    a.wait_state("web", ServiceState::Ready)?;
    let row = a.service("echo")?;
    ensure_eq!(row.state, ServiceState::Stopped, "{}", show_row(&row));
    ensure_eq!(row.pid, None);
    ensure_eq!(reason(&row), "waiting for a connection on its sockets");
    // Status lists the sockets, port 0 as the port archon got.
    let port = listed_port(&row, "tcp")?;
    let path = a.config().dir().join("echo.sock");
    ensure_eq!(listed(&row, "unix")?, path.display().to_string());
    ensure!(
        String::from_utf8_lossy(&row.sockets).contains(&format!("unix:@{abstract_name}")),
        "the abstract socket in {}",
        show_row(&row)
    );
    let mode = fs::metadata(&path)
        .context("echo.sock")?
        .permissions()
        .mode()
        & 0o777;
    ensure_eq!(mode, 0o660, "the unix socket's mode");

    // A TCP connection starts it; the service takes the connection that started it.
    let answer = read_answer(TcpStream::connect(("127.0.0.1", port)).context("connect")?)?;
    let (first, socket) = answer
        .trim_end()
        .split_once(' ')
        .context(format!("an answer: {answer:?}"))?;
    ensure_eq!(socket, "main");
    // It exits: archon watches its sockets again, and a connection on the Unix socket starts
    // a new process.
    let row = wait_waiting(&a, "echo")?;
    ensure_eq!(reason(&row), "waiting for a connection on its sockets");
    let answer = read_answer(UnixStream::connect(&path).context("connect echo.sock")?)?;
    let (second, socket) = answer
        .trim_end()
        .split_once(' ')
        .context(format!("an answer: {answer:?}"))?;
    ensure_eq!(socket, "ctl");
    ensure!(first != second, "a new process: {first} then {second}");
    wait_waiting(&a, "echo")?;
    let addr = UnixAddr::from_abstract_name(abstract_name.as_bytes()).context("address")?;
    let answer =
        read_answer(UnixStream::connect_addr(&addr).context("connect to the abstract name")?)?;
    ensure!(
        answer.ends_with(" at\n"),
        "the abstract socket's answer {answer:?}"
    );
    // Starting the service by hand starts it at once; it is then not waiting.
    wait_waiting(&a, "echo")?;
    ensure_eq!(a.request("Start,echo")?, "Ok,echo");
    let row = a.service("echo")?;
    ensure!(row.pid.is_some(), "started by hand: {}", show_row(&row));
    // The events say why it started.
    let history = a.request("History")?;
    ensure!(
        history.contains("a connection on its sockets"),
        "the start's reason in the history: {history}"
    );
    Ok(())
}

#[test]
fn a_datagram_starts_a_datagram_service() -> Result {
    let abstract_name = format!("archon-test-dgram-{}", std::process::id());
    let a = start(&format!(
        r#"
service "log" {{ argv = {{"@PYTHON@", "@DIR@/once.py", "@DIR@/got"}}, on_demand = true,
                flap = {{restarts = 100, within = 1}},
                sockets = {{{{name = "udp", udp = "127.0.0.1:0"}},
                           {{name = "path", unixgram = "@DIR@/log.sock", mode = "0620"}},
                           {{name = "at", unixgram = "@{abstract_name}"}}}} }}
"#
    ))?;
    let row = a.service("log")?;
    ensure_eq!(row.state, ServiceState::Stopped, "{}", show_row(&row));
    let port = listed_port(&row, "udp")?;
    let path = a.config().dir().join("log.sock");
    ensure_eq!(listed(&row, "unixgram")?, path.display().to_string());
    let mode = fs::metadata(&path)
        .context("log.sock")?
        .permissions()
        .mode()
        & 0o777;
    ensure_eq!(mode, 0o620, "the datagram socket's mode");
    let got = a.config().dir().join("got");

    let udp = UdpSocket::bind("127.0.0.1:0").context("bind udp")?;
    udp.send_to(b"one", ("127.0.0.1", port)).context("send")?;
    let line = wait_lines(&got, 1)?;
    ensure!(line.ends_with(" udp one"), "{line:?}");
    wait_waiting(&a, "log")?;

    UnixDatagram::unbound()?
        .send_to(b"two", &path)
        .context("send to log.sock")?;
    let line = wait_lines(&got, 2)?;
    ensure!(line.ends_with(" path two"), "{line:?}");
    wait_waiting(&a, "log")?;

    let addr = UnixAddr::from_abstract_name(abstract_name.as_bytes()).context("address")?;
    UnixDatagram::unbound()?
        .send_to_addr(b"three", &addr)
        .context("send to the abstract name")?;
    let line = wait_lines(&got, 3)?;
    ensure!(line.ends_with(" at three"), "{line:?}");
    Ok(())
}

/// Waits until the file at `path` has `n` lines and returns the last.
fn wait_lines(path: &Path, n: usize) -> Result<String> {
    wait_for(format!("{n} lines in {}", path.display()), BOUND, || {
        let text = fs::read_to_string(path).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        (lines.len() >= n && text.ends_with('\n')).then(|| lines[n - 1].to_string())
    })
}

#[test]
fn a_failing_on_demand_service_backs_off_without_archon_spinning() -> Result {
    let a = start(
        r#"
service "broken" { argv = {"/bin/sh", "-c", "exit 3"}, on_demand = true,
                   backoff = {initial = 30, max = 30},
                   sockets = {{tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let port = listed_port(&a.service("broken")?, "tcp")?;
    // The connection waits in the backlog: nobody ever takes it.
    let _client = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    // It fails, is restarted at once, fails again, and backs off for 30 s.
    let row = a.wait_state("broken", ServiceState::Backoff)?;
    ensure_eq!(row.restarts, 2, "{}", show_row(&row));
    stays_asleep(
        a.pid(),
        "while the service backs off and a connection waits",
    )?;
    ensure_eq!(a.service("broken")?.state, ServiceState::Backoff);
    Ok(())
}

#[test]
fn a_service_that_never_takes_its_connection_is_failed_by_its_flap_limit() -> Result {
    let a = start(
        r#"
service "lazy" { argv = {"/bin/true"}, on_demand = true,
                 flap = {restarts = 3, within = 60},
                 sockets = {{tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let port = listed_port(&a.service("lazy")?, "tcp")?;
    // Each start leaves the connection where it was, which wakes archon again at once: the
    // flap limit ends it.
    let _client = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
    let row = a.wait_state("lazy", ServiceState::Failed)?;
    ensure_eq!(
        reason(&row),
        "started by its sockets more than 3 times within 60s"
    );
    // Failed, it is no longer watched, though the connection still waits.
    stays_asleep(a.pid(), "once the service has failed")?;
    ensure_eq!(a.service("lazy")?.state, ServiceState::Failed);
    Ok(())
}

#[test]
fn a_tcp_health_check_may_name_another_services_port() -> Result {
    let a = start(
        r#"
service "db" { argv = {"/bin/sleep", "100"}, sockets = {{tcp = "127.0.0.1:0"}} }
service "web" { argv = {"/bin/sleep", "100"},
                health = {tcp = "127.0.0.1:${db.port}", interval = 0.1, timeout = 1} }
"#,
    )?;
    // db's socket listens (archon holds it), so the check connects once it has the right port.
    a.wait_service("web", "healthy", LONG_BOUND, |r| {
        r.health == Some(Health::Healthy)
    })?;
    let config = a.request("Config")?;
    ensure!(
        config.contains("tcp = \"\"127.0.0.1:${db.port}\"\""),
        "health.tcp as written in the dump: {config}"
    );
    Ok(())
}

#[test]
fn a_reload_watches_the_sockets_it_declares_now() -> Result {
    let a = start(
        r#"
service "echo" { argv = {"@PYTHON@", "@DIR@/once.py", "@DIR@/got"}, on_demand = true,
                 sockets = {{name = "old", tcp = "127.0.0.1:0"}} }
"#,
    )?;
    let old = listed_port(&a.service("echo")?, "tcp")?;
    // While echo waits, its socket changes (another name on port 0 is another socket), and a
    // new on-demand service comes.
    a.config().write(
        &r#"
service "echo" { argv = {"@PYTHON@", "@DIR@/once.py", "@DIR@/got"}, on_demand = true,
                 sockets = {{name = "new", tcp = "127.0.0.1:0"}} }
service "more" { argv = {"@PYTHON@", "@DIR@/once.py", "@DIR@/got"}, on_demand = true,
                 sockets = {{unix = "@DIR@/more.sock"}} }
"#
        .replace("@DIR@", &a.config().dir().display().to_string())
        .replace("@PYTHON@", PYTHON),
    )?;
    ensure_eq!(a.request("Reload")?, "Ok,1,0,1,0");
    let row = a.service("echo")?;
    ensure_eq!(row.state, ServiceState::Stopped, "{}", show_row(&row));
    let new = listed_port(&row, "tcp")?;
    ensure!(new != old, "a new socket: {old} then {new}");
    ensure!(
        TcpStream::connect(("127.0.0.1", old)).is_err(),
        "the old socket is closed"
    );
    let answer = read_answer(TcpStream::connect(("127.0.0.1", new)).context("connect")?)?;
    ensure!(answer.ends_with(" new\n"), "echo's answer {answer:?}");
    let more = a.config().dir().join("more.sock");
    let answer = read_answer(UnixStream::connect(&more).context("connect more.sock")?)?;
    ensure!(answer.ends_with(" more\n"), "more's answer {answer:?}");
    Ok(())
}

/// Status's sockets field is one entry per socket, separated by spaces, whatever the addresses
/// hold: a space, a backslash or a control character (a newline) is written `\xHH`.
#[test]
fn status_sockets_escape_spaces_and_control_characters() -> Result {
    let a = start(
        r#"
service "odd" { argv = {"@PYTHON@", "@DIR@/once.py", "@DIR@/got"}, on_demand = true,
                sockets = {{name = "a", unix = "@DIR@/with space,comma.sock"},
                           {name = "b", unixgram = "@archon test\nline\\x"}} }
"#,
    )?;
    let row = a.service("odd")?;
    let dir = a.config().dir().display().to_string();
    ensure_eq!(
        String::from_utf8_lossy(&row.sockets),
        format!("unix:{dir}/with\\x20space,comma.sock unixgram:@archon\\x20test\\x0aline\\x5cx")
    );
    ensure!(
        fs::metadata(format!("{dir}/with space,comma.sock")).is_ok(),
        "the socket is bound at its path as declared"
    );
    Ok(())
}
