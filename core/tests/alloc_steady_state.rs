//! Shows that moving DATA through a client/node mux pair allocates nothing per frame once warm.
//!
//! A counting global allocator (its own test binary, so nothing else is affected) counts the heap
//! allocations made by this thread while an in-memory pair moves 64 KiB application writes:
//! sender `send` → `poll_transmit` → the receiver's decoder buffer (the one copy that stands for
//! the kernel's) → `decode` → `handle_frame` → `read`, with WINDOW frames flowing back. After a
//! warm-up, moving N frames and 10×N frames must cost the same (small) number of allocations.

// The counting allocator needs `unsafe impl GlobalAlloc`; this test binary is its only user.
#![allow(unsafe_code)]
// A test binary: its helpers panic on failure and print what they measured.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use tunnox_core::mux::{Mux, MuxConfig, MuxEvent, ReadOutcome, Role};
use tunnox_core::time::{Duration, Instant};
use tunnox_core::wire::{Decoder, Frame, StreamId};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts allocations (and reallocations) made on threads that switched counting on.
struct CountingAllocator;

impl CountingAllocator {
    fn count() {
        // `try_with` so an allocation during thread teardown is simply not counted.
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            }
        });
    }
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made by this thread so far (while counting).
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn set_counting(on: bool) {
    COUNTING.with(|c| c.set(on));
}

/// Allocations per step of the data path, to say where an allocation happens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Breakdown {
    send: u64,
    poll_transmit: u64,
    write_to_decoder: u64,
    decode: u64,
    /// `handle_frame` of DATA frames.
    handle_data: u64,
    /// `handle_frame` of every other frame (WINDOW, OPEN, OPEN_RESULT).
    handle_control: u64,
    read: u64,
    events: u64,
}

impl Breakdown {
    fn total(&self) -> u64 {
        self.send
            + self.poll_transmit
            + self.write_to_decoder
            + self.decode
            + self.handle_data
            + self.handle_control
            + self.read
            + self.events
    }
}

/// Runs `f`, adding the allocations it made to `counter`.
fn counted<T>(counter: &mut u64, f: impl FnOnce() -> T) -> T {
    let before = allocations();
    let out = f();
    *counter += allocations() - before;
    out
}

/// A client and a node mux back to back through the real codec, client writing to the node.
struct Pair {
    client: Mux,
    node: Mux,
    to_node: Decoder,
    to_client: Decoder,
    now: Instant,
    /// What each stream still has to write of its current application write.
    unsent: Vec<Bytes>,
    streams: Vec<StreamId>,
    data_frames: u64,
    /// Session-level WINDOW frames the client handled.
    session_windows: u64,
    bytes_read: u64,
    rounds: u64,
    /// The node's application reads only every other round.
    reader_lags: bool,
    /// Most frames the client writes per round.
    frames_per_round: usize,
    allocs: Breakdown,
}

impl Pair {
    fn new(config: MuxConfig, stream_count: usize) -> Pair {
        let mut pair = Pair {
            client: Mux::new(Role::Client, config.clone(), config.settings()),
            node: Mux::new(Role::Node, config.clone(), config.settings()),
            to_node: Decoder::new(config.max_frame_payload_bytes),
            to_client: Decoder::new(config.max_frame_payload_bytes),
            now: Instant::ZERO,
            unsent: Vec::new(),
            streams: Vec::new(),
            data_frames: 0,
            session_windows: 0,
            bytes_read: 0,
            rounds: 0,
            reader_lags: false,
            frames_per_round: usize::MAX,
            allocs: Breakdown::default(),
        };
        for _ in 0..stream_count {
            let id = pair.client.open(Bytes::new()).unwrap();
            pair.streams.push(id);
            pair.unsent.push(Bytes::new());
        }
        pair.round(&Bytes::new());
        pair
    }

    /// One round: the client tops up every stream with `chunk`s, its frames reach the node, the
    /// node reads everything, its WINDOW frames reach the client.
    fn round(&mut self, chunk: &Bytes) {
        let a = &mut self.allocs;
        self.now = self.now + Duration::from_micros(50);
        for (i, &stream) in self.streams.iter().enumerate() {
            loop {
                if self.unsent[i].is_empty() {
                    if chunk.is_empty() {
                        break;
                    }
                    self.unsent[i] = chunk.clone();
                }
                let data = self.unsent[i].clone();
                let taken = counted(&mut a.send, || self.client.send(stream, data)).unwrap();
                if taken == 0 {
                    break;
                }
                let _ = self.unsent[i].split_to(taken);
            }
        }
        // Client -> node, at most `frames_per_round` frames (what one socket write would take).
        let mut budget = self.frames_per_round;
        while budget > 0
            && let Some(t) = counted(&mut a.poll_transmit, || self.client.poll_transmit())
        {
            budget -= 1;
            counted(&mut a.write_to_decoder, || {
                let buf = self.to_node.buffer_mut();
                buf.extend_from_slice(&t.header);
                buf.extend_from_slice(&t.payload);
            });
        }
        while let Some(frame) = counted(&mut a.decode, || self.to_node.decode()).unwrap() {
            let counter = if matches!(frame, Frame::Data { .. }) {
                self.data_frames += 1;
                &mut a.handle_data
            } else {
                &mut a.handle_control
            };
            counted(counter, || self.node.handle_frame(self.now, frame)).unwrap();
        }
        while let Some(event) = counted(&mut a.events, || self.node.poll_event()) {
            if let MuxEvent::Incoming { stream, .. } = event {
                self.node.accept(stream, Bytes::new()).unwrap();
            }
        }
        // The node's application reads everything (every other round if it lags).
        self.rounds += 1;
        let skip_read = self.reader_lags && self.rounds % 2 == 1;
        for &stream in self.streams.iter().filter(|_| !skip_read) {
            let max = usize::MAX;
            while let ReadOutcome::Data(bytes) =
                counted(&mut a.read, || self.node.read(self.now, stream, max)).unwrap()
            {
                self.bytes_read += bytes.len() as u64;
            }
        }
        // Node -> client (WINDOW frames, open results).
        while let Some(t) = counted(&mut a.poll_transmit, || self.node.poll_transmit()) {
            counted(&mut a.write_to_decoder, || {
                let buf = self.to_client.buffer_mut();
                buf.extend_from_slice(&t.header);
                buf.extend_from_slice(&t.payload);
            });
        }
        while let Some(frame) = counted(&mut a.decode, || self.to_client.decode()).unwrap() {
            if matches!(frame, Frame::Window { stream: 0, .. }) {
                self.session_windows += 1;
            }
            counted(&mut a.handle_control, || {
                self.client.handle_frame(self.now, frame)
            })
            .unwrap();
        }
        while counted(&mut a.events, || self.client.poll_event()).is_some() {}
    }

    /// Moves at least `frames` DATA frames; returns the allocations made, their breakdown and the
    /// number of session WINDOW frames handled meanwhile.
    fn measure(&mut self, chunk: &Bytes, frames: u64) -> (u64, Breakdown, u64) {
        let target = self.data_frames + frames;
        let session_windows = self.session_windows;
        self.allocs = Breakdown::default();
        set_counting(true);
        let before = allocations();
        while self.data_frames < target {
            self.round(chunk);
        }
        let total = allocations() - before;
        set_counting(false);
        for mux in [&self.client, &self.node] {
            mux.check_invariants().unwrap();
        }
        (total, self.allocs, self.session_windows - session_windows)
    }
}

fn steady_state_allocations(stream_count: usize) {
    const N: u64 = 100;
    let chunk = Bytes::from(vec![0x5au8; 64 * 1024]);
    let mut pair = Pair::new(MuxConfig::default(), stream_count);
    let warm_up = pair.measure(&chunk, 10 * N);
    let small = pair.measure(&chunk, N);
    let large = pair.measure(&chunk, 10 * N);
    println!(
        "{stream_count} stream(s), 64 KiB writes: warm-up {} frames: {} allocations; \
         {N} frames: {} allocations ({} session WINDOWs); {} frames: {} allocations \
         ({} session WINDOWs)",
        10 * N,
        warm_up.0,
        small.0,
        small.2,
        10 * N,
        large.0,
        large.2
    );
    println!("  breakdown for {} frames: {:?}", 10 * N, large.1);
    let b = large.1;
    assert_eq!(large.0, b.total(), "allocations outside the counted calls");
    // The DATA path itself allocates nothing, however many frames move.
    let data_path =
        b.send + b.poll_transmit + b.write_to_decoder + b.decode + b.handle_data + b.read;
    assert_eq!(data_path, 0, "the DATA path allocates: {b:?}");
    // What is left is per session WINDOW (one every 32 MiB with the default 64 MiB window).
    assert!(
        b.handle_control <= large.2,
        "control frames allocate more than once per session WINDOW: {b:?}"
    );
    assert!(
        large.0 <= small.0 + 4,
        "allocations grow with the frame count: {} for {N} frames, {} for {} frames ({b:?})",
        small.0,
        large.0,
        10 * N
    );
    assert!(pair.bytes_read >= 21 * N * 64 * 1024);
}

#[test]
fn one_stream_moves_data_frames_without_allocating() {
    steady_state_allocations(1);
}

#[test]
fn eight_streams_move_data_frames_without_allocating() {
    steady_state_allocations(8);
}

/// Not a zero-allocation case, measured to say where it costs. When the application has not read
/// earlier payloads by the time new bytes arrive (here: two frames per round, the reader reads
/// every other round), those payloads still share the decoder's buffer, so `BytesMut` cannot
/// reuse it: the write into the decoder (`BytesMut::reserve`) allocates a fresh buffer, and the
/// first `decode` from it (`split_to` promoting the buffer to shared) allocates its refcount
/// block. That is the price of zero-copy payloads, about one allocation per frame here; a driver
/// that reserves a large read buffer pays it once per buffer instead.
#[test]
fn a_lagging_reader_costs_decoder_buffer_allocations() {
    const N: u64 = 1000;
    let chunk = Bytes::from(vec![0x5au8; 64 * 1024]);
    let mut pair = Pair::new(MuxConfig::default(), 1);
    pair.reader_lags = true;
    pair.frames_per_round = 2;
    pair.measure(&chunk, N);
    let (total, b, session_windows) = pair.measure(&chunk, N);
    println!(
        "1 stream, 2 frames per round, reader reads every other round: {N} frames: {total} \
         allocations ({b:?})"
    );
    assert_eq!(
        b.send + b.poll_transmit + b.handle_data + b.read,
        0,
        "only the decoder may allocate: {b:?}"
    );
    assert!(b.handle_control <= session_windows, "{b:?}");
    assert!(
        b.write_to_decoder + b.decode <= N + 4,
        "more than one decoder allocation per frame: {b:?}"
    );
}
