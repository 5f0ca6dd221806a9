//! Events: the history (a ring of the newest records, for `History`) and the subscribers (the
//! connections that `Subscribe` turned into streams), fed one record at a time by the loop.
//!
//! The manager and the process table make the records; the loop stamps nothing but their
//! number (here) and hands each one to [`Events::publish`], which keeps it and says which
//! subscribers want it, as one encoded line for all of them. What a subscriber has not read
//! waits in its connection's buffer ([`crate::control::Client::push_stream`]); this module
//! decides, from how much waits, whether the line goes there or is dropped and counted
//! ([`Events::offer`]), and when the count is told (`Dropped,<n>`). Pure bookkeeping: no
//! system call, tested without a socket.

use std::collections::{BTreeMap, VecDeque};

use archon_proto::event::clip_reason;
use archon_proto::limits::MAX_EVENT_BACKLOG;
use archon_proto::{Event, Filter, StreamItem, record};

use crate::table::ClientId;

/// The queued bytes under which a subscriber that lost events gets them counted, and events
/// again: half of [`MAX_EVENT_BACKLOG`], so that a slow reader sees a few long gaps rather than
/// one lost event in two.
const RESUME_BACKLOG: usize = MAX_EVENT_BACKLOG / 2;

/// One connection that streams events.
#[derive(Debug)]
pub struct Subscriber {
    filter: Filter,
    pace: Pace,
    /// In the list of connections to flush at the end of the loop's turn.
    touched: bool,
}

/// How a stream keeps up with a reader that may be slow: what it has dropped and not yet
/// told. Shared by the event streams here and the log streams ([`crate::logs`]).
#[derive(Debug, Default)]
pub struct Pace {
    /// Items dropped since the last `Dropped` line (or the start).
    dropped: u64,
}

impl Pace {
    /// An item of `len` bytes for a reader with `backlog` bytes unread. Without a loss
    /// pending, it goes if the backlog stays within [`MAX_EVENT_BACKLOG`] (or is empty); after
    /// a loss, items are dropped until the backlog is down to [`RESUME_BACKLOG`], and the next
    /// one goes after the count.
    pub fn offer(&mut self, backlog: usize, len: usize) -> Offer {
        let room = if self.dropped == 0 {
            backlog == 0 || backlog + len <= MAX_EVENT_BACKLOG
        } else {
            backlog <= RESUME_BACKLOG
        };
        if room {
            Offer::Send {
                dropped: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Offer::Drop
        }
    }

    /// The reader has read some: the count of the items it lost, when it is due (a loss is
    /// pending and the backlog is down to [`RESUME_BACKLOG`]).
    pub fn catch_up(&mut self, backlog: usize) -> Option<u64> {
        (self.dropped > 0 && backlog <= RESUME_BACKLOG).then(|| std::mem::take(&mut self.dropped))
    }
}

/// What to do with an event for one subscriber, given what waits unread on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queue it; first a `Dropped,<n>` line when `dropped` is not 0.
    Send {
        /// Events lost before this one.
        dropped: u64,
    },
    /// Drop it: the subscriber is too far behind. It is counted.
    Drop,
}

impl Subscriber {
    fn new(filter: Filter) -> Subscriber {
        Subscriber {
            filter,
            pace: Pace::default(),
            touched: false,
        }
    }

    /// An event of `len` bytes for a subscriber with `backlog` bytes unread (see
    /// [`Pace::offer`]).
    pub fn offer(&mut self, backlog: usize, len: usize) -> Offer {
        self.pace.offer(backlog, len)
    }

    /// The subscriber has read some: the count of the events it lost, when it is due.
    pub fn catch_up(&mut self, backlog: usize) -> Option<u64> {
        self.pace.catch_up(backlog)
    }
}

/// What [`Events::publish`] made of an event.
#[derive(Debug, Default)]
pub struct Published {
    /// The event's line, `Event,...\n`; empty when no subscriber wants it.
    pub line: Vec<u8>,
    /// The subscribers whose filter it matches.
    pub to: Vec<ClientId>,
}

/// The history and the subscribers.
#[derive(Debug)]
pub struct Events {
    next_seq: u64,
    /// The history, each event as its encoded line: about 80 bytes where the record with its
    /// strings takes twice that, for a ring that may hold tens of thousands.
    ring: VecDeque<Box<[u8]>>,
    capacity: usize,
    subscribers: BTreeMap<ClientId, Subscriber>,
    touched: Vec<ClientId>,
}

impl Events {
    /// No event yet; the history keeps the last `capacity` (none when 0).
    pub fn new(capacity: usize) -> Events {
        Events {
            next_seq: 1,
            ring: VecDeque::new(),
            capacity,
            subscribers: BTreeMap::new(),
            touched: Vec::new(),
        }
    }

    /// The history, oldest first, each event as its line (for a re-exec).
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.ring.iter().map(|l| &l[..])
    }

    /// The history and numbering carried across a re-exec: the next event is `next_seq`.
    pub fn restore(&mut self, next_seq: u64, lines: Vec<Vec<u8>>) {
        self.next_seq = next_seq.max(1);
        for line in lines {
            if self.capacity == 0 {
                break;
            }
            while self.ring.len() >= self.capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(line.into());
        }
    }

    /// The number the next event will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers `event`, keeps it in the history (forgetting the oldest beyond the capacity),
    /// and says which subscribers want it, with its line.
    pub fn publish(&mut self, mut event: Event) -> Published {
        event.seq = self.next_seq;
        self.next_seq += 1;
        clip_reason(&mut event.reason);
        let to: Vec<ClientId> = self
            .subscribers
            .iter()
            .filter(|(_, s)| s.filter.matches(&event))
            .map(|(&id, _)| id)
            .collect();
        if to.is_empty() && self.capacity == 0 {
            return Published {
                line: Vec::new(),
                to,
            };
        }
        let line = event.encode();
        if self.capacity > 0 {
            while self.ring.len() >= self.capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(line.as_slice().into());
        }
        if to.is_empty() {
            return Published {
                line: Vec::new(),
                to,
            };
        }
        Published { line, to }
    }

    /// The newest `max` events of the history (all when `None`) that `filter` matches, oldest
    /// first.
    pub fn history(&self, filter: &Filter, max: Option<usize>) -> Vec<Event> {
        let mut out: Vec<Event> = self
            .ring
            .iter()
            .rev()
            .filter_map(|line| {
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                Event::from_fields(&record::split(body)).ok()
            })
            .filter(|e| filter.matches(e))
            .take(max.unwrap_or(usize::MAX))
            .collect();
        out.reverse();
        out
    }

    /// Connection `id` streams the events `filter` matches from now on.
    pub fn subscribe(&mut self, id: ClientId, filter: Filter) {
        self.subscribers.insert(id, Subscriber::new(filter));
    }

    /// Connection `id` is gone.
    pub fn unsubscribe(&mut self, id: ClientId) {
        self.subscribers.remove(&id);
    }

    /// How many connections stream events.
    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    /// Whether subscriber `id`, which has `backlog` bytes unread, gets an event of `len` bytes
    /// (see [`Subscriber::offer`]); one that gets it is marked for the end-of-turn flush.
    pub fn offer(&mut self, id: ClientId, backlog: usize, len: usize) -> Offer {
        let Some(s) = self.subscribers.get_mut(&id) else {
            return Offer::Drop;
        };
        let offer = s.offer(backlog, len);
        if offer != Offer::Drop && !s.touched {
            s.touched = true;
            self.touched.push(id);
        }
        offer
    }

    /// The `Dropped,<n>` line for subscriber `id`, which has `backlog` bytes unread, when a
    /// count is due (see [`Subscriber::catch_up`]).
    pub fn catch_up(&mut self, id: ClientId, backlog: usize) -> Option<Vec<u8>> {
        let n = self.subscribers.get_mut(&id)?.catch_up(backlog)?;
        Some(StreamItem::Dropped(n).encode())
    }

    /// The subscribers given lines since the last call: to flush.
    pub fn take_touched(&mut self) -> Vec<ClientId> {
        for id in &self.touched {
            if let Some(s) = self.subscribers.get_mut(id) {
                s.touched = false;
            }
        }
        std::mem::take(&mut self.touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archon_proto::{Cause, EventKind, KindSet, ServiceKind, ServiceState, record};

    fn event(subject: &str, what: EventKind) -> Event {
        let process = subject.bytes().all(|b| b.is_ascii_digit());
        Event {
            seq: 0,
            time_ms: 1_000,
            subject: subject.as_bytes().to_vec(),
            kind: if process {
                ServiceKind::Daemon
            } else {
                ServiceKind::Service
            },
            what,
            old: None,
            new: Some(ServiceState::Running),
            pid: Some(10),
            status: None,
            reason: Vec::new(),
            cause: Cause::Archon,
        }
    }

    fn filter(subject: &str, kinds: &str) -> Filter {
        Filter {
            subject: subject.as_bytes().to_vec(),
            kinds: KindSet::from_field(kinds.as_bytes()).unwrap_or_default(),
        }
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_and_numbers_every_event() {
        let mut ev = Events::new(3);
        for i in 0..5 {
            ev.publish(event(&format!("s{i}"), EventKind::Start));
        }
        let all = ev.history(&Filter::any(), None);
        assert_eq!(seqs(&all), [3, 4, 5], "the two oldest are forgotten");
        assert_eq!(all[0].subject, b"s2");
        assert_eq!(ev.next_seq(), 6);
        assert_eq!(seqs(&ev.history(&Filter::any(), Some(2))), [4, 5]);
        assert_eq!(seqs(&ev.history(&Filter::any(), Some(10))), [3, 4, 5]);
        let mut none = Events::new(0);
        none.publish(event("a", EventKind::Start));
        assert!(none.history(&Filter::any(), None).is_empty());
        assert_eq!(none.next_seq(), 2, "numbered all the same");
    }

    #[test]
    fn history_filters_by_subject_and_kind_and_keeps_the_newest_matches() {
        let mut ev = Events::new(100);
        for (s, w) in [
            ("web1", EventKind::Start),
            ("db", EventKind::Start),
            ("web2", EventKind::Exit),
            ("7", EventKind::Spawn),
            ("web1", EventKind::Exit),
            ("7", EventKind::Exit),
        ] {
            ev.publish(event(s, w));
        }
        let got = |f: Filter, max| seqs(&ev.history(&f, max));
        assert_eq!(got(filter("web*", ""), None), [1, 3, 5]);
        assert_eq!(got(filter("", "exit"), None), [3, 5, 6]);
        assert_eq!(got(filter("", "exit|daemon"), None), [6]);
        assert_eq!(got(filter("w?b?", "exit"), Some(1)), [5]);
        assert_eq!(got(filter("?", ""), None), [4, 6]);
        assert!(got(filter("nope*", ""), None).is_empty());
    }

    #[test]
    fn publish_encodes_once_for_the_subscribers_that_match() {
        let mut ev = Events::new(10);
        let quiet = ev.publish(event("web", EventKind::Start));
        assert!(quiet.line.is_empty() && quiet.to.is_empty());
        ev.subscribe(1, Filter::any());
        ev.subscribe(2, filter("db", ""));
        ev.subscribe(3, filter("", "start"));
        let p = ev.publish(event("web", EventKind::Start));
        assert_eq!(p.to, [1, 3]);
        let fields = record::split(p.line.strip_suffix(b"\n").unwrap_or_default());
        assert_eq!(
            StreamItem::from_fields(&fields).map(|i| match i {
                StreamItem::Event(e) => e.seq,
                StreamItem::Dropped(_) | StreamItem::Log(_) => 0,
            }),
            Ok(2)
        );
        ev.unsubscribe(1);
        assert_eq!(ev.publish(event("db", EventKind::Exit)).to, [2]);
        assert_eq!(ev.subscribers(), 2);
    }

    #[test]
    fn reasons_are_clipped_when_published() {
        let mut ev = Events::new(1);
        let mut long = event("web", EventKind::Fail);
        long.reason = vec![b'x'; 10_000];
        ev.publish(long);
        let kept = ev.history(&Filter::any(), None);
        assert!(kept[0].reason.len() <= archon_proto::limits::MAX_EVENT_REASON);
    }

    #[test]
    fn a_slow_subscriber_loses_events_then_gets_their_count() {
        let mut s = Subscriber::new(Filter::any());
        let len = 100;
        assert_eq!(s.offer(0, len), Offer::Send { dropped: 0 });
        assert_eq!(
            s.offer(MAX_EVENT_BACKLOG - len, len),
            Offer::Send { dropped: 0 },
            "up to the limit"
        );
        assert_eq!(s.offer(MAX_EVENT_BACKLOG - len + 1, len), Offer::Drop);
        assert_eq!(s.offer(MAX_EVENT_BACKLOG, len), Offer::Drop);
        // Read a little: still dropping, until half is left.
        assert_eq!(s.offer(RESUME_BACKLOG + 1, len), Offer::Drop);
        assert_eq!(s.catch_up(RESUME_BACKLOG + 1), None);
        assert_eq!(s.offer(RESUME_BACKLOG, len), Offer::Send { dropped: 3 });
        assert_eq!(s.offer(RESUME_BACKLOG, len), Offer::Send { dropped: 0 });
        // A loss told by catch_up when no event comes.
        assert_eq!(s.offer(MAX_EVENT_BACKLOG, len), Offer::Drop);
        assert_eq!(s.catch_up(0), Some(1));
        assert_eq!(s.catch_up(0), None);
        // A line longer than the limit still goes to an empty queue.
        assert_eq!(
            s.offer(0, MAX_EVENT_BACKLOG * 2),
            Offer::Send { dropped: 0 }
        );
    }

    #[test]
    fn offers_mark_the_subscribers_to_flush() {
        let mut ev = Events::new(0);
        ev.subscribe(5, Filter::any());
        let send = Offer::Send { dropped: 0 };
        assert_eq!(ev.offer(5, 0, 10), send);
        assert_eq!(ev.offer(5, 0, 10), send);
        assert_eq!(ev.take_touched(), [5], "once per turn");
        assert!(ev.take_touched().is_empty());
        assert_eq!(ev.offer(5, MAX_EVENT_BACKLOG, 10), Offer::Drop);
        assert_eq!(ev.offer(5, MAX_EVENT_BACKLOG, 10), Offer::Drop);
        assert!(
            ev.take_touched().is_empty(),
            "nothing queued, nothing to flush"
        );
        assert_eq!(ev.offer(5, 0, 10), Offer::Send { dropped: 2 });
        assert_eq!(ev.offer(6, 0, 10), Offer::Drop, "not a subscriber");
        assert_eq!(ev.offer(5, MAX_EVENT_BACKLOG, 10), Offer::Drop);
        assert_eq!(ev.catch_up(5, 0), Some(b"Dropped,1\n".to_vec()));
        assert_eq!(ev.catch_up(5, 0), None);
    }
}
