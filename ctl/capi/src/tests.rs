//! The exported functions called as C would call them, against a fake archon on a socketpair:
//! what goes on the wire, what comes back in the out-parameters, the codes and messages of
//! failures. The real archon is driven by the C programs of the black-box tests.

use super::*;
use archon_proto::limits::MAX_FDS_PER_REQUEST;
use std::ffi::CStr;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};

/// Fail instead of hang: no read in these tests waits longer than this for a byte (a guard,
/// not a timing assertion).
const GUARD: std::time::Duration = std::time::Duration::from_secs(20);

/// A handle on one end of a socketpair, and the other end.
fn pair() -> (*mut Archon, UnixStream) {
    let Ok((ours, theirs)) = UnixStream::pair() else {
        unreachable!("socketpair")
    };
    for end in [&ours, &theirs] {
        if let Err(e) = end.set_read_timeout(Some(GUARD)) {
            unreachable!("SO_RCVTIMEO: {e}");
        }
    }
    let handle = Box::into_raw(Box::new(Archon::new(Client::from_stream(ours))));
    (handle, theirs)
}

/// A fake archon: for each (line, reply), reads one line, checks it, writes the reply.
fn serve(
    sock: UnixStream,
    script: Vec<(&'static str, &'static str)>,
) -> JoinHandle<Result<(), String>> {
    thread::spawn(move || {
        let mut reader = BufReader::new(sock.try_clone().map_err(|e| e.to_string())?);
        let mut sock = sock;
        for (want, reply) in script {
            let mut line = Vec::new();
            reader
                .read_until(b'\n', &mut line)
                .map_err(|e| e.to_string())?;
            if line != want.as_bytes() {
                return Err(format!(
                    "got {:?}, want {want:?}",
                    String::from_utf8_lossy(&line)
                ));
            }
            sock.write_all(reply.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

fn join(server: JoinHandle<Result<(), String>>) {
    match server.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => unreachable!("fake archon: {e}"),
        Err(_) => unreachable!("fake archon panicked"),
    }
}

/// The thread's last error message, read through the C call.
fn message() -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: buf holds 512 bytes.
    let n = unsafe { archon_last_error(buf.as_mut_ptr(), buf.len()) };
    assert!(n < buf.len(), "message of {n} bytes");
    // SAFETY: archon_last_error NUL-terminated it.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A C string's text.
fn text(buf: &[c_char]) -> String {
    // SAFETY: the callers' buffers were NUL-terminated by libarchon.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn null_handles_are_invalid_arguments() {
    let argv = [c"true".as_ptr(), ptr::null()];
    let mut buf = [0 as c_char; 16];
    // SAFETY: every pointer is NULL or valid; a NULL handle is what is tested.
    let codes = unsafe {
        [
            archon_ping(ptr::null_mut()),
            archon_set_timeout(ptr::null_mut(), 5),
            archon_request(
                ptr::null_mut(),
                c"Ping".as_ptr(),
                ptr::null(),
                0,
                buf.as_mut_ptr(),
                16,
                ptr::null_mut(),
            ),
            archon_last_reply(ptr::null(), buf.as_mut_ptr(), 16, ptr::null_mut()),
            archon_run(
                ptr::null_mut(),
                argv.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
                ptr::null_mut(),
            ),
            archon_start_daemon(
                ptr::null_mut(),
                argv.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
                ptr::null_mut(),
                ptr::null_mut(),
            ),
            archon_monitor_fd(ptr::null_mut(), 0, ptr::null_mut(), ptr::null_mut()),
            archon_monitor(ptr::null_mut(), 1, ptr::null_mut()),
            archon_stop(ptr::null_mut(), 1, -1, ptr::null_mut()),
            archon_on_exit(ptr::null_mut(), 1, argv.as_ptr(), ptr::null()),
            archon_status(ptr::null_mut(), ptr::null(), None, ptr::null_mut()),
            archon_connect(ptr::null(), ptr::null_mut()),
        ]
    };
    for (i, code) in codes.iter().enumerate() {
        assert_eq!(*code, ArchonResult::InvalidArgument, "call {i}");
    }
    assert_eq!(message(), "out is NULL");
    // SAFETY: NULL is allowed.
    unsafe { archon_close(ptr::null_mut()) };
}

#[test]
fn a_failed_connect_names_the_socket_and_keeps_the_errno() {
    let mut out = ptr::dangling_mut::<Archon>();
    // SAFETY: a C string and a writable pointer.
    let code = unsafe { archon_connect(c"/nonexistent/archon.sock".as_ptr(), &mut out) };
    assert_eq!(code, ArchonResult::CannotConnect);
    assert!(out.is_null(), "out is NULL after a failure");
    assert_eq!(archon_last_os_error(), libc::ENOENT);
    assert!(
        message().starts_with("cannot connect to /nonexistent/archon.sock: "),
        "{}",
        message()
    );
}

#[test]
fn raw_requests_copy_the_reply_as_received() {
    let (a, server) = pair();
    let server = serve(
        server,
        vec![
            ("Ping\n", "Pong\n"),
            ("Ping\n", "Pong\n"),
            (
                "Frobnicate\n",
                "Error,\"unknown request: Frobnicate, \"\"x\"\"\"\n",
            ),
            (
                "List\n",
                "List,1\nProcess,1,run,2,exited,0.000,0,\"a\nb\"\n",
            ),
        ],
    );
    let mut buf = [0 as c_char; 64];
    let mut len = 0usize;
    // SAFETY: a live handle, C strings, buffers of the sizes given.
    unsafe {
        assert_eq!(
            archon_request(
                a,
                c"Ping".as_ptr(),
                ptr::null(),
                0,
                buf.as_mut_ptr(),
                buf.len(),
                &mut len
            ),
            ArchonResult::Ok
        );
        assert_eq!((text(&buf), len), ("Pong\n".to_string(), 5));

        // Too small: the length, a NUL-terminated start, and the reply kept for another copy.
        let mut small = [0x7f as c_char; 4];
        assert_eq!(
            archon_request(
                a,
                c"Ping\n".as_ptr(),
                ptr::null(),
                0,
                small.as_mut_ptr(),
                3,
                &mut len
            ),
            ArchonResult::BufferTooSmall
        );
        assert_eq!((text(&small), len, small[3]), ("Po".to_string(), 5, 0x7f));
        assert!(message().contains("needs 6"), "{}", message());
        len = 0;
        assert_eq!(
            archon_last_reply(a, ptr::null_mut(), 0, &mut len),
            ArchonResult::BufferTooSmall
        );
        assert_eq!(len, 5);
        assert_eq!(
            archon_last_reply(a, buf.as_mut_ptr(), 6, &mut len),
            ArchonResult::Ok
        );
        assert_eq!(text(&buf), "Pong\n");

        // Error: refused, the reply copied all the same, the reason unquoted as the message.
        assert_eq!(
            archon_request(
                a,
                c"Frobnicate".as_ptr(),
                ptr::null(),
                0,
                buf.as_mut_ptr(),
                buf.len(),
                &mut len
            ),
            ArchonResult::Refused
        );
        assert_eq!(
            text(&buf),
            "Error,\"unknown request: Frobnicate, \"\"x\"\"\"\n"
        );
        assert_eq!(message(), "unknown request: Frobnicate, \"x\"");

        // A table, every row with it.
        assert_eq!(
            archon_request(
                a,
                c"List".as_ptr(),
                ptr::null(),
                0,
                buf.as_mut_ptr(),
                buf.len(),
                &mut len
            ),
            ArchonResult::Ok
        );
        assert_eq!(
            text(&buf),
            "List,1\nProcess,1,run,2,exited,0.000,0,\"a\nb\"\n"
        );
        archon_close(a);
    }
    join(server);
}

#[test]
fn a_line_with_two_requests_is_not_sent() {
    let (a, server) = pair();
    let server = serve(server, vec![("Ping\n", "Pong\n")]);
    // SAFETY: a live handle and C strings.
    unsafe {
        for line in [c"Ping\nPing", c"Run,\"abc"] {
            assert_eq!(
                archon_request(
                    a,
                    line.as_ptr(),
                    ptr::null(),
                    0,
                    ptr::null_mut(),
                    0,
                    ptr::null_mut()
                ),
                ArchonResult::InvalidArgument
            );
        }
        // Nothing went out: the next request is the first the fake archon reads.
        assert_eq!(archon_ping(a), ArchonResult::Ok);
        archon_close(a);
    }
    join(server);
}

#[test]
fn descriptors_go_with_the_request() {
    let (a, server) = pair();
    let receiver = thread::spawn(move || -> Result<usize, String> {
        let (bytes, fds) = recv_once(&server)?;
        if bytes != b"Run,/bin/echo,hi\n" {
            return Err(format!("got {bytes:?}"));
        }
        (&server)
            .write_all(b"ExitStatus,0\n")
            .map_err(|e| e.to_string())?;
        Ok(fds.len())
    });
    let (r, w) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => unreachable!("pipe: {e}"),
    };
    let fds = [r.as_raw_fd(), w.as_raw_fd()];
    // SAFETY: a live handle, a C string, two open descriptors.
    let code = unsafe {
        archon_request(
            a,
            c"Run,/bin/echo,hi".as_ptr(),
            fds.as_ptr(),
            2,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    };
    // The reply does not fit in no buffer, but it was read.
    assert_eq!(code, ArchonResult::BufferTooSmall);
    assert!(matches!(receiver.join(), Ok(Ok(2))));
    // SAFETY: the live handle, closed once.
    unsafe { archon_close(a) };
}

/// One `recvmsg` on the fake archon's side: the bytes and the descriptors that came with them.
fn recv_once(sock: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::io::IoSliceMut;
    use std::os::fd::{FromRawFd, RawFd};

    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg: {e}"))?;
    let n = msg.bytes;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors for us; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    buf.truncate(n);
    Ok((buf, fds))
}

#[test]
fn typed_calls_speak_the_protocol_and_fill_their_out_parameters() {
    let (a, server) = pair();
    let server = serve(
        server,
        vec![
            ("Run,,3,/bin/sh,-c,exit 3,A=1,HOME\n", "ExitStatus,3\n"),
            ("Run,/bin/sh,-c,kill $$\n", "ExitStatus,143,SIGTERM\n"),
            (
                "Run,/no/such\n",
                "Error,cannot execute /no/such: No such file or directory\n",
            ),
            ("StartDaemon,sleep,100\n", "Ok,4,1234\n"),
            ("Monitor,77\n", "Ok,5,77\n"),
            ("Stop,4,250\n", "Ok,4,SIGTERM\n"),
            ("Stop,5\n", "Ok,5,unknown\n"),
            ("Stop,9\n", "Error,no such process: 9\n"),
            ("OnExit,4,/bin/sh,-c,exit 3,A=1\n", "Ok,4\n"),
            ("OnExit,9,sleep,100\n", "Error,no such process: 9\n"),
        ],
    );
    let run = [
        c"/bin/sh".as_ptr(),
        c"-c".as_ptr(),
        c"exit 3".as_ptr(),
        ptr::null(),
    ];
    let env = [c"A=1".as_ptr(), c"HOME".as_ptr(), ptr::null()];
    let kill = [
        c"/bin/sh".as_ptr(),
        c"-c".as_ptr(),
        c"kill $$".as_ptr(),
        ptr::null(),
    ];
    let nosuch = [c"/no/such".as_ptr(), ptr::null()];
    let sleep = [c"sleep".as_ptr(), c"100".as_ptr(), ptr::null()];
    let (mut status, mut id, mut pid) = (0, 0u64, 0);
    // SAFETY: a live handle, NULL-terminated arrays, writable out-parameters.
    unsafe {
        assert_eq!(
            archon_run(a, run.as_ptr(), env.as_ptr(), ptr::null(), 0, &mut status),
            ArchonResult::Ok
        );
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3);
        assert_eq!(
            archon_run(a, kill.as_ptr(), ptr::null(), ptr::null(), 0, &mut status),
            ArchonResult::Ok
        );
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
        assert_eq!(
            archon_run(a, nosuch.as_ptr(), ptr::null(), ptr::null(), 0, &mut status),
            ArchonResult::Refused
        );
        assert_eq!(
            message(),
            "cannot execute /no/such: No such file or directory"
        );
        assert_eq!(
            archon_start_daemon(
                a,
                sleep.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
                &mut id,
                &mut pid
            ),
            ArchonResult::Ok
        );
        assert_eq!((id, pid), (4, 1234));
        assert_eq!(archon_monitor(a, 77, &mut id), ArchonResult::Ok);
        assert_eq!(id, 5);
        assert_eq!(archon_stop(a, 4, 250, &mut status), ArchonResult::Ok);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
        assert_eq!(archon_stop(a, 5, -1, &mut status), ArchonResult::Ok);
        assert_eq!(status, ARCHON_STATUS_UNKNOWN);
        assert_eq!(
            archon_stop(a, 9, -1, ptr::null_mut()),
            ArchonResult::Refused
        );
        assert_eq!(message(), "no such process: 9");
        let set = [c"A=1".as_ptr(), ptr::null()];
        assert_eq!(
            archon_on_exit(a, 4, run.as_ptr(), set.as_ptr()),
            ArchonResult::Ok
        );
        assert_eq!(
            archon_on_exit(a, 9, sleep.as_ptr(), ptr::null()),
            ArchonResult::Refused
        );
        assert_eq!(message(), "no such process: 9");
        // Checked before anything is sent.
        assert_eq!(
            archon_stop(a, 4, 86_400_001, ptr::null_mut()),
            ArchonResult::InvalidArgument
        );
        assert_eq!(
            archon_monitor(a, 0, ptr::null_mut()),
            ArchonResult::InvalidArgument
        );
        assert_eq!(
            archon_monitor_fd(a, -1, ptr::null_mut(), ptr::null_mut()),
            ArchonResult::InvalidArgument
        );
        let four = [0, 1, 2, 0];
        assert_eq!(
            archon_run(
                a,
                run.as_ptr(),
                ptr::null(),
                four.as_ptr(),
                4,
                ptr::null_mut()
            ),
            ArchonResult::InvalidArgument
        );
        archon_close(a);
    }
    join(server);
}

/// What the status callback saw.
#[derive(Default)]
struct Seen {
    names: Vec<String>,
    stop_after: usize,
}

unsafe extern "C" fn collect(row: *const ArchonStatusRow, ctx: *mut c_void) -> c_int {
    // SAFETY: archon_status passes a live row and the ctx it was given, a `Seen`.
    let (row, seen) = unsafe { (&*row, &mut *ctx.cast::<Seen>()) };
    // SAFETY: the row's strings are C strings while the callback runs.
    let name = unsafe { CStr::from_ptr(row.name) }
        .to_string_lossy()
        .into_owned();
    seen.names.push(name);
    c_int::from(seen.names.len() >= seen.stop_after)
}

#[test]
fn status_rows_go_to_the_callback_until_it_says_stop() {
    let (a, server) = pair();
    let rows = "Status,3\nService,db,service,ready,5,1.000,0,,yes,-,100,20,,tcp:127.0.0.1:5\n\
                Service,web,service,stopped,,2.000,1,SIGTERM,-,-,,,why,\n\
                Service,3,daemon,running,7,3.000,0,,-,-,,,,\n";
    let server = serve(
        server,
        vec![
            ("Status\n", rows),
            ("Status,db,web\n", rows),
            ("Status,nosuch\n", "Error,no such service: nosuch\n"),
        ],
    );
    let names = [c"db".as_ptr(), c"web".as_ptr(), ptr::null()];
    let nosuch = [c"nosuch".as_ptr(), ptr::null()];
    let mut all = Seen {
        stop_after: usize::MAX,
        ..Seen::default()
    };
    let mut two = Seen {
        stop_after: 2,
        ..Seen::default()
    };
    // SAFETY: a live handle, NULL-terminated arrays, a callback that reads its ctx as a Seen.
    unsafe {
        let ctx = (&raw mut all).cast();
        assert_eq!(
            archon_status(a, ptr::null(), Some(collect), ctx),
            ArchonResult::Ok
        );
        let ctx = (&raw mut two).cast();
        assert_eq!(
            archon_status(a, names.as_ptr(), Some(collect), ctx),
            ArchonResult::Ok
        );
        assert_eq!(
            archon_status(a, nosuch.as_ptr(), Some(collect), ctx),
            ArchonResult::Refused
        );
        assert_eq!(message(), "no such service: nosuch");
        assert_eq!(
            archon_status(a, ptr::null(), None, ctx),
            ArchonResult::InvalidArgument
        );
        archon_close(a);
    }
    assert_eq!(all.names, ["db", "web", "3"]);
    assert_eq!(two.names, ["db", "web"]);
    join(server);
}

#[test]
fn after_a_malformed_reply_the_handle_refuses_to_go_on() {
    let (a, server) = pair();
    let server = serve(server, vec![("Ping\n", "Nonsense,1\n")]);
    // SAFETY: a live handle.
    unsafe {
        assert_eq!(archon_ping(a), ArchonResult::Protocol);
        assert_eq!(archon_ping(a), ArchonResult::Io);
        assert!(
            message().contains("unusable after an earlier error"),
            "{}",
            message()
        );
        archon_close(a);
    }
    join(server);
}

#[test]
fn a_silent_archon_times_out() {
    let (a, _server) = pair();
    // SAFETY: a live handle.
    unsafe {
        assert_eq!(archon_set_timeout(a, 20), ArchonResult::Ok);
        assert_eq!(archon_ping(a), ArchonResult::TimedOut);
        // Its reply could still come, and would answer the next call: the handle is done.
        assert_eq!(archon_ping(a), ArchonResult::Io);
        archon_close(a);
    }
}

#[test]
fn a_closed_connection_is_an_io_error() {
    let (a, server) = pair();
    drop(server);
    // SAFETY: a live handle.
    unsafe {
        assert_eq!(archon_ping(a), ArchonResult::Io);
        archon_close(a);
    }
}

#[test]
fn the_last_error_is_cut_like_snprintf() {
    // SAFETY: a NULL handle fails before anything is read.
    assert_eq!(
        unsafe { archon_ping(ptr::null_mut()) },
        ArchonResult::InvalidArgument
    );
    let whole = "the archon handle is NULL";
    // SAFETY: NULL with size 0, then buffers of the sizes given.
    unsafe {
        assert_eq!(archon_last_error(ptr::null_mut(), 0), whole.len());
        let mut small = [0x7f as c_char; 8];
        assert_eq!(archon_last_error(small.as_mut_ptr(), 5), whole.len());
        assert_eq!(text(&small), "the ");
        assert_eq!(small[5], 0x7f, "nothing past size is written");
        let mut zero = [0x7f as c_char; 1];
        assert_eq!(archon_last_error(zero.as_mut_ptr(), 0), whole.len());
        assert_eq!(zero[0], 0x7f);
    }
    assert_eq!(message(), whole);
}

#[test]
fn strerror_describes_every_code() {
    // SAFETY: archon_strerror returns static C strings.
    let describe = |c: c_int| {
        unsafe { CStr::from_ptr(archon_strerror(c)) }
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(describe(ArchonResult::Ok as c_int), "success");
    assert_eq!(
        describe(ArchonResult::Refused as c_int),
        "archon refused the request"
    );
    assert_eq!(describe(1234), "unknown libarchon result code");
}

#[test]
fn the_header_limits_match_the_protocols() {
    assert_eq!(ARCHON_MAX_STDIO_FDS, MAX_FDS_PER_REQUEST);
}
