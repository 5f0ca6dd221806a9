//! The protocol's limits, each a named constant with its unit.
//!
//! They are part of the wire format: `archon-protocol(7)` documents every one of them, and the
//! supervisor, the client library and the tests all read them from here.

/// Longest request line, in bytes, counting its terminating `\n` (64 KiB). A longer line gets
/// `Error,request too long` and the connection is closed after that reply.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// Most file descriptors one request may carry as `SCM_RIGHTS` ancillary data. A request that
/// carries more gets `Error,...` and every one of its descriptors is closed.
pub const MAX_FDS_PER_REQUEST: usize = 3;

/// Most descriptors archon can receive with one `recvmsg`: the kernel's `SCM_MAX_FD`. Sized so that
/// an oversized attachment is seen whole (and closed) rather than silently truncated.
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Most clients connected at once. A connection beyond this gets `Error,too many clients` and is
/// closed at once.
pub const MAX_CLIENTS: usize = 256;

/// Most connections to the bind socket at once, counted apart from [`MAX_CLIENTS`]: anyone on the
/// machine may connect there, and must not be able to keep archon's own clients out. A
/// connection beyond this gets `Error,too many clients` and is closed at once.
pub const MAX_BIND_CLIENTS: usize = 64;

/// How long a connection to the bind socket may stay open, in milliseconds (5 s). It takes one
/// request and is closed once the reply is out; one that has not sent a whole request by then
/// is closed without a reply.
pub const BIND_CONNECTION_MS: u64 = 5_000;

/// Most requests one connection may have in flight (sent, not yet answered). archon stops reading
/// from a connection that reaches it until replies have gone out: back-pressure, not an error.
pub const MAX_PIPELINED: usize = 64;

/// Most reply bytes archon queues for one connection that does not read them (1 MiB). Beyond it
/// archon stops reading that connection's requests; replies to requests already accepted (a `Run`
/// still going) are still queued, so the connection is closed only if they alone exceed
/// [`MAX_REPLY_BACKLOG_HARD`].
pub const MAX_REPLY_BACKLOG: usize = 1024 * 1024;

/// A connection whose unread replies exceed this many bytes (8 MiB) is closed: a client that never
/// reads cannot make archon's memory grow without bound.
pub const MAX_REPLY_BACKLOG_HARD: usize = 8 * 1024 * 1024;

/// Default most `Run` commands running at once (archon's `--max-runs`).
pub const DEFAULT_MAX_RUNS: usize = 64;

/// Default most `Run` requests waiting for a free slot (archon's `--run-queue`); beyond it a `Run`
/// gets `Error,busy`.
pub const DEFAULT_RUN_QUEUE: usize = 256;

/// Default grace period, in milliseconds, between SIGTERM and SIGKILL when a process is stopped
/// (7 s, as nitro's `TIMEOUT_SHUTDOWN`).
pub const DEFAULT_STOP_GRACE_MS: u64 = 7_000;

/// Longest grace period a `Stop` request may ask for, in milliseconds (one day).
pub const MAX_STOP_GRACE_MS: u64 = 24 * 60 * 60 * 1000;

/// Most ended processes whose record (pid, last status) archon keeps for `List` after they have
/// ended; the oldest record goes first.
pub const MAX_ENDED_KEPT: usize = 128;

/// Most exit actions (`OnExit`) one process may have waiting for its end (8). Beyond:
/// `Error,too many exit actions for <id> (limit 8)`, and nothing changes.
pub const MAX_EXIT_ACTIONS_PER_PROCESS: usize = 8;

/// Most exit actions waiting, over every process (256). Each holds a command of up to
/// [`MAX_REQUEST_LEN`] bytes, so this bounds what they cost archon (16 MiB at the very worst).
/// Beyond: `Error,too many exit actions waiting (limit 256)`, and nothing changes.
pub const MAX_EXIT_ACTIONS: usize = 256;

/// Most services and tasks one configuration may declare (16384). It bounds the rows of the
/// service replies: a `Status` reply has one row per service and task (so at most this many) and
/// one per process that `List` shows; a `Config` reply has one row per field of each service
/// and task.
pub const MAX_SERVICES: usize = 16_384;

/// Most rows of a `Tree` reply (65536), one per process. When the services asked about have more
/// processes than this, archon answers `Error,too many processes` instead, and a client reading a
/// `Tree,<n>` header with a larger `n` takes the reply as malformed.
pub const MAX_TREE_NODES: usize = 65_536;

/// Default number of events archon keeps for `History` (archon's `--history`): the newest ones,
/// the oldest forgotten first. Each costs about 100 bytes (its line), so the default history is
/// about 100 KiB: a thousand services starting make three thousand events, and a history that
/// kept them all would be most of archon's memory.
pub const DEFAULT_HISTORY: usize = 1024;

/// Most events `--history` may ask archon to keep (65536), and so the most rows of a `History`
/// reply; a client reading a `History,<n>` header with a larger `n` takes the reply as
/// malformed. An event takes about 200 bytes of archon's memory, at most about 700.
pub const MAX_HISTORY: usize = 65_536;

/// Most bytes of events archon queues for one subscriber that does not read them (64 KiB), on
/// top of what the kernel's socket buffer holds. Beyond it the events that follow are dropped
/// and counted, until what is queued has fallen to half of this; then a `Dropped,<n>` line says
/// how many were lost at that point of the stream, and events flow again. A subscriber is never
/// disconnected for being slow, and never makes archon's memory grow past this.
pub const MAX_EVENT_BACKLOG: usize = 64 * 1024;

/// Longest subject pattern of `History` and `Subscribe`, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;

/// Longest reason an event keeps, in bytes; a longer one is cut at a character boundary and ends
/// with `...`.
pub const MAX_EVENT_REASON: usize = 512;

/// Longest line of a service's output that archon keeps whole, in bytes (4 KiB, without its
/// `\n`). A longer one is cut there: the part kept is a `Log` row marked `cut`, and the rest
/// counts as the next line. It bounds what one service's partial line costs archon.
pub const MAX_LOG_LINE: usize = 4 * 1024;

/// Most bytes of rows one `Logs` reply holds (512 KiB): the newest lines that fit, so that the
/// reply stays under [`MAX_REPLY_BACKLOG`] whatever the ring's size.
pub const MAX_LOGS_REPLY: usize = 512 * 1024;

/// Most rows of a `Logs` reply, and most lines `Logs` and `FollowLogs` may ask for (65536);
/// a client reading a `Logs,<n>` header with a larger `n` takes the reply as malformed.
pub const MAX_LOG_ROWS: usize = 65_536;

/// The protocol's version, as `Version` reports it. Raised when a change is not backwards
/// compatible.
pub const PROTOCOL_VERSION: u32 = 1;
