//! A program for the black-box tests that binds in a tight loop, as a stress on the bind shim and
//! archon's bind socket: `bind_loop COUNT PORT OUT` makes a TCP socket, binds it to
//! 127.0.0.1:PORT with the C library's `bind()` (the shim's when it is preloaded) and closes it,
//! COUNT times, then writes `ok COUNT` to OUT, or `bind <i>: <error>` at the first failure.
//!
//! Exits 2 on a usage error, 1 when a bind fails or OUT cannot be written.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(n), Some(port), Some(out)) = (
        args.first().and_then(|a| a.parse::<usize>().ok()),
        args.get(1).and_then(|a| a.parse::<u16>().ok()),
        args.get(2),
    ) else {
        eprintln!("usage: bind_loop COUNT PORT OUT");
        return ExitCode::from(2);
    };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    let mut result = format!("ok {n}");
    for i in 0..n {
        // SAFETY: socket takes integers and returns a new fd or -1.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            result = format!("socket {i}: {}", std::io::Error::last_os_error());
            break;
        }
        // SAFETY: the fd is new and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: addr is a valid sockaddr_in of the length given.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            result = format!("bind {i}: {}", std::io::Error::last_os_error());
            break;
        }
    }
    let failed = !result.starts_with("ok");
    match std::fs::write(out, format!("{result}\n")) {
        Ok(()) if !failed => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
