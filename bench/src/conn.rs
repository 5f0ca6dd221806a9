//! A bare connection to archon: write request lines, read reply lines as bytes.
//!
//! The bench does not parse replies with `archon_proto`'s reply parser: it builds a `csv` reader
//! per record, which costs far more than archon's own work for a `Ping` and would be measured
//! as archon's. The replies the bench reads are plain (`Pong`, `ExitStatus,0`, `Ok,<id>,<pid>`,
//! `List` rows whose argv has no quoted field), so splitting at `\n` and `,` is exact here.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Bytes read from the socket at most per `read`.
const READ_CHUNK: usize = 64 * 1024;

/// How long a reply may take before the bench gives up instead of hanging (a `Stop` of 1000
/// daemons on a loaded machine included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// One connection, with the bytes read and not yet returned.
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Conn> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
        })
    }

    /// Sends `line`, which ends with `\n`.
    pub fn send(&mut self, line: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(line)
            .map_err(|e| format!("send to archon: {e}"))
    }

    /// The next reply line, without its `\n`.
    pub fn line(&mut self) -> Result<&[u8], String> {
        loop {
            if let Some(nl) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let line = self.start..self.start + nl;
                self.start += nl + 1;
                return Ok(&self.buf[line]);
            }
            self.buf.drain(..self.start);
            self.start = 0;
            let len = self.buf.len();
            self.buf.resize(len + READ_CHUNK, 0);
            match self.stream.read(&mut self.buf[len..]) {
                Ok(0) => {
                    self.buf.truncate(len);
                    return Err("archon closed the connection".to_string());
                }
                Ok(n) => self.buf.truncate(len + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(len),
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(format!("read from archon: {e}"));
                }
            }
        }
    }

    /// Sends `line` and checks that the reply is `expected` (both without `\n` compared).
    pub fn expect(&mut self, line: &[u8], expected: &[u8]) -> Result<(), String> {
        self.send(line)?;
        self.expect_reply(line, expected)
    }

    /// Reads a reply and checks that it is `expected`; `line` names the request in the error.
    pub fn expect_reply(&mut self, line: &[u8], expected: &[u8]) -> Result<(), String> {
        let reply = self.line()?;
        if reply == expected {
            Ok(())
        } else {
            Err(format!(
                "{} got {:?}, expected {:?}",
                String::from_utf8_lossy(line.trim_ascii_end()),
                String::from_utf8_lossy(reply),
                String::from_utf8_lossy(expected)
            ))
        }
    }

    /// Sends `line` and returns its reply's fields (split at `,`: the replies read here have no
    /// quoted field).
    pub fn fields(&mut self, line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.send(line)?;
        self.reply_fields()
    }

    /// The next reply's fields, split at `,`.
    pub fn reply_fields(&mut self) -> Result<Vec<Vec<u8>>, String> {
        Ok(self
            .line()?
            .split(|&b| b == b',')
            .map(<[u8]>::to_vec)
            .collect())
    }
}

/// A reply field as a decimal number.
pub fn number(field: Option<&Vec<u8>>) -> Option<u64> {
    std::str::from_utf8(field?).ok()?.parse().ok()
}
