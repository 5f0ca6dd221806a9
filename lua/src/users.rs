//! `user`, `group` and `groups`, resolved to numbers when the file is loaded, so a service
//! never starts as a user that vanished, and the supervisor's child needs no lookups.

use nix::unistd::{Gid, Group, Uid, User, getgid, getgrouplist, getuid};

use crate::model::Credentials;
use crate::value::Res;

/// The most supplementary groups `setgroups` takes (Linux's `NGROUPS_MAX`).
const MAX_GROUPS: usize = 65536;

/// A user or group as written: a name or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Who {
    /// Looked up in the user or group database.
    Name(String),
    /// Taken as it is.
    Id(u32),
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Name(n) => write!(f, "\"{n}\""),
            Who::Id(i) => write!(f, "{i}"),
        }
    }
}

/// The identity for `user`, `group` and `groups` as written; `None` when none is given.
///
/// With `user`: its uid; the gid is `group`, else the user's primary group; the supplementary
/// groups are `groups`, else every group the database lists the user in. Without `user`, the
/// uid is archon's, the gid `group` or archon's, and the groups `groups` or just the gid.
pub(crate) fn credentials(
    user: Option<&Who>,
    group: Option<&Who>,
    groups: Option<&[Who]>,
) -> Res<Option<Credentials>> {
    if user.is_none() && group.is_none() && groups.is_none() {
        return Ok(None);
    }
    if let Some(list) = groups {
        if list.len() > MAX_GROUPS {
            return Err(format!(
                "groups lists {} groups; the kernel takes at most {MAX_GROUPS}",
                list.len()
            ));
        }
    }
    let group = group.map(gid).transpose()?;
    let groups = match groups {
        Some(list) => Some(dedup(list.iter().map(gid).collect::<Res<Vec<u32>>>()?)),
        None => None,
    };

    let Some(user) = user else {
        let gid = group.unwrap_or_else(|| getgid().as_raw());
        return Ok(Some(Credentials {
            uid: getuid().as_raw(),
            gid,
            groups: groups.unwrap_or_else(|| vec![gid]),
        }));
    };
    let (uid, entry) = match user {
        Who::Name(name) => match User::from_name(name) {
            Ok(Some(u)) => (u.uid.as_raw(), Some(u)),
            Ok(None) => return Err(format!("user {user} does not exist")),
            Err(e) => return Err(format!("looking up user {user}: {}", e.desc())),
        },
        Who::Id(id) => match User::from_uid(Uid::from_raw(*id)) {
            Ok(found) => (*id, found),
            Err(e) => return Err(format!("looking up user {user}: {}", e.desc())),
        },
    };
    let gid = match (group, &entry) {
        (Some(g), _) => g,
        (None, Some(u)) => u.gid.as_raw(),
        (None, None) => {
            return Err(format!(
                "user {user} is not in the user database, so it has no primary group: give \
                 group too"
            ));
        }
    };
    let groups = match (groups, &entry) {
        (Some(list), _) => list,
        (None, Some(u)) => match getgrouplist(&c_name(&u.name), Gid::from_raw(gid)) {
            Ok(list) => dedup(list.into_iter().map(Gid::as_raw).collect()),
            Err(e) => {
                return Err(format!("listing the groups of user {user}: {}", e.desc()));
            }
        },
        (None, None) => vec![gid],
    };
    Ok(Some(Credentials { uid, gid, groups }))
}

/// A name from the database as a C string. It has no NUL (it came from one); were it to, the
/// empty name would list no groups but the gid.
fn c_name(name: &str) -> std::ffi::CString {
    std::ffi::CString::new(name).unwrap_or_default()
}

/// The owner of a Unix socket's file: `owner`'s uid, and `group`, else the owner's primary
/// group (archon's when the owner is a number the database does not know). `None` when neither
/// is given; `group` alone keeps archon's uid.
pub(crate) fn owner(owner: Option<&Who>, group: Option<&Who>) -> Res<Option<(u32, u32)>> {
    let group = group.map(gid).transpose()?;
    let Some(owner) = owner else {
        return Ok(group.map(|g| (getuid().as_raw(), g)));
    };
    let (uid, primary) = match owner {
        Who::Name(name) => match User::from_name(name) {
            Ok(Some(u)) => (u.uid.as_raw(), Some(u.gid.as_raw())),
            Ok(None) => return Err(format!("user {owner} does not exist")),
            Err(e) => return Err(format!("looking up user {owner}: {}", e.desc())),
        },
        Who::Id(id) => match User::from_uid(Uid::from_raw(*id)) {
            Ok(found) => (*id, found.map(|u| u.gid.as_raw())),
            Err(e) => return Err(format!("looking up user {owner}: {}", e.desc())),
        },
    };
    let gid = group.or(primary).unwrap_or_else(|| getgid().as_raw());
    Ok(Some((uid, gid)))
}

fn gid(who: &Who) -> Res<u32> {
    match who {
        Who::Id(id) => Ok(*id),
        Who::Name(name) => match Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(format!("group {who} does not exist")),
            Err(e) => Err(format!("looking up group {who}: {}", e.desc())),
        },
    }
}

fn dedup(list: Vec<u32>) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    list.into_iter().filter(|g| seen.insert(*g)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Who {
        Who::Name(s.to_string())
    }

    #[test]
    fn nothing_given_is_none() {
        assert_eq!(credentials(None, None, None), Ok(None));
    }

    #[test]
    fn root_by_name_and_number() -> Res<()> {
        let by_name = credentials(Some(&name("root")), None, None)?;
        let by_id = credentials(Some(&Who::Id(0)), None, None)?;
        assert_eq!(by_name, by_id);
        let c = by_name.ok_or("no credentials")?;
        assert_eq!((c.uid, c.gid), (0, 0));
        assert!(c.groups.contains(&0), "{:?}", c.groups);
        Ok(())
    }

    #[test]
    fn explicit_group_and_groups_win() -> Res<()> {
        let c = credentials(
            Some(&name("root")),
            Some(&Who::Id(5)),
            Some(&[Who::Id(7), name("root"), Who::Id(7)]),
        )?;
        assert_eq!(
            c,
            Some(Credentials {
                uid: 0,
                gid: 5,
                groups: vec![7, 0]
            })
        );
        Ok(())
    }

    #[test]
    fn group_alone_keeps_archons_uid() -> Res<()> {
        let c = credentials(None, Some(&Who::Id(1234)), None)?;
        assert_eq!(
            c,
            Some(Credentials {
                uid: getuid().as_raw(),
                gid: 1234,
                groups: vec![1234]
            })
        );
        let c = credentials(None, None, Some(&[Who::Id(9)]))?;
        assert_eq!(
            c,
            Some(Credentials {
                uid: getuid().as_raw(),
                gid: getgid().as_raw(),
                groups: vec![9]
            })
        );
        Ok(())
    }

    #[test]
    fn too_many_groups() {
        let many = vec![Who::Id(1); MAX_GROUPS + 1];
        assert_eq!(
            credentials(None, None, Some(&many)),
            Err("groups lists 65537 groups; the kernel takes at most 65536".to_string())
        );
    }

    #[test]
    fn unknown_names_and_ids() {
        assert_eq!(
            credentials(Some(&name("no-such-user-archon")), None, None),
            Err("user \"no-such-user-archon\" does not exist".to_string())
        );
        assert_eq!(
            credentials(None, Some(&name("no-such-group-archon")), None),
            Err("group \"no-such-group-archon\" does not exist".to_string())
        );
        assert_eq!(
            credentials(Some(&Who::Id(3_999_999_999)), None, None),
            Err(
                "user 3999999999 is not in the user database, so it has no primary group: \
                 give group too"
                    .to_string()
            )
        );
        assert_eq!(
            credentials(Some(&Who::Id(3_999_999_999)), Some(&Who::Id(3)), None),
            Ok(Some(Credentials {
                uid: 3_999_999_999,
                gid: 3,
                groups: vec![3]
            }))
        );
    }
}
