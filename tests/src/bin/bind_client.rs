//! A service for the black-box tests that asks archon for its socket with the Rust client's
//! `Client::bind`, as a Rust daemon would instead of reading `LISTEN_FDS`.
//!
//! `bind_client tcp|udp|unix ADDRESS [PORT] OUT`: connects to `$ARCHON_BIND_SOCKET`, sends
//! `Bind` for the address, and writes one line to `OUT`: `ok <port>` (the port the socket it got
//! is bound to; 0 for a Unix socket), or `error <reason>`. With a TCP or Unix socket, it then
//! answers every connection with `served by <pid>` and closes it, until it is killed.
//!
//! Exits 2 on a usage error, 1 when `OUT` cannot be written or the socket cannot be used.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::ExitCode;

use archon_ctl::Client;
use archon_proto::{BindAddr, Transport};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, out) = match args.as_slice() {
        [t, ip, port, out] if t == "tcp" || t == "udp" => {
            let transport = if t == "tcp" {
                Transport::Tcp
            } else {
                Transport::Udp
            };
            match (ip.parse(), port.parse()) {
                (Ok(ip), Ok(port)) => (
                    BindAddr::Inet {
                        transport,
                        addr: SocketAddr::new(ip, port),
                    },
                    out,
                ),
                _ => return usage(),
            }
        }
        [t, path, out] if t == "unix" => (BindAddr::Unix(path.clone().into_bytes()), out),
        _ => return usage(),
    };
    let got = std::env::var_os("ARCHON_BIND_SOCKET")
        .ok_or_else(|| "no ARCHON_BIND_SOCKET".to_string())
        .and_then(|path| Client::connect_to(Path::new(&path)).map_err(|e| e.to_string()))
        .and_then(|mut client| client.bind(&addr).map_err(|e| e.to_string()));
    let fd: OwnedFd = match got {
        Ok(fd) => fd,
        Err(e) => return report(out, &format!("error {e}")),
    };
    match addr {
        BindAddr::Inet {
            transport: Transport::Tcp,
            ..
        } => {
            let listener = TcpListener::from(fd);
            let port = listener.local_addr().map_or(0, |a| a.port());
            if report(out, &format!("ok {port}")) != ExitCode::SUCCESS {
                return ExitCode::FAILURE;
            }
            for mut c in listener.incoming().flatten() {
                let _ = writeln!(c, "served by {}", std::process::id());
            }
            ExitCode::FAILURE
        }
        BindAddr::Unix(_) => {
            let listener = UnixListener::from(fd);
            if report(out, "ok 0") != ExitCode::SUCCESS {
                return ExitCode::FAILURE;
            }
            for mut c in listener.incoming().flatten() {
                let _ = writeln!(c, "served by {}", std::process::id());
            }
            ExitCode::FAILURE
        }
        BindAddr::Inet { .. } => {
            let socket = std::net::UdpSocket::from(fd);
            let port = socket.local_addr().map_or(0, |a| a.port());
            report(out, &format!("ok {port}"))
        }
    }
}

fn report(out: &str, line: &str) -> ExitCode {
    match std::fs::write(out, format!("{line}\n")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: bind_client tcp|udp IP PORT OUT | bind_client unix PATH OUT");
    ExitCode::from(2)
}
