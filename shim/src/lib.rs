//! libarchon_bind.so: preloaded into a program (`LD_PRELOAD`), its `bind()` gives the program the
//! socket archon holds for the program's service at that address, already bound and listening,
//! instead of binding a new one. A service that binds its port itself, with no knowledge of
//! `LISTEN_FDS`, so gets archon's socket: it can bind a privileged port while running as another
//! user, and its restarts refuse no connection (the kernel queues them on archon's socket).
//! libarchon_bind(8) is its manual.
//!
//! `bind(fd, addr, len)`: for a TCP or UDP address with a port that is not 0, or a Unix stream
//! socket path, when `ARCHON_BIND_SOCKET` named archon's bind socket as the program started, the
//! shim sends `Bind,<transport>,<address>...` there ([`ask`]). When archon answers `Ok` with a
//! socket of the same domain and type, the shim puts it at the caller's fd with `dup3` (the
//! caller's socket closes; its close-on-exec flag and its `O_NONBLOCK` stay as they were) and
//! returns 0. In every other case (no archon, archon says no, anything unexpected) it calls the
//! real `bind()` (the next one, `dlsym(RTLD_NEXT)`), as if it were not there. errno is left as the
//! call found it on success, and as the real `bind()` leaves it otherwise.
//!
//! The path inside `bind()` allocates nothing, takes no lock, and makes only raw system calls
//! (`bind()` may be called from a signal handler or between `fork` and `exec`); every wait on
//! archon is bounded ([`ask::TIMEOUT`]). What needs more (finding the real `bind`, reading the
//! environment) is done once, by a constructor, when the library is loaded. No panic can cross
//! `bind()`: a panic would mean a bug, and then the real `bind()` is called.

pub mod addr;
pub mod ask;

use std::cell::UnsafeCell;
use std::ffi::c_int;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The variable that names archon's bind socket (archon puts it in every child's environment).
pub const BIND_SOCKET_ENV: &std::ffi::CStr = c"ARCHON_BIND_SOCKET";

/// The real `bind()`'s type.
type BindFn = unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int;

/// The real `bind()`, found by the constructor (0 until then: the raw system call is used).
static REAL_BIND: AtomicUsize = AtomicUsize::new(0);

/// The bind socket's path, copied from the environment by the constructor.
struct SocketPath {
    bytes: UnsafeCell<[u8; 108]>,
    /// Its length, stored after the bytes (Release) and loaded before them (Acquire); 0: none.
    len: AtomicUsize,
}

// SAFETY: the bytes are written once, by the constructor, before `len` says they are there;
// after that they are only read.
unsafe impl Sync for SocketPath {}

static SOCKET_PATH: SocketPath = SocketPath {
    bytes: UnsafeCell::new([0; 108]),
    len: AtomicUsize::new(0),
};

/// The constructor: runs when the library is loaded, before the program's `main`, while the
/// process has one thread.
extern "C" fn init() {
    // SAFETY: dlsym with a valid C string; RTLD_NEXT finds the bind() after this library's.
    let real = unsafe { libc::dlsym(libc::RTLD_NEXT, c"bind".as_ptr()) };
    REAL_BIND.store(real as usize, Ordering::Release);
    // SAFETY: getenv with a valid C string, while nothing else can change the environment.
    let value = unsafe { libc::getenv(BIND_SOCKET_ENV.as_ptr()) };
    if value.is_null() {
        return;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    let value = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    // SAFETY: nothing reads the bytes until `len` is stored below.
    let bytes = unsafe { &mut *SOCKET_PATH.bytes.get() };
    if value.is_empty() || value.len() >= bytes.len() {
        return;
    }
    for (dst, src) in bytes.iter_mut().zip(value) {
        *dst = *src;
    }
    SOCKET_PATH.len.store(value.len(), Ordering::Release);
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

/// The bind socket's path, if the environment named one.
fn socket_path() -> Option<&'static [u8]> {
    let len = SOCKET_PATH.len.load(Ordering::Acquire);
    if len == 0 {
        return None;
    }
    // SAFETY: written before `len` was stored, never written again.
    let bytes = unsafe { &*SOCKET_PATH.bytes.get() };
    bytes.get(..len)
}

fn errno() -> i32 {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() }
}

fn set_errno(value: i32) {
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = value };
}

/// The real `bind()`: the next one in the lookup order, or the system call itself.
///
/// # Safety
/// As `bind(2)`: `addr` points at `len` readable bytes.
unsafe fn real_bind(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int {
    let real = REAL_BIND.load(Ordering::Acquire);
    if real != 0 {
        // SAFETY: the address dlsym gave for `bind`, whose type is BindFn.
        let real: BindFn = unsafe { std::mem::transmute::<usize, BindFn>(real) };
        // SAFETY: the caller's arguments, as given.
        return unsafe { real(fd, addr, len) };
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_bind, fd, addr, len) as c_int }
}

/// An integer socket option of `fd`.
fn sockopt(fd: RawFd, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: value and len describe a valid c_int buffer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_getsockopt,
            fd,
            libc::SOL_SOCKET,
            name,
            &mut value as *mut c_int,
            &mut len as *mut libc::socklen_t,
        )
    };
    (ret == 0).then_some(value)
}

/// A raw `fcntl`.
fn fcntl(fd: RawFd, cmd: c_int, arg: libc::c_long) -> Option<libc::c_long> {
    // SAFETY: fcntl with an integer argument.
    let ret = unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) };
    (ret >= 0).then_some(ret)
}

/// The working directory into `buf`: its length (without the NUL).
fn cwd(buf: &mut [u8]) -> Option<usize> {
    // SAFETY: getcwd writes at most buf.len() bytes into buf.
    let ret = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    // The system call returns the length with the NUL.
    (ret > 1).then(|| ret as usize - 1)
}

/// Puts archon's socket for this `bind()` at `fd`, if archon has one: true when it did.
///
/// # Safety
/// As `bind(2)`: `addr` points at `len` readable bytes.
unsafe fn from_archon(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> bool {
    // The kernel refuses a longer address (EINVAL), and reads no more than that: neither does
    // the shim, so that a bad length faults no more here than it would in the kernel.
    if addr.is_null() || len as usize > std::mem::size_of::<libc::sockaddr_storage>() {
        return false;
    }
    let Some(socket) = socket_path() else {
        return false;
    };
    // SAFETY: the caller's promise.
    let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len as usize) };
    let mut kind = None;
    let Some(asked) = addr::asked(
        || {
            kind = sockopt(fd, libc::SO_TYPE);
            kind
        },
        bytes,
        cwd,
    ) else {
        return false;
    };
    let Some(kind) = kind else {
        return false;
    };
    let (transport, target) = asked.target();
    let Some(given) = ask::ask(socket, transport, target) else {
        return false;
    };
    // Only a socket of the caller's domain and type takes the caller's place.
    let domain = sockopt(fd, libc::SO_DOMAIN);
    if domain.is_none()
        || sockopt(given.0, libc::SO_DOMAIN) != domain
        || sockopt(given.0, libc::SO_TYPE) != Some(kind)
    {
        return false;
    }
    let (Some(fd_flags), Some(status)) = (fcntl(fd, libc::F_GETFD, 0), fcntl(fd, libc::F_GETFL, 0))
    else {
        return false;
    };
    let cloexec = if fd_flags & libc::c_long::from(libc::FD_CLOEXEC) != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: dup3 of two fds; it closes the caller's socket at `fd` and puts archon's there.
    let ret = unsafe { libc::syscall(libc::SYS_dup3, given.0, fd, cloexec) };
    if ret != libc::c_long::from(fd) {
        return false;
    }
    // O_NONBLOCK belongs to the open socket, which archon and the service's other processes
    // share: it is set as the caller had it on its own socket.
    let nonblock = status & libc::c_long::from(libc::O_NONBLOCK);
    if let Some(now) = fcntl(fd, libc::F_GETFL, 0) {
        let want = (now & !libc::c_long::from(libc::O_NONBLOCK)) | nonblock;
        if want != now {
            let _ = fcntl(fd, libc::F_SETFL, want);
        }
    }
    // `given` closes here: the socket lives on at `fd`.
    true
}

/// `bind(2)`, taking archon's socket when archon holds one for this address and this process's
/// service; see the crate's documentation.
///
/// # Safety
/// As `bind(2)`: `addr` points at `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    let saved = errno();
    let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the caller's promise.
        unsafe { from_archon(fd, addr, len) }
    }));
    set_errno(saved);
    if let Ok(true) = taken {
        return 0;
    }
    // SAFETY: the caller's promise.
    unsafe { real_bind(fd, addr, len) }
}
