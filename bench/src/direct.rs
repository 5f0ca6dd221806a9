//! The baselines: the bench itself starts a program and waits for it, with `posix_spawn` (the
//! cheapest way: glibc spawns with `CLONE_VM | CLONE_VFORK`, no copy of the parent's memory map)
//! and with a plain `fork` + `execve` (the way archon's `clone3` without `CLONE_VM` works: the
//! child gets a copy-on-write copy of the parent's memory map).

use std::ffi::{CString, c_char};
use std::os::unix::ffi::OsStrExt;

/// A program made ready for `posix_spawn`, with the bench's own environment.
pub struct Spawner {
    path: CString,
    // The pointer arrays point into these.
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*mut c_char>,
    envp_ptrs: Vec<*mut c_char>,
}

impl Spawner {
    /// `argv[0]` is the program's path.
    pub fn new(argv: &[&str]) -> Result<Spawner, String> {
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(*a).map_err(|e| format!("argv: {e}")))
            .collect::<Result<_, _>>()?;
        let path = argv.first().cloned().ok_or("empty argv")?;
        let env: Vec<CString> = std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut entry = k.as_bytes().to_vec();
                entry.push(b'=');
                entry.extend_from_slice(v.as_bytes());
                CString::new(entry).ok()
            })
            .collect();
        let pointers = |strings: &[CString]| -> Vec<*mut c_char> {
            strings
                .iter()
                .map(|s| s.as_ptr().cast_mut())
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect()
        };
        Ok(Spawner {
            path,
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&env),
            _argv: argv,
            _env: env,
        })
    }

    /// Spawns the program with `posix_spawn` and waits for it; an error unless it exits 0.
    pub fn posix_spawn_wait(&self) -> Result<(), String> {
        let mut pid: libc::pid_t = 0;
        // SAFETY: path, argv and envp are NUL-terminated strings in null-terminated arrays that
        // live as long as self; posix_spawn does not write through them. Null file actions and
        // attributes mean none.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.path.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "posix_spawn {:?}: {}",
                self.path,
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        self.wait(pid)
    }

    /// Starts the program with `fork` + `execve` and waits for it; an error unless it exits 0.
    pub fn fork_exec_wait(&self) -> Result<(), String> {
        // SAFETY: the child calls only execve and _exit, both async-signal-safe, on pointers
        // prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::execve(
                    self.path.as_ptr(),
                    self.argv_ptrs.as_ptr().cast(),
                    self.envp_ptrs.as_ptr().cast(),
                );
                libc::_exit(127)
            }
        }
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        self.wait(pid)
    }

    fn wait(&self, pid: libc::pid_t) -> Result<(), String> {
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: status is a valid out-pointer; pid is our child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("waitpid: {e}"));
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else {
            Err(format!(
                "{:?} ended with wait status {status:#x}",
                self.path
            ))
        }
    }
}
