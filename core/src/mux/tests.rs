//! Two muxes wired back to back through the real codec, with random chunking of the byte pipe.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::rng::Rng;
use crate::wire::Decoder;

/// Moves bytes between a client mux and a node mux, checking invariants after every step.
struct Pair {
    muxes: [Mux; 2],
    decoders: [Decoder; 2],
    /// Bytes written by side i, not yet delivered to the other side.
    pipes: [BytesMut; 2],
    events: [Vec<MuxEvent>; 2],
    now: Instant,
    rng: Rng,
    max_chunk: usize,
}

const CLIENT: usize = 0;
const NODE: usize = 1;

impl Pair {
    fn new(seed: u64, client: MuxConfig, node: MuxConfig) -> Pair {
        let mut rng = Rng::seed_from_u64(seed);
        let max_chunk = 1 + rng.below(70_000) as usize;
        Pair {
            decoders: [
                Decoder::new(client.max_frame_payload_bytes),
                Decoder::new(node.max_frame_payload_bytes),
            ],
            muxes: [
                Mux::new(Role::Client, client.clone(), node.settings()),
                Mux::new(Role::Node, node, client.settings()),
            ],
            pipes: [BytesMut::new(), BytesMut::new()],
            events: [Vec::new(), Vec::new()],
            now: Instant::ZERO,
            rng,
            max_chunk,
        }
    }

    fn with_default(seed: u64) -> Pair {
        Pair::new(seed, MuxConfig::default(), MuxConfig::default())
    }

    fn check(&self) {
        for m in &self.muxes {
            m.check_invariants().unwrap();
        }
    }

    /// Flushes every queued frame of both sides into the pipes and delivers a random-size chunk
    /// each way. Returns whether any byte moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        for side in [CLIENT, NODE] {
            while let Some(t) = self.muxes[side].poll_transmit() {
                t.write_to(&mut self.pipes[side]);
            }
        }
        for from in [CLIENT, NODE] {
            let to = 1 - from;
            if self.pipes[from].is_empty() {
                continue;
            }
            let n =
                (1 + self.rng.below(self.max_chunk as u64) as usize).min(self.pipes[from].len());
            let chunk = self.pipes[from].split_to(n);
            self.decoders[to].push(&chunk);
            moved = true;
            while let Some(frame) = self.decoders[to].decode().unwrap() {
                self.muxes[to].handle_frame(self.now, frame).unwrap();
            }
        }
        for side in [CLIENT, NODE] {
            while let Some(e) = self.muxes[side].poll_event() {
                self.events[side].push(e);
            }
        }
        self.check();
        moved
    }

    /// Steps until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step()
                && self.pipes.iter().all(|p| p.is_empty())
                && !self.muxes.iter().any(|m| m.has_transmit())
            {
                return;
            }
        }
        panic!("pair never settled");
    }

    /// The client opens `n` streams; the node accepts them all.
    fn open_accepted(&mut self, n: usize) -> Vec<StreamId> {
        let ids = (0..n)
            .map(|_| self.muxes[CLIENT].open(Bytes::new()).unwrap())
            .collect();
        self.settle();
        for e in self.take_events(NODE) {
            if let MuxEvent::Incoming { stream, .. } = e {
                self.muxes[NODE].accept(stream, Bytes::new()).unwrap();
            }
        }
        ids
    }

    fn take_events(&mut self, side: usize) -> Vec<MuxEvent> {
        std::mem::take(&mut self.events[side])
    }

    /// Reads everything available on `stream` at `side`; returns bytes and whether EOF was seen.
    fn drain(&mut self, side: usize, stream: StreamId) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        loop {
            match self.muxes[side].read(self.now, stream, usize::MAX) {
                Ok(ReadOutcome::Data(b)) => out.extend_from_slice(&b),
                Ok(ReadOutcome::Blocked) => return (out, false),
                Ok(ReadOutcome::Finished) => return (out, true),
                Err(StreamError::UnknownStream) => return (out, true),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }
}

fn random_bytes(rng: &mut Rng, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    Bytes::from(v)
}

fn small_config(rng: &mut Rng) -> MuxConfig {
    let window = 16 + rng.below(64 * 1024) as u32;
    MuxConfig {
        stream_window_bytes: window,
        stream_window_max_bytes: window * (1 + rng.below(4) as u32),
        session_window_bytes: 16 + rng.below(256 * 1024) as u32,
        max_frame_payload_bytes: 16 + rng.below(16 * 1024) as u32,
        send_buffer_bytes: 1 + rng.below(128 * 1024) as u32,
        ..MuxConfig::default()
    }
}

/// One direction of one stream in a bulk test: what is left to write, what was read.
struct Flow {
    stream: StreamId,
    from: usize,
    to_send: Bytes,
    sent: Vec<u8>,
    received: Vec<u8>,
    finished_writing: bool,
    reader_saw_stream: bool,
    eof: bool,
}

#[test]
fn bulk_random_data_on_many_streams_arrives_exact() {
    for seed in 0..24u64 {
        let mut rng = Rng::seed_from_u64(seed ^ 0xb01c);
        let client = small_config(&mut rng);
        let node = small_config(&mut rng);
        let mut pair = Pair::new(seed, client, node);
        let streams = 1 + rng.below(12) as usize;
        let mut flows = Vec::new();
        for _ in 0..streams {
            let opener = rng.below(2) as usize;
            let id = pair.muxes[opener]
                .open(Bytes::from_static(b"open"))
                .unwrap();
            // Each stream carries data both ways.
            for from in [opener, 1 - opener] {
                let len = rng.below(200_000) as usize;
                flows.push(Flow {
                    stream: id,
                    from,
                    to_send: random_bytes(&mut rng, len),
                    sent: Vec::new(),
                    received: Vec::new(),
                    finished_writing: false,
                    reader_saw_stream: false,
                    eof: false,
                });
            }
        }
        for _ in 0..2_000_000 {
            // Accept incoming opens.
            for side in [CLIENT, NODE] {
                for e in pair.take_events(side) {
                    if let MuxEvent::Incoming { stream, .. } = e {
                        pair.muxes[side].accept(stream, Bytes::new()).unwrap();
                    }
                }
            }
            // Write a random piece of each flow.
            for f in flows.iter_mut() {
                if f.to_send.is_empty() {
                    if !f.finished_writing {
                        f.finished_writing = pair.muxes[f.from].finish(f.stream).is_ok();
                    }
                    continue;
                }
                let n = (1 + rng.below(40_000) as usize).min(f.to_send.len());
                let piece = f.to_send.slice(..n);
                if let Ok(taken) = pair.muxes[f.from].send(f.stream, piece.clone()) {
                    f.sent.extend_from_slice(&piece[..taken]);
                    let _ = f.to_send.split_to(taken);
                }
            }
            // Read, sometimes.
            for f in flows.iter_mut() {
                // A stream the reader has not heard of yet is not finished, just not there yet.
                if !f.reader_saw_stream {
                    f.reader_saw_stream =
                        pair.muxes[1 - f.from].stream_ids().any(|s| s == f.stream);
                }
                if f.reader_saw_stream && !f.eof && rng.below(3) > 0 {
                    let (bytes, eof) = pair.drain(1 - f.from, f.stream);
                    f.received.extend_from_slice(&bytes);
                    f.eof = eof;
                }
            }
            pair.step();
            if flows.iter().all(|f| f.eof) {
                break;
            }
        }
        for f in &flows {
            assert!(f.eof, "seed {seed}: stream {} never finished", f.stream);
            assert_eq!(
                f.received, f.sent,
                "seed {seed}: stream {} bytes differ",
                f.stream
            );
        }
        pair.settle();
        for m in &pair.muxes {
            assert_eq!(m.stream_count(), 0, "seed {seed}: streams leaked");
        }
    }
}

#[test]
fn slow_reader_never_grows_buffers_past_the_window_and_does_not_stall_others() {
    let config = MuxConfig {
        stream_window_bytes: 64 * 1024,
        stream_window_max_bytes: 64 * 1024,
        session_window_bytes: 1024 * 1024,
        send_buffer_bytes: 128 * 1024,
        ..MuxConfig::default()
    };
    let mut pair = Pair::new(7, config.clone(), config);
    pair.max_chunk = 256 * 1024;
    let [slow, fast] = pair.open_accepted(2)[..] else {
        unreachable!()
    };
    let chunk = Bytes::from(vec![1u8; 32 * 1024]);
    let mut fast_received = 0;
    for _ in 0..2_000 {
        let _ = pair.muxes[CLIENT].send(slow, chunk.clone()).unwrap();
        let _ = pair.muxes[CLIENT].send(fast, chunk.clone()).unwrap();
        pair.step();
        fast_received += pair.drain(NODE, fast).0.len();
        assert!(pair.muxes[NODE].recv_buffered(slow) <= 64 * 1024);
        assert!(pair.muxes[CLIENT].send_queued(slow) <= 128 * 1024);
    }
    assert_eq!(
        pair.muxes[NODE].recv_buffered(slow),
        64 * 1024,
        "slow stream filled its window"
    );
    assert!(
        fast_received > 20 * 1024 * 1024,
        "fast stream kept flowing: {fast_received}"
    );
}

/// Streams whose readers stopped hold more than the whole session window between them; the
/// session keeps flowing for the others (session credit comes back on receipt, not on read).
#[test]
fn streams_that_stop_reading_never_starve_the_session() {
    let config = MuxConfig {
        stream_window_bytes: 64 * 1024,
        stream_window_max_bytes: 64 * 1024,
        session_window_bytes: 256 * 1024,
        send_buffer_bytes: 128 * 1024,
        ..MuxConfig::default()
    };
    let mut pair = Pair::new(8, config.clone(), config);
    pair.max_chunk = 256 * 1024;
    let mut stuck = pair.open_accepted(11);
    let fast = stuck.pop().unwrap();
    let chunk = Bytes::from(vec![1u8; 32 * 1024]);
    let mut fast_received = 0;
    for _ in 0..1_000 {
        for &id in &stuck {
            let _ = pair.muxes[CLIENT].send(id, chunk.clone()).unwrap();
        }
        let _ = pair.muxes[CLIENT].send(fast, chunk.clone()).unwrap();
        pair.step();
        pair.check();
        fast_received += pair.drain(NODE, fast).0.len();
    }
    let held: u64 = stuck
        .iter()
        .map(|&id| pair.muxes[NODE].recv_buffered(id))
        .sum();
    assert_eq!(held, 10 * 64 * 1024, "every stuck stream filled its window");
    assert!(
        fast_received > 10 * 1024 * 1024,
        "the fast stream kept flowing past {held} stuck bytes: {fast_received}"
    );
}

/// Auto-tuning grows windows only while all of them together fit the session window, which
/// bounds what streams that later stop reading can make the receiver buffer.
#[test]
fn grown_windows_together_stay_within_the_session_window() {
    let config = MuxConfig {
        stream_window_bytes: 16 * 1024,
        stream_window_max_bytes: 1024 * 1024,
        session_window_bytes: 256 * 1024,
        ..MuxConfig::default()
    };
    let mut pair = Pair::new(9, config.clone(), config);
    pair.max_chunk = 1024 * 1024;
    pair.muxes[NODE].ping(Instant::ZERO);
    pair.now = Instant::from_nanos(1_000_000);
    pair.settle();
    let ids = pair.open_accepted(4);
    for _ in 0..300 {
        for &id in &ids {
            let _ = pair.muxes[CLIENT]
                .send(id, Bytes::from(vec![0u8; 64 * 1024]))
                .unwrap();
        }
        pair.step();
        for &id in &ids {
            pair.drain(NODE, id);
        }
        pair.now = pair.now + Duration::from_micros(100);
    }
    let windows: u64 = ids
        .iter()
        .filter_map(|&id| pair.muxes[NODE].recv_window(id))
        .sum();
    let growths = pair.muxes[NODE].stats().window_growths;
    assert!(growths >= 4, "windows grew: {growths}, total {windows}");
    assert!(
        windows <= 256 * 1024 && windows > 4 * 16 * 1024,
        "windows grew within the session window: {windows}"
    );
}

#[test]
fn mutual_writers_never_deadlock() {
    for seed in 0..8 {
        let mut rng = Rng::seed_from_u64(seed);
        let config = small_config(&mut rng);
        let mut pair = Pair::new(seed, config.clone(), config);
        let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
        pair.settle();
        for e in pair.take_events(NODE) {
            if let MuxEvent::Incoming { stream, .. } = e {
                pair.muxes[NODE].accept(stream, Bytes::new()).unwrap();
            }
        }
        // Both sides write far more than any window before either reads, then both read and
        // write in alternation.
        let total = 1_000_000usize;
        let mut sent = [0usize; 2];
        let mut received = [0usize; 2];
        for _ in 0..200_000 {
            for side in [CLIENT, NODE] {
                if sent[side] < total {
                    let n = (total - sent[side]).min(50_000);
                    sent[side] += pair.muxes[side]
                        .send(id, Bytes::from(vec![9u8; n]))
                        .unwrap();
                }
            }
            pair.step();
            for side in [CLIENT, NODE] {
                received[side] += pair.drain(side, id).0.len();
            }
            if received == [total, total] {
                break;
            }
        }
        assert_eq!(received, [total, total], "seed {seed}: deadlocked");
    }
}

#[test]
fn half_close_lets_the_other_direction_finish() {
    let mut pair = Pair::with_default(3);
    let id = pair.muxes[CLIENT].open(Bytes::from_static(b"req")).unwrap();
    pair.muxes[CLIENT]
        .send(id, Bytes::from_static(b"request"))
        .unwrap();
    pair.muxes[CLIENT].finish(id).unwrap();
    assert_eq!(
        pair.muxes[CLIENT].send(id, Bytes::from_static(b"x")),
        Err(StreamError::Finished)
    );
    pair.settle();
    let events = pair.take_events(NODE);
    assert_eq!(
        events[0],
        MuxEvent::Incoming {
            stream: id,
            payload: Bytes::from_static(b"req")
        }
    );
    pair.muxes[NODE].accept(id, Bytes::new()).unwrap();
    assert_eq!(pair.drain(NODE, id), (b"request".to_vec(), true));
    // The node still writes after the client's FIN.
    pair.muxes[NODE]
        .send(id, Bytes::from_static(b"response"))
        .unwrap();
    pair.muxes[NODE].finish(id).unwrap();
    pair.settle();
    assert_eq!(pair.drain(CLIENT, id), (b"response".to_vec(), true));
    pair.settle();
    assert_eq!(pair.muxes[CLIENT].stream_count(), 0);
    assert_eq!(pair.muxes[NODE].stream_count(), 0);
}

#[test]
fn reset_races_with_fin_window_and_data_are_harmless() {
    for seed in 0..200u64 {
        let mut pair = Pair::with_default(seed);
        let mut rng = Rng::seed_from_u64(seed);
        let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
        pair.settle();
        pair.take_events(NODE);
        pair.muxes[NODE].accept(id, Bytes::new()).unwrap();
        pair.settle();
        pair.muxes[CLIENT]
            .send(id, random_bytes(&mut rng, 300_000))
            .unwrap();
        pair.muxes[NODE]
            .send(id, random_bytes(&mut rng, 300_000))
            .unwrap();
        // Let a random amount through, then both sides act on the stream at the same moment.
        for _ in 0..rng.below(6) {
            pair.step();
            if rng.below(2) == 0 {
                pair.drain(NODE, id);
            }
        }
        let client_action = rng.below(3);
        let node_action = rng.below(3);
        for (side, action) in [(CLIENT, client_action), (NODE, node_action)] {
            let m = &mut pair.muxes[side];
            match action {
                0 => {
                    let _ = m.reset(id, ResetReason::Cancel);
                }
                1 => {
                    let _ = m.finish(id);
                }
                _ => {
                    let _ = m.read(pair.now, id, usize::MAX);
                }
            }
        }
        // Then both drain whatever is left until the stream is gone on both sides.
        for _ in 0..10_000 {
            pair.step();
            for side in [CLIENT, NODE] {
                if pair.muxes[side].stream_ids().any(|s| s == id) {
                    pair.drain(side, id);
                    let _ = pair.muxes[side].finish(id);
                }
            }
            if pair.muxes.iter().all(|m| m.stream_count() == 0) {
                break;
            }
        }
        pair.settle();
        assert_eq!(pair.muxes[CLIENT].stream_count(), 0, "seed {seed}");
        assert_eq!(pair.muxes[NODE].stream_count(), 0, "seed {seed}");
        // Session credit came back in full on both sides: nothing leaked in the windows.
        for m in &pair.muxes {
            assert_eq!(
                m.recv_session.remaining + m.recv_session.pending,
                m.recv_session.window
            );
        }
    }
}

#[test]
fn open_floods_are_bounded_on_both_sides() {
    let opener = MuxConfig {
        max_pending_opens: 10_000,
        ..MuxConfig::default()
    };
    let acceptor = MuxConfig {
        max_pending_accepts: 16,
        max_streams: 64,
        ..MuxConfig::default()
    };
    let mut pair = Pair::new(1, opener, acceptor);
    let mut opened = 0;
    while pair.muxes[CLIENT].open(Bytes::new()).is_ok() {
        opened += 1;
    }
    // The opener is held to the acceptor's stream limit.
    assert_eq!(opened, 64);
    pair.settle();
    let incoming = pair
        .take_events(NODE)
        .into_iter()
        .filter(|e| matches!(e, MuxEvent::Incoming { .. }))
        .count();
    assert_eq!(
        incoming, 16,
        "only max_pending_accepts wait for the application"
    );
    let resets = pair
        .take_events(CLIENT)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                MuxEvent::Reset {
                    reason: ResetReason::StreamLimit,
                    ..
                }
            )
        })
        .count();
    assert_eq!(resets, 48);
    assert_eq!(pair.muxes[NODE].stats().opens_refused_by_limit, 48);

    // An opener with its own small pending limit gets back-pressure instead.
    let mut pair = Pair::new(
        2,
        MuxConfig {
            max_pending_opens: 4,
            ..MuxConfig::default()
        },
        MuxConfig::default(),
    );
    for _ in 0..4 {
        pair.muxes[CLIENT].open(Bytes::new()).unwrap();
    }
    assert_eq!(
        pair.muxes[CLIENT].open(Bytes::new()),
        Err(OpenError::TooManyPending)
    );
    pair.settle();
    let first = match pair.take_events(NODE).first() {
        Some(MuxEvent::Incoming { stream, .. }) => *stream,
        other => panic!("{other:?}"),
    };
    pair.muxes[NODE].accept(first, Bytes::new()).unwrap();
    pair.settle();
    assert!(
        pair.muxes[CLIENT].open(Bytes::new()).is_ok(),
        "an answer frees a slot"
    );
}

#[test]
fn refused_open_reaches_the_opener_with_its_payload() {
    let mut pair = Pair::with_default(4);
    let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
    // Data sent before the answer is discarded by the refusing side, credit returned.
    pair.muxes[CLIENT]
        .send(id, Bytes::from(vec![1u8; 5000]))
        .unwrap();
    pair.settle();
    pair.take_events(NODE);
    pair.muxes[NODE]
        .refuse(id, Bytes::from_static(b"no"))
        .unwrap();
    pair.settle();
    assert_eq!(
        pair.take_events(CLIENT),
        vec![MuxEvent::Refused {
            stream: id,
            payload: Bytes::from_static(b"no")
        }]
    );
    assert_eq!(pair.muxes[CLIENT].stream_count(), 0);
    assert_eq!(
        pair.muxes[CLIENT].send(id, Bytes::from_static(b"x")),
        Err(StreamError::UnknownStream)
    );
}

#[test]
fn ping_measures_rtt_and_goaway_drains() {
    let mut pair = Pair::with_default(5);
    pair.muxes[CLIENT].ping(Instant::from_nanos(1_000));
    pair.now = Instant::from_nanos(51_000);
    pair.settle();
    assert_eq!(
        pair.take_events(CLIENT),
        vec![MuxEvent::Pong {
            rtt: Duration::from_micros(50)
        }]
    );
    assert_eq!(
        pair.muxes[CLIENT].smoothed_rtt(),
        Some(Duration::from_micros(50))
    );

    let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
    pair.settle();
    pair.take_events(NODE);
    pair.muxes[NODE].accept(id, Bytes::new()).unwrap();
    pair.muxes[NODE].go_away(GoAwayReason::Shutdown);
    pair.settle();
    assert!(pair.take_events(CLIENT).contains(&MuxEvent::GoAway {
        reason: GoAwayReason::Shutdown
    }));
    assert_eq!(
        pair.muxes[CLIENT].open(Bytes::new()),
        Err(OpenError::GoingAway)
    );
    assert!(!pair.muxes[CLIENT].is_drained(), "a stream is still open");
    // The existing stream still works and, once closed both ways, the session is drained.
    pair.muxes[CLIENT]
        .send(id, Bytes::from_static(b"last"))
        .unwrap();
    pair.muxes[CLIENT].finish(id).unwrap();
    pair.muxes[NODE].finish(id).unwrap();
    pair.settle();
    assert_eq!(pair.drain(NODE, id), (b"last".to_vec(), true));
    assert_eq!(pair.drain(CLIENT, id), (Vec::new(), true));
    pair.settle();
    assert!(pair.muxes[CLIENT].is_drained());
    assert!(pair.muxes[NODE].is_drained());
}

#[test]
fn windows_auto_tune_up_to_the_cap() {
    let config = MuxConfig {
        stream_window_bytes: 16 * 1024,
        stream_window_max_bytes: 256 * 1024,
        ..MuxConfig::default()
    };
    let mut pair = Pair::new(6, config.clone(), config);
    // Establish an RTT of 1 ms.
    pair.muxes[NODE].ping(Instant::ZERO);
    pair.now = Instant::from_nanos(1_000_000);
    pair.settle();
    let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
    pair.settle();
    pair.take_events(NODE);
    pair.muxes[NODE].accept(id, Bytes::new()).unwrap();
    // The reader consumes windows quickly (within an RTT): the window doubles to the cap.
    for _ in 0..200 {
        let _ = pair.muxes[CLIENT]
            .send(id, Bytes::from(vec![0u8; 64 * 1024]))
            .unwrap();
        pair.step();
        pair.drain(NODE, id);
        pair.now = pair.now + Duration::from_micros(100);
    }
    assert_eq!(pair.muxes[NODE].recv_window(id), Some(256 * 1024));
    assert!(pair.muxes[NODE].stats().window_growths >= 4);
}

#[test]
fn control_frames_are_not_starved_by_data() {
    let mut pair = Pair::with_default(8);
    let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
    pair.muxes[CLIENT]
        .send(id, Bytes::from(vec![0u8; 1024 * 1024]))
        .unwrap();
    // Queue a ping behind a megabyte of data: it must be the second frame out (after the OPEN).
    pair.muxes[CLIENT].ping(Instant::ZERO);
    let first = pair.muxes[CLIENT].poll_transmit().unwrap();
    let second = pair.muxes[CLIENT].poll_transmit().unwrap();
    assert_eq!(first.header[1], crate::wire::FrameType::Open as u8);
    assert_eq!(second.header[1], crate::wire::FrameType::Ping as u8);
    // DATA is split at the frame size.
    let third = pair.muxes[CLIENT].poll_transmit().unwrap();
    assert_eq!(third.payload.len(), 64 * 1024);
}

fn frame_error(pair: &mut Pair, side: usize, frame: Frame) -> MuxError {
    pair.muxes[side]
        .handle_frame(Instant::ZERO, frame)
        .unwrap_err()
}

#[test]
fn protocol_violations_are_typed_errors() {
    let mut pair = Pair::with_default(9);
    // DATA on a stream nobody opened.
    let err = frame_error(
        &mut pair,
        NODE,
        Frame::Data {
            stream: 41,
            payload: Bytes::from_static(b"x"),
        },
    );
    assert!(
        matches!(err, MuxError::UnknownStream { stream: 41, .. }),
        "{err}"
    );
    // OPEN with the node's own parity, or reusing an id.
    assert_eq!(
        frame_error(
            &mut pair,
            NODE,
            Frame::Open {
                stream: 2,
                payload: Bytes::new()
            }
        ),
        MuxError::BadStreamId(2)
    );
    pair.muxes[NODE]
        .handle_frame(
            Instant::ZERO,
            Frame::Open {
                stream: 5,
                payload: Bytes::new(),
            },
        )
        .unwrap();
    assert_eq!(
        frame_error(
            &mut pair,
            NODE,
            Frame::Open {
                stream: 3,
                payload: Bytes::new()
            }
        ),
        MuxError::BadStreamId(3)
    );
    // More DATA than the session window.
    let tiny = MuxConfig {
        session_window_bytes: 100,
        max_frame_payload_bytes: 1000,
        ..MuxConfig::default()
    };
    let mut pair = Pair::new(10, MuxConfig::default(), tiny);
    pair.muxes[NODE]
        .handle_frame(
            Instant::ZERO,
            Frame::Open {
                stream: 1,
                payload: Bytes::new(),
            },
        )
        .unwrap();
    let err = frame_error(
        &mut pair,
        NODE,
        Frame::Data {
            stream: 1,
            payload: Bytes::from(vec![0u8; 101]),
        },
    );
    assert_eq!(err, MuxError::SessionWindowExceeded { excess: 1 });
    // A handshake frame is not for the mux.
    let err = frame_error(&mut pair, NODE, Frame::ConfigAck(Default::default()));
    assert!(matches!(err, MuxError::NotAMuxFrame(_)));
}

#[test]
fn stream_credit_violation_resets_only_that_stream() {
    let small = MuxConfig {
        stream_window_bytes: 100,
        stream_window_max_bytes: 100,
        ..MuxConfig::default()
    };
    let mut pair = Pair::new(11, MuxConfig::default(), small);
    for stream in [1, 3] {
        pair.muxes[NODE]
            .handle_frame(
                Instant::ZERO,
                Frame::Open {
                    stream,
                    payload: Bytes::new(),
                },
            )
            .unwrap();
    }
    pair.muxes[NODE]
        .handle_frame(
            Instant::ZERO,
            Frame::Data {
                stream: 1,
                payload: Bytes::from(vec![0u8; 101]),
            },
        )
        .unwrap();
    assert_eq!(pair.muxes[NODE].stream_ids().collect::<Vec<_>>(), vec![3]);
    let rst = pair.muxes[NODE].poll_transmit().unwrap();
    assert_eq!(rst.header[1], crate::wire::FrameType::Rst as u8);
    pair.muxes[NODE].check_invariants().unwrap();
}

#[test]
fn stale_frames_after_close_are_ignored_and_counted() {
    let mut pair = Pair::with_default(12);
    let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
    pair.settle();
    pair.take_events(NODE);
    pair.muxes[NODE].accept(id, Bytes::new()).unwrap();
    pair.muxes[NODE].reset(id, ResetReason::Cancel).unwrap();
    for frame in [
        Frame::Data {
            stream: id,
            payload: Bytes::from_static(b"late"),
        },
        Frame::Window {
            stream: id,
            increment: 10,
        },
        Frame::Fin { stream: id },
        Frame::Rst {
            stream: id,
            reason: ResetReason::Cancel,
        },
    ] {
        pair.muxes[NODE].handle_frame(Instant::ZERO, frame).unwrap();
    }
    assert_eq!(pair.muxes[NODE].stats().stale_frames, 4);
    pair.muxes[NODE].check_invariants().unwrap();
}

#[test]
fn same_history_same_digest() {
    let run = |seed| {
        let mut pair = Pair::with_default(seed);
        let id = pair.muxes[CLIENT].open(Bytes::new()).unwrap();
        pair.muxes[CLIENT]
            .send(id, Bytes::from(vec![3u8; 100_000]))
            .unwrap();
        pair.settle();
        (pair.muxes[CLIENT].digest(), pair.muxes[NODE].digest())
    };
    assert_eq!(run(1), run(1));
    let (a, _) = run(1);
    let mut other = Pair::with_default(1);
    other.muxes[CLIENT].open(Bytes::new()).unwrap();
    assert_ne!(other.muxes[CLIENT].digest(), a);
}
