//! Fuzz entry points shared by the `fuzz/` targets and the corpus replay in `cargo test`.
//!
//! Each entry point takes arbitrary bytes, drives a core state machine with them and turns every
//! property it checks into a panic, so the fuzzer reports a broken property as a crash:
//!
//! * [`decode_frames`]: the frame [`Decoder`] never panics, stays bounded, is poisoned after an
//!   error, round-trips every frame it yields, and decodes the same whatever the chunking.
//! * [`mux_frames`]: a node-side [`Mux`] fed decoded frames and application actions never panics,
//!   never hangs, keeps its invariants, and never sends more than the peer's credit or frames the
//!   peer would reject.
//!
//! The input layouts are documented on each function; [`MuxScript`] writes `mux_frames` inputs
//! (the committed seed corpus is generated with it).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::mux::{Mux, MuxConfig, MuxError, MuxEvent, MuxStats, PeerSettings, ReadOutcome, Role};
use crate::time::{Duration, Instant};
use crate::wire::{
    Decoder, Frame, GoAwayReason, HEADER_LEN, Header, ResetReason, StreamId, Transmit, WireError,
};

/// Largest payload the fuzzed decoders accept; small so that the length limit is easy to hit.
pub const DECODER_MAX_PAYLOAD_BYTES: u32 = 4096;

/// Largest chunk `decode_frames` pushes into the decoder at once.
pub const MAX_CHUNK_BYTES: usize = 256;

/// Most bytes the decoder may hold between calls: a header, a maximal payload and one chunk.
const DECODER_BUFFER_BOUND: usize =
    HEADER_LEN + DECODER_MAX_PAYLOAD_BYTES as usize + MAX_CHUNK_BYTES;

/// Generous bound on the decoder buffer's capacity: `BytesMut` grows geometrically, but never
/// without limit.
const DECODER_CAPACITY_BOUND: usize = 4 * DECODER_BUFFER_BOUND;

// ----- frame decoder -----

/// What decoding a byte stream produced: the frames, then either the error that stopped it or
/// the number of bytes left waiting for more input.
#[derive(Debug, PartialEq)]
struct DecodeOutcome {
    frames: Vec<Frame>,
    end: Result<usize, WireError>,
}

/// Chunk sizes derived from one seed byte: `0x80 | n` means fixed chunks of `n + 1` bytes, `0`
/// means single bytes, anything else a xorshift sequence of sizes in `1..=MAX_CHUNK_BYTES`.
#[derive(Debug)]
struct ChunkSizes {
    fixed: Option<usize>,
    state: u32,
}

impl ChunkSizes {
    fn new(seed: u8) -> ChunkSizes {
        let fixed = match seed {
            0 => Some(1),
            s if s & 0x80 != 0 => Some(usize::from(s & 0x7f) + 1),
            _ => None,
        };
        ChunkSizes {
            fixed,
            state: u32::from(seed).wrapping_mul(0x9e37_79b9) | 1,
        }
    }

    fn next_size(&mut self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        1 + (x as usize % MAX_CHUNK_BYTES)
    }
}

/// Feeds `data[1..]` to a [`Decoder`] (max payload [`DECODER_MAX_PAYLOAD_BYTES`]) in chunks whose
/// sizes `data[0]` chooses, and checks the decoder's properties; panics if one breaks.
///
/// Properties: no panic; after an error every later call returns [`WireError::Poisoned`] and
/// nothing stays buffered; the decoder never holds more than `HEADER_LEN + max + chunk` bytes;
/// every frame re-encodes and decodes back equal; decoding the input in one piece gives the same
/// frames and the same error (or the same leftover) as in chunks.
pub fn decode_frames(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let chunked = decode_in_chunks(stream, ChunkSizes::new(seed));
    let whole = decode_in_one_piece(stream);
    assert_eq!(
        chunked, whole,
        "chunked decoding (seed {seed}) differs from decoding in one piece"
    );
}

fn decode_in_chunks(stream: &[u8], mut sizes: ChunkSizes) -> DecodeOutcome {
    let mut decoder = Decoder::new(DECODER_MAX_PAYLOAD_BYTES);
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(sizes.next_size().min(rest.len()));
        rest = tail;
        decoder.push(chunk);
        check_decoder_bounded(&mut decoder);
        if let Err(e) = decode_available(&mut decoder, &mut frames, true) {
            return DecodeOutcome {
                frames,
                end: Err(e),
            };
        }
    }
    DecodeOutcome {
        frames,
        end: Ok(decoder.buffered_len()),
    }
}

fn decode_in_one_piece(stream: &[u8]) -> DecodeOutcome {
    let mut decoder = Decoder::new(DECODER_MAX_PAYLOAD_BYTES);
    let mut frames = Vec::new();
    decoder.push(stream);
    let end = decode_available(&mut decoder, &mut frames, false).map(|()| decoder.buffered_len());
    DecodeOutcome { frames, end }
}

/// Decodes until the decoder needs more bytes (`Ok`) or fails (the error, after checking that
/// the decoder is poisoned). Every frame is checked to round-trip; with `bounded`, the buffer is
/// checked against the chunked-input bound after each frame.
fn decode_available(
    decoder: &mut Decoder,
    frames: &mut Vec<Frame>,
    bounded: bool,
) -> Result<(), WireError> {
    loop {
        match decoder.decode() {
            Ok(Some(frame)) => {
                check_round_trip(&frame);
                frames.push(frame);
                if bounded {
                    check_decoder_bounded(decoder);
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                assert_ne!(e, WireError::Poisoned, "first error reported as Poisoned");
                check_poisoned(decoder);
                return Err(e);
            }
        }
    }
}

fn check_decoder_bounded(decoder: &mut Decoder) {
    let buffered = decoder.buffered_len();
    assert!(
        buffered <= DECODER_BUFFER_BOUND,
        "decoder buffers {buffered} bytes, more than header + max payload + one chunk ({DECODER_BUFFER_BOUND})"
    );
    let capacity = decoder.buffer_mut().capacity();
    assert!(
        capacity <= DECODER_CAPACITY_BOUND,
        "decoder buffer capacity {capacity} exceeds {DECODER_CAPACITY_BOUND}"
    );
}

fn check_poisoned(decoder: &mut Decoder) {
    assert_eq!(
        decoder.buffered_len(),
        0,
        "a failed decoder still holds bytes"
    );
    assert_eq!(decoder.decode(), Err(WireError::Poisoned));
    decoder.push(&[1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(
        decoder.decode(),
        Err(WireError::Poisoned),
        "a failed decoder decoded again after more input"
    );
}

/// `decode(encode(frame)) == frame`, with nothing left over, for a frame the decoder produced.
fn check_round_trip(frame: &Frame) {
    let transmit = frame.encode();
    let header = Header::decode(&transmit.header, DECODER_MAX_PAYLOAD_BYTES);
    assert!(
        header.is_ok(),
        "re-encoded header of {frame:?} does not decode: {header:?}"
    );
    let mut decoder = Decoder::new(DECODER_MAX_PAYLOAD_BYTES);
    decoder.push(&transmit.header);
    decoder.push(&transmit.payload);
    let decoded = decoder.decode();
    assert_eq!(
        decoded.as_ref().ok().and_then(Option::as_ref),
        Some(frame),
        "frame does not round-trip: {decoded:?}"
    );
    assert_eq!(
        decoder.buffered_len(),
        0,
        "re-encoded frame left bytes over"
    );
}

// ----- mux -----

/// Length of the limits prefix of a `mux_frames` input (shorter inputs are padded with zeros).
pub const MUX_LIMITS_LEN: usize = 12;

/// Opcodes of a `mux_frames` script (the opcode is the byte modulo 16; 11..=15 also mean wire).
mod op {
    pub const WIRE: u8 = 0;
    pub const ACCEPT: u8 = 1;
    pub const REFUSE: u8 = 2;
    pub const READ: u8 = 3;
    pub const SEND: u8 = 4;
    pub const FINISH: u8 = 5;
    pub const RESET: u8 = 6;
    pub const PING: u8 = 7;
    pub const GO_AWAY: u8 = 8;
    pub const OPEN: u8 = 9;
    pub const FLUSH: u8 = 10;
}

/// Most incoming stream ids remembered for later accept/refuse.
const MAX_REMEMBERED_INCOMING: usize = 64;

/// Most frames one flush may take; more means `poll_transmit` never runs dry (a bug).
const MAX_FRAMES_PER_FLUSH: usize = 1 << 20;

/// Bytes a send may take: `units * SEND_UNIT_BYTES` from a static zero buffer.
const SEND_UNIT_BYTES: usize = 64;

static ZEROS: [u8; 255 * SEND_UNIT_BYTES] = [0; 255 * SEND_UNIT_BYTES];

/// The node's limits and the client's announced settings from the input's first bytes.
fn mux_limits(prefix: &[u8; MUX_LIMITS_LEN]) -> (MuxConfig, PeerSettings) {
    let b = prefix.map(u32::from);
    let stream_window_bytes = 16 + b[0] * 64;
    let config = MuxConfig {
        stream_window_bytes,
        stream_window_max_bytes: stream_window_bytes * (1 + b[1] % 4),
        session_window_bytes: 16 + b[2] * 128,
        max_frame_payload_bytes: 16 + b[3] * 16,
        max_streams: 1 + b[4] % 16,
        max_pending_opens: 1 + (b[4] >> 4) % 8,
        max_pending_accepts: 1 + b[5] % 8,
        send_buffer_bytes: 1 + b[6] * 64,
        max_queued_control_frames: 1 + b[7],
    };
    let peer = PeerSettings {
        stream_window_bytes: 16 + b[8] * 64,
        session_window_bytes: 16 + b[9] * 128,
        max_frame_payload_bytes: 16 + b[10] * 16,
        max_streams: 1 + b[11] % 16,
    };
    (config, peer)
}

/// Runs a node-side [`Mux`] through a script of wire bytes and application actions; panics if a
/// property breaks.
///
/// Layout: [`MUX_LIMITS_LEN`] bytes of limits (windows, frame size, stream limits, buffers, the
/// control queue bound and the client's settings, all small), then ops, each an opcode byte
/// (modulo 16) and its operands: wire bytes for the client→node decoder, accept, refuse, read,
/// send, finish, reset, ping, go-away, open, flush. [`MuxScript`] writes this layout.
///
/// Properties checked after every step: no panic, `check_invariants()` holds, every frame the mux
/// sends decodes under the client's limits, DATA never exceeds the client's stream or session
/// credit, and `has_transmit()` is false once `poll_transmit()` ran dry. A `WireError` or
/// `MuxError` ends the run: that is the peer breaking the protocol, a legitimate outcome.
pub fn mux_frames(data: &[u8]) {
    mux_frames_report(data);
}

/// How a [`mux_frames`] run ended and what the mux did; for checking that seeds reach what they
/// were written for.
#[derive(Debug, Clone, PartialEq)]
pub struct MuxReport {
    /// Why the run stopped.
    pub end: MuxRunEnd,
    /// Ops executed (including the one that ended the run).
    pub ops: usize,
    /// The mux's counters at the end.
    pub stats: MuxStats,
}

/// Why a [`mux_frames`] run stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum MuxRunEnd {
    /// Every op ran.
    InputExhausted,
    /// The client's bytes did not decode.
    Wire(WireError),
    /// The mux judged the client to break the protocol.
    Mux(MuxError),
}

/// Runs [`mux_frames`] and reports how it ended (panics exactly where `mux_frames` does).
pub fn mux_frames_report(data: &[u8]) -> MuxReport {
    let mut prefix = [0u8; MUX_LIMITS_LEN];
    let split = data.len().min(MUX_LIMITS_LEN);
    prefix[..split].copy_from_slice(&data[..split]);
    let (config, peer) = mux_limits(&prefix);
    assert_eq!(config.validate(), Ok(()), "derived config is invalid");
    let mut run = MuxRun::new(config, peer);
    let mut ops = Ops {
        bytes: &data[split..],
    };
    let mut count = 0;
    let mut end = MuxRunEnd::InputExhausted;
    while let Some(code) = ops.byte() {
        count += 1;
        if let Err(stop) = run.step(code % 16, &mut ops) {
            end = stop;
            break;
        }
        run.check("op");
    }
    MuxReport {
        end,
        ops: count,
        stats: run.mux.stats().clone(),
    }
}

/// Reads opcodes and operands; a missing operand reads as 0.
#[derive(Debug)]
struct Ops<'a> {
    bytes: &'a [u8],
}

impl<'a> Ops<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    fn operand(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }
}

/// Send-side credit the client granted one stream, and what was sent on it.
#[derive(Debug, Default)]
struct Credit {
    granted: u64,
    sent: u64,
}

/// One fuzzed mux and the bookkeeping the checks need.
#[derive(Debug)]
struct MuxRun {
    mux: Mux,
    decoder: Decoder,
    /// Decoder for what the mux sends, with the client's limit.
    peer_decoder: Decoder,
    config: MuxConfig,
    peer: PeerSettings,
    now: Instant,
    incoming: VecDeque<StreamId>,
    session_credit: Credit,
    stream_credit: BTreeMap<StreamId, Credit>,
}

impl MuxRun {
    fn new(config: MuxConfig, peer: PeerSettings) -> MuxRun {
        MuxRun {
            mux: Mux::new(Role::Node, config.clone(), peer),
            decoder: Decoder::new(DECODER_MAX_PAYLOAD_BYTES),
            peer_decoder: Decoder::new(peer.max_frame_payload_bytes),
            config,
            peer,
            now: Instant::ZERO,
            incoming: VecDeque::new(),
            session_credit: Credit {
                granted: u64::from(peer.session_window_bytes),
                sent: 0,
            },
            stream_credit: BTreeMap::new(),
        }
    }

    fn check(&self, after: &str) {
        if let Err(violation) = self.mux.check_invariants() {
            panic!("mux invariant violated after {after}: {violation}");
        }
    }

    /// The `index`-th live stream (modulo the count), or `index` itself as a raw id when there is
    /// none (exercising unknown-stream errors).
    fn pick_stream(&self, index: u8) -> StreamId {
        let count = self.mux.stream_count();
        if count == 0 {
            return StreamId::from(index);
        }
        self.mux
            .stream_ids()
            .nth(usize::from(index) % count)
            .unwrap_or(StreamId::from(index))
    }

    fn step(&mut self, code: u8, ops: &mut Ops<'_>) -> Result<(), MuxRunEnd> {
        self.now = self.now + Duration::from_micros(100);
        match code {
            op::ACCEPT | op::REFUSE => {
                if let Some(stream) = self.incoming.pop_front() {
                    // The stream may be gone already (reset); the error is the expected answer.
                    let _ = if code == op::ACCEPT {
                        self.mux.accept(stream, Bytes::from_static(b"ok"))
                    } else {
                        self.mux.refuse(stream, Bytes::from_static(b"no"))
                    };
                }
            }
            op::READ => {
                let stream = self.pick_stream(ops.operand());
                let max = match ops.operand() {
                    0 => usize::MAX,
                    units => usize::from(units) * 16,
                };
                if let Ok(ReadOutcome::Data(bytes)) = self.mux.read(self.now, stream, max) {
                    assert!(
                        !bytes.is_empty() && bytes.len() <= max,
                        "read returned {} bytes for a max of {max}",
                        bytes.len()
                    );
                }
            }
            op::SEND => {
                let stream = self.pick_stream(ops.operand());
                let len = usize::from(ops.operand()) * SEND_UNIT_BYTES;
                let data = Bytes::from_static(&ZEROS[..len]);
                if let Ok(taken) = self.mux.send(stream, data) {
                    assert!(taken <= len, "send took {taken} of {len} bytes");
                }
            }
            op::FINISH => {
                let stream = self.pick_stream(ops.operand());
                let _ = self.mux.finish(stream);
            }
            op::RESET => {
                let stream = self.pick_stream(ops.operand());
                let reason = ResetReason::from_code(u32::from(ops.operand()));
                let _ = self.mux.reset(stream, reason);
            }
            op::PING => {
                self.mux.ping(self.now);
            }
            op::GO_AWAY => {
                self.mux
                    .go_away(GoAwayReason::from_code(u32::from(ops.operand())));
            }
            op::OPEN => {
                if let Ok(stream) = self.mux.open(Bytes::from_static(b"open")) {
                    self.stream_credit.insert(
                        stream,
                        Credit {
                            granted: u64::from(self.peer.stream_window_bytes),
                            sent: 0,
                        },
                    );
                }
            }
            op::FLUSH => {
                let limit = match ops.operand() {
                    0 => MAX_FRAMES_PER_FLUSH,
                    n => usize::from(n),
                };
                self.flush(limit);
            }
            _ => {
                let len = usize::from(ops.operand());
                let bytes = ops.take(len);
                self.receive(bytes)?;
            }
        }
        self.drain_events();
        Ok(())
    }

    /// Pushes client bytes into the decoder and hands every complete frame to the mux.
    fn receive(&mut self, bytes: &[u8]) -> Result<(), MuxRunEnd> {
        self.decoder.push(bytes);
        loop {
            let frame = match self.decoder.decode() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err(MuxRunEnd::Wire(e)),
            };
            self.now = self.now + Duration::from_micros(10);
            let window = match frame {
                Frame::Window { stream, increment } => Some((stream, u64::from(increment))),
                _ => None,
            };
            self.mux
                .handle_frame(self.now, frame)
                .map_err(MuxRunEnd::Mux)?;
            if let Some((stream, increment)) = window {
                self.grant(stream, increment);
            }
            self.drain_events();
            self.check("a frame");
        }
    }

    /// Records credit the client granted (a WINDOW the mux accepted).
    fn grant(&mut self, stream: StreamId, increment: u64) {
        let credit = if stream == 0 {
            &mut self.session_credit
        } else if let Some(credit) = self.stream_credit.get_mut(&stream) {
            credit
        } else {
            return;
        };
        credit.granted = credit.granted.saturating_add(increment);
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.mux.poll_event() {
            if let MuxEvent::Incoming { stream, .. } = event {
                self.stream_credit.insert(
                    stream,
                    Credit {
                        granted: u64::from(self.peer.stream_window_bytes),
                        sent: 0,
                    },
                );
                if self.incoming.len() == MAX_REMEMBERED_INCOMING {
                    self.incoming.pop_front();
                }
                self.incoming.push_back(stream);
            }
        }
    }

    /// Takes up to `limit` frames from the mux and checks each as the client would.
    fn flush(&mut self, limit: usize) {
        for _ in 0..limit {
            let Some(transmit) = self.mux.poll_transmit() else {
                assert!(
                    !self.mux.has_transmit(),
                    "has_transmit() is true but poll_transmit() returned nothing"
                );
                return;
            };
            self.check_sent(&transmit);
        }
        assert!(
            limit < MAX_FRAMES_PER_FLUSH,
            "poll_transmit did not run dry after {MAX_FRAMES_PER_FLUSH} frames"
        );
    }

    /// The client must accept every frame we send, and DATA must stay within its credit.
    fn check_sent(&mut self, transmit: &Transmit) {
        self.peer_decoder.push(&transmit.header);
        self.peer_decoder.push(&transmit.payload);
        let frame = match self.peer_decoder.decode() {
            Ok(Some(frame)) => frame,
            other => panic!("the mux sent a frame the client rejects: {other:?} ({transmit:?})"),
        };
        assert_eq!(self.peer_decoder.buffered_len(), 0);
        let Frame::Data { stream, payload } = frame else {
            return;
        };
        let max = self
            .config
            .max_frame_payload_bytes
            .min(self.peer.max_frame_payload_bytes);
        assert!(
            payload.len() <= max as usize,
            "DATA of {} bytes over the frame limit {max}",
            payload.len()
        );
        let n = payload.len() as u64;
        self.session_credit.sent += n;
        assert!(
            self.session_credit.sent <= self.session_credit.granted,
            "sent {} DATA bytes on the session, granted only {}",
            self.session_credit.sent,
            self.session_credit.granted
        );
        let Some(credit) = self.stream_credit.get_mut(&stream) else {
            panic!("DATA sent on stream {stream}, which was never opened or accepted");
        };
        credit.sent += n;
        assert!(
            credit.sent <= credit.granted,
            "sent {} DATA bytes on stream {stream}, granted only {}",
            credit.sent,
            credit.granted
        );
    }
}

// ----- script writer -----

/// Writes `mux_frames` inputs: a limits prefix, then ops. Used to generate the seed corpus.
#[derive(Debug, Clone)]
pub struct MuxScript {
    bytes: Vec<u8>,
}

impl MuxScript {
    /// A script for the node limits and client settings encoded in `limits` (see [`mux_frames`]).
    pub fn new(limits: [u8; MUX_LIMITS_LEN]) -> MuxScript {
        MuxScript {
            bytes: limits.to_vec(),
        }
    }

    /// Client bytes for the node's decoder (split into ops of at most 255 bytes).
    pub fn wire(&mut self, bytes: &[u8]) -> &mut MuxScript {
        for piece in bytes.chunks(255) {
            self.bytes.push(op::WIRE);
            self.bytes.push(piece.len() as u8);
            self.bytes.extend_from_slice(piece);
        }
        self
    }

    /// One frame from the client, encoded.
    pub fn frame(&mut self, frame: &Frame) -> &mut MuxScript {
        let transmit = frame.encode();
        let mut bytes = transmit.header.to_vec();
        bytes.extend_from_slice(&transmit.payload);
        self.wire(&bytes)
    }

    /// The application accepts the oldest incoming stream.
    pub fn accept(&mut self) -> &mut MuxScript {
        self.bytes.push(op::ACCEPT);
        self
    }

    /// The application refuses the oldest incoming stream.
    pub fn refuse(&mut self) -> &mut MuxScript {
        self.bytes.push(op::REFUSE);
        self
    }

    /// Reads from the `stream_index`-th live stream, at most `units * 16` bytes (0: no limit).
    pub fn read(&mut self, stream_index: u8, units: u8) -> &mut MuxScript {
        self.bytes
            .extend_from_slice(&[op::READ, stream_index, units]);
        self
    }

    /// Sends `units * 64` zero bytes on the `stream_index`-th live stream.
    pub fn send(&mut self, stream_index: u8, units: u8) -> &mut MuxScript {
        self.bytes
            .extend_from_slice(&[op::SEND, stream_index, units]);
        self
    }

    /// Half-closes the `stream_index`-th live stream.
    pub fn finish(&mut self, stream_index: u8) -> &mut MuxScript {
        self.bytes.extend_from_slice(&[op::FINISH, stream_index]);
        self
    }

    /// Resets the `stream_index`-th live stream with reason `code`.
    pub fn reset(&mut self, stream_index: u8, code: u8) -> &mut MuxScript {
        self.bytes
            .extend_from_slice(&[op::RESET, stream_index, code]);
        self
    }

    /// Sends a PING.
    pub fn ping(&mut self) -> &mut MuxScript {
        self.bytes.push(op::PING);
        self
    }

    /// Announces GOAWAY with reason `code`.
    pub fn go_away(&mut self, code: u8) -> &mut MuxScript {
        self.bytes.extend_from_slice(&[op::GO_AWAY, code]);
        self
    }

    /// The node opens a stream.
    pub fn open(&mut self) -> &mut MuxScript {
        self.bytes.push(op::OPEN);
        self
    }

    /// Takes up to `frames` frames from `poll_transmit` (0: until it runs dry).
    pub fn flush(&mut self, frames: u8) -> &mut MuxScript {
        self.bytes.extend_from_slice(&[op::FLUSH, frames]);
        self
    }

    /// The finished input.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_stay_in_range() {
        for seed in 0..=255u8 {
            let mut sizes = ChunkSizes::new(seed);
            for _ in 0..1000 {
                let n = sizes.next_size();
                assert!((1..=MAX_CHUNK_BYTES).contains(&n), "seed {seed}: {n}");
            }
        }
    }

    #[test]
    fn entry_points_accept_empty_and_tiny_inputs() {
        for data in [&[][..], &[0], &[0xff; 3], &[7; 40]] {
            decode_frames(data);
            mux_frames(data);
        }
    }

    #[test]
    fn every_limit_prefix_gives_a_valid_config() {
        for b in 0..=255u8 {
            let (config, _) = mux_limits(&[b; MUX_LIMITS_LEN]);
            assert_eq!(config.validate(), Ok(()));
        }
    }
}
