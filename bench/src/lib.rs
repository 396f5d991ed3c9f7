//! Shared helpers of the tunnox benchmarks (see `benches/` and RESULTS.md).

use bytes::Bytes;
use tunnox_core::mux::{Mux, MuxConfig, MuxEvent, ReadOutcome, Role};
use tunnox_core::time::{Duration, Instant};
use tunnox_core::wire::{Decoder, StreamId};

/// A client and a node [`Mux`] back to back in memory, the client writing to the node.
///
/// Frames go through the real codec: each `Transmit` is written (header and payload) into the
/// receiver's [`Decoder`] buffer, the one copy that stands for the kernel's, then decoded and
/// handled; the node's application reads everything; WINDOW frames flow back to the client.
#[derive(Debug)]
pub struct MuxPair {
    client: Mux,
    node: Mux,
    to_node: Decoder,
    to_client: Decoder,
    now: Instant,
    streams: Vec<StreamId>,
    /// The rest of each stream's current application write.
    unsent: Vec<Bytes>,
    bytes_read: u64,
    bytes_asked: u64,
}

impl MuxPair {
    /// A pair with `config` on both sides and `stream_count` client-opened, accepted streams.
    pub fn new(config: MuxConfig, stream_count: usize) -> MuxPair {
        let mut pair = MuxPair {
            client: Mux::new(Role::Client, config.clone(), config.settings()),
            node: Mux::new(Role::Node, config.clone(), config.settings()),
            to_node: Decoder::new(config.max_frame_payload_bytes),
            to_client: Decoder::new(config.max_frame_payload_bytes),
            now: Instant::ZERO,
            streams: Vec::with_capacity(stream_count),
            unsent: Vec::with_capacity(stream_count),
            bytes_read: 0,
            bytes_asked: 0,
        };
        for _ in 0..stream_count {
            // A fresh mux with default limits has room for any benchmark's streams.
            if let Ok(id) = pair.client.open(Bytes::new()) {
                pair.streams.push(id);
                pair.unsent.push(Bytes::new());
            }
        }
        pair.round(&Bytes::new());
        pair
    }

    /// Bytes the node's application has read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Moves `bytes` more application bytes from client to node, writing `chunk`s. A round may
    /// move more than asked; the surplus counts toward the next call, so over many calls exactly
    /// the bytes asked for are moved (what a throughput benchmark needs).
    pub fn transfer(&mut self, chunk: &Bytes, bytes: u64) {
        self.bytes_asked += bytes;
        let mut idle_rounds = 0;
        while self.bytes_read < self.bytes_asked {
            let before = self.bytes_read;
            self.round(chunk);
            idle_rounds = if self.bytes_read == before {
                idle_rounds + 1
            } else {
                0
            };
            assert!(idle_rounds < 1000, "the mux pair stalled");
        }
    }

    /// One round: the client tops up every stream with `chunk`s, its frames reach the node, the
    /// node reads everything, its frames reach the client.
    fn round(&mut self, chunk: &Bytes) {
        self.now = self.now + Duration::from_micros(50);
        for (stream, unsent) in self.streams.iter().zip(self.unsent.iter_mut()) {
            loop {
                if unsent.is_empty() {
                    if chunk.is_empty() {
                        break;
                    }
                    *unsent = chunk.clone();
                }
                let taken = self.client.send(*stream, unsent.clone()).unwrap_or(0);
                if taken == 0 {
                    break;
                }
                let _ = unsent.split_to(taken);
            }
        }
        carry(
            &mut self.client,
            &mut self.to_node,
            &mut self.node,
            self.now,
        );
        while let Some(event) = self.node.poll_event() {
            if let MuxEvent::Incoming { stream, .. } = event {
                let _ = self.node.accept(stream, Bytes::new());
            }
        }
        for stream in &self.streams {
            while let Ok(ReadOutcome::Data(bytes)) = self.node.read(self.now, *stream, usize::MAX) {
                self.bytes_read += bytes.len() as u64;
            }
        }
        carry(
            &mut self.node,
            &mut self.to_client,
            &mut self.client,
            self.now,
        );
        while self.client.poll_event().is_some() {}
    }
}

/// Writes every frame `from` has into `decoder` and hands what it decodes to `to`.
fn carry(from: &mut Mux, decoder: &mut Decoder, to: &mut Mux, now: Instant) {
    while let Some(t) = from.poll_transmit() {
        let buf = decoder.buffer_mut();
        buf.extend_from_slice(&t.header);
        buf.extend_from_slice(&t.payload);
    }
    while let Ok(Some(frame)) = decoder.decode() {
        // Both sides are this crate's muxes; a protocol error would be a bug the tests catch.
        if to.handle_frame(now, frame).is_err() {
            return;
        }
    }
}
