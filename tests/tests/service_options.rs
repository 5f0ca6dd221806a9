//! A service's spawn options end to end, named after archon.lua(5)'s fields: `user`, `group`,
//! `groups`, `umask`, `rlimits`, `nice`, `cwd` and `env` as the running service has them in
//! `/proc` and as a task with the same options leaves them on the file it makes; the defaults
//! `user` alone brings; and a directory the service's user cannot enter.
//!
//! Users and groups are looked up by name in `/etc/passwd` and `/etc/group` when the test runs,
//! so no id is written into the test. Needs root, as every service test does.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use archon_tests::archon_proto::{ServiceRow, ServiceState};
use archon_tests::*;

/// Writes `lua` (with `@DIR@` replaced by the config's directory) and starts archon on it.
fn start(cfg: ConfigFile, lua: &str) -> Result<Configured> {
    cfg.write(&lua.replace("@DIR@", &cfg.dir().display().to_string()))?;
    cfg.start(Archon::builder())
}

/// The pid of a service that has one.
fn pid_of(row: &ServiceRow) -> Result<i32> {
    row.pid
        .context(format!("no pid in a running row: {}", show_row(row)))
}

/// Field `n` (from 0) of `name`'s line in a `name:x:id:...` database file (`/etc/passwd`,
/// `/etc/group`), as a number.
fn field_of(file: &str, name: &str, n: usize) -> Result<u32> {
    let text = fs::read_to_string(file).context(format!("read {file}"))?;
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .context(format!("{name} is not in {file}: this test needs it"))?;
    line.split(':')
        .nth(n)
        .and_then(|id| id.parse().ok())
        .context(format!("no number in field {n} of {file}'s line {line:?}"))
}

/// The id of `name` in `/etc/passwd` or `/etc/group`.
fn id_in(file: &str, name: &str) -> Result<u32> {
    field_of(file, name, 2)
}

/// The groups `/etc/group` lists `user` in as a member, and `user`'s primary group: what
/// `getgrouplist` gives.
fn groups_of(user: &str) -> Result<BTreeSet<u32>> {
    let mut set = BTreeSet::from([field_of("/etc/passwd", user, 3)?]);
    let text = fs::read_to_string("/etc/group").context("read /etc/group")?;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.get(3).is_some_and(|m| m.split(',').any(|m| m == user)) {
            if let Some(gid) = f.get(2).and_then(|g| g.parse().ok()) {
                set.insert(gid);
            }
        }
    }
    Ok(set)
}

/// The ids in a line of `/proc/PID/status` (`Uid`, `Gid`, `Groups`).
fn ids(pid: i32, key: &str) -> Result<Vec<u32>> {
    let v = status_field(pid, key)?;
    v.split_whitespace()
        .map(|id| id.parse().context(format!("{key} of {pid}: {v:?}")))
        .collect()
}

/// The soft and hard limit of `/proc/PID/limits`'s line for `what` (`Max open files`), as
/// written there (`unlimited` for infinity).
fn limit(pid: i32, what: &str) -> Result<(String, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits"))
        .context(format!("read /proc/{pid}/limits"))?;
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix(what))
        .context(format!("no {what:?} in /proc/{pid}/limits: {text}"))?;
    let mut words = rest.split_whitespace();
    match (words.next(), words.next()) {
        (Some(soft), Some(hard)) => Ok((soft.to_string(), hard.to_string())),
        _ => fail(format!("{what} of {pid}: {rest:?}")),
    }
}

/// The nice value of `pid`: field 19 of `/proc/PID/stat`.
fn nice_of(pid: i32) -> Result<i32> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .context(format!("read /proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold anything: the
    // state (field 3) first, so field 19 is the 17th.
    let rest = text
        .rfind(')')
        .map(|at| &text[at + 1..])
        .context(format!("/proc/{pid}/stat: {text:?}"))?;
    rest.split_whitespace()
        .nth(16)
        .and_then(|n| n.parse().ok())
        .context(format!("no nice value in /proc/{pid}/stat: {text:?}"))
}

#[test]
fn user_group_groups_umask_rlimits_nice_cwd_and_env_reach_services_and_tasks() -> Result {
    let uid = id_in("/etc/passwd", "nobody")?;
    let gid = id_in("/etc/group", "daemon")?;
    let extra = [
        id_in("/etc/group", "nogroup")?,
        id_in("/etc/group", "users")?,
    ];
    let cfg = ConfigFile::new()?;
    // The service's user must reach its directory: the config's temp dir is root's, 0700.
    let work = cfg.dir().join("work");
    fs::create_dir(&work).context("mkdir work")?;
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).context("chmod work")?;
    fs::set_permissions(cfg.dir(), fs::Permissions::from_mode(0o711)).context("chmod dir")?;
    let a = start(
        cfg,
        r#"
-- One set of options for a service that runs and a task that leaves a file behind.
local function with_options(argv)
  return { argv = argv, user = "nobody", group = "daemon", groups = {"nogroup", "users"},
           umask = "027", rlimits = {nofile = {64, 128}, core = {0, "infinity"}},
           nice = 7, cwd = "@DIR@/work",
           env = {GREETING = "hello world", ["ODD-NAME"] = "x", N = 5} }
end
service "opts" (with_options {"/bin/sleep", "100"})
task "maker" (with_options {"/usr/bin/touch", "made"})
"#,
    )?;
    let pid = pid_of(&a.wait_state("opts", ServiceState::Ready)?)?;
    wait_cmdline(pid, &["/bin/sleep", "100"])?;

    // Real, effective, saved and file system ids, all four.
    ensure_eq!(ids(pid, "Uid")?, vec![uid; 4], "the user of pid {pid}");
    ensure_eq!(ids(pid, "Gid")?, vec![gid; 4], "the group of pid {pid}");
    ensure_eq!(
        ids(pid, "Groups")?.into_iter().collect::<BTreeSet<u32>>(),
        BTreeSet::from(extra),
        "the supplementary groups of pid {pid}"
    );
    ensure_eq!(
        status_field(pid, "Umask")?,
        "0027",
        "the umask of pid {pid}"
    );
    ensure_eq!(
        limit(pid, "Max open files")?,
        ("64".to_string(), "128".to_string()),
        "nofile of pid {pid}"
    );
    ensure_eq!(
        limit(pid, "Max core file size")?,
        ("0".to_string(), "unlimited".to_string()),
        "core of pid {pid}"
    );
    ensure_eq!(nice_of(pid)?, 7, "the nice value of pid {pid}");
    ensure_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).context("readlink cwd")?,
        work,
        "the directory of pid {pid}"
    );
    let env = environ(pid)?;
    for want in [
        "GREETING=hello world",
        "ODD-NAME=x",
        "N=5",
        "ARCHON_SERVICE=opts",
    ] {
        ensure!(
            env.iter().any(|e| e == want),
            "the service's environment lacks {want}: {env:?}"
        );
    }

    // What the task made, it made as its user, in its directory, under its umask.
    a.wait_state("maker", ServiceState::Done)?;
    let made = fs::metadata(work.join("made")).context("the file the task made")?;
    ensure_eq!(
        (made.uid(), made.gid(), made.mode() & 0o777),
        (uid, gid, 0o640),
        "owner, group and mode of the file the task made"
    );
    Ok(())
}

#[test]
fn a_directory_the_user_cannot_enter_fails_the_start_with_the_reason() -> Result {
    // The config's temp dir is root's, mode 0700: nobody cannot enter it.
    let cfg = ConfigFile::new()?;
    let dir = cfg.dir().display().to_string();
    let a = start(
        cfg,
        r#"
service "locked" { argv = {"/bin/sleep", "100"}, user = "nobody", cwd = "@DIR@" }
service "fine" { argv = {"/bin/sleep", "100"}, user = "nobody" }
"#,
    )?;
    let locked = a.wait_state("locked", ServiceState::Failed)?;
    ensure_eq!(
        reason(&locked),
        format!("cannot change directory to {dir}: Permission denied"),
        "{}",
        show_row(&locked)
    );
    ensure_eq!(locked.pid, None, "{}", show_row(&locked));
    let fine = pid_of(&a.wait_state("fine", ServiceState::Ready)?)?;
    wait_cmdline(fine, &["/bin/sleep", "100"])?;
    // Without group and groups: the user's primary group, and the groups the database lists
    // the user in.
    ensure_eq!(
        (
            ids(fine, "Uid")?,
            ids(fine, "Gid")?,
            ids(fine, "Groups")?.into_iter().collect::<BTreeSet<u32>>()
        ),
        (
            vec![id_in("/etc/passwd", "nobody")?; 4],
            vec![field_of("/etc/passwd", "nobody", 3)?; 4],
            groups_of("nobody")?
        ),
        "the user, group and groups of pid {fine}"
    );
    a.wait_no_zombies()?;
    Ok(())
}
