//! The early mounts: the file systems a machine's init mounts before anything runs, when they are
//! not mounted yet. `/proc` first (archon needs it to tell what is mounted, and which PID
//! namespace it is in), then `/sys`, `/dev`, `/run` and the cgroup2 hierarchy.
//!
//! `/proc` counts as mounted only when it is the `/proc` of archon's own PID namespace (its
//! `self` is archon): one of another namespace, left by `unshare --pid` without `--mount-proc`,
//! shows other processes under archon's pids, and archon mounts its own over it. The others count
//! as mounted when something is mounted on their directory, whatever it is.
//!
//! Which mounts are missing is decided by a pure function of `/proc/self/mountinfo`; the mounting
//! is one `mount(2)` each.

use std::ffi::CString;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;

/// One file system of the early boot.
#[derive(Debug, PartialEq, Eq)]
pub struct EarlyMount {
    /// The source `mount(2)` is given (shown in mountinfo; these need none).
    pub source: &'static str,
    /// Where it goes.
    pub target: &'static str,
    /// Its type.
    pub fstype: &'static str,
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// Its options.
    pub data: &'static str,
}

/// No set-user-ID, no device files, no programs: for the kernel's own file systems.
const KERNEL_FS: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The mode of the directories archon creates for a mount point.
const MOUNT_POINT_MODE: u32 = 0o755;

/// The early mounts, in the order they are made: a mount point inside another comes after it.
pub const EARLY_MOUNTS: [EarlyMount; 5] = [
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: KERNEL_FS,
        data: "",
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: KERNEL_FS,
        data: "",
    },
    // The kernel's own device nodes (devtmpfs: /dev/null, /dev/console, the disks).
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    // archon's socket lives here (/run/archon/archon.sock).
    EarlyMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: "mode=0755",
    },
    // Where archon makes a cgroup per service.
    EarlyMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: KERNEL_FS,
        data: "",
    },
];

/// The mount points of `/proc/self/mountinfo` text, in its order (the order of mounting), with
/// the kernel's octal escapes (`\040` for a space) undone.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

/// Undoes the `\ooo` escapes of mountinfo (space, tab, newline and backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The early mounts to make, given what is mounted (`points`) and whether `/proc` is archon's
/// own already.
pub fn missing(points: &[String], own_proc: bool) -> Vec<&'static EarlyMount> {
    EARLY_MOUNTS
        .iter()
        .filter(|m| {
            if m.target == "/proc" {
                !own_proc
            } else {
                !points.iter().any(|p| p == m.target)
            }
        })
        .collect()
}

/// What became of one early mount.
#[derive(Debug)]
pub struct Mounted {
    /// The mount.
    pub mount: &'static EarlyMount,
    /// Whether `mount(2)` succeeded.
    pub result: io::Result<()>,
}

/// Mounts what is missing of [`EARLY_MOUNTS`]: `/proc` first, then the others that
/// `/proc/self/mountinfo` does not list. Says what it did; a failure stops nothing.
pub fn mount_missing() -> Vec<Mounted> {
    let mut done = Vec::new();
    let own_proc = crate::sys::own_proc();
    for m in missing(&[], own_proc)
        .into_iter()
        .filter(|m| m.target == "/proc")
    {
        done.push(Mounted {
            mount: m,
            result: mount(m),
        });
    }
    let points = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount_points(&text))
        .unwrap_or_default();
    for m in missing(&points, true) {
        done.push(Mounted {
            mount: m,
            result: mount(m),
        });
    }
    done
}

/// Makes `m.target` if it does not exist, and mounts `m` on it.
fn mount(m: &EarlyMount) -> io::Result<()> {
    // A directory that exists, or that cannot be made (sysfs makes /sys/fs/cgroup itself), is
    // left to mount(2) to judge.
    let _ = DirBuilder::new().mode(MOUNT_POINT_MODE).create(m.target);
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (source, target, fstype, data) = (c(m.source)?, c(m.target)?, c(m.fstype)?, c(m.data)?);
    // SAFETY: every pointer is a NUL-terminated string that lives through the call.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data.as_ptr().cast(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
24 22 0:5 / /dev rw,nosuid shared:3 - devtmpfs devtmpfs rw,mode=755
25 22 0:23 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    fn targets(ms: &[&EarlyMount]) -> Vec<&'static str> {
        ms.iter().map(|m| m.target).collect()
    }

    #[test]
    fn mount_points_in_order_unescaped() {
        assert_eq!(
            mount_points(MOUNTINFO),
            ["/", "/proc", "/dev", "/mnt/with space"]
        );
        assert_eq!(unescape("a\\134b\\011c\\012"), "a\\b\tc\n");
        assert_eq!(unescape("odd\\04"), "odd\\04", "a short escape stays");
        assert!(mount_points("").is_empty());
    }

    #[test]
    fn what_is_missing() {
        let points = mount_points(MOUNTINFO);
        assert_eq!(
            targets(&missing(&points, true)),
            ["/sys", "/run", "/sys/fs/cgroup"]
        );
        // A /proc of another PID namespace is mounted over.
        assert_eq!(
            targets(&missing(&points, false)),
            ["/proc", "/sys", "/run", "/sys/fs/cgroup"]
        );
        // At boot: everything, /proc first, /sys before what is inside it.
        assert_eq!(
            targets(&missing(&[], false)),
            ["/proc", "/sys", "/dev", "/run", "/sys/fs/cgroup"]
        );
        let all: Vec<String> = EARLY_MOUNTS.iter().map(|m| m.target.to_string()).collect();
        assert!(missing(&all, true).is_empty());
    }
}
