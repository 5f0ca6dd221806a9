//! archon's wire format: the CSV line protocol spoken over its Unix socket.
//!
//! This crate is the one definition of the protocol; `archon-protocol(7)` is its specification.
//! A request is one CSV record (RFC 4180) ended by `\n`, fields are bytes, and every request gets
//! exactly one reply on the same connection, in request order. The layers, bottom up:
//!
//! - [`frame`]: where a record ends in a byte stream, with the grammar's errors;
//! - [`record`]: a record's fields, split and joined with the `csv` crate;
//! - [`command`]: the argv/env of `Run` and `StartDaemon`, in the simple and the explicit form;
//! - [`event`]: the record of one change (`History`'s rows, `Subscribe`'s stream) and the
//!   filters that choose records;
//! - [`log`]: a line a service wrote (`Logs`' rows, `FollowLogs`' stream) and its levels;
//! - [`request`] and [`reply`]: the typed messages; a request names a process by its id or a
//!   service by its name ([`Target`]);
//! - [`bind`]: the address of a `Bind`, and the line the `LD_PRELOAD` shim writes without
//!   allocating;
//! - [`signal`], [`name`], [`socket`], [`limits`]: signal names, the service name rule, the
//!   socket path rule, the limits.
//!
//! ```
//! use archon_proto::{Request, Command, Reply, Status};
//! let req = Request::parse(b"Run,/bin/sh,-c,exit 3").unwrap();
//! assert_eq!(req, Request::Run(Command::new(["/bin/sh", "-c", "exit 3"])));
//! assert_eq!(Reply::ExitStatus(Status::Exited(3)).encode(), b"ExitStatus,3\n");
//! ```
#![deny(missing_docs)]

#[macro_use]
mod macros;

pub mod bind;
pub mod command;
pub mod event;
pub mod frame;
pub mod limits;
pub mod log;
pub mod name;
pub mod record;
pub mod reply;
pub mod request;
pub mod signal;
pub mod socket;

pub use bind::{BindAddr, Transport};
pub use command::{Command, EnvEntry};
pub use event::{Cause, Event, EventKind, Filter, KindSet, StreamItem};
pub use frame::{Frame, FrameError, Framer};
pub use log::{LogLine, LogStream};
pub use reply::{
    Health, Kind, ProcState, ProcessRow, ReloadCounts, Reply, ReplyError, ReplyParser, ServiceKind,
    ServiceRow, ServiceState, Setting, Status, TreeNode,
};
pub use request::{Id, Power, Request, RequestError, Target};
