//! A unit's life as it crosses a re-execution of archon (see [`crate::reexec`]): everything the
//! manager knows of a unit but its configuration, which the new image reads again from the file
//! and matches by name.
//!
//! A unit whose process is being spawned is never carried: archon refuses to re-execute while
//! an exec is pending, so `spawning` and `respawn` are always false here.

use std::collections::VecDeque;

use archon_lua::Config;
use archon_proto::{Cause, EventKind, Status};

use super::{AfterStop, Health, Manager, State, Unit, UnitId, Waiter, Want};
use crate::reexec::{Cursor, FormatError, num, read_opt_pid};
use crate::table::ReplyTo;

/// Every state, to read one back by its name.
const STATES: [State; 9] = [
    State::Stopped,
    State::Starting,
    State::Running,
    State::Ready,
    State::Stopping,
    State::Backoff,
    State::Failed,
    State::Done,
    State::Paused,
];

const HEALTHS: [(Health, &str); 4] = [
    (Health::None, "none"),
    (Health::Starting, "starting"),
    (Health::Healthy, "healthy"),
    (Health::Unhealthy, "unhealthy"),
];

/// The life of one unit, without its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Carried {
    state: State,
    want: Want,
    pid: Option<i32>,
    since_ms: u64,
    started_ms: u64,
    restarts: u32,
    consecutive: u32,
    recent: Vec<u64>,
    last: Option<Status>,
    ready: bool,
    health: Health,
    health_fails: u32,
    reason: String,
    after_stop: AfterStop,
    stop_timeout_ms: Option<u64>,
    paused_from: State,
    removing: bool,
    restart_pending: bool,
    waiters: Vec<Waiter>,
    status_text: String,
    last_pid: Option<i32>,
    by: Cause,
    stop_what: EventKind,
    stop_why: String,
    removed_by: Cause,
}

impl Carried {
    /// Its main process, if it has one.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Its fields, for one record.
    pub fn to_fields(&self) -> Vec<Vec<u8>> {
        let opt = |n: Option<u64>| n.map(num).unwrap_or_default();
        let text = |s: &str| s.as_bytes().to_vec();
        let flag = |b: bool| num(u64::from(b));
        let [by_uid, by_pid] = self.by.to_fields();
        let [rm_uid, rm_pid] = self.removed_by.to_fields();
        let (after, after_why) = match &self.after_stop {
            AfterStop::Rest => ("rest", ""),
            AfterStop::Start => ("start", ""),
            AfterStop::Failure(why) => ("failure", why.as_str()),
        };
        let mut f = vec![
            text(self.state.name()),
            text(if self.want == Want::Up { "up" } else { "down" }),
            opt(self.pid.map(|p| p as u64)),
            num(self.since_ms),
            num(self.started_ms),
            num(u64::from(self.restarts)),
            num(u64::from(self.consecutive)),
            self.last.map(Status::to_field).unwrap_or_default(),
            flag(self.ready),
            text(health_name(self.health)),
            num(u64::from(self.health_fails)),
            text(&self.reason),
            text(after),
            text(after_why),
            opt(self.stop_timeout_ms),
            text(self.paused_from.name()),
            flag(self.removing),
            flag(self.restart_pending),
            text(&self.status_text),
            opt(self.last_pid.map(|p| p as u64)),
            by_uid,
            by_pid,
            text(self.stop_what.as_str()),
            text(&self.stop_why),
            rm_uid,
            rm_pid,
            num(self.recent.len() as u64),
        ];
        f.extend(self.recent.iter().map(|&t| num(t)));
        for w in &self.waiters {
            let (kind, to) = match w {
                Waiter::Up(to) => ("up", to),
                Waiter::Down(to) => ("down", to),
            };
            f.extend([text(kind), num(to.client), num(to.seq)]);
        }
        f
    }

    /// Reads what [`to_fields`](Self::to_fields) wrote.
    pub fn from_fields(c: &mut Cursor<'_>) -> Result<Carried, FormatError> {
        let state = |c: &mut Cursor<'_>| {
            let name = c.bytes()?;
            STATES
                .into_iter()
                .find(|s| s.name().as_bytes() == name)
                .ok_or_else(|| c.bad("unit state"))
        };
        let cause = |c: &mut Cursor<'_>| {
            let (uid, pid) = (c.bytes()?, c.bytes()?);
            Cause::from_fields(uid, pid).ok_or_else(|| c.bad("cause"))
        };
        let st = state(c)?;
        let want = match c.bytes()? {
            b"up" => Want::Up,
            b"down" => Want::Down,
            _ => return Err(c.bad("want")),
        };
        let pid = read_opt_pid(c)?;
        let since_ms = c.num()?;
        let started_ms = c.num()?;
        let restarts = c.num()?;
        let consecutive = c.num()?;
        let last = c.opt_with(Status::from_field, "status")?;
        let ready = c.flag()?;
        let health_name = c.bytes()?;
        let health = HEALTHS
            .iter()
            .find(|(_, n)| n.as_bytes() == health_name)
            .map(|(h, _)| *h)
            .ok_or_else(|| c.bad("health"))?;
        let health_fails = c.num()?;
        let reason = c.text()?;
        let after = c.bytes()?;
        let after_why = c.text()?;
        let after_stop = match after {
            b"rest" => AfterStop::Rest,
            b"start" => AfterStop::Start,
            b"failure" => AfterStop::Failure(after_why),
            _ => return Err(c.bad("after stop")),
        };
        let stop_timeout_ms = c.opt_num()?;
        let paused_from = state(c)?;
        let removing = c.flag()?;
        let restart_pending = c.flag()?;
        let status_text = c.text()?;
        let last_pid = read_opt_pid(c)?;
        let by = cause(c)?;
        let stop_what = c.with(EventKind::from_field, "event kind")?;
        let stop_why = c.text()?;
        let removed_by = cause(c)?;
        let n: usize = c.num()?;
        let mut recent = Vec::new();
        for _ in 0..n {
            recent.push(c.num()?);
        }
        let mut waiters = Vec::new();
        while !c.is_empty() {
            let kind = c.bytes()?;
            let to = ReplyTo {
                client: c.num()?,
                seq: c.num()?,
            };
            waiters.push(match kind {
                b"up" => Waiter::Up(to),
                b"down" => Waiter::Down(to),
                _ => return Err(c.bad("waiter")),
            });
        }
        Ok(Carried {
            state: st,
            want,
            pid,
            since_ms,
            started_ms,
            restarts,
            consecutive,
            recent,
            last,
            ready,
            health,
            health_fails,
            reason,
            after_stop,
            stop_timeout_ms,
            paused_from,
            removing,
            restart_pending,
            waiters,
            status_text,
            last_pid,
            by,
            stop_what,
            stop_why,
            removed_by,
        })
    }
}

fn health_name(h: Health) -> &'static str {
    HEALTHS
        .iter()
        .find(|(x, _)| *x == h)
        .map_or("none", |(_, n)| n)
}

impl Unit {
    fn carry(&self) -> Carried {
        Carried {
            state: self.state,
            want: self.want,
            pid: self.pid,
            since_ms: self.since_ms,
            started_ms: self.started_ms,
            restarts: self.restarts,
            consecutive: self.consecutive,
            recent: self.recent.iter().copied().collect(),
            last: self.last,
            ready: self.ready,
            health: self.health,
            health_fails: self.health_fails,
            reason: self.reason.clone(),
            after_stop: self.after_stop.clone(),
            stop_timeout_ms: self.stop_timeout_ms,
            paused_from: self.paused_from,
            removing: self.removing,
            restart_pending: self.restart_pending,
            waiters: self.waiters.clone(),
            status_text: self.status_text.clone(),
            last_pid: self.last_pid,
            by: self.by,
            stop_what: self.stop_what,
            stop_why: self.stop_why.clone(),
            removed_by: self.removed_by,
        }
    }

    fn take_over(&mut self, c: Carried) {
        self.state = c.state;
        self.want = c.want;
        self.pid = c.pid;
        self.since_ms = c.since_ms;
        self.started_ms = c.started_ms;
        self.restarts = c.restarts;
        self.consecutive = c.consecutive;
        self.recent = VecDeque::from(c.recent);
        self.last = c.last;
        self.ready = c.ready;
        self.health = c.health;
        self.health_fails = c.health_fails;
        self.reason = c.reason;
        self.after_stop = c.after_stop;
        self.stop_timeout_ms = c.stop_timeout_ms;
        self.paused_from = c.paused_from;
        self.removing = c.removing;
        self.restart_pending = c.restart_pending;
        self.waiters = c.waiters;
        self.status_text = c.status_text;
        self.last_pid = c.last_pid;
        self.by = c.by;
        self.stop_what = c.stop_what;
        self.stop_why = c.stop_why;
        self.removed_by = c.removed_by;
    }
}

impl Manager {
    /// The life of unit `id`, to carry across a re-execution; `None` for no such unit.
    pub fn carry(&self, id: UnitId) -> Option<Carried> {
        self.units.get(&id).map(|u| u.carry())
    }

    /// True while a unit's process is being started (its outcome not yet told).
    pub fn spawning(&self) -> bool {
        self.units.values().any(|u| u.spawning)
    }

    /// The manager of a new image of archon: every unit of `config`, those that were `carried`
    /// (matched by name) where they were, the others started as at boot when they start on
    /// their own. Returns the carried units the configuration no longer declares.
    pub fn restored(
        config: Config,
        carried: Vec<(String, Carried)>,
        now_ms: u64,
    ) -> (Manager, Vec<(String, Carried)>) {
        let mut m = Manager {
            next_id: 1,
            ..Manager::default()
        };
        for spec in config.services {
            m.insert(spec, now_ms);
        }
        m.link();
        let mut unknown = Vec::new();
        let mut taken = std::collections::BTreeSet::new();
        for (name, c) in carried {
            match m.by_name.get(&name).copied() {
                Some(id) if taken.insert(id) => {
                    if let Some(u) = m.units.get_mut(&id) {
                        u.take_over(c);
                    }
                }
                _ => unknown.push((name, c)),
            }
        }
        let fresh: Vec<UnitId> = m
            .units
            .iter()
            .filter(|(id, u)| !taken.contains(*id) && u.spec.enabled && u.spec.autostart)
            .map(|(&id, _)| id)
            .collect();
        for id in fresh {
            m.want_up(id, false, Cause::Archon, EventKind::Start, "", now_ms);
        }
        let all: Vec<UnitId> = m.units.keys().copied().collect();
        m.dirty.extend(all);
        m.settle(now_ms);
        (m, unknown)
    }
}

#[cfg(test)]
impl Carried {
    /// A life with every field set, for tests.
    pub(crate) fn sample() -> Carried {
        Carried {
            state: State::Stopping,
            want: Want::Up,
            pid: Some(42),
            since_ms: 5,
            started_ms: 4,
            restarts: 3,
            consecutive: 2,
            recent: vec![1, 2, 3],
            last: Some(Status::Signaled(9)),
            ready: true,
            health: Health::Unhealthy,
            health_fails: 7,
            reason: "a, \"quoted\"\nreason".into(),
            after_stop: AfterStop::Failure("watchdog".into()),
            stop_timeout_ms: Some(250),
            paused_from: State::Ready,
            removing: false,
            restart_pending: true,
            waiters: vec![
                Waiter::Up(ReplyTo { client: 1, seq: 2 }),
                Waiter::Down(ReplyTo { client: 3, seq: 4 }),
            ],
            status_text: "serving".into(),
            last_pid: Some(41),
            by: Cause::Client { uid: 0, pid: 77 },
            stop_what: EventKind::Restart,
            stop_why: String::new(),
            removed_by: Cause::Archon,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reexec::Cursor;

    #[test]
    fn a_life_reads_back_as_written() {
        let c = Carried::sample();
        let fields = c.to_fields();
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let mut cur = Cursor::new(&refs, "unit");
        assert_eq!(Carried::from_fields(&mut cur), Ok(c));
        // Cut short anywhere, it is an error, never a panic.
        for n in 0..refs.len() - 6 {
            let mut cur = Cursor::new(&refs[..n], "unit");
            assert!(Carried::from_fields(&mut cur).is_err(), "{n} fields");
        }
    }
}
