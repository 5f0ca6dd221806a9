//! The kernel's process events (the proc connector, `NETLINK_CONNECTOR` / `CN_IDX_PROC`, root
//! only): the kernel reports every `execve` on the machine as it happens, with the process id
//! and a `CLOCK_MONOTONIC` timestamp taken in the `execve` itself. The bench times "the new
//! `sleep` runs" by that timestamp instead of by polling `/proc`, so the figure has no polling
//! error and the bench burns no CPU while it waits (the machine may have few).
//!
//! A thread reads the socket into a queue; the bench takes events from the queue.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `CN_IDX_PROC` and `CN_VAL_PROC` (linux/connector.h).
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` and `PROC_CN_MCAST_IGNORE` (linux/cn_proc.h).
const MCAST_LISTEN: u32 = 1;
const MCAST_IGNORE: u32 = 2;
/// `PROC_EVENT_EXEC`.
const PROC_EVENT_EXEC: u32 = 2;
/// Sizes of `struct nlmsghdr` and `struct cn_msg`: a `struct proc_event` starts after both.
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
/// Offsets in `struct proc_event`: `what` (u32), `cpu` (u32), `timestamp_ns` (u64), then the
/// exec event's `process_pid` and `process_tgid`.
const EVENT_WHAT: usize = 0;
const EVENT_TIMESTAMP: usize = 8;
const EVENT_TGID: usize = 20;

/// The socket's receive buffer: a start of 10,000 services is some 40,000 events (fork, exec,
/// exit) in a burst, each taking about a KiB of buffer in the kernel.
const RECEIVE_BUFFER: libc::c_int = 128 << 20;
/// How often the reader thread looks whether it should stop.
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(100);
/// Events queued at most (a bound, far above what a run makes between two takes).
const QUEUE_MAX: usize = 1 << 20;

/// One `execve`: the process (thread group) id and when, in ns of `CLOCK_MONOTONIC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    pub at_ns: u64,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Exec>,
    /// Events lost: the socket's buffer overflowed (`ENOBUFS`), or the queue was full.
    lost: bool,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
}

/// A subscription to the kernel's exec events.
pub struct Execs {
    socket: Arc<OwnedFd>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl Execs {
    /// Subscribes (root only; `Err` says why when the kernel refuses or lacks the connector).
    pub fn subscribe() -> Result<Execs, String> {
        let socket = Arc::new(open_socket()?);
        send_op(&socket, MCAST_LISTEN)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            arrived: Condvar::new(),
        });
        let reader = {
            let socket = Arc::clone(&socket);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("exec-events".to_string())
                .spawn(move || read_events(&socket, &shared))
                .map_err(|e| format!("spawn the exec event reader: {e}"))?
        };
        Ok(Execs {
            socket,
            shared,
            reader: Some(reader),
        })
    }

    /// Every event queued so far, taken from the queue.
    pub fn take_all(&self) -> Vec<Exec> {
        self.shared
            .queue
            .lock()
            .map(|mut q| q.events.drain(..).collect())
            .unwrap_or_default()
    }

    /// The next event, waiting for it until `deadline`.
    pub fn next(&self, deadline: Instant) -> Option<Exec> {
        let mut queue = self.shared.queue.lock().ok()?;
        loop {
            if let Some(event) = queue.events.pop_front() {
                return Some(event);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            queue = self.shared.arrived.wait_timeout(queue, left).ok()?.0;
        }
    }

    /// Whether events were lost since the last call (and forgets it).
    pub fn lost(&self) -> bool {
        self.shared
            .queue
            .lock()
            .map(|mut q| std::mem::take(&mut q.lost))
            .unwrap_or(true)
    }
}

impl Drop for Execs {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.stop = true;
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = send_op(&self.socket, MCAST_IGNORE);
    }
}

fn open_socket() -> Result<OwnedFd, String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: socket takes integer arguments; a non-negative result is an fd we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_CONNECTOR,
        )
    };
    if fd < 0 {
        return Err(os("socket(AF_NETLINK, NETLINK_CONNECTOR)"));
    }
    // SAFETY: fd was just returned by socket and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = CN_IDX_PROC;
    // SAFETY: addr is a sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os("bind the proc connector"));
    }
    // Root may exceed rmem_max with SO_RCVBUFFORCE; else take what SO_RCVBUF gives.
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        if set_option(&socket, option, RECEIVE_BUFFER) {
            break;
        }
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: RECEIVE_TIMEOUT.as_micros() as libc::suseconds_t,
    };
    // SAFETY: timeout is a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os("setsockopt(SO_RCVTIMEO)"));
    }
    Ok(socket)
}

fn set_option(socket: &OwnedFd, option: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: value is a c_int of the size given.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Sends `op` (listen or ignore) to the proc connector.
fn send_op(socket: &OwnedFd, op: u32) -> Result<(), String> {
    let len = NLMSG_HDR + CN_MSG + 4;
    let mut msg = Vec::with_capacity(len);
    // struct nlmsghdr: len, type (NLMSG_DONE), flags, seq, pid.
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&std::process::id().to_ne_bytes());
    // struct cn_msg: id (idx, val), seq, ack, len, flags.
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&4u16.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&op.to_ne_bytes());
    // SAFETY: an all-zero sockaddr_nl addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msg and kernel are valid for the sizes given.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent == msg.len() as isize {
        Ok(())
    } else {
        Err(format!(
            "subscribe to the proc connector: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The reader thread: datagrams into the queue until told to stop.
fn read_events(socket: &OwnedFd, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if shared.queue.lock().map_or(true, |q| q.stop) {
            return;
        }
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let events = if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOBUFS) => {
                    if let Ok(mut q) = shared.queue.lock() {
                        q.lost = true;
                    }
                    continue;
                }
                // The receive timeout, or a signal: look at `stop` again.
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => return,
            }
        } else {
            parse(buf.get(..n as usize).unwrap_or_default())
        };
        if events.is_empty() {
            continue;
        }
        if let Ok(mut q) = shared.queue.lock() {
            for event in events {
                if q.events.len() < QUEUE_MAX {
                    q.events.push_back(event);
                } else {
                    q.lost = true;
                }
            }
            shared.arrived.notify_all();
        }
    }
}

/// The exec events in one datagram (netlink messages one after the other, each padded to 4).
fn parse(mut datagram: &[u8]) -> Vec<Exec> {
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let mut events = Vec::new();
    while let Some(len) = u32_at(datagram, 0) {
        let len = len as usize;
        let Some(msg) = datagram.get(..len).filter(|_| len >= NLMSG_HDR) else {
            break;
        };
        let event = NLMSG_HDR + CN_MSG;
        let timestamp = msg
            .get(event + EVENT_TIMESTAMP..event + EVENT_TIMESTAMP + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes);
        if u32_at(msg, event + EVENT_WHAT) == Some(PROC_EVENT_EXEC) {
            if let (Some(pid), Some(at_ns)) = (u32_at(msg, event + EVENT_TGID), timestamp) {
                events.push(Exec { pid, at_ns });
            }
        }
        datagram = datagram.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_event_is_read_from_its_datagram() {
        let mut msg = vec![0u8; NLMSG_HDR + CN_MSG + 40];
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());
        let event = NLMSG_HDR + CN_MSG;
        msg[event..event + 4].copy_from_slice(&PROC_EVENT_EXEC.to_ne_bytes());
        msg[event + 8..event + 16].copy_from_slice(&123_456_789u64.to_ne_bytes());
        msg[event + 16..event + 20].copy_from_slice(&41u32.to_ne_bytes());
        msg[event + 20..event + 24].copy_from_slice(&42u32.to_ne_bytes());
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        let exec = Exec {
            pid: 42,
            at_ns: 123_456_789,
        };
        assert_eq!(parse(&two), vec![exec, exec]);
        // A fork event is not an exec.
        msg[event..event + 4].copy_from_slice(&1u32.to_ne_bytes());
        assert!(parse(&msg).is_empty());
        assert!(parse(&msg[..10]).is_empty());
    }

    #[test]
    fn a_real_exec_is_seen_with_a_timestamp_after_the_spawn() -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        let execs = Execs::subscribe()?;
        let before = super::super::procs::monotonic_ns();
        let mut child = std::process::Command::new("/bin/true")
            .spawn()
            .map_err(|e| format!("spawn /bin/true: {e}"))?;
        let pid = child.id();
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = None;
        while let Some(event) = execs.next(deadline) {
            if event.pid == pid {
                seen = Some(event);
                break;
            }
        }
        let seen = seen.ok_or("no exec event for /bin/true")?;
        assert!(seen.at_ns > before);
        assert!(seen.at_ns < super::super::procs::monotonic_ns());
        Ok(())
    }
}
