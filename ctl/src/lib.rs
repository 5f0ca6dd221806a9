//! archon's client library: connect to archon's socket, send requests with descriptors attached,
//! read the replies.
//!
//! It is the code under `archonctl`, and it is kept plain for the C library and the `LD_PRELOAD`
//! shim that will sit on it: blocking `std` I/O on one `UnixStream`, no threads, no global state,
//! every error a value ([`Error`]). The wire format itself is `archon_proto`'s; this crate only
//! moves it.
//!
//! - [`client`] — [`Client`], a connection, with one method per request, and [`Subscription`],
//!   a connection turned into a stream of events;
//! - [`reader`] — [`ReplyReader`], replies out of a byte stream (pure);
//! - [`raw`] — [`RawLine`], a line typed by a user, framed as archon will frame it (pure);
//! - [`pidfd`] — [`pidfd_open`], for `MonitorFD`;
//! - [`error`] — [`Error`].
//!
//! ```no_run
//! use archon_ctl::Client;
//! use archon_proto::Command;
//! use std::os::fd::AsFd;
//!
//! let mut archon = Client::connect(None)?;
//! let (id, pid) = archon.start_daemon(&Command::new(["sleep", "100"]), &[])?;
//! let stdout = std::io::stdout();
//! let status = archon.run(&Command::new(["echo", "hi"]), &[std::io::stdin().as_fd(), stdout.as_fd()])?;
//! archon.stop(id, None)?;
//! # let _ = (pid, status);
//! # Ok::<(), archon_ctl::Error>(())
//! ```
#![deny(missing_docs)]

pub mod client;
pub mod error;
pub mod pidfd;
pub mod raw;
pub mod reader;
mod recv;
mod send;

pub use client::{Client, Subscription, resolve_socket};
pub use error::Error;
pub use pidfd::pidfd_open;
pub use raw::RawLine;
pub use reader::{Received, ReceivedItem, ReplyReader};
