//! Moving bytes between mux streams and the sockets a runtime owns, with back-pressure both ways.
//!
//! A *local* connection is a socket outside the core (a visitor's TCP connection, a connection to
//! a target service). Each is linked to one mux stream. Bytes read from the stream become
//! [`LocalOutput::Write`]s, at most `max_unflushed_bytes` ahead of what the runtime reports
//! flushed, so a slow socket stops stream reads and thereby the peer's credit. Bytes read from the
//! socket go into the stream up to its send buffer; when it is full the runtime is told to pause
//! reading (the return value of [`LocalRelays::local_data`]) and gets [`LocalOutput::ResumeRead`]
//! when there is room. FIN and reset travel both ways.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::mux::{Mux, ReadOutcome, StreamError};
use crate::time::Instant;
use crate::wire::{ResetReason, StreamId};

/// Identifies a local connection, chosen by the owner of the relays.
pub type LocalId = u64;

/// What the runtime must do with a local connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOutput {
    /// Write these bytes to the socket, then report them with `flushed`.
    Write {
        /// The connection.
        local: LocalId,
        /// The bytes.
        bytes: Bytes,
    },
    /// Shut down the socket's write side (the stream finished).
    Finish {
        /// The connection.
        local: LocalId,
    },
    /// Close the socket; `reset` = abortively (the stream was reset).
    Close {
        /// The connection.
        local: LocalId,
        /// Abort instead of a clean close.
        reset: bool,
    },
    /// Reading from the socket may resume (the stream has room again).
    ResumeRead {
        /// The connection.
        local: LocalId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    stream: StreamId,
    unflushed_bytes: usize,
    read_paused: bool,
    local_eof: bool,
    stream_eof: bool,
}

/// The local connections relayed over one mux.
#[derive(Debug)]
pub struct LocalRelays {
    links: BTreeMap<LocalId, Link>,
    by_stream: BTreeMap<StreamId, LocalId>,
    max_unflushed_bytes: usize,
    out: VecDeque<LocalOutput>,
}

impl LocalRelays {
    /// Relays that keep at most `max_unflushed_bytes` per socket in the runtime's hands.
    pub fn new(max_unflushed_bytes: usize) -> LocalRelays {
        LocalRelays {
            links: BTreeMap::new(),
            by_stream: BTreeMap::new(),
            max_unflushed_bytes: max_unflushed_bytes.max(1),
            out: VecDeque::new(),
        }
    }

    /// Links `local` to `stream`.
    pub fn attach(&mut self, local: LocalId, stream: StreamId) {
        self.links.insert(
            local,
            Link {
                stream,
                unflushed_bytes: 0,
                read_paused: false,
                local_eof: false,
                stream_eof: false,
            },
        );
        self.by_stream.insert(stream, local);
    }

    /// Number of linked local connections.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether no local connection is linked.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The local connection of `stream`.
    pub fn local_of(&self, stream: StreamId) -> Option<LocalId> {
        self.by_stream.get(&stream).copied()
    }

    /// The stream of `local`.
    pub fn stream_of(&self, local: LocalId) -> Option<StreamId> {
        self.links.get(&local).map(|l| l.stream)
    }

    /// Ids of linked local connections, ascending.
    pub fn locals(&self) -> impl Iterator<Item = LocalId> + '_ {
        self.links.keys().copied()
    }

    /// The next output for the runtime.
    pub fn poll_output(&mut self) -> Option<LocalOutput> {
        self.out.pop_front()
    }

    /// Bytes read from `local`'s socket. Returns how many the stream took; if fewer than given,
    /// the runtime must keep the rest, stop reading, and wait for `ResumeRead`.
    pub fn local_data(&mut self, mux: &mut Mux, local: LocalId, bytes: Bytes) -> usize {
        let Some(link) = self.links.get_mut(&local) else {
            return 0;
        };
        let len = bytes.len();
        match mux.send(link.stream, bytes) {
            Ok(taken) => {
                if taken < len {
                    link.read_paused = true;
                    mux.notify_writable(link.stream);
                }
                taken
            }
            Err(_) => 0,
        }
    }

    /// The socket's read side ended: finish the stream.
    pub fn local_eof(&mut self, mux: &mut Mux, local: LocalId) {
        let Some(link) = self.links.get_mut(&local) else {
            return;
        };
        if !link.local_eof {
            link.local_eof = true;
            let _ = mux.finish(link.stream);
            self.forget_if_done(local);
        }
    }

    /// The socket failed: reset the stream and forget the link.
    pub fn local_reset(&mut self, mux: &mut Mux, local: LocalId) {
        if let Some(link) = self.remove(local) {
            let _ = mux.reset(link.stream, ResetReason::TargetFailed);
        }
    }

    /// The runtime wrote `bytes` of earlier `Write`s to the socket: more may follow. Returns the
    /// stream if this call delivered its end (as [`LocalRelays::stream_readable`] does).
    pub fn flushed(
        &mut self,
        now: Instant,
        mux: &mut Mux,
        local: LocalId,
        bytes: usize,
    ) -> Option<StreamId> {
        let link = self.links.get_mut(&local)?;
        link.unflushed_bytes = link.unflushed_bytes.saturating_sub(bytes);
        let stream = link.stream;
        self.stream_readable(now, mux, stream).then_some(stream)
    }

    /// The stream has data or its end: move what the socket may take. Returns true when this
    /// call delivered the stream's end (a `Finish` output).
    pub fn stream_readable(&mut self, now: Instant, mux: &mut Mux, stream: StreamId) -> bool {
        let Some(&local) = self.by_stream.get(&stream) else {
            return false;
        };
        let max = self.max_unflushed_bytes;
        let Some(link) = self.links.get_mut(&local) else {
            return false;
        };
        let mut finished = false;
        while !link.stream_eof && link.unflushed_bytes < max {
            match mux.read(now, stream, max - link.unflushed_bytes) {
                Ok(ReadOutcome::Data(bytes)) => {
                    link.unflushed_bytes += bytes.len();
                    self.out.push_back(LocalOutput::Write { local, bytes });
                }
                Ok(ReadOutcome::Blocked) | Err(StreamError::WrongState) => return false,
                Ok(ReadOutcome::Finished) => {
                    link.stream_eof = true;
                    finished = true;
                    self.out.push_back(LocalOutput::Finish { local });
                }
                // The stream is gone without its end having been read: it was reset (the Reset
                // event is still queued behind this one). Never a clean close: that would pass
                // lost data off as complete.
                Err(StreamError::UnknownStream | StreamError::Finished) => {
                    self.remove(local);
                    self.out
                        .push_back(LocalOutput::Close { local, reset: true });
                    return false;
                }
            }
        }
        self.forget_if_done(local);
        finished
    }

    /// The stream has room again: reading the socket may resume.
    pub fn stream_writable(&mut self, stream: StreamId) {
        if let Some(&local) = self.by_stream.get(&stream)
            && let Some(link) = self.links.get_mut(&local)
            && link.read_paused
        {
            link.read_paused = false;
            self.out.push_back(LocalOutput::ResumeRead { local });
        }
    }

    /// The stream was reset (or refused): close the socket abortively.
    pub fn stream_reset(&mut self, stream: StreamId) {
        if let Some(&local) = self.by_stream.get(&stream) {
            self.remove(local);
            self.out
                .push_back(LocalOutput::Close { local, reset: true });
        }
    }

    /// Forgets every link (the session is gone) and closes their sockets abortively.
    pub fn reset_all(&mut self) {
        let locals: Vec<LocalId> = self.links.keys().copied().collect();
        for local in locals {
            self.remove(local);
            self.out
                .push_back(LocalOutput::Close { local, reset: true });
        }
    }

    fn forget_if_done(&mut self, local: LocalId) {
        if self
            .links
            .get(&local)
            .is_some_and(|l| l.local_eof && l.stream_eof)
        {
            self.remove(local);
            self.out.push_back(LocalOutput::Close {
                local,
                reset: false,
            });
        }
    }

    fn remove(&mut self, local: LocalId) -> Option<Link> {
        let link = self.links.remove(&local)?;
        self.by_stream.remove(&link.stream);
        Some(link)
    }

    /// Checks the two indexes agree and buffers respect the bound.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.links.len() != self.by_stream.len() {
            return Err("relay indexes differ in size".into());
        }
        for (local, link) in &self.links {
            if self.by_stream.get(&link.stream) != Some(local) {
                return Err(format!("local {local} not indexed by its stream"));
            }
            if link.unflushed_bytes > self.max_unflushed_bytes {
                return Err(format!(
                    "local {local}: {} bytes unflushed",
                    link.unflushed_bytes
                ));
            }
        }
        Ok(())
    }
}
