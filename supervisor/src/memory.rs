//! Giving memory back after a burst of work: loading the configuration (a Lua evaluation that may
//! use tens of megabytes for a moment) and starting every service.
//!
//! Two kinds of memory stay behind such a burst. The allocator keeps the heap it grew; and the
//! kernel keeps every page of archon's own program mapped that the burst touched, or that fault-
//! around mapped beside one: the Lua interpreter, the configuration reader, the first spawns. A
//! supervisor that then sits in `epoll_wait` for months uses a small part of that code, so archon
//! trims the heap (`malloc_trim`) and unmaps the clean pages of its own program file
//! (`MADV_DONTNEED`). The pages stay in the page cache; whatever the loop runs later faults back
//! in from there. Only mappings without a private or dirty page are unmapped: relocated
//! read-only data (RELRO) and writable data must keep their contents.

/// Gives back what [`archon`'s](self) bursts left behind: free heap and clean program pages.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    release_program_pages();
}

/// Unmaps the clean, private file pages of archon's own program (see the module's comment).
fn release_program_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for m in parse_smaps(&smaps).iter().filter(|m| m.droppable()) {
        // SAFETY: the range is a whole read-only, private mapping of a file that holds no page
        // of its own (no anonymous, copied-on-write page): dropping it only makes the next
        // access fault the same bytes in again from the page cache. MADV_RANDOM keeps that
        // fault from mapping the pages around it (fault-around), which the loop does not need.
        unsafe {
            let (at, len) = (m.start as *mut libc::c_void, m.end - m.start);
            libc::madvise(at, len, libc::MADV_DONTNEED);
            libc::madvise(at, len, libc::MADV_RANDOM);
        }
    }
}

/// One mapping of `/proc/self/smaps`: what [`release_program_pages`] needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    private: bool,
    dev: String,
    inode: u64,
    /// `Anonymous:` (KiB): pages copied on write, whose contents are no longer the file's. (Not
    /// `Private_Dirty:`, which also counts page-cache pages not yet written back, as a program
    /// fresh from the linker has.)
    own_kib: u64,
}

impl Mapping {
    /// A file mapping whose pages are all the file's own bytes.
    fn droppable(&self) -> bool {
        self.inode != 0 && self.private && !self.writable && self.own_kib == 0
    }
}

/// Parses the mappings of an smaps text; lines it does not know are skipped.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-') {
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let _offset = fields.next();
            let dev = fields.next().unwrap_or("").to_string();
            let inode = fields.next().and_then(|i| i.parse().ok()).unwrap_or(0);
            out.push(Mapping {
                start,
                end,
                writable: perms.as_bytes().get(1) == Some(&b'w'),
                private: perms.as_bytes().get(3) == Some(&b'p'),
                dev,
                inode,
                own_kib: 0,
            });
        } else if first == "Anonymous:" {
            let kib: u64 = fields.next().and_then(|k| k.parse().ok()).unwrap_or(0);
            if let Some(m) = out.last_mut() {
                m.own_kib = m.own_kib.saturating_add(kib);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c2a00000-55d0c2a5d000 r--p 00000000 fe:01 1234 /usr/bin/archon
Rss:                 224 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c2a5d000-55d0c2b95000 r-xp 0005d000 fe:01 1234 /usr/bin/archon
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
55d0c2b95000-55d0c2b9f000 r--p 00194000 fe:01 1234 /usr/bin/archon
Private_Dirty:        40 kB
Anonymous:            40 kB
55d0c2b9f000-55d0c2ba1000 rw-p 0019d000 fe:01 1234 /usr/bin/archon
Private_Dirty:         8 kB
55d0c3000000-55d0c3100000 rw-p 00000000 00:00 0 [heap]
Anonymous:          1024 kB
7f0000000000-7f0000001000 r--s 00000000 fe:01 99 /some/shared
Private_Dirty:         0 kB
";

    #[test]
    fn parses_every_mapping_with_what_it_owns() {
        let m = parse_smaps(SMAPS);
        assert_eq!(m.len(), 6);
        assert_eq!(m[0].start, 0x55d0_c2a0_0000);
        assert_eq!(m[0].end, 0x55d0_c2a5_d000);
        assert_eq!((m[0].dev.as_str(), m[0].inode), ("fe:01", 1234));
        assert_eq!(m[2].own_kib, 40);
        assert!(m[3].writable);
        assert_eq!((m[4].inode, m[4].own_kib), (0, 1024));
    }

    #[test]
    fn only_clean_read_only_private_file_mappings_are_dropped() {
        let dropped: Vec<bool> = parse_smaps(SMAPS).iter().map(Mapping::droppable).collect();
        // The text and read-only data go; RELRO (relocated), data, heap and a shared map stay.
        assert_eq!(dropped, vec![true, true, false, false, false, false]);
    }

    #[test]
    fn release_leaves_the_program_running() {
        release();
        // The code and constants fault back in: this test still runs and computes.
        assert_eq!(parse_smaps(SMAPS).len(), 6);
    }
}
