//! Replays every committed fuzz corpus file through the fuzz entry points, so `cargo test` catches
//! regressions without a fuzzer; and generates the seed part of those corpora.
//!
//! Regenerate the seeds (after changing an input layout) with
//! `cargo test -p tunnox-core --test fuzz_corpus -- --ignored regenerate_seed_corpus`.

// A test binary: its helpers panic on failure and print what they replayed.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use bytes::Bytes;
use tunnox_core::fuzzing::{self, MUX_LIMITS_LEN, MuxRunEnd, MuxScript};
use tunnox_core::wire::{Frame, GoAwayReason, HEADER_LEN, ResetReason};
use tunnox_proto::wire as pb;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of the target's corpus, sorted by name; fails if the directory is missing or empty.
fn corpus_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus dir {} is missing: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.push((name, fs::read(&path).unwrap()));
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus dir {} is empty: nothing would be tested",
        dir.display()
    );
    files
}

fn replay(target: &str, entry: fn(&[u8])) {
    let files = corpus_files(target);
    for (name, data) in &files {
        let result = std::panic::catch_unwind(|| entry(data));
        assert!(result.is_ok(), "{target}: corpus file {name} fails");
    }
    println!("{target}: replayed {} corpus files", files.len());
}

#[test]
fn frame_decoder_corpus_replays_clean() {
    replay("frame_decoder", fuzzing::decode_frames);
}

#[test]
fn mux_frames_corpus_replays_clean() {
    replay("mux_frames", fuzzing::mux_frames);
}

/// The committed seeds are exactly what the generator writes (crash regressions may sit beside).
#[test]
fn seed_corpus_matches_its_generator() {
    for (target, seeds) in [
        ("frame_decoder", frame_decoder_seeds()),
        ("mux_frames", mux_frames_seeds()),
    ] {
        let committed: BTreeMap<String, Vec<u8>> = corpus_files(target).into_iter().collect();
        for (name, bytes) in seeds {
            assert_eq!(
                committed.get(&name),
                Some(&bytes),
                "{target}/{name} differs from the generator: run the ignored \
                 regenerate_seed_corpus test"
            );
        }
    }
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run by hand after changing an input layout"]
fn regenerate_seed_corpus() {
    for (target, seeds) in [
        ("frame_decoder", frame_decoder_seeds()),
        ("mux_frames", mux_frames_seeds()),
    ] {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &seeds {
            fs::write(dir.join(name), bytes).unwrap();
        }
        println!("{target}: wrote {} seed files", seeds.len());
    }
}

// ----- frame_decoder seeds -----

/// Chunking seed bytes (see `fuzzing::decode_frames`): byte by byte, fixed 5, fixed 64, varied.
const BYTE_BY_BYTE: u8 = 0;
const CHUNKS_OF_5: u8 = 0x84;
const CHUNKS_OF_64: u8 = 0xbf;
const VARIED: u8 = 0x2a;

fn encoded(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let t = frame.encode();
        out.extend_from_slice(&t.header);
        out.extend_from_slice(&t.payload);
    }
    out
}

fn raw_header(version: u8, frame_type: u8, flags: u16, stream: u32, len: u32) -> Vec<u8> {
    let mut h = vec![version, frame_type];
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    assert_eq!(h.len(), HEADER_LEN);
    h
}

fn seed(chunking: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![chunking];
    out.extend_from_slice(body);
    out
}

fn mux_settings() -> pb::MuxSettings {
    pb::MuxSettings {
        stream_window_bytes: 262_144,
        session_window_bytes: 1 << 24,
        max_frame_payload_bytes: 65_536,
        max_streams: 1024,
    }
}

fn one_of_each() -> Vec<Frame> {
    vec![
        Frame::Hello(pb::Hello {
            protocol_version: 1,
            identity: Some(pb::hello::Identity::ClientId(42)),
            client_nonce: Bytes::from_static(&[7; 16]),
            mux: Some(mux_settings()),
            capabilities: vec!["udp".into(), "socks5".into()],
            client_version: "0.1.0".into(),
        }),
        Frame::Challenge(pb::Challenge {
            node_nonce: Bytes::from_static(&[9; 16]),
        }),
        Frame::Proof(pb::Proof {
            mac: Bytes::from_static(&[0xab; 32]),
        }),
        Frame::Welcome(pb::Welcome {
            session_id: 77,
            node_id: "node-a".into(),
            client_id: 42,
            heartbeat_interval_ms: 10_000,
            mux: Some(mux_settings()),
            config_version: 3,
            credentials: Some(pb::Credentials {
                client_id: 42,
                secret: "s3cret".into(),
            }),
            node_proof: Bytes::from_static(&[1; 32]),
        }),
        Frame::ConfigPush(pb::ConfigPush {
            version: 3,
            mappings: vec![pb::MappingConfig {
                mapping_id: "m-1".into(),
                listen_side: true,
                listen_addr: "127.0.0.1:8080".into(),
                target: Some(pb::TargetAddr {
                    host: "10.0.0.1".into(),
                    port: 80,
                }),
                allowed_source_cidrs: vec!["0.0.0.0/0".into()],
                ..Default::default()
            }],
        }),
        Frame::ConfigAck(pb::ConfigAck { version: 3 }),
        Frame::Open {
            stream: 1,
            payload: Bytes::from_static(b"\x0a\x03m-1"),
        },
        Frame::OpenResult {
            stream: 1,
            refused: false,
            payload: Bytes::new(),
        },
        Frame::Data {
            stream: 1,
            payload: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
        },
        Frame::Window {
            stream: 1,
            increment: 65_536,
        },
        Frame::Window {
            stream: 0,
            increment: 1 << 20,
        },
        Frame::Ping { nonce: 1 },
        Frame::Pong { nonce: 1 },
        Frame::Fin { stream: 1 },
        Frame::Rst {
            stream: 3,
            reason: ResetReason::TargetFailed,
        },
        Frame::GoAway {
            reason: GoAwayReason::Shutdown,
        },
        Frame::Refused(pb::Refused {
            reason: 1,
            message: "bad credentials".into(),
            retry_after_ms: 1000,
        }),
    ]
}

fn frame_decoder_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| seeds.push((name.to_string(), bytes));

    // Every frame type encoded validly, one file each.
    let all = one_of_each();
    for frame in &all {
        let name = format!("valid_{:?}", frame.frame_type()).to_lowercase();
        let name = if matches!(frame, Frame::Window { stream: 0, .. }) {
            format!("{name}_session")
        } else {
            name
        };
        add(&name, seed(VARIED, &encoded(std::slice::from_ref(frame))));
    }
    add(
        "valid_open_result_refused",
        seed(
            CHUNKS_OF_5,
            &encoded(&[Frame::OpenResult {
                stream: 2,
                refused: true,
                payload: Bytes::from_static(b"\x08\x05"),
            }]),
        ),
    );
    add(
        "valid_data_max_payload",
        seed(
            CHUNKS_OF_64,
            &encoded(&[Frame::Data {
                stream: 0xffff_ffff,
                payload: Bytes::from(vec![0x5a; fuzzing::DECODER_MAX_PAYLOAD_BYTES as usize]),
            }]),
        ),
    );

    // Sequences.
    let sequence = encoded(&all);
    add("sequence_all_byte_by_byte", seed(BYTE_BY_BYTE, &sequence));
    add("sequence_all_chunks_of_5", seed(CHUNKS_OF_5, &sequence));
    let mut empty_data = encoded(&[Frame::Data {
        stream: 5,
        payload: Bytes::new(),
    }]);
    empty_data.extend_from_slice(&encoded(&[Frame::Fin { stream: 5 }]));
    add("sequence_empty_data_then_fin", seed(VARIED, &empty_data));

    // Truncations: inside the header, inside a DATA payload, inside a control message.
    add("truncated_header", seed(VARIED, &sequence[..7]));
    let data = encoded(&all[8..9]);
    add(
        "truncated_data_payload",
        seed(BYTE_BY_BYTE, &data[..data.len() - 3]),
    );
    let hello = encoded(&all[..1]);
    add(
        "truncated_hello",
        seed(CHUNKS_OF_5, &hello[..hello.len() - 1]),
    );

    // Oversized lengths: one over the limit, u32::MAX, and a value frame where it is fine.
    let max = fuzzing::DECODER_MAX_PAYLOAD_BYTES;
    add(
        "oversized_data_len",
        seed(VARIED, &raw_header(1, 0x00, 0, 1, max + 1)),
    );
    let mut huge = raw_header(1, 0x10, 0, 0, u32::MAX);
    huge.extend_from_slice(&[0; 64]);
    add("oversized_hello_len_u32_max", seed(CHUNKS_OF_64, &huge));
    add(
        "window_value_u32_max",
        seed(VARIED, &raw_header(1, 0x01, 0, 7, u32::MAX)),
    );

    // Bad version, type and flags, after a good frame so the error comes mid-stream.
    let good = encoded(&[Frame::Ping { nonce: 9 }]);
    let after_good = |bad: Vec<u8>| [good.clone(), bad].concat();
    add(
        "bad_version",
        seed(VARIED, &after_good(raw_header(2, 0x04, 0, 0, 0))),
    );
    add(
        "bad_type",
        seed(VARIED, &after_good(raw_header(1, 0x7f, 0, 1, 0))),
    );
    add(
        "bad_flags_data",
        seed(VARIED, &after_good(raw_header(1, 0x00, 0x0001, 1, 0))),
    );
    add(
        "bad_flags_open_result",
        seed(VARIED, &after_good(raw_header(1, 0x08, 0x8001, 1, 0))),
    );

    // Stream id rules.
    add(
        "stream_zero_data",
        seed(VARIED, &raw_header(1, 0x00, 0, 0, 3)),
    );
    add(
        "stream_zero_rst",
        seed(VARIED, &raw_header(1, 0x03, 0, 0, 0)),
    );
    add(
        "stream_id_on_ping",
        seed(VARIED, &raw_header(1, 0x04, 0, 5, 1)),
    );
    add(
        "window_zero_increment",
        seed(VARIED, &raw_header(1, 0x01, 0, 0, 0)),
    );

    // Garbage protobuf payloads: a truncated varint, a string that is not UTF-8, unknown fields.
    let mut bad = raw_header(1, 0x10, 0, 0, 3);
    bad.extend_from_slice(&[0xff, 0xff, 0xff]);
    add("garbage_protobuf_hello", seed(VARIED, &bad));
    let mut not_utf8 = raw_header(1, 0x13, 0, 0, 4);
    not_utf8.extend_from_slice(&[0x12, 0x02, 0xc3, 0x28]);
    add("garbage_protobuf_welcome_utf8", seed(VARIED, &not_utf8));
    let mut unknown = raw_header(1, 0x21, 0, 0, 6);
    unknown.extend_from_slice(&[0x08, 0x03, 0xf8, 0x01, 0x01, 0x08]);
    add("protobuf_unknown_field_config_ack", seed(VARIED, &unknown));
    seeds
}

// ----- mux_frames seeds -----

/// Room everywhere: 4 KiB stream windows (growing to 16 KiB), 32 KiB session, 4 KiB frames,
/// 16 streams, 8 pending opens and accepts, 16 KiB send buffers, 256 control frames.
const ROOMY: [u8; MUX_LIMITS_LEN] = [63, 3, 255, 255, 0x7f, 7, 255, 255, 63, 255, 255, 15];
/// Limits hit at once: 16-byte windows and frames, 2 streams, 1 pending open and accept, 1-byte
/// send buffers, 4 control frames; the client announces the same.
const TIGHT: [u8; MUX_LIMITS_LEN] = [0, 0, 1, 0, 0x01, 0, 0, 3, 0, 0, 0, 1];
/// Middling: 1 KiB stream windows, 2 KiB session, 64-byte frames, 4 streams.
const SMALL: [u8; MUX_LIMITS_LEN] = [16, 1, 16, 3, 0x13, 3, 16, 31, 16, 16, 3, 3];

fn open(stream: u32) -> Frame {
    Frame::Open {
        stream,
        payload: Bytes::from_static(b"\x0a\x03m-1"),
    }
}

fn data(stream: u32, len: usize) -> Frame {
    Frame::Data {
        stream,
        payload: Bytes::from(vec![0x61; len]),
    }
}

fn window(stream: u32, increment: u32) -> Frame {
    Frame::Window { stream, increment }
}

fn rst(stream: u32) -> Frame {
    Frame::Rst {
        stream,
        reason: ResetReason::Cancel,
    }
}

fn script(limits: [u8; MUX_LIMITS_LEN], build: impl FnOnce(&mut MuxScript)) -> Vec<u8> {
    let mut s = MuxScript::new(limits);
    build(&mut s);
    s.into_bytes()
}

fn mux_frames_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| seeds.push((name.to_string(), bytes));

    add(
        "open_data_fin_accept_read",
        script(ROOMY, |s| {
            s.frame(&open(1))
                .frame(&data(1, 300))
                .frame(&Frame::Fin { stream: 1 })
                .accept()
                .read(0, 0)
                .read(0, 0)
                .flush(0);
        }),
    );
    add(
        "accept_send_window_finish",
        script(SMALL, |s| {
            s.frame(&open(1)).accept().send(0, 40).flush(0);
            s.frame(&window(1, 1024)).frame(&window(0, 2048)).flush(0);
            s.frame(&window(1, 4096))
                .frame(&window(0, 4096))
                .finish(0)
                .flush(0);
        }),
    );
    add(
        "read_grants_window_and_autotune",
        script(SMALL, |s| {
            s.ping().flush(0).frame(&Frame::Pong { nonce: 1 });
            s.frame(&open(1)).accept().flush(0);
            for _ in 0..6 {
                s.frame(&data(1, 64))
                    .frame(&data(1, 64))
                    .read(0, 0)
                    .read(0, 0);
                s.flush(0);
            }
        }),
    );
    add(
        "data_past_stream_window",
        script(TIGHT, |s| {
            s.frame(&open(1))
                .accept()
                .frame(&data(1, 16))
                .frame(&data(1, 1))
                .flush(0);
        }),
    );
    add(
        "unread_streams_past_session_window",
        // Three streams, each within its 1040-byte window, together past the 2064-byte session
        // window, none read: session credit comes back on receipt, so this is no violation (and
        // streams that stop reading cannot starve the session).
        script(SMALL, |s| {
            for id in [1, 3, 5] {
                s.frame(&open(id)).accept();
            }
            for _ in 0..12 {
                for id in [1, 3, 5] {
                    s.frame(&data(id, 64));
                }
            }
        }),
    );
    add(
        "data_over_frame_limit",
        script(SMALL, |s| {
            s.frame(&open(1)).accept().frame(&data(1, 65));
        }),
    );
    add(
        "open_flood_unflushed",
        script(TIGHT, |s| {
            for id in (1..40).step_by(2) {
                s.frame(&open(id));
            }
        }),
    );
    add(
        "open_flood_flushed_and_accepted",
        script(SMALL, |s| {
            for id in (1..60).step_by(2) {
                s.frame(&open(id)).flush(2);
                if id % 3 == 0 {
                    s.accept();
                }
            }
            s.flush(0);
        }),
    );
    add(
        "stale_frames_after_peer_rst",
        script(ROOMY, |s| {
            s.frame(&open(1))
                .accept()
                .send(0, 10)
                .frame(&rst(1))
                .flush(0);
            s.frame(&data(1, 10))
                .frame(&window(1, 100))
                .frame(&Frame::Fin { stream: 1 })
                .frame(&rst(1))
                .frame(&data(3, 1));
        }),
    );
    add(
        "stale_frames_after_local_reset",
        script(ROOMY, |s| {
            s.frame(&open(1))
                .accept()
                .frame(&data(1, 100))
                .reset(0, 0)
                .flush(0);
            s.frame(&data(1, 100))
                .frame(&window(1, 5))
                .frame(&window(0, 100))
                .flush(0);
        }),
    );
    add(
        "duplicate_open_id",
        script(ROOMY, |s| {
            s.frame(&open(3)).frame(&open(3));
        }),
    );
    add(
        "open_lower_id_and_even_id",
        script(ROOMY, |s| {
            s.frame(&open(5)).frame(&open(2)).frame(&open(3));
        }),
    );
    add(
        "peer_goaway_then_open",
        script(ROOMY, |s| {
            s.frame(&Frame::GoAway {
                reason: GoAwayReason::Normal,
            })
            .frame(&open(1))
            .open()
            .accept()
            .flush(0);
        }),
    );
    add(
        "local_goaway_then_open",
        script(ROOMY, |s| {
            s.frame(&open(1))
                .go_away(3)
                .frame(&open(3))
                .accept()
                .flush(0);
            s.frame(&data(1, 5))
                .frame(&Frame::Fin { stream: 1 })
                .read(0, 0)
                .read(0, 0);
            s.finish(0).flush(0);
        }),
    );
    add(
        "node_open_accepted_then_data",
        script(ROOMY, |s| {
            s.open().send(0, 20).flush(0);
            s.frame(&Frame::OpenResult {
                stream: 2,
                refused: false,
                payload: Bytes::new(),
            })
            .frame(&data(2, 50))
            .read(0, 2)
            .frame(&window(2, 5000))
            .flush(0);
        }),
    );
    add(
        "node_open_refused_then_stale",
        script(TIGHT, |s| {
            s.open().open().flush(0);
            s.frame(&Frame::OpenResult {
                stream: 2,
                refused: true,
                payload: Bytes::from_static(b"no"),
            })
            .frame(&data(2, 3))
            .frame(&window(2, 7))
            .open()
            .flush(0);
        }),
    );
    add(
        "open_result_twice",
        script(ROOMY, |s| {
            let accept = Frame::OpenResult {
                stream: 2,
                refused: false,
                payload: Bytes::new(),
            };
            s.open().flush(0).frame(&accept).frame(&accept);
        }),
    );
    add(
        "never_opened_stream",
        script(ROOMY, |s| {
            s.frame(&window(9, 100));
        }),
    );
    add(
        "ping_pong_both_ways",
        script(ROOMY, |s| {
            s.ping().ping().flush(0);
            s.frame(&Frame::Pong { nonce: 2 })
                .frame(&Frame::Ping { nonce: 77 })
                .frame(&Frame::Pong { nonce: 1 })
                .flush(0);
        }),
    );
    add(
        "control_queue_overflow_pings",
        script(TIGHT, |s| {
            for nonce in 0..8 {
                s.frame(&Frame::Ping { nonce });
            }
        }),
    );
    add(
        "handshake_frame_in_mux",
        script(ROOMY, |s| {
            s.frame(&Frame::ConfigAck(pb::ConfigAck { version: 1 }));
        }),
    );
    add(
        "rst_before_accept_then_refuse",
        script(ROOMY, |s| {
            s.frame(&open(1))
                .frame(&data(1, 10))
                .frame(&rst(1))
                .accept();
            s.frame(&open(3)).refuse().frame(&data(3, 4)).flush(0);
        }),
    );
    add(
        "half_close_both_ways",
        script(ROOMY, |s| {
            s.frame(&open(1)).accept().send(0, 2).finish(0).flush(0);
            s.frame(&data(1, 7)).frame(&Frame::Fin { stream: 1 });
            s.read(0, 0).read(0, 0).read(0, 0).flush(0);
        }),
    );
    add(
        "many_streams_round_robin",
        script(SMALL, |s| {
            for id in [1, 3, 5] {
                s.frame(&open(id)).accept();
            }
            s.open();
            for i in 0..4 {
                s.send(i, 30);
            }
            s.flush(3).flush(3).frame(&window(0, 5000)).flush(0);
            for id in [1, 3, 5] {
                s.frame(&window(id, 3000));
            }
            s.flush(0);
        }),
    );
    add(
        "wire_garbage_mid_stream",
        script(ROOMY, |s| {
            s.frame(&open(1))
                .wire(&[1, 0x33, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        }),
    );
    add(
        "split_frames_across_wire_ops",
        script(ROOMY, |s| {
            let t = data(1, 600).encode();
            let mut bytes = encoded(&[open(1)]);
            bytes.extend_from_slice(&t.header);
            bytes.extend_from_slice(&t.payload);
            for piece in bytes.chunks(7) {
                s.wire(piece);
            }
            s.accept().read(0, 1).read(0, 0).flush(0);
        }),
    );
    seeds
}

/// Each mux seed reaches the state it was written for (a seed that stops early tests little).
#[test]
fn mux_seeds_reach_their_intended_ending() {
    use tunnox_core::wire::WireError;
    let seeds: BTreeMap<String, Vec<u8>> = mux_frames_seeds().into_iter().collect();
    let report = |name: &str| fuzzing::mux_frames_report(&seeds[name]);
    let expect_error = [
        ("data_over_frame_limit", "FrameTooLarge"),
        ("open_flood_unflushed", "ControlQueueOverflow"),
        ("control_queue_overflow_pings", "ControlQueueOverflow"),
        ("stale_frames_after_peer_rst", "UnknownStream"),
        ("duplicate_open_id", "BadStreamId"),
        ("open_lower_id_and_even_id", "BadStreamId"),
        ("open_result_twice", "UnexpectedOpenResult"),
        ("never_opened_stream", "UnknownStream"),
        ("handshake_frame_in_mux", "NotAMuxFrame"),
    ];
    for (name, error) in expect_error {
        let r = report(name);
        assert!(
            matches!(&r.end, MuxRunEnd::Mux(e) if format!("{e:?}").starts_with(error)),
            "{name}: expected {error}, got {r:?}"
        );
    }
    assert!(matches!(
        report("wire_garbage_mid_stream").end,
        MuxRunEnd::Wire(WireError::UnknownFrameType(0x33))
    ));
    for (name, bytes) in &seeds {
        if expect_error.iter().any(|(n, _)| n == name) || name == "wire_garbage_mid_stream" {
            continue;
        }
        let r = fuzzing::mux_frames_report(bytes);
        assert_eq!(r.end, MuxRunEnd::InputExhausted, "{name}: {r:?}");
    }
    // What the seeds were written for actually happens.
    let unread = report("unread_streams_past_session_window");
    assert_eq!(unread.stats.flow_control_violations, 0);
    assert_eq!(unread.stats.data_bytes_received, 3 * 12 * 64);
    assert!(unread.stats.window_updates_sent >= 1, "{unread:?}");
    assert_eq!(report("data_past_stream_window").stats.resets_sent, 1);
    assert!(report("stale_frames_after_local_reset").stats.stale_frames >= 2);
    assert!(report("node_open_refused_then_stale").stats.stale_frames >= 2);
    assert!(
        report("open_flood_flushed_and_accepted")
            .stats
            .opens_refused_by_limit
            > 10
    );
    assert_eq!(
        report("local_goaway_then_open")
            .stats
            .opens_refused_by_limit,
        1
    );
    assert!(
        report("read_grants_window_and_autotune")
            .stats
            .window_updates_sent
            >= 1
    );
    assert!(report("accept_send_window_finish").stats.data_bytes_sent > 1000);
    assert!(report("many_streams_round_robin").stats.data_bytes_sent > 4000);
}
