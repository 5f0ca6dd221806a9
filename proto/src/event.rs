//! Events: the record of one change of a service, a task or a process, as `History` sends its
//! rows and `Subscribe` its stream; and the filter (a subject pattern, a set of kinds) that
//! chooses records.
//!
//! A record is `Event,<seq>,<time>,<subject>,<kind>,<event>,<old>,<new>,<pid>,<status>,<reason>,
//! <uid>,<cpid>`: its number, when, what it is about (a service's or task's name, a process's
//! id, and which of those it is), what happened and the state before and after, the process
//! concerned and how it ended, why, and who caused it (the user and process id of the client
//! whose request it was, or both empty when archon did it on its own). It is plain data, the
//! same value archon keeps, streams, and will hand to Lua handlers.

use std::fmt;

use crate::limits::{MAX_EVENT_REASON, MAX_PATTERN_LEN};
use crate::name;
use crate::record;
use crate::reply::{
    ReplyError, ServiceKind, ServiceState, Status, bad, check_row_name, kind, millis_from_field,
    millis_to_field, optional,
};
use crate::request::{parse_pid, parse_u64};

wire_enum! {
    /// What happened to a subject.
    EventKind {
        /// Asked to come up (by a request, at boot, as what a starting unit requires, or when
        /// its backoff is over): `stopped`, `failed`, `done` or `backoff` → `starting`.
        Start = "start",
        /// The first change a `Restart` makes: `ready` (or `running`) → `stopping`, or →
        /// `starting` when it was not running.
        Restart = "restart",
        /// Its process was started: `starting` → `running`; for a `Run` or a `StartDaemon`,
        /// none → `running`.
        Spawn = "spawn",
        /// archon began to watch a process (`Monitor`, `MonitorFD`): none → `running`.
        Watch = "watch",
        /// It said it is ready: `running` → `ready`.
        Ready = "ready",
        /// Asked to stop, by a request or by archon (not ready in time, watchdog, unhealthy,
        /// shutdown; the reason says): → `stopping`, or → `stopped` when it had no process.
        Stop = "stop",
        /// Its process ended; the status says how, the new state what comes of it.
        Exit = "exit",
        /// Given up without a process ending: it cannot be started, or something it requires
        /// cannot be.
        Fail = "fail",
        /// `Pause`: `running` or `ready` → `paused`.
        Pause = "pause",
        /// `Resume`: `paused` → what it was.
        Resume = "resume",
        /// A signal sent on request (`Signal`, and `Pause`/`Resume` of a process): the state
        /// does not change, the reason names the signal.
        Signal = "signal",
        /// A reload declared it: none → `stopped`.
        Add = "add",
        /// A reload removed it, and it is down: → none.
        Remove = "remove",
        /// A Lua handler of the configuration failed: an error, its instruction, time or
        /// memory budget spent, or an action it asked for refused. The subject is the handler
        /// (kind `lua`); the reason says what went wrong. archon goes on.
        Handler = "handler",
        /// A Lua handler logged a message (`archon.log`): the subject is the handler (kind
        /// `lua`), the reason the message.
        Note = "note",
        /// archon itself (subject `archon`, kind `archon`) hands its state to a new image of
        /// its program (`ReExec`, SIGQUIT): one event as it begins (once the new program has
        /// checked the state), one from the new image once it has taken over, or one from the
        /// old image when that failed; the reason says which.
        Reexec = "reexec",
    }
}

/// The `<uid>` field of an event caused by a Lua handler; its `<cpid>` field is the handler's
/// line.
pub const LUA_CAUSE: &[u8] = b"lua";

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Cause {
    /// archon, on its own: a process ended, a timer fired, a restart policy, boot, a signal to
    /// archon.
    #[default]
    Archon,
    /// A client's request, or what archon did on its behalf until it was done (the steps of a
    /// `Restart`, the units a `Start` brought up).
    Client {
        /// The client's user id (`SO_PEERCRED`).
        uid: u32,
        /// The client's process id, as archon sees it (0 for a process outside archon's pid
        /// namespace).
        pid: i32,
    },
    /// A Lua handler of the configuration, by the line of the `on`, `every` or `watch` call
    /// that declared it: what it asked for (`archon.start`, ...) and what archon did on its
    /// behalf until done.
    Lua {
        /// The line of the configuration file.
        line: u32,
    },
}

impl Cause {
    /// The two fields `<uid>,<cpid>`; both empty for archon; `lua,<line>` for a handler.
    pub fn to_fields(self) -> [Vec<u8>; 2] {
        match self {
            Cause::Archon => [Vec::new(), Vec::new()],
            Cause::Client { uid, pid } => {
                [uid.to_string().into_bytes(), pid.to_string().into_bytes()]
            }
            Cause::Lua { line } => [LUA_CAUSE.to_vec(), line.to_string().into_bytes()],
        }
    }

    /// Reads `<uid>,<cpid>`: both empty, both numbers, or `lua` and a line.
    pub fn from_fields(uid: &[u8], pid: &[u8]) -> Option<Cause> {
        if uid.is_empty() && pid.is_empty() {
            return Some(Cause::Archon);
        }
        if uid == LUA_CAUSE {
            let line = parse_u64(pid).and_then(|n| u32::try_from(n).ok())?;
            return Some(Cause::Lua { line });
        }
        Some(Cause::Client {
            uid: parse_u64(uid).and_then(|n| u32::try_from(n).ok())?,
            pid: parse_u64(pid).and_then(|n| i32::try_from(n).ok())?,
        })
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Archon => f.write_str("archon"),
            Cause::Client { uid, pid } => write!(f, "uid {uid} pid {pid}"),
            Cause::Lua { line } => write!(f, "lua:{line}"),
        }
    }
}

/// One change: a row of `History`, an item of a `Subscribe` stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// Its number: 1 for archon's first event, one more for each; never reused while archon
    /// runs, so a gap says that events were left out.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch; written as seconds with three decimals.
    pub time_ms: u64,
    /// A service's or task's name; a process's id, in decimal.
    pub subject: Vec<u8>,
    /// What the subject is.
    pub kind: ServiceKind,
    /// What happened.
    pub what: EventKind,
    /// Its state before; `None` (an empty field) when it was not known to archon before.
    pub old: Option<ServiceState>,
    /// Its state after; `None` (an empty field) when archon forgets it.
    pub new: Option<ServiceState>,
    /// The process concerned (for an `exit`, the one that ended); `None` when there is none.
    pub pid: Option<i32>,
    /// How the process ended, for an `exit`; `None` otherwise.
    pub status: Option<Status>,
    /// Why, for people; may be empty.
    pub reason: Vec<u8>,
    /// Who caused it.
    pub cause: Cause,
}

impl Event {
    /// The record's fields, `Event` first.
    pub fn to_fields(&self) -> [Vec<u8>; 13] {
        let word = |s: &str| s.as_bytes().to_vec();
        let opt_state = |s: Option<ServiceState>| s.map(|s| word(s.as_str())).unwrap_or_default();
        let [uid, cpid] = self.cause.to_fields();
        [
            word(kind::EVENT),
            self.seq.to_string().into_bytes(),
            millis_to_field(self.time_ms),
            self.subject.clone(),
            word(self.kind.as_str()),
            word(self.what.as_str()),
            opt_state(self.old),
            opt_state(self.new),
            self.pid
                .map(|p| p.to_string().into_bytes())
                .unwrap_or_default(),
            self.status.map(Status::to_field).unwrap_or_default(),
            self.reason.clone(),
            uid,
            cpid,
        ]
    }

    /// Appends the record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        record::join_into(self.to_fields(), out);
    }

    /// The record as one line.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Reads a record written by [`to_fields`](Self::to_fields).
    pub fn from_fields(fields: &[Vec<u8>]) -> Result<Event, ReplyError> {
        let [
            head,
            seq,
            time,
            subject,
            kind,
            what,
            old,
            new,
            pid,
            status,
            reason,
            uid,
            cpid,
        ] = fields
        else {
            return Err(bad("an Event row has 13 fields"));
        };
        if head != kind::EVENT.as_bytes() {
            return Err(bad("expected an Event row"));
        }
        let kind = ServiceKind::from_field(kind).ok_or_else(|| bad("kind"))?;
        check_row_name(subject, kind.is_process())?;
        let state = |field: &[u8], what: &str| {
            optional(
                field,
                |f| ServiceState::from_field(f).filter(|s| s.fits(kind)),
                what,
            )
        };
        Ok(Event {
            seq: parse_u64(seq).ok_or_else(|| bad("seq"))?,
            time_ms: millis_from_field(time).ok_or_else(|| bad("time"))?,
            subject: subject.clone(),
            kind,
            what: EventKind::from_field(what).ok_or_else(|| bad("event"))?,
            old: state(old, "old state")?,
            new: state(new, "new state")?,
            pid: optional(pid, parse_pid, "pid")?,
            status: optional(status, Status::from_field, "status")?,
            reason: reason.clone(),
            cause: Cause::from_fields(uid, cpid).ok_or_else(|| bad("cause"))?,
        })
    }
}

/// Cuts `reason` to at most [`MAX_EVENT_REASON`] bytes: a longer one keeps what fits before a
/// character boundary and ends with `...`.
pub fn clip_reason(reason: &mut Vec<u8>) {
    if reason.len() <= MAX_EVENT_REASON {
        return;
    }
    let mut end = MAX_EVENT_REASON - 3;
    // Back off over UTF-8 continuation bytes, so that a character is not cut in two.
    while end > 0 && reason[end] & 0xc0 == 0x80 {
        end -= 1;
    }
    reason.truncate(end);
    reason.extend_from_slice(b"...");
}

/// What a `Subscribe` connection receives after its `Ok`, one record each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamItem {
    /// `Event,...`: an event that matches the subscription.
    Event(Event),
    /// `Dropped,<n>`: `n` events that matched were left out here, because the subscriber did
    /// not read fast enough (see [`MAX_EVENT_BACKLOG`](crate::limits::MAX_EVENT_BACKLOG)).
    Dropped(u64),
    /// `Log,...`: a line of a `FollowLogs` stream.
    Log(crate::log::LogLine),
}

impl StreamItem {
    /// Appends the item's record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            StreamItem::Event(e) => e.encode_into(out),
            StreamItem::Log(l) => l.encode_into(out),
            StreamItem::Dropped(n) => {
                record::join_into([kind::DROPPED.as_bytes(), n.to_string().as_bytes()], out);
            }
        }
    }

    /// The item's record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Reads one record of the stream.
    pub fn from_fields(fields: &[Vec<u8>]) -> Result<StreamItem, ReplyError> {
        match fields {
            [head, n] if head == kind::DROPPED.as_bytes() => parse_u64(n)
                .filter(|&n| n > 0)
                .map(StreamItem::Dropped)
                .ok_or_else(|| bad("dropped count")),
            [head, ..] if head == kind::EVENT.as_bytes() => {
                Event::from_fields(fields).map(StreamItem::Event)
            }
            [head, ..] if head == kind::LOG.as_bytes() => {
                crate::log::LogLine::from_fields(fields).map(StreamItem::Log)
            }
            _ => Err(bad("expected an Event, a Log or a Dropped record")),
        }
    }
}

/// A set of event kinds and subject kinds: the `<kind>` field of `History` and `Subscribe`,
/// words joined by `|` (`exit|fail`, `daemon`, `stop|service`).
///
/// An event is in the set when its [`EventKind`] is among the event kinds named (or none is
/// named) and its subject's [`ServiceKind`] is among the subject kinds named (or none is). The
/// empty set, an empty field, takes every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KindSet {
    /// Bit `i` for `EventKind::ALL[i]`.
    events: u32,
    /// Bit `i` for `ServiceKind::ALL[i]`.
    subjects: u32,
}

fn bit<T: PartialEq>(all: &[T], item: &T) -> u32 {
    all.iter().position(|x| x == item).map_or(0, |i| 1 << i)
}

/// The word joining the kinds of a [`KindSet`].
pub const KIND_SEPARATOR: u8 = b'|';

impl KindSet {
    /// Every event.
    pub const ANY: KindSet = KindSet {
        events: 0,
        subjects: 0,
    };

    /// True when it takes every event.
    pub fn is_any(self) -> bool {
        self == KindSet::ANY
    }

    /// The set with `what` added.
    pub fn with_event(mut self, what: EventKind) -> KindSet {
        self.events |= bit(EventKind::ALL, &what);
        self
    }

    /// The set with `kind` added.
    pub fn with_subject(mut self, kind: ServiceKind) -> KindSet {
        self.subjects |= bit(ServiceKind::ALL, &kind);
        self
    }

    /// Whether an event of kind `what` about a subject of kind `kind` is in the set.
    pub fn matches(self, what: EventKind, kind: ServiceKind) -> bool {
        (self.events == 0 || self.events & bit(EventKind::ALL, &what) != 0)
            && (self.subjects == 0 || self.subjects & bit(ServiceKind::ALL, &kind) != 0)
    }

    /// Reads the field: empty for every event, else words joined by `|`, each an event kind or
    /// a subject kind. The error is the reason for `Error,bad kind: ...`.
    pub fn from_field(field: &[u8]) -> Result<KindSet, String> {
        let mut set = KindSet::ANY;
        if field.is_empty() {
            return Ok(set);
        }
        for word in field.split(|&b| b == KIND_SEPARATOR) {
            if let Some(what) = EventKind::from_field(word) {
                set = set.with_event(what);
            } else if let Some(kind) = ServiceKind::from_field(word) {
                set = set.with_subject(kind);
            } else {
                let shown = String::from_utf8_lossy(word);
                return Err(if word.is_empty() {
                    "an empty word between '|'".to_string()
                } else {
                    format!(
                        "'{}' is no event kind or subject kind",
                        shown.escape_debug()
                    )
                });
            }
        }
        Ok(set)
    }

    /// The field: the event kinds, then the subject kinds, in the order of their declaration,
    /// joined by `|`; empty for every event.
    pub fn to_field(self) -> Vec<u8> {
        let events = EventKind::ALL
            .iter()
            .filter(|k| self.events & bit(EventKind::ALL, k) != 0)
            .map(|k| k.as_str());
        let subjects = ServiceKind::ALL
            .iter()
            .filter(|k| self.subjects & bit(ServiceKind::ALL, k) != 0)
            .map(|k| k.as_str());
        let words: Vec<&str> = events.chain(subjects).collect();
        words.join("|").into_bytes()
    }
}

/// Which events a `History` or a `Subscribe` asks for: a pattern for the subject and a
/// [`KindSet`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Filter {
    /// A glob matched against the subject ([`glob_match`]); empty for every subject.
    pub subject: Vec<u8>,
    /// The kinds of events.
    pub kinds: KindSet,
}

impl Filter {
    /// Every event.
    pub fn any() -> Filter {
        Filter::default()
    }

    /// Whether `event` is one the filter asks for.
    pub fn matches(&self, event: &Event) -> bool {
        self.kinds.matches(event.what, event.kind)
            && (self.subject.is_empty() || glob_match(&self.subject, &event.subject))
    }
}

/// Checks a subject pattern: at most [`MAX_PATTERN_LEN`] bytes, each one a name may hold
/// ([`name`]'s rule: letters, digits, `_ . @ : -`) or `*` or `?`. A pattern that no name could
/// match is refused rather than matching nothing. The error is the reason for
/// `Error,bad subject pattern: ...`.
pub fn check_pattern(pattern: &[u8]) -> Result<(), String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "at most {MAX_PATTERN_LEN} bytes, this one has {}",
            pattern.len()
        ));
    }
    match pattern
        .iter()
        .find(|&&b| !(name::allowed(b) || b == b'*' || b == b'?'))
    {
        None => Ok(()),
        Some(&b) if b.is_ascii_graphic() || b == b' ' => Err(format!(
            "'{}' is not allowed (only name bytes, '*' and '?')",
            b as char
        )),
        Some(&b) => Err(format!(
            "byte 0x{b:02x} is not allowed (only name bytes, '*' and '?')"
        )),
    }
}

/// Whether `text` matches the glob `pattern`, byte by byte: `*` matches any run of bytes (the
/// empty one too), `?` any one byte, every other byte itself. There is no escape and no
/// bracket: names cannot hold `*`, `?`, `[` or `\`.
///
/// It backtracks only to the last `*` seen, so it takes at most `pattern.len() * text.len()`
/// steps, never exponential time.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the text it has taken.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` take one byte more, and try again after it.
                Some((after, taken)) => {
                    star = Some((after, taken + 1));
                    p = after;
                    t = taken + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, Framer};

    #[test]
    fn globs() {
        let cases: &[(&str, &str, bool)] = &[
            ("", "", true),
            ("", "a", false),
            ("*", "", true),
            ("*", "web", true),
            ("web", "web", true),
            ("web", "web1", false),
            ("web*", "web", true),
            ("web*", "web-1", true),
            ("web*", "we", false),
            ("*db", "db", true),
            ("*db", "mydb", true),
            ("*db", "dbx", false),
            ("w?b", "web", true),
            ("w?b", "wb", false),
            ("w?b", "weeb", false),
            ("?", "", false),
            ("??", "ab", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXcYb", false),
            ("a*b*c", "abcbc", true),
            ("*a*", "banana", true),
            ("*x*", "banana", false),
            ("**", "x", true),
            ("a**b", "ab", true),
            ("*?", "", false),
            ("*?", "a", true),
            ("getty@tty?", "getty@tty1", true),
            ("getty@*", "getty@", true),
            ("1*", "12", true),
            ("1?", "1", false),
            ("*.svc", "a.svc", true),
            ("*-*-*", "a-b", false),
        ];
        for &(pattern, text, want) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern:?} on {text:?}"
            );
        }
    }

    #[test]
    fn globs_take_polynomial_time() {
        // A pattern that makes a naive backtracking matcher exponential.
        let pattern = "*a".repeat(20) + "b";
        let text = "a".repeat(64);
        assert!(!glob_match(pattern.as_bytes(), text.as_bytes()));
    }

    #[test]
    fn patterns_are_checked() {
        for good in [
            "",
            "*",
            "web*",
            "w?b",
            "getty@tty1",
            "1*",
            &"*".repeat(MAX_PATTERN_LEN),
        ] {
            assert_eq!(check_pattern(good.as_bytes()), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        let cases: [(&[u8], &str); 4] = [
            (long.as_bytes(), "at most 256 bytes, this one has 257"),
            (b"a/b", "'/' is not allowed (only name bytes, '*' and '?')"),
            (b"[ab]", "'[' is not allowed (only name bytes, '*' and '?')"),
            (
                b"a\nb",
                "byte 0x0a is not allowed (only name bytes, '*' and '?')",
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(check_pattern(bad), Err(why.to_string()));
        }
    }

    #[test]
    fn kind_sets() {
        let set = |s: &str| KindSet::from_field(s.as_bytes());
        assert_eq!(set(""), Ok(KindSet::ANY));
        let exits = KindSet::ANY.with_event(EventKind::Exit);
        assert_eq!(set("exit"), Ok(exits));
        assert_eq!(set("stop|exit|exit"), Ok(exits.with_event(EventKind::Stop)));
        let daemon_exits = exits.with_subject(ServiceKind::Daemon);
        assert_eq!(set("daemon|exit"), Ok(daemon_exits));
        assert_eq!(daemon_exits.to_field(), b"exit|daemon");
        assert_eq!(KindSet::ANY.to_field(), b"");
        assert!(KindSet::ANY.matches(EventKind::Add, ServiceKind::Task));
        assert!(exits.matches(EventKind::Exit, ServiceKind::Service));
        assert!(!exits.matches(EventKind::Stop, ServiceKind::Service));
        assert!(daemon_exits.matches(EventKind::Exit, ServiceKind::Daemon));
        assert!(!daemon_exits.matches(EventKind::Exit, ServiceKind::Run));
        assert!(!daemon_exits.matches(EventKind::Spawn, ServiceKind::Daemon));
        let services = KindSet::ANY.with_subject(ServiceKind::Service);
        assert!(services.matches(EventKind::Ready, ServiceKind::Service));
        assert!(!services.matches(EventKind::Ready, ServiceKind::Task));
        assert_eq!(
            set("exit|nope"),
            Err("'nope' is no event kind or subject kind".to_string())
        );
        assert_eq!(set("Exit").map_err(|_| ()), Err(()));
        assert_eq!(set("exit|"), Err("an empty word between '|'".to_string()));
        for k in EventKind::ALL {
            let one = KindSet::ANY.with_event(*k);
            assert_eq!(KindSet::from_field(&one.to_field()), Ok(one));
        }
        for k in ServiceKind::ALL {
            let one = KindSet::ANY.with_subject(*k);
            assert_eq!(KindSet::from_field(&one.to_field()), Ok(one));
        }
    }

    fn crash() -> Event {
        Event {
            seq: 17,
            time_ms: 1_795_310_701_093,
            subject: b"web".to_vec(),
            kind: ServiceKind::Service,
            what: EventKind::Exit,
            old: Some(ServiceState::Ready),
            new: Some(ServiceState::Backoff),
            pid: Some(4242),
            status: Some(Status::Signaled(9)),
            reason: b"killed by SIGKILL".to_vec(),
            cause: Cause::Archon,
        }
    }

    fn stop_by_client() -> Event {
        Event {
            seq: 3,
            time_ms: 5,
            subject: b"12".to_vec(),
            kind: ServiceKind::Daemon,
            what: EventKind::Stop,
            old: Some(ServiceState::Running),
            new: Some(ServiceState::Stopping),
            pid: Some(77),
            status: None,
            reason: b"a, \"quoted\"\nreason".to_vec(),
            cause: Cause::Client { uid: 1000, pid: 0 },
        }
    }

    fn read_back(line: &[u8]) -> Result<StreamItem, ReplyError> {
        let Frame::Record { body, consumed } = Framer::default().next_frame(line) else {
            return Err(bad("frame"));
        };
        assert_eq!(consumed, line.len());
        StreamItem::from_fields(&record::split(&line[..body]))
    }

    #[test]
    fn wire_forms() {
        assert_eq!(
            crash().encode(),
            b"Event,17,1795310701.093,web,service,exit,ready,backoff,4242,SIGKILL,killed by SIGKILL,,\n"
        );
        assert_eq!(
            stop_by_client().encode(),
            &b"Event,3,0.005,12,daemon,stop,running,stopping,77,,\"a, \"\"quoted\"\"\nreason\",1000,0\n"[..]
        );
        let added = Event {
            what: EventKind::Add,
            old: None,
            new: Some(ServiceState::Stopped),
            pid: None,
            status: None,
            reason: Vec::new(),
            ..crash()
        };
        assert_eq!(
            added.encode(),
            b"Event,17,1795310701.093,web,service,add,,stopped,,,,,\n"
        );
        assert_eq!(StreamItem::Dropped(12).encode(), b"Dropped,12\n");
        assert_eq!(Cause::Archon.to_string(), "archon");
        assert_eq!(
            Cause::Client { uid: 0, pid: 42 }.to_string(),
            "uid 0 pid 42"
        );
        assert_eq!(Cause::Lua { line: 12 }.to_string(), "lua:12");
        let failed = Event {
            subject: b"archon.lua:12".to_vec(),
            kind: ServiceKind::Lua,
            what: EventKind::Handler,
            old: None,
            new: None,
            pid: None,
            status: None,
            reason: b"over 1000000 instructions".to_vec(),
            cause: Cause::Lua { line: 12 },
            ..crash()
        };
        assert_eq!(
            failed.encode(),
            b"Event,17,1795310701.093,archon.lua:12,lua,handler,,,,,over 1000000 instructions,lua,12\n"
        );
        assert_eq!(read_back(&failed.encode()), Ok(StreamItem::Event(failed)));
    }

    #[test]
    fn events_round_trip() {
        let removed = Event {
            what: EventKind::Remove,
            old: Some(ServiceState::Failed),
            new: None,
            cause: Cause::Client {
                uid: u32::MAX,
                pid: i32::MAX,
            },
            ..crash()
        };
        for item in [
            StreamItem::Event(crash()),
            StreamItem::Event(stop_by_client()),
            StreamItem::Event(removed),
            StreamItem::Dropped(1),
            StreamItem::Dropped(u64::MAX),
        ] {
            assert_eq!(read_back(&item.encode()), Ok(item));
        }
    }

    #[test]
    fn malformed_events_are_errors() {
        let good = "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,,";
        assert!(read_back(format!("{good}\n").as_bytes()).is_ok());
        for line in [
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,,,",
            "Event,x,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,,",
            "Event,17,1.09,web,service,exit,ready,backoff,4242,SIGKILL,x,,",
            "Event,17,1.093,,service,exit,ready,backoff,4242,SIGKILL,x,,",
            "Event,17,1.093,12,service,exit,ready,backoff,4242,SIGKILL,x,,",
            "Event,17,1.093,web,daemon,exit,ready,backoff,4242,SIGKILL,x,,",
            "Event,17,1.093,web,unit,exit,ready,backoff,4242,SIGKILL,x,,",
            "Event,17,1.093,web,service,boom,ready,backoff,4242,SIGKILL,x,,",
            "Event,17,1.093,web,service,exit,exited,backoff,4242,SIGKILL,x,,",
            "Event,17,1.093,web,service,exit,ready,nope,4242,SIGKILL,x,,",
            "Event,17,1.093,web,service,exit,ready,backoff,0,SIGKILL,x,,",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,-,x,,",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,1,",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,,1",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,-1,1",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,1,2147483648",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,lua,",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,lua,x",
            "Event,17,1.093,web,service,exit,ready,backoff,4242,SIGKILL,x,luA,1",
            "Dropped,0",
            "Dropped,x",
            "Dropped",
            "Dropped,1,2",
            "Pong",
            "",
        ] {
            assert!(read_back(format!("{line}\n").as_bytes()).is_err(), "{line}");
        }
    }

    #[test]
    fn filters_match_subject_and_kind() {
        let f = |subject: &str, kinds: &str| Filter {
            subject: subject.as_bytes().to_vec(),
            kinds: KindSet::from_field(kinds.as_bytes()).unwrap_or_default(),
        };
        let (crash, stop) = (crash(), stop_by_client());
        assert!(Filter::any().matches(&crash) && Filter::any().matches(&stop));
        assert!(f("w*", "").matches(&crash));
        assert!(!f("w*", "").matches(&stop));
        assert!(f("1?", "").matches(&stop));
        assert!(f("", "exit").matches(&crash));
        assert!(!f("", "exit").matches(&stop));
        assert!(f("*", "stop|daemon").matches(&stop));
        assert!(!f("*", "stop|service").matches(&stop));
        assert!(!f("web", "stop").matches(&crash));
    }

    #[test]
    fn reasons_are_clipped_at_a_character() {
        let mut short = b"exited with code 1".to_vec();
        clip_reason(&mut short);
        assert_eq!(short, b"exited with code 1");
        let mut long = "é".repeat(MAX_EVENT_REASON).into_bytes();
        clip_reason(&mut long);
        assert!(long.len() <= MAX_EVENT_REASON);
        assert!(long.ends_with(b"..."));
        assert!(std::str::from_utf8(&long).is_ok());
        let mut exact = vec![b'x'; MAX_EVENT_REASON];
        clip_reason(&mut exact);
        assert_eq!(exact.len(), MAX_EVENT_REASON);
        assert!(!exact.ends_with(b"..."));
    }
}
