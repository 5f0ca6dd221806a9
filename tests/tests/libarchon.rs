//! libarchon from C, as its users get it: `dist/install` stages the library, header, pkg-config
//! file and man pages in a temp DESTDIR; `tests/c/libarchon_test.c` is compiled with `cc`
//! against the installed header and library (found through `pkg-config`), linked dynamically
//! and statically, and run against a real archon. The C program checks every call; these tests
//! check that it ran them all and that they passed.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use archon_tests::*;

/// The repository's top directory.
fn repo() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("tests/ has no parent directory")
}

/// Where `dist/install` was run: `stage` is DESTDIR, the prefix is /usr/local.
struct Installed {
    stage: TempDir,
}

const PREFIX: &str = "/usr/local";

impl Installed {
    /// A path under the prefix, in the stage.
    fn path(&self, rel: &str) -> PathBuf {
        self.stage
            .path()
            .join(PREFIX.trim_start_matches('/'))
            .join(rel)
    }

    /// `pkg-config ARGS archon`, finding only the staged archon.pc, its paths under the stage.
    fn pkg_config(&self, args: &[&str]) -> Result<Vec<String>> {
        let out = output_within(
            Command::new("pkg-config")
                .args(args)
                .arg("archon")
                .env("PKG_CONFIG_LIBDIR", self.path("lib/pkgconfig"))
                .env_remove("PKG_CONFIG_PATH")
                .env("PKG_CONFIG_SYSROOT_DIR", self.stage.path()),
            BOUND,
        )?;
        ensure_success(&out, &format!("pkg-config {args:?} archon"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }
}

/// Fails unless `out` is a success; shows what it printed.
fn ensure_success(out: &Output, what: &str) -> Result {
    ensure!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `dist/install --from <this build>` with DESTDIR a fresh temp dir.
fn install() -> Result<Installed> {
    let build = TempDir::new()?;
    for (name, path) in [
        ("archon", archon_bin()?),
        ("archonctl", archonctl_bin()?),
        ("libarchon.so", lib_artifact("libarchon.so")?),
        ("libarchon.a", lib_artifact("libarchon.a")?),
        ("libarchon_bind.so", shim_path()?),
    ] {
        symlink(&path, build.join(name)).context(format!("symlink {name}"))?;
    }
    let stage = TempDir::new()?;
    let out = output_within(
        Command::new(repo()?.join("dist/install"))
            .arg("--from")
            .arg(build.path())
            .env("DESTDIR", stage.path())
            .env("PREFIX", PREFIX)
            .env_remove("LIBDIR")
            .env_remove("BINDIR")
            .env_remove("INCLUDEDIR")
            .env_remove("MANDIR"),
        LONG_BOUND,
    )?;
    ensure_success(&out, "dist/install")?;
    Ok(Installed { stage })
}

/// How to link the C program.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    /// Against libarchon.so: `cc prog.c $(pkg-config --cflags --libs archon)`.
    Dynamic,
    /// Against libarchon.a and the system libraries archon.pc names for a static link.
    Static,
}

/// The C test program.
fn test_program() -> Result<PathBuf> {
    Ok(repo()?.join("tests/c/libarchon_test.c"))
}

/// Compiles the C program `source` against the installed header and library.
fn compile(installed: &Installed, source: &Path, link: Link) -> Result<PathBuf> {
    let stem = source
        .file_stem()
        .context("a source file without a name")?
        .to_string_lossy();
    let exe = installed.stage.join(format!("{stem}-{link:?}"));
    let cflags = installed.pkg_config(&["--cflags"])?;
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .args(&cflags)
        .arg("-o")
        .arg(&exe)
        .arg(source);
    match link {
        Link::Dynamic => {
            cc.args(installed.pkg_config(&["--libs"])?);
        }
        Link::Static => {
            // As libarchon(3) shows: -l:libarchon.a names the archive (-larchon would find the
            // shared library first), with what --static adds for it (Libs.private).
            let libs = installed.pkg_config(&["--static", "--libs"])?;
            ensure!(
                libs.iter().any(|l| l == "-larchon"),
                "no -larchon in {libs:?}"
            );
            cc.args(libs.iter().map(|l| {
                if l == "-larchon" {
                    "-l:libarchon.a"
                } else {
                    l.as_str()
                }
            }));
        }
    }
    let out = output_within(&mut cc, LONG_BOUND)?;
    ensure_success(&out, &format!("cc ({link:?}): {cc:?}"))?;
    Ok(exe)
}

/// Checks that the C program passed, checked what the issue asks for, and ran to its end.
fn ensure_all_checks_passed(out: &Output) -> Result {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown = format!(
        "\nstdout:\n{text}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "libarchon_test: {}{shown}",
        out.status
    );
    let oks: Vec<&str> = text.lines().filter(|l| l.starts_with("ok ")).collect();
    ensure!(
        !text.lines().any(|l| l.starts_with("not ok")),
        "a check failed{shown}"
    );
    let plan = format!("1..{}", oks.len());
    ensure!(
        text.lines().last() == Some(plan.as_str()),
        "the program did not run to its plan line {plan}{shown}"
    );
    for wanted in [
        "connect: the default socket ($ARCHON_SOCKET)",
        "raw: Ping gives",
        "raw: Run with fds attached writes to our pipe",
        "run: /bin/sh -c 'exit 3' gives 3",
        "run: stdio fds and envp: the output came through our pipe",
        "daemon: started sleep 100",
        "stop: the daemon ended by SIGTERM",
        "monitor: MonitorFD of our child's pidfd",
        "monitor: Monitor by pid",
        "status: the daemon's row",
        "error: the message is the reason",
        "error: a small buffer gets the start, NUL-terminated",
        "a NULL handle: invalid argument",
    ] {
        ensure!(
            oks.iter().any(|l| l.contains(wanted)),
            "no passed check {wanted:?}{shown}"
        );
    }
    Ok(())
}

/// The values of an ELF file's dynamic entries of one tag (`NEEDED`, `SONAME`), by readelf.
fn dynamic_entries(elf: &Path, tag: &str) -> Result<Vec<String>> {
    let out = output_within(Command::new("readelf").arg("-d").arg(elf), BOUND)?;
    ensure_success(&out, &format!("readelf -d {}", elf.display()))?;
    // `0x0000000000000001 (NEEDED)  Shared library: [libc.so.6]`
    let wanted = format!("({tag})");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(wanted.as_str()))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect())
}

/// The shared libraries an executable needs.
fn needed(exe: &Path) -> Result<Vec<String>> {
    dynamic_entries(exe, "NEEDED")
}

/// Runs the C program against a fresh archon; `ld_path` for a dynamically linked one.
fn run_against_archon(exe: &Path, ld_path: Option<&Path>) -> Result<Output> {
    let archon = Archon::start()?;
    let mut cmd = Command::new(exe);
    cmd.arg(archon.socket())
        .env("ARCHON_SOCKET", archon.socket())
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("LD_PRELOAD");
    if let Some(dir) = ld_path {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    output_within(&mut cmd, LONG_BOUND)
}

#[test]
fn install_puts_every_file_under_destdir_and_prefix() -> Result {
    let i = install()?;
    for rel in [
        "bin/archon",
        "bin/archonctl",
        "lib/libarchon.a",
        "lib/libarchon_bind.so",
        "include/archon.h",
        "lib/pkgconfig/archon.pc",
        "share/man/man1/archonctl.1",
        "share/man/man3/libarchon.3",
        "share/man/man7/archon-protocol.7",
        "share/man/man8/archon.8",
        "share/man/man8/libarchon_bind.8",
    ] {
        ensure!(i.path(rel).is_file(), "{rel} is not installed");
    }
    // The real file, the soname's link, the link for -larchon.
    let version = env!("CARGO_PKG_VERSION");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    let real = format!("libarchon.so.{version}");
    ensure!(
        i.path(&format!("lib/{real}")).is_file(),
        "{real} is missing"
    );
    for (link, target) in [
        (format!("libarchon.so.{major}"), real.clone()),
        ("libarchon.so".to_string(), format!("libarchon.so.{major}")),
    ] {
        let got = fs::read_link(i.path(&format!("lib/{link}"))).context(format!("read {link}"))?;
        ensure_eq!(got, PathBuf::from(&target), "{link} points to");
    }
    let header = fs::read(i.path("include/archon.h")).context("read archon.h")?;
    let checked_in = fs::read(repo()?.join("ctl/capi/include/archon.h"))
        .context("read the checked-in header")?;
    ensure!(
        header == checked_in,
        "the installed archon.h is not the checked-in one"
    );
    // archon.pc is written for the prefix, not for the stage.
    let pc = fs::read_to_string(i.path("lib/pkgconfig/archon.pc")).context("read archon.pc")?;
    ensure!(
        pc.lines().any(|l| l == "prefix=/usr/local"),
        "archon.pc:\n{pc}"
    );
    ensure!(
        pc.lines().any(|l| l == format!("Version: {version}")),
        "archon.pc:\n{pc}"
    );
    ensure!(
        !pc.contains("archon-test."),
        "archon.pc names the stage:\n{pc}"
    );
    Ok(())
}

#[test]
fn the_library_exports_exactly_the_functions_of_the_header() -> Result {
    let i = install()?;
    let so = i.path(&format!("lib/libarchon.so.{}", env!("CARGO_PKG_VERSION")));
    let out = output_within(
        Command::new("nm").args(["-D", "--defined-only"]).arg(&so),
        BOUND,
    )?;
    ensure_success(&out, "nm -D --defined-only libarchon.so")?;
    let exported: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
        .collect();
    let stray: Vec<&String> = exported
        .iter()
        .filter(|s| !s.starts_with("archon_"))
        .collect();
    ensure!(stray.is_empty(), "exported beside archon_*: {stray:?}");
    // Every `archon_name(` in the header: the functions (a type is never followed by `(`).
    let header = fs::read_to_string(i.path("include/archon.h")).context("read archon.h")?;
    let declared: BTreeSet<String> = header
        .match_indices('(')
        .filter_map(|(at, _)| {
            let before = &header[..at];
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let name = &before[start..];
            name.starts_with("archon_").then(|| name.to_string())
        })
        .collect();
    ensure_eq!(exported, declared, "exported vs declared in archon.h");
    Ok(())
}

#[test]
fn a_c_program_linked_against_libarchon_so_drives_archon() -> Result {
    let i = install()?;
    let exe = compile(&i, &test_program()?, Link::Dynamic)?;
    let out = run_against_archon(&exe, Some(&i.path("lib")))?;
    ensure_all_checks_passed(&out)?;
    // Linked against the soname, which the installed library carries.
    let soname = format!("libarchon.so.{}", env!("CARGO_PKG_VERSION_MAJOR"));
    ensure_eq!(
        needed(&exe)?.contains(&soname),
        true,
        "{} needs {soname}",
        exe.display()
    );
    let so = i.path(&format!("lib/libarchon.so.{}", env!("CARGO_PKG_VERSION")));
    ensure_eq!(
        dynamic_entries(&so, "SONAME")?,
        vec![soname],
        "the library's soname"
    );
    Ok(())
}

#[test]
fn a_c_program_linked_against_libarchon_a_drives_archon() -> Result {
    let i = install()?;
    let exe = compile(&i, &test_program()?, Link::Static)?;
    let needs = needed(&exe)?;
    ensure!(
        !needs.iter().any(|n| n.starts_with("libarchon")),
        "a static link needs {needs:?}"
    );
    // No LD_LIBRARY_PATH: nothing of libarchon is loaded at run time.
    let out = run_against_archon(&exe, None)?;
    ensure_all_checks_passed(&out)
}

/// The example program of libarchon(3): the first literal display of its EXAMPLES section, with
/// the roff escapes it uses (`\e` for a backslash) undone.
fn manual_example() -> Result<String> {
    let page = fs::read_to_string(repo()?.join("man/libarchon.3")).context("read libarchon.3")?;
    let examples = page
        .split_once("\n.Sh EXAMPLES\n")
        .context("libarchon.3 has no EXAMPLES section")?
        .1;
    let code = examples
        .split_once(".Bd -literal -offset indent\n")
        .and_then(|(_, rest)| rest.split_once("\n.Ed\n"))
        .context("no literal display in EXAMPLES")?
        .0;
    Ok(code.replace("\\e", "\\").replace("\\&", "") + "\n")
}

#[test]
fn the_manuals_example_compiles_and_runs() -> Result {
    let i = install()?;
    let source = i.stage.join("example.c");
    fs::write(&source, manual_example()?).context("write example.c")?;
    let mut outputs = Vec::new();
    for link in [Link::Dynamic, Link::Static] {
        let exe = compile(&i, &source, link)?;
        outputs.push((link, run_against_archon(&exe, Some(&i.path("lib")))?));
    }
    for (link, out) in outputs {
        let text = String::from_utf8_lossy(&out.stdout);
        let shown = format!(
            "{link:?}: {}\nstdout:\n{text}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "the example failed: {shown}");
        for line in [
            "Version,",
            "hello, world",
            "exited with 0",
            "\tdaemon\trunning\t",
            "killed by signal 15",
        ] {
            ensure!(text.contains(line), "no {line:?} in the output: {shown}");
        }
    }
    Ok(())
}
